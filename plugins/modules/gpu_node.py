#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: gpu_node
short_description: Label and taint GPU nodes in one pass
version_added: 0.1.0
description:
  - Sets or removes labels and taints on the nodes selected by O(names), O(label_selector) or both.
  - With neither, it selects the GPU nodes itself. Those are the nodes carrying one of the node-feature-discovery labels that the
    GPU Operator keys on (C(feature.node.kubernetes.io/pci-10de.present), C(pci-0302_10de.present),
    C(pci-0300_10de.present)). On a cluster where no node has such a label yet (a fresh one, since the GPU Operator chart installs
    node-feature-discovery), it runs the GPU node probe on every node instead (see O(probe_image)) and selects the nodes with
    an NVIDIA PCI device. Check mode runs no probe pod and then selects nothing.
  - Costs one list call, then one patch for each node that actually changes; a node already in the
    desired state is not written to. RV(api_requests) reports the counts.
  - The patches are sent concurrently, at most O(parallel) at a time; the results and the diff are in node-name order.
  - Every input is validated before the first write, so bad input leaves the cluster unchanged.
  - A concurrent change (a kubelet's status update, another operator) is never overwritten. A label patch is a merge patch of
    only the label keys that change, so it carries no precondition and cannot conflict. The taint list is replaced whole, so a
    patch that changes the taints carries the node's C(resourceVersion); on a conflict the node is read again and the patch
    recomputed, up to five times; each conflict costs one more get and one more patch.
  - When one node fails, no further node is started; the patches in flight finish, and the failure reports the nodes done.
author:
  - Kubeinfer maintainers (@kubeinfer)
extends_documentation_fragment:
  - kubeinfer.llm.k8s_auth
  - kubeinfer.llm.k8s_auth.ATTRIBUTES
  - kubeinfer.llm.gpu_probe
attributes:
  check_mode:
    description:
      - Sends each patch as a server-side dry run (C(dryRun=All)), so the API server validates it, and writes nothing.
      - The dry runs are sent concurrently, as the patches are (O(parallel)).
    support: full
  diff_mode:
    description: Returns the labels and taints before and after, one diff per changed node.
    support: full
  idempotent:
    description: A second run with the same input makes no API write.
    support: full
options:
  names:
    description:
      - Node names to select. With O(label_selector), a node must match both.
    type: list
    elements: str
  label_selector:
    description:
      - A label selector, for example V(nvidia.com/gpu.present=true).
    type: str
  require_match:
    description:
      - Fail, before any write, when the selection matches no node or a name in O(names) does not exist.
      - Without O(names) and O(label_selector), fail when no GPU node is found (never in check mode).
    type: bool
    default: true
  labels:
    description:
      - Labels to set. A null value removes the label.
      - With O(state=absent), every listed label is removed whatever its value.
    type: dict
    default: {}
  taints:
    description:
      - Taints to add or remove. A taint is identified by its O(taints[].key) and O(taints[].effect).
    type: list
    elements: dict
    default: []
    suboptions:
      key:
        description: The taint key.
        type: str
        required: true
      value:
        description: The taint value.
        type: str
      effect:
        description: The taint effect.
        type: str
        required: true
        choices: [NoSchedule, PreferNoSchedule, NoExecute]
      state:
        description: Whether this taint should be on the nodes.
        type: str
        choices: [present, absent]
        default: present
  state:
    description:
      - V(present) applies O(labels) and O(taints) as given.
      - V(absent) removes every listed label and taint from the selected nodes.
    type: str
    choices: [present, absent]
    default: present
  parallel:
    description:
      - The most node patches in flight at a time. V(1) patches one node after the other.
      - Each in-flight patch holds one connection to the API server; the client's connection pool is sized to match.
      - Must be at least V(1); a smaller value fails before any request.
    type: int
    default: 32
    version_added: 0.2.0
"""

EXAMPLES = r"""
- name: Label and taint the GPU nodes, found by node-feature-discovery's labels or, on a fresh cluster, a probe pod
  kubeinfer.llm.gpu_node:
    labels:
      kubeinfer.io/accelerator: nvidia
    taints:
      - key: nvidia.com/gpu
        value: present
        effect: NoSchedule

- name: Label and taint the GPU nodes so that only inference lands on them
  kubeinfer.llm.gpu_node:
    label_selector: nvidia.com/gpu.present=true
    labels:
      kubeinfer.io/role: inference
    taints:
      - key: nvidia.com/gpu
        value: present
        effect: NoSchedule

- name: Remove the taint and a label from two named nodes
  kubeinfer.llm.gpu_node:
    names: [gpu-0, gpu-1]
    labels:
      kubeinfer.io/role: null
    taints:
      - key: nvidia.com/gpu
        effect: NoSchedule
        state: absent

- name: Label a large fleet, at most 32 patches in flight
  kubeinfer.llm.gpu_node:
    label_selector: node.kubernetes.io/instance-type=p4d.24xlarge
    labels:
      kubeinfer.io/accelerator: nvidia
    parallel: 32
"""

RETURN = r"""
matched:
  description: Names of the selected nodes.
  type: list
  elements: str
  returned: always
  sample: [gpu-0, gpu-1]
selected_by:
  description: How the nodes were selected, V(names), V(label_selector), or how the GPU nodes were found.
  type: str
  returned: always
  sample: node-feature-discovery labels
would_probe:
  description:
    - Check mode, with neither O(names) nor O(label_selector), on a cluster without node-feature-discovery GPU labels - the
      nodes a real run would probe before labelling and tainting the GPU nodes among them. The result is then C(changed).
  type: list
  elements: str
  returned: when check mode could not discover the GPU nodes
  sample: [kwok-gpu-0000, kwok-gpu-0001]
changed_nodes:
  description: Names of the nodes that were (or, in check mode, would be) patched.
  type: list
  elements: str
  returned: always
  sample: [gpu-1]
nodes:
  description: Per node, what changed.
  type: list
  elements: dict
  returned: always
  contains:
    name:
      description: The node name.
      type: str
      sample: gpu-0
    changed:
      description: Whether this node was patched.
      type: bool
      sample: true
    labels_set:
      description: Label keys added or changed.
      type: list
      elements: str
      sample: [kubeinfer.io/role]
    labels_removed:
      description: Label keys removed.
      type: list
      elements: str
      sample: []
    taints:
      description: The node's taints after the change.
      type: list
      elements: dict
      sample: [{key: nvidia.com/gpu, value: present, effect: NoSchedule}]
api_requests:
  description:
    - API requests made, by verb. A run with nothing to change shows only C(list).
    - A discovery by probe adds one C(create) and one C(delete) per node, and a C(list) per poll.
  type: dict
  returned: always
  sample: {list: 1, patch: 2}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kubeinfer.llm.plugins.module_utils._args_common import AUTH_ARG_SPEC, PROBE_ARG_SPEC, STATE_ARG_SPEC, argument_spec
from ansible_collections.kubeinfer.llm.plugins.module_utils._module import run_module
from ansible_collections.kubeinfer.llm.plugins.module_utils._nodes import run


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(
            AUTH_ARG_SPEC, STATE_ARG_SPEC, PROBE_ARG_SPEC,
            names={"type": "list", "elements": "str"},
            label_selector={"type": "str"},
            require_match={"type": "bool", "default": True},
            labels={"type": "dict", "default": {}},
            taints={"type": "list", "elements": "dict", "default": [], "options": {
                "key": {"type": "str", "required": True, "no_log": False},
                "value": {"type": "str"},
                "effect": {"type": "str", "required": True, "choices": ["NoSchedule", "PreferNoSchedule", "NoExecute"]},
                "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            }},
            parallel={"type": "int", "default": 32},
        ),
        supports_check_mode=True,
    )
    run_module(module, run)


if __name__ == "__main__":
    main()
