#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: inference_hpa
short_description: Autoscale a vLLM release on its per-pod queue depth
version_added: 0.1.0
description:
  - Creates or updates an C(autoscaling/v2) HorizontalPodAutoscaler for the release's Deployment on the custom
    metric O(custom_metric_name) (type C(Pods), target C(AverageValue) O(target_queue_depth)), which
    M(kubeinfer.llm.metrics_adapter) makes the custom metrics API serve per pod.
  - The scale-down stabilization window is never shorter than the model load time. It defaults to
    max(300, O(startup_budget_seconds)), the load time that M(kubeinfer.llm.vllm_release) returned (or, when not
    given, the C(kubeinfer.io/startup-budget-seconds) annotation the vllm chart puts on the pod template). An explicit
    O(scale_down.stabilization_window_seconds) below the load time fails.
  - Behavior is written out completely, the Kubernetes default policies included, so that a changed or dropped policy
    is applied. Writes are server-side applies with strict field validation; a re-run with the same input only reads.
  - With O(kind=keda) it emits a KEDA C(ScaledObject) instead, with a C(prometheus) trigger on the release's queue, so
    that O(min_replicas) may be 0. B(KEDA must be installed) (its C(scaledobjects.keda.sh) CRD, operator, metrics API
    server and admission webhooks); the write is a server-side apply with strict validation against the installed CRD.
    Scaling up from zero needs a query that sees demand while no pod runs (for example a gateway's queue, see
    O(keda_query)); the pods' own queue metric vanishes with them.
  - One autoscaler per Deployment. Switching O(kind) deletes the collection's own autoscaler of the target first (an HPA
    or ScaledObject with the label C(app.kubernetes.io/managed-by=kubeinfer.llm)), because KEDA's admission webhook
    refuses a ScaledObject whose target another HPA owns, and two HPAs of one Deployment fight. From V(keda) to V(hpa)
    it also waits until KEDA's own HPA (C(keda-hpa-<name>)) is gone; without a running KEDA operator the ScaledObject
    keeps KEDA's finalizer C(finalizer.keda.sh) and the module fails saying so, before creating the HPA.
  - An HPA or ScaledObject of the target that the collection does not manage is refused before any write, naming it.
  - Verification with O(kind=hpa) waits until the HPA reports a current value for the metric instead of C(<unknown>),
    and on timeout reports the HPA's conditions (for example C(ScalingActive False FailedGetPodsMetric) and its message).
  - Verification with O(kind=keda) does not stop at KEDA's C(Ready), which KEDA sets once a reconcile succeeds even
    when the query matches no series (an empty result counts as 0, so the ScaledObject never scales up). It runs the
    trigger's query against O(prometheus_url) and fails when it returns no sample, naming the query and the first
    series label that matches nothing (for example C(kubeinfer_io_release) when the scrape does not copy the pod
    label C(kubeinfer.io/release)). Then it waits until the ScaledObject is C(Ready) and KEDA's HPA reports a current
    value of its external metric C(s0-prometheus), and on timeout reports that HPA's conditions.
author:
  - Kubeinfer maintainers (@kubeinfer)
extends_documentation_fragment:
  - kubeinfer.llm.k8s_auth
  - kubeinfer.llm.k8s_auth.ATTRIBUTES
attributes:
  check_mode:
    description: The write is a server-side dry run, so the object is returned as it would be; nothing is waited for.
    support: full
  diff_mode:
    description: Returns the HPA (or ScaledObject) before and after, without resourceVersion and managedFields churn.
    support: full
  idempotent:
    description: A second run with the same input makes no API write.
    support: full
options:
  release:
    description: The vLLM release to scale.
    type: str
    required: true
  name:
    description: Name of the HPA (or ScaledObject). Default is O(release).
    type: str
  namespace:
    description: Namespace of the release.
    type: str
    required: true
  target:
    description:
      - Name of the Deployment to scale. Default is the one Deployment labelled C(app.kubernetes.io/instance=<release>).
    type: str
  kind:
    description:
      - V(hpa) creates an C(autoscaling/v2) HorizontalPodAutoscaler on the custom metric.
      - V(keda) creates a C(keda.sh/v1alpha1) ScaledObject with a C(prometheus) trigger; KEDA must be installed.
    type: str
    choices: [hpa, keda]
    default: hpa
  custom_metric_name:
    description: The custom metric the HPA reads, as registered by M(kubeinfer.llm.metrics_adapter).
    type: str
    default: vllm_queue_depth
  min_replicas:
    description: Fewest replicas; at least 1 with O(kind=hpa), 0 allowed with O(kind=keda).
    type: int
    default: 1
  max_replicas:
    description: Most replicas.
    type: int
    default: 4
  target_queue_depth:
    description:
      - Average waiting requests per pod to aim at (the HPA's C(AverageValue)), a number or a decimal quantity such as
        V(500m).
    type: raw
    default: 5
  startup_budget_seconds:
    description:
      - The model load time in seconds, as returned by M(kubeinfer.llm.vllm_release) (RV(kubeinfer.llm.vllm_release#module:startup_budget_seconds)).
      - Default is the C(kubeinfer.io/startup-budget-seconds) annotation of the target's pod template, if any.
    type: int
  scale_up:
    description: Scale-up behavior.
    type: dict
    suboptions:
      stabilization_window_seconds:
        description: Window over which the lowest recommendation is used. V(0) reacts at once.
        type: int
        default: 0
      pods:
        description: At most this many pods added per O(scale_up.period_seconds).
        type: int
      percent:
        description: At most this percentage of the current replicas added per O(scale_up.period_seconds).
        type: int
      period_seconds:
        description: Period of the O(scale_up.pods) and O(scale_up.percent) policies.
        type: int
        default: 15
      select_policy:
        description: Which policy wins when both are set. Without O(scale_up.pods) and O(scale_up.percent) the Kubernetes
          defaults are written (4 pods or 100 percent per 15 seconds, V(Max)).
        type: str
        choices: [Max, Min, Disabled]
        default: Max
  scale_down:
    description: Scale-down behavior.
    type: dict
    suboptions:
      stabilization_window_seconds:
        description:
          - Window over which the highest recommendation is used. Default is derived from the load time (see the description).
          - Must not be below O(startup_budget_seconds).
        type: int
      pods:
        description: At most this many pods removed per O(scale_down.period_seconds).
        type: int
      percent:
        description: At most this percentage of the current replicas removed per O(scale_down.period_seconds).
        type: int
      period_seconds:
        description: Period of the O(scale_down.pods) and O(scale_down.percent) policies.
        type: int
        default: 60
      select_policy:
        description: Which policy wins when both are set. Without O(scale_down.pods) and O(scale_down.percent) the Kubernetes
          default is written (100 percent per 15 seconds).
        type: str
        choices: [Max, Min, Disabled]
        default: Max
  prometheus_url:
    description:
      - Prometheus as KEDA reaches it. Required with O(kind=keda) and O(state=present).
      - Verification runs the trigger's query there too. A URL naming an in-cluster Service
        (C(http://<service>.<namespace>.svc:<port>)) is reached through the API server's service proxy (RBAC
        C(services/proxy) get); any other URL directly from the Ansible host.
    type: str
  prometheus_validate_certs:
    description: Verify the TLS certificate of an C(https) O(prometheus_url) reached directly.
    type: bool
    default: true
  metric_name:
    description:
      - The Prometheus queue metric, for O(kind=keda)'s query; use RV(kubeinfer.llm.metrics_adapter#module:metric_name).
      - Default is V(vllm:num_requests_waiting).
    type: str
  keda_query:
    description:
      - The PromQL query of the KEDA trigger. Default is the release's total queue,
        C(sum(<metric_name>{namespace="<namespace>",kubeinfer_io_release="<release>"})); KEDA divides it by the replicas.
    type: str
  polling_interval:
    description: Seconds between KEDA's checks of the trigger, for O(kind=keda).
    type: int
    default: 15
  verify:
    description:
      - Wait until the HPA reports a current value for the metric. With O(kind=keda), until the trigger's query returns
        a sample, the ScaledObject is C(Ready) and KEDA's HPA reports a current value (see the description).
      - With O(kind=keda) and no pod running (scaled to zero) the default query has no sample; set V(false) there.
    type: bool
    default: true
  verify_timeout:
    description:
      - Seconds to wait; allow for one HPA sync period (15 s by default) and a scrape.
      - Also bounds the wait for the previous autoscaler of the target to be removed when O(kind) changes.
    type: int
    default: 120
  state:
    description: V(absent) deletes the HPA (or ScaledObject).
    type: str
    choices: [present, absent]
    default: present
"""

EXAMPLES = r"""
- name: Install the release and keep its load time
  kubeinfer.llm.vllm_release:
    name: llama
    namespace: llm
    model: meta-llama/Llama-3.1-8B-Instruct
  register: release

- name: Scale between 1 and 4 replicas at 5 waiting requests per pod
  kubeinfer.llm.inference_hpa:
    release: llama
    namespace: llm
    min_replicas: 1
    max_replicas: 4
    target_queue_depth: 5
    startup_budget_seconds: "{{ release.startup_budget_seconds }}"
    scale_up:
      pods: 2
      period_seconds: 30

- name: Switch the same release to KEDA; the HPA above is deleted first (KEDA must be installed)
  kubeinfer.llm.inference_hpa:
    release: llama
    namespace: llm
    kind: keda
    min_replicas: 0
    max_replicas: 4
    prometheus_url: http://prometheus.monitoring.svc:9090
    metric_name: "vllm:num_requests_waiting"
"""

RETURN = r"""
hpa:
  description: The HPA (or, with O(kind=keda), the ScaledObject) as it is, or would be in check mode; null when absent.
  type: dict
  returned: always
  sample:
    apiVersion: autoscaling/v2
    kind: HorizontalPodAutoscaler
    metadata: {name: llama, namespace: llm}
    spec:
      minReplicas: 1
      maxReplicas: 4
      metrics: [{type: Pods, pods: {metric: {name: vllm_queue_depth}, target: {type: AverageValue, averageValue: "5"}}}]
kind:
  description: V(hpa) or V(keda).
  type: str
  returned: always
  sample: hpa
name:
  description: Name of the HPA or ScaledObject.
  type: str
  returned: always
  sample: llama
target:
  description: The Deployment scaled.
  type: str
  returned: when O(state=present)
  sample: llama-vllm
scale_down_window_seconds:
  description: The scale-down stabilization window used.
  type: int
  returned: when O(state=present)
  sample: 300
scale_down_window_source:
  description: Where the window came from.
  type: str
  returned: when O(state=present)
  sample: derived from startup_budget_seconds
startup_budget_seconds:
  description: The model load time the window was checked against; null when unknown.
  type: int
  returned: when O(state=present)
  sample: 135
startup_budget_source:
  description: Where the load time came from.
  type: str
  returned: when O(state=present)
  sample: startup_budget_seconds option
query:
  description: The PromQL query of the KEDA trigger.
  type: str
  returned: when O(kind=keda)
  sample: sum(vllm:num_requests_waiting{namespace="llm",kubeinfer_io_release="llama"})
current_value:
  description:
    - The per-pod average the HPA last read; null while it shows C(<unknown>).
    - With O(kind=keda), the value KEDA's HPA (RV(keda_hpa)) last read for its external metric C(s0-prometheus).
  type: str
  returned: always
  sample: "0"
query_value:
  description: The value the KEDA trigger's query returned from Prometheus during verification.
  type: str
  returned: when O(kind=keda) and O(verify) and not in check mode
  sample: "3"
keda_hpa:
  description: The name of the HPA KEDA created for the ScaledObject.
  type: str
  returned: when O(kind=keda) and O(state=present)
  sample: keda-hpa-llama
removed:
  description:
    - The collection's own autoscalers of the target deleted before the write (the other O(kind), or another name), as
      C(<Kind> <namespace>/<name>). In check mode, those a real run would delete.
  type: list
  elements: str
  returned: always
  sample: ["HorizontalPodAutoscaler llm/llama"]
desired_replicas:
  description: The HPA's desired replica count (with O(kind=keda), that of KEDA's HPA).
  type: int
  returned: always
  sample: 1
current_replicas:
  description: The HPA's current replica count.
  type: int
  returned: when O(state=present)
  sample: 1
conditions:
  description: The status conditions (AbleToScale, ScalingActive, ScalingLimited, or KEDA's Ready and Active).
  type: list
  elements: dict
  returned: when O(state=present)
  sample: [{type: ScalingActive, status: "True", reason: ValidMetricFound}]
api_requests:
  description: API requests made, by verb. A re-run with nothing to change shows no C(apply).
  type: dict
  returned: always
  sample: {get: 3, list: 1}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kubeinfer.llm.plugins.module_utils._args_common import AUTH_ARG_SPEC, RELEASE_METRIC_ARG_SPEC, STATE_ARG_SPEC, argument_spec
from ansible_collections.kubeinfer.llm.plugins.module_utils._hpa import run
from ansible_collections.kubeinfer.llm.plugins.module_utils._module import run_module


def _rules_spec(period: int, window: dict[str, object]) -> dict[str, object]:
    # apply_defaults: the suboption defaults hold when the option is not given at all.
    return {"type": "dict", "apply_defaults": True, "options": {
        "stabilization_window_seconds": dict(window),
        "pods": {"type": "int"},
        "percent": {"type": "int"},
        "period_seconds": {"type": "int", "default": period},
        "select_policy": {"type": "str", "choices": ["Max", "Min", "Disabled"], "default": "Max"},
    }}


ARGUMENT_SPEC = argument_spec(
    AUTH_ARG_SPEC, STATE_ARG_SPEC, RELEASE_METRIC_ARG_SPEC,
    name={"type": "str"},
    target={"type": "str"},
    kind={"type": "str", "choices": ["hpa", "keda"], "default": "hpa"},
    min_replicas={"type": "int", "default": 1},
    max_replicas={"type": "int", "default": 4},
    target_queue_depth={"type": "raw", "default": 5},
    startup_budget_seconds={"type": "int"},
    scale_up=_rules_spec(15, {"type": "int", "default": 0}),
    scale_down=_rules_spec(60, {"type": "int"}),
    prometheus_url={"type": "str"},
    prometheus_validate_certs={"type": "bool", "default": True},
    metric_name={"type": "str"},
    keda_query={"type": "str"},
    polling_interval={"type": "int", "default": 15},
    verify={"type": "bool", "default": True},
    verify_timeout={"type": "int", "default": 120},
)


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    run_module(module, run)


if __name__ == "__main__":
    main()
