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
import secrets
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

if TYPE_CHECKING:
    from conftest import PlaybookRun, PlaybookRunner

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


@pytest.fixture
def namespace(core: client.CoreV1Api) -> Iterator[str]:
    name = f"it-hf-token-{uuid.uuid4().hex[:8]}"
    yield name  # the role creates it
    try:
        core.delete_namespace(name)
    except ApiException as e:
        if e.status != 404:
            raise


# Applies the hf_token role to the test's namespace with ``-vvvv --diff``: (role vars, HF_TOKEN or None, extra args).
Runner = Callable[..., "PlaybookRun"]


@pytest.fixture
def play(playbook: PlaybookRunner, namespace: str) -> Runner:
    def call(role_vars: dict[str, Any], env_token: str | None, *extra: str) -> PlaybookRun:
        role = {"role": "kubeinfer.llm.hf_token", "vars": dict({"hf_token_namespace": namespace}, **role_vars)}
        # Only the token given here may reach the role: none inherited from the environment.
        return playbook(roles=[role], name="Store the Hugging Face token", diff=True, verbosity=4, extra_args=extra, timeout=300,
                        env={"HF_TOKEN": env_token, "HUGGING_FACE_HUB_TOKEN": None})

    return call


def read_secret(core: client.CoreV1Api, namespace: str, name: str = "hf-token") -> client.V1Secret:
    return core.read_namespaced_secret(name, namespace)


def test_role_writes_the_secret_once_and_never_prints_the_token(play: Runner, core: client.CoreV1Api, namespace: str) -> None:
    token = new_token()
    first = play({}, token)
    text = first.output
    assert first.returncode == 0, text[-4000:]
    assert not leaks(text, token), f"the token leaked into the -vvvv output: {leaks(text, token)}"
    assert first.recap()["changed"] >= 1

    secret = read_secret(core, namespace)
    assert secret.type == "Opaque"
    assert secret.data == {"HF_TOKEN": b64(token)}
    assert secret.metadata.labels["app.kubernetes.io/managed-by"] == "kubeinfer.llm"
    assert any(m.manager == "kubeinfer.llm" and m.operation == "Apply" for m in secret.metadata.managed_fields)
    version = secret.metadata.resource_version

    second = play({}, token)
    text = second.output
    assert second.returncode == 0, text[-4000:]
    assert not leaks(text, token)
    assert second.recap()["changed"] == 0
    # Two reads (the namespace, the Secret), no write: the role creates the namespace by default.
    assert "token unchanged, API requests get=2\"" in text, "a re-run must only read"
    assert read_secret(core, namespace).metadata.resource_version == version, "a re-run must not write"


def test_check_mode_with_a_new_token_writes_nothing_and_prints_neither_token(play: Runner, core: client.CoreV1Api, namespace: str) -> None:
    old, new = new_token(), new_token()
    assert play({}, old).returncode == 0
    version = read_secret(core, namespace).metadata.resource_version

    checked = play({}, new, "--check")
    text = checked.output
    assert checked.returncode == 0, text[-4000:]
    assert not leaks(text, old, new)
    assert "token changed" in text
    secret = read_secret(core, namespace)
    assert secret.data == {"HF_TOKEN": b64(old)} and secret.metadata.resource_version == version

    updated = play({"hf_token_value": new}, None)
    text = updated.output
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
    text = ok.output
    assert ok.returncode == 0, text[-4000:]
    assert not leaks(text, token)
    assert ok.recap()["changed"] == 0
    assert read_secret(core, namespace, "team-hf").metadata.resource_version == version

    wrong_key = play({"hf_token_existing_secret": True, "hf_token_secret_name": "team-hf"}, token)
    text = wrong_key.output
    assert wrong_key.returncode != 0
    assert "key: existing Secret " + namespace + "/team-hf has no data key 'HF_TOKEN' (its keys: token)" in text
    assert not leaks(text, token)

    missing = play({"hf_token_existing_secret": True, "hf_token_secret_name": "nobody"}, None)
    assert missing.returncode != 0
    assert f"name: existing_secret=true, but Secret 'nobody' does not exist in namespace '{namespace}'" in missing.output


def test_empty_token_fails_in_preflight(play: Runner, core: client.CoreV1Api, namespace: str) -> None:
    proc = play({}, None)
    assert proc.returncode != 0
    assert "hf_token_value is empty" in proc.output
    with pytest.raises(ApiException) as info:
        core.read_namespace(namespace)
    assert info.value.status == 404, "nothing may be written before the inputs are checked"
