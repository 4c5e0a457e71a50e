#!/usr/bin/env bash
# Build the real upstream binaries of the local control plane from the Go
# module proxy, into a cache outside the clone, one folder per version.
# Only what is missing is built. Usage: build.sh [component ...]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
CACHE=${KUBEINFER_CACHE:-$HOME/.cache/kubeinfer}
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=local
mkdir -p "$CACHE/src" "$CACHE/logs"

log() { printf '[build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

have() { # have DIR FILE... : true when every file exists and is executable
  local d=$1; shift
  for f in "$@"; do [ -x "$d/$f" ] || return 1; done
}

build_kubernetes() {
  local v=$KUBERNETES_VERSION out="$CACHE/kubernetes-$KUBERNETES_VERSION"
  have "$out" kube-apiserver kube-controller-manager kube-scheduler kubectl && return 0
  log "kubernetes $v"
  local src="$CACHE/src/kubernetes-$v" staging minor
  staging="v0.${v#v1.}"
  minor=$(echo "$v" | cut -d. -f2)
  rm -rf "$src"; mkdir -p "$src"; cd "$src"
  go mod init local/kubebins >/dev/null 2>&1
  # k8s.io/kubernetes requires its staging modules at v0.0.0 and maps them to
  # ./staging; replaces only work in the main module, so pin each one here to
  # the published release that matches the tag.
  local gomod
  gomod=$(go mod download -json "k8s.io/kubernetes@$v" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  python3 - "$gomod" "$staging" > replaces.txt <<'PY'
import re, sys
text = open(sys.argv[1]).read()
for path in sorted(set(re.findall(r'^\s*(k8s\.io/[\w.-]+) v0\.0\.0\s*$', text, re.M))):
    print(f"-replace={path}={path}@{sys.argv[2]}")
m = re.search(r'^godebug\s+(.*)$', text, re.M)
if m:
    print(f"-godebug={m.group(1).strip()}")
PY
  xargs go mod edit < replaces.txt
  go mod edit -require="k8s.io/kubernetes@$v"
  local pkgs=(cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kubectl)
  for p in "${pkgs[@]}"; do go mod edit -tool="k8s.io/kubernetes/$p"; done
  go mod tidy >/dev/null 2>&1 || go get "k8s.io/kubernetes@$v"
  local X=k8s.io/component-base/version Y=k8s.io/client-go/pkg/version
  local ld="-s -w -X $X.gitVersion=$v -X $X.gitMajor=1 -X $X.gitMinor=$minor -X $X.gitTreeState=clean -X $Y.gitVersion=$v -X $Y.gitMajor=1 -X $Y.gitMinor=$minor -X $Y.gitTreeState=clean"
  mkdir -p "$out.tmp"
  go build -v -trimpath -ldflags "$ld" -o "$out.tmp/" "${pkgs[@]/#/k8s.io/kubernetes/}"
  rm -rf "$out"; mv "$out.tmp" "$out"
}

wrapper_build() { # wrapper_build NAME VERSION MODULE PACKAGE BINARY [TAGS [LDFLAGS]]
  # A module with replace directives (etcd) or whose version list the proxy
  # refuses (go install then fails its deprecation check) is built from a
  # throwaway wrapper module that requires it at the pinned version.
  local name=$1 v=$2 mod=$3 pkg=$4 bin=$5 tags=${6:-} ld="-s -w ${7:-}" out="$CACHE/$1-$2"
  have "$out" "$bin" && return 0
  log "$name $v"
  local src="$CACHE/src/$name-$v"
  rm -rf "$src"; mkdir -p "$src"; cd "$src"
  go mod init "local/$name" >/dev/null 2>&1
  GOFLAGS="$GOFLAGS -mod=mod" go get -tool "$pkg@$v"
  go mod edit -require="$mod@$v"
  rm -rf "$out.tmp"; mkdir -p "$out.tmp"
  go build -v -trimpath -tags "$tags" -ldflags "$ld" -o "$out.tmp/$bin" "$pkg"
  rm -rf "$out"; mv "$out.tmp" "$out"
}

build_etcd() {
  wrapper_build etcd "$ETCD_VERSION" go.etcd.io/etcd/server/v3 go.etcd.io/etcd/server/v3 etcd
}

gobin_install() { # gobin_install NAME VERSION BINARY... -- PACKAGE@VERSION... [-- LDFLAGS]
  local name=$1 v=$2; shift 2
  local bins=() pkgs=()
  while [ "$1" != "--" ]; do bins+=("$1"); shift; done; shift
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do pkgs+=("$1"); shift; done
  local ld="-s -w"; [ "${1:-}" = "--" ] && ld="$ld $2"
  local out="$CACHE/$name-$v"
  have "$out" "${bins[@]}" && return 0
  log "$name $v"
  rm -rf "$out.tmp"; mkdir -p "$out.tmp"
  GOBIN="$out.tmp" go install -v -trimpath -ldflags "$ld" "${pkgs[@]}"
  rm -rf "$out"; mv "$out.tmp" "$out"
}

build_kwok() {
  gobin_install kwok "$KWOK_VERSION" kwok kwokctl -- \
    "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" "sigs.k8s.io/kwok/cmd/kwokctl@$KWOK_VERSION" \
    -- "-X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION"
}
build_helm() {
  gobin_install helm "$HELM_VERSION" helm -- "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" \
    -- "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
}
build_adapter() {
  wrapper_build prometheus-adapter "$PROMETHEUS_ADAPTER_VERSION" sigs.k8s.io/prometheus-adapter \
    sigs.k8s.io/prometheus-adapter/cmd/adapter adapter
}
build_prometheus() {
  # Prometheus 3 (module v0.3xx) with only the Kubernetes service discovery: remove_all_sd drops
  # every SD plugin and enable_kubernetes_sd keeps that one (upstream plugins/plugin_kubernetes.go).
  # Without the builtinassets tag the web UI is not embedded; the API and /-/reload still are.
  local v=$PROMETHEUS_VERSION c=github.com/prometheus/common/version
  wrapper_build prometheus "$v" github.com/prometheus/prometheus \
    github.com/prometheus/prometheus/cmd/prometheus prometheus remove_all_sd,enable_kubernetes_sd \
    "-X $c.Version=$PROMETHEUS_RELEASE -X $c.Revision=$v -X $c.Branch=release"
}
build_prometheus_operator() {
  # The operator's go.mod replaces its pkg/apis and pkg/client submodules with local paths, which only
  # apply to the main module; from a wrapper they resolve to the published v0.93.0 of each.
  local v=$PROMETHEUS_OPERATOR_VERSION m=github.com/prometheus-operator/prometheus-operator
  wrapper_build prometheus-operator "$v" "$m" "$m/cmd/operator" operator "" \
    "-X github.com/prometheus/common/version.Version=${v#v}"
}
build_sim() {
  wrapper_build inference-sim "$INFERENCE_SIM_VERSION" github.com/llm-d/llm-d-inference-sim \
    github.com/llm-d/llm-d-inference-sim/cmd/llm-d-inference-sim llm-d-inference-sim
}

build_keda() {
  # Not in the default list (see all= below). KEDA's go.mod has replace directives (k8s.io, controller-runtime, prometheus pins), which only hold in
  # the main module, so it is built from its own source (as its Makefile does), not with go install
  # @version: the module is copied out of the module cache to a writable tree.
  local v=$KEDA_VERSION out="$CACHE/keda-$KEDA_VERSION"
  have "$out" keda keda-adapter keda-admission-webhooks && return 0
  log "keda $v"
  local src="$CACHE/src/keda-$v" dir
  dir=$(go mod download -json "github.com/kedacore/keda/v2@$v" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  rm -rf "$src"; cp -r "$dir" "$src"; chmod -R u+w "$src"; cd "$src"
  rm -rf "$out.tmp"; mkdir -p "$out.tmp"
  go build -trimpath -ldflags "-s -w -X github.com/kedacore/keda/v2/version.Version=$v" -o "$out.tmp/" \
    ./cmd/operator ./cmd/adapter ./cmd/webhooks
  # The names of KEDA's images (Dockerfile, Dockerfile.adapter, Dockerfile.webhooks).
  mv "$out.tmp/operator" "$out.tmp/keda"
  mv "$out.tmp/adapter" "$out.tmp/keda-adapter"
  mv "$out.tmp/webhooks" "$out.tmp/keda-admission-webhooks"
  rm -rf "$out"; mv "$out.tmp" "$out"
}

# keda is built only when asked for (build.sh keda, make test-keda): about 1,160 CPU-seconds, which would
# push a fresh-machine .ci/run past its 60-minute budget (README, "Measured on the 2-core CI machine").
all=(kubernetes etcd kwok helm adapter prometheus prometheus_operator sim)
if [ "${1:-}" = "--one" ]; then
  # A separate process per component, so that `set -e` really stops at the first failure.
  "build_$2"
  exit 0
fi
want=("$@"); [ ${#want[@]} -eq 0 ] && want=("${all[@]}")

build_one() { # build_one COMPONENT: one line when it really starts, a heartbeat every minute, its time when done
  local c=$1 t0 rc=0 ticker log_file="$CACHE/logs/build-$1.log"
  t0=$(date +%s)
  # A cold build is silent for many minutes: a ticker says when a component is really being built
  # (still running after 5 s; a cached one returns at once), then every minute what it is compiling
  # (the last package `go build -v` logged).
  ( n=0; while sleep 5; do n=$((n + 5))
      if [ "$n" -eq 5 ]; then log "building $c (log $log_file)"
      elif [ $((n % 60)) -eq 0 ]; then log "still building $c (${n}s; at $(tail -n 1 "$log_file" 2>/dev/null | cut -c1-90))"; fi
    done ) &
  ticker=$!
  "$0" --one "$c" > "$log_file" 2>&1 || rc=$?
  kill "$ticker" 2>/dev/null || true
  wait "$ticker" 2>/dev/null || true
  if [ "$rc" -ne 0 ]; then
    log "FAILED $c; see $log_file"; tail -20 "$log_file" >&2; return 1
  fi
  [ $(( $(date +%s) - t0 )) -lt 2 ] || log "built $c in $(( $(date +%s) - t0 ))s"
}

# BUILD_JOBS components at a time (default 2), in the order above, so the longest (kubernetes) starts first. On
# two cores the compilers keep both busy either way; a second build fills the time one spends fetching modules
# from the proxy or in the linker, which runs on one core.
jobs_max=${BUILD_JOBS:-2}
start=$(date +%s)
failed=0
running=0
for c in "${want[@]}"; do
  if [ "$running" -ge "$jobs_max" ]; then
    wait -n || failed=1
    running=$((running - 1))
  fi
  [ "$failed" -eq 0 ] || break
  build_one "$c" &
  running=$((running + 1))
done
while [ "$running" -gt 0 ]; do
  wait -n || failed=1
  running=$((running - 1))
done
[ "$failed" -eq 0 ] || { log "build failed after $(( $(date +%s) - start ))s"; exit 1; }
log "done in $(( $(date +%s) - start ))s"
