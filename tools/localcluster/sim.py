#!/usr/bin/env python3
"""Run llm-d-inference-sim instances as host processes reachable on 127.0.0.1 only.

Usage:
  sim.py start NAME --model MODEL [--port PORT] [SIM FLAGS...]   prints the port
  sim.py stop NAME | --all
  sim.py port NAME                                                prints the port (exit 1 if not running)
  sim.py list

The simulator v0.10.2 has no bind-address flag: it listens on every IPv4 address. So each
instance runs in a private network namespace (``unshare --net``) whose only interface is its own
loopback, and two socat relays join it to the host:

  127.0.0.1:PORT (host socat) -> Unix socket sim.sock -> (socat in the namespace) 127.0.0.1:8000 -> simulator

The same port serves the OpenAI API, /health and /metrics, so PORT is also the value of the pod
annotation ``kubeinfer.io/sim-metrics-port`` that the local Prometheus scrapes.

State, per instance, in $KWOK_WORKDIR/kubeinfer-$KUBEINFER_CLUSTER/sims/NAME/: ``sim.pid`` (the
namespace: the simulator and the inner relay, one process group), ``relay.pid`` (the host relay),
``port``, ``args`` (the command line it was started with), ``sim.log``, ``relay.log``. An instance
runs while both processes do. ``start`` of a running instance with the same arguments just prints its
port; with other arguments it restarts it. ``--force-dummy-tokenizer`` is always added (no Hugging
Face call).

Environment: KUBEINFER_CACHE, KUBEINFER_CLUSTER, KWOK_WORKDIR (as cluster.sh),
INFERENCE_SIM_BINARY (default: the pinned build in the cache), SIM_START_TIMEOUT (60 s).
Only the Python standard library (and hostproc.py next to it) is used, so any python3 runs it.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from hostproc import HostProcess, cache_dir, log_tail, pinned, state_dir

INNER_PORT = 8000  # inside the private namespace every port is free
# In the namespace: bring lo up, relay the Unix socket to the simulator, wait out the model load ($3 seconds, in which
# nothing listens, as a vLLM server opens its port only once the weights are in), then become the simulator.
INNER = ('ip link set lo up || exit 1; socat "UNIX-LISTEN:$1,fork,unlink-early" "TCP:127.0.0.1:$2" & '
         'load=$3; shift 3; [ "$load" = 0 ] || sleep "$load"; exec "$@"')


def sims_dir() -> Path:
    return state_dir() / "sims"


def sim_binary() -> str:
    default = cache_dir() / f"inference-sim-{pinned('INFERENCE_SIM_VERSION')}" / "llm-d-inference-sim"
    return os.environ.get("INFERENCE_SIM_BINARY") or str(default)


def log(msg: str) -> None:
    print(f"[sim {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def procs(name: str) -> tuple[HostProcess, HostProcess]:
    """The namespace (simulator + inner relay) and the host relay of instance NAME."""
    d = sims_dir() / name
    return HostProcess(d, "sim"), HostProcess(d, "relay")


def socket_path(d: Path) -> str:
    path = str(d / "sim.sock")
    if len(path.encode()) < 100:
        return path
    return f"/tmp/kubeinfer-sim-{hashlib.sha256(path.encode()).hexdigest()[:16]}.sock"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def running(name: str) -> bool:
    return all(p.pid() is not None for p in procs(name))


def healthy(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def stop(name: str, drain: float = 0) -> bool:
    """Stop instance NAME. With ``drain`` > 0 the simulator alone gets SIGTERM first and up to ``drain`` s to finish
    its open requests (it drains them, llm-d-inference-sim pkg/communication/communication.go) while the relays that
    carry them stay up; then the whole namespace and the host relay are stopped."""
    sim = procs(name)[0]
    pid = sim.pid()
    if drain > 0 and pid is not None:
        try:
            os.kill(pid, 15)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + drain
        while sim.pid() == pid and time.monotonic() < deadline:
            time.sleep(0.1)
    stopped = [p.stop(timeout=10) for p in procs(name)]
    (sims_dir() / name / "port").unlink(missing_ok=True)
    return any(stopped)


def start(name: str, rest: list[str], bind: str = "127.0.0.1", load_seconds: float = 0, wait: bool = True) -> int:
    """Start instance NAME (see the module doc); ``bind`` is the host relay's address (a pod IP for podkubelet.py),
    ``load_seconds`` a model load before the simulator listens, and ``wait`` False returns without waiting for /health."""
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
    d = sims_dir() / name
    d.mkdir(parents=True, exist_ok=True)
    wanted = json.dumps(args)
    if any(p.pid() is not None for p in procs(name)):
        current = read_int(d / "port")
        if running(name) and (d / "args").read_text() == wanted and current and port in (0, current) and (not wait or healthy(current, bind)):
            return current
        log(f"restarting {name} with new arguments")
        stop(name)
    (d / "args").write_text(wanted)
    port = port or free_port()
    (d / "bind").write_text(bind)
    sock = socket_path(d)
    sim, relay = procs(name)
    sim.start(["unshare", "--net", "--", "sh", "-c", INNER, "sh", sock, str(INNER_PORT), f"{load_seconds:g}",
               sim_binary(), "--port", str(INNER_PORT), *args])
    relay.start(["socat", f"TCP-LISTEN:{port},bind={bind},reuseaddr,fork", f"UNIX-CONNECT:{sock}"])
    (d / "port").write_text(f"{port}\n")
    if not wait:
        return port
    deadline = time.monotonic() + float(os.environ.get("SIM_START_TIMEOUT", "60"))
    while not healthy(port, bind):
        dead = [p for p in (sim, relay) if p.pid() is None]
        if dead or time.monotonic() > deadline:
            stop(name)
            why = f"{dead[0].name} exited" if dead else "did not answer /health in time"
            raise SystemExit(f"simulator {name} {why}:\n{log_tail(sim.logfile)}{log_tail(relay.logfile)}")
        time.sleep(0.2)
    return port


def names() -> list[str]:
    root = sims_dir()
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def main(argv: list[str]) -> int:
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
        port = read_int(sims_dir() / argv[1] / "port")
        if not running(argv[1]) or not port:
            log(f"simulator {argv[1]} is not running")
            return 1
        print(port)
        return 0
    if argv == ["list"]:
        for n in names():
            sim, relay = procs(n)
            port = read_int(sims_dir() / n / "port")
            print(f"{n}\t{'running' if running(n) else 'stopped'}\tpid={sim.pid() or '-'},{relay.pid() or '-'}\tport={port or '-'}")
        return 0
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
