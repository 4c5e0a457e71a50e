#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: completion_check
short_description: Prove that a vLLM endpoint answers a completion, through a Kubernetes port-forward
version_added: 0.1.0
description:
  - Finds a Ready pod of a vLLM release and opens a Kubernetes port-forward to it through the API server, the way
    C(kubectl port-forward) does (the C(v4.channel.k8s.io) websocket protocol of the Python client). No ingress,
    LoadBalancer or C(kubectl) binary is needed; the RBAC the caller needs is C(get)/C(list) on pods (and services
    with O(service)) and C(create) on C(pods/portforward).
  - Alternatively sends the requests straight to O(base_url), for clusters with an ingress.
  - Runs three checks in order, each on a fresh connection (through a fresh port-forward stream) with
    the header C(Connection) set to C(close).
  - First C(GET /health) must answer 200.
  - Then C(GET /v1/models) must answer JSON that lists O(model) in C(data[].id).
  - Then C(POST /v1/completions) (or C(/v1/chat/completions) with O(api=chat)) with O(prompt), O(max_tokens) and
    temperature 0 must answer JSON with non-empty C(choices) and a C(usage) object.
  - Fails with a clear message on a timeout, an HTTP error (status and the start of the body), an answer that is not
    JSON, or a model mismatch. A failure still returns what was checked so far.
  - Never changes anything, so it always reports RV(ignore:changed=false).
author:
  - Kubeinfer maintainers (@kubeinfer)
extends_documentation_fragment:
  - kubeinfer.llm.k8s_auth
  - kubeinfer.llm.k8s_auth.ATTRIBUTES
attributes:
  check_mode:
    description:
      - The module only reads (it lists pods and sends read-only inference requests), so in check mode it
        runs the same checks and reports the same result.
    support: full
  diff_mode:
    description: There is nothing to diff; no diff is returned.
    support: none
  idempotent:
    description: Never changes the cluster.
    support: full
options:
  base_url:
    description:
      - Send the requests directly to this URL, for example V(https://llm.example.com), instead of through a port-forward.
      - The URL is the server root; a trailing V(/v1) is dropped because C(/health) is served at the root.
      - Mutually exclusive with O(label_selector), O(service) and O(pod).
    type: str
  endpoint_validate_certs:
    description: Verify the TLS certificate of an V(https) O(base_url).
    type: bool
    default: true
  endpoint_ca_cert:
    description: CA bundle for an V(https) O(base_url).
    type: path
  namespace:
    description: Namespace of the vLLM pods. Required with O(label_selector), O(service) or O(pod).
    type: str
  label_selector:
    description:
      - Label selector of the vLLM pods, for example V(app.kubernetes.io/instance=llama).
      - The first Ready pod by name is used.
    type: str
  service:
    description:
      - Name of a Service whose selector picks the vLLM pods. Without O(port), the Service's first target port is used.
    type: str
  pod:
    description: Name of the pod to forward to; it must be Ready.
    type: str
  port:
    description:
      - Container port of the pod to forward to.
      - Defaults to the target port of O(service) when given, else V(8000) (the vLLM default).
    type: int
  ready_timeout:
    description:
      - Seconds to wait for a Ready pod. V(0) looks once and fails when no pod is Ready.
    type: int
    default: 0
  model:
    description:
      - The model name the server must list in C(/v1/models) (the served model name). The completion is sent for it.
      - When omitted, the first served model is used and no model check is made.
    type: str
  api:
    description: Which API to call, V(completions) (C(/v1/completions)) or V(chat) (C(/v1/chat/completions)).
    type: str
    choices: [completions, chat]
    default: completions
  prompt:
    description: The prompt (the user message with O(api=chat)).
    type: str
    default: "Hello, my name is"
  max_tokens:
    description: Maximum number of tokens to generate.
    type: int
    default: 16
  timeout:
    description:
      - Seconds allowed for each request, including opening its port-forward stream.
    type: int
    default: 60
  overall_timeout:
    description:
      - Seconds allowed for all three checks together; each request gets the smaller of O(timeout) and the time left.
    type: int
    default: 180
  vllm_api_key:
    description:
      - The key vLLM was started with (C(--api-key)), sent as a bearer token.
      - Not to be confused with O(api_key), the Kubernetes API token.
    type: str
    aliases: [openai_api_key]
"""

EXAMPLES = r"""
- name: Check the release through a port-forward to one of its pods
  kubeinfer.llm.completion_check:
    namespace: llm
    label_selector: app.kubernetes.io/instance=llama
    model: meta-llama/Llama-3.1-8B-Instruct
  register: check

- name: Show the completion
  ansible.builtin.debug:
    var: check.response

- name: Chat API, through the Service's target port, waiting up to 10 minutes for a Ready pod
  kubeinfer.llm.completion_check:
    namespace: llm
    service: llama-vllm
    api: chat
    prompt: Say hello in French.
    ready_timeout: 600
    vllm_api_key: "{{ vault_vllm_api_key }}"

- name: Check an endpoint behind an ingress
  kubeinfer.llm.completion_check:
    base_url: https://llm.example.com
    model: llama
"""

RETURN = r"""
via:
  description: How the endpoint was reached.
  type: str
  returned: always
  sample: port-forward pod/llm/llama-vllm-7d9c7c8b5-x2x4q:8000
pod:
  description: The pod the port-forward went to.
  type: str
  returned: when the endpoint was reached through a port-forward
  sample: llama-vllm-7d9c7c8b5-x2x4q
model:
  description: The model the completion was requested for.
  type: str
  returned: success
  sample: meta-llama/Llama-3.1-8B-Instruct
models:
  description: The model ids served (C(/v1/models) C(data[].id)).
  type: list
  elements: str
  returned: success, and on a model mismatch
  sample: [meta-llama/Llama-3.1-8B-Instruct]
health_latency_ms:
  description: Milliseconds from sending C(GET /health) to reading its answer.
  type: float
  returned: success
  sample: 3.2
latency_ms:
  description: Milliseconds from sending the completion request to reading the whole answer (not counting opening the stream).
  type: float
  returned: success
  sample: 412.7
usage:
  description: Token counts of the completion.
  type: dict
  returned: success
  sample: {prompt_tokens: 5, completion_tokens: 16, total_tokens: 21}
  contains:
    prompt_tokens:
      description: Tokens in the prompt.
      type: int
      sample: 5
    completion_tokens:
      description: Tokens generated.
      type: int
      sample: 16
    total_tokens:
      description: The sum.
      type: int
      sample: 21
response:
  description: The completion answer, as JSON.
  type: dict
  returned: success
  sample:
    id: cmpl-1
    object: text_completion
    model: meta-llama/Llama-3.1-8B-Instruct
    choices: [{index: 0, text: " John and I", finish_reason: length}]
    usage: {prompt_tokens: 5, completion_tokens: 16, total_tokens: 21}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kubeinfer.llm.plugins.module_utils._args_common import AUTH_ARG_SPEC, argument_spec
from ansible_collections.kubeinfer.llm.plugins.module_utils._completion import run
from ansible_collections.kubeinfer.llm.plugins.module_utils._module import run_module

ARGUMENT_SPEC = argument_spec(
    AUTH_ARG_SPEC,
    base_url={"type": "str"},
    endpoint_validate_certs={"type": "bool", "default": True},
    endpoint_ca_cert={"type": "path"},
    namespace={"type": "str"},
    label_selector={"type": "str"},
    service={"type": "str"},
    pod={"type": "str"},
    port={"type": "int"},
    ready_timeout={"type": "int", "default": 0},
    model={"type": "str"},
    api={"type": "str", "choices": ["completions", "chat"], "default": "completions"},
    prompt={"type": "str", "default": "Hello, my name is"},
    max_tokens={"type": "int", "default": 16, "no_log": False},
    timeout={"type": "int", "default": 60},
    overall_timeout={"type": "int", "default": 180},
    vllm_api_key={"type": "str", "no_log": True, "aliases": ["openai_api_key"]},
)
TARGETS = ("base_url", "label_selector", "service", "pod")


def main() -> None:
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        required_one_of=[TARGETS],
        mutually_exclusive=[TARGETS],
        required_by={"label_selector": "namespace", "service": "namespace", "pod": "namespace"},
        supports_check_mode=True,
    )
    # A check of base_url (an ingress) needs no cluster credentials.
    run_module(module, run, cluster=not module.params["base_url"])


if __name__ == "__main__":
    main()
