"""Helpers the benchmarks share (gpu_node_bench.py, autoscale_bench.py, site_bench.py).

Standard library only at import time: running a tools/localcluster script for one cluster, a collections
tree whose kubeinfer.llm is this checkout, ansible-playbook with the JSON callback, the API server's audit
events inside a time window, and the small formatting helpers of the reports.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, Optional

REPO = Path(__file__).resolve().parent.parent
TOOLS = REPO / "tools" / "localcluster"
WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")


def log(prefix: str, msg: str) -> None:
    print(f"[{prefix} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def tool(script: str, *args: str, cluster: str, timeout: float = 300, extra_env: Optional[dict[str, str]] = None,
         tools: Path = TOOLS) -> str:
    """Run a tools/localcluster script (or the one in ``tools``, a snapshot) for this cluster; return its stdout."""
    env = dict(os.environ, KUBEINFER_CLUSTER=cluster, **(extra_env or {}))
    proc = subprocess.run([str(tools / script), *args], capture_output=True, text=True, env=env, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stdout.strip()


def snapshot_tools() -> Path:
    """A copy of tools/localcluster: bash reads a script as it runs, so somebody editing one meanwhile cannot break a run."""
    copy = Path(tempfile.mkdtemp(prefix="kubeinfer-bench-")) / "localcluster"
    shutil.copytree(TOOLS, copy)
    return copy


def collections_tree(prefix: str = "kubeinfer-bench-collections-") -> Path:
    """A temporary ANSIBLE_COLLECTIONS_PATH whose kubeinfer.llm is this checkout (the caller removes it)."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    (base / "ansible_collections" / "kubeinfer").mkdir(parents=True)
    (base / "ansible_collections" / "kubeinfer" / "llm").symlink_to(REPO)
    return base


def run_playbook(playbook: Path, kubeconfig: str, collections: Path, extra: dict[str, Any], python: Path,
                 args: tuple[str, ...] = (), vars_files: tuple[Path, ...] = (), env_extra: Optional[dict[str, str]] = None,
                 timeout: Optional[float] = None) -> tuple[float, int, dict[str, Any], str]:
    """ansible-playbook on localhost with the JSON callback; return wall seconds, exit code, the callback's output, stderr.

    Wall time is the whole ansible-playbook process, what a user waits for. Pipelining spares each task (and each
    loop item) a temporary copy of the module: the cheapest per-task setup Ansible offers.
    """
    env = dict(os.environ)
    env.update({
        "ANSIBLE_COLLECTIONS_PATH": str(collections),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_FORKS": "5",
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "K8S_AUTH_KUBECONFIG": kubeconfig,
        "KUBECONFIG": kubeconfig,
        "PATH": f"{python.parent}:{env.get('PATH', '')}",
    })
    env.update(env_extra or {})
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="kubeinfer-bench-vars-", delete=False) as fh:
        json.dump({"ansible_python_interpreter": str(python), **extra}, fh)
        vars_file = Path(fh.name)
    cmd = [str(python.parent / "ansible-playbook"), "-i", "localhost,", "-c", "local"]
    for path in vars_files:
        cmd += ["-e", f"@{path}"]
    cmd += ["-e", f"@{vars_file}", *args, str(playbook)]
    try:
        start = time.monotonic()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        wall = time.monotonic() - start
    finally:
        vars_file.unlink(missing_ok=True)
    try:
        output = json.loads(proc.stdout)
    except ValueError:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"playbook {playbook.name} failed (rc={proc.returncode}) without JSON output") from None
    return wall, proc.returncode, output, proc.stderr


def task_results(output: dict[str, Any]) -> list[dict[str, Any]]:
    """Each task's result on localhost, in order (the JSON callback's output)."""
    return [task["hosts"]["localhost"] for play in output["plays"] for task in play["tasks"] if "localhost" in task["hosts"]]


def task_durations(output: dict[str, Any]) -> list[tuple[str, float]]:
    """(task name, seconds) for every task the JSON callback reports."""
    out = []
    for play in output["plays"]:
        for task in play["tasks"]:
            span = task["task"]["duration"]
            out.append((task["task"]["name"], ts(span["end"]) - ts(span["start"])))
    return out


def tasks_seconds(output: dict[str, Any]) -> float:
    """Time spent inside the tasks (the callback's per-task durations), without Ansible's start-up."""
    return sum(seconds for _, seconds in task_durations(output))


def ts(value: str) -> float:
    """An RFC 3339 timestamp (audit log, JSON callback) as epoch seconds."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def audit_events(path: Path, offset: int, start: float, end: float, flush_wait: float = 1.0) -> Iterator[dict[str, Any]]:
    """The audit log's ResponseComplete events written after ``offset`` for requests received in [start, end].

    One event per request (the policies omit the RequestReceived stage). The last line may still be being written.
    """
    time.sleep(flush_wait)  # let the log backend flush the last events
    with path.open("rb") as fh:
        fh.seek(offset)
        for line in fh:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("stage") != "ResponseComplete":
                continue
            if start <= ts(ev["requestReceivedTimestamp"]) <= end:
                yield ev


def fmt_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "none"


def median_run(runs: list[dict[str, Any]], key: str = "wall_s") -> dict[str, Any]:
    """The run with the median ``key`` (the lower one of an even count)."""
    ordered = sorted(runs, key=lambda r: r[key])
    return ordered[(len(ordered) - 1) // 2]
