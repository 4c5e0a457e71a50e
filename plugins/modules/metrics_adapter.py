#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: metrics_adapter
short_description: Serve a vLLM release's queue depth per pod through the custom metrics API
version_added: 0.1.0
description:
  - Registers a vLLM release in the Prometheus Adapter rule that serves O(custom_metric_name) (for example
    V(vllm_queue_depth)) as a C(Pods) metric of C(custom.metrics.k8s.io), then restarts the adapter if its config
    changed and verifies that the API serves a value for every Ready pod of the release.
  - The queue metric's name is read from the live C(/metrics) of a Ready pod of the release, through the API server's
    port-forward, because vLLM has exposed both C(vllm:num_requests_waiting) and C(vllm_num_requests_waiting).
    The name found is returned in RV(metric_name).
  - There is ONE rule per custom metric name. Its C(seriesQuery) and C(metricsQuery) filter on the series label
    C(kubeinfer_io_release=~"<release>|<release>...") that the scrape makes of the pod label C(kubeinfer.io/release),
    and the values are summed by pod only, never across a namespace. The HPA asks for the pods of its own Deployment,
    so two models in one namespace never read each other's queue.
  - The rules live in a ConfigMap (O(adapter_configmap), key O(adapter_config_key)), the way the
    prometheus-community chart mounts them. Rules of other tools are kept. A change rolls O(adapter_deployment) by
    setting the pod-template annotation C(kubeinfer.io/config-checksum). If the adapter chart is upgraded with Helm
    later, Helm rewrites the ConfigMap; run this module again afterwards.
  - >-
    When the API does not serve the metric, the failure names the first missing link, one of
    C(no APIService v1beta1.custom.metrics.k8s.io), C(APIService v1beta1.custom.metrics.k8s.io not Available) with the
    condition's message, C(series <metric>{kubeinfer_io_release="<release>",namespace="<namespace>"} not found in Prometheus)
    (only with O(prometheus_url)), or C(rule does not match: adapter lists no <name> metric).
author:
  - Kubeinfer maintainers (@kubeinfer)
extends_documentation_fragment:
  - kubeinfer.llm.k8s_auth
  - kubeinfer.llm.k8s_auth.ATTRIBUTES
attributes:
  check_mode:
    description: Detects the metric and computes the rules; the ConfigMap write and the restart are server-side dry runs.
      Nothing is waited for; when nothing would change, the custom metrics API is looked at once.
    support: full
  diff_mode:
    description: Returns the adapter's rules before and after.
    support: full
  idempotent:
    description: A second run with the same input neither writes the ConfigMap nor restarts the adapter.
    support: full
options:
  release:
    description:
      - The vLLM release. Its pods carry the label C(kubeinfer.io/release=<release>).
    type: str
    required: true
  namespace:
    description: Namespace of the release.
    type: str
    required: true
  custom_metric_name:
    description:
      - The name under which C(custom.metrics.k8s.io) serves the queue depth, and the HPA reads it.
      - Releases that share the name share the one rule; they must expose the same source metric name.
    type: str
    default: vllm_queue_depth
  metric_name:
    description:
      - The Prometheus metric to serve, for example V(vllm:num_requests_waiting). Skips the detection.
    type: str
  detect_from_pod:
    description:
      - Read C(/metrics) of a Ready pod of the release through the port-forward API and use the queue metric it exposes.
      - When false and O(metric_name) is not set, the rule matches every known form of the name.
    type: bool
    default: true
  metrics_port:
    description:
      - The pod port serving C(/metrics). Default is the pod's C(prometheus.io/port) annotation, else 8000.
    type: int
  ready_timeout:
    description: Seconds to wait for a Ready pod of the release to read C(/metrics) from.
    type: int
    default: 120
  request_timeout:
    description: Seconds allowed for the C(/metrics) request and for each Prometheus query.
    type: int
    default: 15
  adapter_namespace:
    description: Namespace of the Prometheus Adapter.
    type: str
    default: monitoring
  adapter_configmap:
    description: The ConfigMap holding the adapter's config. It is created when missing.
    type: str
    default: prometheus-adapter
  adapter_config_key:
    description: The key of the config file in O(adapter_configmap).
    type: str
    default: config.yaml
  adapter_deployment:
    description: The adapter Deployment to restart when the config changed.
    type: str
    default: prometheus-adapter
  restart:
    description:
      - Roll O(adapter_deployment) when its C(kubeinfer.io/config-checksum) annotation differs from the config in force.
        It must then exist; this is checked before anything is written.
    type: bool
    default: true
  grafana_dashboard:
    description:
      - Ship a Grafana dashboard for the release (queue depth, running requests, end-to-end latency p95, KV cache use and
        GPU use from the DCGM exporter) as ConfigMap C(<release>-vllm-dashboard) in O(adapter_namespace), labelled
        C(grafana_dashboard=1) for the Grafana sidecar of kube-prometheus-stack.
      - Its queries use the metric names read on the live pod, filtered to the release. With O(state=absent) or
        V(false), the ConfigMap is removed.
    type: bool
    default: true
  prometheus_url:
    description:
      - Base URL of Prometheus, only used to tell apart a missing series from a rule that does not match when verification fails.
    type: str
  prometheus_validate_certs:
    description: Verify the TLS certificate of O(prometheus_url).
    type: bool
    default: true
  verify:
    description: Wait until C(custom.metrics.k8s.io) serves O(custom_metric_name) for every Ready pod of the release.
    type: bool
    default: true
  verify_timeout:
    description:
      - Seconds to wait. Allow for the adapter restart, one scrape interval and the adapter's series relist.
    type: int
    default: 180
  state:
    description:
      - V(present) registers the release under O(custom_metric_name).
      - V(absent) removes it from the rule, and removes the rule when no release is left.
    type: str
    choices: [present, absent]
    default: present
"""

EXAMPLES = r"""
- name: Serve the queue depth of release llama as vllm_queue_depth
  kubeinfer.llm.metrics_adapter:
    release: llama
    namespace: llm
    prometheus_url: http://prometheus.monitoring.svc:9090
  register: adapter

- name: Use the detected name in a dashboard
  ansible.builtin.debug:
    msg: "queue metric is {{ adapter.metric_name }}"

- name: Register a release whose pods are not up yet, with a known metric name
  kubeinfer.llm.metrics_adapter:
    release: mistral
    namespace: llm
    metric_name: "vllm:num_requests_waiting"
    verify: false

- name: Unregister a release
  kubeinfer.llm.metrics_adapter:
    release: mistral
    namespace: llm
    state: absent
"""

RETURN = r"""
metric_name:
  description: The source metric the rule maps; null when detection was off and every candidate is matched.
  type: str
  returned: always
  sample: "vllm:num_requests_waiting"
metric_names:
  description: The source metric names in the rule (one, or the candidates).
  type: list
  elements: str
  returned: always
  sample: ["vllm:num_requests_waiting"]
metric_source:
  description: Where the metric name came from.
  type: str
  returned: when O(state=present)
  sample: /metrics of pod llm/llama-vllm-6f7d9c-abcde
pod:
  description: The pod whose C(/metrics) was read.
  type: str
  returned: when the name was detected
  sample: llama-vllm-6f7d9c-abcde
custom_metric_name:
  description: The custom metric name.
  type: str
  returned: always
  sample: vllm_queue_depth
release:
  description: The release.
  type: str
  returned: always
  sample: llama
releases:
  description: Every release now registered under O(custom_metric_name).
  type: list
  elements: str
  returned: success
  sample: [llama, mistral]
rule:
  description: The adapter rule for O(custom_metric_name), null when none is left.
  type: dict
  returned: success
  sample:
    seriesQuery: '{__name__="vllm:num_requests_waiting",namespace!="",pod!="",kubeinfer_io_release=~"llama"}'
    resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}}}
    name: {matches: "^vllm:num_requests_waiting$", as: vllm_queue_depth}
    metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>,kubeinfer_io_release=~"llama"}) by (<<.GroupBy>>)'
rules:
  description: All custom-metrics rules of the adapter after the change.
  type: list
  elements: dict
  returned: success
  sample: []
configmap_changed:
  description: Whether the ConfigMap was (or in check mode would be) written.
  type: bool
  returned: success
  sample: true
checksum:
  description: sha256 of the adapter config in force, as set on the Deployment's pod template.
  type: str
  returned: success
  sample: 5f2b0d9c0c1e4b8a9d7c6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b
dashboard:
  description: The Grafana dashboard (JSON model) shipped in the ConfigMap, or null when none is.
  type: dict
  returned: always
  sample: {uid: kubeinfer-vllm, title: vLLM vllm, panels: [{title: Queue depth per pod}]}
restarted:
  description: Whether the adapter Deployment was (or in check mode would be) rolled.
  type: bool
  returned: always
  sample: true
served:
  description: The value the custom metrics API serves, per pod of the release.
  type: dict
  returned: always
  sample: {llama-vllm-6f7d9c-abcde: "0"}
api_requests:
  description: API requests made, by verb. A run with nothing to change shows no C(create), C(patch) or C(apply).
  type: dict
  returned: always
  sample: {get: 4, list: 2, discovery: 0}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kubeinfer.llm.plugins.module_utils._adapter import run
from ansible_collections.kubeinfer.llm.plugins.module_utils._args_common import AUTH_ARG_SPEC, RELEASE_METRIC_ARG_SPEC, STATE_ARG_SPEC, argument_spec
from ansible_collections.kubeinfer.llm.plugins.module_utils._module import run_module

ARGUMENT_SPEC = argument_spec(
    AUTH_ARG_SPEC, STATE_ARG_SPEC, RELEASE_METRIC_ARG_SPEC,
    metric_name={"type": "str"},
    detect_from_pod={"type": "bool", "default": True},
    metrics_port={"type": "int"},
    ready_timeout={"type": "int", "default": 120},
    request_timeout={"type": "int", "default": 15},
    adapter_namespace={"type": "str", "default": "monitoring"},
    adapter_configmap={"type": "str", "default": "prometheus-adapter"},
    adapter_config_key={"type": "str", "default": "config.yaml", "no_log": False},
    adapter_deployment={"type": "str", "default": "prometheus-adapter"},
    restart={"type": "bool", "default": True},
    grafana_dashboard={"type": "bool", "default": True},
    prometheus_url={"type": "str"},
    prometheus_validate_certs={"type": "bool", "default": True},
    verify={"type": "bool", "default": True},
    verify_timeout={"type": "int", "default": 180},
)


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    run_module(module, run)


if __name__ == "__main__":
    main()
