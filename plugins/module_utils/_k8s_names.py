# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Kubernetes name rules, quantities and the labels every module shares. Private to this collection: the interface may change without notice.

The name rules are those of k8s.io/apimachinery/pkg/util/validation/validation.go (IsDNS1123Label,
IsDNS1123Subdomain, IsQualifiedName, IsValidLabelValue, IsConfigMapKey), the label selector grammar of
k8s.io/apimachinery/pkg/labels/selector.go (Parse), and Helm's release name rule
(helm.sh/helm/v3/pkg/chartutil/validate_name.go: a DNS subdomain of at most 53 characters).
Every ``check_*`` raises KubeInferError whose message starts with the parameter's name and quotes the value.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "kubeinfer.llm"
INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"
RELEASE_POD_LABEL = "kubeinfer.io/release"
INVENTORY_LABEL = "kubeinfer.io/inventory"
"""On the pods of a release that an inventory's model list manages (vllm_release inventory=); its value names the list."""
GPU_RESOURCE = "nvidia.com/gpu"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_DATA_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
# One requirement of a label selector: "key", "!key", "key=v", "key==v", "key!=v", "key in (a,b)",
# "key notin (a,b)", "key>1", "key<1" (labels.Parse; the set forms allow spaces inside the parentheses).
_SEL_SET = re.compile(r"^(?P<key>[^\s=!<>(),]+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")
_SEL_CMP = re.compile(r"^(?P<key>[^\s=!<>(),]+)\s*(?P<op>==|=|!=|>|<)\s*(?P<value>[^\s=!<>(),]*)$")
_SEL_EXISTS = re.compile(r"^(?P<not>!?)\s*(?P<key>[^\s=!<>(),]+)$")
# A Prometheus metric name (prometheus/common model.MetricNameRE), which the adapter's and KEDA's names must be.
_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")

HELM_RELEASE_MAX = 53


def managed_labels(**extra: str) -> dict[str, str]:
    """The labels of an object this collection creates: managed-by plus ``extra``."""
    return {MANAGED_BY_LABEL: MANAGED_BY, **extra}


def is_managed(obj: Mapping[str, Any] | None) -> bool:
    """True when ``obj`` carries this collection's managed-by label."""
    return bool(obj) and ((obj or {}).get("metadata") or {}).get("labels", {}).get(MANAGED_BY_LABEL) == MANAGED_BY


def dns_label_error(value: str, limit: int = 63) -> str | None:
    if not value or len(value) > limit or not _DNS_LABEL.match(value):
        return f"a DNS label: lower-case alphanumerics and '-', at most {limit} characters"
    return None


def dns_subdomain_error(value: str, limit: int = 253) -> str | None:
    if not value or len(value) > limit or not _DNS_SUBDOMAIN.match(value):
        return f"a DNS subdomain: lower-case alphanumerics, '-' and '.', at most {limit} characters"
    return None


def label_key_error(key: str) -> str | None:
    """Why ``key`` is not a valid label or taint key, or None."""
    prefix, sep, name = key.rpartition("/")
    if not name or len(name) > 63 or not _QUALIFIED_NAME.match(name):
        return "the name part must be 1-63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric"
    if sep and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return "the prefix must be a DNS subdomain of at most 253 characters"
    return None


def label_value_error(value: str) -> str | None:
    """Why ``value`` is not a valid label or taint value, or None."""
    if len(value) > 63 or not _QUALIFIED_NAME.match(value):
        return "it must be at most 63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric"
    return None


def data_key_error(key: str) -> str | None:
    """Why ``key`` is not a valid Secret or ConfigMap data key, or None."""
    if not key or len(key) > 253 or not _DATA_KEY.match(key):
        return "1-253 characters of [-._a-zA-Z0-9]"
    if key in (".", ".."):
        return "it may not be '.' or '..'"
    return None


def _split_selector(selector: str) -> list[str]:
    """The requirements of a selector: split on the commas outside parentheses."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(selector):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(selector[start:i])
            start = i + 1
    parts.append(selector[start:])
    return [p.strip() for p in parts]


def label_selector_error(selector: str) -> str | None:
    """Why ``selector`` is not a label selector the API server parses, or None (an empty one selects everything)."""
    if not selector.strip():
        return None
    if selector.count("(") != selector.count(")"):
        return "unbalanced parentheses"
    for requirement in _split_selector(selector):
        if not requirement:
            return "an empty requirement (two commas in a row, or a comma at an end)"
        match = _SEL_SET.match(requirement) or _SEL_CMP.match(requirement) or _SEL_EXISTS.match(requirement)
        if not match:
            return (f"requirement {requirement!r} is none of key, !key, key=value, key!=value, key in (a,b), key notin (a,b), "
                    "key>n, key<n")
        key = match.group("key")
        err = label_key_error(key)
        if err:
            return f"key {key!r} of requirement {requirement!r}: {err}"
        fields = match.groupdict()
        if fields.get("values") is not None:
            values = [v.strip() for v in fields["values"].split(",")]
        elif fields.get("value") is not None:
            values = [fields["value"]]
        else:
            values = []
        for value in values:
            if fields.get("op") in (">", "<"):
                if not re.match(r"^-?[0-9]+$", value):
                    return f"requirement {requirement!r}: {fields['op']} needs an integer, got {value!r}"
                continue
            err = label_value_error(value)
            if err:
                return f"value {value!r} of requirement {requirement!r}: {err}"
    return None


def _raise(param: str, value: Any, what: str, err: str | None) -> None:
    if err:
        raise KubeInferError(f"{param}: {value!r} is not a valid {what} ({err})")


def check_namespace(value: str, param: str = "namespace") -> None:
    _raise(param, value, "namespace name", dns_label_error(value or ""))


def check_dns_label(value: str, param: str, what: str, limit: int = 63) -> None:
    _raise(param, value, what, dns_label_error(value or "", limit))


def check_object_name(value: str, param: str, what: str) -> None:
    """An object name that is a DNS subdomain (Secret, ConfigMap, HPA, ...)."""
    _raise(param, value, what, dns_subdomain_error(value or ""))


def check_release_name(value: str, param: str = "release_name") -> None:
    """A Helm release name: a DNS subdomain of at most 53 characters."""
    _raise(param, value, "Helm release name", dns_subdomain_error(value or "", HELM_RELEASE_MAX))


def check_data_key(value: str, param: str, what: str = "Secret data key") -> None:
    _raise(param, value, what, data_key_error(value or ""))


def check_label_selector(value: str | None, param: str = "label_selector") -> None:
    """A label selector, checked before the API server sees it (its parse error names no parameter)."""
    if value is None:
        return
    _raise(param, value, "label selector", label_selector_error(str(value)))


def check_metric_name(value: str, param: str = "custom_metric_name") -> None:
    """A metric name the adapter, the HPA and KEDA all accept: a Prometheus metric name."""
    if not value or not _METRIC_NAME.match(value):
        raise KubeInferError(f"{param}: {value!r} is not a valid metric name (letters, digits, '_' and ':', "
                             "not starting with a digit; no spaces)")


def check_range(value: Any, param: str, minimum: float | None = None, maximum: float | None = None, unit: str = "") -> None:
    """A number within [minimum, maximum]; the message says the bounds and the value."""
    if value is None:
        return
    low_ok = minimum is None or value >= minimum
    high_ok = maximum is None or value <= maximum
    if low_ok and high_ok:
        return
    suffix = f" {unit}" if unit else ""
    if minimum is not None and maximum is not None:
        bounds = f"between {minimum:g} and {maximum:g}{suffix}"
    elif minimum is not None:
        bounds = f"at least {minimum:g}{suffix}"
    else:
        bounds = f"at most {maximum:g}{suffix}"
    raise KubeInferError(f"{param}: must be {bounds}, got {value!r}")


def check_names(values: Any, param: str, what: str) -> None:
    """Every item of a list of object names (DNS subdomains), the index in the message."""
    for i, value in enumerate(values or []):
        _raise(f"{param}[{i}]", value, what, dns_subdomain_error(str(value or "")))


def check_labels(labels: Mapping[str, Any] | None, param: str = "labels") -> None:
    """Every key and value of ``labels``; a None value (remove the label, or an empty value) is accepted."""
    for key, value in (labels or {}).items():
        err = label_key_error(str(key))
        if err:
            raise KubeInferError(f"{param}: invalid label key {key!r}: {err}")
        if value is None:
            continue
        err = label_value_error(str(value))
        if err:
            raise KubeInferError(f"{param}: invalid value {value!r} for label {key!r}: {err}")


def int_quantity(value: Any) -> int:
    """A whole-number quantity or count (``"8"``, 8) as an int; anything else (missing, fractional, suffixed) is 0.

    Extended resources such as nvidia.com/gpu only hold whole numbers (k8s.io/kubernetes
    pkg/apis/core/validation/validation.go, ValidateResourceQuantityValue for extended resources).
    """
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return 0
