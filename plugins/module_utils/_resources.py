# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Get, server-side apply, patch and delete with dry-run, and diffs free of noise and secrets. Private to this collection: the interface may change."""
from __future__ import annotations

import copy
import json
import re
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError

FIELD_MANAGER = "kubeinfer.llm"
MASK = "********"
NOISE_METADATA = ("managedFields", "resourceVersion", "generation")
# Asks the API server to answer a write with the object's metadata only (a meta.k8s.io/v1 PartialObjectMetadata),
# which spares it encoding, and the client decoding, the rest of the object; plain JSON is the fallback. A patch's
# answer goes through the same transform as a get's (k8s.io/apiserver/pkg/endpoints/handlers/patch.go ->
# transformResponseObject in response.go). Errors still come as a JSON Status.
ACCEPT_METADATA = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1, application/json"
ACCEPT_METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1, application/json"
T = TypeVar("T")

# Kinds the collection uses, so that the common path needs no discovery request.
# (apiVersion, kind) -> (plural, namespaced)
KNOWN: dict[tuple[str, str], tuple[str, bool]] = {
    ("v1", "Node"): ("nodes", False),
    ("v1", "Namespace"): ("namespaces", False),
    ("v1", "Pod"): ("pods", True),
    ("v1", "Secret"): ("secrets", True),
    ("v1", "ConfigMap"): ("configmaps", True),
    ("v1", "Service"): ("services", True),
    ("v1", "Event"): ("events", True),
    ("v1", "PersistentVolumeClaim"): ("persistentvolumeclaims", True),
    ("apps/v1", "Deployment"): ("deployments", True),
    ("apps/v1", "DaemonSet"): ("daemonsets", True),
    ("apps/v1", "ReplicaSet"): ("replicasets", True),
    ("autoscaling/v2", "HorizontalPodAutoscaler"): ("horizontalpodautoscalers", True),
    ("apiregistration.k8s.io/v1", "APIService"): ("apiservices", False),
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"): ("customresourcedefinitions", False),
    ("nvidia.com/v1", "ClusterPolicy"): ("clusterpolicies", False),
    ("coordination.k8s.io/v1", "Lease"): ("leases", True),
}


@dataclass(frozen=True)
class Ref:
    """Where a kind lives in the REST API."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool

    def path(self, name: str | None = None, namespace: str | None = None, subresource: str | None = None) -> str:
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
            if subresource:
                base += f"/{subresource}"
        return base


class Kube:
    """A thin REST layer over an ApiClient that counts its requests by verb.

    The counts are returned by modules (``api_requests``) so that idempotence
    ("a re-run makes no write") can be asserted from the outside. Requests may be
    sent from several threads at once (gpu_node's patches); the count is locked.
    """

    def __init__(self, api_client: Any, field_manager: str = FIELD_MANAGER, origin: dict[str, str] | None = None) -> None:
        self.api_client = api_client
        self.field_manager = field_manager
        # Which connection option named the server and the credentials (_client.origin), for error messages.
        self.origin = origin or {}
        self.requests: Counter[str] = Counter()
        self._count_lock = threading.Lock()
        self._refs: dict[tuple[str, str], Ref] = {}

    # -- plumbing -----------------------------------------------------------------
    def request(self, method: str, path: str, query: list[tuple[str, Any]] | None = None,
                body: Any = None, content_type: str | None = None, verb: str | None = None,
                timeout: float | None = 60, accept: str = "application/json") -> Any:
        """Send one request and return the decoded JSON body; raise ApiError on a non-2xx answer."""
        headers = {"Accept": accept}
        if content_type:
            headers["Content-Type"] = content_type
        with self._count_lock:
            self.requests[verb or method.lower()] += 1
        try:
            resp = self.api_client.call_api(
                path, method, query_params=query or [], header_params=headers, body=body,
                auth_settings=["BearerToken"], _preload_content=False, _return_http_data_only=True,
                _request_timeout=timeout,
            )
        except Exception as e:
            host = getattr(getattr(self.api_client, "configuration", None), "host", None)
            raise ApiError.from_exception(method, path, e, host, self.origin) from e
        data = resp.data
        if not data:
            return None
        try:
            return json.loads(data)
        except ValueError:
            return data.decode("utf-8", "replace") if isinstance(data, bytes) else data

    def ref(self, api_version: str, kind: str) -> Ref:
        """Resolve a kind to its REST path, with one discovery request per unknown group version."""
        key = (api_version, kind)
        if key in KNOWN:
            plural, namespaced = KNOWN[key]
            return Ref(api_version, kind, plural, namespaced)
        if key not in self._refs:
            base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            try:
                listing = self.request("GET", base, verb="discovery")
            except ApiError as e:
                raise KubeInferError(f"the API server does not serve {api_version}: {e.reason}") from e
            for res in listing.get("resources", []):
                if "/" not in res["name"]:
                    self._refs[(api_version, res["kind"])] = Ref(api_version, res["kind"], res["name"], res["namespaced"])
            if key not in self._refs:
                raise KubeInferError(f"the API server does not serve kind {kind} in {api_version}")
        return self._refs[key]

    # -- verbs ----------------------------------------------------------------------
    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """Return the object, or None when it does not exist."""
        try:
            return self.request("GET", self.ref(api_version, kind).path(name, namespace), verb="get")
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def list(self, api_version: str, kind: str, namespace: str | None = None,
             label_selector: str | None = None, field_selector: str | None = None, metadata_only: bool = False) -> list[dict[str, Any]]:
        """Return the items of one list call (no pagination: the collection lists bounded sets).

        ``metadata_only``: each item is the object's metadata only (a PartialObjectMetadata), for a caller that
        needs names and labels of objects whose data may be large (helm's release Secrets)."""
        query: list[tuple[str, Any]] = []
        if label_selector:
            query.append(("labelSelector", label_selector))
        if field_selector:
            query.append(("fieldSelector", field_selector))
        result = self.request("GET", self.ref(api_version, kind).path(None, namespace), query=query, verb="list",
                              accept=ACCEPT_METADATA_LIST if metadata_only else "application/json")
        items = result.get("items") or []
        for item in items:  # list items come without apiVersion/kind
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return items

    def apply(self, body: dict[str, Any], dry_run: bool = False, force: bool = False,
              subresource: str | None = None) -> dict[str, Any]:
        """Server-side apply ``body`` under this collection's field manager.

        Field validation is strict: an unknown or misspelt field (a CRD's schema included) fails
        instead of being dropped silently.
        """
        meta = body.get("metadata", {})
        ref = self.ref(body["apiVersion"], body["kind"])
        query: list[tuple[str, Any]] = [("fieldManager", self.field_manager), ("fieldValidation", "Strict")]
        if force:
            query.append(("force", "true"))
        if dry_run:
            query.append(("dryRun", "All"))
        return self.request("PATCH", ref.path(meta["name"], meta.get("namespace"), subresource), query=query,
                            body=body, content_type="application/apply-patch+yaml", verb="apply")

    def patch(self, api_version: str, kind: str, name: str, patch: Any, namespace: str | None = None,
              patch_type: str = "merge", dry_run: bool = False, subresource: str | None = None,
              metadata_only: bool = False) -> dict[str, Any]:
        """Patch with a merge (default), strategic or JSON patch.

        ``metadata_only``: the answer carries the object's metadata only (see ACCEPT_METADATA), for a caller
        that does not read the rest; a node's status is most of its size.
        """
        content_type = {
            "merge": "application/merge-patch+json",
            "strategic": "application/strategic-merge-patch+json",
            "json": "application/json-patch+json",
        }[patch_type]
        query: list[tuple[str, Any]] = [("fieldManager", self.field_manager)]
        if dry_run:
            query.append(("dryRun", "All"))
        return self.request("PATCH", self.ref(api_version, kind).path(name, namespace, subresource), query=query,
                            body=patch, content_type=content_type, verb="patch",
                            accept=ACCEPT_METADATA if metadata_only else "application/json")

    def create(self, body: dict[str, Any], dry_run: bool = False) -> dict[str, Any]:
        """Create ``body``; a conflict raises ApiError with status 409."""
        meta = body.get("metadata", {})
        query: list[tuple[str, Any]] = [("fieldManager", self.field_manager)]
        if dry_run:
            query.append(("dryRun", "All"))
        ref = self.ref(body["apiVersion"], body["kind"])
        return self.request("POST", ref.path(None, meta.get("namespace")), query=query, body=body, verb="create")

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None,
               dry_run: bool = False, propagation: str = "Background") -> bool:
        """Delete; return False when there was nothing to delete."""
        query: list[tuple[str, Any]] = [("propagationPolicy", propagation)]
        if dry_run:
            query.append(("dryRun", "All"))
        try:
            self.request("DELETE", self.ref(api_version, kind).path(name, namespace), query=query, verb="delete")
        except ApiError as e:
            if e.status == 404:
                return False
            raise
        return True


class ApiError(KubeInferError):
    """A non-2xx answer of the API server."""

    def __init__(self, msg: str, status: int | None = None, reason: str = "", body: Any = None) -> None:
        super().__init__(msg, status=status)
        self.status = status
        self.reason = reason
        self.body = body

    @classmethod
    def from_exception(cls, method: str, path: str, e: Exception, host: str | None = None,
                       origin: dict[str, str] | None = None) -> ApiError:
        """The error for a failed request. A connection, TLS or authentication failure names the connection
        option to fix (``origin``, see _client.origin) and the API server's URL, never a library object."""
        origin = origin or {}
        status = getattr(e, "status", None)
        server = host or "(no host)"
        if not status:  # urllib3 raised (refused, timed out, TLS); the kubernetes client maps SSLError to status 0
            text = transport_reason(e)
            if "certificate" in text.lower() or "ssl" in type(e).__name__.lower() or "SSLError" in str(e):
                option = origin.get("ca", "ca_cert")
                msg = f"{option}: the TLS certificate of the API server {server} is not trusted ({text})"
            else:
                option = origin.get("server", "host")
                msg = f"{option}: cannot reach the API server {server} ({text})"
            return cls(msg, status=None, reason=msg)
        raw = getattr(e, "body", None)
        body: Any = None
        reason = str(getattr(e, "reason", "") or e)
        if raw:
            try:
                body = json.loads(raw)
                reason = body.get("message") or reason
            except (ValueError, TypeError, AttributeError):
                body = None
        if status == 401:
            option = origin.get("credentials", "api_key")
            msg = f"{option}: the API server {server} refused the credentials (401 {reason or 'Unauthorized'})"
            return cls(msg, status=status, reason=msg, body=body)
        return cls(f"{method} {path} failed ({status}): {reason}", status=status, reason=reason, body=body)


_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>:?\s*")
_ERRNO = re.compile(r"\[Errno -?\d+\] [^'\")\]]+")
_CERT = re.compile(r"certificate verify failed: [^'\")\](]+")
_CERT_SHORT = re.compile(r"CERTIFICATE_VERIFY_FAILED")


def transport_reason(e: Exception) -> str:
    """The cause of a connection failure in a few words, without the library's object reprs."""
    text = str(getattr(e, "reason", None) or e)
    for pattern in (_CERT, _CERT_SHORT, _ERRNO):
        match = pattern.search(text)
        if match:
            return match.group(0).strip().rstrip(":,")
    if "timed out" in text.lower():
        return "timed out"
    cleaned = _OBJECT_REPR.sub("", text).strip()
    return (cleaned[:300] + "...") if len(cleaned) > 300 else cleaned or type(e).__name__


CONFLICT_ATTEMPTS = 5


def retry_on_conflict(write: Callable[[int], T], what: str, attempts: int = CONFLICT_ATTEMPTS) -> T:
    """Call ``write(attempt)`` until it does not meet a 409 Conflict, at most ``attempts`` times.

    ``write`` reads what it needs and writes with that read's resourceVersion as precondition
    (optimistic concurrency, as client-go's retry.RetryOnConflict in k8s.io/client-go/util/retry/util.go),
    so a concurrent writer's change is re-read and never overwritten. Attempt 1 may reuse an
    object read earlier; later attempts must read afresh.
    """
    for attempt in range(1, attempts + 1):
        try:
            return write(attempt)
        except ApiError as e:
            if e.status != 409:
                raise
            if attempt == attempts:
                raise KubeInferError(f"{what} kept changing under concurrent writers; gave up after {attempts} attempts") from e
    raise AssertionError("unreachable")  # pragma: no cover


# -- comparison and diff ------------------------------------------------------------
def is_subset(desired: Any, actual: Any) -> bool:
    """True when every field of ``desired`` already holds in ``actual``.

    Lists must match in length; dict elements of lists are compared as subsets,
    so server-side defaults inside list items do not count as a change.
    """
    if isinstance(desired, dict):
        if not isinstance(actual, dict):
            return False
        return all(k in actual and is_subset(v, actual[k]) for k, v in desired.items() if v is not None) and all(
            actual.get(k) is None for k, v in desired.items() if v is None)
    if isinstance(desired, list):
        if not isinstance(actual, list) or len(desired) != len(actual):
            return False
        return all(is_subset(d, a) for d, a in zip(desired, actual))
    if isinstance(desired, (int, float)) and isinstance(actual, str) or isinstance(desired, str) and isinstance(actual, (int, float)):
        return str(desired) == str(actual)
    return bool(desired == actual)


def clean(obj: dict[str, Any] | None, secret: bool | None = None) -> dict[str, Any] | None:
    """Return a copy fit for a diff or a result: no churn fields, and Secret data masked."""
    if obj is None:
        return None
    out = copy.deepcopy(obj)
    meta = out.get("metadata") or {}
    for key in NOISE_METADATA:
        meta.pop(key, None)
    annotations = meta.get("annotations") or {}
    annotations.pop("kubectl.kubernetes.io/last-applied-configuration", None)
    if secret or (secret is None and out.get("kind") == "Secret"):
        for field in ("data", "stringData"):
            if isinstance(out.get(field), dict):
                out[field] = {k: MASK for k in out[field]}
    return out


def diff(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any]:
    """A before/after pair for Ansible's diff mode, cleaned of noise and secrets."""
    return {"before": clean(before) or {}, "after": clean(after) or {}}


def ensure(kube: Kube, desired: dict[str, Any], check_mode: bool, force: bool = True) -> tuple[bool, dict[str, Any] | None, dict[str, Any]]:
    """Make ``desired`` hold with server-side apply, writing nothing when it already holds.

    Returns (changed, before, after). In check mode the write is a server-side
    dry run, so ``after`` is the object exactly as it would be.
    """
    meta = desired["metadata"]
    before = kube.get(desired["apiVersion"], desired["kind"], meta["name"], meta.get("namespace"))
    if before is not None and is_subset(desired, before):
        return False, before, before
    after = kube.apply(desired, dry_run=check_mode, force=force)
    return True, before, after


def absent(kube: Kube, api_version: str, kind: str, name: str, namespace: str | None, check_mode: bool) -> tuple[bool, dict[str, Any] | None]:
    """Delete the object if it exists. Returns (changed, before)."""
    before = kube.get(api_version, kind, name, namespace)
    if before is None:
        return False, None
    kube.delete(api_version, kind, name, namespace, dry_run=check_mode)
    return True, before
