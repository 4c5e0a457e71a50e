# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
name: vllm_models
short_description: The models an inventory serves, checked and completed, one entry per release
version_added: 0.2.0
author: kubeinfer.llm contributors
description:
  - Turns the C(vllm_models) list of an inventory into complete entries, one per Helm release, in the order given. An
    empty list gives the one entry of the single-model variables (O(defaults)), so that one model and many take the same
    path through the vllm, metrics_adapter, autoscaling and validate roles.
  - Every key an entry does not set, except C(name) and C(model), comes from O(defaults). C(values) and C(pod_labels) are merged key by key over the
    defaults (the entry wins); the other keys replace them.
  - C(team) and C(cost_centre) become the pod labels C(kubeinfer.io/team) and C(kubeinfer.io/cost-centre), for cost
    reports that group pods by label.
  - Fails, naming the entry and the key (C(vllm_models[1].replicas)), on anything that is not an entry, an unknown key, a
    missing or repeated C(name), a name that is no release name, a missing C(model), a count out of range, a label value
    Kubernetes would refuse, or autoscaling bounds the wrong way round. Nothing has been sent to the cluster then.
options:
  _input:
    description: The C(vllm_models) list; V([]) for the single model of O(defaults).
    type: list
    elements: dict
    required: true
  defaults:
    description:
      - The single-model values - C(name) (V(vllm_release_name)), C(model), C(revision), C(served_model_name), C(replicas),
        C(gpus_per_replica), C(tensor_parallel_size), C(max_model_len), C(extra_args), C(values), C(pod_labels).
    type: dict
    required: true
"""

EXAMPLES = r"""
- name: Three models of two teams
  ansible.builtin.debug:
    msg: "{{ vllm_models | kubeinfer.llm.vllm_models({'name': vllm_release_name, 'model': vllm_model, 'replicas': 1}) }}"
  vars:
    vllm_models:
      - {name: chat, model: Qwen/Qwen2.5-7B-Instruct, replicas: 2, team: assistants, cost_centre: cc-1042}
      - {name: code, model: Qwen/Qwen2.5-Coder-7B-Instruct, gpus_per_replica: 2, autoscaling: {max_replicas: 2}}
      - {name: embed, model: BAAI/bge-m3, autoscaling: {enabled: false}}
"""

RETURN = r"""
_value:
  description: One complete entry per model, in the order given.
  type: list
  elements: dict
  contains:
    name:
      description: Helm release name (also the Deployment, the Service and the HPA).
      type: str
    model:
      description: The Hugging Face repository id.
      type: str
    served:
      description: The name the API serves the model under (C(served_model_name), else C(model)).
      type: str
    pod_labels:
      description: The entry's pod labels over the defaults, with the team and cost-centre labels.
      type: dict
    fleet:
      description: The entry as a member of M(kubeinfer.llm.vllm_release)'s O(kubeinfer.llm.vllm_release#module:fleet) option.
      type: dict
    autoscaling:
      description:
        - The entry as one of the autoscaling role's C(autoscaling_targets) - C(release), C(enabled) and whichever of
          C(min_replicas), C(max_replicas), C(target_queue_depth) the entry set.
      type: dict
    validate:
      description: The entry as one of the validate role's C(validate_targets) - C(release) and C(model) (the served name).
      type: dict
"""

import re
from typing import Any, Mapping

from ansible.errors import AnsibleFilterError

TEAM_LABEL = "kubeinfer.io/team"
COST_CENTRE_LABEL = "kubeinfer.io/cost-centre"
RELEASE_NAME_MAX = 53  # Helm's release name limit (helm.sh/helm/v3 pkg/chartutil/validate_name.go)
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# k8s.io/apimachinery pkg/util/validation IsValidLabelValue: empty, or 63 characters of [-A-Za-z0-9_.] with alphanumeric ends.
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

REPLACED = ("model", "revision", "served_model_name", "replicas", "gpus_per_replica", "tensor_parallel_size", "max_model_len",
            "extra_args")
MERGED = ("values", "pod_labels")
ENTRY_KEYS = ("name", *REPLACED, *MERGED, "team", "cost_centre", "autoscaling")
AUTOSCALING_KEYS = ("enabled", "min_replicas", "max_replicas", "target_queue_depth")


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) else value
    return out


def _int(where: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().lstrip("-").isdigit():
        raise AnsibleFilterError(f"{where}: must be an integer, got {value!r}")
    number = int(value)
    if number < minimum:
        raise AnsibleFilterError(f"{where}: must be >= {minimum}, got {number}")
    return number


def _label_value(where: str, value: Any) -> str:
    text = str(value)
    if not isinstance(value, (str, int)) or isinstance(value, bool) or not text or len(text) > 63 or not _LABEL_VALUE.match(text):
        raise AnsibleFilterError(f"{where}: {value!r} is not a valid label value (at most 63 characters of letters, digits, "
                                 "'-', '_' and '.', starting and ending with a letter or digit)")
    return text


def _autoscaling(where: str, given: Any, release: str) -> dict[str, Any]:
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        raise AnsibleFilterError(f"{where}: must be a dict ({', '.join(AUTOSCALING_KEYS)}), got {given!r}")
    unknown = sorted(set(given) - set(AUTOSCALING_KEYS))
    if unknown:
        raise AnsibleFilterError(f"{where}: unknown key(s) {', '.join(map(str, unknown))} (known: {', '.join(AUTOSCALING_KEYS)})")
    enabled = given.get("enabled", True)
    if not isinstance(enabled, bool):
        raise AnsibleFilterError(f"{where}.enabled: must be true or false, got {enabled!r}")
    out: dict[str, Any] = {"release": release, "enabled": enabled}
    for key in ("min_replicas", "max_replicas"):
        if given.get(key) is not None:
            out[key] = _int(f"{where}.{key}", given[key], 1)
    if out.get("min_replicas", 1) > out.get("max_replicas", out.get("min_replicas", 1)):
        raise AnsibleFilterError(f"{where}: min_replicas ({out['min_replicas']}) is above max_replicas ({out['max_replicas']})")
    if given.get("target_queue_depth") is not None:
        depth = given["target_queue_depth"]
        try:
            number = float(depth)
        except (TypeError, ValueError):
            number = 0.0
        if isinstance(depth, bool) or number <= 0:
            raise AnsibleFilterError(f"{where}.target_queue_depth: must be a number > 0, got {depth!r}")
        out["target_queue_depth"] = depth
    return out


def _entry(where: str, given: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(given) - set(ENTRY_KEYS))
    if unknown:
        raise AnsibleFilterError(f"{where}: unknown key(s) {', '.join(map(str, unknown))} (an entry has {', '.join(ENTRY_KEYS)})")
    name = given.get("name")
    if not isinstance(name, str) or not name or len(name) > RELEASE_NAME_MAX or not _DNS_LABEL.match(name):
        raise AnsibleFilterError(f"{where}.name: {name!r} is not a release name (a DNS label: lower-case letters, digits and "
                                 f"'-', at most {RELEASE_NAME_MAX} characters)")
    entry: dict[str, Any] = {"name": name}
    for key in REPLACED:  # the model is the entry's own: it never comes from the defaults
        entry[key] = given.get(key) if given.get(key) is not None or key == "model" else defaults.get(key)
    model = entry["model"]
    if not isinstance(model, str) or not model.strip():
        raise AnsibleFilterError(f"{where}.model: required, a Hugging Face repository id (got {model!r})")
    entry["replicas"] = _int(f"{where}.replicas", entry["replicas"] if entry["replicas"] is not None else 1, 0)
    entry["gpus_per_replica"] = _int(f"{where}.gpus_per_replica",
                                     entry["gpus_per_replica"] if entry["gpus_per_replica"] is not None else 1, 1)
    for key in MERGED:
        over = {} if given.get(key) is None else given[key]
        if not isinstance(over, Mapping):
            raise AnsibleFilterError(f"{where}.{key}: must be a dict, got {over!r}")
        entry[key] = _merge(defaults.get(key) or {}, over)
    labels = dict(entry["pod_labels"])
    for key, label in (("team", TEAM_LABEL), ("cost_centre", COST_CENTRE_LABEL)):
        value = given.get(key)
        entry[key] = None if value is None else _label_value(f"{where}.{key}", value)
        if entry[key] is not None:
            labels[label] = entry[key]
    entry["pod_labels"] = labels
    entry["served"] = entry["served_model_name"] or model
    entry["fleet"] = {"name": name, "replicas": entry["replicas"], "gpus_per_replica": entry["gpus_per_replica"]}
    entry["autoscaling"] = _autoscaling(f"{where}.autoscaling", given.get("autoscaling"), name)
    entry["validate"] = {"release": name, "model": entry["served"]}
    return entry


def vllm_models(models: Any, defaults: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The complete entries of ``models``, or the one entry of ``defaults`` when ``models`` is empty."""
    if not isinstance(defaults, Mapping):
        raise AnsibleFilterError(f"defaults: must be a dict, got {type(defaults).__name__}")
    if models is None or models == "":
        models = []
    if not isinstance(models, (list, tuple)):
        raise AnsibleFilterError(f"vllm_models: must be a list of models, got {type(models).__name__}")
    if not models:
        if not str(defaults.get("model") or "").strip():
            raise AnsibleFilterError("vllm_model: required when vllm_models is empty (set vllm_model, or list the models in vllm_models)")
        try:
            return [_entry("vllm", {"name": defaults.get("name"), "model": defaults.get("model")}, defaults)]
        except AnsibleFilterError as e:
            # Name the single-model variable: vllm.name -> vllm_release_name, vllm.replicas -> vllm_replicas.
            raise AnsibleFilterError(str(e.message).replace("vllm.name:", "vllm_release_name:", 1).replace("vllm.", "vllm_", 1)) from e
    out: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for i, given in enumerate(models):
        where = f"vllm_models[{i}]"
        if not isinstance(given, Mapping):
            raise AnsibleFilterError(f"{where}: must be a dict with at least name and model, got {given!r}")
        entry = _entry(where, given, defaults)
        if entry["name"] in seen:
            raise AnsibleFilterError(f"{where}.name: {entry['name']!r} is already vllm_models[{seen[entry['name']]}]; "
                                     "each model is one release and needs its own name")
        seen[entry["name"]] = i
        out.append(entry)
    return out


class FilterModule:
    """kubeinfer.llm.vllm_models."""

    def filters(self) -> dict[str, Any]:
        return {"vllm_models": vllm_models}
