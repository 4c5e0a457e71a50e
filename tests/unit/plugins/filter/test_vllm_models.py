"""The vllm_models filter: the one path from an inventory's model list (or the single-model variables) to complete entries."""
from __future__ import annotations

from typing import Any

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.kubeinfer.llm.plugins.filter.vllm_models import vllm_models

DEFAULTS: dict[str, Any] = {
    "name": "vllm", "model": "Qwen/Qwen2.5-0.5B-Instruct", "revision": "", "served_model_name": "", "replicas": 1,
    "gpus_per_replica": 1, "tensor_parallel_size": 0, "max_model_len": 0, "extra_args": [],
    "values": {"metrics": {"podMonitor": {"enabled": True}}, "podAnnotations": {"a": "1"}}, "pod_labels": {"env": "prod"},
}


def test_an_empty_list_is_the_single_model_of_the_vllm_variables() -> None:
    [entry] = vllm_models([], DEFAULTS)
    assert entry["name"] == "vllm" and entry["model"] == "Qwen/Qwen2.5-0.5B-Instruct" and entry["served"] == entry["model"]
    assert entry["replicas"] == 1 and entry["gpus_per_replica"] == 1
    assert entry["values"] == DEFAULTS["values"] and entry["pod_labels"] == {"env": "prod"}
    assert entry["autoscaling"] == {"release": "vllm", "enabled": True}
    assert entry["fleet"] == {"name": "vllm", "replicas": 1, "gpus_per_replica": 1}
    assert entry["validate"] == {"release": "vllm", "model": "Qwen/Qwen2.5-0.5B-Instruct"}
    assert vllm_models(None, DEFAULTS) == [entry], "an unset list is the empty list"


def test_entries_take_what_they_do_not_set_from_the_defaults_and_merge_values_and_labels() -> None:
    models = [
        {"name": "chat", "model": "Qwen/Qwen2.5-7B-Instruct", "replicas": 2, "team": "assistants", "cost_centre": "cc-1042",
         "values": {"podAnnotations": {"b": "2"}}},
        {"name": "code", "model": "Qwen/Qwen2.5-Coder-7B-Instruct", "gpus_per_replica": "2", "served_model_name": "coder",
         "autoscaling": {"max_replicas": 2, "target_queue_depth": 3}},
        {"name": "embed", "model": "BAAI/bge-m3", "autoscaling": {"enabled": False}, "pod_labels": {"env": "dev"}},
    ]
    chat, code, embed = vllm_models(models, DEFAULTS)
    assert [chat["name"], code["name"], embed["name"]] == ["chat", "code", "embed"], "the order of the list"
    assert chat["replicas"] == 2 and chat["gpus_per_replica"] == 1
    assert chat["values"] == {"metrics": {"podMonitor": {"enabled": True}}, "podAnnotations": {"a": "1", "b": "2"}}
    assert chat["pod_labels"] == {"env": "prod", "kubeinfer.io/team": "assistants", "kubeinfer.io/cost-centre": "cc-1042"}
    assert code["gpus_per_replica"] == 2 and code["served"] == "coder" and code["team"] is None
    assert code["validate"] == {"release": "code", "model": "coder"}, "the completion check asks for the served name"
    assert code["autoscaling"] == {"release": "code", "enabled": True, "max_replicas": 2, "target_queue_depth": 3}
    assert embed["autoscaling"]["enabled"] is False and embed["pod_labels"] == {"env": "dev"}
    assert models[0]["values"] == {"podAnnotations": {"b": "2"}}, "the input is not changed"


@pytest.mark.parametrize("models, fragment", [
    ("chat", "vllm_models: must be a list"),
    (["chat"], "vllm_models[0]: must be a dict"),
    ([{"model": "m"}], "vllm_models[0].name: None is not a release name"),
    ([{"name": "Chat", "model": "m"}], "vllm_models[0].name: 'Chat'"),
    ([{"name": "x" * 54, "model": "m"}], "at most 53"),
    ([{"name": "a", "model": "m"}, {"name": "a", "model": "n"}], "vllm_models[1].name: 'a' is already vllm_models[0]"),
    ([{"name": "a", "model": "m", "gpus": 2}], "vllm_models[0]: unknown key(s) gpus"),
    ([{"name": "a", "model": "m", "replicas": -1}], "vllm_models[0].replicas: must be >= 0"),
    ([{"name": "a", "model": "m", "replicas": "two"}], "vllm_models[0].replicas: must be an integer"),
    ([{"name": "a", "model": "m", "gpus_per_replica": 0}], "vllm_models[0].gpus_per_replica: must be >= 1"),
    ([{"name": "a", "model": "m", "team": "ML team"}], "vllm_models[0].team: 'ML team' is not a valid label value"),
    ([{"name": "a", "model": "m", "cost_centre": "-cc"}], "vllm_models[0].cost_centre"),
    ([{"name": "a", "model": "m", "autoscaling": {"min_replicas": 3, "max_replicas": 2}}], "min_replicas (3) is above max_replicas (2)"),
    ([{"name": "a", "model": "m", "autoscaling": {"target_queue_depth": 0}}], "autoscaling.target_queue_depth: must be a number > 0"),
    ([{"name": "a", "model": "m", "autoscaling": {"enabled": "no"}}], "autoscaling.enabled: must be true or false"),
    ([{"name": "a", "model": "m", "autoscaling": {"max": 2}}], "vllm_models[0].autoscaling: unknown key(s) max"),
    ([{"name": "a", "model": "m", "values": []}], "vllm_models[0].values: must be a dict"),
])
def test_bad_entries_are_refused_naming_the_entry_and_key(models: Any, fragment: str) -> None:
    defaults = dict(DEFAULTS, model="")
    with pytest.raises(AnsibleFilterError) as info:
        vllm_models(models, defaults)
    assert fragment in str(info.value.message)


def test_an_entry_without_a_model_does_not_take_the_single_model() -> None:
    # vllm_model may still be set from the single-model days; each entry of a list names its model itself.
    with pytest.raises(AnsibleFilterError, match=r"vllm_models\[0\]\.model: required"):
        vllm_models([{"name": "a"}], dict(DEFAULTS, model=""))


@pytest.mark.parametrize("defaults, fragment", [
    (dict(DEFAULTS, model=""), "vllm_model: required when vllm_models is empty"),
    (dict(DEFAULTS, name="Bad"), "vllm_release_name: 'Bad' is not a release name"),
    (dict(DEFAULTS, replicas=-2), "vllm_replicas: must be >= 0"),
])
def test_the_single_model_path_names_the_vllm_variables(defaults: dict[str, Any], fragment: str) -> None:
    with pytest.raises(AnsibleFilterError) as info:
        vllm_models([], defaults)
    assert fragment in str(info.value.message)
