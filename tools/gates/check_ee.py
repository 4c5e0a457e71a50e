#!/usr/bin/env python3
"""Check an ansible-builder build context against what kubeinfer.llm's plugins need.

Usage: check_ee.py <repo> <context-dir>

The needs are read from the collection itself, not from a list kept next to this script:
- the third-party Python packages: every ``import`` in plugins/**/*.py, parsed with ``ast``
  (including the ones inside ``try:`` or functions), minus the standard library, ansible-core and
  ansible_collections, mapped from import name to distribution by IMPORT_TO_DIST;
- the collections: kubeinfer.llm at galaxy.yml's version, galaxy.yml's dependencies, and every
  other collection a plugin imports from;
- helm at tools/localcluster/versions.env's HELM_VERSION, the version the tests run.

The context must install them: _build/requirements.txt (installed by the builder stage's
introspect + assemble steps) lists every package, _build/requirements.yml every collection, and a
RUN step of the final stage downloads helm at that version, checks its sha256 and installs it on
PATH. meta/execution-environment.yml, which other projects' EEs read, must cover the same packages.
Exit 1 with one line per gap.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

# Import name -> PyPI distribution. An import missing here fails the check, so that a new
# dependency is looked at once rather than passing unseen.
IMPORT_TO_DIST = {
    "kubernetes": "kubernetes",
    "kubernetes_validate": "kubernetes-validate",
    "yaml": "PyYAML",
    "jmespath": "jmespath",
    "jsonpatch": "jsonpatch",
    "requests": "requests",
    "urllib3": "urllib3",
    "websocket": "websocket-client",
    "dateutil": "python-dateutil",
    "packaging": "packaging",
    "jinja2": "Jinja2",
}
# Provided by ansible-core itself (ansible_core / the base image).
PROVIDED = {"__future__", "ansible"}
PATH_DIRS = ("/usr/local/bin", "/usr/bin", "/bin")


def plugin_imports(plugins: Path) -> dict[str, list[str]]:
    """Top-level import name -> the places (file:line) that import it, for every plugin file."""
    found: dict[str, list[str]] = {}
    for path in sorted(plugins.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name, []).append(f"{path.relative_to(plugins.parent)}:{node.lineno}")
    return found


def requirement_names(path: Path) -> set[str]:
    """Canonical distribution names of a pip requirements file (comments and options skipped)."""
    names: set[str] = set()
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        try:
            names.add(canonicalize_name(Requirement(line).name))
        except InvalidRequirement as e:
            raise SystemExit(f"ee: {path}: cannot parse requirement {line!r}: {e}") from e
    return names


def final_stage(containerfile: str) -> list[str]:
    """The instructions after the last FROM, with continuation lines joined."""
    joined = re.sub(r"\\\n", " ", containerfile).splitlines()
    starts = [i for i, line in enumerate(joined) if line.upper().startswith("FROM ")]
    return joined[starts[-1] + 1 :] if starts else []


def expand_args(lines: list[str]) -> list[str]:
    """Substitute ``ARG NAME=value`` defaults into the later lines (${NAME} and $NAME)."""
    args: dict[str, str] = {}
    out: list[str] = []
    for line in lines:
        m = re.match(r"ARG\s+(\w+)=(\S+)", line)
        if m:
            args[m.group(1)] = m.group(2).strip("\"'")
        for name, value in args.items():
            line = line.replace("${" + name + "}", value)
            line = re.sub(r"\$" + name + r"\b", value, line)
        out.append(line)
    return out


def check(repo: Path, context: Path) -> tuple[list[str], str]:
    problems: list[str] = []
    build = context / "_build"
    containerfile = (context / "Containerfile").read_text(encoding="utf-8")
    galaxy = yaml.safe_load((repo / "galaxy.yml").read_text(encoding="utf-8"))
    own = f"{galaxy['namespace']}.{galaxy['name']}"

    # Python packages.
    imports = plugin_imports(repo / "plugins")
    stdlib = set(sys.stdlib_module_names)
    needed: dict[str, list[str]] = {}
    collections_imported: set[str] = set()
    for name, where in imports.items():
        top = name.split(".")[0]
        if top in stdlib or top in PROVIDED:
            continue
        if top == "ansible_collections":
            parts = name.split(".")
            if len(parts) >= 3 and f"{parts[1]}.{parts[2]}" != own:
                collections_imported.add(f"{parts[1]}.{parts[2]}")
            continue
        dist = IMPORT_TO_DIST.get(top)
        if dist is None:
            problems.append(f"import {top!r} ({', '.join(where[:3])}) has no distribution in IMPORT_TO_DIST of {Path(__file__).name}")
            continue
        needed.setdefault(dist, []).extend(where)

    user_pip = build / "requirements.txt"
    if not user_pip.is_file():
        problems.append("the context has no _build/requirements.txt: dependencies.python is missing from execution-environment.yml")
        context_pip: set[str] = set()
    else:
        context_pip = requirement_names(user_pip)
    for dist, where in sorted(needed.items()):
        if canonicalize_name(dist) not in context_pip:
            problems.append(f"{dist} is imported ({', '.join(where[:3])}) but _build/requirements.txt does not install it")
    if "COPY _build/requirements.txt" not in containerfile or "--user-pip=requirements.txt" not in containerfile:
        problems.append("the Containerfile does not feed _build/requirements.txt to the introspect step")
    if "/output/scripts/assemble" not in containerfile or "/output/scripts/install-from-bindep" not in containerfile:
        problems.append("the Containerfile does not build and install the Python requirements (assemble, install-from-bindep)")
    refs = re.search(r'ARG ANSIBLE_INSTALL_REFS="([^"]*)"', containerfile)
    for dist in ("ansible-core", "ansible-runner"):
        if not refs or not re.search(rf"(^|\s){dist}([<>=!~ ]|$)", refs.group(1)):
            problems.append(f"the Containerfile does not install {dist} (ANSIBLE_INSTALL_REFS)")

    # What other EEs read from the installed collection.
    meta_ee = yaml.safe_load((repo / "meta/execution-environment.yml").read_text(encoding="utf-8")) or {}
    meta_python = (meta_ee.get("dependencies") or {}).get("python")
    if not isinstance(meta_python, str) or not (repo / meta_python).is_file():
        problems.append(f"meta/execution-environment.yml: dependencies.python {meta_python!r} is not a file of the collection")
    else:
        meta_pip = requirement_names(repo / meta_python)
        for dist in sorted(needed):
            if canonicalize_name(dist) not in meta_pip:
                problems.append(f"{dist} is imported but {meta_python} (meta/execution-environment.yml) does not list it")

    # Collections.
    req_yml = build / "requirements.yml"
    listed: dict[str, object] = {}
    if req_yml.is_file():
        for entry in (yaml.safe_load(req_yml.read_text(encoding="utf-8")) or {}).get("collections") or []:
            if isinstance(entry, dict):
                listed[str(entry.get("name"))] = entry.get("version")
            else:
                listed[str(entry)] = None
    want_collections: dict[str, str | None] = {own: str(galaxy["version"])}
    want_collections.update({name: None for name in (galaxy.get("dependencies") or {})})
    want_collections.update({name: None for name in collections_imported})
    for name, version in sorted(want_collections.items()):
        if name not in listed:
            problems.append(f"collection {name} is not in _build/requirements.yml")
        elif version is not None and str(listed[name]) != version:
            problems.append(f"collection {name} is pinned to {listed[name]!r} in the EE, galaxy.yml says {version}")

    # helm in the final image.
    env = dict(line.split("=", 1) for line in (repo / "tools/localcluster/versions.env").read_text(encoding="utf-8").splitlines() if re.match(r"^\w+=", line))
    helm_version = env["HELM_VERSION"].strip()
    runs = [line for line in expand_args(final_stage(containerfile)) if line.startswith("RUN ") and "get.helm.sh" in line]
    if not runs:
        problems.append("no RUN step of the final stage downloads helm from get.helm.sh")
    else:
        step = runs[0]
        versions = set(re.findall(r"helm-(v[0-9][^-\s\"']*)-linux-", step))
        if versions != {helm_version}:
            problems.append(f"the helm step installs {sorted(versions) or 'no versioned archive'}, versions.env pins HELM_VERSION={helm_version}")
        if "sha256sum -c" not in step:
            problems.append("the helm step does not check the archive's sha256")
        if not any(re.search(rf"{d}/helm(\s|;|$)", step) for d in PATH_DIRS):
            problems.append(f"the helm step does not install helm into {', '.join(PATH_DIRS)}")

    summary = (
        f"Python {', '.join(sorted(needed, key=str.lower)) or 'none'} (imported by plugins/), "
        f"collections {', '.join(f'{n} {v}' if v else n for n, v in sorted(want_collections.items()))}, helm {helm_version}"
    )
    return problems, summary


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.splitlines()[2], file=sys.stderr)
        return 2
    problems, summary = check(Path(argv[1]), Path(argv[2]))
    if problems:
        for problem in problems:
            print(f"ee: {problem}", file=sys.stderr)
        print(f"ee: FAILED - {len(problems)} gap(s) between the build context and the collection's needs", file=sys.stderr)
        return 1
    print(f"ee: OK - the build context installs {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
