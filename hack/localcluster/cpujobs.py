"""Jobs that really train on the local cluster's process node, for the tests and benchmarks.

What this module owns: :data:`TORCH_EXTENSIONS_DIR`, the host directory of DeepSpeed's
JIT-built CPU ops (the shared-memory collectives) kept between runs; :func:`build_deepspeed_ops`,
which builds them once before any trainer starts; :func:`mount_extensions`, which gives a spec's
pods that directory; and :func:`tiny_bert_spec`, a two-worker CPU job that trains in seconds.

One directory for every tool: ninja rebuilds an op whenever the command that built it differs,
so a directory per tool (or per clone) compiles the op again (about 30 s on two idle cores,
minutes on a busy machine, long enough to outlast a job's progress deadline inside a pod).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from .tools import cache_path

TORCH_EXTENSIONS_DIR = cache_path("ACCELTRAIN_TORCH_EXTENSIONS_DIR", "torch-extensions")
EXTENSIONS_MOUNT = "/torch-extensions"
CPU_POOL = {"acceltrain.io/pool": "cpu"}
TRAINER_CPU_IMAGE = "ghcr.io/acceltrain/trainer-cpu:0.1.0"


class OpsBuildError(RuntimeError):
    """DeepSpeed's CPU op did not build."""


def build_deepspeed_ops() -> None:
    """Compile DeepSpeed's CPU communication op into :data:`TORCH_EXTENSIONS_DIR` in a process
    of its own; a no-op when already built."""
    TORCH_EXTENSIONS_DIR.mkdir(parents=True, exist_ok=True)
    env = {"TORCH_EXTENSIONS_DIR": str(TORCH_EXTENSIONS_DIR), "DS_ACCELERATOR": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", "from deepspeed.comm.torch import build_shm_op; build_shm_op()"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if result.returncode != 0:
        raise OpsBuildError(f"building DeepSpeed's shm op failed:\n{result.stderr[-2000:]}")


def mount_extensions(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with the host's op directory mounted and named in ``TORCH_EXTENSIONS_DIR``."""
    TORCH_EXTENSIONS_DIR.mkdir(parents=True, exist_ok=True)
    spec.setdefault("volumes", []).append(
        {
            "name": "torch-extensions",
            "mountPath": EXTENSIONS_MOUNT,
            "hostPath": {"path": str(TORCH_EXTENSIONS_DIR)},
        }
    )
    env = [item for item in spec.get("env", []) if item["name"] != "TORCH_EXTENSIONS_DIR"]
    spec["env"] = [*env, {"name": "TORCH_EXTENSIONS_DIR", "value": EXTENSIONS_MOUNT}]
    return spec


def tiny_bert_spec(
    checkpoint_dir: Path,
    *,
    workers: int = 2,
    procs: int = 1,
    steps: int = 60,
    every: int = 10,
    samples: int = 1024,
    log_every: int = 5,
    **run_policy: Any,
) -> dict[str, Any]:
    """A tiny BERT that really trains on the process node, checkpointing to a host directory."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "image": TRAINER_CPU_IMAGE,
        "workers": workers,
        "devicesPerWorker": 0,
        "procsPerWorker": procs,
        "nodePool": {"nodeSelector": dict(CPU_POOL)},
        "model": {
            "config": {
                "architecture": "bert",
                "hiddenSize": 32,
                "numLayers": 1,
                "numHeads": 2,
                "maxPositionEmbeddings": 32,
            }
        },
        "data": {"synthetic": {"numSamples": samples, "numLabels": 2}, "maxLength": 16},
        "training": {
            "maxSteps": steps,
            "microBatchSize": 8,
            "logEvery": log_every,
            "scheduler": {"type": "linear", "warmupSteps": 2},
        },
        "deepspeed": {"zero": {"stage": 1}, "precision": "fp32"},
        "checkpoint": {"path": "/checkpoints", "everySteps": every, "keep": 2},
        "volumes": [
            {
                "name": "checkpoints",
                "mountPath": "/checkpoints",
                "hostPath": {"path": str(checkpoint_dir)},
            }
        ],
        "runPolicy": {"backoffSeconds": 1, "gangTimeoutSeconds": 120, **run_policy},
    }
    return mount_extensions(spec)
