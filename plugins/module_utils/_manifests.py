# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Rendered manifests (helm template output): parse, validate, read the served names. Private to this collection: the interface may change without notice."""
from __future__ import annotations

from typing import Any

from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._k8s_names import int_quantity

try:
    import yaml
    HAS_YAML = True
except ImportError:  # pragma: no cover - PyYAML comes with ansible-core and kubernetes
    HAS_YAML = False


def parse_manifests(text: str) -> list[dict[str, Any]]:
    """The objects of a ``helm template`` output (empty documents dropped)."""
    if not HAS_YAML:  # pragma: no cover
        raise KubeInferError("the PyYAML library is required")
    return [doc for doc in yaml.safe_load_all(text) if isinstance(doc, dict) and doc]


def _minor(version: str) -> tuple[int, ...]:
    return tuple(int_quantity(x) for x in version.split(".")[:2])


def validate_manifests(docs: list[dict[str, Any]], kube_version: str) -> dict[str, Any]:
    """Validate every object with kubernetes-validate (strict) for ``kube_version``; raise listing every error.

    Kinds without a schema in the library (CRDs such as ServiceMonitor) are skipped and listed.
    A server newer than the library's newest schema is checked against that newest schema, and said so.
    """
    # Imported here, not with the module: with its jsonschema it is 0.2 s of CPU, which a converged re-run (the
    # stored manifests, nothing rendered) does not need.
    try:
        import kubernetes_validate  # pylint: disable=import-outside-toplevel
    except ImportError as e:  # pragma: no cover - a requirement of the collection
        raise KubeInferError(f"the kubernetes-validate Python library is required for the preflight: {e}") from e
    wanted = kube_version.lstrip("v").split("-")[0].split("+")[0]
    version = wanted
    note = None
    latest = kubernetes_validate.latest_version()
    if _minor(wanted) > _minor(latest):
        version = latest
        note = f"kubernetes-validate has no schemas for {wanted}; validated against {latest}"
    validated: list[str] = []
    skipped: list[dict[str, str]] = []
    errors: list[str] = []
    schema_version = None
    for doc in docs:
        what = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
        try:
            schema_version = kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            skipped.append({"object": what, "apiVersion": str(doc.get("apiVersion")), "reason": "no schema in kubernetes-validate"})
            continue
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(x) for x in e.path)
            errors.append(f"{what}: {path or '<root>'}: {e.message}")
            continue
        validated.append(what)
    result: dict[str, Any] = {"kube_version": kube_version, "schema_version": schema_version or version,
                              "validated": validated, "skipped": skipped}
    if note:
        result["note"] = note
    if errors:
        raise KubeInferError("The rendered manifests are not valid for Kubernetes " + version + ": " + "; ".join(errors), validation=result)
    return result


TRACK_LABEL = "kubeinfer.io/track"
"""The label the chart puts on a canary Deployment and its pods (value ``canary``)."""


def served_workload(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The Deployment and the Service a chart rendered, as the runner needs them: ``deployment`` (name),
    ``selector`` (the Deployment's matchLabels as a label selector), ``service`` (name) and ``port``.

    Read from the manifests, so the chart's own naming and selector helpers stay the only ones.
    """
    def one(kind: str) -> dict[str, Any]:
        # A canary Deployment (label kubeinfer.io/track) serves beside the release's own one; it is not the served workload.
        found = [d for d in docs if d.get("kind") == kind and TRACK_LABEL not in ((d.get("metadata") or {}).get("labels") or {})]
        if len(found) != 1:
            raise KubeInferError(f"chart_ref: the chart rendered {len(found)} {kind} objects; exactly one is served")
        return found[0]

    deployment, service = one("Deployment"), one("Service")
    labels = ((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    ports = (service.get("spec") or {}).get("ports") or []
    port = next((p for p in ports if p.get("name") == "http"), ports[0] if ports else {})
    return {"deployment": deployment["metadata"]["name"], "selector": ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
            "service": service["metadata"]["name"], "port": int(port.get("port") or 0)}
