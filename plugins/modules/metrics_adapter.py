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
  - The rules live in the ConfigMap the adapter Deployment really reads, the one its pod template mounts at the path of
    its C(--config) flag; O(adapter_configmap) and O(adapter_config_key) are found there, and when set they must
    name it. Rules of other tools are kept. A change rolls the adapter by setting the pod-template annotation
    C(kubeinfer.io/config-checksum) (the adapter reads its config only at start).
  - >-
    When no adapter runs (O(install=auto), the default), the module installs the prometheus-community
    C(prometheus-adapter) chart as Helm release O(adapter_release), from O(chart_repo_url) at the pinned
    O(chart_version) or from O(chart_ref) (an OCI reference, a mirror repository, an archive URL, or a chart directory
    or archive on the controller), the way M(kubeinfer.llm.gpu_operator) takes its chart. The rules then live in a
    ConfigMap the collection owns (chart value C(rules.existing), by default C(<adapter Deployment>-rules)), so a later
    C(helm upgrade) of the adapter release keeps them (upgrade with C(--reuse-values), or keep C(rules.existing) in
    your values). A rule change then rolls the adapter through the release's C(podAnnotations). A release the module
    installed is kept in line with the chart and O(chart_values) on every run.
  - >-
    Before any write, the module refuses the adapters a rule would not reach, each time naming the option to change:
    kube-prometheus's adapter (label C(app.kubernetes.io/part-of=kube-prometheus), ConfigMap C(adapter-config), only
    C(v1beta1.metrics.k8s.io)); an adapter with no C(v1beta1.custom.metrics.k8s.io) APIService, or one routing to
    another namespace; a chart release installed with C(rules.default=false) and no C(rules.custom) (the chart then
    renders no such APIService); a chart release whose rules live in the chart's own ConfigMap, which its next
    C(helm upgrade) rewrites (O(install=always) moves them to a collection-owned ConfigMap); and, before an install,
    a custom metrics APIService that another adapter already holds.
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
  - kubeinfer.llm.helm_release
attributes:
  check_mode:
    description:
      - Finds the adapter and runs every check, detects the metric and computes the rules; the ConfigMap write and the
        restart are server-side dry runs, and no C(helm upgrade) runs (RV(release_would_change), RV(changes)).
      - On a cluster where nothing was applied yet (no pod of the release, no adapter namespace), it reports what it would
        install and write without a request that would fail; the rule then matches every known queue metric name.
      - Nothing is waited for; when nothing would change, the custom metrics API is looked at once.
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
    description: Namespace of the Prometheus Adapter (and of its Helm release when the module installs it).
    type: str
    default: monitoring
  adapter_configmap:
    description:
      - The ConfigMap holding the adapter's rules. Empty finds it from the adapter Deployment (the ConfigMap volume
        mounted at its C(--config) path); when set, it must be that one. It is created when missing.
      - When the module installs the adapter, the collection-owned ConfigMap the chart is pointed at (C(rules.existing));
        empty means C(<adapter Deployment>-rules). The chart's own ConfigMap name (the Deployment's) is refused.
    type: str
  adapter_config_key:
    description:
      - The key of the config file in O(adapter_configmap). Empty finds it from the C(--config) path (C(config.yaml) for the chart).
    type: str
  adapter_deployment:
    description:
      - The adapter Deployment. Empty means the name the chart gives release O(adapter_release) (C(fullnameOverride),
        else the release name when it contains C(prometheus-adapter), else C(<release>-prometheus-adapter)), which is
        C(prometheus-adapter) by default.
    type: str
  restart:
    description:
      - Roll the adapter when its C(kubeinfer.io/config-checksum) pod-template annotation differs from the config in
        force (through the release's C(podAnnotations) when the module manages the release).
    type: bool
    default: true
  install:
    description:
      - V(auto) installs the chart when the adapter Deployment does not exist, keeps a release the module installed in
        line, and uses any other adapter as it is (after the checks above).
      - V(always) manages release O(adapter_release) in every case. It is installed, or upgraded to the chart and the
        computed values (O(chart_values) merged over them), also when someone else installed it; its other values are replaced.
      - V(never) only uses an adapter that runs; when none does, it fails naming this option.
    type: str
    choices: [auto, always, never]
    default: auto
  adapter_release:
    description: The Helm release of the adapter chart, installed in O(adapter_namespace).
    type: str
    default: prometheus-adapter
  chart_ref:
    description:
      - Where the adapter chart comes from, when not from O(chart_repo_url).
      - An OCI reference without a tag, for example V(oci://registry.example.com/charts/prometheus-adapter).
      - The URL of a mirror Helm repository; the chart C(prometheus-adapter) is taken from it.
      - The URL of a chart archive ending in C(.tgz).
      - A chart directory or C(.tgz) archive on the controller, for air-gapped sites; its version must equal O(chart_version).
    type: str
  chart_repo_url:
    description: The Helm repository the chart C(prometheus-adapter) comes from when O(chart_ref) is not set.
    type: str
    default: https://prometheus-community.github.io/helm-charts
  chart_version:
    description: The adapter chart version, pinned.
    type: str
    default: 5.3.0
  chart_values:
    description:
      - Further values of the adapter chart, deep-merged over the computed ones (C(rules.existing), C(rules.default=true),
        C(prometheus), C(podAnnotations)). C(rules.existing) may not be changed here (set O(adapter_configmap)), and
        C(rules.default=false) without C(rules.custom) is refused (no custom metrics APIService).
      - Do not put secrets in them; they are stored in the release.
    type: dict
    default: {}
  adapter_prometheus_url:
    description:
      - The Prometheus URL the installed adapter queries (chart values C(prometheus.url), C(prometheus.port),
        C(prometheus.path)), as seen from inside the cluster, for example V(http://prometheus-operated.monitoring.svc:9090).
      - Empty uses O(prometheus_url). Needed when the module installs the adapter, unless O(chart_values) sets C(prometheus.url).
    type: str
  wait:
    description: Wait until the adapter release's resources are ready (C(helm --wait)) when it is installed or upgraded.
    type: bool
    default: true
  atomic:
    description: When the adapter release's install or upgrade fails, roll it back (or uninstall a release this run created).
    type: bool
    default: false
  helm_timeout:
    description: Seconds helm may take for the adapter release.
    type: int
    default: 300
  helm_binary:
    description:
      - Path of the helm binary. Defaults to the C(HELM_BINARY) environment variable, then C(helm) on the PATH.
      - Only needed when the module installs the adapter or the adapter is a Helm release (to read its values).
    type: path
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
      - Base URL of Prometheus. When verification fails, it tells apart a missing series from a rule that does not match.
      - When this run changed the rule (so the adapter restarts), the module first waits, up to 60 seconds and within
        O(verify_timeout), until Prometheus holds the release's series. The adapter lists the series it can serve when it
        starts and then only every C(--metrics-relist-interval) (10 minutes by default, 1 minute in the chart), so an
        adapter restarted before the first scrape of the release's pods would serve nothing until then.
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
      - V(absent) removes it from the rule, and removes the rule when no release is left. When that leaves no rule in the
        ConfigMap of an adapter the module installed, the adapter release and its rules ConfigMap are removed too
        (an adapter with no rule breaks API discovery). Nothing is installed for V(absent).
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

- name: Install the adapter from a chart archive on the controller when none runs (air-gapped)
  kubeinfer.llm.metrics_adapter:
    release: llama
    namespace: llm
    chart_ref: /opt/charts/prometheus-adapter-5.3.0.tgz
    adapter_prometheus_url: http://prometheus-operated.monitoring.svc:9090
    chart_values:
      image:
        repository: registry.example.com/prometheus-adapter/prometheus-adapter

- name: Install the adapter beside kube-prometheus's (which serves only the resource metrics API)
  kubeinfer.llm.metrics_adapter:
    release: llama
    namespace: llm
    adapter_release: kubeinfer-prometheus-adapter
    adapter_prometheus_url: http://prometheus-k8s.monitoring.svc:9090

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
series_wait:
  description:
    - The wait for the release's series in Prometheus before the adapter restarted (see O(prometheus_url)).
    - C(found) is V(null) when nothing was waited for (no O(prometheus_url), or Prometheus did not answer; C(reason) says which).
  type: dict
  returned: when this run changed the rule, with O(verify) and not in check mode
  sample: {waited_seconds: 6.1, found: true, reason: found}
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
adapter:
  description: The adapter the rules went to, and whether the module manages its Helm release.
  type: dict
  returned: when the adapter was located
  sample: {namespace: monitoring, deployment: prometheus-adapter, configmap: prometheus-adapter-rules, config_key: config.yaml,
           managed: true, exists: true}
adapter_release:
  description:
    - The adapter's Helm release as C(helm list) shows it (after the run; before it in check mode). Without one,
      C(installed) is false.
  type: dict
  returned: always
  sample: {name: prometheus-adapter, namespace: monitoring, installed: true, chart: prometheus-adapter-5.3.0, revision: 1, status: deployed}
chart_source:
  description: The chart source passed to helm.
  type: dict
  returned: when the module manages the adapter release
  sample: {type: local, chart: /opt/charts/prometheus-adapter-5.3.0.tgz, repo: null, version: null}
changes:
  description: Why the adapter release would be (or was) installed or upgraded, one line per chart or value change.
  type: list
  elements: str
  returned: when the module manages the adapter release
  sample: ["release: (none) -> prometheus-adapter-5.3.0"]
changed_values:
  description: Dotted paths of the adapter release values that differ from the deployed ones.
  type: list
  elements: str
  returned: when the module manages the adapter release
  sample: [podAnnotations.kubeinfer.io/config-checksum]
helm_commands:
  description: The helm command lines run, the values file shown as C(<values-file>). A run with nothing to do shows no C(helm upgrade).
  type: list
  elements: str
  returned: always
  sample: ["helm upgrade --install prometheus-adapter /opt/charts/prometheus-adapter-5.3.0.tgz --namespace monitoring --reset-values --values <values-file>"]
release_would_change:
  description: In check mode, true when the adapter release would be installed or upgraded.
  type: bool
  returned: in check mode when the release would change
  sample: true
namespace_created:
  description: Whether O(adapter_namespace) was (or would be) created before the install.
  type: bool
  returned: when the namespace was missing
  sample: true
adapter_uninstalled:
  description: Whether the adapter release the module installed was (or would be) removed, its last rule being gone.
  type: bool
  returned: when it was
  sample: true
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kubeinfer.llm.plugins.module_utils._adapter import run
from ansible_collections.kubeinfer.llm.plugins.module_utils._adapter_install import (
    DEFAULT_CHART_REPO_URL,
    DEFAULT_CHART_VERSION,
    DEFAULT_RELEASE,
    INSTALL_CHOICES,
)
from ansible_collections.kubeinfer.llm.plugins.module_utils._args_common import (
    AUTH_ARG_SPEC,
    HELM_ARG_SPEC,
    RELEASE_METRIC_ARG_SPEC,
    STATE_ARG_SPEC,
    argument_spec,
)
from ansible_collections.kubeinfer.llm.plugins.module_utils._module import run_module

ARGUMENT_SPEC = argument_spec(
    AUTH_ARG_SPEC, STATE_ARG_SPEC, RELEASE_METRIC_ARG_SPEC, HELM_ARG_SPEC,
    metric_name={"type": "str"},
    detect_from_pod={"type": "bool", "default": True},
    metrics_port={"type": "int"},
    ready_timeout={"type": "int", "default": 120},
    request_timeout={"type": "int", "default": 15},
    adapter_namespace={"type": "str", "default": "monitoring"},
    adapter_configmap={"type": "str"},
    adapter_config_key={"type": "str", "no_log": False},
    adapter_deployment={"type": "str"},
    restart={"type": "bool", "default": True},
    install={"type": "str", "choices": list(INSTALL_CHOICES), "default": "auto"},
    adapter_release={"type": "str", "default": DEFAULT_RELEASE},
    chart_ref={"type": "str"},
    chart_repo_url={"type": "str", "default": DEFAULT_CHART_REPO_URL},
    chart_version={"type": "str", "default": DEFAULT_CHART_VERSION},
    chart_values={"type": "dict", "default": {}},
    adapter_prometheus_url={"type": "str"},
    wait={"type": "bool", "default": True},
    atomic={"type": "bool", "default": False},
    helm_timeout={"type": "int", "default": 300},
    grafana_dashboard={"type": "bool", "default": True},
    prometheus_url={"type": "str"},
    prometheus_validate_certs={"type": "bool", "default": True},
    verify={"type": "bool", "default": True},
    verify_timeout={"type": "int", "default": 180},
)


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    run_module(module, run, helm="optional")


if __name__ == "__main__":
    main()
