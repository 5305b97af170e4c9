#!/usr/bin/env bash
# The user's path on a cluster that runs real containers, shared by the kind e2e script and the
# local cluster's real-node test so that the two cannot drift:
#
#  1. helm install of charts/acceltrain: the operator runs as a pod from its image under the
#     chart's ServiceAccount (images are already on the nodes: pullPolicy Never)
#  2. kubectl apply of manifests/examples/cpu-smoke.yaml (its checkpoint PVC and the job)
#  3. waits for Succeeded, showing `kubectl get atj` as it goes; checks a trainer's metrics
#     endpoint through `kubectl port-forward` while the job runs
#  4. prints the job's status and the evaluation report the trainer wrote
#
# Environment: KUBECTL, HELM (binaries), KUBECONFIG and KUBE_CONTEXT (optional) select the
# cluster; OPERATOR_IMAGE and TRAINER_CPU_IMAGE the images; E2E_NAMESPACE the job's namespace
# (created; the release goes to acceltrain-system); E2E_TIMEOUT seconds for the job;
# E2E_RELEASE the Helm release name; E2E_MAX_STEPS, when set, replaces the example's maxSteps
# (on a fast machine its 40 steps are over in seconds, too short a window to look inside a running
# trainer); E2E_HELM_VALUES, when set, a further values file for the release (the real-node test
# turns the PodMonitor and ServiceMonitor on with it). Leaves everything installed; the caller
# cleans up.
set -euo pipefail
cd "$(dirname "$0")/../.."

KUBECTL="${KUBECTL:-.tools/bin/kubectl}"
HELM="${HELM:-.tools/bin/helm}"
NAMESPACE="${E2E_NAMESPACE:-acceltrain-e2e}"
RELEASE="${E2E_RELEASE:-acceltrain}"
TIMEOUT="${E2E_TIMEOUT:-900}"
: "${OPERATOR_IMAGE:?set OPERATOR_IMAGE (make -s image-names)}"
: "${TRAINER_CPU_IMAGE:?set TRAINER_CPU_IMAGE (make -s image-names)}"
context_flags=()
[ -n "${KUBE_CONTEXT:-}" ] && context_flags=(--context "$KUBE_CONTEXT")
helm_flags=()
[ -n "${KUBE_CONTEXT:-}" ] && helm_flags=(--kube-context "$KUBE_CONTEXT")
values_flags=(--values tests/e2e/ci-values.yaml)
[ -n "${E2E_HELM_VALUES:-}" ] && values_flags+=(--values "$E2E_HELM_VALUES")

kubectl() { "$KUBECTL" "${context_flags[@]}" "$@"; }

"$HELM" "${helm_flags[@]}" install "$RELEASE" charts/acceltrain \
	--namespace acceltrain-system --create-namespace --wait --timeout 300s \
	"${values_flags[@]}" \
	--set "image.repository=${OPERATOR_IMAGE%:*}" --set "image.tag=${OPERATOR_IMAGE##*:}" \
	--set "trainer.image=${TRAINER_CPU_IMAGE}"
echo "operator: $(kubectl get pods -n acceltrain-system -l app.kubernetes.io/instance="$RELEASE" --no-headers)"

kubectl create namespace "$NAMESPACE"
edits=(-e "s|image: .*trainer-cpu.*|image: ${TRAINER_CPU_IMAGE}|")
if [ -n "${E2E_MAX_STEPS:-}" ]; then
	edits+=(-e "s|^    maxSteps: .*|    maxSteps: ${E2E_MAX_STEPS}|")
fi
sed "${edits[@]}" manifests/examples/cpu-smoke.yaml | kubectl apply -n "$NAMESPACE" -f -

metrics_port() {
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

check_metrics() {
	local pod port forward ok=""
	pod="$(kubectl get pods -n "$NAMESPACE" -l acceltrain.io/job-name=cpu-smoke \
		--field-selector=status.phase=Running -o name | head -n 1)"
	[ -n "$pod" ] || return 1
	port="$(metrics_port)"
	kubectl port-forward -n "$NAMESPACE" "$pod" "${port}:9400" >/dev/null 2>&1 &
	forward=$!
	for _ in 1 2 3 4 5 6; do
		sleep 1
		if curl -fsS "localhost:${port}/metrics" 2>/dev/null | grep -q '^acceltrain_samples_per_second'; then
			ok=yes
			break
		fi
	done
	kill "$forward" 2>/dev/null || true
	wait "$forward" 2>/dev/null || true
	[ -n "$ok" ] || echo "no trainer metrics through port-forward to $pod yet"
	[ -n "$ok" ]
}

deadline=$((SECONDS + TIMEOUT))
metrics_checked=""
while :; do
	phase="$(kubectl get atj cpu-smoke -n "$NAMESPACE" -o jsonpath='{.status.phase}')"
	echo "$(date +%T) $(kubectl get atj cpu-smoke -n "$NAMESPACE" --no-headers || true)"
	if [ "$phase" = Running ] && [ -z "$metrics_checked" ] && check_metrics; then
		metrics_checked=yes
		echo "trainer metrics through port-forward: ok"
	fi
	[ "$phase" = Succeeded ] && break
	[ "$phase" = Failed ] && { echo "job failed" >&2; kubectl get atj cpu-smoke -n "$NAMESPACE" -o yaml >&2; exit 1; }
	[ "$SECONDS" -gt "$deadline" ] && { echo "timed out after ${TIMEOUT}s" >&2; exit 1; }
	sleep 3
done
[ -n "$metrics_checked" ] || { echo "never saw the trainer's metrics" >&2; exit 1; }
kubectl get atj cpu-smoke -n "$NAMESPACE" -o jsonpath='{.status}'
echo
echo "user path: cpu-smoke Succeeded"
