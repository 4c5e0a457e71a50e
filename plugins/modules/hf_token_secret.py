#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: hf_token_secret
short_description: Keep the Hugging Face token in an Opaque Secret without ever showing it
version_added: 0.1.0
description:
  - Creates or updates an C(Opaque) Secret that holds the Hugging Face token under one data key, with server-side apply
    and the label C(app.kubernetes.io/managed-by=kubeinfer.llm).
  - The token never appears in the result, a diff, a warning or an error message. Error text from the API server is
    masked before it is returned, and the diff only tells whether the token changed.
  - A re-run with the same token compares it with the live Secret and makes no write; RV(api_requests) then shows a single C(get).
  - With O(existing_secret=true) the module only reads. It checks that a Secret managed by someone else exists and holds a
    non-empty O(key), and fails naming the parameter when it does not.
  - Every input is validated before the first request.
author:
  - Kubeinfer maintainers (@kubeinfer)
extends_documentation_fragment:
  - kubeinfer.llm.k8s_auth
  - kubeinfer.llm.k8s_auth.ATTRIBUTES
attributes:
  check_mode:
    description: The write is a server-side dry run, so the API server validates it and nothing is stored.
    support: full
  diff_mode:
    description: Shows the Secret's name, labels, type and data keys. Data values are shown as V(<hidden>), or V(<hidden, changed>) after a token change.
    support: full
  idempotent:
    description: A second run with the same token makes no API write.
    support: full
options:
  name:
    description:
      - Name of the Secret.
    type: str
    default: hf-token
  namespace:
    description:
      - Namespace of the Secret.
    type: str
    required: true
  key:
    description:
      - The data key that holds the token. The vLLM chart reads C(HF_TOKEN) by default.
      - Must be 1-253 characters of C([-._a-zA-Z0-9]).
    type: str
    default: HF_TOKEN
  token:
    description:
      - The Hugging Face access token. It is never logged.
      - When not given, the E(HF_TOKEN) or E(HUGGING_FACE_HUB_TOKEN) environment variable of the host that runs the module is used.
      - Required with O(state=present) unless O(existing_secret=true). Ignored with O(existing_secret=true).
    type: str
  labels:
    description:
      - Extra labels for the Secret. C(app.kubernetes.io/managed-by=kubeinfer.llm) is always set.
    type: dict
    default: {}
  existing_secret:
    description:
      - Do not write anything. Check that the Secret O(name) exists in O(namespace), managed by someone else, and that its
        O(key) holds a non-empty value.
    type: bool
    default: false
  create_namespace:
    description:
      - Create O(namespace) when it does not exist. Without it a missing namespace is an error.
    type: bool
    default: false
  state:
    description:
      - V(present) creates or updates the Secret.
      - V(absent) deletes it, but only when it carries the C(app.kubernetes.io/managed-by=kubeinfer.llm) label;
        a Secret created by someone else is never deleted.
    type: str
    choices: [present, absent]
    default: present
notes:
  - The token is compared with the live Secret through its base64 form; no hash of the token is ever returned, since a hash of
    a short secret can be reversed by guessing.
"""

EXAMPLES = r"""
- name: Store the token from the HF_TOKEN environment variable of the controller
  kubeinfer.llm.hf_token_secret:
    namespace: vllm
    token: "{{ lookup('ansible.builtin.env', 'HF_TOKEN') }}"
    create_namespace: true
  no_log: true

- name: Use a Secret that another team manages, under its own key
  kubeinfer.llm.hf_token_secret:
    namespace: vllm
    name: shared-hf-credentials
    key: token
    existing_secret: true

- name: Remove the Secret again
  kubeinfer.llm.hf_token_secret:
    namespace: vllm
    state: absent
"""

RETURN = r"""
secret:
  description: Where the token is, for a C(secretKeyRef).
  type: dict
  returned: always
  sample: {name: hf-token, namespace: vllm, key: HF_TOKEN}
  contains:
    name:
      description: The Secret name.
      type: str
      sample: hf-token
    namespace:
      description: The Secret namespace.
      type: str
      sample: vllm
    key:
      description: The data key that holds the token.
      type: str
      sample: HF_TOKEN
token_changed:
  description:
    - Whether the stored token was (or, in check mode, would be) set to a new value, or removed with O(state=absent).
    - Always V(false) with O(existing_secret=true).
  type: bool
  returned: always
  sample: false
api_requests:
  description: API requests made, by verb. A re-run with the same token shows only C(get).
  type: dict
  returned: always
  sample: {get: 1}
diff:
  description: The Secret before and after, with every data value replaced by a marker.
  type: dict
  returned: when diff mode is on and the Secret is managed
  sample:
    before: {metadata: {name: hf-token, namespace: vllm}, type: Opaque, data: {HF_TOKEN: <hidden>}}
    after: {metadata: {name: hf-token, namespace: vllm}, type: Opaque, data: {HF_TOKEN: "<hidden, changed>"}}
"""

from ansible.module_utils.basic import AnsibleModule, env_fallback

from ansible_collections.kubeinfer.llm.plugins.module_utils._args_common import AUTH_ARG_SPEC, STATE_ARG_SPEC, argument_spec
from ansible_collections.kubeinfer.llm.plugins.module_utils._module import run_module
from ansible_collections.kubeinfer.llm.plugins.module_utils._secrets import run


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(
            AUTH_ARG_SPEC, STATE_ARG_SPEC,
            name={"type": "str", "default": "hf-token"},
            namespace={"type": "str", "required": True},
            key={"type": "str", "default": "HF_TOKEN", "no_log": False},
            token={"type": "str", "no_log": True, "fallback": (env_fallback, ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"])},
            labels={"type": "dict", "default": {}},
            existing_secret={"type": "bool", "default": False, "no_log": False},
            create_namespace={"type": "bool", "default": False},
        ),
        supports_check_mode=True,
    )
    run_module(module, run)


if __name__ == "__main__":
    main()
