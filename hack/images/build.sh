#!/usr/bin/env bash
# Builds acceltrain's container images with Docker when a Docker engine answers (`docker info`),
# else with podman, and prints a table of what it built (image, id, size, seconds).
#
#   bash hack/images/build.sh                      operator and trainer-cpu
#   bash hack/images/build.sh pause operator       only these
#   make images                                    pause, operator, trainer-cpu and trainer
#
# Targets:
#   base         (podman only) the Debian bookworm Python base localhost/acceltrain/python:3.11-bookworm,
#                made with mmdebstrap from the host's Debian mirror; built when absent or when its
#                recipe changed (a digest of the recipe is kept in the image's label). The other
#                targets build it when they need it.
#   pause        the local cluster's sandbox image ($PAUSE_IMAGE): FROM scratch + .tools/bin/pause
#   operator     operator/Dockerfile                            -> $OPERATOR_IMAGE
#   trainer-cpu  trainer_image/Dockerfile, ACCELERATOR=cpu      -> $TRAINER_CPU_IMAGE
#   trainer      trainer_image/Dockerfile, ACCELERATOR=cuda     -> $TRAINER_IMAGE (no GPU needed)
#
# Image names come from OPERATOR_IMAGE, TRAINER_IMAGE, TRAINER_CPU_IMAGE (the Makefile exports
# them; defaults ghcr.io/acceltrain/<name>:<version in pyproject.toml>) and PAUSE_IMAGE.
#
# With Docker the Dockerfiles' defaults are used (python:slim; the CPU trainer's torch from the
# PyTorch CPU index). With podman nothing is pulled (`--pull=never`): the Python base is made
# here, and torch comes from PyPI for both trainers (the CPU index is not reachable where there is
# no Docker; PyPI's torch is the CUDA build, which also runs on the CPU, and the two trainer images
# then share their torch layer). Layers are cached in the engine's store, so a rebuild after a
# code change takes seconds.
#
# Overrides, on either engine:
#   ACCELTRAIN_PYTHON_IMAGE       the Python base of every image but pause (PYTHON_IMAGE)
#   ACCELTRAIN_TORCH_INDEX_URL    the index the CPU trainer's torch comes from (TORCH_INDEX_URL)
#   ACCELTRAIN_IMAGE_ENGINE       docker or podman instead of the automatic choice
#   ACCELTRAIN_DEBIAN_MIRROR      the Debian mirror of the base (default: the host's apt sources)
set -euo pipefail
cd "$(dirname "$0")/../.."
repo_root="$(pwd)"

version="$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)"
OPERATOR_IMAGE="${OPERATOR_IMAGE:-ghcr.io/acceltrain/operator:${version}}"
TRAINER_IMAGE="${TRAINER_IMAGE:-ghcr.io/acceltrain/trainer:${version}}"
TRAINER_CPU_IMAGE="${TRAINER_CPU_IMAGE:-ghcr.io/acceltrain/trainer-cpu:${version}}"
PAUSE_IMAGE="${PAUSE_IMAGE:-registry.k8s.io/pause:3.10.1}"
BASE_IMAGE_NAME=localhost/acceltrain/python:3.11-bookworm
BASE_RECIPE_LABEL=io.acceltrain.base.recipe
# Packages of the base: python3 is 3.11 on bookworm; tini is the images' PID 1.
BASE_PACKAGES=python3,python3-venv,python-is-python3,ca-certificates,tini
# Certificates the base trusts besides Debian's: the host's local CAs (an egress proxy's, for
# instance), so that apt and pip in the images' RUN steps work wherever the host's tools do.
BASE_EXTRA_CA_DIR=/usr/local/share/ca-certificates

die() {
	echo "build.sh: $*" >&2
	exit 1
}

# Temporary directories (the base's root filesystem, the pause image's context), removed at exit.
temp_dirs=()
trap 'rm -rf "${temp_dirs[@]}"' EXIT
make_temp_dir() {
	temp_dirs+=("$(mktemp -d "${TMPDIR:-/var/tmp}/acceltrain-$1.XXXXXX")")
}

choose_engine() {
	if [ -n "${ACCELTRAIN_IMAGE_ENGINE:-}" ]; then
		case "${ACCELTRAIN_IMAGE_ENGINE}" in
		docker | podman) echo "${ACCELTRAIN_IMAGE_ENGINE}" ;;
		*) die "ACCELTRAIN_IMAGE_ENGINE=${ACCELTRAIN_IMAGE_ENGINE}: use docker or podman" ;;
		esac
	elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
		echo docker
	elif command -v podman >/dev/null 2>&1; then
		echo podman
	else
		die "no image engine: start a Docker engine (\`docker info\` must work), or install podman" \
			"(Debian: apt-get install podman runc mmdebstrap)"
	fi
}

# Sources for the base's apt, in one-line format: the host's Debian mirror (its apt sources) for
# bookworm, bookworm-updates and bookworm-security, else deb.debian.org.
debian_sources() {
	local uris main="" security=""
	uris="$({
		cat /etc/apt/sources.list.d/*.sources 2>/dev/null || true
		cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true
	} | sed -n -e 's/^[[:space:]]*URIs:[[:space:]]*//p' \
		-e 's/^[[:space:]]*deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]\+\).*/\2/p' |
		tr ' ' '\n' | sed 's:/*$::')"
	main="${ACCELTRAIN_DEBIAN_MIRROR:-$(grep -m1 '/debian$' <<<"${uris}" || true)}"
	main="${main:-http://deb.debian.org/debian}"
	main="${main%/}"
	if [ -z "${ACCELTRAIN_DEBIAN_MIRROR:-}" ]; then
		security="$(grep -m1 '/debian-security$' <<<"${uris}" || true)"
	fi
	security="${security:-${main}-security}"
	printf '%s\n' "deb ${main} bookworm main" "deb ${main} bookworm-updates main" \
		"deb ${security} bookworm-security main"
}

# Everything the base is made of; its digest is the base's label, so a change rebuilds it.
base_recipe() {
	echo "base-v1 ${BASE_PACKAGES}"
	debian_sources
	base_changes
	find "${BASE_EXTRA_CA_DIR}" -maxdepth 1 -name '*.crt' -type f -print0 2>/dev/null |
		sort -z | xargs -0r sha256sum
}

base_changes() {
	printf '%s\n' "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
		"ENV LANG=C.UTF-8" \
		"ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt" \
		'CMD ["python3"]'
}

base_digest() {
	base_recipe | sha256sum | cut -d' ' -f1
}

# Succeeds when the base exists and was made from the current recipe.
base_is_current() {
	podman image exists "${BASE_IMAGE_NAME}" &&
		[ "$(podman image inspect --format "{{index .Labels \"${BASE_RECIPE_LABEL}\"}}" \
			"${BASE_IMAGE_NAME}")" = "$(base_digest)" ]
}

ensure_base() {
	if base_is_current; then
		echo "build.sh: ${BASE_IMAGE_NAME} is up to date"
	else
		build_base
	fi
}

build_base() {
	command -v mmdebstrap >/dev/null || die "the Python base needs mmdebstrap (apt-get install mmdebstrap)"
	local digest workdir change
	digest="$(base_digest)"
	make_temp_dir base
	workdir="${temp_dirs[-1]}"
	local -a sources
	mapfile -t sources < <(debian_sources)
	echo "build.sh: making ${BASE_IMAGE_NAME} with mmdebstrap from ${sources[0]#deb }"
	# Documentation, man pages and translations are left out, as python:slim does; the dpkg
	# settings stay in the image for later apt-get installs. The customize hooks add the host's
	# CAs and drop the host's resolv.conf and hostname that mmdebstrap copies in.
	mmdebstrap --variant=minbase --include="${BASE_PACKAGES}" --format=tar \
		--dpkgopt='path-exclude=/usr/share/man/*' \
		--dpkgopt='path-exclude=/usr/share/doc/*' \
		--dpkgopt='path-include=/usr/share/doc/*/copyright' \
		--dpkgopt='path-exclude=/usr/share/locale/*' \
		--dpkgopt='path-exclude=/usr/share/info/*' \
		--customize-hook="for crt in '${BASE_EXTRA_CA_DIR}'/*.crt; do
			if [ -f \"\$crt\" ]; then cp \"\$crt\" \"\$1/usr/local/share/ca-certificates/\"; fi
		done
		chroot \"\$1\" update-ca-certificates" \
		--customize-hook='rm -f "$1/etc/hostname" && : >"$1/etc/resolv.conf"' \
		bookworm "${workdir}/rootfs.tar" "${sources[@]}"
	local -a changes=(--change "LABEL ${BASE_RECIPE_LABEL}=${digest}")
	while IFS= read -r change; do changes+=(--change "${change}"); done < <(base_changes)
	podman import "${changes[@]}" "${workdir}/rootfs.tar" "${BASE_IMAGE_NAME}" >/dev/null
}

# The Python base of the images on this engine, as a build argument (none: the Dockerfile's).
python_image_arg() {
	local python_image="${ACCELTRAIN_PYTHON_IMAGE:-}"
	if [ "${engine}" = podman ]; then python_image="${python_image:-${BASE_IMAGE_NAME}}"; fi
	if [ -n "${python_image}" ]; then echo "PYTHON_IMAGE=${python_image}"; fi
}

# Where the CPU trainer's torch comes from: PyPI under podman (the CPU index is not reachable
# there), the PyTorch CPU index otherwise. The CUDA trainer takes the Dockerfile's (PyPI).
cpu_torch_index() {
	if [ -n "${ACCELTRAIN_TORCH_INDEX_URL:-}" ]; then
		echo "${ACCELTRAIN_TORCH_INDEX_URL}"
	elif [ "${engine}" = podman ]; then
		echo https://pypi.org/simple
	else
		echo https://download.pytorch.org/whl/cpu
	fi
}

# Refuses, before anything is built, what cannot be built here.
preflight() {
	local target
	for target in "$@"; do
		case "${target}" in
		base)
			[ "${engine}" = podman ] || die "base: only podman builds need it (Docker pulls python:slim)"
			;;
		pause)
			[ -x .tools/bin/pause ] || die "pause: .tools/bin/pause is missing; build it with" \
				"\`bash hack/tools/build.sh pause\` (part of \`make tools\`)"
			;;
		operator | trainer-cpu | trainer) ;;
		*) die "unknown target ${target} (base, pause, operator, trainer-cpu, trainer)" ;;
		esac
	done
}

# engine build with this engine's flags: build_image NAME DOCKERFILE CONTEXT [BUILD_ARG ...]
build_image() {
	local name="$1" dockerfile="$2" context="$3" arg
	shift 3
	local -a flags=(-f "${dockerfile}" -t "${name}")
	for arg in "$@"; do flags+=(--build-arg "${arg}"); done
	if [ "${engine}" = podman ]; then
		# --pull=never: the bases are local (made here, or named by the user and loaded).
		flags+=(--pull=never --network=host --layers)
	fi
	"${engine}" build "${flags[@]}" "${context}"
}

build_pause() {
	local context
	make_temp_dir pause
	context="${temp_dirs[-1]}"
	cp .tools/bin/pause "${context}/pause"
	build_image "${PAUSE_IMAGE}" "${repo_root}/hack/images/pause.Containerfile" "${context}"
}

build_target() {
	local -a args=()
	case "$1" in
	operator | trainer-cpu | trainer)
		if [ "${engine}" = podman ] && [ -z "${ACCELTRAIN_PYTHON_IMAGE:-}" ]; then ensure_base; fi
		mapfile -t args < <(python_image_arg)
		;;
	esac
	case "$1" in
	base) ensure_base ;;
	pause) build_pause ;;
	operator) build_image "${OPERATOR_IMAGE}" operator/Dockerfile . "${args[@]}" ;;
	trainer-cpu)
		build_image "${TRAINER_CPU_IMAGE}" trainer_image/Dockerfile . "${args[@]}" \
			ACCELERATOR=cpu "TORCH_INDEX_URL=$(cpu_torch_index)"
		;;
	trainer) build_image "${TRAINER_IMAGE}" trainer_image/Dockerfile . "${args[@]}" ACCELERATOR=cuda ;;
	esac
}

image_of() {
	case "$1" in
	base) echo "${BASE_IMAGE_NAME}" ;;
	pause) echo "${PAUSE_IMAGE}" ;;
	operator) echo "${OPERATOR_IMAGE}" ;;
	trainer-cpu) echo "${TRAINER_CPU_IMAGE}" ;;
	trainer) echo "${TRAINER_IMAGE}" ;;
	esac
}

print_table() {
	local target name id size
	printf '\n%-44s %-12s %9s %7s\n' IMAGE ID SIZE SECONDS
	for target in "$@"; do
		name="$(image_of "${target}")"
		read -r id size < <("${engine}" image inspect --format '{{.Id}} {{.Size}}' "${name}")
		id="${id#sha256:}"
		printf '%-44s %-12s %6s MB %7s\n' "${name}" "${id:0:12}" "$((size / 1000000))" \
			"${seconds[${target}]}"
	done
}

main() {
	local -a targets=("$@")
	[ ${#targets[@]} -gt 0 ] || targets=(operator trainer-cpu)
	engine="$(choose_engine)"
	preflight "${targets[@]}"
	echo "build.sh: building ${targets[*]} with ${engine}"
	declare -gA seconds=()
	local target start
	for target in "${targets[@]}"; do
		start=${SECONDS}
		build_target "${target}"
		seconds[${target}]=$((SECONDS - start))
	done
	print_table "${targets[@]}"
}

main "$@"
