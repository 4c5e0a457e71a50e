"""The release as the modules read it from helm's own storage (module_utils/_helm_storage) is what the real helm binary
shows: ``helm list --all``, ``helm get values``, ``helm get manifest`` and ``helm get hooks``, revision by revision, with the
default Secret driver and with HELM_DRIVER=configmap. The chart is a small one written here (a ConfigMap and a hook ConfigMap),
installed by helm itself on the local cluster."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import helm_binary

CHART_YAML = "apiVersion: v2\nname: probe\nversion: 1.2.3\nappVersion: \"9.9\"\n"
TEMPLATES = {
    "configmap.yaml": ("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cfg\n"
                       "data:\n  greeting: {{ .Values.greeting | quote }}\n"),
    # A hook whose weight keeps it out of the cluster's way: helm stores it apart from the manifest.
    "hook.yaml": ("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-hook\n  annotations:\n"
                  "    helm.sh/hook: post-install,post-upgrade\n    helm.sh/hook-delete-policy: before-hook-creation\n"
                  "data:\n  at: {{ .Release.Revision | quote }}\n"),
}


@pytest.fixture
def namespace(played_namespace: str) -> str:
    """A fresh namespace, deleted and waited for after the test (conftest's)."""
    return played_namespace


@pytest.fixture
def chart(tmp_path: Path) -> Path:
    root = tmp_path / "probe"
    (root / "templates").mkdir(parents=True)
    (root / "Chart.yaml").write_text(CHART_YAML)
    (root / "values.yaml").write_text("greeting: hello\n")
    for name, text in TEMPLATES.items():
        (root / "templates" / name).write_text(text)
    return root


def helm(kubeconfig: str, driver: str, *args: str) -> str:
    env = dict(os.environ, HELM_DRIVER=driver)
    proc = subprocess.run([helm_binary(), *args, "--kubeconfig", kubeconfig], capture_output=True, text=True, timeout=180, env=env,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def modules(collections_path: str) -> Any:
    if collections_path not in sys.path:
        sys.path.insert(0, collections_path)
    from ansible_collections.kubeinfer.llm.plugins.module_utils import _client, _helm_release  # pylint: disable=import-outside-toplevel
    from ansible_collections.kubeinfer.llm.plugins.module_utils._helm import Helm  # pylint: disable=import-outside-toplevel
    from ansible_collections.kubeinfer.llm.plugins.module_utils._resources import Kube  # pylint: disable=import-outside-toplevel
    return _client, _helm_release, Helm, Kube


def run_command(argv: list[str], environ_update: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180, env=dict(os.environ, **(environ_update or {})), check=False)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("driver", ["secret", "configmap"])
def test_the_stored_release_is_what_helm_shows(kubeconfig: str, collections_path: str, namespace: str, chart: Path, driver: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _client, _helm_release, Helm, Kube = modules(collections_path)
    monkeypatch.setenv("HELM_DRIVER", driver)
    kube = Kube(_client.build_api_client({"kubeconfig": kubeconfig}))
    cli = Helm(run_command, helm_binary(), {"kubeconfig": kubeconfig})
    name = "probe"
    assert _helm_release.read(kube, cli, name, namespace).row is None
    seen = []
    for revision, values in ((1, {"greeting": "one", "extra": {"nested": [1, 2]}}), (2, {"greeting": "two"}), (3, {})):
        helm(kubeconfig, driver, "upgrade", "--install", name, str(chart), "--namespace", namespace, "--reset-values",
             *sum((["--set-json", f"{k}={json.dumps(v)}"] for k, v in values.items()), []))
        read = _helm_release.read(kube, cli, name, namespace)
        assert kube.requests["list"] >= 1 and cli.commands == [], "read from the cluster, not through helm"
        # What the helm binary itself shows for the same release.
        (listed,) = json.loads(helm(kubeconfig, driver, "list", "--namespace", namespace, "--all", "--filter", f"^{name}$", "--output", "json"))
        shown_values = json.loads(helm(kubeconfig, driver, "get", "values", name, "--namespace", namespace, "--output", "json")) or {}
        manifest = helm(kubeconfig, driver, "get", "manifest", name, "--namespace", namespace)
        hooks = helm(kubeconfig, driver, "get", "hooks", name, "--namespace", namespace)
        assert read.row == listed, (read.row, listed)
        assert read.row["revision"] == str(revision) and read.row["chart"] == "probe-1.2.3" and read.row["app_version"] == "9.9"
        assert read.values == shown_values == values
        assert read.manifest is not None
        docs = [d for d in yaml.safe_load_all(read.manifest) if d]
        assert docs == [d for d in yaml.safe_load_all(manifest + "\n---\n" + hooks) if d]
        assert [d["metadata"]["name"] for d in docs] == [f"{name}-cfg", f"{name}-hook"]
        assert docs[1]["data"] == {"at": str(revision)}
        seen.append(read.row["status"])
    assert seen == ["deployed"] * 3
    # The older revisions stay stored (superseded); the last one is what is read.
    kind = {"secret": "Secret", "configmap": "ConfigMap"}[driver]
    stored = kube.list("v1", kind, namespace, label_selector=f"owner=helm,name={name}", metadata_only=True)
    assert sorted(x["metadata"]["labels"]["version"] for x in stored) == ["1", "2", "3"]
    helm(kubeconfig, driver, "uninstall", name, "--namespace", namespace)
    assert _helm_release.read(kube, cli, name, namespace).row is None


def test_a_driver_outside_the_cluster_is_read_through_helm(kubeconfig: str, collections_path: str, namespace: str,
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HELM_DRIVER=memory keeps nothing in the cluster: the module asks helm (which then knows no release; helm reads its
    memory driver's releases from HELM_MEMORY_DRIVER_DATA, here an empty file)."""
    _client, _helm_release, Helm, Kube = modules(collections_path)
    (tmp_path / "releases.yaml").write_text("")
    monkeypatch.setenv("HELM_DRIVER", "memory")
    monkeypatch.setenv("HELM_MEMORY_DRIVER_DATA", str(tmp_path / "releases.yaml"))
    kube = Kube(_client.build_api_client({"kubeconfig": kubeconfig}))
    cli = Helm(run_command, helm_binary(), {"kubeconfig": kubeconfig})
    assert _helm_release.read(kube, cli, "probe", namespace).row is None
    assert [argv[1] for argv in cli.commands] == ["list"] and not kube.requests
