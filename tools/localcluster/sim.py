#!/usr/bin/env python3
"""Run llm-d-inference-sim instances as host processes reachable on 127.0.0.1 only.

Usage:
  sim.py start NAME --model MODEL [--port PORT] [SIM FLAGS...]   prints the port
  sim.py stop NAME | --all
  sim.py port NAME                                                prints the port (exit 1 if not running)
  sim.py list

The simulator v0.10.2 has no bind-address flag: it listens on every IPv4 address. So each
instance runs in a private network namespace (``unshare --net``) whose only interface is its own
loopback, and two relays join it to the host:

  127.0.0.1:PORT (host, this runner) -> Unix socket sim.sock -> 127.0.0.1:8000 (namespace) -> simulator

The same port serves the OpenAI API, /health and /metrics, so PORT is also the value of the pod
annotation ``kubeinfer.io/sim-metrics-port`` that the local Prometheus scrapes.

State, per instance, in $KWOK_WORKDIR/kubeinfer-$KUBEINFER_CLUSTER/sims/NAME/: ``pid`` (the
runner; the simulator dies with it), ``port``, ``args`` (the command line it was started with),
``sim.log``. ``start`` of a running instance with the same arguments just prints its port; with
other arguments it restarts it. ``--force-dummy-tokenizer`` is always added (no Hugging Face call).

Environment: KUBEINFER_CACHE, KUBEINFER_CLUSTER, KWOK_WORKDIR (as cluster.sh),
INFERENCE_SIM_BINARY (default: the pinned build in the cache), SIM_START_TIMEOUT (60 s).
Only the Python standard library is used, so any python3 runs it.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
INNER_PORT = 8000  # inside the private namespace every port is free
PR_SET_PDEATHSIG = 1


def pinned(name: str) -> str:
    for line in (HERE / "versions.env").read_text().splitlines():
        if line.startswith(name + "="):
            return line.split("=", 1)[1].strip()
    raise SystemExit(f"{name} not pinned in versions.env")


def cache_dir() -> Path:
    return Path(os.environ.get("KUBEINFER_CACHE") or Path.home() / ".cache" / "kubeinfer")


def state_root() -> Path:
    workdir = Path(os.environ.get("KWOK_WORKDIR") or cache_dir() / "kwok")
    return workdir / f"kubeinfer-{os.environ.get('KUBEINFER_CLUSTER') or 'kubeinfer'}" / "sims"


def sim_binary() -> str:
    default = cache_dir() / f"inference-sim-{pinned('INFERENCE_SIM_VERSION')}" / "llm-d-inference-sim"
    return os.environ.get("INFERENCE_SIM_BINARY") or str(default)


def log(msg: str) -> None:
    print(f"[sim {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def die_with_parent() -> None:
    """Child side of Popen: get SIGKILL when the parent (the runner) dies, however it dies."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def relay(listener: socket.socket, connect) -> None:
    """Accept forever; join every connection to the socket connect() returns (None: drop it)."""
    def serve(conn: socket.socket) -> None:
        upstream = connect()
        if upstream is None:
            conn.close()
            return
        t = threading.Thread(target=pipe, args=(conn, upstream), daemon=True)
        t.start()
        pipe(upstream, conn)
        t.join(5)
        upstream.close()
        conn.close()

    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


# --- inside the namespace -------------------------------------------------------------------

def inner(sock_path: str, argv: list[str]) -> None:
    """Bring up lo, start the simulator on INNER_PORT, relay the Unix socket to it."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    sim = subprocess.Popen(argv, preexec_fn=die_with_parent)

    def stop(*_: object) -> None:
        sim.terminate()
        try:
            sim.wait(10)
        except subprocess.TimeoutExpired:
            sim.kill()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threading.Thread(target=lambda: (sim.wait(), os._exit(3)), daemon=True).start()

    def connect() -> socket.socket | None:
        for _ in range(100):
            try:
                return socket.create_connection(("127.0.0.1", INNER_PORT))
            except OSError:
                time.sleep(0.1)
        return None

    try:
        os.unlink(sock_path)
    except FileNotFoundError:
        pass
    server = socket.socket(socket.AF_UNIX)
    server.bind(sock_path)
    server.listen(64)
    relay(server, connect)


# --- the runner (host side) -----------------------------------------------------------------

def socket_path(d: Path) -> str:
    path = str(d / "sim.sock")
    if len(path.encode()) < 100:
        return path
    return f"/tmp/kubeinfer-sim-{hashlib.sha256(path.encode()).hexdigest()[:16]}.sock"


def serve(name: str, port: int) -> None:
    """The runner: listen on 127.0.0.1:port, run the namespace child, stop it on SIGTERM."""
    d = state_root() / name
    args = json.loads((d / "args").read_text())
    sock_path = socket_path(d)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)
    (d / "port").write_text(f"{listener.getsockname()[1]}\n")
    argv = [sim_binary(), "--port", str(INNER_PORT), *args]
    child = subprocess.Popen(["unshare", "--net", "--", sys.executable, str(Path(__file__).resolve()),
                              "_inner", sock_path, *argv], preexec_fn=die_with_parent)

    stopping = threading.Event()

    def stop(*_: object) -> None:
        stopping.set()
        listener.close()
        child.terminate()
        try:
            child.wait(15)
        except subprocess.TimeoutExpired:
            child.kill()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    def watch() -> None:
        child.wait()
        if not stopping.is_set():
            log(f"simulator {name} exited with {child.returncode}")
            os._exit(3)

    threading.Thread(target=watch, daemon=True).start()

    def connect() -> socket.socket | None:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(sock_path)
            return s
        except OSError:
            s.close()
            return None

    relay(listener, connect)


def read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def running_pid(name: str) -> int | None:
    """The runner's PID when it is alive AND is our runner for NAME (a stale pid file is ignored)."""
    pid = read_int(state_root() / name / "pid")
    if pid is None:
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if b"_serve" in cmdline and name.encode() in cmdline and any(a.endswith(b"sim.py") for a in cmdline):
        return pid
    return None


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def stop(name: str) -> bool:
    d = state_root() / name
    pid = running_pid(name)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while running_pid(name) == pid and time.monotonic() < deadline:
            time.sleep(0.1)
        if running_pid(name) == pid:
            log(f"runner {name} pid {pid} ignored SIGTERM; killing it")
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.3)
    for f in ("pid", "port"):
        (d / f).unlink(missing_ok=True)
    return pid is not None


def start(name: str, rest: list[str]) -> int:
    port = 0
    args: list[str] = []
    i = 0
    while i < len(rest):
        a = rest[i]
        if a == "--port" and i + 1 < len(rest):
            port = int(rest[i + 1])
            i += 2
            continue
        if a.startswith("--port="):
            port = int(a.split("=", 1)[1])
        else:
            args.append(a)
        i += 1
    if not any(a == "--model" or a.startswith("--model=") for a in args):
        raise SystemExit("sim.py start: --model is required")
    if "--force-dummy-tokenizer" not in args:
        args.append("--force-dummy-tokenizer")
    if not Path(sim_binary()).is_file():
        raise SystemExit(f"{sim_binary()} is missing; build it with tools/localcluster/build.sh")
    d = state_root() / name
    d.mkdir(parents=True, exist_ok=True)
    wanted = json.dumps(args)
    pid = running_pid(name)
    if pid is not None:
        current = read_int(d / "port")
        if (d / "args").read_text() == wanted and current and (port in (0, current)) and healthy(current):
            return current
        log(f"restarting {name} with new arguments")
        stop(name)
    (d / "args").write_text(wanted)
    (d / "port").unlink(missing_ok=True)
    with open(d / "sim.log", "ab") as out:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "_serve", name, str(port)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    (d / "pid").write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + float(os.environ.get("SIM_START_TIMEOUT", "60"))
    while True:
        got = read_int(d / "port")
        if proc.poll() is not None:
            tail = (d / "sim.log").read_text(errors="replace")[-2000:]
            raise SystemExit(f"simulator {name} exited with {proc.returncode}:\n{tail}")
        if got and healthy(got):
            return got
        if time.monotonic() > deadline:
            stop(name)
            tail = (d / "sim.log").read_text(errors="replace")[-2000:]
            raise SystemExit(f"simulator {name} did not answer /health in time:\n{tail}")
        time.sleep(0.2)


def names() -> list[str]:
    root = state_root()
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "_inner":
        inner(argv[1], argv[2:])
        return 0
    if len(argv) == 3 and argv[0] == "_serve":
        serve(argv[1], int(argv[2]))
        return 0
    if len(argv) >= 2 and argv[0] == "start":
        print(start(argv[1], argv[2:]))
        return 0
    if len(argv) == 2 and argv[0] == "stop":
        targets = names() if argv[1] == "--all" else [argv[1]]
        for n in targets:
            if stop(n):
                log(f"stopped {n}")
        return 0
    if len(argv) == 2 and argv[0] == "port":
        port = read_int(state_root() / argv[1] / "port")
        if running_pid(argv[1]) is None or not port:
            log(f"simulator {argv[1]} is not running")
            return 1
        print(port)
        return 0
    if argv == ["list"]:
        for n in names():
            pid = running_pid(n)
            port = read_int(state_root() / n / "port")
            print(f"{n}\t{'running' if pid else 'stopped'}\tpid={pid or '-'}\tport={port or '-'}")
        return 0
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
