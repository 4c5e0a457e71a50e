# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one exception type of the collection. Private to this collection: the interface may change without notice."""
from __future__ import annotations

from typing import Any


class KubeInferError(Exception):
    """A failure that carries the partial result, so a module still reports what it did.

    ``msg`` must never contain secret material; callers mask before raising.
    """

    def __init__(self, msg: str, **result: Any) -> None:
        super().__init__(msg)
        self.msg = msg
        self.result: dict[str, Any] = result

    def __str__(self) -> str:
        return self.msg
