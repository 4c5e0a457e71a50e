#!/usr/bin/env bash
# Run ansible-test sanity on a copy of the collection at ansible_collections/kubeinfer/llm,
# outside the clone (ansible-test needs that layout and lists files with git).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cache=${KUBEINFER_CACHE:-$HOME/.cache/kubeinfer}
dest="$cache/sanity/ansible_collections/kubeinfer/llm"
# ansible-test names its cached bootstrap script after the pip version it pins.
at=$(python -c 'import ansible_test,os;print(os.path.dirname(ansible_test.__file__))')
for v in $(grep -hoE "pip='[0-9.]+'" "$at/_internal/python_requirements.py" | grep -oE "[0-9.]+" | sort -u); do
  target="$HOME/.ansible/test/cache/get_pip_${v//./_}.py"
  mkdir -p "$(dirname "$target")"
  cmp -s "$repo/tools/sanity/pip_bootstrap.py" "$target" || cp "$repo/tools/sanity/pip_bootstrap.py" "$target"
done
rm -rf "$dest"; mkdir -p "$dest"
cd "$repo"
# The copy holds the collection's content and tests. Left out, and checked elsewhere:
# - Helm templates (templates/ next to a Chart.yaml) are Go templates, not YAML, so yamllint cannot
#   parse them; `helm lint --strict` and kubernetes-validate check them in the unit tests.
# - The build, benchmark and CI tooling (tools/, bench/, .ci/), which galaxy.yml's build_ignore keeps out of the
#   collection; ruff and mypy check its Python in `make unit`.
files=$(git ls-files -co --exclude-standard)
charts=$(grep -E '(^|/)Chart\.yaml$' <<<"$files" | sed -E 's|Chart\.yaml$|templates/|' | sed 's/[.]/\\./g' | paste -sd'|' -)
grep -vE "^(tools/|bench/|\.ci/)${charts:+|^($charts)}" <<<"$files" | rsync -a --files-from=- . "$dest/"
cd "$dest"
git init -q . && git add -A >/dev/null
py=$(python -c 'import sys;print("%d.%d"%sys.version_info[:2])')
exec ansible-test sanity --python "$py" --color no "$@"
