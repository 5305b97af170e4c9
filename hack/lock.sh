#!/usr/bin/env bash
# Writes the constraint files that pin every Python package the project installs, resolved by
# uv from pyproject.toml (`make lock`):
#
#   hack/constraints-dev.txt       make venv, on which the whole suite runs: every extra but quality
#   operator/constraints.txt       the operator image (operator/Dockerfile)
#   trainer_image/constraints.txt  both trainer images (trainer_image/Dockerfile)
#
# The image files are resolved inside the dev file (`-c`), so a package has one version
# everywhere and the images ship what the suite tested; tests/repo/test_constraints.py checks that
# they agree, that the Dockerfiles install from them and that the venv holds exactly the dev pins.
# uv keeps the versions already in a file while pyproject.toml allows them, so after a change of
# pyproject.toml only what must move moves; `make lock UPGRADE=1` takes the newest versions allowed.
set -euo pipefail
cd "$(dirname "$0")/.."

uv=".venv/bin/uv"
[ -x "${uv}" ] || {
	echo "lock.sh: ${uv} is missing: run make venv" >&2
	exit 1
}
flags=(--quiet --python-version 3.11 --custom-compile-command "make lock")
if [ "${UPGRADE:-}" = 1 ]; then flags+=(--upgrade); fi

"${uv}" pip compile pyproject.toml "${flags[@]}" --extra operator --extra trainer --extra dev \
	--extra bench -o hack/constraints-dev.txt

# An image installs its build system too (the project is installed without build isolation).
image_lock() {
	local out="$1"
	shift
	.venv/bin/python hack/images/requirements.py pyproject.toml "$@" |
		"${uv}" pip compile - "${flags[@]}" -c hack/constraints-dev.txt -o "${out}"
}
image_lock operator/constraints.txt operator
image_lock trainer_image/constraints.txt trainer
