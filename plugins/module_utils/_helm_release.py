# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lifecycle of one Helm release: plan, apply, wait, roll back, with one result shape. Private to this collection: the interface may change without notice.

Every module that installs a chart goes through it:

- ``read_chart`` resolves the chart to install (one Chart.yaml reader: a local directory or archive is read
  here, any other reference through ``helm show chart``);
- ``read`` takes the release's last revision from the Secret helm stores it in (``_helm_storage``): the row
  ``helm list`` shows, the values ``helm get values`` shows and the rendered manifests;
- ``plan`` compares that release with the chart and the values wanted (one comparison, as helm stores values:
  a JSON round trip) and says why an upgrade is needed;
- ``apply`` runs the one ``helm upgrade --install``, then the caller's wait, and with ``atomic`` undoes a
  failure the one way: back to the revision before this run, or uninstall a release this run created;
- ``result`` is the shape every such module returns: ``release`` (always a dict), ``helm_commands`` and
  ``changed_values``;
- ``read_for_upgrade`` finds a release an interrupted run left pending-install, pending-upgrade or
  pending-rollback, and recovers it. Helm itself cannot tell an operation that runs from one whose process
  died (the kube-apiserver went away, the AWX job was killed): both look like a pending-* status. So
  ``apply`` holds a coordination.k8s.io Lease (``kubeinfer-helm-<release>``, renewed every 10 s) while helm
  works, naming the revision it makes. A pending revision whose Lease expired was left by a run of this
  collection that died: the next run rolls it back (or uninstalls a pending first install) and goes on. A
  pending revision without that Lease (a user's ``helm upgrade`` running now, or another tool's) is refused.

Check mode never reaches ``apply``: a plan reads only.
"""
from __future__ import annotations

import copy
import json
import os
import re
import socket
import tarfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Mapping

from ansible_collections.kubeinfer.llm.plugins.module_utils import _helm_storage
from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._helm import Helm

if TYPE_CHECKING:  # pragma: no cover
    from ansible_collections.kubeinfer.llm.plugins.module_utils._resources import Kube

try:
    import yaml
    HAS_YAML = True
except ImportError:  # pragma: no cover - PyYAML comes with ansible-core
    HAS_YAML = False

UPGRADABLE = ("deployed", "failed", "superseded")
"""``helm list`` statuses an upgrade may start from; the pending-* ones mean another operation runs or was cut off."""

LEASE_API = "coordination.k8s.io/v1"
LEASE_SECONDS = 30
"""How long a helm operation's Lease outlives its last renewal; renewed every LEASE_SECONDS / 3."""
LEASE_REVISION = "kubeinfer.io/helm-revision"
LEASE_OPERATION = "kubeinfer.io/helm-operation"

_CHART_COLUMN = re.compile(r"^(?P<name>.+)-(?P<version>v?\d+(\.\d+)*([-+][0-9A-Za-z.+-]*)?)$")


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any] | None) -> dict[str, Any]:
    """A new dict: ``base`` with ``over`` merged in. Mappings merge key by key; any other value of ``over``
    (lists, scalars, None) replaces the one in ``base``. Neither input is changed."""
    merged: dict[str, Any] = copy.deepcopy(dict(base))
    for key, value in (over or {}).items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _as_stored(values: Any) -> Any:
    """Values as helm stores them: a JSON round trip, so 1 and 1.0, or a tuple and a list, are equal."""
    return json.loads(json.dumps(values, sort_keys=True))


def value_changes(before: Any, after: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted path, old, new)`` for every value that differs; a key only one side has is one change."""
    before, after = _as_stored(before), _as_stored(after)
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[tuple[str, Any, Any]] = []
        for key in sorted(set(before) | set(after)):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in before or key not in after:
                out.append((path, before.get(key, _UNSET), after.get(key, _UNSET)))
            else:
                out += value_changes(before[key], after[key], path)
        return out
    return [] if before == after else [(prefix or "<root>", before, after)]


class _Unset:
    def __repr__(self) -> str:
        return "(unset)"


_UNSET = _Unset()


def _short(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- the chart --------------------------------------------------------------------------
@dataclass(frozen=True)
class Chart:
    """A chart as ``helm upgrade`` takes it (``ref``, ``repo``, ``version_arg``), and the ``name`` and
    ``version`` that ``helm list`` shows once it is installed."""

    ref: str
    name: str
    version: str
    app_version: str | None = None
    repo: str | None = None
    version_arg: str | None = None

    @property
    def id(self) -> str:
        """The ``chart`` column of ``helm list`` ("gpu-operator-v26.7.0")."""
        return f"{self.name}-{self.version}"

    def matches(self, column: str | None) -> bool:
        """Whether a ``helm list`` chart column is this chart, at this version."""
        parts = _CHART_COLUMN.match(column or "")
        return parts is not None and parts.group("name") == self.name and same_version(parts.group("version"), self.version)


def same_version(a: str | None, b: str | None) -> bool:
    """Chart versions compared as helm resolves them: a leading "v" does not matter."""
    return bool(a) and bool(b) and str(a).lstrip("v") == str(b).lstrip("v")


def parse_chart_yaml(text: str, where: str) -> dict[str, Any]:
    """The fields of a Chart.yaml; raises naming ``chart_ref`` when it has no name or version."""
    if not HAS_YAML:  # pragma: no cover
        raise KubeInferError("the PyYAML library is required")
    try:
        meta = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise KubeInferError(f"chart_ref: the Chart.yaml of {where} is not YAML: {e}") from e
    if not isinstance(meta, dict) or not meta.get("name") or not meta.get("version"):
        raise KubeInferError(f"chart_ref: the Chart.yaml of {where} has no name or version")
    return {key: str(value) for key, value in meta.items() if isinstance(value, (str, int, float))}


def _local_chart_yaml(path: str) -> str:
    """The Chart.yaml text of a chart directory or ``.tgz`` archive; raises naming ``chart_ref``."""
    if os.path.isdir(path):
        chart_yaml = os.path.join(path, "Chart.yaml")
        if not os.path.isfile(chart_yaml):
            raise KubeInferError(f"chart_ref: {path} is a directory without a Chart.yaml, so it is not a Helm chart")
        with open(chart_yaml, encoding="utf-8") as f:
            return f.read()
    try:
        with tarfile.open(path, "r:*") as archive:
            member = next((m for m in archive.getmembers()
                           if m.isfile() and m.name.count("/") == 1 and m.name.endswith("/Chart.yaml")), None)
            extracted = archive.extractfile(member) if member else None
            if extracted is None:
                raise KubeInferError(f"chart_ref: archive {path} holds no <chart>/Chart.yaml, so it is not a packaged Helm chart")
            return extracted.read().decode("utf-8")
    except tarfile.TarError as e:
        raise KubeInferError(f"chart_ref: {path} is neither a chart directory nor a chart archive (.tgz): {e}") from e


def read_local_chart(path: str, version: str | None = None) -> Chart:
    """A chart directory or archive on this host. With ``version`` its own version must equal it (the pin holds
    for local charts too); helm takes no ``--version`` for them."""
    if not os.path.exists(path):
        raise KubeInferError(f"chart_ref: local chart {path} does not exist (use an oci:// reference, an https:// URL or a chart path)")
    meta = parse_chart_yaml(_local_chart_yaml(path), path)
    if version and not same_version(meta["version"], version):
        raise KubeInferError(f"chart_version: the local chart {path} is version {meta['version']}, not {version}; "
                             "set chart_version to the chart's version to install it")
    return Chart(ref=path, name=meta["name"], version=meta["version"], app_version=meta.get("appVersion"))


def read_chart(helm: Helm, ref: str, version: str | None = None, repo: str | None = None) -> Chart:
    """The chart ``ref`` names: a local path read from disk, any other reference through ``helm show chart``."""
    path = os.path.abspath(os.path.expanduser(ref))
    if os.path.exists(path):
        return read_local_chart(path, version)
    try:
        text = helm.show_chart(ref, version, repo)
    except KubeInferError as e:
        if ref.startswith(("/", "./", "../", "~")):  # helm's own words for a missing path name neither option nor path
            raise KubeInferError(f"chart_ref: local chart {path} does not exist (use an oci:// reference, an https:// URL or a chart path)",
                                 **e.result) from e
        raise
    meta = parse_chart_yaml(text, ref)
    return Chart(ref=ref, name=meta["name"], version=meta["version"], app_version=meta.get("appVersion"), repo=repo,
                 version_arg=version)


def chart_source(chart_ref: str | None, chart_repo_url: str | None, chart_version: str, chart_name: str) -> tuple[str, Chart]:
    """Where chart ``chart_name`` comes from: ``(type, chart)``, for every module that installs a published chart.

    ``type`` is ``repo`` (the chart from ``chart_repo_url``, or from a mirror repository given as an ``https://``
    ``chart_ref``), ``oci`` (an ``oci://`` reference), ``url`` (an ``https://.../*.tgz`` archive) or ``local`` (a chart
    directory or archive on the controller, for air-gapped sites). A local chart's own version must equal
    ``chart_version``: the pin holds for archives too. Messages name ``chart_ref``, ``chart_repo_url`` or ``chart_version``.
    """
    if not str(chart_version or "").strip():
        raise KubeInferError("chart_version: must not be empty (the chart version is pinned)")
    version = str(chart_version).strip()
    ref = (chart_ref or "").strip()
    if not ref:
        if not chart_repo_url or not re.match(r"^(https?|oci)://", chart_repo_url):
            raise KubeInferError(f"chart_repo_url: {chart_repo_url!r} is not an http(s):// or oci:// repository URL")
        if chart_repo_url.startswith("oci://"):
            return "oci", Chart(ref=chart_repo_url.rstrip("/") + "/" + chart_name, name=chart_name, version=version, version_arg=version)
        return "repo", Chart(ref=chart_name, name=chart_name, version=version, repo=chart_repo_url, version_arg=version)
    if ref.startswith("oci://"):
        name = ref.rstrip("/").rsplit("/", 1)[-1]
        if not name or ref.rstrip("/") == "oci:/" or ":" in name or "@" in name:
            raise KubeInferError(f"chart_ref: {ref!r} must be oci://<registry>/<path>/<chart> without a tag (the version comes from chart_version)")
        return "oci", Chart(ref=ref.rstrip("/"), name=name, version=version, version_arg=version)
    if re.match(r"^https?://", ref):
        if ref.endswith((".tgz", ".tar.gz")):
            name = re.sub(r"-v?\d[^/]*$", "", ref.rsplit("/", 1)[-1].rsplit(".t", 1)[0]) or chart_name
            return "url", Chart(ref=ref, name=name, version=version)
        return "repo", Chart(ref=chart_name, name=chart_name, version=version, repo=ref, version_arg=version)
    return "local", read_local_chart(os.path.abspath(os.path.expanduser(ref)), version)


# -- the release ----------------------------------------------------------------------------
def release_view(row: Mapping[str, Any] | None, name: str, namespace: str) -> dict[str, Any]:
    """The ``release`` result: a ``helm list`` row, or ``installed: false`` with empty fields when there is none."""
    view: dict[str, Any] = {"name": name, "namespace": namespace, "installed": bool(row), "chart": None, "chart_name": None,
                            "chart_version": None, "app_version": None, "revision": 0, "status": None, "updated": None}
    if row:
        chart = str(row.get("chart") or "")
        parts = _CHART_COLUMN.match(chart)
        revision = str(row.get("revision") or "0")
        view.update(chart=chart, chart_name=parts.group("name") if parts else chart,
                    chart_version=parts.group("version") if parts else None, app_version=row.get("app_version"),
                    revision=int(revision) if revision.isdigit() else 0, status=row.get("status"), updated=row.get("updated"))
    return view


@dataclass
class Plan:
    """What an upgrade of release ``name`` would change, and why; ``reasons`` is empty when nothing would."""

    name: str
    namespace: str
    chart: Chart
    row: dict[str, Any] | None
    desired: dict[str, Any]
    reasons: list[str] = field(default_factory=list)
    changed_values: list[str] = field(default_factory=list)


@dataclass
class Current:
    """The release as helm has it now: its ``helm list`` row (None when not installed), user values and manifests.

    ``recovered`` says what read_for_upgrade did (or, in check mode, would do) about a pending revision an
    interrupted run left; a plan lists it among its reasons."""

    name: str
    namespace: str
    row: dict[str, Any] | None
    values: dict[str, Any]
    recovered: str | None = None
    interrupted: bool = False
    manifest: str | None = None
    """The revision's rendered manifests, hooks included, when read from helm's storage (None through the helm CLI)."""


def read(kube: Kube, helm: Helm, name: str, namespace: str) -> Current:
    """The release's last revision: from the Secret (or ConfigMap) helm stores it in (_helm_storage), or, with a
    HELM_DRIVER whose releases are not Kubernetes objects, from ``helm list`` and ``helm get values``."""
    kind = _helm_storage.storage_kind()
    if kind is None:
        row = helm.release(name, namespace)
        return Current(name, namespace, row, helm.values(name, namespace) if row else {})
    record = _helm_storage.read(kube, name, namespace, kind)
    if record is None:
        return Current(name, namespace, None, {})
    return Current(name, namespace, _helm_storage.list_row(record), record.get("config") or {}, manifest=_helm_storage.manifests(record))


def check_upgradable(current: Current) -> None:
    """Refuse a pending-* release that no interrupted run of this collection left (read_for_upgrade recovers those)."""
    status = (current.row or {}).get("status")
    if current.row and status not in UPGRADABLE and not current.interrupted:
        raise KubeInferError(
            f"release {current.namespace}/{current.name} is in status {status}: another helm operation runs or was interrupted "
            f"outside this collection (no Lease {current.namespace}/{lease_name(current.name)} of kubeinfer.llm names revision "
            f"{release_view(current.row, current.name, current.namespace)['revision']}); wait for it, or roll the release back "
            "(helm rollback), then run again", release=release_view(current.row, current.name, current.namespace))


# -- the operation lease ---------------------------------------------------------------------
def lease_name(release: str) -> str:
    return f"kubeinfer-helm-{release}"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _lease_expired(lease: Mapping[str, Any]) -> bool:
    """Whether the Lease's holder stopped renewing it: renewTime (a MicroTime, read to the second) + duration < now."""
    spec = lease.get("spec") or {}
    renewed = str(spec.get("renewTime") or spec.get("acquireTime") or "")
    try:
        at = datetime.strptime(renewed[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    except ValueError:
        return True
    return (datetime.now(timezone.utc) - at).total_seconds() > int(spec.get("leaseDurationSeconds") or LEASE_SECONDS)


class OperationLease:
    """The Lease ``kubeinfer-helm-<release>`` held while this run's helm changes the release (see the module
    docstring). It is deleted when the operation ends, failed or not; only a run that died leaves it, expired."""

    def __init__(self, kube: Kube, name: str, namespace: str, revision: int, operation: str) -> None:
        self.kube, self.name, self.namespace = kube, lease_name(name), namespace
        self.holder = f"kubeinfer.llm/{socket.gethostname()}/{os.getpid()}"
        labels = {"app.kubernetes.io/managed-by": "kubeinfer.llm", "app.kubernetes.io/instance": name}
        annotations = {LEASE_REVISION: str(revision), LEASE_OPERATION: operation}
        self.body: dict[str, Any] = {
            "apiVersion": LEASE_API, "kind": "Lease",
            "metadata": {"name": self.name, "namespace": namespace, "labels": labels, "annotations": annotations},
            "spec": {"holderIdentity": self.holder, "leaseDurationSeconds": LEASE_SECONDS},
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> OperationLease:
        now = _now()
        body = copy.deepcopy(self.body)
        body["spec"].update(acquireTime=now, renewTime=now)
        self.kube.apply(body, force=True)
        self._thread = threading.Thread(target=self._renew, name="helm-lease", daemon=True)
        self._thread.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(LEASE_SECONDS / 3):
            try:
                self.kube.patch(LEASE_API, "Lease", self.name, {"spec": {"renewTime": _now()}}, self.namespace)
            except Exception:  # pylint: disable=broad-except  # the API server is away: the Lease expires, which is the point
                continue

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.kube.delete(LEASE_API, "Lease", self.name, self.namespace)
        except Exception:  # pylint: disable=broad-except  # unreachable now: it expires, and the next run reads it
            pass


def read_for_upgrade(kube: Kube, helm: Helm, name: str, namespace: str, check_mode: bool,
                     wait_seconds: float = LEASE_SECONDS + 10, current: Current | None = None) -> Current:
    """``read``, then recover a pending revision an interrupted run of this collection left (see the module docstring).

    A pending revision whose Lease is still renewed is another run of this collection at work: wait up to
    ``wait_seconds`` for it to end or expire, then refuse naming its holder. An expired Lease naming the pending
    revision: roll back to the revision before it (``helm rollback``), or uninstall a release whose first install
    was cut off, delete the Lease and read again. In check mode nothing is done: ``recovered`` says what would be.
    Any other pending release is left for check_upgradable to refuse. ``current``: the release as the caller read it."""
    current = current or read(kube, helm, name, namespace)
    status = (current.row or {}).get("status")
    if not current.row or status in UPGRADABLE:
        return current
    revision = release_view(current.row, name, namespace)["revision"]
    deadline = time.monotonic() + wait_seconds
    while True:
        lease = kube.get(LEASE_API, "Lease", lease_name(name), namespace)
        if lease is None or ((lease.get("metadata") or {}).get("annotations") or {}).get(LEASE_REVISION) != str(revision):
            return current
        if _lease_expired(lease):
            break
        if time.monotonic() > deadline:
            spec = lease.get("spec") or {}
            raise KubeInferError(f"release {namespace}/{name} is in status {status}: {spec.get('holderIdentity')} is running helm on it "
                                 f"(Lease {namespace}/{lease_name(name)} renewed at {spec.get('renewTime')}); wait for that run, then run again",
                                 release=release_view(current.row, name, namespace))
        time.sleep(2)
        current = read(kube, helm, name, namespace)
        if (current.row or {}).get("status") in UPGRADABLE or not current.row:
            return current
    spec = lease.get("spec") or {}
    first_install = status == "pending-install" or revision <= 1
    action = "uninstall the release" if first_install else f"roll back to revision {revision - 1}"
    what = (f"release {namespace}/{name} was left {status} at revision {revision} by an interrupted run ({spec.get('holderIdentity')}, "
            f"Lease last renewed {spec.get('renewTime')})")
    if check_mode:
        return Current(name, namespace, current.row, current.values, recovered=f"{what}: would {action}, then upgrade", interrupted=True)
    if first_install:
        helm.uninstall(name, namespace, wait=True, timeout=120)
    else:
        helm.rollback(name, namespace, revision - 1)
    kube.delete(LEASE_API, "Lease", lease_name(name), namespace)
    done = read(kube, helm, name, namespace)
    done.recovered = f"{what}: {'uninstalled it' if first_install else f'rolled back to revision {revision - 1}'}"
    return done


def plan(current: Current, chart: Chart, desired: dict[str, Any]) -> Plan:
    """The one needs-upgrade decision: not installed, a failed or superseded status, another chart or version,
    or other values. A pending-* release is refused (check_upgradable)."""
    check_upgradable(current)
    row = current.row
    status = (row or {}).get("status")
    changes = value_changes(current.values, desired)
    reasons: list[str] = [current.recovered] if current.recovered else []
    if not row:
        reasons.append(f"release: (none) -> {chart.id}")
    else:
        if status != "deployed":
            reasons.append(f"release status: {status} -> deployed")
        if not chart.matches(row.get("chart")):
            reasons.append(f"chart: {row.get('chart')} -> {chart.id}")
        reasons += [f"values.{path}: {_short(old)} -> {_short(new)}" for path, old, new in changes]
    return Plan(current.name, current.namespace, chart, row, desired, reasons, [path for path, _old, _new in changes])


def apply(kube: Kube, helm: Helm, planned: Plan, create_namespace: bool, atomic: bool, helm_wait: bool = False, timeout: int = 300,
          wait: Callable[[], Any] | None = None, hook_timeout: int | None = None) -> dict[str, Any]:
    """Run ``helm upgrade --install`` for ``planned``, then ``wait`` (the caller's readiness wait, if any), holding
    the release's OperationLease throughout (the namespace is made first when ``create_namespace``: the Lease lives there).

    ``helm_wait`` makes helm itself wait up to ``timeout`` (``--wait``). With ``atomic`` a failure of either
    is undone (see undo) and the error carries ``rolled_back``. ``hook_timeout`` bounds helm's wait for the chart's hook
    Jobs (helm's own default is 5 minutes). Returns the release view after the upgrade.
    """
    if create_namespace and kube.get("v1", "Namespace", planned.namespace) is None:
        kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": planned.namespace}})
    revision = release_view(planned.row, planned.name, planned.namespace)["revision"]
    with OperationLease(kube, planned.name, planned.namespace, revision + 1, "upgrade" if planned.row else "install"):
        return _apply(kube, helm, planned, create_namespace, atomic, helm_wait, timeout, wait, hook_timeout)


def _apply(kube: Kube, helm: Helm, planned: Plan, create_namespace: bool, atomic: bool, helm_wait: bool, timeout: int,
           wait: Callable[[], Any] | None, hook_timeout: int | None = None) -> dict[str, Any]:
    chart = planned.chart
    try:
        helm.upgrade_install(planned.name, chart.ref, planned.namespace, planned.desired, version=chart.version_arg,
                             repo=chart.repo, create_namespace=create_namespace, wait=helm_wait, timeout=timeout,
                             hook_timeout=hook_timeout)
        row = read(kube, helm, planned.name, planned.namespace).row
        after = release_view(row, planned.name, planned.namespace)
        if row and not chart.matches(row.get("chart")):
            raise KubeInferError(f"chart_ref: helm installed {row.get('chart')}, but {chart.id} was asked for "
                                 "(is chart_version right for this chart source?)", release=after)
        if wait is not None:
            wait()
    except KubeInferError as e:
        if not atomic:
            raise
        undone = undo(helm, planned)
        raise KubeInferError(f"{e.msg}; {undone}", **dict(e.result, rolled_back=undone)) from e
    return after


def undo(helm: Helm, planned: Plan) -> str:
    """Roll back to the revision before this run, or uninstall the release this run created; say which."""
    revision = release_view(planned.row, planned.name, planned.namespace)["revision"]
    try:
        if revision:
            helm.rollback(planned.name, planned.namespace, revision)
            return f"rolled back to revision {revision}"
        helm.uninstall(planned.name, planned.namespace, wait=False)
        return "uninstalled the release this run created"
    except KubeInferError as e:
        return f"atomic undo failed: {e.msg}"


def remove(helm: Helm, current: Current, check_mode: bool, wait: bool, timeout: int) -> bool:
    """``helm uninstall`` when the release exists (nothing in check mode); whether it did, or would."""
    if current.row is None:
        return False
    if not check_mode:
        helm.uninstall(current.name, current.namespace, wait=wait, timeout=timeout)
    return True


def result(helm: Helm, release: dict[str, Any], planned: Plan | None = None) -> dict[str, Any]:
    """The keys every Helm-release module returns: ``release`` (a release_view), ``helm_commands`` and, after a plan,
    ``changed_values``."""
    out: dict[str, Any] = {"release": release, "helm_commands": helm.command_lines()}
    if planned is not None:
        out["changed_values"] = planned.changed_values
    return out
