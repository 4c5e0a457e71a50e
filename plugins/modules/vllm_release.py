#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: vllm_release
short_description: Install or upgrade one model as a Helm release of the collection's vLLM chart, after a preflight
version_added: 0.1.0
description:
  - Serves one model with vLLM (or, with O(engine=sim), with llm-d-inference-sim) as a Helm release of the chart shipped in
    the collection under C(charts/vllm), or of the chart in O(chart_ref).
  - "Preflight, before any write: the VRAM estimate of the model at the requested tensor parallelism (the module fails with
    the numbers when the GPUs are too small); the GPU capacity check (every replica needs O(gpus_per_replica) free GPUs on
    one node: allocatable C(nvidia.com/gpu) minus what bound pods already request, counted from one pod list; with
    O(fleet), for every release of the fleet together); and
    C(helm template --kube-version <server version>) with every rendered object validated by the C(kubernetes-validate)
    library in strict mode. When the preflight fails, nothing is installed."
  - The startup probe budget is derived from the model size and a load throughput assumption (O(load_throughput_gib_s),
    0.5 GiB/s by default, 1.5 GiB/s with O(model_cache.prefetch), plus 60 s of engine start, times 1.5), or taken from
    O(startup_budget_seconds). The value used is returned as RV(startup_budget_seconds).
  - No upgrade is made when the release already has this chart version and exactly these values, so a re-run makes no write.
  - After an install or upgrade the module waits for the Deployment to roll out, up to O(timeout). When the deadline passes
    while pods are Pending, the failure carries the scheduler's reason. With O(atomic=true) a failed install is uninstalled and
    a failed upgrade rolled back.
  - The Hugging Face token is referenced by Secret name and key only (O(hf_token_secret)); it is never a Helm value.
    Create the Secret with M(kubeinfer.llm.hf_token_secret).
author:
  - Kubeinfer maintainers (@kubeinfer)
requirements:
  - helm 3 on the host that runs the module
  - the C(kubernetes) and C(kubernetes-validate) Python libraries on that host
extends_documentation_fragment:
  - kubeinfer.llm.k8s_auth
  - kubeinfer.llm.k8s_auth.ATTRIBUTES
  - kubeinfer.llm.helm_release
attributes:
  check_mode:
    description: Runs the whole preflight (reads and a local render only) and reports what would change; helm writes nothing.
    support: full
  diff_mode:
    description: Returns the deployed user-supplied values and the computed ones.
    support: full
  idempotent:
    description: A second run with the same options makes no helm write and no API write.
    support: full
options:
  name:
    description:
      - The Helm release name. It also names the Deployment and the Service (the chart's C(fullnameOverride) is set to it).
    type: str
    required: true
  namespace:
    description:
      - Namespace of the release.
    type: str
    required: true
  create_namespace:
    description:
      - Create O(namespace) when it does not exist (C(helm --create-namespace)).
    type: bool
    default: false
  state:
    description:
      - V(present) installs or upgrades the release, V(absent) uninstalls it.
    type: str
    choices: [present, absent]
    default: present
  model:
    description:
      - Hugging Face repository id (or local path) of the model. Required with O(state=present).
    type: str
  revision:
    description:
      - Model revision (branch, tag or commit).
    type: str
  served_model_name:
    description:
      - The name the OpenAI API serves the model under. Defaults to O(model).
    type: str
  replicas:
    description:
      - Number of pods.
    type: int
    default: 1
  gpus_per_replica:
    description:
      - GPUs each pod requests (requests equal limits). All of them must be on one node.
    type: int
    default: 1
  tensor_parallel_size:
    description:
      - vLLM C(--tensor-parallel-size). Defaults to O(gpus_per_replica); may not exceed it.
    type: int
  dtype:
    description:
      - vLLM C(--dtype). Also the bytes per parameter of the VRAM estimate, unless O(quantization) is set.
    type: str
    choices: [auto, half, float16, bfloat16, float, float32]
    default: auto
  quantization:
    description:
      - vLLM C(--quantization), for example V(fp8) or V(awq). Passed as an extra argument; a name the sizing knows
        (fp8, int8, awq, gptq, w4a16, ...) also sets the bytes per parameter of the VRAM estimate.
    type: str
  max_model_len:
    description:
      - vLLM C(--max-model-len). The VRAM estimate then requires the KV cache to hold one full sequence.
    type: int
  gpu_memory_utilization:
    description:
      - vLLM C(--gpu-memory-utilization), the share of each GPU's memory vLLM may use.
    type: float
    default: 0.9
  extra_args:
    description:
      - Further vLLM arguments. Flags the chart owns (model, port, served name, tensor parallel size, dtype, token, API key, ...)
        are rejected by the chart's schema. Not allowed with O(engine=sim).
    type: list
    elements: str
    default: []
  hf_token_secret:
    description:
      - The Secret that holds the Hugging Face token, in O(namespace). Only the reference goes into the Helm values.
      - Before any write the module checks that the Secret exists and has the key, unless O(hf_token_secret.optional=true);
        otherwise every pod would wait in C(CreateContainerConfigError) until the rollout timed out. In check mode a
        missing Secret is reported in RV(hf_token_secret), since the same run may create it first.
    type: dict
    suboptions:
      name:
        description: Secret name.
        type: str
        required: true
      key:
        description: Data key of the token in the Secret.
        type: str
        default: HF_TOKEN
      optional:
        description: Start the pod even when the Secret or key is missing.
        type: bool
        default: false
  model_cache:
    description:
      - The Hugging Face model cache mounted at the HF cache path. Without it the chart uses a per-pod C(emptyDir).
    type: dict
    suboptions:
      type:
        description: V(emptyDir), V(pvc) or V(hostPath).
        type: str
        choices: [emptyDir, pvc, hostPath]
        default: emptyDir
      size:
        description: Size of the claim the chart creates with O(model_cache.type=pvc).
        type: str
      storage_class:
        description: StorageClass of that claim.
        type: str
      existing_claim:
        description: Use this existing claim instead of creating one.
        type: str
      host_path:
        description: Directory on the node; required with O(model_cache.type=hostPath).
        type: str
      offline:
        description: Set C(HF_HUB_OFFLINE=1), so that only the cached model is loaded.
        type: bool
        default: false
      prefetch:
        description:
          - Download O(model) at O(revision) into the claim with a Job before the Deployment is created or changed (the chart's
            C(modelCache.prefetch), a Helm C(pre-install,pre-upgrade) hook, so helm waits for the Job to complete, and a failed
            Job fails the run without touching the Deployment). The pods then start with C(HF_HUB_OFFLINE=1).
          - The Job runs the Hugging Face CLI (C(hf download --revision)) into the Hub cache layout under the cache path, with
            the token from O(hf_token_secret) (a C(secretKeyRef), never a Helm value).
          - Requires O(model_cache.type=pvc), O(model_cache.existing_claim) (the hook runs before a claim of the release
            would exist) and O(revision).
          - The startup budget then assumes a local load (1.5 GiB/s instead of 0.5 GiB/s) unless O(load_throughput_gib_s) is set.
          - A re-run with the same options makes no helm upgrade, so it runs no Job.
        type: bool
        default: false
      prefetch_timeout:
        description:
          - Seconds the download may take (the Job's C(activeDeadlineSeconds)); helm waits 60 s longer. Default 3600.
        type: int
  gpu_products:
    description:
      - Require one of these C(nvidia.com/gpu.product) label values (node affinity).
    type: list
    elements: str
    default: []
  node_selector:
    description:
      - Extra node selector.
    type: dict
    default: {}
  tolerations:
    description:
      - Extra tolerations in Kubernetes form (C(key), C(operator), C(value), C(effect), C(tolerationSeconds)).
        The C(nvidia.com/gpu) NoSchedule taint is always tolerated.
    type: list
    elements: dict
    default: []
  resources:
    description:
      - CPU, memory and ephemeral-storage C(requests) and C(limits). GPUs come from O(gpus_per_replica).
      - With O(engine=vllm), CPU and memory that are not given are sized from the model weights, at least 4 cores and
        32 GiB (a 7B model in bf16), memory growing with the weights and CPU with its square root, requests equal to
        limits. The pod is never BestEffort.
    type: dict
  engine:
    description:
      - V(vllm) runs vLLM. V(sim) runs llm-d-inference-sim, an OpenAI-compatible stand-in for tests, with the same scheduling.
    type: str
    choices: [vllm, sim]
    default: vllm
  image:
    description:
      - Image of the selected engine. Unset fields keep the chart's pinned image.
    type: dict
    suboptions:
      repository:
        description: Image repository.
        type: str
      tag:
        description: Image tag.
        type: str
  pod_labels:
    description:
      - Extra pod labels.
    type: dict
    default: {}
  values:
    description:
      - Free chart values, merged last over the values computed from the other options. The chart's schema rejects unknown keys.
    type: dict
    default: {}
  chart_ref:
    description:
      - The chart to install - a directory, an archive, C(repo/chart) or an C(oci://) reference.
      - Defaults to the collection's own C(charts/vllm). The action plugin of this module sets that path on the controller,
        so without O(chart_ref) the module must run on the controller (C(connection=local) or C(delegate_to=localhost)).
    type: str
  chart_version:
    description:
      - Chart version, for a chart from a repository. A chart directory or archive must have this version when it is set.
    type: str
  helm_binary:
    description:
      - Path of helm. Defaults to E(HELM_BINARY), then C(helm) on E(PATH).
    type: path
  wait:
    description:
      - Wait for the Deployment to roll out after an install or upgrade, and, when nothing changed, for the existing one.
    type: bool
    default: true
  timeout:
    description:
      - Seconds to wait for the rollout. Defaults to RV(startup_budget_seconds) plus 120.
    type: int
  atomic:
    description:
      - On a failed install or rollout, uninstall a release this run created, or roll back to the revision before this run.
    type: bool
    default: false
  preflight_capacity:
    description:
      - Fail before any write when the GPU nodes do not have room for O(replicas) x O(gpus_per_replica).
      - Set to V(false) to let the scheduler decide, for example when other workloads will be evicted by priority; a replica
        that does not fit then stays Pending, and O(wait) fails with the scheduler's reason.
    type: bool
    default: true
  fleet:
    description:
      - The releases served together with this one, for the GPU capacity check (O(preflight_capacity)). When set, their
        pods are not counted as used (like the release's own, they are the ones being served), and every replica of every
        member, this release included, must fit on the eligible GPU nodes at once, each on one node; otherwise the module
        fails before any write, naming every member and the free GPUs per node.
      - Members are placed like this release (its node selector, GPU products and tolerations). This release may be
        listed; its own options win. The vllm role passes its whole model list here, so that the first release of the
        list already refuses a list that does not fit.
    type: list
    elements: dict
    version_added: 0.2.0
    suboptions:
      name:
        description: Release name.
        type: str
        required: true
      namespace:
        description: Namespace of the release; defaults to O(namespace).
        type: str
      replicas:
        description: Its replicas.
        type: int
        default: 1
      gpus_per_replica:
        description: GPUs per replica, all on one node.
        type: int
        default: 1
  inventory:
    description:
      - Mark the release as managed by the model list named so - the pod label C(kubeinfer.io/inventory=<inventory>) - and
        return, in RV(inventory), the other releases that carry the mark but are neither this release nor in O(fleet).
      - The vllm role removes those, since an entry taken out of C(vllm_models) is a model to remove. The module itself never
        removes anything for this option.
    type: str
    version_added: 0.2.0
  params_billion:
    description:
      - Parameter count of the model in billions, for the VRAM estimate and the startup budget. Defaults to the size in the
        model name (V(Llama-3.1-8B) is 8, V(opt-125m) 0.125); the module fails when the name has none.
    type: float
  gpu_memory_mib:
    description:
      - Memory of one GPU in MiB. Defaults to the smallest C(nvidia.com/gpu.memory) label of the eligible GPU nodes.
    type: int
  load_throughput_gib_s:
    description:
      - Assumed weight load rate in GiB/s for the startup probe budget (0.5 when unset).
    type: float
  startup_budget_seconds:
    description:
      - Startup probe budget in seconds, instead of the computed one.
    type: int
notes:
  - The capacity check does not count the release's own pods, since an upgrade replaces them. A rolling update that changes the
    pod template also needs room for one more replica (C(maxSurge=1), C(maxUnavailable=0)).
  - Kinds that C(kubernetes-validate) has no schema for (such as C(ServiceMonitor)) are not validated and are listed in
    RV(validation.skipped).
seealso:
  - module: kubeinfer.llm.hf_token_secret
  - module: kubeinfer.llm.completion_check
"""

EXAMPLES = r"""
- name: Serve Llama 3.1 8B on one GPU per replica
  kubeinfer.llm.vllm_release:
    name: llama
    namespace: vllm
    create_namespace: true
    model: meta-llama/Llama-3.1-8B-Instruct
    replicas: 2
    hf_token_secret:
      name: hf-token
    gpu_products: [NVIDIA-A100-SXM4-80GB]
    max_model_len: 8192
  delegate_to: localhost

- name: A 70B model with four-way tensor parallelism and a PVC model cache, rolled back on failure
  kubeinfer.llm.vllm_release:
    name: llama70
    namespace: vllm
    model: meta-llama/Llama-3.1-70B-Instruct
    gpus_per_replica: 4
    model_cache:
      type: pvc
      size: 200Gi
    load_throughput_gib_s: 1.0
    atomic: true

- name: The simulator instead of vLLM, for tests
  kubeinfer.llm.vllm_release:
    name: sim
    namespace: test
    model: facebook/opt-125m
    engine: sim
    pod_labels:
      kubeinfer.io/sim-forward: "true"

- name: Remove the release
  kubeinfer.llm.vllm_release:
    name: llama
    namespace: vllm
    state: absent
"""

RETURN = r"""
release:
  description:
    - The Helm release after the run (before it, in check mode), as C(helm list) shows it.
    - Always a dict; without a release C(installed) is false, C(revision) 0 and the other fields null.
  type: dict
  returned: always
  sample:
    name: llama
    namespace: vllm
    installed: true
    chart: vllm-0.1.0
    chart_name: vllm
    chart_version: 0.1.0
    app_version: v0.11.0
    revision: 1
    status: deployed
    updated: "2026-11-04 10:12:31.123 +0000 UTC"
chart:
  description: The chart that was rendered.
  type: dict
  returned: when O(state=present)
  sample: {ref: /home/me/.ansible/collections/ansible_collections/kubeinfer/llm/charts/vllm, name: vllm, version: 0.1.0, app_version: v0.11.0}
values:
  description: The computed chart values (no secret is ever among them).
  type: dict
  returned: when O(state=present)
  sample: {fullnameOverride: llama, engine: vllm, model: {name: meta-llama/Llama-3.1-8B-Instruct}, replicaCount: 2, gpusPerReplica: 1}
change_reasons:
  description: Why an upgrade was (or would be) made; empty when the release already matched.
  type: list
  elements: str
  returned: when O(state=present)
  sample: ["values.replicaCount: 1 -> 2"]
changed_values:
  description: Dotted paths of the values that differ from the deployed release.
  type: list
  elements: str
  returned: when O(state=present)
  sample: [replicaCount]
sizing:
  description: The VRAM estimate per GPU, in GiB, with the inputs used and where they came from.
  type: dict
  returned: when O(state=present) and the model fits, or when it does not
  sample:
    params_billion: 8.0
    params_billion_source: model name
    dtype: auto
    tensor_parallel: 1
    gpu_memory_mib: 81920
    gpu_memory_mib_source: nvidia.com/gpu.memory label (smallest of 2 nodes)
    weights_gib: 14.901
    per_gpu_required_gib: 24.816
    per_gpu_usable_gib: 72.0
    fits: true
    smallest_fitting_tensor_parallel: 1
prefetch:
  description:
    - The model prefetch Job (O(model_cache.prefetch)) as read after the run; on a failed download also each failed pod's
      exit code and the last line of its termination message.
  type: dict
  returned: when O(model_cache.prefetch=true) and the chart was rendered
  sample:
    exists: true
    name: llama-prefetch
    revision: 0e9e39f249a16976918f6564b8830bc894c89659
    complete: true
    failed: false
    completion_time: "2026-12-03T12:19:41Z"
startup_budget_seconds:
  description: The startup probe budget written to the chart, in seconds.
  type: int
  returned: when O(state=present)
  sample: 135
load_throughput_gib_s:
  description: The load throughput assumption behind RV(startup_budget_seconds).
  type: float
  returned: when O(state=present)
  sample: 0.5
startup_budget:
  description: The inputs of the startup budget (weights, throughput, base seconds, safety factor) and its source.
  type: dict
  returned: when O(state=present)
  sample: {seconds: 135, weights_gib: 14.901, load_throughput_gib_s: 0.5, base_seconds: 60, safety_factor: 1.5, source: model size / load throughput}
capacity:
  description:
    - Free GPUs and replica slots per eligible GPU node, and whether the replicas fit.
    - With O(fleet), C(fleet) holds every member's replicas placed per node, the GPUs requested by all of them, the free
      ones, and C(unplaced) (member -> replicas without room); C(fits) is then true only when the whole fleet fits.
  type: dict
  returned: when O(state=present)
  sample:
    replicas: 4
    gpus_per_replica: 4
    replica_slots: 4
    fits: true
    checked: true
    nodes: {gpu-0: {allocatable: 8, requested: 0, free: 8, replica_slots: 2}}
    ineligible_nodes: {}
    fleet:
      members:
        - {name: llama, namespace: vllm, replicas: 4, gpus_per_replica: 4, placed: {gpu-0: 2, gpu-1: 2}}
      requested_gpus: 16
      free_gpus: 16
      fits: true
      unplaced: {}
inventory:
  description:
    - With O(inventory), the releases that carry its pod label, as C(namespace) and C(name). C(listed) are this release
      and the O(fleet) members; C(unlisted) were deployed from the same list and are no longer in it.
  type: dict
  returned: when O(state=present) and O(inventory) is set, once the preflight passed
  sample:
    name: default
    label: kubeinfer.io/inventory=default
    listed: [{namespace: vllm, name: llama}]
    unlisted: [{namespace: vllm, name: mistral}]
preflight_pending:
  description:
    - Check mode only, when no node has allocatable C(nvidia.com/gpu) yet (the GPU Operator is not installed, as in
      C(site.yml --check) on a fresh cluster) - why the VRAM and capacity checks were not made. C(sizing.fits) is then null.
      A real run on such a cluster refuses.
  type: str
  returned: in check mode before any node advertises a GPU
  sample: "check mode: no node has allocatable nvidia.com/gpu yet ..."
gpu_nodes:
  description: The GPU nodes a replica may run on (allocatable GPUs, Ready, matching selectors, taints tolerated).
  type: list
  elements: str
  returned: when O(state=present)
  sample: [gpu-0, gpu-1]
validation:
  description:
    - The kubernetes-validate result of the rendered manifests.
    - The chart is rendered and validated when the release would be installed or changed. When the release's last revision
      is deployed from the same chart version with the same values, the manifests helm stored for it are read instead, and
      nothing is rendered or validated again.
  type: dict
  returned: when O(state=present), the chart was rendered and the preflight got that far
  sample: {kube_version: v1.36.3, schema_version: "1.36", validated: [Service/llama, Deployment/llama], skipped: []}
  contains:
    kube_version:
      description: The API server version the chart was rendered and validated for.
      type: str
      sample: v1.36.3
    schema_version:
      description: The kubernetes-validate schema version used.
      type: str
      sample: "1.36"
    validated:
      description: The objects that passed strict validation, as C(Kind/name).
      type: list
      elements: str
      sample: [Service/llama, Deployment/llama]
    skipped:
      description: Objects of kinds the library has no schema for, with the reason.
      type: list
      elements: dict
      sample: [{object: ServiceMonitor/llama, apiVersion: monitoring.coreos.com/v1, reason: no schema in kubernetes-validate}]
    note:
      description: Set when the server is newer than the newest schema in the library, which was used instead.
      type: str
      returned: when the server is newer than the library
      sample: kubernetes-validate has no schemas for 1.38.0; validated against 1.37.0
hf_token_secret:
  description: The token Secret reference and what the cluster holds for it (key names only, never data).
  type: dict
  returned: when O(state=present) and O(hf_token_secret) is set
  sample: {name: hf-token, key: HF_TOKEN, optional: false, exists: true, has_key: true}
pods:
  description: Names of the release's pods.
  type: list
  elements: str
  returned: when O(state=present)
  sample: [llama-6d5f7c9b8-abcde]
placement:
  description: Node of each pod (null while Pending).
  type: dict
  returned: when O(state=present)
  sample: {llama-6d5f7c9b8-abcde: gpu-0}
rollout:
  description: The Deployment's replica counts and whether it is rolled out.
  type: dict
  returned: when O(state=present)
  sample: {exists: true, name: llama, replicas: 2, ready_replicas: 2, available_replicas: 2, updated_replicas: 2, rolled_out: true, reason: 2/2 available}
endpoint:
  description: The Service inside the cluster.
  type: dict
  returned: when O(state=present)
  sample: {service: llama, namespace: vllm, host: llama.vllm.svc.cluster.local, port: 8000, url: "http://llama.vllm.svc.cluster.local:8000"}
waited_seconds:
  description: Seconds spent waiting for the rollout.
  type: float
  returned: when the module waited
  sample: 42.1
unschedulable_reason:
  description: The scheduler's message for a Pending pod, when the rollout timed out.
  type: str
  returned: on a rollout timeout
  sample: "pod llama-6d5f7c9b8-abcde unschedulable: 0/3 nodes are available: 2 Insufficient nvidia.com/gpu."
rolled_back:
  description: What O(atomic=true) undid after a failure.
  type: str
  returned: on failure with O(atomic=true)
  sample: rolled back to revision 1
api_requests:
  description: Kubernetes API requests made, by verb (helm's own requests are not counted).
  type: dict
  returned: always
  sample: {get: 3, list: 3}
helm_commands:
  description:
    - The helm command lines run, secrets masked and the values file shown as C(<values-file>).
    - A re-run without changes runs no helm command but C(helm show chart) for a chart that is not on the controller
      (the release is read from its Secret, and its stored manifests stand in for C(helm template)).
  type: list
  elements: str
  returned: always
  sample: ["/usr/local/bin/helm template llama /opt/charts/vllm --namespace vllm --kube-version v1.36.3 --values <values-file>"]
diff:
  description: The deployed user-supplied values and the computed ones.
  type: dict
  returned: when diff mode is on and O(state=present)
  sample: {before: {replicaCount: 1}, after: {replicaCount: 2}}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kubeinfer.llm.plugins.module_utils._args_common import AUTH_ARG_SPEC, HELM_ARG_SPEC, STATE_ARG_SPEC, argument_spec
from ansible_collections.kubeinfer.llm.plugins.module_utils._module import run_module
from ansible_collections.kubeinfer.llm.plugins.module_utils._vllm import run

ARGUMENT_SPEC = argument_spec(
    AUTH_ARG_SPEC, STATE_ARG_SPEC, HELM_ARG_SPEC,
    name={"type": "str", "required": True},
    namespace={"type": "str", "required": True},
    create_namespace={"type": "bool", "default": False},
    model={"type": "str"},
    revision={"type": "str"},
    served_model_name={"type": "str"},
    replicas={"type": "int", "default": 1},
    gpus_per_replica={"type": "int", "default": 1},
    tensor_parallel_size={"type": "int"},
    dtype={"type": "str", "choices": ["auto", "half", "float16", "bfloat16", "float", "float32"], "default": "auto"},
    quantization={"type": "str"},
    max_model_len={"type": "int"},
    gpu_memory_utilization={"type": "float", "default": 0.9},
    extra_args={"type": "list", "elements": "str", "default": []},
    hf_token_secret={"type": "dict", "no_log": False, "options": {
        "name": {"type": "str", "required": True},
        "key": {"type": "str", "default": "HF_TOKEN", "no_log": False},
        "optional": {"type": "bool", "default": False},
    }},
    model_cache={"type": "dict", "options": {
        "type": {"type": "str", "choices": ["emptyDir", "pvc", "hostPath"], "default": "emptyDir"},
        "size": {"type": "str"},
        "storage_class": {"type": "str"},
        "existing_claim": {"type": "str"},
        "host_path": {"type": "str"},
        "offline": {"type": "bool", "default": False},
        "prefetch": {"type": "bool", "default": False},
        "prefetch_timeout": {"type": "int"},
    }},
    gpu_products={"type": "list", "elements": "str", "default": []},
    node_selector={"type": "dict", "default": {}},
    tolerations={"type": "list", "elements": "dict", "default": []},
    resources={"type": "dict"},
    engine={"type": "str", "choices": ["vllm", "sim"], "default": "vllm"},
    image={"type": "dict", "options": {
        "repository": {"type": "str"},
        "tag": {"type": "str"},
    }},
    pod_labels={"type": "dict", "default": {}},
    values={"type": "dict", "default": {}},
    chart_ref={"type": "str"},
    chart_version={"type": "str"},
    wait={"type": "bool", "default": True},
    timeout={"type": "int"},
    atomic={"type": "bool", "default": False},
    preflight_capacity={"type": "bool", "default": True},
    fleet={"type": "list", "elements": "dict", "options": {
        "name": {"type": "str", "required": True},
        "namespace": {"type": "str"},
        "replicas": {"type": "int", "default": 1},
        "gpus_per_replica": {"type": "int", "default": 1},
    }},
    inventory={"type": "str"},
    params_billion={"type": "float"},
    gpu_memory_mib={"type": "int"},
    load_throughput_gib_s={"type": "float"},
    startup_budget_seconds={"type": "int"},
)
REQUIRED_IF = [("state", "present", ("model",))]


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, required_if=REQUIRED_IF, supports_check_mode=True)
    run_module(module, run, helm=True)


if __name__ == "__main__":
    main()
