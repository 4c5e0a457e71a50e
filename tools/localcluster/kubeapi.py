"""JSON calls to the local cluster's API server with a kubeconfig's credentials, standard library only.

Shared by the host processes of the local cluster (metrics.py, gpu_sim.py), which run under the
system python3 without the kubernetes client. kubectl resolves the kubeconfig (contexts, embedded or
file credentials) once; the calls then go straight to the API server, as kubectl's would.
"""
from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


class KubeApi:
    """The API server of ``kubeconfig``; client certificates given inline are written to ``cert_dir`` (mode 0600)."""

    def __init__(self, kubeconfig: Path, kubectl: Path, cert_dir: Path, cert_prefix: str = "client") -> None:
        out = subprocess.run([str(kubectl), "--kubeconfig", str(kubeconfig), "config", "view", "--raw", "--minify",
                              "-o", "json"], capture_output=True, text=True, check=True, timeout=30).stdout
        cfg = json.loads(out)
        cluster, user = cfg["clusters"][0]["cluster"], cfg["users"][0]["user"]
        self.server = cluster["server"].rstrip("/")
        self.ctx = ssl.create_default_context()
        if cluster.get("certificate-authority-data"):
            self.ctx.load_verify_locations(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
        elif cluster.get("certificate-authority"):
            self.ctx.load_verify_locations(cafile=cluster["certificate-authority"])
        if cluster.get("insecure-skip-tls-verify"):
            self.ctx.check_hostname = False
            self.ctx.verify_mode = ssl.CERT_NONE
        cert, key = user.get("client-certificate"), user.get("client-key")
        if user.get("client-certificate-data"):
            cert_dir.mkdir(parents=True, exist_ok=True)
            cert, key = str(cert_dir / f"{cert_prefix}.crt"), str(cert_dir / f"{cert_prefix}.key")
            for path, data in ((cert, user["client-certificate-data"]), (key, user["client-key-data"])):
                with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
                    f.write(base64.b64decode(data))
        if cert and key:
            self.ctx.load_cert_chain(cert, key)
        self.token = user.get("token")

    def call(self, method: str, path: str, body: Any = None, content_type: str = "application/merge-patch+json",
             timeout: float = 10) -> Any:
        """The decoded JSON answer (text when it is not JSON), None on 404; raises RuntimeError on other errors."""
        req = urllib.request.Request(self.server + path, method=method,
                                     data=None if body is None else json.dumps(body).encode())
        if body is not None:
            req.add_header("Content-Type", content_type)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise RuntimeError(f"{method} {path}: HTTP {e.code} {e.read()[:300]!r}") from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode(errors="replace")

    def get(self, path: str, timeout: float = 10) -> Any:
        return self.call("GET", path, timeout=timeout)

    def items(self, path: str) -> list[dict[str, Any]]:
        return (self.get(path) or {}).get("items") or []
