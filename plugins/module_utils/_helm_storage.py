# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A Helm release's last revision, read from the objects helm itself stores it in. Private to this collection: the interface may change without notice.

Helm 3 keeps every revision of a release as one object in the release's namespace (helm v3.22.0):

- a Secret with the default driver, a ConfigMap with ``HELM_DRIVER=configmap``
  (pkg/action/action.go ``Configuration.Init``; any other driver, ``memory`` or ``sql``, is not a Kubernetes
  object, and ``read`` returns ``None`` for the caller to ask the helm CLI);
- named ``sh.helm.release.v1.<name>.v<revision>`` and labelled ``owner=helm``, ``name=<name>``, ``status`` and
  ``version=<revision>`` (pkg/storage/driver/secrets.go ``newSecretsObject``, cfgmaps.go ``newConfigMapsObject``);
- its data key ``release`` holds base64 of the gzipped JSON of the release (pkg/storage/driver/util.go
  ``encodeRelease``; an object without the gzip magic bytes is plain JSON, as ``decodeRelease`` accepts), and a
  Secret's data is base64 once more, as every Secret's.

The release ``helm list --all`` and ``helm get values`` show is the highest revision (pkg/storage/storage.go
``Last``; pkg/action/list.go ``filterLatestReleases``). Reading it here is one metadata-only list and one get,
instead of two helm processes, each of which loads its kubeconfig and discovers the API first; and the stored
manifest lets a module that changes nothing skip ``helm template``.
"""
from __future__ import annotations

import base64
import gzip
import json
import os
import re
from typing import TYPE_CHECKING, Any

from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError

if TYPE_CHECKING:  # pragma: no cover
    from ansible_collections.kubeinfer.llm.plugins.module_utils._resources import Kube

DRIVER_KINDS = {"": "Secret", "secret": "Secret", "secrets": "Secret", "configmap": "ConfigMap", "configmaps": "ConfigMap"}
"""HELM_DRIVER -> the kind helm stores releases in (pkg/action/action.go ``Configuration.Init``)."""
GZIP_MAGIC = b"\x1f\x8b\x08"
READ_ATTEMPTS = 3
"""Lists before giving up when the newest revision vanishes between the list and the get (a concurrent uninstall)."""


def storage_kind() -> str | None:
    """The kind helm keeps releases in for this process's HELM_DRIVER, or None when they are not Kubernetes objects."""
    return DRIVER_KINDS.get(os.environ.get("HELM_DRIVER", "").strip())


def decode(data: str, what: str) -> dict[str, Any]:
    """A release record from the ``release`` data helm stored (already without a Secret's own base64)."""
    try:
        raw = base64.b64decode(data)
        if raw[:3] == GZIP_MAGIC:
            raw = gzip.decompress(raw)
        record = json.loads(raw)
    except (ValueError, OSError, EOFError) as e:
        raise KubeInferError(f"{what}: the release helm stored there cannot be decoded: {e}") from e
    if not isinstance(record, dict):
        raise KubeInferError(f"{what}: the release helm stored there is not a JSON object")
    return record


def read(kube: Kube, name: str, namespace: str, kind: str) -> dict[str, Any] | None:
    """The last revision of release ``name`` as helm stored it (its JSON: name, namespace, version, info, chart,
    config, manifest, hooks), or None when the release does not exist."""
    for _attempt in range(READ_ATTEMPTS):
        stored = kube.list("v1", kind, namespace, label_selector=f"owner=helm,name={name}", metadata_only=True)
        versions = [(str((item["metadata"].get("labels") or {}).get("version", "")), item["metadata"]["name"]) for item in stored]
        revisions = [(int(version), key) for version, key in versions if version.isdigit()]
        if not revisions:
            return None
        key = max(revisions)[1]
        obj = kube.get("v1", kind, key, namespace)
        if obj is None:
            continue
        data = str((obj.get("data") or {}).get("release") or "")
        what = f"{kind} {namespace}/{key}"
        if kind == "Secret":
            try:
                data = base64.b64decode(data).decode("ascii")
            except (ValueError, UnicodeDecodeError) as e:
                raise KubeInferError(f"{what}: its release data is not base64: {e}") from e
        return decode(data, what)
    raise KubeInferError(f"release {namespace}/{name}: its newest revision was deleted while it was read, {READ_ATTEMPTS} times; "
                         "is it being uninstalled? Run again when that is done")


_RFC3339 = re.compile(r"^(?P<date>\d{4}-\d\d-\d\d)T(?P<time>\d\d:\d\d:\d\d)(?:\.(?P<frac>\d+))?(?P<zone>Z|[+-]\d\d:\d\d)$")


def go_time(value: Any) -> str:
    """A stored RFC 3339 time as ``helm list`` prints it (Go's ``time.Time.String``: ``2026-12-03 10:00:00.5 +0000 UTC``),
    "-" when unset (cmd/helm/list.go ``newReleaseListWriter``)."""
    m = _RFC3339.match(str(value or ""))
    if not m or m.group("date").startswith("0001-"):
        return "-"
    frac = (m.group("frac") or "").rstrip("0")
    zone = m.group("zone")
    offset = "+0000" if zone == "Z" else zone.replace(":", "")
    label = "UTC" if offset in ("+0000", "-0000") else offset
    return f"{m.group('date')} {m.group('time')}{'.' + frac if frac else ''} {offset} {label}"


def list_row(record: dict[str, Any]) -> dict[str, Any]:
    """The record as a ``helm list --output json`` row (cmd/helm/list.go ``releaseElement``)."""
    info = record.get("info") or {}
    meta = (record.get("chart") or {}).get("metadata")
    return {"name": record.get("name"), "namespace": record.get("namespace"), "revision": str(record.get("version") or 0),
            "updated": go_time(info.get("last_deployed")), "status": info.get("status"),
            "chart": f"{meta.get('name')}-{meta.get('version')}" if meta else "MISSING",
            "app_version": (meta or {}).get("appVersion", "")}


def manifests(record: dict[str, Any]) -> str:
    """The rendered manifests of the revision, its hooks included, as ``helm template`` prints them together."""
    parts = [str(record.get("manifest") or "")] + [str(h.get("manifest") or "") for h in record.get("hooks") or [] if isinstance(h, dict)]
    return "\n---\n".join(p for p in parts if p.strip())
