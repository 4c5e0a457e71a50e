#!/usr/bin/env bash
# checkov gate for charts/vllm: render the chart with the real helm for a matrix of values
# and scan the manifests with checkov (--framework kubernetes). Every failed check fails the gate.
#
# Skips, each with its reason in charts/vllm/README.md ("checkov"):
#   every render:               CKV_K8S_43, CKV_K8S_15, CKV_K8S_35
#   engine vllm only:           CKV_K8S_23, CKV_K8S_40  (vllm/vllm-openai v0.11.0 runs as root)
#   networkPolicy off only:     CKV2_K8S_6               (the policy is opt-in; the "on" renders prove it covers every pod)
#   the helm test pod only:     CKV_K8S_8, CKV_K8S_9     (annotations on that pod, not here)
#
# checkov comes from PyPI, pinned in tools/gates/checkov-requirements.txt, in its own venv
# ${KUBEINFER_CACHE:-~/.cache/kubeinfer}/checkov-venv, (re)built only when that file's sha256 changes.
# Env: HELM_BIN or HELM_BINARY (helm), KEEP=1 keeps the rendered manifests, GATE_SET=key=value adds a
# --set to every render (to see the gate fail: GATE_SET=securityContext.allowPrivilegeEscalation=true).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
chart="$root/charts/vllm"
cache=${KUBEINFER_CACHE:-$HOME/.cache/kubeinfer}
start=$(date +%s)

# --- checkov venv ---------------------------------------------------------------------------------
venv="$cache/checkov-venv"
req="$here/checkov-requirements.txt"
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$req" | cut -d' ' -f1)
if ! [[ -x "$venv/bin/checkov" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "checkov gate: installing $(grep -E '^checkov==' "$req") into $venv" >&2
  [[ -x "$venv/bin/python" ]] || "${PYTHON:-python3}" -m venv "$venv" >&2
  rm -f "$stamp"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >&2
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req" >&2
  echo "$want" >"$stamp"
fi

# --- helm and the Kubernetes version of the local cluster ------------------------------------------
versions="$root/tools/localcluster/versions.env"
kube_version=$(sed -n 's/^KUBERNETES_VERSION=//p' "$versions")
helm_version=$(sed -n 's/^HELM_VERSION=//p' "$versions")
helm=${HELM_BIN:-${HELM_BINARY:-$cache/helm-$helm_version/helm}}
if [[ ! -x "$helm" ]]; then
  echo "checkov gate: helm not found at $helm (build it with tools/localcluster/build.sh or set HELM_BIN)" >&2
  exit 2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/checkov-gate.XXXXXX")
if [[ "${KEEP:-}" == 1 ]]; then echo "checkov gate: manifests kept in $work" >&2; else trap 'rm -rf "$work"' EXIT; fi

# --- the matrix -----------------------------------------------------------------------------------
# name|engine|networkPolicy|values (YAML flow mapping). Each render includes the helm test pod.
matrix=(
  "vllm-r1|vllm|off|{replicaCount: 1, hfToken: {secretName: hf-token}}"
  "vllm-r3|vllm|off|{replicaCount: 3, apiKey: {secretName: vllm-api-key}, metrics: {serviceMonitor: {enabled: true}}}"
  "vllm-r1-np|vllm|on|{replicaCount: 1, networkPolicy: {enabled: true}}"
  "vllm-r3-np|vllm|on|{replicaCount: 3, hfToken: {secretName: hf-token}, networkPolicy: {enabled: true, allowedNamespaces: [gateway, llm]}}"
  "vllm-tp2-shm|vllm|off|{replicaCount: 1, gpusPerReplica: 2, vllm: {tensorParallelSize: 2}, shm: {sizeLimit: 32Gi}, modelCache: {type: pvc}}"
  "vllm-tp2-shm-r3-np|vllm|on|{replicaCount: 3, gpusPerReplica: 2, vllm: {tensorParallelSize: 2}, networkPolicy: {enabled: true}, modelCache: {type: hostPath, hostPath: {path: /var/lib/hf}}}"
  "vllm-resources|vllm|off|{replicaCount: 1, resources: {requests: {cpu: '8', memory: 64Gi}, limits: {memory: 64Gi}}}"
  "sim-r1|sim|off|{engine: sim, replicaCount: 1}"
  "sim-r3|sim|off|{engine: sim, replicaCount: 3, metrics: {podMonitor: {enabled: true}}}"
  "sim-r1-np|sim|on|{engine: sim, replicaCount: 1, networkPolicy: {enabled: true}}"
  "sim-r3-np|sim|on|{engine: sim, replicaCount: 3, networkPolicy: {enabled: true, allowedNamespaces: [gateway]}}"
  "vllm-prefetch|vllm|off|{replicaCount: 1, hfToken: {secretName: hf-token}, model: {revision: 0e9e39f249a16976918f6564b8830bc894c89659}, modelCache: {type: pvc, pvc: {existingClaim: models}, prefetch: {enabled: true}}}"
  "vllm-canary|vllm|off|{replicaCount: 2, canary: {enabled: true, values: {vllm: {extraArgs: [--enable-chunked-prefill]}}}}"
  "sim-canary-route-np|sim|on|{engine: sim, replicaCount: 2, networkPolicy: {enabled: true}, canary: {enabled: true, split: httproute, values: {sim: {timeToFirstToken: 2s}}}}"
  "sim-prefetch-np|sim|on|{engine: sim, replicaCount: 2, networkPolicy: {enabled: true}, model: {revision: main}, modelCache: {type: pvc, pvc: {existingClaim: models}, prefetch: {enabled: true}}}"
)

base_skips="CKV_K8S_43,CKV_K8S_15,CKV_K8S_35"
skips_for() {  # engine networkPolicy -> the skip list of that group
  local s=$base_skips
  [[ $1 == vllm ]] && s="$s,CKV_K8S_23,CKV_K8S_40"
  [[ $2 == off ]] && s="$s,CKV2_K8S_6"
  echo "$s"
}

for entry in "${matrix[@]}"; do
  IFS='|' read -r name engine np values <<<"$entry"
  dir="$work/$engine-np-$np"
  mkdir -p "$dir"
  printf '%s\n' "model: {name: meta-llama/Llama-3.1-8B-Instruct}" >"$work/$name.model.yaml"
  printf '%s\n' "$values" >"$work/$name.values.yaml"
  if ! "$helm" template "$name" "$chart" --namespace llm --kube-version "$kube_version" \
      -f "$work/$name.model.yaml" -f "$work/$name.values.yaml" ${GATE_SET:+--set "$GATE_SET"} \
      >"$dir/$name.yaml" 2>"$work/$name.err"; then
    echo "checkov gate: helm template failed for $name:" >&2
    cat "$work/$name.err" >&2
    exit 1
  fi
  grep -q 'helm.sh/hook: test' "$dir/$name.yaml" || { echo "checkov gate: $name rendered no helm test pod" >&2; exit 1; }
done

# --- scan each group with its own skip list -------------------------------------------------------
total_passed=0 total_failed=0 total_skipped=0 status=0
for dir in "$work"/*-np-*/; do
  group=$(basename "$dir")
  engine=${group%%-np-*}
  np=${group##*-np-}
  skips=$(skips_for "$engine" "$np")
  out="$work/$group.json"
  # checkov exits 1 when a check fails; the JSON report below decides.
  "$venv/bin/checkov" --directory "$dir" --framework kubernetes --skip-download --skip-check "$skips" \
    --output json --quiet >"$out" 2>"$work/$group.err" || true
  if ! read -r passed failed skipped < <("$venv/bin/python" - "$out" "$group" <<'PY'
import json, sys
path, group = sys.argv[1], sys.argv[2]
try:
    report = json.load(open(path))
except ValueError:
    sys.exit(f"checkov gate: no JSON report for {group}")
reports = report if isinstance(report, list) else [report]
passed = failed = skipped = 0
for r in reports:
    if not isinstance(r, dict) or "summary" not in r:  # "no resources found" gives an empty summary
        continue
    s = r["summary"]
    passed, failed, skipped = passed + s["passed"], failed + s["failed"], skipped + s["skipped"]
    if s.get("parsing_errors"):
        print(f"checkov gate: {group}: {s['parsing_errors']} parsing errors", file=sys.stderr)
        failed += s["parsing_errors"]
    for c in r.get("results", {}).get("failed_checks", []):
        print(f"FAILED {group}: {c['check_id']} {c['check_name']}: {c['resource']} ({c['file_path']})", file=sys.stderr)
if passed == 0:
    sys.exit(f"checkov gate: {group}: no check ran")
print(passed, failed, skipped)
PY
  ); then
    cat "$work/$group.err" >&2
    exit 1
  fi
  files=$(find "$dir" -name '*.yaml' | wc -l)
  printf 'checkov gate: %-12s %2d renders  passed %4d  failed %2d  skipped %3d  (--skip-check %s)\n' \
    "$group" "$files" "$passed" "$failed" "$skipped" "$skips"
  total_passed=$((total_passed + passed)) total_failed=$((total_failed + failed)) total_skipped=$((total_skipped + skipped))
  ((failed == 0)) || status=1
done

# "skipped" counts the results suppressed in the chart (the test pod's annotations); the --skip-check
# checks above are not run at all, so checkov counts them nowhere.
echo "checkov gate: ${#matrix[@]} renders of charts/vllm: $total_passed passed, $total_failed failed, $total_skipped skipped" \
  "(not run: $(skips_for vllm off)) in $(($(date +%s) - start))s"
exit "$status"
