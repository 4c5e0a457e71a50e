"""The AWX surveys of playbooks/awx_setup.yml: built from the roles' real argument specs by the
awx_survey filter, through the same Jinja expression the playbook uses, and held against both the
argument specs and AWX's survey rules (ansible/awx awx/api/templates/api/job_template_survey_spec.md)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.errors import AnsibleFilterError

from ansible_collections.kubeinfer.llm.plugins.filter.awx_survey import awx_survey

REPO = Path(__file__).resolve().parents[4]
VARS = REPO / "playbooks" / "vars" / "awx_setup.yml"
AWX_TYPES = {"text", "password", "integer", "float", "multiplechoice", "multiselect"}
SURVEY_TYPE = {"str": "text", "path": "text", "int": "integer", "float": "float"}


def role_specs() -> dict[str, dict[str, Any]]:
    options: dict[str, dict[str, Any]] = {}
    for spec in sorted(REPO.glob("roles/*/meta/argument_specs.yml")):
        options.update(yaml.safe_load(spec.read_text())["argument_specs"]["main"]["options"])
    return options


def playbook_vars() -> dict[str, Any]:
    return yaml.safe_load(VARS.read_text())


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What awx_setup.yml hands to awx.awx: its vars templated by ansible-playbook itself."""
    tmp = tmp_path_factory.mktemp("awx")
    out = tmp / "out.json"
    play = tmp / "eval.yml"
    play.write_text(yaml.safe_dump([{
        "name": "Evaluate the awx_setup variables", "hosts": "localhost", "gather_facts": False,
        "vars_files": [str(VARS)],
        "tasks": [{"name": "Write them", "ansible.builtin.copy": {
            "dest": str(out),
            "content": "{{ {'survey': _awx_setup_survey, 'credential_type': _awx_setup_credential_type} | to_json }}"}}],
    }]))
    env = dict(os.environ, ANSIBLE_PYTHON_INTERPRETER=sys.executable)
    proc = subprocess.run([str(Path(sys.executable).with_name("ansible-playbook")), "-i", "localhost,", "-c", "local", str(play),
                           "-e", f"awx_setup_collection_dir={REPO}"], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return dict(json.loads(out.read_text()))


def test_the_playbook_survey_is_the_filter_over_the_real_argument_specs(evaluated: dict[str, Any]) -> None:
    v = playbook_vars()
    docs = [yaml.safe_load(p.read_text()) for p in sorted(REPO.glob("roles/*/meta/argument_specs.yml"))]
    expected = awx_survey(docs, v["awx_setup_survey_variables"], required=v["awx_setup_survey_required"])
    assert evaluated["survey"]["spec"] == expected["spec"]
    assert [q["variable"] for q in evaluated["survey"]["spec"]] == v["awx_setup_survey_variables"]


def test_every_question_agrees_with_its_argument_spec(evaluated: dict[str, Any]) -> None:
    options = role_specs()
    required = set(playbook_vars()["awx_setup_survey_required"])
    for q in evaluated["survey"]["spec"]:
        option = options[q["variable"]]
        if option.get("choices"):
            assert q["type"] == "multiplechoice"
            assert q["choices"] == [str(c) for c in option["choices"]]
            assert q["default"] == str(option["default"])
        else:
            assert q["type"] == ("password" if option.get("no_log") else SURVEY_TYPE[option.get("type", "str")])
            assert q["default"] == option.get("default") or (q["default"] == "" and option.get("default") in ("", None))
        assert q["required"] == (bool(option.get("required")) or q["variable"] in required)


def test_the_survey_follows_awx_rules(evaluated: dict[str, Any]) -> None:
    survey = evaluated["survey"]
    assert isinstance(survey["name"], str) and isinstance(survey["description"], str) and isinstance(survey["spec"], list)
    seen = set()
    for q in survey["spec"]:
        assert q["type"] in AWX_TYPES
        for key in ("question_name", "question_description", "variable"):
            assert isinstance(q[key], str) and q[key], (q, key)
        assert isinstance(q["required"], bool)
        assert q["variable"] not in seen
        seen.add(q["variable"])
        if q["type"] == "multiplechoice":
            assert q["choices"] and q["default"] in q["choices"] + [""]
        elif q["type"] == "integer":
            assert isinstance(q.get("default", 0), int) and not isinstance(q.get("default", 0), bool)
        elif q["type"] == "float":
            assert isinstance(q.get("default", 0.0), (int, float))
        else:
            assert isinstance(q["default"], str)


def test_the_credential_type_injects_the_token_the_hf_token_role_reads(evaluated: dict[str, Any]) -> None:
    ct = evaluated["credential_type"]
    field = ct["inputs"]["fields"][0]
    assert field["secret"] is True
    assert ct["injectors"]["env"] == {"HF_TOKEN": "{{ " + field["id"] + " }}"}
    defaults = yaml.safe_load((REPO / "roles/hf_token/defaults/main.yml").read_text())
    assert "'HF_TOKEN'" in defaults["hf_token_value"]


@pytest.mark.parametrize("variables,required,message", [
    (["vllm_create_namespace"], [], "vllm_create_namespace is of type bool"),
    (["vllm_tolerations"], [], "is of type list"),
    (["vllm_no_such_option"], [], "no role option named vllm_no_such_option"),
    (["vllm_model"], ["vllm_nope"], "no role option named vllm_nope"),
    (["vllm_model", "vllm_model"], [], "listed twice"),
])
def test_questions_a_survey_cannot_ask_are_refused_naming_the_variable(variables: list[str], required: list[str], message: str) -> None:
    docs = [yaml.safe_load(p.read_text()) for p in sorted(REPO.glob("roles/*/meta/argument_specs.yml"))]
    with pytest.raises(AnsibleFilterError, match=message):
        awx_survey(docs, variables, required=required)


def test_input_that_is_no_argument_spec_is_refused() -> None:
    with pytest.raises(AnsibleFilterError, match="argument_specs.yml documents"):
        awx_survey([{"options": {}}], ["x"])
    with pytest.raises(AnsibleFilterError, match="entry_point: no 'verify' entry point"):
        awx_survey({"argument_specs": {"main": {"options": {}}}}, [], entry_point="verify")


def test_secret_options_become_password_questions() -> None:
    doc = {"argument_specs": {"main": {"options": {"x_token": {"type": "str", "no_log": True, "description": "A token. Secret."}}}}}
    (q,) = awx_survey(doc, ["x_token"])["spec"]
    assert q == {"question_name": "A token", "question_description": "A token. Secret.", "variable": "x_token",
                 "required": False, "type": "password", "default": ""}


def test_awx_setup_passes_syntax_check() -> None:
    env = dict(os.environ, ANSIBLE_PYTHON_INTERPRETER=sys.executable)
    proc = subprocess.run([str(Path(sys.executable).with_name("ansible-playbook")), "--syntax-check", "-i", "localhost,",
                           str(REPO / "playbooks" / "awx_setup.yml")], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
