# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Make ``ansible_collections.kubeinfer.llm`` importable when pytest runs from a plain checkout.

ansible-test runs the unit tests from inside an ``ansible_collections/kubeinfer/llm`` tree, where
the import already works. From a bare clone it does not, so this builds a temporary
``ansible_collections/kubeinfer/llm`` symlink to the repository root and puts it first on sys.path.
"""
from __future__ import annotations

import atexit
import importlib
import os
import shutil
import sys
import tempfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _importable() -> bool:
    try:
        module = importlib.import_module("ansible_collections.kubeinfer.llm.plugins.module_utils")
    except ImportError:
        return False
    # A different copy of the collection (an installed one) must not shadow this checkout.
    path = os.path.realpath(list(module.__path__)[0])
    return path == os.path.realpath(os.path.join(REPO_ROOT, "plugins", "module_utils"))


if not _importable():
    for name in [m for m in sys.modules if m == "ansible_collections" or m.startswith("ansible_collections.kubeinfer")]:
        del sys.modules[name]
    base = tempfile.mkdtemp(prefix="kubeinfer-collections-")
    atexit.register(shutil.rmtree, base, True)
    os.makedirs(os.path.join(base, "ansible_collections", "kubeinfer"))
    os.symlink(REPO_ROOT, os.path.join(base, "ansible_collections", "kubeinfer", "llm"))
    sys.path.insert(0, base)
    importlib.invalidate_caches()
    if not _importable():
        raise ImportError(f"cannot make ansible_collections.kubeinfer.llm importable from {REPO_ROOT}")
