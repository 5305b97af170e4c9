"""kind end-to-end test (opt-in): runs tests/e2e/kind-e2e.sh where a Docker engine exists."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "tests" / "e2e" / "kind-e2e.sh"


def _docker_engine() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    return subprocess.run([docker, "info"], capture_output=True, check=False).returncode == 0


@pytest.mark.e2e
@pytest.mark.skipif(
    not _docker_engine(),
    reason="no Docker engine here, and kind needs one: run `make e2e-kind` where Docker runs",
)
def test_cpu_example_succeeds_on_kind() -> None:
    result = subprocess.run(["bash", str(SCRIPT)], cwd=REPO_ROOT, check=False, timeout=1800)
    assert result.returncode == 0


def test_e2e_script_is_valid_bash() -> None:
    result = subprocess.run(
        ["bash", "-n", str(SCRIPT)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
