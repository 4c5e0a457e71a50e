# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The params a module's main() hands its runner, so that runner tests restate no default."""
from __future__ import annotations

from typing import Any

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator


def spec_params(module: Any, **args: Any) -> dict[str, Any]:
    """``args`` validated against ``module.ARGUMENT_SPEC``, defaults filled in as AnsibleModule does."""
    result = ArgumentSpecValidator(module.ARGUMENT_SPEC).validate(args)
    if result.error_messages:
        raise AssertionError(result.error_messages)
    return dict(result.validated_parameters)
