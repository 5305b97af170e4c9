"""The pod's exit code tells the operator whether a restart can help (ExitCode in config.py):
missing input 66 and bad data 65 are permanent, a killed peer is retryable (75, or 128 + the
signal), and each failure ends the log with one line that names the file and the fix."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest

from .conftest import LiveRun, render_job, run_trainer

pytestmark = [pytest.mark.training, pytest.mark.slow]


def test_a_missing_data_file_exits_66_before_any_rank_starts(tmp_path: Path) -> None:
    missing = tmp_path / "data" / "train.jsonl"
    job = render_job(tmp_path, {"data": {"synthetic": None, "path": str(missing)}})

    run = run_trainer(job)

    assert run.returncode == 66, run.tail()
    assert run.lines[-1] == (
        f"accel-trainer: data.path '{missing}' does not exist in this pod: mount the volume "
        "that holds it or fix data.path"
    )
    assert "local ranks" not in run.output


def test_a_record_without_its_label_field_exits_65_naming_file_line_and_field(
    tmp_path: Path,
) -> None:
    data = tmp_path / "train.jsonl"
    records = [{"text": f"sample number {i}", "label": i % 2} for i in range(100)]
    del records[41]["label"]
    data.write_text("\n".join(json.dumps(record) for record in records) + "\n")
    job = render_job(tmp_path, {"data": {"synthetic": None, "path": str(data)}})

    run = run_trainer(job)

    assert run.returncode == 65, run.tail()
    # Both ranks read the file and fail on the same record; whichever exits first is reported.
    assert re.match(r"accel-trainer: exit 65: rank [01]: ", run.lines[-1]), run.tail()
    assert f"{data}:42: field 'label' is missing or empty" in run.lines[-1]
    assert "data.labelField" in run.lines[-1]


def test_a_killed_peer_rank_makes_the_pod_exit_retryable(
    tmp_path: Path, live_runs: list[LiveRun]
) -> None:
    job = render_job(
        tmp_path,
        {
            "training": {
                "maxSteps": 100000,
                "logEvery": 1,
                "optimizer": {"type": "sgd", "lr": 0.01, "momentum": 0.9},
            },
        },
    )
    live = LiveRun(job)
    live_runs.append(live)
    live.wait_for_line(r"accel-trainer: step 3/")
    ranks = live.rank_pids()
    assert sorted(ranks) == [0, 1]

    os.kill(ranks[1], signal.SIGKILL)
    run = live.finish()

    assert run.returncode in (75, 128 + signal.SIGKILL), run.tail()
    assert run.lines[-1].startswith(f"accel-trainer: exit {run.returncode}: rank ")
