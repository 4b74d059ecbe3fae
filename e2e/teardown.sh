#!/usr/bin/env bash
# Delete the e2e kind cluster.
set -euo pipefail
kind delete cluster --name "${KIND_CLUSTER:-engram-e2e}"
