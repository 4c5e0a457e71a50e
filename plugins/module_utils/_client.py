# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Connection options and the Kubernetes ApiClient built from them. Private to this collection: the interface may change without notice."""
from __future__ import annotations

import os
from typing import Any

from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError

try:
    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config
    HAS_KUBERNETES = True
    KUBERNETES_IMPORT_ERROR: Exception | None = None
except ImportError as e:  # pragma: no cover - reported by the module
    HAS_KUBERNETES = False
    KUBERNETES_IMPORT_ERROR = e

USER_AGENT = "kubeinfer.llm"


def build_api_client(params: dict[str, Any]) -> Any:
    """Build a kubernetes ApiClient from the connection options.

    Explicit options win over the kubeconfig; with no kubeconfig and no host the
    in-cluster service account is used (AWX execution environments, bring-up pods).
    A module that sends requests from threads (gpu_node's ``parallel``) gets a urllib3
    pool of at least that many connections (its default is 5 per CPU), so that none
    is opened and dropped per request.
    """
    if not HAS_KUBERNETES:
        raise KubeInferError(f"the 'kubernetes' Python library is required: {KUBERNETES_IMPORT_ERROR}")
    configuration = k8s_client.Configuration()
    kubeconfig = params.get("kubeconfig")
    host = params.get("host")
    try:
        if kubeconfig or not host:
            if kubeconfig and not os.path.exists(kubeconfig):
                raise KubeInferError(f"kubeconfig: file {kubeconfig} does not exist")
            if kubeconfig or os.path.exists(os.path.expanduser("~/.kube/config")):
                k8s_config.load_kube_config(config_file=kubeconfig, context=params.get("context"),
                                            client_configuration=configuration, persist_config=False)
            else:
                k8s_config.load_incluster_config(client_configuration=configuration)
    except KubeInferError:
        raise
    except Exception as e:  # the kubernetes library raises several unrelated types here
        raise KubeInferError(f"kubeconfig: could not load the cluster configuration: {e}") from e
    if host:
        configuration.host = host
    if params.get("api_key"):
        configuration.api_key = {"authorization": "Bearer " + params["api_key"]}
    if params.get("validate_certs") is not None:
        configuration.verify_ssl = params["validate_certs"]
    if params.get("ca_cert"):
        configuration.ssl_ca_cert = params["ca_cert"]
    if params.get("client_cert"):
        configuration.cert_file = params["client_cert"]
    if params.get("client_key"):
        configuration.key_file = params["client_key"]
    if params.get("proxy"):
        configuration.proxy = params["proxy"]
    concurrency = params.get("parallel")
    if concurrency:
        configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize or 0, concurrency)
    api_client = k8s_client.ApiClient(configuration)
    # Names the collection in the API server's audit log, apart from other clients of the same library.
    api_client.user_agent = USER_AGENT
    return api_client
