#!/usr/bin/env bash
# The GPU stack other tests stand on: the published NVIDIA GPU Operator chart (upstream-chart.sh)
# installed with helm, as a user would, into namespace gpu-operator, and the nodes as the simulated
# operator, NFD, GFD and device plugin leave them (gpu_sim.py). `up` returns once the ClusterPolicy
# is ready and every GPU node advertises nvidia.com/gpu; both come from gpu_sim.py's rules, so a
# wrong rule fails here instead of passing silently.
#
# Usage: gpu-stack.sh up | down | status      (KUBEINFER_CLUSTER picks the cluster)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
CACHE=${KUBEINFER_CACHE:-$HOME/.cache/kubeinfer}
HELM=${HELM_BINARY:-$CACHE/helm-$HELM_VERSION/helm}
KUBECTL=$CACHE/kubernetes-$KUBERNETES_VERSION/kubectl
KUBECONFIG_PATH=$("$here/cluster.sh" kubeconfig)
NS=gpu-operator
RELEASE=gpu-operator
TIMEOUT=${GPU_STACK_TIMEOUT:-300}
kc() { "$KUBECTL" --kubeconfig "$KUBECONFIG_PATH" "$@"; }
log() { printf '[gpu-stack %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

installed() { "$HELM" --kubeconfig "$KUBECONFIG_PATH" status "$RELEASE" -n "$NS" >/dev/null 2>&1; }

gpu_nodes_ready() { # every node with an NVIDIA PCI label from NFD advertises nvidia.com/gpu
  local rows
  rows=$(kc get nodes -o jsonpath='{range .items[*]}{.metadata.labels.nvidia\.com/gpu\.present}{" "}{.status.allocatable.nvidia\.com/gpu}{"\n"}{end}')
  grep -q '^true ' <<<"$rows" && ! grep -qE '^true ($|0$)' <<<"$rows"
}

case "${1:-}" in
  up)
    if ! installed; then
      chart=$("$here/upstream-chart.sh")
      log "installing $(basename "$chart") into $NS"
      "$HELM" --kubeconfig "$KUBECONFIG_PATH" upgrade --install "$RELEASE" "$chart" -n "$NS" --create-namespace \
        --wait --timeout "${TIMEOUT}s" >/dev/null
    fi
    deadline=$(( $(date +%s) + TIMEOUT ))
    kc wait --for=jsonpath='{.status.state}'=ready clusterpolicies.nvidia.com/cluster-policy --timeout="${TIMEOUT}s" >/dev/null \
      || { log "ClusterPolicy not ready after ${TIMEOUT}s"; kc get clusterpolicies.nvidia.com -o yaml >&2 || true; exit 1; }
    # "more than 0 allocatable" is not a kubectl wait condition: poll the nodes.
    until gpu_nodes_ready; do
      [ "$(date +%s)" -lt "$deadline" ] || { log "GPUs not allocatable after ${TIMEOUT}s"; exit 1; }
      sleep 1
    done
    log "ClusterPolicy ready; GPUs allocatable" ;;
  down)
    if installed; then "$HELM" --kubeconfig "$KUBECONFIG_PATH" uninstall "$RELEASE" -n "$NS" --wait --timeout "${TIMEOUT}s" >/dev/null; fi ;;
  status)
    installed && kc get clusterpolicies.nvidia.com cluster-policy -o jsonpath='{.status.state}{"\n"}' ;;
  *) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
