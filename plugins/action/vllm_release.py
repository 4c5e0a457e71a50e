# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for kubeinfer.llm.vllm_release (and, by subclass, vllm_canary): point chart_ref at the collection's own chart on the controller.

AnsiballZ ships only the module and its module_utils, never charts/, so the module cannot find the
chart through its own path. This plugin runs on the controller, where the collection is installed,
and passes the absolute path of its charts/vllm as chart_ref unless the task sets one. That path only
exists on the controller, so without chart_ref the task must run there (connection local, or
delegate_to localhost); anything else fails here with that advice instead of a confusing helm error.
"""
from __future__ import annotations

import os
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

COLLECTION_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
CHART_PATH = os.path.join(COLLECTION_ROOT, "charts", "vllm")
LOCAL_TRANSPORTS = ("local", "ansible.builtin.local")


class ActionModule(ActionBase):
    """Fill in chart_ref, then run the module."""

    MODULE = "kubeinfer.llm.vllm_release"
    TRANSFERS_FILES = False
    _VALID_ARGS: frozenset[str] = frozenset()  # every argument is the module's; it validates them

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        del tmp  # tmp no longer has any effect
        args = dict(self._task.args)
        if not args.get("chart_ref") and args.get("state", "present") != "absent":
            transport = getattr(self._connection, "transport", "")
            if transport not in LOCAL_TRANSPORTS:
                raise AnsibleActionFail(
                    f"chart_ref: not set, and the collection's chart ({CHART_PATH}) is on the controller, but this task runs "
                    f"over the {transport!r} connection. Run it on the controller (delegate_to: localhost, or connection: local), "
                    "or set chart_ref to a chart the target host can read.")
            if not os.path.isfile(os.path.join(CHART_PATH, "Chart.yaml")):
                raise AnsibleActionFail(f"chart_ref: not set, and the collection's chart is missing: {CHART_PATH}/Chart.yaml")
            args["chart_ref"] = CHART_PATH
        result.update(self._execute_module(module_name=self.MODULE, module_args=args, task_vars=task_vars))
        return result
