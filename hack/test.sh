#!/usr/bin/env bash
# Runs every test. The cluster tests run against a real local control plane
# (kube-apiserver, kube-controller-manager, kube-scheduler, etcd, kwok), built
# from Go modules by hack/build-controlplane.sh on first use (several minutes
# once, then cached), with the istiods (hack/build-istiod.sh) and Flux's
# kustomize-controller (hack/build-flux.sh). kubectl built there is the reference for the
# `kubectl kustomize` comparison. Tests run in random order (-shuffle=on; the
# seed is printed, and -shuffle=SEED repeats an order): each sets up and
# removes its own state. Extra arguments go to `go test`.
set -euo pipefail
cd "$(dirname "$0")/.."
./hack/build-controlplane.sh
./hack/build-istiod.sh
./hack/build-flux.sh
export PATH="$PWD/_output/bin:$PATH" KFISTIO_REQUIRE_KUBECTL=1
go test -timeout 30m -shuffle=on ./... "$@"
