#!/usr/bin/env python3
"""The kubelet for the vllm chart's model prefetch Job pods, and a Hub on loopback for them to download from.

Usage:
  prefetch_sim.py start --token-file FILE   prints the Hub's URL; runs `prefetch_sim.py run` as a host process
  prefetch_sim.py stop | status
  prefetch_sim.py run --token-file FILE     in the foreground

kwok completes Job pods by a Stage; the pods labelled app.kubernetes.io/component=model-prefetch are left out
of its pod stages (kwok/stages.yaml, SIM_KUBELET), and this process plays their kubelet instead:

1 A scheduled, Pending prefetch pod gets its container command run as a host process, with the container's
  environment as the kubelet builds it (k8s.io/kubernetes pkg/kubelet/kubelet_pods.go makeEnvironmentVariables:
  value, secretKeyRef read through the API, fieldRef metadata.name/namespace; a missing Secret or key that is not
  optional holds the container Waiting with CreateContainerConfigError, and it is retried).
2 Volumes: a persistentVolumeClaim must be Bound; its PersistentVolume's hostPath (or local) path is the directory
  that stands for the volume, and it must lie under this cluster's state directory (volumes/). An emptyDir is a
  fresh directory per pod. Every environment value and argument that starts with a mountPath is rewritten to the
  host directory: the process is not chrooted (see README "Model prefetch").
3 HF_ENDPOINT is set to the Hub below, PATH puts the pinned huggingface_hub venv first (hf, huggingface-cli).
4 Status, as the kubelet's status manager writes it (pkg/kubelet/status/status_manager.go syncPod, a patch of
  pods/status; phases from pkg/kubelet/kubelet_pods.go getPhase, restartPolicy Never: all containers exited 0 ->
  Succeeded, else Failed; conditions from pkg/kubelet/status/generate.go, PodCompleted / ContainersNotReady).
  The terminated state carries the exit code, reason Completed or Error, and with terminationMessagePolicy
  FallbackToLogsOnError and a failure the log's last 80 lines, at most 2048 bytes
  (pkg/kubelet/kuberuntime/kuberuntime_container.go, pkg/kubelet/container/runtime.go).
  A pod deleted while its process runs has the process group killed (SIGTERM, SIGKILL after the grace period).

The Hub serves a tiny model tree (config, tokenizer files, a small safetensors file) in the Hub's URL layout,
bound to 127.0.0.1, modelled on huggingface_hub 0.35.3 (HUGGINGFACE_HUB_VERSION in versions.env):
  GET /api/models/<repo>[/revision/<rev>]   hf_api.py HfApi.model_info: JSON with sha and siblings[].rfilename
  HEAD|GET /<repo>/resolve/<rev>/<file>     file_download.py get_hf_file_metadata / http_get: X-Repo-Commit,
                                            ETag (X-Linked-Etag), Content-Length; GET honours a Range: bytes=N-
Every request must carry "Authorization: Bearer <token>" equal to the token file's content, else 401 (so a missing
or wrong token fails the download); an unknown revision is 404 with X-Error-Code RevisionNotFound, an unknown
repo or file 404 with RepoNotFound / EntryNotFound (utils/_http.py hf_raise_for_status reads these).
Every request is appended to hub-access.log (method, path, status; never the token).

State: $KWOK_WORKDIR/kubeinfer-$KUBEINFER_CLUSTER/prefetch/ (prefetch-sim.pid/.log, hub.url, hub-access.log,
pods/<uid>/ with each pod's log and emptyDirs); volumes/ next to it holds the directories that stand for volumes.
Environment: KUBEINFER_CACHE, KUBEINFER_CLUSTER, KWOK_WORKDIR (as cluster.sh). Standard library only.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.server
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

from hostproc import HostProcess, cache_dir, cluster_name, kubectl, log_tail, pinned, state_dir, workdir
from kubeapi import KubeApi

SELECTOR = "app.kubernetes.io/component=model-prefetch"
INTERVAL = 0.5
TERMINATION_LOG_LINES = 80  # pkg/kubelet/container/runtime.go MaxContainerTerminationMessageLogLines
TERMINATION_LOG_BYTES = 2048  # MaxContainerTerminationMessageLogLength
RUNTIME = "prefetch-sim"


def prefetch_dir() -> Path:
    return state_dir() / "prefetch"


def volumes_dir() -> Path:
    """Where the directories that stand for PersistentVolumes live (a PV's hostPath must be under it)."""
    return state_dir() / "volumes"


def hf_venv() -> Path:
    return cache_dir() / f"huggingface_hub-{pinned('HUGGINGFACE_HUB_VERSION')}"


def log(msg: str) -> None:
    print(f"[prefetch-sim {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ---------------------------------------------------------------------------------------------------------------
# The Hub: one repository, two commits.

REPO_ID = "kubeinfer-test/tiny-model"


def _safetensors(values: list[float]) -> bytes:
    """A valid safetensors file holding one F32 tensor (8-byte little-endian header length, JSON header, data)."""
    data = struct.pack(f"<{len(values)}f", *values)
    header = json.dumps({"weight": {"dtype": "F32", "shape": [len(values)], "data_offsets": [0, len(data)]},
                         "__metadata__": {"format": "pt"}}, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + data


def _tree(layers: int) -> dict[str, bytes]:
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8, "num_hidden_layers": layers,
              "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 16, "vocab_size": 32,
              "max_position_embeddings": 128, "torch_dtype": "float32"}
    tokenizer = {"version": "1.0", "model": {"type": "WordLevel", "vocab": {f"t{i}": i for i in range(32)}, "unk_token": "t0"}}
    return {
        "config.json": json.dumps(config, indent=2).encode() + b"\n",
        "generation_config.json": b'{"max_new_tokens": 16}\n',
        "tokenizer.json": json.dumps(tokenizer).encode() + b"\n",
        "tokenizer_config.json": b'{"model_max_length": 128, "tokenizer_class": "PreTrainedTokenizerFast"}\n',
        "model.safetensors": _safetensors([0.5 * i for i in range(8 * layers)]),
    }


def _commit(files: dict[str, bytes]) -> str:
    h = hashlib.sha1()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + files[name])
    return h.hexdigest()


def _etag(name: str, content: bytes) -> str:
    # The Hub gives LFS files (weights) their sha256 as ETag and other files their git blob sha1.
    if name.endswith(".safetensors"):
        return hashlib.sha256(content).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


COMMITS: dict[str, dict[str, bytes]] = {}
REFS: dict[str, str] = {}
for _ref, _layers in (("main", 1), ("v2", 2)):
    _files = _tree(_layers)
    COMMITS[_commit(_files)] = _files
    REFS[_ref] = _commit(_files)


class Hub(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, token_file: Path, access_log: Path) -> None:
        super().__init__(("127.0.0.1", 0), HubHandler)
        self.token_file = token_file
        self.access_log = access_log
        self.lock = threading.Lock()


class HubHandler(http.server.BaseHTTPRequestHandler):
    server: Hub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))  # for HEAD too: the size of what GET would send
        self.end_headers()
        if not head:
            self.wfile.write(body)
        with self.server.lock, open(self.server.access_log, "a") as f:
            f.write(f"{now()} {self.command} {self.path} {status}\n")

    def _error(self, status: int, code: str, message: str, head: bool) -> None:
        self._send(status, json.dumps({"error": message}).encode(),
                   {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": message}, head)

    def _authorized(self) -> bool:
        try:
            want = self.server.token_file.read_text().strip()
        except OSError:
            return False
        return bool(want) and self.headers.get("Authorization", "") == f"Bearer {want}"

    def do_GET(self) -> None:
        self._handle(head=False)

    def do_HEAD(self) -> None:
        self._handle(head=True)

    def _handle(self, head: bool) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        if not self._authorized():
            self._send(401, b'{"error":"Invalid credentials in Authorization header"}', {"Content-Type": "application/json"}, head)
            return
        api = f"/api/models/{REPO_ID}"
        if path == api or path.startswith(api + "/revision/"):
            rev = path[len(api + "/revision/"):] if path != api else "main"
            commit = REFS.get(rev, rev)
            if commit not in COMMITS:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", head)
                return
            info = {"_id": "kubeinfer-test", "id": REPO_ID, "modelId": REPO_ID, "author": REPO_ID.split("/")[0], "sha": commit,
                    "private": False, "gated": False, "disabled": False, "tags": [], "lastModified": "2026-12-01T00:00:00.000Z",
                    "siblings": [{"rfilename": n} for n in sorted(COMMITS[commit])]}
            self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, head)
            return
        prefix = f"/{REPO_ID}/resolve/"
        if not path.startswith(prefix):
            self._error(404, "RepoNotFound", "Repository not found", head)
            return
        rev, _, name = path[len(prefix):].partition("/")
        commit = REFS.get(rev, rev)
        if commit not in COMMITS:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", head)
            return
        content = COMMITS[commit].get(name)
        if content is None:
            self._error(404, "EntryNotFound", f"{name} does not exist at {rev}", head)
            return
        headers = {"X-Repo-Commit": commit, "ETag": f'"{_etag(name, content)}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        start = 0
        rng = self.headers.get("Range", "")
        if rng.startswith("bytes=") and rng[6:].rstrip("-").isdigit():
            start = int(rng[6:].rstrip("-"))
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(content) - 1}/{len(content)}"
            self._send(206, content[start:], headers, head)
        else:
            self._send(200, content, headers, head)


# ---------------------------------------------------------------------------------------------------------------
# The kubelet part.

class ConfigError(Exception):
    """The container cannot be created yet (CreateContainerConfigError), with the kubelet's kind of message."""


class Runner:
    def __init__(self, api: KubeApi, hub_url: str) -> None:
        self.api = api
        self.hub_url = hub_url
        self.procs: dict[str, dict[str, Any]] = {}  # pod uid -> {proc, pod, started, log}
        self.done: set[str] = set()

    def loop(self) -> None:
        while True:
            try:
                self.sync()
            except (RuntimeError, OSError, ValueError) as e:
                log(f"sync failed: {e}")
            time.sleep(INTERVAL)

    def sync(self) -> None:
        pods = self.api.items("/api/v1/pods?labelSelector=" + urllib.parse.quote(SELECTOR))
        seen = set()
        for pod in pods:
            md, uid = pod["metadata"], pod["metadata"]["uid"]
            seen.add(uid)
            if md.get("deletionTimestamp"):
                self.kill(uid, int(pod["spec"].get("terminationGracePeriodSeconds") or 30))
                continue
            if uid in self.procs:
                self.poll(uid)
            elif uid not in self.done and pod["spec"].get("nodeName") and (pod.get("status") or {}).get("phase", "Pending") == "Pending":
                self.launch(pod)
        for uid in list(self.procs):
            if uid not in seen:
                self.kill(uid, 0)

    def patch_status(self, pod: dict[str, Any], status: dict[str, Any]) -> None:
        md = pod["metadata"]
        # A strategic merge patch, as the kubelet's statusutil.PatchPodStatus sends: conditions merge by type.
        self.api.call("PATCH", f"/api/v1/namespaces/{md['namespace']}/pods/{md['name']}/status",
                      {"metadata": {"uid": md["uid"]}, "status": status}, content_type="application/strategic-merge-patch+json")

    def secret_value(self, namespace: str, ref: dict[str, Any]) -> str | None:
        secret = self.api.get(f"/api/v1/namespaces/{namespace}/secrets/{ref['name']}")
        if secret is None or ref["key"] not in (secret.get("data") or {}):
            if ref.get("optional"):
                return None
            what = f'secret "{ref["name"]}" not found' if secret is None else f"couldn't find key {ref['key']} in Secret {namespace}/{ref['name']}"
            raise ConfigError(what)
        return base64.b64decode(secret["data"][ref["key"]]).decode()

    def host_dirs(self, pod: dict[str, Any], container: dict[str, Any], poddir: Path) -> dict[str, Path]:
        """{mountPath: host directory} for the container's volume mounts."""
        ns = pod["metadata"]["namespace"]
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        out: dict[str, Path] = {}
        for mount in container.get("volumeMounts") or []:
            vol = volumes[mount["name"]]
            if "persistentVolumeClaim" in vol:
                claim = vol["persistentVolumeClaim"]["claimName"]
                pvc = self.api.get(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}")
                if pvc is None or (pvc.get("status") or {}).get("phase") != "Bound":
                    raise ConfigError(f"persistentvolumeclaim {claim!r} is not bound")
                pv = self.api.get(f"/api/v1/persistentvolumes/{pvc['spec']['volumeName']}") or {}
                path = ((pv.get("spec") or {}).get("hostPath") or (pv.get("spec") or {}).get("local") or {}).get("path")
                root = volumes_dir().resolve()
                if not path or not Path(path).resolve().is_relative_to(root):
                    raise ConfigError(f"PersistentVolume {pvc['spec']['volumeName']}: the harness maps only hostPath/local "
                                      f"volumes under {root}, got {path!r}")
                Path(path).mkdir(parents=True, exist_ok=True)
                out[mount["mountPath"]] = Path(path)
            elif "emptyDir" in vol:
                d = poddir / "volumes" / mount["name"]
                d.mkdir(parents=True, exist_ok=True)
                out[mount["mountPath"]] = d
            else:
                raise ConfigError(f"volume {mount['name']!r}: only persistentVolumeClaim and emptyDir are simulated")
        return out

    def environment(self, pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
        md = pod["metadata"]
        env: dict[str, str] = {}
        for item in container.get("env") or []:
            if "value" in item:
                env[item["name"]] = str(item["value"])
            elif "secretKeyRef" in (item.get("valueFrom") or {}):
                value = self.secret_value(md["namespace"], item["valueFrom"]["secretKeyRef"])
                if value is not None:
                    env[item["name"]] = value
            elif "fieldRef" in (item.get("valueFrom") or {}):
                field = item["valueFrom"]["fieldRef"]["fieldPath"]
                env[item["name"]] = {"metadata.name": md["name"], "metadata.namespace": md["namespace"]}.get(field, "")
        return env

    def launch(self, pod: dict[str, Any]) -> None:
        md, spec = pod["metadata"], pod["spec"]
        uid = md["uid"]
        container = spec["containers"][0]
        poddir = prefetch_dir() / "pods" / uid
        poddir.mkdir(parents=True, exist_ok=True)
        try:
            mounts = self.host_dirs(pod, container, poddir)
            env = self.environment(pod, container)
        except ConfigError as e:
            self.patch_status(pod, {"containerStatuses": [{
                "name": container["name"], "image": container["image"], "imageID": "", "ready": False, "started": False,
                "restartCount": 0, "state": {"waiting": {"reason": "CreateContainerConfigError", "message": str(e)}}}]})
            return

        def host(value: str) -> str:
            for mount_path, d in sorted(mounts.items(), key=lambda x: -len(x[0])):
                if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
                    return str(d) + value[len(mount_path.rstrip("/")):]
            return value

        env = {k: host(v) for k, v in env.items()}
        env.update(PATH=f"{hf_venv() / 'bin'}:/usr/bin:/bin", HF_ENDPOINT=self.hub_url, LANG="C.UTF-8")
        env.setdefault("HOME", str(poddir))
        argv = [host(a) for a in (container.get("command") or []) + (container.get("args") or [])]
        if not argv:
            raise RuntimeError(f"pod {md['namespace']}/{md['name']}: no command (an image entrypoint is not simulated)")
        logfile = poddir / f"{container['name']}.log"
        started = now()
        with open(logfile, "ab") as out:
            proc = subprocess.Popen(argv, env=env, cwd=str(poddir), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, close_fds=True)
        self.procs[uid] = {"proc": proc, "pod": pod, "started": started, "log": logfile, "container": container}
        log(f"pod {md['namespace']}/{md['name']}: started {argv[0]} (pid {proc.pid})")
        node = spec["nodeName"]
        conditions = [{"type": t, "status": "True", "lastTransitionTime": started}
                      for t in ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")]
        self.patch_status(pod, {"phase": "Running", "startTime": started, "hostIP": self.node_ip(node), "conditions": conditions,
                                "containerStatuses": [{"name": container["name"], "image": container["image"], "imageID": "",
                                                       "containerID": f"{RUNTIME}://{proc.pid}", "ready": True, "started": True,
                                                       "restartCount": 0, "state": {"running": {"startedAt": started}}}]})

    def node_ip(self, node: str) -> str:
        obj = self.api.get(f"/api/v1/nodes/{node}") or {}
        return next((a["address"] for a in (obj.get("status") or {}).get("addresses") or [] if a.get("type") == "InternalIP"), "")

    def poll(self, uid: str) -> None:
        entry = self.procs[uid]
        code = entry["proc"].poll()
        if code is None:
            return
        del self.procs[uid]
        self.done.add(uid)
        pod, container = entry["pod"], entry["container"]
        finished = now()
        terminated: dict[str, Any] = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                      "startedAt": entry["started"], "finishedAt": finished,
                                      "containerID": f"{RUNTIME}://{entry['proc'].pid}"}
        if code != 0 and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            lines = log_tail(entry["log"], 64 * 1024).splitlines()[-TERMINATION_LOG_LINES:]
            terminated["message"] = "\n".join(lines).encode()[-TERMINATION_LOG_BYTES:].decode(errors="replace")
        phase = "Succeeded" if code == 0 else "Failed"
        reason = "PodCompleted" if code == 0 else "ContainersNotReady"
        not_ready: dict[str, Any] = {"status": "False", "reason": reason, "lastTransitionTime": finished}
        if code != 0:
            not_ready["message"] = f"containers with unready status: [{container['name']}]"
        self.patch_status(pod, {"phase": phase, "conditions": [
            {"type": "PodReadyToStartContainers", "status": "False", "lastTransitionTime": finished},
            dict(not_ready, type="ContainersReady"), dict(not_ready, type="Ready")],
            "containerStatuses": [{"name": container["name"], "image": container["image"], "imageID": "", "ready": False,
                                   "started": False, "restartCount": 0, "containerID": terminated["containerID"],
                                   "state": {"terminated": terminated}}]})
        log(f"pod {pod['metadata']['namespace']}/{pod['metadata']['name']}: exited {code} -> {phase}")

    def kill(self, uid: str, grace: int) -> None:
        entry = self.procs.pop(uid, None)
        if entry is None:
            return
        proc = entry["proc"]
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self.done.add(uid)
        log(f"pod {entry['pod']['metadata']['name']} deleted: its process was stopped")


def run(token_file: Path) -> None:
    d = prefetch_dir()
    d.mkdir(parents=True, exist_ok=True)
    if not (hf_venv() / "bin" / "hf").is_file():
        raise SystemExit(f"{hf_venv()}/bin/hf is missing: run prefetch_sim.py start (it installs huggingface_hub there)")
    kubeconfig = workdir() / "clusters" / cluster_name() / "kubeconfig.yaml"
    api = KubeApi(kubeconfig, kubectl(), d / "certs")
    hub = Hub(token_file, d / "hub-access.log")
    url = f"http://127.0.0.1:{hub.server_address[1]}"
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    (d / "hub.url").write_text(url + "\n")
    log(f"hub at {url} ({REPO_ID}: {', '.join(f'{r}={c[:12]}' for r, c in REFS.items())}); watching pods {SELECTOR}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    Runner(api, url).loop()


def ensure_venv() -> None:
    """huggingface_hub at the pinned version, in a venv of its own in the cache (never in the project)."""
    venv = hf_venv()
    if (venv / "bin" / "hf").is_file():
        return
    version = pinned("HUGGINGFACE_HUB_VERSION")
    log(f"installing huggingface_hub {version} into {venv}")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"huggingface_hub=={version}"], check=True)


def proc() -> HostProcess:
    return HostProcess(prefetch_dir(), "prefetch-sim")


def start(token_file: Path) -> str:
    ensure_venv()
    p = proc()
    url_file = prefetch_dir() / "hub.url"
    if p.pid() is not None:
        p.stop()
    url_file.unlink(missing_ok=True)
    p.start([sys.executable, str(Path(__file__).resolve()), "run", "--token-file", str(token_file.resolve())])
    deadline = time.monotonic() + 30
    while not url_file.is_file():
        if p.pid() is None or time.monotonic() > deadline:
            raise SystemExit(f"prefetch_sim.py did not start:\n{log_tail(p.logfile)}")
        time.sleep(0.1)
    return url_file.read_text().strip()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="prefetch_sim.py")
    parser.add_argument("action", choices=["start", "stop", "status", "run"])
    parser.add_argument("--token-file", type=Path)
    args = parser.parse_args(argv)
    if args.action in ("start", "run") and not args.token_file:
        parser.error("--token-file is required")
    if args.action == "start":
        print(start(args.token_file))
    elif args.action == "run":
        run(args.token_file)
    elif args.action == "stop":
        proc().stop()
    else:
        pid = proc().pid()
        print(f"running (pid {pid})" if pid else "stopped")
        return 0 if pid else 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
