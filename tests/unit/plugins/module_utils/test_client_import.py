# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""_client imports only the parts of the kubernetes library it uses (the module start-up of issue 12), and code that
needs the rest of the library still gets all of it. Each case runs in a fresh interpreter: the test process has
imported the whole library long before."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from ansible_collections.kubeinfer.llm.plugins.module_utils import _client

# The directory holding ansible_collections/, wherever conftest.py or ansible-test put it.
COLLECTIONS_ROOT = _client.__file__.split("/ansible_collections/", maxsplit=1)[0]

KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: 'https://127.0.0.1:1', insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: t0ken}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


def fresh(code: str, tmp_path: Path) -> Any:
    """Run ``code`` in a new interpreter with the collection importable; it prints one JSON value."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    prelude = ("import json, sys\n"
               "from ansible_collections.kubeinfer.llm.plugins.module_utils import _client\n"
               f"api = _client.build_api_client({{'kubeconfig': {str(kubeconfig)!r}, 'parallel': 7}})\n")
    proc = subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, check=False, timeout=120,
                          env={"PYTHONPATH": COLLECTIONS_ROOT, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_building_a_client_imports_neither_the_api_classes_nor_the_models_nor_the_dynamic_client(tmp_path: Path) -> None:
    out = fresh("mods = [m for m in sys.modules if m.startswith(('kubernetes', 'jsonschema'))]\n"
                "print(json.dumps({'mods': mods, 'host': api.configuration.host, 'auth': api.configuration.api_key,"
                " 'pool': api.configuration.connection_pool_maxsize, 'agent': api.user_agent}))", tmp_path)
    assert out["host"] == "https://127.0.0.1:1"
    assert out["auth"] == {"authorization": "Bearer t0ken"}
    assert out["agent"] == _client.USER_AGENT
    assert out["pool"] >= 7
    mods = set(out["mods"])
    assert {"kubernetes.client.api_client", "kubernetes.config.kube_config"} <= mods
    for heavy in ("kubernetes.client.api.core_v1_api", "kubernetes.client.models.v1_pod", "kubernetes.dynamic", "kubernetes.watch",
                  "kubernetes.stream", "kubernetes_validate", "jsonschema"):
        assert heavy not in mods, heavy
    assert len(mods) < 30


def test_the_rest_of_the_library_is_still_there_when_asked_for(tmp_path: Path) -> None:
    out = fresh("import kubernetes\n"
                "from kubernetes import client\n"
                "from kubernetes.stream import portforward\n"
                "core = client.CoreV1Api(api)\n"
                "pod = kubernetes.client.models.V1Pod(metadata=client.V1ObjectMeta(name='p'))\n"
                "try:\n"
                "    client.NoSuchThing\n"
                "    missing = 'no error'\n"
                "except AttributeError as e:\n"
                "    missing = str(e)\n"
                "print(json.dumps({'version': kubernetes.__version__, 'core': type(core).__name__, 'pod': pod.metadata.name,"
                " 'dynamic': kubernetes.dynamic.DynamicClient.__name__, 'same': client.ApiClient is type(api),"
                " 'pf': callable(portforward), 'missing': missing}))", tmp_path)
    assert out == {"version": out["version"], "core": "CoreV1Api", "pod": "p", "dynamic": "DynamicClient", "same": True, "pf": True,
                   "missing": "module 'kubernetes.client' has no attribute 'NoSuchThing'"}
    assert out["version"][0].isdigit()


def test_a_port_forward_loads_the_core_api_alone(tmp_path: Path) -> None:
    out = fresh("from kubernetes.client.api.core_v1_api import CoreV1Api\n"
                "from kubernetes.stream import portforward\n"
                "core = CoreV1Api(api)\n"
                "mods = [m for m in sys.modules if m.startswith('kubernetes')]\n"
                "print(json.dumps({'mods': mods, 'method': callable(core.connect_get_namespaced_pod_portforward)}))", tmp_path)
    assert out["method"]
    mods = set(out["mods"])
    assert {"kubernetes.client.api.core_v1_api", "kubernetes.stream.ws_client"} <= mods
    assert "kubernetes.client.api.apps_v1_api" not in mods and "kubernetes.client.models.v1_pod" not in mods


def test_the_auth_provider_libraries_load_on_first_use(tmp_path: Path) -> None:
    """kube_config's gcp and oidc providers still reach the real google.auth, oauthlib and requests_oauthlib, which a
    client for a token kubeconfig never loads; other code importing them (or requests) later gets the real ones."""
    out = fresh("before = sorted(m for m in sys.modules if m.startswith(('google.auth.', 'oauthlib.oauth2.', 'requests_oauthlib.'))\n"
                "              and type(sys.modules[m]).__name__ != '_AuthProviderModule')\n"
                "from kubernetes.config import kube_config as kc\n"
                "error = kc.oauthlib.oauth2.rfc6749.errors.InvalidClientIdError\n"
                "session = kc.OAuth2Session(client_id='c', token={'access_token': 'a', 'refresh_token': 'r'})\n"
                "import requests\n"
                "import google.auth.compute_engine\n"
                "bypass = requests.utils.should_bypass_proxies('https://127.0.0.1:1', no_proxy='127.0.0.1')\n"
                "print(json.dumps({'before': before, 'default': kc.google.auth.default.__module__,"
                " 'request': kc.google.auth.transport.requests.Request.__module__, 'session': type(session).__module__,"
                " 'error': error.__module__, 'real': type(sys.modules['google.auth']).__name__, 'bypass': bypass}))", tmp_path)
    assert out["before"] == [], "nothing of the auth providers is loaded by building a client"
    assert out["default"] == "google.auth._default" and out["request"] == "google.auth.transport.requests"
    assert out["session"] == "requests_oauthlib.oauth2_session" and out["error"] == "oauthlib.oauth2.rfc6749.errors"
    assert out["real"] == "module" and out["bypass"] is True
