#!/usr/bin/env bash
# Create or update the gates venv from tools/gates/requirements.txt and print its path.
# Idempotent: it re-installs only when the requirements file's sha256 differs from the stamp.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${KUBEINFER_CACHE:-$HOME/.cache/kubeinfer}
venv="$cache/gates-venv"
req="$here/requirements.txt"
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$req" | cut -d' ' -f1)
# One installer at a time, when several gates start together (make -j).
mkdir -p "$cache"
exec 9>"$cache/gates-venv.lock"
flock 9
if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "$venv"
  exit 0
fi
python=${PYTHON:-python3}
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv" >&2
rm -f "$stamp"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >&2
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req" >&2
check=$("$venv/bin/python" -m pip check) || { echo "$check" >&2; exit 1; }
echo "$want" >"$stamp"
echo "$venv"
