"""The scale benchmark's small variant as a correctness check: 60 AccelTrainJobs x 8 workers.

``benchmarks/scale.py --jobs 60 --burst 20 --interval 3`` starts its own local cluster (kwok GPU
nodes only), submits the jobs in bursts and waits for every one; this test asserts that each
reached Succeeded on its first attempt and that every worker pod was seen Running. Timing is
reported, not asserted: the shared two-core machine makes it noisy.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.operator_harness import REPO_ROOT

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

JOBS = 60
WORKERS = 8
# About two minutes on two idle cores; other work on shared cores can make it several times that.
WAIT_SECONDS = 900


def test_sixty_eight_worker_jobs_in_bursts_all_succeed_on_their_first_attempt(
    tmp_path: Path,
) -> None:
    report = tmp_path / "scale.json"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmarks" / "scale.py"),
            "--jobs",
            str(JOBS),
            "--workers",
            str(WORKERS),
            "--burst",
            "20",
            "--interval",
            "3",
            "--nodes",
            "16",
            "--timeout",
            str(WAIT_SECONDS),
            "--json",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=WAIT_SECONDS + 300,
        cwd=REPO_ROOT,
    )
    output = result.stdout + result.stderr
    assert report.exists(), output
    measured = json.loads(report.read_text())
    assert measured["phases"] == {"Succeeded": JOBS}, output
    assert measured["restarted"] == 0, output
    assert len(measured["launch_seconds"]) == JOBS, output
    assert "| launch p99 s |" in result.stdout
