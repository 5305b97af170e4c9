"""Progress: the Running transition, status.progress from rank 0's metrics, checkpoints carried
across attempts, and stalls."""

from __future__ import annotations

import pytest

from accel_operator import api, constants, lifecycle
from accel_operator.lifecycle import (
    DeleteAttempt,
    Observed,
)
from tests.operator.lifecycle.cases import (
    CREATED,
    Case,
    at,
    condition,
    job,
    make_spec,
    reasons,
    running_pods,
    sample,
    status_after,
    ts,
)


def _pods_only_running(d: lifecycle.Decision) -> None:
    assert d.status.phase is api.Phase.RUNNING
    assert d.status.workers.summary == "2/2"
    running = condition(d, constants.CONDITION_RUNNING)
    assert (running.status, running.reason) == ("True", "AllWorkersRunning")
    assert d.launch_seconds == pytest.approx(5.0)
    assert reasons(d) == ["AllWorkersRunning"]


def _waiting_for_first_step(d: lifecycle.Decision) -> None:
    assert d.status.phase is api.Phase.STARTING
    assert condition(d, constants.CONDITION_RUNNING).status == "True"
    assert d.requeue_after == pytest.approx(3.0)


def _first_step_makes_running(d: lifecycle.Decision) -> None:
    assert d.status.phase is api.Phase.RUNNING
    progress = d.status.progress
    # Rank 0's 100 samples/s times world size 4 (2 workers x 2 procs).
    assert progress.samples_per_second == 400.0
    assert progress.step == 5
    assert progress.total_steps == 20
    # 15 steps left at 100 / (8 x 1) steps per second.
    assert progress.eta == "2s"
    assert progress.last_step_time == ts(20)
    assert condition(d, constants.CONDITION_PROGRESSING).reason == "StepAdvancing"


def _stall_restarts(d: lifecycle.Decision) -> None:
    progressing = condition(d, constants.CONDITION_PROGRESSING)
    assert (progressing.status, progressing.reason) == ("False", "Stalled")
    assert d.status.phase is api.Phase.RESTARTING
    assert d.actions == (DeleteAttempt(1),)
    assert d.restart_reason == "Stalled"
    assert "Stalled" in reasons(d)


def _stall_reported_only(d: lifecycle.Decision) -> None:
    assert condition(d, constants.CONDITION_PROGRESSING).reason == "Stalled"
    assert d.status.phase is api.Phase.RUNNING
    assert d.actions == ()


CASES = [
    Case(
        "pods running and metrics out of reach: Running on pod state",
        make_spec(),
        status_after(api.Phase.STARTING),
        Observed(created=CREATED, attempts=(job(),), pods=running_pods(), progress_visible=False),
        at(10),
        _pods_only_running,
    ),
    Case(
        "pods running without a reported step: still Starting",
        make_spec(),
        status_after(api.Phase.STARTING),
        Observed(created=CREATED, attempts=(job(),), pods=running_pods()),
        at(10),
        _waiting_for_first_step,
    ),
    Case(
        "the first step makes the job Running with job-wide throughput",
        make_spec(),
        status_after(api.Phase.STARTING, conditions=[("Running", "True", "AllWorkersRunning", 8)]),
        Observed(created=CREATED, attempts=(job(),), pods=running_pods(), progress=sample(5)),
        at(20),
        _first_step_makes_running,
    ),
    Case(
        "no new step within the progress deadline restarts the attempt",
        make_spec(progressDeadlineSeconds=30),
        status_after(
            api.Phase.RUNNING,
            progress=api.Progress(step=7, last_step_time=ts(20)),
            conditions=[
                ("Running", "True", "AllWorkersRunning", 8),
                ("Progressing", "True", "StepAdvancing", 12),
            ],
        ),
        Observed(created=CREATED, attempts=(job(),), pods=running_pods(), progress=sample(7)),
        at(55),
        _stall_restarts,
    ),
    Case(
        "an exporter that stops answering while Running is caught as a stall",
        make_spec(progressDeadlineSeconds=30, restartOnStall=False),
        status_after(
            api.Phase.RUNNING,
            progress=api.Progress(step=7, last_step_time=ts(20)),
            conditions=[("Running", "True", "AllWorkersRunning", 8)],
        ),
        Observed(created=CREATED, attempts=(job(),), pods=running_pods(), progress=None),
        at(55),
        _stall_reported_only,
    ),
    Case(
        "a stall without restartOnStall is reported only",
        make_spec(progressDeadlineSeconds=30, restartOnStall=False),
        status_after(
            api.Phase.RUNNING,
            progress=api.Progress(step=7, last_step_time=ts(20)),
            conditions=[("Running", "True", "AllWorkersRunning", 8)],
        ),
        Observed(created=CREATED, attempts=(job(),), pods=running_pods(), progress=sample(7)),
        at(55),
        _stall_reported_only,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_decide(case: Case) -> None:
    case.check(lifecycle.decide(case.spec, case.status, case.observed, case.now))


def test_a_restarted_attempt_resumes_the_step_count_from_its_checkpoint() -> None:
    spec = make_spec()
    status = status_after(
        api.Phase.STARTING,
        attempt=2,
        restarts=1,
        progress=api.Progress(step=14, last_step_time=ts(20)),
        conditions=[("Running", "True", "AllWorkersRunning", 40)],
    )
    observed = Observed(
        created=CREATED,
        attempts=(job(2, created=35),),
        pods=running_pods(2),
        progress=sample(11, steps_this_process=1, checkpoint_step=10),
    )
    decision = lifecycle.decide(spec, status, observed, at(50))
    assert decision.status.progress.step == 11
    assert decision.status.phase is api.Phase.RUNNING
    assert decision.status.last_checkpoint is not None
    assert decision.status.last_checkpoint.step == 10
    assert decision.status.last_checkpoint.path == "/checkpoints/step-00000010"


def test_a_new_attempt_before_its_first_step_keeps_the_last_progress() -> None:
    spec = make_spec()
    status = status_after(
        api.Phase.STARTING, attempt=2, progress=api.Progress(step=14, samples_per_second=80.0)
    )
    observed = Observed(
        created=CREATED,
        attempts=(job(2),),
        pods=running_pods(2),
        progress=sample(0, steps_this_process=0, samples_per_second=0.0),
    )
    decision = lifecycle.decide(spec, status, observed, at(50))
    assert decision.status.progress.step == 14
    assert decision.status.progress.samples_per_second == 80.0


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (44.2, "45s"), (200, "3m20s"), (3720, "1h02m"), (183600, "2d03h")],
)
def test_durations_read_like_kubectl(seconds: float, text: str) -> None:
    assert lifecycle.format_duration(seconds) == text
