"""Both programs say which acceltrain they are: the version pyproject.toml gives the package."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

from accel_contract import package_version
from tests.specs import REPO_ROOT

PROJECT_VERSION = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_the_package_reports_the_projects_version() -> None:
    assert package_version() == PROJECT_VERSION


@pytest.mark.parametrize(
    ("module", "program"),
    [("accel_operator", "acceltrain-operator"), ("accel_trainer", "accel-trainer")],
)
def test_each_cli_prints_its_name_and_version(module: str, program: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", module, "--version"], capture_output=True, text=True, check=False
    )
    assert (done.returncode, done.stdout.strip()) == (0, f"{program} {PROJECT_VERSION}")
