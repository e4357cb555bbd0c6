#!/usr/bin/env bash
# Wall time to ready and API requests by verb of one install on a fresh local
# control plane: kfistio install against the documented kubectl loop.
set -euo pipefail
cd "$(dirname "$0")/.."
./hack/build-controlplane.sh
go run ./hack/install-bench "$@"
