"""Helpers shared by the tests: the example manifests, a minimal valid spec, the Go-built tools."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_DIR = REPO_ROOT / "manifests" / "examples"

MINIMAL_SPEC: dict[str, Any] = {
    "image": "ghcr.io/acceltrain/trainer-cpu:0.1.0",
    "workers": 2,
    "devicesPerWorker": 0,
    "procsPerWorker": 2,
    "model": {"config": {"hiddenSize": 64, "numLayers": 2, "numHeads": 2}},
    "data": {"synthetic": {"numSamples": 256}},
    "training": {"maxSteps": 20},
    "checkpoint": {"path": "/checkpoints"},
    "volumes": [{"name": "ckpt", "mountPath": "/checkpoints", "hostPath": {"path": "/tmp/x"}}],
}


def example_files() -> list[Path]:
    return sorted(EXAMPLES_DIR.glob("*.yaml"))


def load_example(path: Path) -> dict[str, Any]:
    """The AccelTrainJob of an example file (which may also hold the PVCs it mounts)."""
    return example_documents(path)["AccelTrainJob"][0]


def example_documents(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Every object of an example file, by kind."""
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for document in yaml.safe_load_all(path.read_text()):
        if document:
            by_kind.setdefault(document["kind"], []).append(document)
    return by_kind


TOOLS_BIN = REPO_ROOT / ".tools" / "bin"


def require_tool(name: str) -> Path:
    """A Go-built tool from `make tools`; missing fails under CI and skips, loudly, elsewhere."""
    import os

    path = TOOLS_BIN / name
    if path.exists():
        return path
    message = f"{path} is missing: run `make tools`"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)
