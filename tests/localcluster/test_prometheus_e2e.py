"""``make demo`` end to end, and Prometheus seeing what it ran.

The demo driver (``python -m localcluster.demo up``, what ``make demo`` runs) starts its own local
cluster in a temporary state directory, the operator, and the CPU demo job, which trains in
trainer containers on the cluster's real node with its checkpoints on a claim; the test checks its
exit code and report, then asks Prometheus what it scraped: the trainer pods it discovered through
``kubernetes_sd_configs`` and the operator's own metrics. ``down`` must leave nothing behind, and
so must a Ctrl-C while the trainers run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from accel_contract.config import ENV_POD_NAME
from localcluster import Cluster
from localcluster.demo import demo_documents, demo_job
from localcluster.processes import ProcessRecord, is_alive
from localcluster.prometheus import query_range
from tests.operator_harness import REPO_ROOT, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.training, pytest.mark.real_node]

# The demo takes about two minutes on two idle cores; shared cores can make it several times that.
DEMO_TIMEOUT = 900
JOB = "cpu-demo"
# The pods' runAsUser: the trainer containers ran as this non-root user.
TRAINER_UID = 1000


def _demo(state: Path, command: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "localcluster.demo", "--state-dir", str(state), command],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=REPO_ROOT,
        **kwargs,
    )


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT / "hack"), "PYTHONUNBUFFERED": "1"}


def _recorded_processes(state: Path) -> list[ProcessRecord]:
    """The cluster components and the operator the demo recorded in its state directory."""
    records = [
        ProcessRecord.from_json(raw)
        for raw in json.loads((state / "cluster" / "state.json").read_text())["processes"]
    ]
    demo_state = state / "demo.json"
    if demo_state.exists():
        records.append(ProcessRecord.from_json(json.loads(demo_state.read_text())["operator"]))
    return records


def _demo_pod_processes() -> list[int]:
    """Pids of the demo job's trainer processes (container processes are host processes too)."""
    marker = f"{ENV_POD_NAME}={JOB}-".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(item.startswith(marker) for item in environ):
            pids.append(int(entry.name))
    return pids


def _series(base_url: str, promql: str, start: float) -> list[dict[str, Any]]:
    return query_range(base_url, promql, start=start, end=time.time(), step=2)


def _positive(series: dict[str, Any]) -> bool:
    return any(float(value) > 0 for _, value in series["values"])


def test_make_demo_trains_to_succeeded_and_prometheus_scraped_trainers_and_operator(
    tmp_path: Path,
) -> None:
    state = tmp_path / "demo"
    started = time.time()
    try:
        result = _demo(state, "up", timeout=DEMO_TIMEOUT)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert f"{JOB} Succeeded" in result.stdout, output
        assert re.search(r"accuracy \d\.\d{4}", result.stdout), output
        assert "Exported model:" in result.stdout and "int8 copy:" in result.stdout, output
        assert "Tear down with `make demo-down`." in result.stdout
        # The live progress reached the last step with a throughput and a sparsity.
        steps = demo_job(demo_documents())["spec"]["training"]["maxSteps"]
        assert re.search(rf"Succeeded\s+step +{steps}/{steps} ", result.stdout), output
        assert re.search(r"sparsity 0\.[45]\d", result.stdout), output
        peaks = re.findall(r"rank (\d+) \(pod [^)]+\): ([0-9.]+)", result.stdout)
        assert peaks and all(float(value) > 0 for _, value in peaks), output
        cluster = Cluster.attach(state / "cluster")
        # The trainers wrote to the job's claim, a local volume of the real node.
        output_dir = cluster.volume_path("default", f"{JOB}-checkpoints") / "output"
        assert (output_dir / "eval" / "final.json").exists()
        assert (output_dir / "model" / "config.json").exists()
        assert (output_dir / "model" / "config.json").stat().st_uid == TRAINER_UID

        prometheus = cluster.prometheus_url
        assert prometheus is not None
        rate = f'rate(acceltrain_train_samples_total{{acceltrain_job="{JOB}"}}[1m])'
        samples = _series(prometheus, rate, started)
        assert any(_positive(series) for series in samples), samples
        for series in samples:
            labels = series["metric"]
            # `pod` and `node` come from the pod's discovery metadata (relabelling).
            assert labels["namespace"] == "default"
            assert labels["pod"].startswith(f"{JOB}-a1-")
            assert labels["node"] == "acceltrain-node-0"
            assert labels["acceltrain_job"] == JOB
            assert not [name for name in labels if name.startswith("exported_")], labels
        assert {series["metric"]["node_rank"] for series in samples} == {"0", "1"}

        mfu = _series(prometheus, f'acceltrain_mfu_ratio{{acceltrain_job="{JOB}"}}', started)
        assert any(_positive(series) for series in mfu), mfu

        requests = _series(
            prometheus, 'acceltrain_operator_api_requests_total{job="acceltrain-operator"}', started
        )
        assert any(_positive(series) for series in requests), requests
        launches = _series(
            prometheus,
            'acceltrain_operator_launch_seconds_count{job="acceltrain-operator"}',
            started,
        )
        assert any(_positive(series) for series in launches), launches
    finally:
        down = _demo(state, "down", timeout=180)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not state.exists()
    assert not _demo_pod_processes()


def test_interrupting_the_demo_while_it_trains_stops_every_process(tmp_path: Path) -> None:
    state = tmp_path / "demo"
    demo = subprocess.Popen(
        [sys.executable, "-m", "localcluster.demo", "--state-dir", str(state), "up"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
        cwd=REPO_ROOT,
    )
    try:
        wait_for("trainer processes of the demo job", _demo_pod_processes, timeout=240)
        records = _recorded_processes(state)
        trainers = _demo_pod_processes()
        demo.send_signal(signal.SIGINT)
        output, _ = demo.communicate(timeout=180)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
            _demo(state, "down", timeout=180)
    assert demo.returncode == 130, output
    assert "interrupted" in output
    assert not [record for record in records if is_alive(record)], output
    left = [pid for pid in trainers if Path(f"/proc/{pid}").exists()]
    assert not left, f"trainer processes still alive: {left}\n{output}"
    assert not state.exists()
