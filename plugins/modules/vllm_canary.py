#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: vllm_canary
short_description: Roll a new version of a served model out as a canary, measure it against the stable one, then promote or roll back
version_added: 0.2.0
description:
  - Works on a release that M(kubeinfer.llm.vllm_release) installed. It adds the chart's canary Deployment (C(<name>-canary)) with the
    release's values and O(changes) merged over them, and O(replicas) pods. The canary's pods carry the release's selector labels,
    so the release's Service sends them O(replicas) / (stable replicas + O(replicas)) of the traffic, as a replica ratio.
  - Once the canary has rolled out, the module sends O(requests) completions to each version, to its own Ready pods through the API
    server's port-forward. Both versions are measured in the same window. It then compares the canary's error rate and its
    O(percentile) latency with the thresholds.
  - "Promote when the canary passes: the release is upgraded to the canary's values, which rolls its Deployment (C(maxUnavailable: 0),
    a drain on deletion), and the canary is removed. Roll back when it misses a threshold, or never becomes ready: the canary is removed
    and the release keeps its values. The stable version serves throughout."
  - After a promotion, update the inventory that M(kubeinfer.llm.vllm_release) runs from. Otherwise its next run rolls the release back to
    the old values.
  - A run whose O(changes) the release already has does nothing (RV(decision=already_promoted)), so a re-run after a promotion makes
    no write. A re-run after a rollback tries the canary again.
  - With O(httproute), the split is by Gateway API HTTPRoute weights instead. The canary then gets a Service of its own
    (C(<name>-canary)), and its pods do not match the release's Service. While the canary is measured, O(weight) percent of each
    backendRef of that route to the release's Service goes to the canary's Service. The route's rules are then restored, before
    the canary is removed. The module checks that the cluster serves C(gateway.networking.k8s.io/v1) HTTPRoutes, and that the
    route sends traffic to the release's Service. It then needs C(get) and C(patch) on C(httproutes).
author:
  - Kubeinfer maintainers (@kubeinfer)
requirements:
  - helm 3 on the host that runs the module
  - the C(kubernetes) Python library on that host
extends_documentation_fragment:
  - kubeinfer.llm.k8s_auth
  - kubeinfer.llm.k8s_auth.ATTRIBUTES
attributes:
  check_mode:
    description: Reads the release and renders the canary; reports what it would deploy and measures nothing.
    support: full
  diff_mode:
    description: Returns the release's values and the values with the canary.
    support: full
  idempotent:
    description: A run whose changes the release already runs makes no write.
    support: full
options:
  name:
    description:
      - The release (M(kubeinfer.llm.vllm_release) O(kubeinfer.llm.vllm_release#module:name)).
    type: str
    required: true
  namespace:
    description:
      - Namespace of the release.
    type: str
    required: true
  changes:
    description:
      - Chart values the new version changes, merged over the release's own. Only C(model), C(image), C(vllm), C(sim), C(probes),
        C(resources), C(podAnnotations) and C(extraEnv) may change. The chart checks each against its schema, as it checks the release.
      - "For example C({model: {revision: <commit>}}), C({image: {vllm: {tag: v0.11.1}}}) or C({vllm: {extraArgs: [--enable-chunked-prefill]}})."
    type: dict
    required: true
  replicas:
    description:
      - Canary pods. The share of the traffic is O(replicas) / (stable replicas + O(replicas)).
    type: int
    default: 1
  httproute:
    description:
      - An HTTPRoute in O(namespace) with a backendRef to the release's Service. Set it to split the traffic by route weights
        instead of by replica ratio.
    type: str
  weight:
    description:
      - With O(httproute), the percent of the route's traffic to the release that goes to the canary (1 to 99).
    type: int
    default: 10
  requests:
    description:
      - Completions sent to each version for the measurement (at least 5).
    type: int
    default: 30
  percentile:
    description:
      - The latency percentile compared (50 to 99.9).
    type: float
    default: 95
  max_latency_ratio:
    description:
      - The canary passes when its O(percentile) latency is at most the stable one times this, plus O(latency_slack_ms).
    type: float
    default: 1.2
  latency_slack_ms:
    description:
      - Milliseconds added to the latency limit, so that the noise of a short request does not decide.
    type: float
    default: 50
  max_error_rate:
    description:
      - Highest share of failed canary requests (0 to 1). A failure is a transport error, a status other than 200, or an answer
        without choices or usage.
    type: float
    default: 0.01
  prompt:
    description:
      - The prompt of each measured completion.
    type: str
    default: Say hello.
  max_tokens:
    description:
      - Tokens per measured completion.
    type: int
    default: 16
  timeout:
    description:
      - Seconds for one measured request.
    type: int
    default: 60
  rollout_timeout:
    description:
      - Seconds to wait for the canary, and then for the release, to roll out. Defaults to 600.
    type: int
  fail_on_rollback:
    description:
      - Fail the task after a rollback (the release is restored first), so a pipeline stops.
    type: bool
    default: true
  chart_ref:
    description:
      - The release's chart. Defaults to the collection's own C(charts/vllm), set on the controller by the action plugin.
    type: str
  chart_version:
    description:
      - Chart version, for a chart from a repository.
    type: str
  helm_binary:
    description:
      - Path of helm. Defaults to E(HELM_BINARY), then C(helm) on E(PATH).
    type: path
notes:
  - Each helm write holds the Lease C(kubeinfer-helm-<release>) and recovers a release an interrupted run left pending, as
    M(kubeinfer.llm.vllm_release) does.
  - The chart's canary Deployment is C(<name>-canary), with the label C(kubeinfer.io/track=canary) on it and on its pods.
  - M(kubeinfer.llm.vllm_release) removes a canary that is still there, because it declares the release without one.
  - A release that prefetches its model (C(model_cache.prefetch)) refuses a canary of another model or revision. Its pods load
    offline, and the prefetch Job fills the cache with the release's own revision only.
seealso:
  - module: kubeinfer.llm.vllm_release
  - module: kubeinfer.llm.completion_check
"""

EXAMPLES = r"""
- name: Try a new revision on one pod of four, promote it when p95 stays within 1.2x and errors below 1%
  kubeinfer.llm.vllm_canary:
    name: llama
    namespace: llm
    changes:
      model:
        revision: 0e9e39f249a16976918f6564b8830bc894c89659
    replicas: 1
    requests: 40
    max_latency_ratio: 1.2
    max_error_rate: 0.01
  register: canary

- name: Show the decision
  ansible.builtin.debug:
    msg: "{{ canary.decision }}: stable p95 {{ canary.measured.stable.p95_ms }} ms, canary p95 {{ canary.measured.canary.p95_ms }} ms"
"""

RETURN = r"""
decision:
  description: C(promoted), C(rolled_back), C(already_promoted) (nothing to do) or, in check mode, C(would_measure).
  type: str
  returned: always
  sample: promoted
measured:
  description:
    - Per version (C(stable), C(canary)), the requests, errors, error rate, latency percentiles in ms (C(p50_ms), C(p95_ms), C(p99_ms),
      and C(percentile_ms) for O(percentile)) and the pods measured.
  type: dict
  returned: when the canary rolled out
  sample: {stable: {requests: 30, errors: 0, error_rate: 0.0, p50_ms: 512.3, p95_ms: 540.1, p99_ms: 551.0,
                   percentile: 95, percentile_ms: 540.1, max_ms: 551.0, pods: 2},
           canary: {requests: 30, errors: 0, error_rate: 0.0, p50_ms: 520.8, p95_ms: 548.9, p99_ms: 560.2,
                   percentile: 95, percentile_ms: 548.9, max_ms: 560.2, pods: 1}}
missed:
  description: The thresholds the canary missed, each with its numbers; empty when it passed.
  type: list
  elements: str
  returned: when the canary was tried
  sample: ["p95 latency 2531 ms above 698 ms (stable p95 540 ms x max_latency_ratio 1.2 + latency_slack_ms 50)"]
thresholds:
  description: The thresholds applied.
  type: dict
  returned: when the canary was tried
  sample: {percentile: 95, max_latency_ratio: 1.2, latency_slack_ms: 50, max_error_rate: 0.01}
steps:
  description: What was done, in order.
  type: list
  elements: str
  returned: when the canary was tried
  sample: ["canary llama-canary rolled out with 1 replica(s)", "HTTPRoute llm/chat: 10% to llama-canary", "HTTPRoute llm/chat: its rules restored",
           "promoted: the release runs the canary values, llama rolled out"]
values:
  description: The release's values (C(stable)) and the canary's sections (C(canary)).
  type: dict
  returned: always
  sample: {stable: {model: {name: meta-llama/Llama-3.1-8B-Instruct}}, canary: {model: {name: meta-llama/Llama-3.1-8B-Instruct, revision: 0e9e39f}}}
release:
  description: The release after the run (a C(helm list) row).
  type: dict
  returned: always
  sample: {name: llama, namespace: llm, installed: true, chart: vllm-0.3.0, revision: 5, status: deployed}
helm_commands:
  description: The helm commands run, secrets masked.
  type: list
  elements: str
  returned: always
  sample: ["helm upgrade --install llama /collections/kubeinfer/llm/charts/vllm --namespace llm --values <values>"]
api_requests:
  description: API requests made, by verb.
  type: dict
  returned: always
  sample: {get: 6, list: 9}
diff:
  description: The release's values before and with the canary, when diff is asked for.
  type: dict
  returned: when diff mode is on and there is a canary to deploy
  sample: {before: {replicaCount: 2}, after: {replicaCount: 2, canary: {enabled: true, replicas: 1}}}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kubeinfer.llm.plugins.module_utils._args_common import AUTH_ARG_SPEC, HELM_ARG_SPEC, argument_spec
from ansible_collections.kubeinfer.llm.plugins.module_utils._canary import run
from ansible_collections.kubeinfer.llm.plugins.module_utils._module import run_module

ARGUMENT_SPEC = argument_spec(
    AUTH_ARG_SPEC, HELM_ARG_SPEC,
    name={"type": "str", "required": True},
    namespace={"type": "str", "required": True},
    changes={"type": "dict", "required": True},
    replicas={"type": "int", "default": 1},
    httproute={"type": "str"},
    weight={"type": "int", "default": 10},
    requests={"type": "int", "default": 30},
    percentile={"type": "float", "default": 95},
    max_latency_ratio={"type": "float", "default": 1.2},
    latency_slack_ms={"type": "float", "default": 50},
    max_error_rate={"type": "float", "default": 0.01},
    prompt={"type": "str", "default": "Say hello."},
    max_tokens={"type": "int", "default": 16, "no_log": False},
    timeout={"type": "int", "default": 60},
    rollout_timeout={"type": "int"},
    fail_on_rollback={"type": "bool", "default": True},
    chart_ref={"type": "str"},
    chart_version={"type": "str"},
)


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    run_module(module, run, helm=True)


if __name__ == "__main__":
    main()
