# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Connection options and the Kubernetes ApiClient built from them. Private to this collection: the interface may change without notice."""
from __future__ import annotations

import os
import re
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
FILE_OPTIONS = ("kubeconfig", "ca_cert", "client_cert", "client_key")


def validate_connection(params: dict[str, Any]) -> None:
    """Check the connection options before the client is built; the message names the option and its value."""
    for option in FILE_OPTIONS:
        path = params.get(option)
        if not path:
            continue
        if not os.path.exists(path):
            raise KubeInferError(f"{option}: file {path} does not exist")
        if not os.path.isfile(path) or not os.access(path, os.R_OK):
            raise KubeInferError(f"{option}: {path} is not a readable file")
    for option in ("host", "proxy"):
        value = params.get(option)
        if value and not re.match(r"^https?://[^/\s]+", value):
            raise KubeInferError(f"{option}: {value!r} is not an http:// or https:// URL")


def origin(params: dict[str, Any]) -> dict[str, str]:
    """Which option named the API server and which one carries the credentials, for error messages.

    ``{"server": option, "credentials": option, "ca": option}``: an explicit option when given, else where the
    kubeconfig (or the in-cluster service account) supplied it.
    """
    kubeconfig = params.get("kubeconfig")
    if kubeconfig:
        source = f"kubeconfig ({kubeconfig}" + (f", context {params['context']})" if params.get("context") else ")")
    elif params.get("host"):
        source = "host"
    elif os.path.exists(os.path.expanduser("~/.kube/config")):
        source = "kubeconfig (~/.kube/config)"
    else:
        source = "the in-cluster service account"
    credentials = "api_key" if params.get("api_key") else "client_cert/client_key" if params.get("client_cert") else source
    return {"server": "host" if params.get("host") else source, "credentials": credentials,
            "ca": "ca_cert" if params.get("ca_cert") else source}


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
    validate_connection(params)
    configuration = k8s_client.Configuration()
    kubeconfig = params.get("kubeconfig")
    host = params.get("host")
    context = params.get("context")
    if kubeconfig or not host:
        where = kubeconfig or "~/.kube/config"
        if kubeconfig or os.path.exists(os.path.expanduser("~/.kube/config")):
            if context:
                _check_context(kubeconfig, context, where)
            try:
                k8s_config.load_kube_config(config_file=kubeconfig, context=context,
                                            client_configuration=configuration, persist_config=False)
            except Exception as e:  # the kubernetes library raises several unrelated types here
                raise KubeInferError(f"kubeconfig: could not load the cluster configuration from {where}: {e}") from e
        else:
            try:
                k8s_config.load_incluster_config(client_configuration=configuration)
            except Exception as e:
                raise KubeInferError("kubeconfig: no kubeconfig given, no ~/.kube/config, and not running in a pod "
                                     f"with a service account ({e}); set kubeconfig, or host and api_key") from e
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


def _check_context(kubeconfig: str | None, context: str, where: str) -> None:
    """The context must be one the kubeconfig defines (the library's own message names no option)."""
    try:
        contexts, _current = k8s_config.list_kube_config_contexts(config_file=kubeconfig)
    except Exception as e:
        raise KubeInferError(f"kubeconfig: could not load the cluster configuration from {where}: {e}") from e
    names = sorted(str(c.get("name")) for c in contexts or [])
    if context not in names:
        raise KubeInferError(f"context: {context!r} is not a context of {where} (its contexts: {', '.join(names) or 'none'})")
