"""A release revision as helm v3.22.0 stores it, for the unit tests' fake helm runners.

The encoding follows helm's own (pkg/storage/driver/util.go encodeRelease: JSON, gzip, base64; secrets.go
newSecretsObject: the name, the labels, the type and the data key). The integration tests read what the real
helm binary stored (tests/integration/test_helm_storage.py)."""
from __future__ import annotations

import base64
import gzip
import json
from typing import Any


def release_record(row: dict[str, Any], values: dict[str, Any] | None, manifest: str = "", namespace: str = "") -> dict[str, Any]:
    """The release JSON for a ``helm list`` row (name, namespace, revision, status, chart "<name>-<version>", app_version)."""
    chart_name, _sep, chart_version = str(row.get("chart") or "").rpartition("-")
    record: dict[str, Any] = {
        "name": row["name"], "namespace": row.get("namespace") or namespace, "version": int(row.get("revision") or 1),
        "info": {"first_deployed": "2026-11-04T10:12:31.123Z", "last_deployed": "2026-11-04T10:12:31.123Z",
                 "deleted": "", "description": "Install complete", "status": row.get("status") or "deployed"},
        "chart": {"metadata": {"name": chart_name, "version": chart_version, "appVersion": row.get("app_version") or ""}},
        "manifest": manifest,
    }
    if values:
        record["config"] = values
    return record


def stored_secret(record: dict[str, Any]) -> dict[str, Any]:
    """The Secret helm keeps ``record`` in."""
    encoded = base64.b64encode(gzip.compress(json.dumps(record).encode())).decode()
    name, version = record["name"], record["version"]
    return {"apiVersion": "v1", "kind": "Secret", "type": "helm.sh/release.v1",
            "metadata": {"name": f"sh.helm.release.v1.{name}.v{version}", "namespace": record["namespace"],
                         "labels": {"owner": "helm", "name": name, "status": record["info"]["status"], "version": str(version)}},
            "data": {"release": base64.b64encode(encoded.encode()).decode()}}


def keep_in(cluster: Any, row: dict[str, Any] | None, values: dict[str, Any] | None, namespace: str, manifest: str = "") -> None:
    """Make ``cluster`` (a FakeCluster) hold the Secret of the release's last revision, or none when ``row`` is None."""
    prefix = f"/api/v1/namespaces/{namespace}/secrets/sh.helm.release.v1."
    for path in [p for p in cluster.objects if p.startswith(prefix)]:
        del cluster.objects[path]
    if row:
        cluster.add(stored_secret(release_record(row, values, manifest, namespace)))
