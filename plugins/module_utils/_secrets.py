# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Hugging Face token Secret, written without ever echoing the token. Private to this collection: the interface may change without notice."""
from __future__ import annotations

import base64
from typing import Any, Iterable, Mapping

from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._k8s_names import (
    MANAGED_BY,
    MANAGED_BY_LABEL,
    check_data_key,
    check_labels,
    check_namespace,
    check_object_name,
    is_managed,
    managed_labels,
)
from ansible_collections.kubeinfer.llm.plugins.module_utils._resources import MASK, ApiError, Kube, ensure, is_subset

SECRET_TYPE = "Opaque"

# Diff markers: the diff tells whether the token changed, never what it is.
HIDDEN = "<hidden>"
HIDDEN_CHANGED = "<hidden, changed>"

# Any run of this many characters of the token (or of its base64) is masked in error text,
# so a server message that echoes a truncated value does not leak a prefix either.
MIN_FRAGMENT = 8


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


def validate(params: Mapping[str, Any]) -> None:
    """Check what the argument spec cannot, before any request; the message names the parameter and never holds the token."""
    check_object_name(params["name"], "name", "Secret name")
    check_namespace(params["namespace"])
    check_data_key(params["key"], "key")
    check_labels(params["labels"])
    if params["existing_secret"]:
        if params["state"] != "present":
            raise KubeInferError("existing_secret: a user-managed Secret is only checked, so existing_secret=true requires state=present")
        return
    token = params["token"]
    if params["state"] == "present":
        if not token:
            raise KubeInferError("token: no Hugging Face token given; set token (or the HF_TOKEN or HUGGING_FACE_HUB_TOKEN "
                                 "environment variable), or use existing_secret=true with a Secret you manage")
        if token != token.strip():
            raise KubeInferError("token: the token has leading or trailing whitespace (a newline read from a file?); strip it first")
        if any(c.isspace() or not c.isprintable() for c in token):
            raise KubeInferError("token: the token contains whitespace or control characters (two tokens pasted together?); "
                                 "a Hugging Face token is one word")


def desired_secret(name: str, namespace: str, key: str, token: str, labels: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The Secret as server-side apply should make it: only the fields this collection owns."""
    all_labels = {str(k): str(v) for k, v in (labels or {}).items()}
    all_labels.update(managed_labels())
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


def run(kube: Kube, params: Mapping[str, Any], check_mode: bool, diff: bool) -> dict[str, Any]:
    """Create, update, delete or check the token Secret. Every error leaving here has the token masked."""
    token = params["token"]
    secrets = [token, encode(token)] if token else []
    name, namespace, key = params["name"], params["namespace"], params["key"]
    try:
        validate(params)
        if params["existing_secret"]:
            result = check_existing(kube, name, namespace, key)
        elif params["state"] == "absent":
            result = _absent(kube, name, namespace, key, check_mode, diff)
        else:
            result = _present(kube, name, namespace, key, token, params["labels"], params["create_namespace"], check_mode, diff)
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


def _present(kube: Kube, name: str, namespace: str, key: str, token: str, labels: Mapping[str, Any],
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
    if live is None and not create_namespace and kube.get("v1", "Namespace", namespace) is None:
        # Refused before the write: a write that the API server answers 404 is still a write request in its audit log.
        raise KubeInferError(f"namespace: namespace {namespace!r} does not exist; create it first or set create_namespace=true", **result)
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
    if not is_managed(live):
        owner = ((live.get("metadata") or {}).get("labels") or {}).get(MANAGED_BY_LABEL)
        raise KubeInferError(f"name: Secret {namespace}/{name} is not managed by {MANAGED_BY} (label {MANAGED_BY_LABEL} is {owner!r}); "
                             "it is left alone, delete it yourself if it must go", **result)
    kube.delete("v1", "Secret", name, namespace, dry_run=check_mode)
    result["changed"] = True
    result["token_changed"] = key in (live.get("data") or {})
    if want_diff:
        result["diff"] = {"before": view(live, key, HIDDEN), "after": {}}
    return result
