#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: gpu_operator_info
short_description: Verify the NVIDIA GPU Operator and report the GPUs as facts
version_added: 0.1.0
description:
  - Reads the ClusterPolicy's C(status.state) and conditions, the readiness of the operand DaemonSets in O(namespace),
    and the allocatable C(nvidia.com/gpu) of every GPU node (nodes matching O(node_selector)).
  - The operands are the DaemonSets the operator made for the ClusterPolicy (its controller owner reference). The chart's
    own node-feature-discovery worker runs on every node and is not one of them, so a CPU node cannot block the check.
    For an operand that is not ready, RV(problems) names one of its pods, its node and the container that waits, with the
    reason (for example the driver validation waiting for a driver that is not installed).
  - With O(run_test_pod=true), it then runs a pod that requests one C(nvidia.com/gpu), tolerates the C(nvidia.com/gpu)
    taint and runs C(nvidia-smi --query-gpu=index,name,driver_version,memory.total,memory.used,pci.bus_id
    --format=csv,noheader,nounits) once. It waits for the pod to end, reads its log through the API server, parses it into
    RV(nvidia_smi) (GPU names, memory, bus ids and the driver version), and deletes the pod, also when anything fails.
  - When nvidia-smi fails (no device, no driver, NVML cannot initialize), the pod fails, and RV(problems) says what the
    error means, with the pod's exit code and output.
  - RV(problems) lists every reason the stack is not ready, each naming its object, for example
    C(ClusterPolicy notReady), C(node gpu-0 has 0 allocatable nvidia.com/gpu) or C(test pod Failed) followed by the reason.
    With O(fail_on_not_ready=true) the module fails with them.
  - The test pod is skipped when a problem was already found, since it could not be scheduled or would prove nothing.
author:
  - Kubeinfer maintainers (@kubeinfer)
extends_documentation_fragment:
  - kubeinfer.llm.k8s_auth
  - kubeinfer.llm.k8s_auth.ATTRIBUTES
attributes:
  check_mode:
    description:
      - Without O(run_test_pod) the module only reads, so check mode changes nothing.
      - With O(run_test_pod=true) in check mode, the test pod is not created; RV(test_pod) says it was skipped.
    support: full
  diff_mode:
    description: Nothing is changed, so there is no diff.
    support: none
  idempotent:
    description:
      - Always reports C(changed=false). With O(run_test_pod=true) it creates and deletes a short-lived pod; that pod is a
        probe, not managed state, and is gone when the module returns.
    support: full
options:
  namespace:
    description: The GPU Operator's namespace, where its operand DaemonSets run.
    type: str
    default: gpu-operator
  node_selector:
    description:
      - Label selector of the GPU nodes to check.
      - Empty (the default) checks the nodes carrying one of the node-feature-discovery labels the GPU Operator keys on
        (C(feature.node.kubernetes.io/pci-10de.present), C(pci-0302_10de.present), C(pci-0300_10de.present)).
    type: str
    default: ""
  wait_timeout:
    description:
      - Seconds to keep re-reading while a problem remains (ClusterPolicy not ready, DaemonSets or GPUs missing) before
        judging; the operator needs minutes after an install. V(0) judges the first read.
    type: int
    default: 0
  fail_on_not_ready:
    description: Fail, with every problem in the message, when the stack is not ready.
    type: bool
    default: false
  run_test_pod:
    description: Run the nvidia-smi test pod (after the other checks passed).
    type: bool
    default: false
  test_pod_image:
    description: The image of the test pod; it must contain C(nvidia-smi) (the NVIDIA container toolkit mounts it from the host).
    type: str
    default: nvcr.io/nvidia/cuda:12.4.1-base-ubuntu22.04
  test_pod_namespace:
    description: The namespace of the test pod. Defaults to O(namespace).
    type: str
  test_pod_labels:
    description: Extra labels of the test pod, for example for admission policies.
    type: dict
    default: {}
  test_pod_timeout:
    description: Seconds the test pod may take to be scheduled, pull its image and finish.
    type: int
    default: 300
notes:
  - The test pod's container is named C(nvidia-smi) and its log is read with C(GET .../pods/<name>/log?container=nvidia-smi).
seealso:
  - module: kubeinfer.llm.gpu_operator
"""

EXAMPLES = r"""
- name: Verify the GPU Operator and run nvidia-smi on a GPU
  kubeinfer.llm.gpu_operator_info:
    wait_timeout: 600
    run_test_pod: true
    fail_on_not_ready: true
  register: gpu_facts

- name: Show the GPU the pod saw
  ansible.builtin.debug:
    msg: "{{ gpu_facts.nvidia_smi.gpus[0].name }}, driver {{ gpu_facts.nvidia_smi.driver_version }}"

- name: Only report, on a cluster without NFD
  kubeinfer.llm.gpu_operator_info:
    node_selector: nvidia.com/gpu.present=true
  register: gpu_state
"""

RETURN = r"""
ready:
  description: True when RV(problems) is empty.
  type: bool
  returned: always
  sample: true
problems:
  description: Every reason the stack is not ready, each naming its object.
  type: list
  elements: str
  returned: always
  sample: ["ClusterPolicy notReady", "node gpu-1 has 0 allocatable nvidia.com/gpu"]
cluster_policy:
  description: The ClusterPolicy C(cluster-policy).
  type: dict
  returned: always
  contains:
    name:
      description: Its name.
      type: str
      sample: cluster-policy
    exists:
      description: Whether it exists.
      type: bool
      sample: true
    state:
      description: Its C(status.state) (V(ready), V(notReady), V(ignored)), null before the operator set it.
      type: str
      sample: ready
    conditions:
      description: Its C(status.conditions).
      type: list
      elements: dict
      sample: [{type: Ready, status: "True", reason: Reconciled}]
daemonsets:
  description:
    - The operand DaemonSets in O(namespace) (owned by the ClusterPolicy) and their readiness.
    - C(not_ready_pod) names a pod that is not ready, its node and why, when the DaemonSet is not ready.
  type: list
  elements: dict
  returned: always
  sample: [{name: nvidia-device-plugin-daemonset, desired: 2, current: 2, ready: 2, available: 2, updated: 2, is_ready: true}]
nodes:
  description: The GPU nodes and their GPUs.
  type: list
  elements: dict
  returned: always
  sample: [{name: gpu-0, allocatable_gpu: 8, capacity_gpu: 8, product: NVIDIA-A100-SXM4-80GB, unschedulable: false}]
test_pod:
  description:
    - The test pod, null when O(run_test_pod=false). C(skipped) with a C(reason) in check mode or when a problem was found first.
    - C(output) holds its log when it succeeded.
  type: dict
  returned: always
  sample: {name: gpu-operator-smoke-x7k2p, namespace: gpu-operator, phase: Succeeded, node: gpu-0, deleted: true, skipped: false}
nvidia_smi:
  description: The parsed nvidia-smi output of the test pod, null when it did not run or did not succeed.
  type: dict
  returned: always
  contains:
    driver_version:
      description: The NVIDIA driver version.
      type: str
      sample: "550.127.05"
    cuda_version:
      description:
        - Always null, since the nvidia-smi query interface has no CUDA version field.
        - Deprecated; it will be removed in a later release.
      type: str
      sample: null
    gpu_count:
      description: GPUs the pod saw.
      type: int
      sample: 1
    gpus:
      description: Per GPU, C(index), C(name), C(memory_total_mib), C(memory_used_mib) and C(bus_id).
      type: list
      elements: dict
      sample: [{index: 0, name: NVIDIA A100-SXM4-80GB, memory_total_mib: 81920, memory_used_mib: 1, bus_id: "00000000:07:00.0"}]
api_requests:
  description: API requests made, by verb.
  type: dict
  returned: always
  sample: {get: 4, list: 2, create: 1, delete: 1}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kubeinfer.llm.plugins.module_utils._args_common import AUTH_ARG_SPEC, argument_spec
from ansible_collections.kubeinfer.llm.plugins.module_utils._gpu_operator_values import DEFAULT_NAMESPACE
from ansible_collections.kubeinfer.llm.plugins.module_utils._gpu_verify import run
from ansible_collections.kubeinfer.llm.plugins.module_utils._module import run_module


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(
            AUTH_ARG_SPEC,
            namespace={"type": "str", "default": DEFAULT_NAMESPACE},
            node_selector={"type": "str", "default": ""},
            wait_timeout={"type": "int", "default": 0},
            fail_on_not_ready={"type": "bool", "default": False},
            run_test_pod={"type": "bool", "default": False},
            test_pod_image={"type": "str", "default": "nvcr.io/nvidia/cuda:12.4.1-base-ubuntu22.04"},
            test_pod_namespace={"type": "str"},
            test_pod_labels={"type": "dict", "default": {}},
            test_pod_timeout={"type": "int", "default": 300},
        ),
        supports_check_mode=True,
    )
    run_module(module, run)


if __name__ == "__main__":
    main()
