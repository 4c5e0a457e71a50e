#!/usr/bin/env bash
# The execution-environment gate: generate the build context of execution-environment.yml with
# "ansible-builder create" (no container engine needed; building the image needs one), then check
# that it installs every package the plugins import, the collections, and helm at the tests'
# version (check_ee.py).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
venv=$("$repo/tools/gates/venv.sh")
work=$(mktemp -d "${TMPDIR:-/tmp}/kubeinfer-ee.XXXXXX")
trap 'rm -rf "$work"' EXIT

if ! "$venv/bin/ansible-builder" create -f "$repo/execution-environment.yml" -c "$work/context" \
     --output-filename Containerfile >"$work/create.log" 2>&1; then
  cat "$work/create.log" >&2
  echo "ee: FAILED - ansible-builder create rejected execution-environment.yml" >&2
  exit 1
fi
"$venv/bin/python" "$repo/tools/gates/check_ee.py" "$repo" "$work/context"
