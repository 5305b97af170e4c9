"""The images as ``make images`` builds them, started by the image engine (podman here,
Docker where it answers) the way a node starts them: non-root, read-only root filesystem, no
network. This machine has no GPU, so what a GPU node would meet before its first step is checked
here: DeepSpeed's ops are compiled into the image for the torch it ships, load without a compiler
(there is none in the image), and the entry point answers as the non-root user. Every image holds
the versions the suite runs on (its constraints file, `make lock`), and only its own package and
the contract package (accel_contract).

The CPU image also trains in real containers in tests/localcluster/test_real_node.py.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from packaging.utils import canonicalize_name

from tests.pinned_versions import OPERATOR, TRAINER, pins

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "hack"))

from localcluster.images import engine, image_names  # noqa: E402

pytestmark = pytest.mark.slow

TRAINER_UID = 10001
# podman's default limits (1048576 open files, the host's process maximum) are above what a
# sandboxed host may grant, and runc then fails with "error setting rlimit". Kubernetes nodes
# leave these to the runtime's own defaults; any value a trainer needs fits under these.
ULIMITS = ("--ulimit", "nofile=8192:8192", "--ulimit", "nproc=8192:8192")
# Loads each op the way DeepSpeed does at training time (its builder's load(), which imports the
# prebuilt module and would fall back to compiling one) and reports where every piece came from.
INSPECT_IMAGE = """
import json, os, shutil, sys
import torch
import deepspeed.git_version_info as built
from deepspeed.accelerator import get_accelerator
ops = {}
for name in sys.argv[1:]:
    builder = get_accelerator().create_op_builder(name)
    ops[name] = builder.load(verbose=False).__file__
print(json.dumps({
    "uid": os.getuid(),
    "torch": torch.__version__,
    "torch_cuda": torch.version.cuda,
    "ops_built_for": built.torch_info,
    "installed_ops": {k: bool(v) for k, v in built.installed_ops.items()},
    "ops": ops,
    "compilers": [c for c in ("nvcc", "g++", "gcc", "c++") if shutil.which(c)],
}))
"""


def _run_in_image(image: str, *args: str, entrypoint: str = "", accelerator: str = "") -> str:
    """What the image prints, run as the trainer's user with a read-only root filesystem."""
    argv = [engine(), "run", "--rm", "--network=none", "--read-only", "--tmpfs", "/tmp"]
    argv += ["--user", f"{TRAINER_UID}:{TRAINER_UID}", *ULIMITS]
    if entrypoint:
        argv += ["--entrypoint", entrypoint]
    if accelerator:
        argv += ["--env", f"DS_ACCELERATOR={accelerator}"]
    result = subprocess.run(
        [*argv, image, *args], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, f"{' '.join(argv)} {image}: {result.stderr[-3000:]}"
    return result.stdout


def _inspect(image: str, accelerator: str, builders: list[str]) -> dict[str, Any]:
    output = _run_in_image(
        image, "-c", INSPECT_IMAGE, *builders, entrypoint="python", accelerator=accelerator
    )
    report: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return report


@pytest.mark.parametrize(
    ("image", "accelerator", "builders"),
    [
        ("trainer", "cuda", ["FusedAdamBuilder", "FusedLambBuilder", "CPUAdamBuilder"]),
        ("trainer-cpu", "cpu", ["CPUAdamBuilder", "ShareMemCommBuilder"]),
    ],
)
def test_the_trainer_image_loads_its_prebuilt_ops_without_a_compiler(
    image: str, accelerator: str, builders: list[str]
) -> None:
    report = _inspect(image_names()[image], accelerator, builders)

    tested_torch = importlib.metadata.version("torch").split("+")[0]
    assert report["uid"] == TRAINER_UID
    assert report["torch"].split("+")[0] == tested_torch
    assert report["compilers"] == [], "the image keeps a compiler it only needed at build time"
    for name, module_file in report["ops"].items():
        # Prebuilt ops live in the installed package; a JIT build would land under
        # TORCH_EXTENSIONS_DIR (and fail here: no compiler).
        assert "/site-packages/deepspeed/ops/" in module_file, (name, module_file)
    if accelerator == "cuda":
        assert report["torch_cuda"], "the CUDA trainer image ships a torch without CUDA"
        # The ops were compiled against the CUDA torch in the image, not another toolkit.
        assert report["ops_built_for"]["cuda_version"] == report["torch_cuda"]
        assert report["installed_ops"]["fused_adam"] and report["installed_ops"]["fused_lamb"]


@pytest.mark.parametrize("image", ["trainer", "trainer-cpu"])
def test_the_trainer_image_answers_its_version_as_the_non_root_user(image: str) -> None:
    output = _run_in_image(image_names()[image], "--version")

    assert output.split() == ["accel-trainer", importlib.metadata.version("acceltrain")]


@pytest.mark.parametrize(
    ("image", "lock"),
    [
        ("operator", OPERATOR),
        ("trainer", TRAINER),
        ("trainer-cpu", TRAINER),
    ],
    ids=["operator", "trainer", "trainer-cpu"],
)
def test_each_image_installs_the_pinned_versions_the_suite_runs_on(image: str, lock: Path) -> None:
    listing = _run_in_image(
        image_names()[image], "-m", "pip", "list", "--format=json", entrypoint="python"
    )
    installed = {
        canonicalize_name(package["name"]): package["version"] for package in json.loads(listing)
    }
    pinned = pins(lock)

    differ = {
        name: (version, installed[name])
        for name, version in pinned.items()
        if name in installed and installed[name].split("+")[0] != version
    }
    assert not differ, f"pinned -> in the image: {differ}"
    # Everything the image runs is pinned: torch, DeepSpeed and the trainer's or operator's
    # dependencies are all in the image.
    assert {"pydantic", "prometheus-client"} <= installed.keys() & pinned.keys()


PACKAGES_PROBE = """
import importlib.util, json, shutil, sys
print(json.dumps({
    "packages": sorted(n for n in sys.argv[1:] if importlib.util.find_spec(n) is not None),
    "scripts": sorted(s for s in ("acceltrain-operator", "accel-trainer") if shutil.which(s)),
}))
"""


@pytest.mark.parametrize(
    ("image", "own_package", "script"),
    [
        ("operator", "accel_operator", "acceltrain-operator"),
        ("trainer", "accel_trainer", "accel-trainer"),
        ("trainer-cpu", "accel_trainer", "accel-trainer"),
    ],
)
def test_each_image_carries_its_own_package_and_the_contract_and_nothing_of_the_other(
    image: str, own_package: str, script: str
) -> None:
    output = _run_in_image(
        image_names()[image],
        "-c",
        PACKAGES_PROBE,
        "accel_operator",
        "accel_trainer",
        "accel_contract",
        entrypoint="python",
    )
    found = json.loads(output.strip().splitlines()[-1])

    assert found == {"packages": sorted([own_package, "accel_contract"]), "scripts": [script]}
