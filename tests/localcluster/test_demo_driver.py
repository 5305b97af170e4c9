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
    claims_of,
    demo_documents,
    demo_job,
    host_path_of,
    progress_line,
)


def test_the_demo_applies_the_example_as_it_is_a_claim_for_its_checkpoints_and_the_job() -> None:
    documents = demo_documents()
    assert [document["kind"] for document in documents] == [
        "PersistentVolumeClaim",
        "AccelTrainJob",
    ]
    assert {document["metadata"]["namespace"] for document in documents} == {"default"}
    job = demo_job(documents)
    assert claims_of(job) == [documents[0]["metadata"]["name"]]
    checkpoint_volume = next(
        volume
        for volume in job["spec"]["volumes"]
        if volume["mountPath"] == job["spec"]["checkpoint"]["path"]
    )
    assert "persistentVolumeClaim" in checkpoint_volume


def test_the_demo_job_is_the_documented_one_and_a_valid_spec() -> None:
    document = demo_job(demo_documents())
    spec = api.parse_spec(document["spec"], name=document["metadata"]["name"])
    assert (spec.workers, spec.procs_per_worker) == (2, 2)
    assert spec.deepspeed.zero.stage == 2
    assert spec.deepspeed.precision.value == "bf16"
    assert spec.pruning is not None and spec.pruning.target_sparsity == 0.5


@pytest.mark.parametrize(
    ("pod_path", "expected"),
    [
        ("/checkpoints", "pv-3"),
        ("/checkpoints/output/model", "pv-3/output/model"),
        ("/var/cache/acceltrain/torch_extensions", "cache/torch_extensions"),
        ("/checkpointsX/model", None),
        ("/data/train.jsonl", None),
        ("/elsewhere", None),
    ],
)
def test_pod_paths_map_to_host_paths_through_bound_claims_and_hostpath_volumes(
    tmp_path: Path, pod_path: str, expected: str | None
) -> None:
    job = {
        "spec": {
            "volumes": [
                {
                    "name": "c",
                    "mountPath": "/checkpoints",
                    "persistentVolumeClaim": {"claimName": "ckpt"},
                },
                {
                    "name": "x",
                    "mountPath": "/var/cache/acceltrain",
                    "hostPath": {"path": str(tmp_path / "cache")},
                },
                # A claim that is not bound (no host directory known) maps nothing.
                {"name": "d", "mountPath": "/data", "persistentVolumeClaim": {"claimName": "d"}},
                {"name": "e", "mountPath": "/scratch", "emptyDir": {}},
            ]
        }
    }
    found = host_path_of(job, pod_path, {"ckpt": tmp_path / "pv-3"})
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
