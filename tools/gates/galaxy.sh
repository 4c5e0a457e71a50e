#!/usr/bin/env bash
# Build the collection tarball as a release would, and run galaxy-importer on it: the check that
# Galaxy and Automation Hub run on every upload (ansible-doc on every plugin, role and changelog
# checks, ansible-lint). ansible-test is off, since it needs a container engine.
# Fails on any ERROR or WARNING line of the importer's output.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
venv=$("$repo/tools/gates/venv.sh")
work=$(mktemp -d "${TMPDIR:-/tmp}/kubeinfer-galaxy.XXXXXX")
trap 'rm -rf "$work"' EXIT

"$venv/bin/ansible-galaxy" collection build --output-path "$work" "$repo" >/dev/null
tarball=$(find "$work" -maxdepth 1 -name 'kubeinfer-llm-*.tar.gz')
[[ -n "$tarball" ]] || { echo "galaxy: ansible-galaxy collection build made no tarball" >&2; exit 1; }

cat >"$work/galaxy-importer.cfg" <<CFG
[galaxy-importer]
run_ansible_test = False
ansible_test_local_image = False
local_image_docker = False
run_ansible_doc = True
run_ansible_lint = True
offline_ansible_lint = True
run_flake8 = False
check_changelog = True
tmp_root_dir = $work
ansible_local_tmp = $work/ansible-tmp
CFG

log="$work/importer.log"
rc=0
(cd "$work" && GALAXY_IMPORTER_CONFIG="$work/galaxy-importer.cfg" PATH="$venv/bin:$PATH" \
  "$venv/bin/python" -m galaxy_importer.main "$tarball") >"$log" 2>&1 || rc=$?

errors=$(grep -cE '^(ERROR|CRITICAL):' "$log" || true)
warnings=$(grep -cE '^WARNING:' "$log" || true)
if (( rc != 0 || errors > 0 || warnings > 0 )); then
  grep -E '^(ERROR|CRITICAL|WARNING):' "$log" >&2 || tail -n 40 "$log" >&2
  echo "galaxy: FAILED - $(basename "$tarball"): $errors error(s), $warnings warning(s), importer exit $rc" >&2
  exit 1
fi
grep -q '^Importer processing completed successfully' "$log" || {
  tail -n 40 "$log" >&2; echo "galaxy: FAILED - the importer did not report success" >&2; exit 1; }
echo "galaxy: OK - $(basename "$tarball") ($(du -k "$tarball" | cut -f1) KiB, $(tar tzf "$tarball" | grep -vc '/$') files): galaxy-importer $("$venv/bin/python" -c 'import importlib.metadata as m;print(m.version("galaxy-importer"))'), 0 errors, 0 warnings"
