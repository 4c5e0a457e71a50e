# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
name: awx_survey
short_description: Build an AWX job template survey from role argument specs
version_added: 0.2.0
author: kubeinfer.llm contributors
description:
  - Turns the options of one or more roles' C(meta/argument_specs.yml) into the survey spec that the
    C(awx.awx.job_template) module takes as C(survey_spec), so that a survey never disagrees with the
    roles it launches.
  - Each question takes the option's type, choices and default from the argument spec. The question name is the
    option's description up to the first full stop, semicolon or colon and the question description is the whole description, without markup.
  - V(str) and V(path) options become V(text) questions (V(password) when the option is C(no_log)), V(int) becomes
    V(integer), V(float) becomes V(float), and an option with C(choices) becomes V(multiplechoice).
  - Boolean, list and dict options are refused. AWX has no such question type, and an answer would reach the play as a
    string, where V(false) is true in a condition.
options:
  _input:
    description: The parsed argument spec documents (C(meta/argument_specs.yml)) of the roles, or one of them.
    type: raw
    required: true
  variables:
    description: The role options to ask, in the order the survey shows them.
    type: list
    elements: str
    required: true
  name:
    description: The survey's name.
    type: str
    default: ""
  description:
    description: The survey's description.
    type: str
    default: ""
  required:
    description:
      - Options that must be answered even though the argument spec gives them an empty default (a play that checks them in
        its preflight).
    type: list
    elements: str
    default: []
  entry_point:
    description: The argument spec entry point to read.
    type: str
    default: main
"""

EXAMPLES = r"""
- name: Create the bring-up job template with a survey built from the vllm role's options
  awx.awx.job_template:
    name: kubeinfer.llm site
    project: kubeinfer.llm
    playbook: playbooks/site.yml
    inventory: localhost
    survey_enabled: true
    survey_spec: >-
      {{ [lookup('ansible.builtin.file', role_dir ~ '/vllm/meta/argument_specs.yml') | ansible.builtin.from_yaml]
         | kubeinfer.llm.awx_survey(variables=['vllm_model', 'vllm_replicas'], required=['vllm_model'], name='Model') }}
"""

RETURN = r"""
_value:
  description: The survey spec, as AWX's job template survey_spec field takes it.
  type: dict
  contains:
    name:
      description: The survey's name.
      type: str
    description:
      description: The survey's description.
      type: str
    spec:
      description:
        - One question per variable, with C(question_name), C(question_description), C(variable), C(type), C(required),
          C(default) and, for V(multiplechoice), C(choices).
      type: list
      elements: dict
"""

import re
from typing import Any

from ansible.errors import AnsibleFilterError

_MARKUP = re.compile(r"\b[OVCMEIRB]{1,2}\(([^()]*)\)")
_SENTENCE = re.compile(r"^(.+?)[.;:](\s|$)")
QUESTION_NAME_MAX = 100

# Argument spec type -> AWX survey question type. AWX's survey API documents the question types
# text, password, integer, float, multiplechoice and multiselect
# (ansible/awx awx/api/templates/api/job_template_survey_spec.md).
_TYPES = {"str": "text", "path": "text", "int": "integer", "float": "float"}


def _plain(text: Any) -> str:
    if isinstance(text, list):
        text = " ".join(str(t) for t in text)
    return _MARKUP.sub(r"\1", str(text or "")).strip()


def _options(docs: Any, entry_point: str) -> dict[str, dict[str, Any]]:
    options: dict[str, dict[str, Any]] = {}
    for doc in docs if isinstance(docs, list) else [docs]:
        if not isinstance(doc, dict) or "argument_specs" not in doc:
            raise AnsibleFilterError("awx_survey: the input must be parsed meta/argument_specs.yml documents")
        spec = doc["argument_specs"].get(entry_point)
        if spec is None:
            raise AnsibleFilterError(f"awx_survey: entry_point: no {entry_point!r} entry point in an argument spec")
        options.update(spec.get("options") or {})
    return options


def _question(variable: str, option: dict[str, Any], required: bool) -> dict[str, Any]:
    kind = option.get("type", "str")
    description = _plain(option.get("description"))
    match = _SENTENCE.match(description)
    question = {
        "question_name": ((match.group(1) if match else description) or variable)[:QUESTION_NAME_MAX],
        "question_description": description,
        "variable": variable,
        "required": bool(option.get("required")) or required,
    }
    default = option.get("default")
    if option.get("choices"):
        if kind not in ("str", "int", "float"):
            raise AnsibleFilterError(f"awx_survey: variables: {variable} has choices of type {kind}, which a survey cannot ask")
        question.update(type="multiplechoice", choices=[str(c) for c in option["choices"]])
        question["default"] = "" if default is None else str(default)
        return question
    if kind not in _TYPES:
        raise AnsibleFilterError(f"awx_survey: variables: {variable} is of type {kind}; a survey can ask only str, path, int, "
                                 "float and options with choices (AWX has no boolean, list or dict question)")
    question["type"] = "password" if option.get("no_log") else _TYPES[kind]
    if default is not None:
        question["default"] = str(default) if question["type"] in ("text", "password") else default
    elif question["type"] in ("text", "password"):
        question["default"] = ""
    return question


def awx_survey(docs: Any, variables: list[str], name: str = "", description: str = "", required: list[str] | None = None,
               entry_point: str = "main") -> dict[str, Any]:
    """The AWX survey spec asking ``variables``, built from the roles' argument specs ``docs``."""
    options = _options(docs, entry_point)
    must = set(required or [])
    unknown = sorted((set(variables) | must) - set(options))
    if unknown:
        raise AnsibleFilterError(f"awx_survey: variables: no role option named {', '.join(unknown)}")
    if len(set(variables)) != len(variables):
        raise AnsibleFilterError("awx_survey: variables: a variable is listed twice")
    return {"name": name, "description": description,
            "spec": [_question(v, options[v], v in must) for v in variables]}


class FilterModule:
    """The awx_survey filter."""

    def filters(self) -> dict[str, Any]:
        return {"awx_survey": awx_survey}
