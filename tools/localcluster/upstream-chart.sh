#!/usr/bin/env bash
# upstream-chart.sh [gpu-operator | prometheus-adapter]   (default gpu-operator)
#
# prometheus-adapter: print the path of the published prometheus-community chart archive
# (PROMETHEUS_ADAPTER_CHART, else ../shared/upstream/charts/prometheus-adapter-<version>.tgz), checked
# against its sha256 (versions.env). Without either it fails and says so: there is no helm pull (the
# chart repository is not a package registry this machine may reach) and no imitation.
#
# gpu-operator: print the path of the published NVIDIA GPU Operator chart archive, found in this order:
#   1. GPU_OPERATOR_CHART (a path to the .tgz), when set;
#   2. ../shared/upstream/charts/gpu-operator-<version>.tgz next to the checkout, when present;
#   3. helm pull from NVIDIA's repository (GPU_OPERATOR_CHART_REPO), cached by version.
# The archive's sha256 must equal the published digest (versions.env). When none of the three
# works, it fails and says so: there is no fallback to an imitation of the chart.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
CACHE=${KUBEINFER_CACHE:-$HOME/.cache/kubeinfer}
die() { echo "upstream-chart.sh: $*" >&2; exit 1; }

if [ "${1:-gpu-operator}" = prometheus-adapter ]; then
  name=prometheus-adapter-$PROMETHEUS_ADAPTER_CHART_VERSION.tgz
  chart=${PROMETHEUS_ADAPTER_CHART:-$(cd "$here/../.." && pwd)/../shared/upstream/charts/$name}
  [ -f "$chart" ] || die "no prometheus-adapter chart: ${PROMETHEUS_ADAPTER_CHART:+PROMETHEUS_ADAPTER_CHART=}$chart does not exist. Put the published $name there (prometheus-community/helm-charts) or point PROMETHEUS_ADAPTER_CHART at it."
  chart=$(cd "$(dirname "$chart")" && pwd)/$(basename "$chart")
  sum=$(sha256sum "$chart" | cut -d' ' -f1)
  [ "$sum" = "$PROMETHEUS_ADAPTER_CHART_SHA256" ] || die "$chart has sha256 $sum, not $PROMETHEUS_ADAPTER_CHART_SHA256 of the published $name"
  echo "$chart"
  exit 0
fi
[ "${1:-gpu-operator}" = gpu-operator ] || die "usage: upstream-chart.sh [gpu-operator|prometheus-adapter]"
v=$GPU_OPERATOR_CHART_VERSION
name=gpu-operator-$v.tgz

check() { # check PATH SOURCE
  local sum
  sum=$(sha256sum "$1" | cut -d' ' -f1)
  [ "$sum" = "$GPU_OPERATOR_CHART_SHA256" ] || die "$1 ($2) has sha256 $sum, not the published $GPU_OPERATOR_CHART_SHA256 of $name"
  echo "$1"
}

if [ -n "${GPU_OPERATOR_CHART:-}" ]; then
  [ -f "$GPU_OPERATOR_CHART" ] || die "GPU_OPERATOR_CHART=$GPU_OPERATOR_CHART does not exist"
  check "$(cd "$(dirname "$GPU_OPERATOR_CHART")" && pwd)/$(basename "$GPU_OPERATOR_CHART")" GPU_OPERATOR_CHART
  exit 0
fi
shared=$(cd "$here/../.." && pwd)/../shared/upstream/charts/$name
if [ -f "$shared" ]; then
  check "$(cd "$(dirname "$shared")" && pwd)/$name" "../shared/upstream"
  exit 0
fi
pulled=$CACHE/charts/$name
if [ ! -f "$pulled" ]; then
  helm=${HELM_BINARY:-$CACHE/helm-$HELM_VERSION/helm}
  mkdir -p "$CACHE/charts"
  "$helm" pull gpu-operator --repo "$GPU_OPERATOR_CHART_REPO" --version "$v" -d "$CACHE/charts" >&2 ||
    die "no GPU Operator chart: GPU_OPERATOR_CHART is unset, $shared does not exist, and helm pull from $GPU_OPERATOR_CHART_REPO failed (see above). Point GPU_OPERATOR_CHART at gpu-operator-$v.tgz."
fi
check "$pulled" "helm pull $GPU_OPERATOR_CHART_REPO"
