#!/usr/bin/env bash
# Create the kind cluster (zone-labelled workers), build and load the images, install the chart.
# Usage: e2e/setup.sh            (KIND_CLUSTER, ENGRAM_VERSION, ENGRAM_E2E_PREBUILT override the defaults)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cluster="${KIND_CLUSTER:-engram-e2e}"
version="${ENGRAM_VERSION:-0.1.0}"
engine_image="ghcr.io/engram-db/engram:${version}"
operator_image="ghcr.io/engram-db/engram-operator:${version}"
# Must match the chart's engine.valkeyImage / engine.natsImage defaults.
valkey_image="valkey/valkey:9.0.0-trixie"
nats_image="nats:2.14.0-alpine"

for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || { echo "e2e/setup.sh: $tool is not installed" >&2; exit 2; }
done

if ! kind get clusters | grep -qx "$cluster"; then
  kind create cluster --name "$cluster" --config "$root/e2e/kind-config.yaml" --wait 120s
fi
kubectl config use-context "kind-$cluster"

# ENGRAM_E2E_PREBUILT=1: the images are already in Docker (CI builds them once for every job).
if [ "${ENGRAM_E2E_PREBUILT:-0}" = 1 ]; then
  docker image inspect "$engine_image" "$operator_image" >/dev/null
else
  docker build -f "$root/engine/Dockerfile" -t "$engine_image" "$root"
  docker build -f "$root/operator/Dockerfile" -t "$operator_image" "$root"
fi
docker pull -q "$valkey_image"
docker pull -q "$nats_image"
# Loaded images never need a registry pull on the nodes (IfNotPresent + fixed tags).
kind load docker-image --name "$cluster" "$engine_image" "$operator_image" "$valkey_image" "$nats_image"

helm upgrade --install engram-operator "$root/charts/engram-operator" \
  --namespace engram-system --create-namespace \
  --set image.tag="$version" \
  --set image.pullPolicy=IfNotPresent \
  --wait --timeout 5m
kubectl -n engram-system rollout status deployment/engram-operator --timeout=120s
echo "kind cluster $cluster ready; run: pytest e2e"
