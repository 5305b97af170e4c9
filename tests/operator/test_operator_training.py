"""The operator with trainers that really train: pods on the process node run DeepSpeed on CPU.

Each test starts a tiny BERT on two worker pods (or one) and drives the operator's whole-group
behaviours through real processes: a permanent trainer error, a model that cannot fit its memory
limit, suspend/resume with the SIGTERM checkpoint, a rank slowed down (a straggler) and then
frozen. The example trained
with live progress and a killed worker resumed from its checkpoint run in real containers on the
real node (test_real_node.py).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from accel_operator import constants
from tests.operator_harness import (
    Api,
    OperatorProcess,
    condition,
    cpu_spec,
    pod_processes,
    signal_processes,
    wait_for,
)

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.slow,
    pytest.mark.training,
    pytest.mark.usefixtures("deepspeed_ops"),
]

TRAINING_TIMEOUT = 300


def _status(kube: Api, namespace: str, name: str) -> dict[str, Any]:
    return kube.status(namespace, name)


def _wait_phase(kube: Api, namespace: str, name: str, phase: str, timeout: float) -> None:
    def reached() -> bool:
        current = _status(kube, namespace, name).get("phase")
        if current == "Failed" and phase != "Failed":
            raise AssertionError(f"{name} failed: {_status(kube, namespace, name)['message']}")
        return current == phase

    wait_for(f"{name} to be {phase}", reached, timeout=timeout)


def _worker_pod(kube: Api, namespace: str, name: str, attempt: int, index: int) -> str:
    for pod in kube.children(namespace, name)["pods"]:
        labels = pod["metadata"]["labels"]
        annotations = pod["metadata"].get("annotations") or {}
        if labels.get(constants.LABEL_ATTEMPT) == str(attempt) and annotations.get(
            constants.LABEL_JOB_COMPLETION_INDEX
        ) == str(index):
            return str(pod["metadata"]["name"])
    raise AssertionError(f"no pod {index} of attempt {attempt} of {name}")


def test_a_permanent_trainer_error_fails_the_job_after_one_attempt(
    kube: Api, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    name = "bad-data"
    spec = cpu_spec(tmp_path / "checkpoints", workers=1, maxRestarts=3)
    spec["data"] = {"path": "/checkpoints/missing/train.jsonl", "maxLength": 16}
    kube.create_job(namespace, name, spec)
    _wait_phase(kube, namespace, name, "Failed", TRAINING_TIMEOUT)
    status = _status(kube, namespace, name)
    assert (status["attempt"], status["restarts"]) == (1, 0)
    assert status["lastExitCode"] == 66
    failed = condition(status, constants.CONDITION_FAILED)
    assert failed["reason"] == "MissingInput"
    assert "exit code 66" in failed["message"]
    assert "MissingInput" in kube.event_reasons(namespace, name)
    time.sleep(2)
    assert [job["metadata"]["name"] for job in kube.children(namespace, name)["jobs"]] == [
        f"{name}-a1"
    ]
    # The trainer's own line reaches the status through the container's termination message
    # (terminationMessagePolicy: FallbackToLogsOnError); the operator reads no pod logs here.
    trainer_line = "data.path '/checkpoints/missing/train.jsonl' does not exist in this pod"
    assert trainer_line in failed["message"]
    assert trainer_line in status["message"]


def test_a_model_that_cannot_fit_the_memory_limit_fails_at_once_naming_what_would_fit(
    kube: Api, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    name = "too-big"
    spec = cpu_spec(tmp_path / "checkpoints", workers=1, procs=2, maxRestarts=3)
    # 200 MiB over two ranks for a 100M-parameter model: the preflight refuses before DeepSpeed
    # allocates (the process node does not enforce the limit; the trainer reads it through the
    # downward API all the same).
    spec["model"]["config"] = {
        "architecture": "bert",
        "hiddenSize": 768,
        "numLayers": 12,
        "numHeads": 12,
        "maxPositionEmbeddings": 32,
    }
    spec["resources"] = {"limits": {"memory": "200Mi"}}
    kube.create_job(namespace, name, spec)
    _wait_phase(kube, namespace, name, "Failed", TRAINING_TIMEOUT)
    status = _status(kube, namespace, name)
    assert (status["attempt"], status["restarts"]) == (1, 0)
    assert status["lastExitCode"] == 67
    failed = condition(status, constants.CONDITION_FAILED)
    assert "memory: training needs" in failed["message"]
    assert "a rank has 100.0 MiB" in failed["message"]
    assert "deepspeed.zero.stage: 3" in failed["message"]
    assert "resources.limits.memory" in failed["message"]


def test_suspend_stops_the_pods_after_a_checkpoint_and_resume_continues_from_it(
    crd: Any, kube: Api, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    name = "pausable"
    checkpoints = tmp_path / "checkpoints"
    # No periodic checkpoint before the end: the only one to resume from is the SIGTERM one.
    kube.create_job(namespace, name, cpu_spec(checkpoints, steps=80, every=1000))
    wait_for(
        "a few training steps",
        lambda: _status(kube, namespace, name).get("progress", {}).get("step", 0) >= 5,
        timeout=TRAINING_TIMEOUT,
    )
    kube.patch_spec(namespace, name, {"runPolicy": {"suspend": True}})
    _wait_phase(kube, namespace, name, "Suspended", 60)
    wait_for("the pods to stop", lambda: not kube.children(namespace, name)["pods"], timeout=60)
    saved = sorted(path.name for path in checkpoints.glob("step-*") if path.is_dir())
    assert saved, "no checkpoint was written on SIGTERM"
    sigterm_step = int(saved[-1].removeprefix("step-"))
    status = _status(kube, namespace, name)
    assert status["restarts"] == 0
    assert condition(status, constants.CONDITION_SUSPENDED)["status"] == "True"

    kube.patch_spec(namespace, name, {"runPolicy": {"suspend": False}})
    _wait_phase(kube, namespace, name, "Succeeded", TRAINING_TIMEOUT)
    status = _status(kube, namespace, name)
    assert (status["attempt"], status["restarts"]) == (2, 0)
    assert {"Suspended", "Resumed"} <= set(kube.event_reasons(namespace, name))
    log = crd.pod_log_path(
        namespace, _worker_pod(kube, namespace, name, attempt=2, index=0), "trainer"
    ).read_text()
    assert f"resumed from step-{sigterm_step:08d}" in log


@contextlib.contextmanager
def _slowed(pids: list[int], stopped: float = 0.04, running: float = 0.02) -> Iterator[None]:
    """Stop and continue the processes over and over: they run a third of the time."""
    done = threading.Event()

    def bursts() -> None:
        while not done.is_set():
            signal_processes(pids, signal.SIGSTOP)
            time.sleep(stopped)
            signal_processes(pids, signal.SIGCONT)
            done.wait(running)

    thread = threading.Thread(target=bursts, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        signal_processes(pids, signal.SIGCONT)


def _straggler(kube: Api, namespace: str, name: str, status: str) -> dict[str, Any] | None:
    found = condition(_status(kube, namespace, name), constants.CONDITION_STRAGGLER)
    return found if found.get("status") == status else None


def test_a_slowed_rank_is_named_a_straggler_and_a_frozen_one_stalls_the_job(
    kube: Api, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    name = "frozen"
    spec = cpu_spec(
        tmp_path / "checkpoints",
        workers=2,
        steps=20000,
        every=20000,
        progressDeadlineSeconds=10,
        restartOnStall=False,
        stragglerChecks=2,
    )
    kube.create_job(namespace, name, spec)
    wait_for(
        "training steps",
        lambda: _status(kube, namespace, name).get("progress", {}).get("step", 0) >= 3,
        timeout=TRAINING_TIMEOUT,
    )
    pod = _worker_pod(kube, namespace, name, attempt=1, index=1)
    processes = pod_processes(pod)
    assert processes
    wait_for("Straggler=False", lambda: _straggler(kube, namespace, name, "False"), timeout=40)

    # Rank 1 runs a third of the time: its own work per step triples, rank 0's does not.
    with _slowed(processes):
        slow = wait_for(
            "Straggler=True", lambda: _straggler(kube, namespace, name, "True"), timeout=60
        )
    assert slow["reason"] == "SlowRank"
    assert f"rank 1 (pod {pod} on node " in slow["message"]
    spread = _status(kube, namespace, name)["rankSpread"]
    assert (spread["rank"], spread["pod"]) == (1, pod)
    assert spread["ownSeconds"] > 1.5 * spread["othersMedianSeconds"]
    events = kube.events(namespace, name)
    assert any(e["reason"] == "SlowRank" and e["type"] == "Warning" for e in events)

    # Frozen: rank 0 waits for it in the gradient reduction, and the step stops.
    signal_processes(processes, signal.SIGSTOP)
    try:
        stalled = wait_for(
            "Progressing=False with reason Stalled",
            lambda: (
                (
                    c := condition(_status(kube, namespace, name), constants.CONDITION_PROGRESSING)
                ).get("reason")
                == "Stalled"
                and c
            ),
            timeout=40,
        )
    finally:
        signal_processes(processes, signal.SIGCONT)
    assert stalled["status"] == "False"
    assert "progressDeadlineSeconds (10 s)" in stalled["message"]
    events = kube.events(namespace, name)
    assert any(e["reason"] == "Stalled" and e["type"] == "Warning" for e in events)
    status = _status(kube, namespace, name)
    assert (status["phase"], status["restarts"]) == ("Running", 0)

    wait_for(
        "Progressing=True once the steps advance again",
        lambda: (
            condition(_status(kube, namespace, name), constants.CONDITION_PROGRESSING).get("status")
            == "True"
        ),
        timeout=60,
    )
    recovered = wait_for(
        "Straggler=False once rank 1 runs freely",
        lambda: _straggler(kube, namespace, name, "False"),
        timeout=60,
    )
    assert recovered["reason"] == "StragglerRecovered"
    kube.delete_job(namespace, name)
