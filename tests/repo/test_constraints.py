"""What CI tests is what ships: the venv, the operator image and the trainer images install the
versions of the constraint files `make lock` writes (hack/lock.sh), and those files agree.
tests/images/test_images.py checks the built images themselves."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.pinned_versions import DEV, OPERATOR, REPO_ROOT, TRAINER, pins

# Only the images install the build system (the project goes in without build isolation).
BUILD_SYSTEM = {"setuptools", "wheel"}


def test_the_venv_holds_exactly_the_pinned_versions_the_suite_runs_on() -> None:
    wrong = {
        name: (version, _installed(name))
        for name, version in pins(DEV).items()
        if _installed(name) != version
    }

    assert not wrong, f"pinned -> installed {wrong}: run `make venv` (pins: {DEV.name})"


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


@pytest.mark.parametrize("image_lock", [OPERATOR, TRAINER], ids=lambda p: p.parent.name)
def test_each_image_pins_every_package_at_the_version_the_suite_runs(image_lock: Path) -> None:
    dev = pins(DEV)
    image = pins(image_lock)

    assert image, f"{image_lock} pins nothing"
    differ = {name: (v, dev.get(name)) for name, v in image.items() if dev.get(name) not in (v,)}
    assert set(differ) <= BUILD_SYSTEM, f"image -> suite versions differ: {differ}"


def test_the_dockerfiles_install_their_pinned_versions() -> None:
    operator = (REPO_ROOT / "operator" / "Dockerfile").read_text()
    trainer = (REPO_ROOT / "trainer_image" / "Dockerfile").read_text()
    assert re.search(r"^COPY .*operator/constraints\.txt", operator, re.MULTILINE)
    assert "pip install -c constraints.txt -r requirements.txt" in operator
    assert re.search(r"^COPY .*trainer_image/constraints\.txt", trainer, re.MULTILINE)
    assert "pip install -c /tmp/acceltrain/constraints.txt -r" in trainer
    # torch and DeepSpeed are installed before the constraints file (their layers are the
    # slow ones), pinned by build arguments that must name the same versions.
    locked = pins(TRAINER)
    arguments = dict(re.findall(r"^ARG (\w+)=(\S+)$", trainer, re.MULTILINE))
    assert arguments["TORCH_VERSION"] == locked["torch"]
    assert arguments["DEEPSPEED_VERSION"] == locked["deepspeed"]


def test_pyproject_allows_every_pinned_version() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    dev = pins(DEV)
    for text in [*project["dependencies"], *(r for name in extras for r in extras[name])]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        if name in dev:
            assert requirement.specifier.contains(dev[name]), (text, dev[name])
