"""Every module is in the k8s action group, and module_defaults for the group reaches it.

The proof is behavioural: a playbook sets only ``kubeconfig`` through
``module_defaults: group/kubeinfer.llm.k8s`` and each module must fail with the
error that names that kubeconfig, which it can only do if the default arrived.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
MISSING = "/nonexistent/kubeinfer-group-test/kubeconfig"

# The smallest valid arguments of each module, apart from the connection.
MINIMAL_ARGS: dict[str, dict] = {
    "gpu_node": {"label_selector": "a=b"},
    "gpu_operator": {},
    "gpu_operator_info": {},
    "hf_token_secret": {"namespace": "ns", "token": "not-a-real-token"},
    "vllm_release": {"name": "r", "namespace": "ns", "model": "facebook/opt-125m"},
    "vllm_canary": {"name": "r", "namespace": "ns", "changes": {"model": {"revision": "abc"}}},
    "completion_check": {"namespace": "ns", "label_selector": "a=b", "model": "m"},
    "metrics_adapter": {"release": "r", "namespace": "ns"},
    "inference_hpa": {"release": "r", "namespace": "ns"},
}


def group_members() -> list[str]:
    runtime = yaml.safe_load((REPO / "meta" / "runtime.yml").read_text())
    return list(runtime["action_groups"]["k8s"])


def test_every_module_is_in_the_group() -> None:
    modules = sorted(p.stem for p in (REPO / "plugins" / "modules").glob("*.py") if p.stem != "__init__")
    assert modules, "no modules found"
    assert sorted(group_members()) == modules


def test_module_defaults_for_the_group_reach_every_module(tmp_path: pathlib.Path) -> None:
    members = group_members()
    unknown = [m for m in members if m not in MINIMAL_ARGS]
    assert not unknown, f"add minimal arguments for {unknown} to MINIMAL_ARGS"
    tasks = [{"name": f"Call {m}", "kubeinfer.llm." + m: MINIMAL_ARGS[m], "register": f"r_{m}", "ignore_errors": True}
             for m in members]
    tasks.append({"name": "Dump", "ansible.builtin.copy": {
        "dest": str(tmp_path / "results.json"),
        "content": "{{ {" + ", ".join(f"'{m}': r_{m}" for m in members) + "} | to_json }}", "mode": "0600"}})
    play = [{"name": "Group defaults", "hosts": "localhost", "gather_facts": False,
             "module_defaults": {"group/kubeinfer.llm.k8s": {"kubeconfig": MISSING}}, "tasks": tasks}]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    # Self-contained: this checkout as kubeinfer.llm and this interpreter's ansible-playbook, whatever the caller's
    # environment (the Makefile's ANSIBLE_COLLECTIONS_PATH and PATH are not needed).
    collections = tmp_path / "collections" / "ansible_collections" / "kubeinfer"
    collections.mkdir(parents=True)
    (collections / "llm").symlink_to(REPO)
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", K8S_AUTH_KUBECONFIG="", KUBECONFIG="",
               ANSIBLE_PYTHON_INTERPRETER=sys.executable, ANSIBLE_COLLECTIONS_PATH=str(tmp_path / "collections"))
    ansible_playbook = str(pathlib.Path(sys.executable).with_name("ansible-playbook"))
    proc = subprocess.run([ansible_playbook, "-i", "localhost,", "-c", "local", str(tmp_path / "play.yml")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, check=False)
    assert (tmp_path / "results.json").exists(), proc.stdout + proc.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    for module in members:
        res = results[module]
        assert res.get("failed"), f"{module} did not fail: {res}"
        assert MISSING in res.get("msg", ""), f"{module} did not receive kubeconfig from the group: {res.get('msg')}"
