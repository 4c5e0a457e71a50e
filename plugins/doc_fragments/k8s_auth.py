# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations


class ModuleDocFragment:
    # The cluster connection options shared by every module of the collection.
    DOCUMENTATION = r"""
options:
  kubeconfig:
    description:
      - Path to a kubeconfig file.
      - When neither O(kubeconfig) nor O(host) is set, C(~/.kube/config) is used if it exists,
        otherwise the in-cluster service account (for example inside an AWX execution environment).
      - Can be set with the E(K8S_AUTH_KUBECONFIG) or E(KUBECONFIG) environment variable.
    type: path
  context:
    description:
      - The kubeconfig context to use. Defaults to the current context.
      - Can be set with the E(K8S_AUTH_CONTEXT) environment variable.
    type: str
  host:
    description:
      - The URL of the API server, overriding the kubeconfig.
      - Can be set with the E(K8S_AUTH_HOST) environment variable.
    type: str
  api_key:
    description:
      - A bearer token for the API server. It is never logged and is given to helm through the environment, not argv.
      - Can be set with the E(K8S_AUTH_API_KEY) environment variable.
    type: str
  validate_certs:
    description:
      - Whether to verify the API server's TLS certificate.
      - Can be set with the E(K8S_AUTH_VERIFY_SSL) environment variable.
    type: bool
    aliases: [verify_ssl]
  ca_cert:
    description:
      - Path to a CA bundle that signs the API server's certificate.
      - Can be set with the E(K8S_AUTH_SSL_CA_CERT) environment variable.
    type: path
    aliases: [ssl_ca_cert]
  client_cert:
    description:
      - Path to a client certificate for TLS authentication.
      - Can be set with the E(K8S_AUTH_CERT_FILE) environment variable.
    type: path
    aliases: [cert_file]
  client_key:
    description:
      - Path to the key of O(client_cert).
      - Can be set with the E(K8S_AUTH_KEY_FILE) environment variable.
    type: path
    aliases: [key_file]
  proxy:
    description:
      - An HTTP proxy URL for the API connection.
      - Can be set with the E(K8S_AUTH_PROXY) environment variable.
    type: str
requirements:
  - python >= 3.9
  - kubernetes >= 31.0.0
notes:
  - Every module of this collection is in the action group C(kubeinfer.llm.k8s), so
    C(module_defaults) for C(group/kubeinfer.llm.k8s) sets these options once for all of them.
"""

    # Attributes every module of the collection shares.
    ATTRIBUTES = r"""
attributes:
  action_group:
    description: Use C(group/kubeinfer.llm.k8s) in C(module_defaults) to set defaults for this module.
    support: full
    membership:
      - kubeinfer.llm.k8s
"""
