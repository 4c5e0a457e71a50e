from __future__ import annotations

import json
import os

import pytest

from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._helm import Helm, values_differ


class Recorder:
    def __init__(self, rc: int = 0, out: str = "", err: str = "") -> None:
        self.rc, self.out, self.err = rc, out, err
        self.argv: list[str] = []
        self.env: dict[str, str] = {}
        self.values: dict | None = None

    def __call__(self, argv: list[str], environ_update: dict[str, str] | None = None) -> tuple[int, str, str]:
        self.argv, self.env = argv, environ_update or {}
        if "--values" in argv:
            with open(argv[argv.index("--values") + 1]) as f:
                self.values = json.load(f)
        return self.rc, self.out, self.err


def test_upgrade_argv_values_file_and_token_in_env_only() -> None:
    rec = Recorder()
    helm = Helm(rec, "/bin/helm", {"kubeconfig": "/k", "context": "c", "api_key": "s3cr3t"})
    helm.upgrade_install("r", "./chart", "ns", {"a": 1}, version="1.2.3", create_namespace=True, atomic=True, timeout=60)
    argv = rec.argv
    assert argv[:7] == ["/bin/helm", "upgrade", "--install", "r", "./chart", "--namespace", "ns"]
    assert ["--version", "1.2.3"] == argv[argv.index("--version"):argv.index("--version") + 2]
    assert "--atomic" in argv and "--wait" in argv and "--create-namespace" in argv
    assert argv[argv.index("--kubeconfig") + 1] == "/k" and argv[argv.index("--kube-context") + 1] == "c"
    assert "s3cr3t" not in " ".join(argv)
    assert rec.env == {"HELM_KUBETOKEN": "s3cr3t"}
    assert rec.values == {"a": 1}
    assert not os.path.exists(argv[argv.index("--values") + 1]), "the values file is removed"


def test_failure_reports_masked_stderr_and_command() -> None:
    rec = Recorder(rc=1, err="Error: unauthorized token s3cr3t")
    helm = Helm(rec, "helm", {"api_key": "s3cr3t"})
    with pytest.raises(KubeInferError) as err:
        helm.upgrade_install("r", "c", "ns", {})
    assert "s3cr3t" not in err.value.msg and "s3cr3t" not in str(err.value.result)
    assert err.value.result["rc"] == 1 and "unauthorized" in err.value.result["stderr"]
    assert "<values-file>" in err.value.result["command"]


def test_release_lookup_parses_list_output() -> None:
    rec = Recorder(out='[{"name":"gpu-operator","chart":"gpu-operator-v25.3.0","status":"deployed","revision":"2"}]')
    assert Helm(rec, "helm", {}).release("gpu-operator", "gpu-operator")["chart"] == "gpu-operator-v25.3.0"
    assert rec.argv[rec.argv.index("--filter") + 1] == "^gpu-operator$"


def test_values_compare_as_json() -> None:
    assert not values_differ({"a": [1, 2], "b": {"c": 1.0}}, {"b": {"c": 1}, "a": (1, 2)})
    assert values_differ({"a": 1}, {"a": 2})
