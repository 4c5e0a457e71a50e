#!/usr/bin/env bash
# Stand-in for the NVIDIA GPU Operator's reconcile loop on the local cluster.
#
# The GPU Operator stand-in chart (tests/gpu-operator-standin) creates the real
# object names, but nothing inside the simulated pods runs, so nobody would ever
# report the ClusterPolicy ready. This host process does what the real operator
# does once its operands are up: it sets status.state=ready on every
# ClusterPolicy that has no state yet, through the status subresource. A state
# that someone set on purpose (a test reporting notReady) is left alone, and
# spec is never touched.
#
# Usage: standin-operator.sh start | stop | run
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
CACHE=${KUBEINFER_CACHE:-$HOME/.cache/kubeinfer}
NAME=${KUBEINFER_CLUSTER:-kubeinfer}
KWOK_WORKDIR=${KWOK_WORKDIR:-$CACHE/kwok}
STATE_DIR=$KWOK_WORKDIR/kubeinfer-$NAME
PIDFILE=$STATE_DIR/standin-operator.pid
KUBECTL=$CACHE/kubernetes-$KUBERNETES_VERSION/kubectl
KUBECONFIG_PATH=$KWOK_WORKDIR/clusters/$NAME/kubeconfig.yaml
INTERVAL=${STANDIN_OPERATOR_INTERVAL:-2}

kc() { "$KUBECTL" --kubeconfig "$KUBECONFIG_PATH" --request-timeout=5s "$@"; }

running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

reconcile_once() {
  kc get crd clusterpolicies.nvidia.com >/dev/null 2>&1 || return 0
  kc get clusterpolicies.nvidia.com -o 'custom-columns=NAME:.metadata.name,STATE:.status.state' --no-headers 2>/dev/null |
    while read -r name state; do
      [ "$state" = "<none>" ] || continue
      kc patch clusterpolicies.nvidia.com "$name" --subresource=status --type=merge \
        -p '{"status":{"state":"ready"}}' >/dev/null 2>&1 || true
    done
}

case "${1:-}" in
  run)
    while true; do reconcile_once; sleep "$INTERVAL"; done ;;
  start)
    running && exit 0
    mkdir -p "$STATE_DIR"
    # Its own process group, so that stop also ends a kubectl or sleep in flight.
    setsid "$0" run >"$STATE_DIR/standin-operator.log" 2>&1 < /dev/null &
    echo $! > "$PIDFILE" ;;
  stop)
    if running; then kill -- "-$(cat "$PIDFILE")" 2>/dev/null || kill "$(cat "$PIDFILE")"; fi
    rm -f "$PIDFILE" ;;
  *) echo "usage: $0 start|stop|run" >&2; exit 2 ;;
esac
