# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The argument specs modules share, each paired with the doc fragment that documents it. Private to this collection: the interface may change without notice.

Types, choices and defaults live here and in each module's own spec, once; module_utils checks only
what an argument spec cannot express (cross-field rules, name syntax, ranges).
"""
from __future__ import annotations

import copy
from typing import Any

from ansible.module_utils.basic import env_fallback

from ansible_collections.kubeinfer.llm.plugins.module_utils._gpu_discovery import DEFAULT_PROBE_IMAGE, DEFAULT_PROBE_NAMESPACE, DEFAULT_PROBE_TIMEOUT
from ansible_collections.kubeinfer.llm.plugins.module_utils._k8s_names import check_metric_name, check_namespace, check_release_name

Spec = dict[str, dict[str, Any]]

# The cluster connection (doc fragment kubeinfer.llm.k8s_auth).
AUTH_ARG_SPEC: Spec = {
    "kubeconfig": {"type": "path", "fallback": (env_fallback, ["K8S_AUTH_KUBECONFIG", "KUBECONFIG"])},
    "context": {"type": "str", "fallback": (env_fallback, ["K8S_AUTH_CONTEXT"])},
    "host": {"type": "str", "fallback": (env_fallback, ["K8S_AUTH_HOST"])},
    "api_key": {"type": "str", "no_log": True, "fallback": (env_fallback, ["K8S_AUTH_API_KEY"])},
    "validate_certs": {"type": "bool", "aliases": ["verify_ssl"], "fallback": (env_fallback, ["K8S_AUTH_VERIFY_SSL"])},
    "ca_cert": {"type": "path", "aliases": ["ssl_ca_cert"], "fallback": (env_fallback, ["K8S_AUTH_SSL_CA_CERT"])},
    "client_cert": {"type": "path", "aliases": ["cert_file"], "fallback": (env_fallback, ["K8S_AUTH_CERT_FILE"])},
    "client_key": {"type": "path", "aliases": ["key_file"], "no_log": False, "fallback": (env_fallback, ["K8S_AUTH_KEY_FILE"])},
    "proxy": {"type": "str", "fallback": (env_fallback, ["K8S_AUTH_PROXY"])},
}

# present/absent, for every module that owns objects.
STATE_ARG_SPEC: Spec = {
    "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
}

# The helm CLI (documented in each module that runs helm).
HELM_ARG_SPEC: Spec = {
    "helm_binary": {"type": "path"},
}

# The GPU node probe (doc fragment kubeinfer.llm.gpu_probe).
PROBE_ARG_SPEC: Spec = {
    "probe_image": {"type": "str", "default": DEFAULT_PROBE_IMAGE},
    "probe_namespace": {"type": "str", "default": DEFAULT_PROBE_NAMESPACE},
    "probe_timeout": {"type": "int", "default": DEFAULT_PROBE_TIMEOUT},
}


def argument_spec(*shared: Spec, **own: dict[str, Any]) -> Spec:
    """A module's argument spec: the shared specs it takes, in order, then its own options."""
    spec: Spec = {}
    for part in shared:
        spec.update(copy.deepcopy(part))
    spec.update(own)
    return spec


# The vLLM release whose queue depth a metrics module serves or scales on (metrics_adapter, inference_hpa).
RELEASE_METRIC_ARG_SPEC: Spec = {
    "release": {"type": "str", "required": True},
    "namespace": {"type": "str", "required": True},
    "custom_metric_name": {"type": "str", "default": "vllm_queue_depth"},
}


def check_release_metric(params: Any) -> None:
    """The options of RELEASE_METRIC_ARG_SPEC, before any request: a release name, a namespace, a metric name."""
    check_release_name(params["release"], "release")
    check_namespace(params["namespace"])
    check_metric_name(params["custom_metric_name"])
