"""The pinned versions and the host processes of the local cluster, standard library only.

Shared by metrics.py, sim.py, gpu_sim.py, the benchmarks and the integration tests, so that a version is read
from versions.env in one place and every host process is started, found and stopped the same way.

A process is known by ``DIR/NAME.pid``, which holds its PID and its start time (field 22 of /proc/PID/stat).
It counts as running only while a live, non-zombie process with that PID has that start time, so a stale
PID file never makes anybody signal a process that is not ours. Each process leads a session of its own;
``stop`` signals that whole process group (a shell and what it started, socat's per-connection children).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent


def pinned(name: str) -> str:
    """The version ``name`` pinned in versions.env."""
    for line in (HERE / "versions.env").read_text().splitlines():
        if line.startswith(name + "="):
            return line.split("=", 1)[1].strip()
    raise SystemExit(f"{name} not pinned in {HERE / 'versions.env'}")


def cache_dir() -> Path:
    """KUBEINFER_CACHE, where the binaries are built (default ~/.cache/kubeinfer)."""
    return Path(os.environ.get("KUBEINFER_CACHE") or Path.home() / ".cache" / "kubeinfer")


def cluster_name() -> str:
    return os.environ.get("KUBEINFER_CLUSTER") or "kubeinfer"


def workdir() -> Path:
    """KWOK_WORKDIR, kwokctl's state (default $KUBEINFER_CACHE/kwok): clusters/<name>/ and kubeinfer-<name>/."""
    return Path(os.environ.get("KWOK_WORKDIR") or cache_dir() / "kwok")


def state_dir() -> Path:
    """The directory of this cluster's host processes, next to kwokctl's own (cluster.sh's STATE_DIR)."""
    return workdir() / f"kubeinfer-{cluster_name()}"


def kubectl() -> Path:
    """The pinned kubectl that build.sh built."""
    return cache_dir() / f"kubernetes-{pinned('KUBERNETES_VERSION')}" / "kubectl"


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), None when there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


class HostProcess:
    """One host process, recorded in ``directory/name.pid``; its output goes to ``directory/name.log``."""

    def __init__(self, directory: Path, name: str) -> None:
        self.name = name
        self.pidfile = directory / f"{name}.pid"
        self.logfile = directory / f"{name}.log"

    def pid(self) -> int | None:
        """The PID while the recorded process runs, else None."""
        try:
            pid, started = self.pidfile.read_text().split()
        except (OSError, ValueError):
            return None
        fields = _stat(int(pid))
        if fields is None or fields[0] in ("Z", "X") or fields[19] != started:
            return None
        return int(pid)

    def argv(self) -> list[str] | None:
        """The command line of the running process, else None."""
        pid = self.pid()
        try:
            return None if pid is None else [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]]
        except OSError:
            return None

    def start(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> int:
        """Start ``argv`` in a session of its own, appending its output to the log; returns the PID."""
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        with open(self.logfile, "ab") as out:
            proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, close_fds=True, env=None if env is None else dict(env))
        fields = _stat(proc.pid)
        self.pidfile.write_text(f"{proc.pid} {fields[19] if fields else 0}\n")
        return proc.pid

    def stop(self, timeout: float = 15) -> bool:
        """SIGTERM to the process group, SIGKILL after ``timeout`` s; False when it was not running."""
        pid = self.pid()
        if pid is not None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(pid, sig)
                except ProcessLookupError:
                    break
                deadline = time.monotonic() + timeout
                while self.pid() == pid and time.monotonic() < deadline:
                    self._reap(pid)
                    time.sleep(0.1)
                if self.pid() != pid:
                    break
            self._reap(pid)
        self.pidfile.unlink(missing_ok=True)
        return pid is not None

    def start_loop(self, script: Path, beat: Path, timeout: float = 20) -> None:
        """Start ``python3 script run`` (a harness loop that touches ``beat`` after each pass) unless it runs; wait for
        its first pass. gpu_sim.py and podkubelet.py start this way."""
        if self.pid():
            return
        beat.unlink(missing_ok=True)
        pid = self.start([sys.executable, str(script), "run"])
        deadline = time.monotonic() + timeout
        while not beat.exists() and time.monotonic() < deadline and self.pid():
            time.sleep(0.2)
        if not beat.exists():
            raise SystemExit(f"{script.name} started (pid {pid}) but has not completed a pass; see {self.logfile}")

    @staticmethod
    def _reap(pid: int) -> None:
        """Collect the exit status when the process is our own child (the metrics sync loop restarting the adapter)."""
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def log_tail(path: Path, chars: int = 2000) -> str:
    """The end of a log file, or '' when there is none."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""
