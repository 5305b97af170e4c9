#!/usr/bin/env bash
# End-to-end test on kind with CPU trainers, the way a user's CI runs acceltrain.
# Needs a Docker engine; `make e2e-kind` runs it.
#
#  1. builds the operator and CPU trainer images (make image-operator image-trainer-cpu)
#  2. creates a kind cluster and loads the images into it
#  3. installs the chart with CI values (pullPolicy Never, the CPU trainer image)
#  4. applies the CPU smoke example and waits for Succeeded
#  5. checks a trainer's metrics endpoint while it runs
#  6. dumps operator and trainer logs on failure, and deletes the cluster
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

"$HELM" --kube-context "kind-${CLUSTER}" install acceltrain charts/acceltrain \
	--namespace acceltrain-system --create-namespace --wait --timeout 300s \
	--values tests/e2e/ci-values.yaml \
	--set "image.repository=${OPERATOR_IMAGE%:*}" --set "image.tag=${OPERATOR_IMAGE##*:}" \
	--set "trainer.image=${TRAINER_CPU_IMAGE}"

kubectl create namespace "$NAMESPACE"
# Trainers run as a non-root user, which cannot write a hostPath directory kubelet created as
# root: checkpoints go to a claim of kind's local-path StorageClass instead.
kubectl apply -n "$NAMESPACE" -f - <<PVC
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: cpu-smoke-checkpoints}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
PVC
sed -e "s|image: .*trainer-cpu.*|image: ${TRAINER_CPU_IMAGE}\n  imagePullPolicy: Never|" \
	-e "s|hostPath: {path: /var/lib/acceltrain/cpu-smoke}|persistentVolumeClaim: {claimName: cpu-smoke-checkpoints}|" \
	manifests/examples/cpu-smoke.yaml | kubectl apply -n "$NAMESPACE" -f -

deadline=$((SECONDS + TIMEOUT))
metrics_checked=""
while :; do
	phase="$(kubectl get atj cpu-smoke -n "$NAMESPACE" -o jsonpath='{.status.phase}')"
	echo "$(date +%T) phase=${phase:-Pending} $(kubectl get atj cpu-smoke -n "$NAMESPACE" --no-headers || true)"
	if [ "$phase" = Running ] && [ -z "$metrics_checked" ]; then
		pod="$(kubectl get pods -n "$NAMESPACE" -l acceltrain.io/job-name=cpu-smoke -o name | head -n 1)"
		kubectl port-forward -n "$NAMESPACE" "$pod" 19400:9400 >/dev/null 2>&1 &
		forward=$!
		sleep 3
		if curl -fsS localhost:19400/metrics | grep -q '^acceltrain_samples_per_second'; then
			metrics_checked=yes
			echo "trainer metrics: ok"
		fi
		kill "$forward" || true
	fi
	[ "$phase" = Succeeded ] && break
	[ "$phase" = Failed ] && { echo "job failed" >&2; exit 1; }
	[ "$SECONDS" -gt "$deadline" ] && { echo "timed out after ${TIMEOUT}s" >&2; exit 1; }
	sleep 5
done
[ -n "$metrics_checked" ] || { echo "never saw the trainer's metrics" >&2; exit 1; }
echo "kind e2e: cpu-smoke Succeeded"
