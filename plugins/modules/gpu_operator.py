#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: gpu_operator
short_description: Install, upgrade or remove the NVIDIA GPU Operator Helm release
version_added: 0.1.0
description:
  - Installs or upgrades the NVIDIA GPU Operator chart as a Helm release, with typed options for the
    values that matter on an inference cluster, or removes the release.
  - The chart comes from NVIDIA's Helm repository by default, at a pinned version (O(chart_version)).
    O(chart_ref) selects an OCI reference, a mirror repository, a chart archive URL, or a chart directory
    or archive on the controller for air-gapped sites.
  - "Idempotent: the release's chart (the C(chart) column of C(helm list)) and its user values
    (what C(helm get values) shows), read from the release's Secret, are compared with the computed ones, and
    C(helm upgrade) only runs when they differ. A run with nothing to change makes no API write and runs no helm
    command; RV(helm_commands) and RV(api_requests) show that."
  - With O(time_slicing_replicas), the device-plugin ConfigMap is created (server-side apply) in the
    release namespace before the release, and the chart is pointed at it.
  - Every input is checked before the first request, so bad input leaves the cluster unchanged.
  - The verification (ClusterPolicy ready, GPUs allocatable, a pod running nvidia-smi) is M(kubeinfer.llm.gpu_operator_info).
  - Needs the C(helm) 3 binary on the controller, see O(helm_binary).
author:
  - Kubeinfer maintainers (@kubeinfer)
extends_documentation_fragment:
  - kubeinfer.llm.k8s_auth
  - kubeinfer.llm.k8s_auth.ATTRIBUTES
  - kubeinfer.llm.helm_release
  - kubeinfer.llm.gpu_probe
attributes:
  check_mode:
    description:
      - Runs no C(helm upgrade) or C(helm uninstall) at all; reports the values it would install, RV(changes) and, in diff
        mode, the values before and after. The ConfigMap is written as a server-side dry run.
    support: full
  diff_mode:
    description: Returns the release's chart and user values before and after.
    support: full
  idempotent:
    description: A second run with the same input makes no API write and runs no C(helm upgrade).
    support: full
options:
  release_name:
    description: The Helm release name.
    type: str
    default: gpu-operator
  namespace:
    description: The release namespace, where the operator and its operands run.
    type: str
    default: gpu-operator
  create_namespace:
    description: Create O(namespace) when it does not exist.
    type: bool
    default: true
  chart_ref:
    description:
      - Where the chart comes from, when not from O(chart_repo_url).
      - An OCI reference without a tag, for example V(oci://registry.example.com/nvidia/gpu-operator); the version is O(chart_version).
      - The URL of a mirror Helm repository, for example V(https://charts.example.com/nvidia); the chart C(gpu-operator) is taken from it.
      - The URL of a chart archive ending in C(.tgz).
      - A chart directory or C(.tgz) archive on the controller, for air-gapped sites. It must exist, and its version
        must equal O(chart_version). Repository aliases such as C(nvidia/gpu-operator) are not accepted; use O(chart_repo_url).
    type: str
  chart_repo_url:
    description: The Helm repository the chart C(gpu-operator) comes from when O(chart_ref) is not set.
    type: str
    default: https://helm.ngc.nvidia.com/nvidia
  chart_version:
    description:
      - The chart version, pinned. NVIDIA's chart versions carry a leading C(v); C(v26.7.0) and C(26.7.0) are the same version here.
    type: str
    default: v26.7.0
  driver_enabled:
    description:
      - Whether the operator installs the NVIDIA driver containers (C(driver.enabled)).
      - V(auto) decides the way the operator's validator does. Before the first install it runs the GPU node probe
        (see O(probe_image)) on the nodes O(node_selector) selects and turns the driver off only when every node with an
        NVIDIA PCI device already has a host driver; when none has one, it is on. A mix of both fails before the
        install, naming the nodes, since one ClusterPolicy cannot serve both.
      - No node label counts as evidence of a driver. The operator writes C(nvidia.com/gpu.present) from
        node-feature-discovery's PCI labels alone, and GPU Feature Discovery's C(nvidia.com/cuda.driver.*) labels come
        from the operator's own driver as well.
      - Once the release exists, V(auto) keeps its current C(driver.enabled) and probes nothing. In check mode no probe
        runs and the chart default (true) is shown.
      - A C(driver.enabled) in O(values) wins over this option.
    type: str
    choices: ['true', 'false', auto]
    default: auto
  node_selector:
    description:
      - Label selector of the nodes that O(driver_enabled=auto) probes.
      - Empty (the default) probes the nodes carrying one of the node-feature-discovery labels the GPU Operator keys on
        (C(feature.node.kubernetes.io/pci-10de.present), C(pci-0302_10de.present), C(pci-0300_10de.present)), or every
        node when none does yet (a fresh cluster, where the chart installs node-feature-discovery).
    type: str
    default: ""
  toolkit_enabled:
    description: Whether the operator installs the NVIDIA container toolkit (C(toolkit.enabled)).
    type: bool
    default: true
  device_plugin_enabled:
    description: Whether the operator runs the device plugin that advertises C(nvidia.com/gpu) (C(devicePlugin.enabled)).
    type: bool
    default: true
  dcgm_exporter_enabled:
    description: Whether the operator runs the DCGM exporter for GPU metrics (C(dcgmExporter.enabled)).
    type: bool
    default: true
  dcgm_service_monitor:
    description:
      - Whether the chart creates a prometheus-operator ServiceMonitor for the DCGM exporter (C(dcgmExporter.serviceMonitor.enabled)).
      - Set explicitly because the chart's own default changed to true in v26.7.0. Needs O(dcgm_exporter_enabled).
    type: bool
    default: false
  mig_strategy:
    description:
      - How MIG devices are advertised (C(mig.strategy)).
      - V(mixed) is refused before any write. Fully partitioned nodes then advertise C(nvidia.com/mig-<profile>) and
        no C(nvidia.com/gpu), which the vLLM chart of this collection does not request and gpu_operator_info does not
        count. Use V(single), which advertises MIG devices as C(nvidia.com/gpu).
    type: str
    choices: [none, single, mixed]
    default: single
  time_slicing_replicas:
    description:
      - Share each GPU this many times with time-slicing. Creates the ConfigMap C(time-slicing-config) in O(namespace)
        and points C(devicePlugin.config) at it. At least 2; unset means no sharing. Needs O(device_plugin_enabled).
    type: int
  values:
    description:
      - Further chart values, deep-merged over the computed ones (these win). Keys are the chart's own.
    type: dict
    default: {}
  wait:
    description: Wait until the release's resources are ready (C(helm --wait)), and for C(helm uninstall) to finish.
    type: bool
    default: true
  timeout:
    description: Seconds helm may take for the upgrade or uninstall.
    type: int
    default: 600
  atomic:
    description:
      - When the upgrade fails, roll the release back to the revision before this run, or uninstall a release this run
        created. Implies O(wait) (C(helm --wait)), so that a release that never gets ready counts as failed.
    type: bool
    default: false
  helm_binary:
    description: Path of the helm binary. Defaults to the C(HELM_BINARY) environment variable, then C(helm) on the PATH.
    type: path
  state:
    description:
      - V(present) installs or upgrades the release.
      - V(absent) uninstalls it and deletes the time-slicing ConfigMap this module created. The namespace and the
        ClusterPolicy CRD stay (Helm never deletes CRDs it installed from C(crds/)).
    type: str
    choices: [present, absent]
    default: present
notes:
  - Only C(helm upgrade --install), C(helm rollback) (with O(atomic)) and C(helm uninstall) are run (and C(helm show chart) for a chart
    that is not on the controller). Helm's own API
    requests are not in RV(api_requests), which counts this module's direct requests.
  - O(values) may hold anything the chart accepts. Do not put secrets in them; they are stored in the release.
seealso:
  - module: kubeinfer.llm.gpu_operator_info
  - name: NVIDIA GPU Operator documentation
    description: Installation options of the chart.
    link: https://docs.nvidia.com/datacenter/cloud-native/gpu-operator/latest/getting-started.html
"""

EXAMPLES = r"""
- name: Install the GPU Operator from NVIDIA's repository, deciding on the driver from the nodes
  kubeinfer.llm.gpu_operator:
    driver_enabled: auto

- name: Install from a chart archive on the controller (air-gapped), with time-slicing
  kubeinfer.llm.gpu_operator:
    chart_ref: /opt/charts/gpu-operator-v26.7.0.tgz
    chart_version: v26.7.0
    driver_enabled: false
    time_slicing_replicas: 4
    values:
      validator:
        repository: registry.example.com/nvidia

- name: Install from a mirror OCI registry and show what would change
  kubeinfer.llm.gpu_operator:
    chart_ref: oci://registry.example.com/nvidia/gpu-operator
    dcgm_service_monitor: true
  check_mode: true
  diff: true
  register: gpu_operator_plan

- name: Remove the release
  kubeinfer.llm.gpu_operator:
    state: absent
"""

RETURN = r"""
release:
  description:
    - The release as C(helm list) shows it after the run (before it, in check mode).
    - Always a dict; without a release C(installed) is false, C(revision) 0 and the other fields null.
  type: dict
  returned: always
  sample:
    name: gpu-operator
    namespace: gpu-operator
    installed: true
    chart: gpu-operator-v26.7.0
    chart_name: gpu-operator
    chart_version: v26.7.0
    app_version: v26.7.0
    revision: 1
    status: deployed
    updated: "2026-11-04 10:12:31.123 +0000 UTC"
values:
  description: The computed chart values (what was, or would be, installed).
  type: dict
  returned: when O(state=present)
  sample: {driver: {enabled: false}, toolkit: {enabled: true}, mig: {strategy: single}}
driver_enabled:
  description: The resolved C(driver.enabled).
  type: bool
  returned: when O(state=present)
  sample: false
driver_reason:
  description: Why C(driver.enabled) has its value.
  type: str
  returned: when O(state=present)
  sample: "auto: no GPU node has a host driver (gpu-0, gpu-1), so the operator installs it"
driver_probe:
  description:
    - The GPU node probe's answer per node, when O(driver_enabled=auto) ran it.
    - C(nvidia_pci) lists the PCI class codes of the node's NVIDIA devices; C(nvidia_smi) is the host's nvidia-smi path
      or null; C(driver) the loaded kernel module's version or null.
  type: dict
  returned: when the probe ran
  sample: {gpu-0: {nvidia_pci: ["0302"], nvidia_smi: null, driver: null}}
chart_source:
  description: The chart source passed to helm.
  type: dict
  returned: when O(state=present)
  sample: {type: repo, chart: gpu-operator, repo: "https://helm.ngc.nvidia.com/nvidia", version: v26.7.0}
changes:
  description: What differs between the release and the desired state, one line per chart, value or ConfigMap change.
  type: list
  elements: str
  returned: when O(state=present)
  sample: ["chart: gpu-operator-v25.10.0 -> gpu-operator-v26.7.0", "values.driver.enabled: true -> false"]
changed_values:
  description: Dotted paths of the values that differ from the deployed release's user values.
  type: list
  elements: str
  returned: when O(state=present)
  sample: [driver.enabled]
configmaps:
  description: The ConfigMaps the module manages (the time-slicing config), and whether each was changed.
  type: list
  elements: dict
  returned: always
  sample: [{name: time-slicing-config, changed: false}]
helm_commands:
  description:
    - The helm command lines run, secrets masked and the values file shown as C(<values-file>).
    - A run with nothing to do shows no C(helm upgrade).
  type: list
  elements: str
  returned: always
  sample: ["/usr/local/bin/helm upgrade --install gpu-operator gpu-operator --namespace gpu-operator --reset-values --version v26.7.0 --values <values-file>"]
api_requests:
  description: Kubernetes API requests made by the module itself, by verb. A run with nothing to change shows no write verb.
  type: dict
  returned: always
  sample: {list: 1, get: 2}
release_would_change:
  description: In check mode, true when C(helm upgrade) would run.
  type: bool
  returned: in check mode when the release would change
  sample: true
rolled_back:
  description: What O(atomic=true) undid after a failed upgrade.
  type: str
  returned: on failure with O(atomic=true)
  sample: rolled back to revision 1
namespace_created:
  description: Whether the namespace was (or would be) created by the module before the time-slicing ConfigMap.
  type: bool
  returned: when the namespace was created
  sample: true
diff:
  description: The release's chart and user values before and after.
  type: dict
  returned: in diff mode
  sample: {before: {chart: gpu-operator-v25.10.0, values: {}}, after: {chart: gpu-operator-v26.7.0, values: {}}}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kubeinfer.llm.plugins.module_utils._args_common import AUTH_ARG_SPEC, HELM_ARG_SPEC, PROBE_ARG_SPEC, STATE_ARG_SPEC, argument_spec
from ansible_collections.kubeinfer.llm.plugins.module_utils._gpu_operator import run
from ansible_collections.kubeinfer.llm.plugins.module_utils._gpu_operator_values import (
    DEFAULT_CHART_REPO_URL,
    DEFAULT_CHART_VERSION,
    DEFAULT_NAMESPACE,
    DEFAULT_RELEASE_NAME,
)
from ansible_collections.kubeinfer.llm.plugins.module_utils._module import run_module


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(
            AUTH_ARG_SPEC, STATE_ARG_SPEC, HELM_ARG_SPEC, PROBE_ARG_SPEC,
            release_name={"type": "str", "default": DEFAULT_RELEASE_NAME},
            namespace={"type": "str", "default": DEFAULT_NAMESPACE},
            create_namespace={"type": "bool", "default": True},
            chart_ref={"type": "str"},
            chart_repo_url={"type": "str", "default": DEFAULT_CHART_REPO_URL},
            chart_version={"type": "str", "default": DEFAULT_CHART_VERSION},
            driver_enabled={"type": "str", "choices": ["true", "false", "auto"], "default": "auto"},
            node_selector={"type": "str", "default": ""},
            toolkit_enabled={"type": "bool", "default": True},
            device_plugin_enabled={"type": "bool", "default": True},
            dcgm_exporter_enabled={"type": "bool", "default": True},
            dcgm_service_monitor={"type": "bool", "default": False},
            mig_strategy={"type": "str", "choices": ["none", "single", "mixed"], "default": "single"},
            time_slicing_replicas={"type": "int"},
            values={"type": "dict", "default": {}},
            wait={"type": "bool", "default": True},
            timeout={"type": "int", "default": 600},
            atomic={"type": "bool", "default": False},
        ),
        supports_check_mode=True,
    )
    run_module(module, run, helm=True)


if __name__ == "__main__":
    main()
