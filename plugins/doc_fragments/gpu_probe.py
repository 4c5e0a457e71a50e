# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations


class ModuleDocFragment:
    # The options of the GPU node probe pod, shared by the modules that may run it.
    DOCUMENTATION = r"""
options:
  probe_image:
    description:
      - Image of the GPU node probe pod. It needs C(sh), C(cat), C(sed) and C(printf).
      - The probe runs one short pod per node, pinned to it, tolerating every taint, with the host's C(/) and C(/sys)
        mounted read-only. It reports the node's NVIDIA PCI devices (read from sysfs, as node-feature-discovery does) and
        whether the host has a driver (an executable C(nvidia-smi) at the paths the GPU Operator's validator searches,
        and a loaded kernel module). The pods are deleted afterwards.
      - The default is the GPU Operator's own validator image, which an air-gapped site mirrors anyway.
    type: str
    default: nvcr.io/nvidia/cloud-native/gpu-operator-validator:v26.7.0
  probe_namespace:
    description:
      - Namespace of the probe pods. Its Pod Security level must allow C(hostPath) volumes.
    type: str
    default: kube-system
  probe_timeout:
    description:
      - Seconds to wait for every probe pod to finish; on timeout the error names the nodes that did not answer.
    type: int
    default: 180
"""
