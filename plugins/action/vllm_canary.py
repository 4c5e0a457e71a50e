# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for kubeinfer.llm.vllm_canary: the same chart_ref default as vllm_release (see that plugin)."""
from __future__ import annotations

from ansible_collections.kubeinfer.llm.plugins.action.vllm_release import ActionModule as VllmReleaseAction


class ActionModule(VllmReleaseAction):
    """Fill in chart_ref, then run vllm_canary."""

    MODULE = "kubeinfer.llm.vllm_canary"
