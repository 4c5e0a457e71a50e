"""playbooks/site.yml, verify.yml and teardown.yml run the way AWX runs a job: through ansible-runner, with a
private data directory laid out as AWX lays it out, and the cluster credential injected as AWX's
"OpenShift or Kubernetes API Bearer Token" credential type injects it (ansible/awx
awx/main/models/credential/injectors.py, kubernetes_bearer_token: K8S_AUTH_HOST, K8S_AUTH_API_KEY,
K8S_AUTH_VERIFY_SSL and the CA written to a file under env/). The token is that of the ServiceAccount of
meta/rbac.yml, so a rule missing from it fails the bring-up with a 403. No kubeconfig reaches the job.

What this does not cover: the EE image itself (no container engine here), AWX's own job isolation, and
the survey UI; the survey answer arrives as env/extravars, which is how AWX hands it to ansible-runner.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from conftest import REPO, TOOLS, Audit, helm_binary
from kubernetes import client

SA = "system:serviceaccount:kubeinfer-system:kubeinfer-llm"
NAMESPACE = "awx-run"
RELEASE = "awx"
HF_TOKEN = "hf_awx_run_path_token_that_must_never_be_printed_0001"
RUNNER = Path(sys.executable).with_name("ansible-runner")
WRITES = ("create", "update", "patch", "delete", "deletecollection")


def kubectl(kubeconfig: str, *args: str, stdin: str | None = None) -> str:
    proc = subprocess.run(["kubectl", "--kubeconfig", kubeconfig, *args], input=stdin, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def cluster_endpoint(kubeconfig: str) -> tuple[str, str]:
    """(server URL, CA bundle PEM) of the kubeconfig's current cluster."""
    config = yaml.safe_load(Path(kubeconfig).read_text())
    cluster = config["clusters"][0]["cluster"]
    if cluster.get("certificate-authority-data"):
        ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
    else:
        ca = (Path(kubeconfig).parent / cluster["certificate-authority"]).read_text()
    return cluster["server"], ca


class Job:
    """One AWX-style job: ansible-runner on a private data directory, with the credentials of AWX's injectors."""

    def __init__(self, base: Path, env: dict[str, str], extravars: dict[str, Any], host: str, token: str, ca: str) -> None:
        self.base, self.runs = base, 0
        self.project = base / "project"
        shutil.copytree(REPO / "playbooks", self.project / "playbooks")
        (base / "inventory").mkdir()
        (base / "inventory" / "hosts").write_text(f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n")
        (base / "env").mkdir()
        # AWX writes the CA to a private file under env/ and points K8S_AUTH_SSL_CA_CERT at it.
        ca_file = base / "env" / "tmp-k8s-ca"
        ca_file.write_text(ca)
        ca_file.chmod(0o660)
        envvars = {"K8S_AUTH_HOST": host, "K8S_AUTH_API_KEY": token, "K8S_AUTH_VERIFY_SSL": "True",
                   "K8S_AUTH_SSL_CA_CERT": str(ca_file), "HF_TOKEN": HF_TOKEN, **env}
        (base / "env" / "envvars").write_text(yaml.safe_dump(envvars))
        (base / "env" / "extravars").write_text(yaml.safe_dump(extravars))
        (base / "env" / "settings").write_text(yaml.safe_dump({"job_timeout": 1200}))

    def run(self, playbook: str) -> dict[str, Any]:
        self.runs += 1
        ident = f"run{self.runs}"
        # The job sees no kubeconfig: only what the credential injects.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("K8S_AUTH_", "KUBECONFIG", "KUBEINFER_KUBECONFIG"))}
        proc = subprocess.run([str(RUNNER), "run", str(self.base), "-p", playbook, "--ident", ident], env=env,
                              capture_output=True, text=True, timeout=1500, check=False)
        artifacts = self.base / "artifacts" / ident
        events = [json.loads(p.read_text()) for p in sorted((artifacts / "job_events").glob("*.json"))]
        stats = next((e["event_data"] for e in events if e.get("event") == "playbook_on_stats"), {})
        stdout = (artifacts / "stdout").read_text() if (artifacts / "stdout").exists() else proc.stdout
        return {"rc": int((artifacts / "rc").read_text()) if (artifacts / "rc").exists() else proc.returncode,
                "status": (artifacts / "status").read_text() if (artifacts / "status").exists() else "",
                "stdout": stdout, "events": events, "changed": sum((stats.get("changed") or {}).values()),
                "failed": sum((stats.get("failures") or {}).values()), "artifacts": artifacts}


@pytest.fixture(scope="module")
def job(kubeconfig: str, collections_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Job]:
    kubectl(kubeconfig, "apply", "--server-side", "--field-manager=kubeinfer-test", "-f", str(REPO / "meta" / "rbac.yml"))
    token = kubectl(kubeconfig, "-n", "kubeinfer-system", "create", "token", "kubeinfer-llm", "--duration=2h").strip()
    host, ca = cluster_endpoint(kubeconfig)
    demo_env = dict(os.environ, DEMO_NAMESPACE=NAMESPACE, DEMO_RELEASE=RELEASE, HELM_BINARY=helm_binary())
    generated = subprocess.run([str(TOOLS / "demo-env.sh"), "up"], env=demo_env, capture_output=True, text=True,
                               timeout=300, check=True).stdout.strip()
    survey_answer = {"vllm_release_name": RELEASE, "vllm_namespace": NAMESPACE, "vllm_replicas": 1, "vllm_engine": "sim"}
    extravars = {**yaml.safe_load((TOOLS / "demo-vars.yml").read_text()), **yaml.safe_load(Path(generated).read_text()),
                 **survey_answer}
    extravars.pop("hf_token_value", None)  # the credential's HF_TOKEN is what the hf_token role reads
    env = {"ANSIBLE_COLLECTIONS_PATH": collections_path, "HELM_BINARY": helm_binary(),
           "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")}
    yield Job(tmp_path_factory.mktemp("awx-job"), env, extravars, host, token, ca)
    subprocess.run([str(TOOLS / "demo-env.sh"), "down"], env=demo_env, capture_output=True, timeout=120, check=False)
    kubectl(kubeconfig, "delete", "--ignore-not-found", "-f", str(REPO / "meta" / "rbac.yml"))


def sa_writes(audit: Audit, since: int) -> list[str]:
    out = []
    for agent in ("kubeinfer.llm", "Helm"):
        for e in audit.events(since, agent):
            ref = e.get("objectRef") or {}
            if e.get("verb") in WRITES and "dryRun=All" not in e.get("requestURI", "") and ref.get("subresource") != "portforward":
                out.append(f"{e['verb']} {ref.get('resource')} {ref.get('namespace', '')}/{ref.get('name', '')}")
    return out


def test_the_awx_run_path(job: Job, audit: Audit, core: client.CoreV1Api, api: client.ApiClient, kubeconfig: str) -> None:
    start = mark = audit.mark()
    first = job.run("playbooks/site.yml")
    assert first["rc"] == 0 and first["status"] == "successful", first["stdout"][-5000:]
    assert first["changed"] > 0

    # Every request of the collection and of helm came from the ServiceAccount, none was refused.
    requests = audit.events(mark, "kubeinfer.llm") + audit.events(mark, "Helm")
    assert requests, "the run sent no request the audit log saw"
    assert {e["user"]["username"] for e in requests} == {SA}
    # A refusal of the API server's own authorizer carries the audit annotation decision=forbid. A 403 with
    # decision=allow is the answer of an aggregated server behind it: the adapter, restarted with the new rule,
    # authorizes on its own (a SubjectAccessReview) and has been seen to refuse once while starting; the module
    # retries until the metric is served, so the run still has to pass.
    refused = [f"{e['verb']} {e['requestURI']}" for e in requests
               if (e.get("annotations") or {}).get("authorization.k8s.io/decision") == "forbid"]
    assert refused == []
    assert all((e.get("annotations") or {}).get("authorization.k8s.io/decision") == "allow" for e in requests), \
        "every request carries the authorizer's decision"

    # The cluster converged: the release serves, the token Secret holds the credential's token, the HPA exists.
    deployment = client.AppsV1Api(api).read_namespaced_deployment(RELEASE, NAMESPACE)
    assert (deployment.status.ready_replicas or 0) >= 1
    secret = core.read_namespaced_secret("hf-token", NAMESPACE)
    assert base64.b64decode(secret.data["HF_TOKEN"]).decode() == HF_TOKEN
    hpas = client.AutoscalingV2Api(api).list_namespaced_horizontal_pod_autoscaler(NAMESPACE).items
    assert [h.spec.scale_target_ref.name for h in hpas] == [RELEASE]

    # A second run of the same job changes nothing and writes nothing.
    mark = audit.mark()
    second = job.run("playbooks/site.yml")
    assert second["rc"] == 0, second["stdout"][-5000:]
    assert second["changed"] == 0, second["stdout"][-5000:]
    assert sa_writes(audit, mark) == []

    # Neither token reaches what the play produced: job events, stdout, stderr, fact cache. (ansible-runner's own
    # `command` artifact records the job's environment, credentials included, by design; AWX deletes the private
    # data directory after the job.)
    sa_token = yaml.safe_load((job.base / "env" / "envvars").read_text())["K8S_AUTH_API_KEY"]
    assert first["events"] and second["events"]
    for run in (first, second):
        for path in (p for p in run["artifacts"].rglob("*") if p.is_file() and p.name != "command"):
            text = path.read_text(errors="replace")
            assert HF_TOKEN not in text, path
            assert sa_token not in text, path

    # verify.yml on the same path passes, then fails clearly once someone edits the cluster by hand.
    assert job.run("playbooks/verify.yml")["rc"] == 0
    node = next(n.metadata.name for n in core.list_node(label_selector="kubeinfer.io/accelerator=nvidia").items)
    kubectl(kubeconfig, "taint", "node", node, "nvidia.com/gpu-")
    drifted = job.run("playbooks/verify.yml")
    assert drifted["rc"] != 0 and drifted["failed"] >= 1
    failures = [e["event_data"]["res"]["msg"] for e in drifted["events"] if e.get("event") == "runner_on_failed"]
    assert len(failures) == 1, drifted["stdout"][-5000:]
    assert failures[0].startswith("these steps would change the cluster: gpu_nodes") and node in failures[0], failures

    # teardown.yml on the same path removes what the bring-up made.
    down = job.run("playbooks/teardown.yml")
    assert down["rc"] == 0, down["stdout"][-5000:]
    assert NAMESPACE not in {n.metadata.name for n in core.list_namespace().items if n.status.phase == "Active"}

    # Least privilege: every rule of the ClusterRole authorized some request of site, verify and teardown that no other
    # rule would have, or is one that only another configuration uses (OPTIONAL_RULES, with the option). So removing any
    # single rule makes some request of this flow, or of that configuration, fail with a 403.
    rules = rbac_rules()
    used = [e for e in audit.events(start, "") if e["user"]["username"] == SA]
    sole: dict[int, list[str]] = {i: [] for i in range(len(rules))}
    unmatched = []
    for event in used:
        matching = [i for i, rule in enumerate(rules) if rule_allows(rule, event)]
        if len(matching) == 1:
            sole[matching[0]].append(request_line(event))
        elif not matching:
            unmatched.append(request_line(event))
    print(f"\nClusterRole kubeinfer-llm: of {len(used)} requests of site + verify + teardown "
          f"({used[0]['requestReceivedTimestamp']} to {used[-1]['requestReceivedTimestamp']}), those only each rule allows")
    for i, rule in enumerate(rules):
        key = rule_key(rule)
        print(f"  {key:<90} {len(sole[i]):>4}  {sole[i][0] if sole[i] else OPTIONAL_RULES.get(key, 'UNUSED')}")
    assert not [rule_key(r) for i, r in enumerate(rules) if not sole[i] and rule_key(r) not in OPTIONAL_RULES], "rules nothing needs"
    assert not [k for i, r in enumerate(rules) if sole[i] and (k := rule_key(r)) in OPTIONAL_RULES], "an optional rule this flow uses"
    # What no rule of ours allows is what every authenticated identity may do (system:discovery, system:basic-user).
    assert all(line.split()[1].startswith(("/api", "/apis", "/version", "/openapi")) and line.split()[0] == "get"
               or "selfsubject" in line for line in unmatched), unmatched


# Rules the demo flow (kind hpa, no NetworkPolicy, no model cache, the GPU Operator's default driver handling) does not
# use, with what does. Each is still refused without its rule: the reason names the option to turn on to see it.
OPTIONAL_RULES = {
    "keda.sh scaledobjects": "autoscaling_kind: keda (inference_hpa kind=keda)",
    " services/proxy": "autoscaling_kind: keda (inference_hpa runs the trigger's query through the service proxy)",
    "networking.k8s.io networkpolicies": "vllm_network_policy (the chart's NetworkPolicy)",
    "policy poddisruptionbudgets": "vllm_replicas above 1 (the chart's PodDisruptionBudget)",
    " events": "a rollout that times out (vllm_release names the scheduler's reason); the audit policy never logs Events",
}


def rbac_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((REPO / "meta" / "rbac.yml").read_text())
    (role,) = [i for i in doc["items"] if i["kind"] == "ClusterRole"]
    return list(role["rules"])


def rule_key(rule: dict[str, Any]) -> str:
    return f"{','.join(rule.get('apiGroups') or [])} {','.join(rule.get('resources') or rule.get('nonResourceURLs') or [])}"


def rule_allows(rule: dict[str, Any], event: dict[str, Any]) -> bool:
    """Whether an RBAC PolicyRule allows the request an audit event records (k8s.io/kubernetes
    plugin/pkg/auth/authorizer/rbac/rbac.go RuleAllows: verbs, API groups, resource or resource/subresource, names)."""
    verbs = rule.get("verbs") or []
    if event["verb"] not in verbs and "*" not in verbs:
        return False
    ref = event.get("objectRef")
    if not ref:
        path = event["requestURI"].split("?", 1)[0]
        return any(u == path or (u.endswith("*") and path.startswith(u[:-1])) for u in rule.get("nonResourceURLs") or [])
    groups = rule.get("apiGroups") or []
    if ref.get("apiGroup", "") not in groups and "*" not in groups:
        return False
    resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
    resources = rule.get("resources") or []
    if resource not in resources and "*" not in resources and not (ref.get("subresource") and f"{ref['resource']}/*" in resources):
        return False
    names = rule.get("resourceNames") or []
    return not names or ref.get("name") in names


def request_line(event: dict[str, Any]) -> str:
    return f"{event['verb']} {event['requestURI'].split('?', 1)[0]}"


def test_a_missing_rule_fails_the_step_naming_the_permission(job: Job, kubeconfig: str, tmp_path: Path) -> None:
    """One removal run for real (the analysis above covers every rule): the ClusterRole without its leases rule."""
    doc = yaml.safe_load((REPO / "meta" / "rbac.yml").read_text())
    role = next(i for i in doc["items"] if i["kind"] == "ClusterRole")
    role["rules"] = [r for r in role["rules"] if r.get("apiGroups") != ["coordination.k8s.io"]]
    reduced = tmp_path / "rbac-without-leases.yml"
    reduced.write_text(yaml.safe_dump(role))
    kubectl(kubeconfig, "apply", "--server-side", "--field-manager=kubeinfer-test", "--force-conflicts", "-f", str(reduced))
    try:
        cut = job.run("playbooks/site.yml")
        assert cut["rc"] != 0
        failures = [e["event_data"]["res"].get("msg", "") for e in cut["events"] if e.get("event") == "runner_on_failed"]
        print(f"\nwithout the leases rule: {failures}")
        assert len(failures) == 1 and 'cannot patch resource "leases" in API group "coordination.k8s.io"' in failures[0], failures
    finally:
        kubectl(kubeconfig, "apply", "--server-side", "--field-manager=kubeinfer-test", "--force-conflicts", "-f", str(REPO / "meta" / "rbac.yml"))
        down = job.run("playbooks/teardown.yml")
        assert down["rc"] == 0, down["stdout"][-5000:]
