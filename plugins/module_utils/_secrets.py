# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Hugging Face token Secret, written without ever echoing the token. Private to this collection: the interface may change without notice."""
from __future__ import annotations

import base64
import re
from typing import Any, Iterable

from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._nodes import label_key_error, label_value_error
from ansible_collections.kubeinfer.llm.plugins.module_utils._resources import MASK, ApiError, Kube, ensure, is_subset

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "kubeinfer.llm"
SECRET_TYPE = "Opaque"

# Diff markers: the diff tells whether the token changed, never what it is.
HIDDEN = "<hidden>"
HIDDEN_CHANGED = "<hidden, changed>"

# Any run of this many characters of the token (or of its base64) is masked in error text,
# so a server message that echoes a truncated value does not leak a prefix either.
MIN_FRAGMENT = 8

_DATA_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def encode(token: str) -> str:
    """The token as it appears in a Secret's ``data``."""
    return base64.b64encode(token.encode("utf-8")).decode("ascii")


def scrub(value: Any, secrets: Iterable[str]) -> Any:
    """Return ``value`` (str, or dict/list/tuple of them) with every secret and every long fragment of one masked."""
    fragments: list[str] = []
    for secret in secrets:
        if not secret:
            continue
        fragments.append(secret)
        for length in range(len(secret) - 1, MIN_FRAGMENT - 1, -1):
            fragments.extend(secret[i:i + length] for i in range(len(secret) - length + 1))
    fragments.sort(key=len, reverse=True)
    return _scrub(value, fragments)


def _scrub(value: Any, fragments: list[str]) -> Any:
    if isinstance(value, str):
        for fragment in fragments:
            if fragment in value:
                value = value.replace(fragment, MASK)
        return value
    if isinstance(value, dict):
        return {_scrub(k, fragments): _scrub(v, fragments) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub(v, fragments) for v in value]
    return value


def validate(name: str, namespace: str, key: str, token: str | None, labels: dict[str, Any],
             state: str, existing_secret: bool) -> None:
    """Check every input before any request; the message names the parameter and never holds the token."""
    if not name or len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        raise KubeInferError(f"name: {name!r} is not a valid Secret name (a DNS subdomain: lower-case alphanumerics, '-' and '.', at most 253)")
    if not namespace or len(namespace) > 63 or not _DNS_LABEL.match(namespace):
        raise KubeInferError(f"namespace: {namespace!r} is not a valid namespace name (a DNS label: lower-case alphanumerics and '-', at most 63)")
    if not key or len(key) > 253 or not _DATA_KEY.match(key):
        raise KubeInferError(f"key: {key!r} is not a valid Secret data key (1-253 characters of [-._a-zA-Z0-9])")
    if key in (".", ".."):
        raise KubeInferError(f"key: {key!r} is not a valid Secret data key (it may not be '.' or '..')")
    for label, value in (labels or {}).items():
        err = label_key_error(label)
        if err:
            raise KubeInferError(f"labels: invalid label key {label!r}: {err}")
        err = label_value_error("" if value is None else str(value))
        if err:
            raise KubeInferError(f"labels: invalid value {value!r} for label {label!r}: {err}")
    if existing_secret:
        if state != "present":
            raise KubeInferError("existing_secret: a user-managed Secret is only checked, so existing_secret=true requires state=present")
        return
    if state == "present":
        if not token:
            raise KubeInferError("token: no Hugging Face token given; set token (or the HF_TOKEN or HUGGING_FACE_HUB_TOKEN "
                                 "environment variable), or use existing_secret=true with a Secret you manage")
        if token != token.strip():
            raise KubeInferError("token: the token has leading or trailing whitespace (a newline read from a file?); strip it first")


def desired_secret(name: str, namespace: str, key: str, token: str, labels: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Secret as server-side apply should make it: only the fields this collection owns."""
    all_labels = {k: str(v) for k, v in (labels or {}).items()}
    all_labels[MANAGED_BY_LABEL] = MANAGED_BY
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": all_labels},
        "type": SECRET_TYPE,
        "data": {key: encode(token)},
    }


def view(obj: dict[str, Any] | None, key: str, marker: str) -> dict[str, Any]:
    """A Secret for a diff: its name, labels and type, every data key shown as a marker, never a value."""
    if obj is None:
        return {}
    meta = obj.get("metadata") or {}
    out: dict[str, Any] = {"metadata": {k: meta[k] for k in ("name", "namespace", "labels") if meta.get(k) is not None}}
    out["type"] = obj.get("type", SECRET_TYPE)
    data = {k: HIDDEN for k in sorted(obj.get("data") or {})}
    if key in data:
        data[key] = marker
    out["data"] = data
    return out


def reconcile(kube: Kube, name: str, namespace: str, key: str, token: str | None, labels: dict[str, Any] | None,
              state: str, existing_secret: bool, create_namespace: bool, check_mode: bool, want_diff: bool) -> dict[str, Any]:
    """Create, update, delete or check the token Secret. Every error leaving here has the token masked."""
    secrets = [token, encode(token)] if token else []
    try:
        validate(name, namespace, key, token, labels or {}, state, existing_secret)
        if existing_secret:
            result = check_existing(kube, name, namespace, key)
        elif state == "absent":
            result = _absent(kube, name, namespace, key, check_mode, want_diff)
        else:
            result = _present(kube, name, namespace, key, token or "", labels or {}, create_namespace, check_mode, want_diff)
    except KubeInferError as e:
        # A rebuilt error: an ApiError's raw server body (which may echo Secret data) stays behind.
        partial = scrub(dict(e.result), secrets)
        partial.setdefault("api_requests", dict(kube.requests))
        raise KubeInferError(scrub(e.msg, secrets), **partial) from None
    except Exception as e:  # anything unexpected still must not carry the token to the output
        raise KubeInferError(scrub(f"unexpected error: {type(e).__name__}: {e}", secrets), api_requests=dict(kube.requests)) from None
    result["api_requests"] = dict(kube.requests)
    return scrub(result, secrets)


def _summary(name: str, namespace: str, key: str) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "key": key}


def check_existing(kube: Kube, name: str, namespace: str, key: str) -> dict[str, Any]:
    """Only read: the user-managed Secret must exist and hold a non-empty ``key``."""
    live = kube.get("v1", "Secret", name, namespace)
    if live is None:
        raise KubeInferError(f"name: existing_secret=true, but Secret {name!r} does not exist in namespace {namespace!r}; "
                             "create it yourself, or set existing_secret=false and give the token",
                             secret=_summary(name, namespace, key), changed=False)
    data = live.get("data") or {}
    if key not in data:
        present = ", ".join(sorted(data)) or "none"
        raise KubeInferError(f"key: existing Secret {namespace}/{name} has no data key {key!r} (its keys: {present})",
                             secret=_summary(name, namespace, key), changed=False)
    try:
        empty = not base64.b64decode(data[key] or "")
    except (ValueError, TypeError):
        empty = False  # the API server only stores valid base64; anything else is not ours to judge
    if empty:
        raise KubeInferError(f"key: data key {key!r} of existing Secret {namespace}/{name} is empty",
                             secret=_summary(name, namespace, key), changed=False)
    return {"changed": False, "token_changed": False, "secret": _summary(name, namespace, key)}


def _present(kube: Kube, name: str, namespace: str, key: str, token: str, labels: dict[str, Any],
             create_namespace: bool, check_mode: bool, want_diff: bool) -> dict[str, Any]:
    desired = desired_secret(name, namespace, key, token, labels)
    result: dict[str, Any] = {"changed": False, "token_changed": False, "secret": _summary(name, namespace, key)}
    namespace_pending = False
    if create_namespace:
        ns_changed, ns_before, _after = ensure(kube, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}, check_mode)
        result["changed"] = ns_changed
        # In check mode a namespace that does not exist yet cannot take a dry-run Secret.
        namespace_pending = check_mode and ns_before is None
    live = None if namespace_pending else kube.get("v1", "Secret", name, namespace)
    if live is not None and live.get("type", SECRET_TYPE) != SECRET_TYPE:
        raise KubeInferError(f"name: Secret {namespace}/{name} exists with type {live.get('type')!r}; "
                             f"a Secret's type cannot change, and this module writes {SECRET_TYPE} Secrets only", **result)
    token_changed = live is None or (live.get("data") or {}).get(key) != desired["data"][key]
    if live is not None and not token_changed and is_subset(desired["metadata"]["labels"], live["metadata"].get("labels") or {}):
        if want_diff:
            result["diff"] = {"before": view(live, key, HIDDEN), "after": view(live, key, HIDDEN)}
        return result
    if not namespace_pending:
        try:
            kube.apply(desired, dry_run=check_mode, force=True)
        except ApiError as e:
            if e.status == 404:
                raise KubeInferError(f"namespace: namespace {namespace!r} does not exist; create it first or set create_namespace=true",
                                     **result) from None
            raise KubeInferError(f"could not write Secret {namespace}/{name} ({e.status}): {e.reason}", **result) from None
    result["changed"] = True
    result["token_changed"] = token_changed
    if want_diff:
        after = dict(live or {})
        after_meta = dict(after.get("metadata") or {}, name=name, namespace=namespace)
        after_meta["labels"] = dict(after_meta.get("labels") or {}, **desired["metadata"]["labels"])
        after["metadata"] = after_meta
        after["type"] = SECRET_TYPE
        after["data"] = dict(after.get("data") or {}, **{key: ""})
        result["diff"] = {"before": view(live, key, HIDDEN), "after": view(after, key, HIDDEN_CHANGED if token_changed else HIDDEN)}
    return result


def _absent(kube: Kube, name: str, namespace: str, key: str, check_mode: bool, want_diff: bool) -> dict[str, Any]:
    result: dict[str, Any] = {"changed": False, "token_changed": False, "secret": _summary(name, namespace, key)}
    live = kube.get("v1", "Secret", name, namespace)
    if live is None:
        return result
    owner = ((live.get("metadata") or {}).get("labels") or {}).get(MANAGED_BY_LABEL)
    if owner != MANAGED_BY:
        raise KubeInferError(f"name: Secret {namespace}/{name} is not managed by {MANAGED_BY} (label {MANAGED_BY_LABEL} is {owner!r}); "
                             "it is left alone, delete it yourself if it must go", **result)
    kube.delete("v1", "Secret", name, namespace, dry_run=check_mode)
    result["changed"] = True
    result["token_changed"] = key in (live.get("data") or {})
    if want_diff:
        result["diff"] = {"before": view(live, key, HIDDEN), "after": {}}
    return result
