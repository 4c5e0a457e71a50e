"""The hf_token role against the local control plane: the Secret is right, and the token is in no output.

Each test runs ``ansible-playbook -vvvv --diff`` on a generated playbook that applies the
``kubeinfer.llm.hf_token`` role, then searches everything the run printed for the token, its
base64 form and any 8-character piece of either. The Secret is checked with the kubernetes
client. The tests use their own namespace and delete it afterwards.

Needs the cluster from ``tools/localcluster/cluster.sh up``; without one the tests fail, never skip.
Run: ``pytest tests/integration/test_hf_token.py`` with the venv python.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SH = REPO / "tools" / "localcluster" / "cluster.sh"
BIN = Path(sys.executable).parent
FRAGMENT = 8


def new_token() -> str:
    # Shaped like a real Hugging Face token: "hf_" and 34 letters.
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return "hf_" + "".join(secrets.choice(alphabet) for _i in range(34))


def b64(token: str) -> str:
    return base64.b64encode(token.encode()).decode()


def leaks(text: str, *tokens: str) -> list[str]:
    """Every piece of a token (or of its base64) of FRAGMENT or more characters found in ``text``."""
    found: list[str] = []
    for token in tokens:
        for secret in (token, b64(token)):
            found.extend(secret[i:i + FRAGMENT] for i in range(len(secret) - FRAGMENT + 1) if secret[i:i + FRAGMENT] in text)
    return found


@pytest.fixture(scope="module")
def kubeconfig() -> str:
    proc = subprocess.run([str(CLUSTER_SH), "kubeconfig"], capture_output=True, text=True, timeout=60, check=False)
    path = proc.stdout.strip()
    if proc.returncode != 0 or not Path(path).is_file():
        pytest.fail(f"no local cluster ({proc.stderr.strip()}); run tools/localcluster/cluster.sh up", pytrace=False)
    return path


@pytest.fixture(scope="module")
def core(kubeconfig: str) -> client.CoreV1Api:
    return client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))


@pytest.fixture(scope="module")
def collections_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An ansible_collections tree whose kubeinfer.llm is this checkout, whatever else is installed."""
    base = tmp_path_factory.mktemp("collections")
    (base / "ansible_collections" / "kubeinfer").mkdir(parents=True)
    (base / "ansible_collections" / "kubeinfer" / "llm").symlink_to(REPO)
    return str(base)


@pytest.fixture
def namespace(core: client.CoreV1Api) -> Iterator[str]:
    name = f"it-hf-token-{uuid.uuid4().hex[:8]}"
    yield name  # the role creates it
    try:
        core.delete_namespace(name)
    except ApiException as e:
        if e.status != 404:
            raise


class Runner:
    def __init__(self, tmp_path: Path, kubeconfig: str, collections_path: str, namespace: str) -> None:
        self.tmp_path = tmp_path
        self.kubeconfig = kubeconfig
        self.collections_path = collections_path
        self.namespace = namespace
        self.runs = 0

    def __call__(self, role_vars: dict[str, Any], env_token: str | None, *extra: str) -> subprocess.CompletedProcess[str]:
        self.runs += 1
        play = [{
            "name": "Store the Hugging Face token",
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "roles": [{"role": "kubeinfer.llm.hf_token", "vars": dict({"hf_token_namespace": self.namespace}, **role_vars)}],
        }]
        playbook = self.tmp_path / f"play{self.runs}.yml"
        playbook.write_text(json.dumps(play))  # JSON is YAML
        env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
        env.update({
            "ANSIBLE_COLLECTIONS_PATH": self.collections_path,
            "K8S_AUTH_KUBECONFIG": self.kubeconfig,
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_LOCAL_TEMP": str(self.tmp_path / "ansible-tmp"),
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        })
        if env_token is not None:
            env["HF_TOKEN"] = env_token
        argv = [str(BIN / "ansible-playbook"), "-i", "localhost,", "-e", f"ansible_python_interpreter={sys.executable}",
                "-vvvv", "--diff", *extra, str(playbook)]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture
def play(tmp_path: Path, kubeconfig: str, collections_path: str, namespace: str) -> Runner:
    return Runner(tmp_path, kubeconfig, collections_path, namespace)


def output(proc: subprocess.CompletedProcess[str]) -> str:
    return proc.stdout + proc.stderr


def recap(proc: subprocess.CompletedProcess[str]) -> dict[str, int]:
    line = next(x for x in proc.stdout.splitlines()[::-1] if x.startswith("localhost") and "ok=" in x)
    return {k: int(v) for k, v in (item.split("=") for item in line.split(":", 1)[1].split())}


def read_secret(core: client.CoreV1Api, namespace: str, name: str = "hf-token") -> client.V1Secret:
    return core.read_namespaced_secret(name, namespace)


def test_role_writes_the_secret_once_and_never_prints_the_token(play: Runner, core: client.CoreV1Api, namespace: str) -> None:
    token = new_token()
    first = play({}, token)
    text = output(first)
    assert first.returncode == 0, text[-4000:]
    assert not leaks(text, token), f"the token leaked into the -vvvv output: {leaks(text, token)}"
    assert recap(first)["changed"] >= 1

    secret = read_secret(core, namespace)
    assert secret.type == "Opaque"
    assert secret.data == {"HF_TOKEN": b64(token)}
    assert secret.metadata.labels["app.kubernetes.io/managed-by"] == "kubeinfer.llm"
    assert any(m.manager == "kubeinfer.llm" and m.operation == "Apply" for m in secret.metadata.managed_fields)
    version = secret.metadata.resource_version

    second = play({}, token)
    text = output(second)
    assert second.returncode == 0, text[-4000:]
    assert not leaks(text, token)
    assert recap(second)["changed"] == 0
    # Two reads (the namespace, the Secret), no write: the role creates the namespace by default.
    assert "token unchanged, API requests get=2\"" in text, "a re-run must only read"
    assert read_secret(core, namespace).metadata.resource_version == version, "a re-run must not write"


def test_check_mode_with_a_new_token_writes_nothing_and_prints_neither_token(play: Runner, core: client.CoreV1Api, namespace: str) -> None:
    old, new = new_token(), new_token()
    assert play({}, old).returncode == 0
    version = read_secret(core, namespace).metadata.resource_version

    checked = play({}, new, "--check")
    text = output(checked)
    assert checked.returncode == 0, text[-4000:]
    assert not leaks(text, old, new)
    assert "token changed" in text
    secret = read_secret(core, namespace)
    assert secret.data == {"HF_TOKEN": b64(old)} and secret.metadata.resource_version == version

    updated = play({"hf_token_value": new}, None)
    text = output(updated)
    assert updated.returncode == 0, text[-4000:]
    assert not leaks(text, old, new)
    assert read_secret(core, namespace).data == {"HF_TOKEN": b64(new)}


def test_existing_secret_mode_checks_without_writing(play: Runner, core: client.CoreV1Api, namespace: str) -> None:
    token = new_token()
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    core.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="team-hf"), type="Opaque", data={"token": b64(token)}))
    version = read_secret(core, namespace, "team-hf").metadata.resource_version

    ok = play({"hf_token_existing_secret": True, "hf_token_secret_name": "team-hf", "hf_token_key": "token"}, token)
    text = output(ok)
    assert ok.returncode == 0, text[-4000:]
    assert not leaks(text, token)
    assert recap(ok)["changed"] == 0
    assert read_secret(core, namespace, "team-hf").metadata.resource_version == version

    wrong_key = play({"hf_token_existing_secret": True, "hf_token_secret_name": "team-hf"}, token)
    text = output(wrong_key)
    assert wrong_key.returncode != 0
    assert "key: existing Secret " + namespace + "/team-hf has no data key 'HF_TOKEN' (its keys: token)" in text
    assert not leaks(text, token)

    missing = play({"hf_token_existing_secret": True, "hf_token_secret_name": "nobody"}, None)
    assert missing.returncode != 0
    assert f"name: existing_secret=true, but Secret 'nobody' does not exist in namespace '{namespace}'" in output(missing)


def test_empty_token_fails_in_preflight(play: Runner, core: client.CoreV1Api, namespace: str) -> None:
    proc = play({}, None)
    assert proc.returncode != 0
    assert "hf_token_value is empty" in output(proc)
    with pytest.raises(ApiException) as info:
        core.read_namespace(namespace)
    assert info.value.status == 404, "nothing may be written before the inputs are checked"
