#!/usr/bin/env bash
# Wall time to ready and API requests by verb of the default installation on
# fresh local control planes with the real istiod, at 0, 10 and 25 ms each
# way: kfistio install, re-install, status and diff against the README's
# kubectl steps.
set -euo pipefail
cd "$(dirname "$0")/.."
./hack/build-controlplane.sh
./hack/build-istiod.sh
go run ./hack/install-bench "$@"
