# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one body of every module's main(): build the clients, call the runner, map the error once.

Private to this collection: the interface may change without notice.
"""
from __future__ import annotations

from typing import Any, Callable

from ansible_collections.kubeinfer.llm.plugins.module_utils._client import build_api_client, origin
from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._helm import Helm, find_helm
from ansible_collections.kubeinfer.llm.plugins.module_utils._resources import Kube


def run_module(module: Any, runner: Callable[..., dict[str, Any]], helm: bool | str = False, cluster: bool = True) -> None:
    """Run ``runner(kube[, helm], params, check_mode, diff)`` for an AnsibleModule and exit with its result.

    ``helm=True`` needs the helm binary; ``helm="optional"`` passes a Helm whose binary may be missing
    (``Helm.require`` then raises, naming helm_binary), for a module that runs helm only in some cases.
    ``cluster=False`` passes no Kube (a check that needs no cluster credentials). The project's own
    error becomes ``fail_json`` here, carrying the partial result; nothing else does.
    """
    params = module.params
    try:
        args: list[Any] = [Kube(build_api_client(params), origin=origin(params)) if cluster else None]
        if helm == "optional":
            try:
                binary, missing = find_helm(params["helm_binary"], module.get_bin_path), None
            except KubeInferError as e:
                binary, missing = "", e.msg
            args.append(Helm(module.run_command, binary, params, missing=missing))
        elif helm:
            args.append(Helm(module.run_command, find_helm(params["helm_binary"], module.get_bin_path), params))
        result = runner(*args, params, module.check_mode, module._diff)
    except KubeInferError as e:
        module.fail_json(msg=e.msg, **e.result)
    module.exit_json(**result)
