#!/bin/sh
# Installs DeepSpeed with the ops the trainer uses compiled now, at image build time, so that pods
# never compile them (the image has no compiler, and a compile at every start wastes the node):
#
#   build_deepspeed.sh cpu    shared-memory collectives and CPU Adam
#   build_deepspeed.sh cuda   fused Adam and fused LAMB for TORCH_CUDA_ARCH_LIST, and CPU Adam
#                             (ZeRO's optimizer offload)
#
# DEEPSPEED_VERSION names the version (PyPI has only its source, so it is always built here).
# The compilers are installed and removed within this one call, so they stay out of the image's
# layers. For cuda, nvcc comes from PyPI's NVIDIA wheels of the CUDA version torch was built
# for, next to the runtime headers and libraries that torch's own NVIDIA wheels installed: no
# CUDA "devel" base image is needed.
set -eu

die() {
	echo "build_deepspeed.sh: $*" >&2
	exit 1
}

accelerator="${1:-}"
: "${DEEPSPEED_VERSION:?DEEPSPEED_VERSION names the DeepSpeed to install}"
case "${accelerator}" in
cpu | cuda) ;;
*) die "the accelerator is cpu or cuda, not '${accelerator}'" ;;
esac

# The wheels of CUDA 13 and later install into nvidia/cu<major>/{bin,include,lib}: one CUDA_HOME.
# $1: torch's CUDA version, e.g. 13.2. Prints the CUDA_HOME it made.
install_nvcc() {
	major="${1%%.*}"
	[ "${major}" -ge 13 ] || die "torch is built for CUDA $1; the NVIDIA wheels of CUDA 12 and" \
		"older do not make one CUDA_HOME. Use a torch built for CUDA 13 or later."
	pip install --quiet "nvidia-cuda-nvcc==$1.*" "nvidia-nvvm==$1.*" "nvidia-cuda-crt==$1.*" >&2
	home="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia/cu${major}"
	[ -x "${home}/bin/nvcc" ] || die "no nvcc in ${home} after installing nvidia-cuda-nvcc==$1.*"
	# torch's extension builder links -lcudart from CUDA_HOME/lib64; the wheels ship lib/ and
	# only the versioned runtime.
	ln -s lib "${home}/lib64"
	ln -s "libcudart.so.${major}" "${home}/lib/libcudart.so"
	echo "${home}"
}

remove_nvcc() {
	rm -f "$1/lib64" "$1/lib/libcudart.so"
	pip uninstall --quiet --yes nvidia-cuda-nvcc nvidia-nvvm nvidia-cuda-crt
}

# Python.h comes with python:slim; a Debian python needs python3-dev. libgomp1 (the OpenMP of
# CPU Adam) stays in the image.
if python -c 'import os, sysconfig; os.stat(sysconfig.get_paths()["include"] + "/Python.h")' \
	2>/dev/null; then python_dev=; else python_dev=python3-dev; fi
apt-get update
apt-get install -y --no-install-recommends g++ libgomp1 ${python_dev}
pip install ninja packaging py-cpuinfo psutil hjson msgpack numpy

if [ "${accelerator}" = cpu ]; then
	DS_ACCELERATOR=cpu DS_BUILD_SHM_COMM=1 DS_BUILD_CPU_ADAM=1 \
		pip install --no-build-isolation "deepspeed==${DEEPSPEED_VERSION}"
else
	cuda="$(python -c 'import torch; print(torch.version.cuda or "")')"
	[ -n "${cuda}" ] || die "torch $(python -c 'import torch; print(torch.__version__)') is" \
		"not a CUDA build: install torch from PyPI or a CUDA index (TORCH_INDEX_URL)"
	: "${TORCH_CUDA_ARCH_LIST:?TORCH_CUDA_ARCH_LIST names the GPU architectures to compile for}"
	cuda_home="$(install_nvcc "${cuda}")"
	# No GPU is needed here: the architectures come from TORCH_CUDA_ARCH_LIST.
	CUDA_HOME="${cuda_home}" DS_ACCELERATOR=cuda DS_BUILD_FUSED_ADAM=1 DS_BUILD_FUSED_LAMB=1 \
		DS_BUILD_CPU_ADAM=1 \
		pip install --no-build-isolation "deepspeed==${DEEPSPEED_VERSION}"
	remove_nvcc "${cuda_home}"
fi

apt-get purge -y --autoremove g++ ${python_dev}
rm -rf /var/lib/apt/lists/* /root/.cache /tmp/*
