#!/usr/bin/env bash
# The documentation gate: antsibull-docs lints every plugin's and role's docs (schema, semantic markup,
# references to this collection and to the ones it depends on, the RST they render to), and
# antsibull-changelog lints the fragments and the released changelog. Fails on any finding.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
venv=$("$repo/tools/gates/venv.sh")
work=$(mktemp -d "${TMPDIR:-/tmp}/kubeinfer-docs.XXXXXX")
trap 'rm -rf "$work"' EXIT
export PATH="$venv/bin:$PATH"

# antsibull-docs runs ansible-doc, which needs the ansible_collections/<ns>/<name> layout: lint a copy
# of what the clone holds (as tools/sanity/run.sh does), without the tooling that build_ignore drops.
dest="$work/ansible_collections/kubeinfer/llm"
mkdir -p "$dest"
(cd "$repo" && git ls-files -co --exclude-standard | grep -vE '^(tools|bench|\.ci|tests|molecule)/' \
  | rsync -a --files-from=- . "$dest/")

status=0
out="$work/docs.log"
if ! (cd "$dest" && ANSIBLE_COLLECTIONS_PATH="$work" antsibull-docs lint-collection-docs --plugin-docs \
      --validate-collection-refs dependent --disallow-unknown-collection-refs --check-extra-docs-refs .) >"$out" 2>&1 \
   || [[ -s "$out" ]]; then
  cat "$out" >&2; echo "docs: antsibull-docs lint-collection-docs reported $(grep -c . "$out") line(s)" >&2; status=1
fi
out="$work/changelog.log"
if ! (cd "$repo" && antsibull-changelog lint && antsibull-changelog lint-changelog-yaml changelogs/changelog.yaml) \
      >"$out" 2>&1 || [[ -s "$out" ]]; then
  cat "$out" >&2; echo "docs: antsibull-changelog lint reported $(grep -c . "$out") line(s)" >&2; status=1
fi
(( status == 0 )) || { echo "docs: FAILED" >&2; exit 1; }
modules=$(find "$dest/plugins/modules" -name '*.py' ! -name '__init__.py' | wc -l)
roles=$(find "$dest/roles" -mindepth 1 -maxdepth 1 -type d | wc -l)
fragments=$(find "$repo/changelogs/fragments" -name '*.yml' -o -name '*.yaml' | wc -l)
echo "docs: OK - antsibull-docs $(antsibull-docs --version | awk '{print $NF}') linted $modules modules and $roles roles, antsibull-changelog $(antsibull-changelog --version | awk '{print $NF}') linted $fragments fragments and changelog.yaml: 0 findings"
