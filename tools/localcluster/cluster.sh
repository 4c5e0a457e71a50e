#!/usr/bin/env bash
# Local Kubernetes control plane for kubeinfer.llm: real etcd, kube-apiserver,
# kube-controller-manager and kube-scheduler (built by build.sh) run by
# kwokctl --runtime binary, with kwok simulating GPU and CPU nodes.
#
# Nodes start bare, as a freshly joined node would: no NFD label, no
# nvidia.com/* label, no nvidia.com/gpu resource. Their simulated hardware
# (PCI devices, GPUs, host driver) lives outside the API in
# $STATE_DIR/gpu-hardware.json; gpu_sim.py (started by `make cluster-up`, or
# `gpu_sim.py start`) plays NFD, the GPU Operator's operands and the kubelet
# from it.
#
# Usage: cluster.sh up | down | status | kubeconfig | kwok-url
#        cluster.sh forward NAMESPACE POD HOST_PORT [POD_PORT]
#        cluster.sh unforward NAMESPACE POD
#        cluster.sh nodes          (re-apply the simulated nodes only)
#
# Environment (all optional):
#   KUBEINFER_CACHE   binary cache and state root   (~/.cache/kubeinfer)
#   KUBEINFER_CLUSTER cluster name                  (kubeinfer)
#   KWOK_WORKDIR      kwokctl state                 ($KUBEINFER_CACHE/kwok)
#   GPU_NODES         bare GPU nodes, no host driver (2)     kwok-gpu-NNNN
#   GPU_DRIVER_NODES  GPU nodes with a host driver  (0)      kwok-gpudrv-NNNN
#   HOST_DRIVER_VERSION  their driver version       (550.54.15)
#   CUDA_VERSION      CUDA version of the drivers   (12.4)
#   GPU_PER_NODE      GPUs per GPU node             (8)
#   GPU_PRODUCT       GPU model (GFD product label) (NVIDIA-A100-SXM4-80GB)
#   GPU_MEMORY        memory per GPU (MiB)          (81920)
#   GPU_NODE_CPU / GPU_NODE_MEMORY                  (128 / 1Ti)
#   CPU_NODES         CPU-only nodes                (1)
#   CPU_NODE_CPU / CPU_NODE_MEMORY                  (16 / 64Gi)
#   NODE_PODS         pods capacity per node        (110)
#   UP_TIMEOUT        seconds to wait for readiness (300)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"

CACHE=${KUBEINFER_CACHE:-$HOME/.cache/kubeinfer}
NAME=${KUBEINFER_CLUSTER:-kubeinfer}
export KWOK_WORKDIR=${KWOK_WORKDIR:-$CACHE/kwok}
GPU_NODES=${GPU_NODES:-2}
GPU_DRIVER_NODES=${GPU_DRIVER_NODES:-0}
GPU_PER_NODE=${GPU_PER_NODE:-8}
GPU_PRODUCT=${GPU_PRODUCT:-NVIDIA-A100-SXM4-80GB}
GPU_MEMORY=${GPU_MEMORY:-81920}
GPU_NODE_CPU=${GPU_NODE_CPU:-128}
GPU_NODE_MEMORY=${GPU_NODE_MEMORY:-1Ti}
CPU_NODES=${CPU_NODES:-1}
CPU_NODE_CPU=${CPU_NODE_CPU:-16}
CPU_NODE_MEMORY=${CPU_NODE_MEMORY:-64Gi}
NODE_PODS=${NODE_PODS:-110}
UP_TIMEOUT=${UP_TIMEOUT:-300}

K8S_DIR=$CACHE/kubernetes-$KUBERNETES_VERSION
KWOK_DIR=$CACHE/kwok-$KWOK_VERSION
ETCD_DIR=$CACHE/etcd-$ETCD_VERSION
KWOKCTL=$KWOK_DIR/kwokctl
KUBECTL=$K8S_DIR/kubectl
CLUSTER_DIR=$KWOK_WORKDIR/clusters/$NAME
KUBECONFIG_PATH=$CLUSTER_DIR/kubeconfig.yaml
STATE_DIR=$KWOK_WORKDIR/kubeinfer-$NAME
FIELD_MANAGER=kubeinfer-localcluster
SIM_NODE_LABEL=kubeinfer.io/sim-node

log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
kc() { "$KUBECTL" --kubeconfig "$KUBECONFIG_PATH" "$@"; }

check_binaries() {
  local missing=() f
  for f in "$K8S_DIR/kube-apiserver" "$K8S_DIR/kube-controller-manager" \
           "$K8S_DIR/kube-scheduler" "$KUBECTL" "$ETCD_DIR/etcd" \
           "$KWOK_DIR/kwok" "$KWOKCTL"; do
    [ -x "$f" ] || missing+=("$f")
  done
  [ ${#missing[@]} -eq 0 ] || die "missing binaries (run tools/localcluster/build.sh): ${missing[*]}"
}

# The kwokctl configuration: every binary from the local build, every
# listener on 127.0.0.1, the kwok Stages and the node template. Written to STATE_DIR so that a
# change in it (new version, new stages) forces a re-create on the next up.
write_config() {
  mkdir -p "$STATE_DIR"
  local cfg=$STATE_DIR/kwokctl.yaml
  {
    cat <<EOF
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokctlConfiguration
options:
  runtime: binary
  kubeVersion: $KUBERNETES_VERSION
  etcdVersion: ${ETCD_VERSION#v}
  kwokVersion: $KWOK_VERSION
  bindAddress: 127.0.0.1
  # One audit event per request, so that tests count a run's writes by user agent.
  kubeAuditPolicy: $here/kwok/audit-policy.yaml
  kubeApiserverBinary: $K8S_DIR/kube-apiserver
  kubeControllerManagerBinary: $K8S_DIR/kube-controller-manager
  kubeSchedulerBinary: $K8S_DIR/kube-scheduler
  kubectlBinary: $KUBECTL
  etcdBinary: $ETCD_DIR/etcd
  kwokControllerBinary: $KWOK_DIR/kwok
  cacheDir: $KWOK_WORKDIR/cache
  # Custom resources the tests and the collection may create at run time.
  enableCRDs: [Logs, ClusterLogs, PortForward, ClusterPortForward, Metric]
componentsPatches:
# A throwaway test store: skip fsync, which makes node and pod churn cheaper.
- name: etcd
  extraArgs:
  - key: unsafe-no-fsync
    value: "true"
# The HPA controller's sync period, set explicitly at its documented default (metrics chain, issue 5).
- name: kube-controller-manager
  extraArgs:
  - key: horizontal-pod-autoscaler-sync-period
    value: 15s
---
EOF
    cat "$here/kwok/stages.yaml"
    echo ---
    cat "$here/kwok/node.yaml"
  } > "$cfg.new"
  mv "$cfg.new" "$cfg"
  echo "$cfg"
}

config_hash() { sha256sum "$STATE_DIR/kwokctl.yaml" | cut -c1-16; }

api_healthy() {
  [ -f "$KUBECONFIG_PATH" ] || return 1
  [ "$(kc --request-timeout=3s get --raw /readyz 2>/dev/null)" = ok ]
}

wait_api() { # wait_api [SECONDS] ; dies on timeout unless SECONDS is given
  local limit=${1:-$UP_TIMEOUT} deadline
  deadline=$(( $(date +%s) + limit ))
  until api_healthy; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      [ -z "${1:-}" ] || return 1
      die "API server not healthy after ${limit}s; logs in $CLUSTER_DIR/logs"
    fi
    sleep 0.5
  done
}

# kwok reads logs files in the CRI format (timestamp stream tag text).
write_sim_files() {
  local smi=$STATE_DIR/nvidia-smi.cri.log
  sed 's/^/2026-11-04T10:12:31.000000000Z stdout F /' "$here/fixtures/nvidia-smi.txt" > "$smi"
  sed "s#@NVIDIA_SMI_LOG@#$smi#" "$here/kwok/simulation.yaml" > "$STATE_DIR/simulation.yaml"
}

apply_simulation() {
  write_sim_files
  # kwokctl creates the CRDs just before it returns; wait until they serve.
  local crds=(crd/clusterlogs.kwok.x-k8s.io crd/metrics.kwok.x-k8s.io)
  kc wait --for=create "${crds[@]}" --timeout=60s >/dev/null \
    && kc wait --for=condition=Established "${crds[@]}" --timeout=60s >/dev/null \
    || die "the kwok CRDs did not appear"
  kc apply --server-side --force-conflicts --field-manager="$FIELD_MANAGER" -f "$STATE_DIR/simulation.yaml" >/dev/null \
    || die "applying kwok/simulation.yaml failed"
}

gpu_node_name() { printf 'kwok-gpu-%04d' "$1"; }
gpudrv_node_name() { printf 'kwok-gpudrv-%04d' "$1"; }
cpu_node_name() { printf 'kwok-cpu-%04d' "$1"; }

# The names kwokctl scale gives (NAME-0000, NAME-0001, ...) and their kind, one a line.
desired_node_kinds() {
  local i
  for ((i = 0; i < GPU_NODES; i++)); do echo "$(gpu_node_name "$i") gpu"; done
  for ((i = 0; i < GPU_DRIVER_NODES; i++)); do echo "$(gpudrv_node_name "$i") gpudrv"; done
  for ((i = 0; i < CPU_NODES; i++)); do echo "$(cpu_node_name "$i") cpu"; done
}

# The simulated hardware of every wanted node: entries of existing nodes are
# kept (a test may have swapped them), new nodes get one, others are dropped.
write_hardware() {
  desired_node_kinds | GPU_PER_NODE=$GPU_PER_NODE GPU_PRODUCT=$GPU_PRODUCT GPU_MEMORY=$GPU_MEMORY \
    KUBEINFER_CACHE=$CACHE KUBEINFER_CLUSTER=$NAME "$here/gpu_sim.py" init-hardware
}

# One pool of nodes from the template kwok/node.yaml, with kwokctl's own scaling: it creates
# the missing POOL-NNNN nodes and deletes the newest beyond COUNT. Existing nodes are left alone
# (their status belongs to kwok and gpu_sim.py).
scale_pool() { # scale_pool POOL COUNT ROLE CPU MEMORY POD_CIDR
  "$KWOKCTL" --name "$NAME" -c "$STATE_DIR/kwokctl.yaml" scale kubeinfer-node "$1" --replicas "$2" \
    --serial-length 4 --param ".role=\"$3\"" --param ".cpu=\"$4\"" --param ".memory=\"$5\"" \
    --param ".podCIDR=\"$6\"" \
    --param ".pods=\"$NODE_PODS\"" >"$STATE_DIR/kwokctl-scale.log" 2>&1 \
    || { tail -5 "$STATE_DIR/kwokctl-scale.log" >&2; die "kwokctl scale of the $1 nodes failed"; }
}

# Pod IPs are loopback addresses of this host (kwok/node.yaml), and the pod network's relays (podnet.py)
# listen on them: two clusters on one host must never hand out the same pod IP, or one cluster's relay
# takes the address and the other's Prometheus scrapes the wrong simulator. So each cluster holds a slot
# 1-15 of 127.0.0.0/8 (a /12, 127.<16*slot>.0.0) until `down`, in one file for the whole host (clusters
# of every cache and user share loopback): lines "<cluster dir> <slot>". A slot whose cluster directory
# is gone (deleted without `down`) is taken back. Slot 0 (127.0.0.1) is never handed out.
SLOTS_FILE=${KUBEINFER_POD_SLOTS:-/tmp/kubeinfer-pod-network-slots}
pod_slot() {
  (
    flock 9
    local slot used s d
    if [ -f "$SLOTS_FILE" ]; then
      while read -r d s; do
        [ "$d" = "$CLUSTER_DIR" ] || [ -d "$d" ] && echo "$d $s"
      done < "$SLOTS_FILE" > "$SLOTS_FILE.tmp"
      mv "$SLOTS_FILE.tmp" "$SLOTS_FILE"
    fi
    slot=$(awk -v d="$CLUSTER_DIR" '$1 == d {print $2}' "$SLOTS_FILE" 2>/dev/null || true)
    if [ -z "$slot" ]; then
      used=" $(awk '{print $2}' "$SLOTS_FILE" 2>/dev/null | tr '\n' ' ') "
      for s in $(seq 1 15); do
        case "$used" in *" $s "*) ;; *) slot=$s; break ;; esac
      done
      [ -n "$slot" ] || die "all 15 pod network slots of 127.0.0.0/8 are taken ($SLOTS_FILE); bring a cluster down"
      echo "$CLUSTER_DIR $slot" >> "$SLOTS_FILE"
    fi
    echo "$slot"
  ) 9>"$SLOTS_FILE.lock"
}

release_pod_slot() {
  [ -f "$SLOTS_FILE" ] || return 0
  (
    flock 9
    awk -v d="$CLUSTER_DIR" '$1 != d' "$SLOTS_FILE" > "$SLOTS_FILE.tmp" && mv "$SLOTS_FILE.tmp" "$SLOTS_FILE"
  ) 9>"$SLOTS_FILE.lock"
}

ensure_nodes() {
  local base slot
  slot=$(pod_slot) && [ -n "$slot" ] || die "no pod network slot for cluster $NAME"
  base=$(( slot * 16 ))
  log "nodes: $GPU_NODES bare GPU + $GPU_DRIVER_NODES GPU with host driver (x $GPU_PER_NODE $GPU_PRODUCT), $CPU_NODES CPU; pod IPs in 127.$base.0.0/12"
  # Each pool's nodes take consecutive /24s from its base (kwok/node.yaml): the GPU pool has 2,048 of them
  # (1,000 GPU nodes end at 127.<base+3>.231.0/24), the driver pool 1,024, the CPU pool 1,024.
  scale_pool kwok-gpu "$GPU_NODES" gpu-worker "$GPU_NODE_CPU" "$GPU_NODE_MEMORY" "127.$base.0.0/24"
  scale_pool kwok-gpudrv "$GPU_DRIVER_NODES" gpu-worker "$GPU_NODE_CPU" "$GPU_NODE_MEMORY" "127.$(( base + 8 )).0.0/24"
  scale_pool kwok-cpu "$CPU_NODES" cpu-worker "$CPU_NODE_CPU" "$CPU_NODE_MEMORY" "127.$(( base + 12 )).0.0/24"
  write_hardware
}

wait_nodes_ready() {
  [ $(( GPU_NODES + GPU_DRIVER_NODES + CPU_NODES )) -gt 0 ] || return 0
  kc wait --for=condition=Ready node -l "$SIM_NODE_LABEL=true" --timeout="${UP_TIMEOUT}s" >/dev/null \
    || die "the simulated nodes are not all Ready after ${UP_TIMEOUT}s"
  log "$(kc get nodes -l "$SIM_NODE_LABEL=true" -o name | wc -l) nodes Ready"
}

# The default ServiceAccount is made by the controller manager; pods cannot be
# created in a namespace before it exists.
wait_default_sa() {
  kc -n default wait --for=create serviceaccount/default --timeout=60s >/dev/null \
    || die "default ServiceAccount never appeared"
}

# kwokctl writes one pid file per component, without a trailing newline.
cluster_pids() {
  local f
  for f in "$CLUSTER_DIR"/pids/*.pid; do
    [ -f "$f" ] && echo "$(tr -dc 0-9 < "$f")"
  done
  return 0
}

cmd_up() {
  local start cfg
  start=$(date +%s)
  check_binaries
  cfg=$(write_config)
  local hash
  hash=$(config_hash)
  if [ -d "$CLUSTER_DIR" ] && [ "$(cat "$STATE_DIR/created-with" 2>/dev/null)" != "$hash" ]; then
    log "cluster $NAME was created with another configuration; re-creating"
    cmd_down
  fi
  if api_healthy; then
    log "reusing running cluster $NAME"
  elif [ -d "$CLUSTER_DIR" ]; then
    log "starting stopped cluster $NAME"
    if ! timeout 60 "$KWOKCTL" --name "$NAME" start cluster >"$STATE_DIR/kwokctl-start.log" 2>&1 || ! wait_api 60; then
      log "restart failed ($(tail -1 "$STATE_DIR/kwokctl-start.log" | cut -c1-200)); re-creating"
      cmd_down
    fi
  fi
  if [ ! -d "$CLUSTER_DIR" ]; then
    log "creating cluster $NAME (kwokctl --runtime binary, workdir $KWOK_WORKDIR)"
    "$KWOKCTL" --name "$NAME" -c "$cfg" create cluster --runtime binary \
      --kubeconfig "" --timeout "${UP_TIMEOUT}s" >"$STATE_DIR/kwokctl.log" 2>&1 \
      || { tail -20 "$STATE_DIR/kwokctl.log" >&2; die "kwokctl create cluster failed"; }
    echo "$hash" > "$STATE_DIR/created-with"
  fi
  wait_api
  apply_simulation
  ensure_nodes
  wait_nodes_ready
  wait_default_sa
  log "cluster $NAME up in $(( $(date +%s) - start ))s; kubeconfig $KUBECONFIG_PATH"
}

# True when PID is alive and is one of this cluster's processes (every
# component gets a path under CLUSTER_DIR on its command line), so that a
# stale pid file never makes us signal somebody else's process.
ours() {
  kill -0 "$1" 2>/dev/null && tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null | grep -qF "$CLUSTER_DIR/"
}

# The metrics chain (metrics.sh), the simulators (sim.sh) and the prefetch kubelet (prefetch_sim.py) are host processes
# of this cluster too; they stop by their own PID files.
stop_host_processes() {
  KUBEINFER_CACHE=$CACHE KUBEINFER_CLUSTER=$NAME "$here/gpu_sim.py" stop || log "gpu_sim.py stop failed"
  KUBEINFER_CACHE=$CACHE KUBEINFER_CLUSTER=$NAME "$here/podkubelet.py" stop || log "podkubelet.py stop failed"
  KUBEINFER_CACHE=$CACHE KUBEINFER_CLUSTER=$NAME "$here/metrics.sh" down || log "metrics.sh down failed"
  KUBEINFER_CACHE=$CACHE KUBEINFER_CLUSTER=$NAME "$here/sim.sh" stop --all || log "sim.sh stop --all failed"
  KUBEINFER_CACHE=$CACHE KUBEINFER_CLUSTER=$NAME "$here/prefetch_sim.py" stop || log "prefetch_sim.py stop failed"
}

cmd_down() {
  local pids pid deadline
  stop_host_processes
  pids=$(cluster_pids)
  if [ -d "$CLUSTER_DIR" ]; then
    log "deleting cluster $NAME"
    # kwokctl refuses an empty --kubeconfig here; point it at a file of ours so
    # that it never edits ~/.kube/config.
    mkdir -p "$STATE_DIR"
    "$KWOKCTL" --name "$NAME" delete cluster --kubeconfig "$STATE_DIR/kubeconfig-contexts.yaml" \
      >"$STATE_DIR/kwokctl-delete.log" 2>&1 \
      || log "kwokctl delete cluster failed: $(tail -1 "$STATE_DIR/kwokctl-delete.log")"
  fi
  # Make sure every process of ours is gone, by the PIDs kwokctl recorded.
  deadline=$(( $(date +%s) + 20 ))
  for pid in $pids; do
    while ours "$pid"; do
      if [ "$(date +%s)" -ge "$deadline" ]; then
        log "killing leftover pid $pid"; kill -9 "$pid" 2>/dev/null || true; sleep 0.5; break
      fi
      kill "$pid" 2>/dev/null || true
      sleep 0.2
    done
  done
  for pid in $pids; do
    ! ours "$pid" || die "process $pid of cluster $NAME still running"
  done
  rm -rf "$CLUSTER_DIR" "$STATE_DIR/created-with" "$STATE_DIR/gpu-hardware.json"
  release_pod_slot
}

cmd_status() {
  if ! api_healthy; then
    echo "cluster $NAME: not running (workdir $CLUSTER_DIR)"
    return 1
  fi
  echo "cluster $NAME: running"
  echo "kubeconfig: $KUBECONFIG_PATH"
  echo "server: $(kc version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])')"
  echo "kwok: $(kwok_url)"
  local pid f
  for f in "$CLUSTER_DIR"/pids/*.pid; do
    pid=$(cat "$f")
    printf 'process %-24s pid %-7s %s\n' "$(basename "$f" .pid)" "$pid" \
      "$(kill -0 "$pid" 2>/dev/null && echo running || echo DEAD)"
  done
  kc get nodes \
    -o custom-columns='NAME:.metadata.name,READY:.status.conditions[?(@.type=="Ready")].status,GPU:.status.allocatable.nvidia\.com/gpu,PRODUCT:.metadata.labels.nvidia\.com/gpu\.product' \
    | awk 'NR <= 21 { print } END { if (NR > 21) printf "... %d nodes in all\n", NR - 1 }'
}

# kwok-controller serves logs, port-forward and the simulated metrics on one
# port (HTTP and HTTPS); kwokctl picked it and wrote it to its config.
kwok_url() {
  local port
  port=$(grep -o -- '--node-port=[0-9]*' "$CLUSTER_DIR/kwok.yaml" | head -1 | cut -d= -f2)
  [ -n "$port" ] || die "kwok-controller port not found in $CLUSTER_DIR/kwok.yaml"
  echo "http://127.0.0.1:$port"
}

# Point port POD_PORT (default: every port) of one pod at 127.0.0.1:HOST_PORT.
cmd_forward() {
  [ $# -ge 3 ] || die "usage: cluster.sh forward NAMESPACE POD HOST_PORT [POD_PORT]"
  local ns=$1 pod=$2 hostport=$3 podport=${4:-} ports=""
  [ -n "$podport" ] && ports="    ports: [$podport]"
  kc apply --server-side --field-manager="$FIELD_MANAGER" -f - >/dev/null <<EOF
apiVersion: kwok.x-k8s.io/v1alpha1
kind: PortForward
metadata:
  name: $pod
  namespace: $ns
spec:
  forwards:
  - target: {address: 127.0.0.1, port: $hostport}
$ports
EOF
}

cmd_unforward() {
  [ $# -eq 2 ] || die "usage: cluster.sh unforward NAMESPACE POD"
  kc -n "$1" delete portforwards.kwok.x-k8s.io "$2" --ignore-not-found >/dev/null
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down; log "cluster $NAME down" ;;
  status) cmd_status ;;
  kubeconfig)
    echo "$KUBECONFIG_PATH"
    [ -f "$KUBECONFIG_PATH" ] || { log "no cluster yet; run: cluster.sh up"; exit 1; } ;;
  kwok-url) kwok_url ;;
  nodes) ensure_nodes; wait_nodes_ready ;;
  forward) shift; cmd_forward "$@" ;;
  unforward) shift; cmd_unforward "$@" ;;
  *) sed -n '2,33p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
