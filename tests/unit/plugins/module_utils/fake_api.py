"""A recording stand-in for kubernetes.client.ApiClient, for pure unit tests of the REST layer."""
from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable


class FakeResponse:
    def __init__(self, data: Any) -> None:
        self.data = json.dumps(data).encode() if data is not None else b""


class FakeApiException(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = message
        self.body = json.dumps({"message": message})


class FakeApiClient:
    """Answers from a dict of (method, path) -> body or exception; records every call. A request without an answer goes
    to ``fallback`` (another fake ApiClient, e.g. a FakeCluster holding helm's release Secrets) when one is set."""

    def __init__(self, answers: dict[tuple[str, str], Any] | None = None) -> None:
        self.answers = answers or {}
        self.calls: list[dict[str, Any]] = []
        self.fallback: Any = None

    def call_api(self, path: str, method: str, query_params=None, header_params=None, body=None, **kw: Any) -> FakeResponse:
        self.calls.append({"path": path, "method": method, "query": dict(query_params or []),
                           "headers": header_params, "body": body})
        if self.fallback is not None and (method, path) not in self.answers:
            return self.fallback.call_api(path, method, query_params=query_params, header_params=header_params, body=body, **kw)
        answer = self.answers.get((method, path))
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            answer = answer(body)
        if answer is None and method == "GET":
            raise FakeApiException(404, f"{path} not found")
        return FakeResponse(answer if answer is not None else body)


class InFlight:
    """An answer (for FakeApiClient or FakeCluster.answers) that holds each call for ``hold`` seconds and records
    the most calls in flight at once. ``delay`` may give a hold per request body instead."""

    def __init__(self, hold: float = 0.02, delay: Callable[[Any], float] | None = None) -> None:
        self.hold = hold
        self.delay = delay
        self.now = 0
        self.most = 0
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, body: Any) -> Any:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.threads.add(threading.current_thread().name)
        try:
            time.sleep(self.delay(body) if self.delay else self.hold)
        finally:
            with self._lock:
                self.now -= 1
        return body
