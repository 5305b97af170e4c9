#!/usr/bin/env bash
# End-to-end test on kind with CPU trainers, the way a user's CI runs acceltrain.
# Needs a Docker engine; `make e2e-kind` runs it.
#
#  1. builds the operator and CPU trainer images (make image-operator image-trainer-cpu)
#  2. creates a kind cluster and loads the images into it
#  3. runs tests/e2e/user-path.sh, the body it shares with the local cluster's real-node test:
#     helm install, the CPU smoke example (with its PVC on kind's local-path StorageClass) to
#     Succeeded, a trainer's metrics endpoint checked while it runs
#  4. dumps operator and trainer logs on failure, and deletes the cluster
set -euo pipefail
cd "$(dirname "$0")/../.."

KIND="${KIND:-.tools/bin/kind}"
KUBECTL="${KUBECTL:-.tools/bin/kubectl}"
HELM="${HELM:-.tools/bin/helm}"
CLUSTER="${E2E_CLUSTER:-acceltrain-e2e}"
NAMESPACE=acceltrain-e2e
TIMEOUT="${E2E_TIMEOUT:-900}"

command -v docker >/dev/null && docker info >/dev/null 2>&1 || {
	echo "kind-e2e: no Docker engine is reachable; kind needs one (this script runs on CI machines with Docker)" >&2
	exit 3
}
read -r OPERATOR_IMAGE _ TRAINER_CPU_IMAGE < <(make -s image-names)

kubectl() { "$KUBECTL" --context "kind-${CLUSTER}" "$@"; }

dump_logs() {
	echo "----- acceltrain jobs -----"
	kubectl get atj -A -o wide || true
	kubectl describe atj -n "$NAMESPACE" || true
	echo "----- operator -----"
	kubectl get pods -n acceltrain-system -o wide || true
	kubectl logs -n acceltrain-system deploy/acceltrain --tail=200 || true
	echo "----- trainer pods and events -----"
	kubectl get pods -n "$NAMESPACE" -o wide || true
	kubectl get events -n "$NAMESPACE" --sort-by=.lastTimestamp || true
	for pod in $(kubectl get pods -n "$NAMESPACE" -o name); do
		echo "----- $pod -----"
		kubectl logs -n "$NAMESPACE" "$pod" --tail=100 || true
	done
}

cleanup() {
	status=$?
	[ "$status" -ne 0 ] && dump_logs
	[ -z "${E2E_KEEP_CLUSTER:-}" ] && "$KIND" delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
	exit "$status"
}
trap cleanup EXIT

make image-operator image-trainer-cpu
"$KIND" create cluster --name "$CLUSTER" --wait 120s
"$KIND" load docker-image --name "$CLUSTER" "$OPERATOR_IMAGE" "$TRAINER_CPU_IMAGE"

KUBE_CONTEXT="kind-${CLUSTER}" E2E_NAMESPACE="$NAMESPACE" E2E_TIMEOUT="$TIMEOUT" \
	OPERATOR_IMAGE="$OPERATOR_IMAGE" TRAINER_CPU_IMAGE="$TRAINER_CPU_IMAGE" \
	KUBECTL="$KUBECTL" HELM="$HELM" bash tests/e2e/user-path.sh
echo "kind e2e: cpu-smoke Succeeded"
