"""The pure parts of ``make demo``'s driver: the demo job it applies and the lines it prints."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "hack"))

from accel_operator import api
from localcluster.demo import (
    ProgressView,
    demo_document,
    host_path_of,
    progress_line,
)


def test_the_demo_job_keeps_its_checkpoints_under_the_state_dir_and_its_op_cache_outside(
    tmp_path: Path,
) -> None:
    document = demo_document(tmp_path / "checkpoints", tmp_path / "cache")
    host_paths = {v["name"]: v["hostPath"]["path"] for v in document["spec"]["volumes"]}
    assert host_paths == {
        "checkpoints": str(tmp_path / "checkpoints" / "cpu-demo"),
        "extensions-cache": str(tmp_path / "cache"),
    }
    assert document["metadata"]["namespace"] == "default"


def test_the_demo_job_is_the_documented_one_and_a_valid_spec(tmp_path: Path) -> None:
    document = demo_document(tmp_path / "checkpoints", tmp_path / "cache")
    spec = api.parse_spec(document["spec"], name=document["metadata"]["name"])
    assert (spec.workers, spec.procs_per_worker) == (2, 2)
    assert spec.deepspeed.zero.stage == 2
    assert spec.deepspeed.precision.value == "bf16"
    assert spec.pruning is not None and spec.pruning.target_sparsity == 0.5


@pytest.mark.parametrize(
    ("pod_path", "expected"),
    [
        ("/checkpoints", "ckpt"),
        ("/checkpoints/output/model", "ckpt/output/model"),
        ("/var/cache/acceltrain/torch_extensions", "cache/torch_extensions"),
        ("/checkpointsX/model", None),
        ("/elsewhere", None),
    ],
)
def test_pod_paths_map_to_host_paths_through_the_hostpath_volumes(
    tmp_path: Path, pod_path: str, expected: str | None
) -> None:
    document = {
        "spec": {
            "volumes": [
                {
                    "name": "c",
                    "mountPath": "/checkpoints",
                    "hostPath": {"path": str(tmp_path / "ckpt")},
                },
                {
                    "name": "x",
                    "mountPath": "/var/cache/acceltrain",
                    "hostPath": {"path": str(tmp_path / "cache")},
                },
                {"name": "e", "mountPath": "/scratch", "emptyDir": {}},
            ]
        }
    }
    found = host_path_of(document, pod_path)
    assert found == (None if expected is None else tmp_path / expected)


def _status(**progress: Any) -> dict[str, Any]:
    return {"phase": "Running", "workers": {"summary": "2/2"}, "progress": progress}


def test_the_progress_line_shows_step_throughput_loss_sparsity_and_workers() -> None:
    line = progress_line(
        _status(
            step=75,
            totalSteps=150,
            samplesPerSecond=512.25,
            tokensPerSecond=32784.0,
            loss=1.23456,
            sparsity=0.25,
        ),
        total_steps=150,
        elapsed=83,
    )
    assert line.startswith("Running")
    assert "step   75/150 [######------]" in line
    assert "512.2 samples/s" in line
    assert "32,784 tokens/s" in line
    assert "loss 1.2346" in line
    assert "sparsity 0.25" in line
    assert "workers 2/2" in line
    assert line.endswith("1m23s")


def test_the_progress_line_before_the_first_step_shows_dashes() -> None:
    line = progress_line({"phase": "Starting"}, total_steps=150, elapsed=4)
    assert "step    0/150 [------------]" in line
    assert "loss      -" in line and "sparsity    -" in line


def test_without_a_terminal_progress_prints_a_line_per_phase_change_not_per_poll() -> None:
    out = io.StringIO()
    view = ProgressView(out)
    view.show("a", "Starting", 0)
    view.show("a", "Starting", 0)
    view.show("b", "Running", 5)
    view.show("c", "Running", 6)  # within 5 s of the last line: not printed
    view.show("d", "Succeeded", 150)
    view.end()
    assert out.getvalue().splitlines() == ["a", "b", "d"]
