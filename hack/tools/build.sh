#!/usr/bin/env bash
# Builds the pinned Kubernetes tools from Go modules into a cache outside the clone and links
# them into .tools/bin/ (what `make tools` runs).
#
#   bash hack/tools/build.sh            build (or reuse) every tool
#   bash hack/tools/build.sh kwok helm  only these tools
#
# Tools: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and kubelet
# (wrapper modules in kubernetes/ and etcd/, see pin.sh), coredns (wrapper module in
# coredns/ with the plugins the local cluster uses), containerd with its runc shim and ctr, kwok,
# helm, kind, prometheus and kueue (`go install pkg@version`), prometheus-operator (wrapper module in
# prometheus-operator/, with its CRDs), and pause, the sandbox binary
# compiled from the pause.c in the Kubernetes module (`gcc -static`; no pause image can be pulled
# here).
#
# Each binary lives in ${ACCELTRAIN_TOOLS_CACHE:-${XDG_CACHE_HOME:-~/.cache}/acceltrain/tools}/
# <name>-<version>/ next to a stamp of everything that went into it (wrapper go.mod/go.sum, Go
# version, ldflags). A binary whose stamp matches is reused, so a second run - or a fresh clone on
# the same machine - builds nothing; changing a pinned version rebuilds only the tools it affects.
# The Go build cache is the default GOCACHE, shared by every clone on the machine.
set -euo pipefail

tools_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "${tools_dir}/../.." && pwd)"
# shellcheck source=versions.env
source "${tools_dir}/versions.env"

cache_root="${ACCELTRAIN_TOOLS_CACHE:-${XDG_CACHE_HOME:-${HOME}/.cache}/acceltrain/tools}"
bin_dir="${repo_root}/.tools/bin"
share_dir="${repo_root}/.tools/share"
# Static binaries that run on any Linux host; the machines here have two cores, hence -p 2 and
# one binary at a time. -trimpath stays off so that panics name the real module paths.
export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="-buildvcs=false"
go_build_flags=(-p 2)

all_tools=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet
	coredns containerd pause kwok helm kind prometheus kueue prometheus-operator)

die() {
	echo "build.sh: $*" >&2
	exit 1
}

command -v go >/dev/null || die "go is not on PATH; install Go 1.26 (https://go.dev/dl) first"
go_version="$(go env GOVERSION)"

# The wrappers are generated from versions.env; building a wrapper that disagrees with it would
# cache a binary under the wrong version.
grep -Eq "^(require)?[[:space:]]*k8s.io/kubernetes ${KUBERNETES_VERSION}( |\$)" "${tools_dir}/kubernetes/go.mod" ||
	die "hack/tools/kubernetes/go.mod does not pin k8s.io/kubernetes ${KUBERNETES_VERSION}" \
		"(versions.env); run: bash hack/tools/pin.sh"
grep -Eq "^(require)?[[:space:]]*github.com/prometheus-operator/prometheus-operator ${PROMETHEUS_OPERATOR_VERSION}( |\$)" \
	"${tools_dir}/prometheus-operator/go.mod" ||
	die "hack/tools/prometheus-operator/go.mod does not pin ${PROMETHEUS_OPERATOR_VERSION}" \
		"(versions.env); run: bash hack/tools/pin.sh"
grep -Eq "^(require)?[[:space:]]*go.etcd.io/etcd/server/v3 ${ETCD_VERSION}( |\$)" "${tools_dir}/etcd/go.mod" ||
	die "hack/tools/etcd/go.mod does not pin etcd ${ETCD_VERSION} (versions.env);" \
		"run: bash hack/tools/pin.sh"

kube_minor="${KUBERNETES_VERSION#v1.}"
kube_minor="${kube_minor%%.*}"
kube_ldflags=""
# kubectl reports its client version from client-go, the servers from component-base.
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	kube_ldflags+=" -X ${pkg}.gitVersion=${KUBERNETES_VERSION}"
	kube_ldflags+=" -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${kube_minor}"
	kube_ldflags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.gitCommit="
done
kube_ldflags="${kube_ldflags# }"

# Prometheus reports its release (3.N.M), not the module tag, as its version.
prometheus_release="${PROMETHEUS_VERSION#v0.}"
prometheus_release="3.$((10#${prometheus_release%%.*} - 300)).${prometheus_release#*.}"
prometheus_ldflags="-X github.com/prometheus/common/version.Version=${prometheus_release}"
prometheus_tags="remove_all_sd,enable_kubernetes_sd"

# Kueue logs its release at start and sends it in its User-Agent; unset it says v0.0.0-main.
kueue_ldflags="-X sigs.k8s.io/kueue/pkg/version.GitVersion=${KUEUE_VERSION}"

# The operator reports its release as its version (`--version`, the build_info metric).
prometheus_operator_ldflags="-X github.com/prometheus/common/version.Version=${PROMETHEUS_OPERATOR_VERSION#v}"

file_digest() {
	cat "$@" | sha256sum | cut -c1-16
}

version_of() {
	case "$1" in
	etcd) echo "${ETCD_VERSION}" ;;
	kube-* | kubectl | kubelet | pause) echo "${KUBERNETES_VERSION}" ;;
	coredns) echo "${COREDNS_VERSION}" ;;
	containerd) echo "${CONTAINERD_VERSION}" ;;
	kwok) echo "${KWOK_VERSION}" ;;
	helm) echo "${HELM_VERSION}" ;;
	kind) echo "${KIND_VERSION}" ;;
	prometheus) echo "${PROMETHEUS_VERSION}" ;;
	kueue) echo "${KUEUE_VERSION}" ;;
	prometheus-operator) echo "${PROMETHEUS_OPERATOR_VERSION}" ;;
	*) die "unknown tool '$1'; known tools: ${all_tools[*]}" ;;
	esac
}

# Everything that changes the binary; a cached binary with another stamp is rebuilt.
stamp_of() {
	local name="$1"
	case "${name}" in
	etcd)
		echo "${go_version} $(file_digest "${tools_dir}/etcd/go.mod" "${tools_dir}/etcd/go.sum" \
			"${tools_dir}/etcd/main.go")"
		;;
	kube-* | kubectl | kubelet)
		echo "${go_version} $(file_digest "${tools_dir}/kubernetes/go.mod" \
			"${tools_dir}/kubernetes/go.sum") ${kube_ldflags}"
		;;
	coredns)
		echo "${go_version} $(file_digest "${tools_dir}/coredns/go.mod" "${tools_dir}/coredns/go.sum" \
			"${tools_dir}/coredns/main.go")"
		;;
	pause) echo "$(gcc -dumpfullversion) ${KUBERNETES_VERSION}" ;;
	# The suffix names the stage set of write_kwok_stages; change it when that set changes.
	kwok) echo "${go_version} ${KWOK_VERSION} stages-v1" ;;
	prometheus) echo "${go_version} ${PROMETHEUS_VERSION} ${prometheus_tags} ${prometheus_ldflags}" ;;
	# The suffix names the manifest set of copy_kueue_manifests; change it when that set changes.
	kueue) echo "${go_version} ${KUEUE_VERSION} ${kueue_ldflags} manifests-v1" ;;
	prometheus-operator)
		echo "${go_version} $(file_digest "${tools_dir}/prometheus-operator/go.mod" \
			"${tools_dir}/prometheus-operator/go.sum") ${prometheus_operator_ldflags} crds-v1"
		;;
	*) echo "${go_version} $(version_of "${name}")" ;;
	esac
}

# The kwok binary ships no stages (kwokctl writes them into its config); without them kwok refuses
# to start. These are kwokctl's "fast" set of the same release: nodes become Ready at once and
# renew their Lease, pods go to Running at once, Job-owned pods then to Succeeded.
write_kwok_stages() {
	local target="$1" module_dir stage_file
	module_dir="$(go mod download -json "sigs.k8s.io/kwok@${KWOK_VERSION}" |
		sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
	: >"${target}"
	for stage_file in "${module_dir}"/kustomize/stage/{node/fast,node/heartbeat-with-lease,pod/fast}/*.yaml; do
		[[ "$(basename "${stage_file}")" == kustomization.yaml ]] && continue
		{
			echo "---"
			cat "${stage_file}"
		} >>"${target}"
	done
	grep -q 'name: pod-ready' "${target}" || die "no kwok stages found in ${module_dir}"
}

# Kueue's CRDs and webhook configurations live in its module, not in the binary; the harness
# (hack/localcluster/kueue.py) applies them from .tools/share/kueue/ so that a cluster start needs
# no Go toolchain.
copy_kueue_manifests() {
	local target="$1" module_dir
	module_dir="$(go mod download -json "sigs.k8s.io/kueue@${KUEUE_VERSION}" |
		sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
	mkdir -p "${target}/crd"
	cp "${module_dir}"/config/components/crd/bases/*.yaml "${target}/crd/"
	cp "${module_dir}/config/components/webhook/manifests.yaml" "${target}/webhooks.yaml"
	chmod -R u+w "${target}"
	[[ -s "${target}/crd/kueue.x-k8s.io_workloads.yaml" ]] ||
		die "no Kueue CRDs found in ${module_dir}"
}

# The Prometheus Operator's CRDs (monitoring.coreos.com) come from its module, as Kueue's do;
# hack/localcluster/monitoring.py applies them from .tools/share/prometheus-operator/crd/.
copy_prometheus_operator_crds() {
	local target="$1" module_dir
	module_dir="$(cd "${tools_dir}/prometheus-operator" &&
		go mod download -json "github.com/prometheus-operator/prometheus-operator@${PROMETHEUS_OPERATOR_VERSION}" |
		sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
	mkdir -p "${target}/crd"
	cp "${module_dir}"/example/prometheus-operator-crd/*.yaml "${target}/crd/"
	chmod -R u+w "${target}"
	[[ -s "${target}/crd/monitoring.coreos.com_podmonitors.yaml" ]] ||
		die "no Prometheus Operator CRDs found in ${module_dir}"
}

# Builds one tool into $2 (an empty directory).
build_into() {
	local name="$1" out="$2"
	case "${name}" in
	etcd)
		(cd "${tools_dir}/etcd" && go build -mod=readonly "${go_build_flags[@]}" -o "${out}/etcd" .)
		;;
	kube-* | kubectl | kubelet)
		(cd "${tools_dir}/kubernetes" &&
			go build -mod=readonly "${go_build_flags[@]}" -ldflags "${kube_ldflags}" \
				-o "${out}/${name}" "k8s.io/kubernetes/cmd/${name}")
		;;
	coredns)
		(cd "${tools_dir}/coredns" && go build -mod=readonly "${go_build_flags[@]}" -o "${out}/coredns" .)
		;;
	containerd)
		# The daemon, its runc shim and ctr (used to import images); no cgo, so no btrfs snapshotter.
		GOBIN="${out}" go install "${go_build_flags[@]}" \
			"github.com/containerd/containerd/v2/cmd/containerd@${CONTAINERD_VERSION}" \
			"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@${CONTAINERD_VERSION}" \
			"github.com/containerd/containerd/v2/cmd/ctr@${CONTAINERD_VERSION}"
		;;
	pause)
		local module_dir
		module_dir="$(cd "${tools_dir}/kubernetes" && go mod download -json "k8s.io/kubernetes@${KUBERNETES_VERSION}" |
			sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
		gcc -Os -static -DVERSION="${KUBERNETES_VERSION}" -o "${out}/pause" "${module_dir}/build/pause/linux/pause.c"
		;;
	kwok)
		GOBIN="${out}" go install "${go_build_flags[@]}" "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}"
		write_kwok_stages "${out}/kwok-stages.yaml"
		;;
	helm) GOBIN="${out}" go install "${go_build_flags[@]}" "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}" ;;
	kind) GOBIN="${out}" go install "${go_build_flags[@]}" "sigs.k8s.io/kind@${KIND_VERSION}" ;;
	prometheus)
		# Only the service discovery the harness uses (plus file/static, always built in): all
		# the cloud providers' SDKs would triple the build time.
		GOBIN="${out}" go install "${go_build_flags[@]}" -tags "${prometheus_tags}" \
			-ldflags "${prometheus_ldflags}" \
			"github.com/prometheus/prometheus/cmd/prometheus@${PROMETHEUS_VERSION}"
		;;
	kueue)
		GOBIN="${out}" go install "${go_build_flags[@]}" -ldflags "${kueue_ldflags}" \
			"sigs.k8s.io/kueue/cmd/kueue@${KUEUE_VERSION}"
		copy_kueue_manifests "${out}/kueue-manifests"
		;;
	prometheus-operator)
		(cd "${tools_dir}/prometheus-operator" &&
			go build -mod=readonly "${go_build_flags[@]}" -ldflags "${prometheus_operator_ldflags}" \
				-o "${out}/prometheus-operator" \
				github.com/prometheus-operator/prometheus-operator/cmd/operator)
		copy_prometheus_operator_crds "${out}/prometheus-operator-manifests"
		;;
	esac
}

ensure_tool() {
	local name="$1"
	local version stamp entry
	version="$(version_of "${name}")"
	stamp="$(stamp_of "${name}")"
	entry="${cache_root}/${name}-${version}"
	if [[ -x "${entry}/${name}" && -f "${entry}/stamp" && "$(cat "${entry}/stamp")" == "${stamp}" ]]; then
		echo "  ${name} ${version}: cached"
	else
		echo "  ${name} ${version}: building (log: ${cache_root}/${name}-${version}.log)"
		local started=${SECONDS}
		staging="${entry}.partial.$$"
		rm -rf "${staging}"
		mkdir -p "${staging}"
		if ! build_into "${name}" "${staging}" >"${cache_root}/${name}-${version}.log" 2>&1; then
			tail -n 30 "${cache_root}/${name}-${version}.log" >&2
			rm -rf "${staging}"
			die "building ${name} ${version} failed (full log above)"
		fi
		echo "${stamp}" >"${staging}/stamp"
		# Replace the entry in one rename so that an interrupted build never looks complete.
		rm -rf "${entry}"
		mv "${staging}" "${entry}"
		staging=""
		echo "  ${name} ${version}: built in $((SECONDS - started)) s"
	fi
	ln -sfn "${entry}/${name}" "${bin_dir}/${name}"
	if [[ "${name}" == containerd ]]; then
		ln -sfn "${entry}/containerd-shim-runc-v2" "${bin_dir}/containerd-shim-runc-v2"
		ln -sfn "${entry}/ctr" "${bin_dir}/ctr"
	fi
	if [[ "${name}" == kwok ]]; then
		mkdir -p "${share_dir}"
		ln -sfn "${entry}/kwok-stages.yaml" "${share_dir}/kwok-stages.yaml"
	fi
	if [[ "${name}" == kueue ]]; then
		mkdir -p "${share_dir}"
		ln -sfn "${entry}/kueue-manifests" "${share_dir}/kueue"
	fi
	if [[ "${name}" == prometheus-operator ]]; then
		mkdir -p "${share_dir}"
		ln -sfn "${entry}/prometheus-operator-manifests" "${share_dir}/prometheus-operator"
	fi
}

# The directory of the build in progress; removed if the script is interrupted.
staging=""
trap '[[ -z "${staging}" ]] || rm -rf "${staging}"' EXIT
trap 'exit 130' INT TERM

main() {
	local selected=("$@")
	((${#selected[@]})) || selected=("${all_tools[@]}")
	mkdir -p "${cache_root}" "${bin_dir}"
	# Two clones running `make tools` at once share the cache: let one build, the other reuse.
	exec 9>"${cache_root}/.lock"
	flock 9
	echo "tools (${go_version}, cache ${cache_root}):"
	local started=${SECONDS} name
	for name in "${selected[@]}"; do
		ensure_tool "${name}"
	done
	echo "tools ready in .tools/bin/ after $((SECONDS - started)) s"
}

main "$@"
