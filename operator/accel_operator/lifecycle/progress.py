"""Progress policy: the Running transition, status.progress from rank 0's metrics, the last
checkpoint, the stall check (``runPolicy.progressDeadlineSeconds``) and stragglers."""

from __future__ import annotations

import datetime as dt
import math

from accel_operator import api, constants, straggler
from accel_operator.lifecycle.conditions import StatusDraft
from accel_operator.lifecycle.failure import restart_or_fail
from accel_operator.lifecycle.model import AttemptView, Observed, Plan, PodView, ProgressSample
from accel_operator.lifecycle.reasons import REASON_STALLED
from accel_operator.lifecycle.times import format_duration, format_time, parse_time


def _significant(value: float, digits: int = 3) -> float:
    """Round to a few significant digits so that scrape noise does not rewrite the status."""
    if value == 0 or not math.isfinite(value):
        return 0.0
    return float(round(value, digits - 1 - math.floor(math.log10(abs(value)))))


def update_progress(
    spec: api.AccelTrainJobSpec,
    previous: api.Progress,
    sample: ProgressSample,
    now: dt.datetime,
) -> api.Progress:
    """status.progress from rank 0's sample: job-wide rates, ETA, and when the step last moved."""
    world = spec.world_size
    samples_per_second = _significant(sample.samples_per_second * world)
    tokens_per_second = _significant(sample.tokens_per_second * world)
    total_steps = spec.training.max_steps
    moved = sample.step != previous.step or previous.last_step_time is None
    last_step_time = format_time(now) if moved else previous.last_step_time
    eta = None
    samples_per_step = spec.training.micro_batch_size * spec.training.gradient_accumulation
    if total_steps is not None and sample.samples_per_second > 0:
        steps_per_second = sample.samples_per_second / samples_per_step
        eta = format_duration(max(0, total_steps - sample.step) / steps_per_second)
    return api.Progress(
        step=max(0, sample.step),
        total_steps=total_steps,
        samples_per_second=max(0.0, samples_per_second),
        tokens_per_second=max(0.0, tokens_per_second),
        tflops_per_device=max(0.0, _significant(sample.tflops_per_device)),
        mfu=max(0.0, _significant(sample.mfu)),
        padding_efficiency=(
            min(1.0, _significant(sample.padding_efficiency))
            if sample.padding_efficiency is not None
            else None
        ),
        loss=_significant(sample.loss, 4) if sample.loss is not None else None,
        # The trainer exports 0 when nothing is pruned; only pruning jobs show a sparsity.
        sparsity=(
            min(1.0, max(0.0, _significant(sample.sparsity)))
            if sample.sparsity is not None and spec.pruning is not None
            else None
        ),
        eta=eta,
        last_step_time=last_step_time,
        estimated_memory_bytes=sample.estimated_memory_bytes,
        memory_budget_bytes=sample.memory_budget_bytes,
    )


def record_progress(
    spec: api.AccelTrainJobSpec, state: StatusDraft, sample: ProgressSample
) -> None:
    value = state.status
    before = value.progress
    value.progress = update_progress(spec, before, sample, state.now)
    if sample.checkpoint_step is not None and sample.checkpoint_step > 0:
        previous = value.last_checkpoint
        if previous is None or previous.step != sample.checkpoint_step:
            value.last_checkpoint = api.CheckpointStatus(
                step=sample.checkpoint_step,
                path=checkpoint_path(spec, sample.checkpoint_step),
                time=format_time(state.now),
            )


def checkpoint_path(spec: api.AccelTrainJobSpec, step: int) -> str:
    """The directory the trainer saves step ``step`` in (its ``step-<8 digits>`` layout)."""
    return f"{spec.checkpoint.path.rstrip('/')}/step-{step:08d}"


def supervise_running(
    spec: api.AccelTrainJobSpec,
    state: StatusDraft,
    observed: Observed,
    plan: Plan,
    attempt_job: AttemptView,
    started: list[PodView],
    reconcile_interval: float,
) -> None:
    """Every worker runs: Running once training is seen, the stall and straggler checks."""
    value = state.status
    running_since = max(
        (pod.running_since for pod in started if pod.running_since), default=state.now
    )
    if not state.is_true(constants.CONDITION_RUNNING):
        nodes = sorted({pod.node_name for pod in started if pod.node_name})
        state.set(
            constants.CONDITION_RUNNING,
            True,
            "AllWorkersRunning",
            f"all {spec.workers} worker(s) of attempt {attempt_job.attempt} run on "
            f"{', '.join(nodes) or 'their nodes'}",
        )
        if attempt_job.attempt == 1 and value.restarts == 0:
            plan.launch_seconds = max(0.0, (running_since - observed.created).total_seconds())

    sample = observed.progress
    # Once this attempt has reported a step, a scrape that fails (a busy or frozen exporter)
    # does not make it Starting again; the stall check watches it instead.
    trains = (sample is not None and sample.first_step_reported) or (
        value.phase is api.Phase.RUNNING and observed.progress_visible
    )
    if trains or not observed.progress_visible:
        value.phase = api.Phase.RUNNING
    else:
        value.phase = api.Phase.STARTING
        value.message = (
            f"all workers of attempt {attempt_job.attempt} run; waiting for the first step"
        )
    if observed.progress_visible:
        plan.requeue(reconcile_interval)
        _check_stall(spec, state, observed, plan, attempt_job, trains)
    if observed.rank_times is not None:
        _check_stragglers(spec, state, observed.rank_times)


def _check_stall(
    spec: api.AccelTrainJobSpec,
    state: StatusDraft,
    observed: Observed,
    plan: Plan,
    attempt_job: AttemptView,
    trains: bool,
) -> None:
    """Progressing: True while the step advances; False (Stalled) after the progress deadline.

    The clock starts when every worker runs, so a trainer that hangs before its first step is
    caught too, and restarts from the later of that and the last step seen.
    """
    value = state.status
    running = state.condition(constants.CONDITION_RUNNING)
    since = parse_time(running.last_transition_time) if running else None
    last_step = parse_time(value.progress.last_step_time) if trains else None
    reference = max((t for t in (since, last_step) if t is not None), default=state.now)
    limit = spec.run_policy.progress_deadline_seconds
    stalled = False
    if limit is not None:
        left = (reference + dt.timedelta(seconds=limit) - state.now).total_seconds()
        stalled = left <= 0
        if not stalled:
            plan.requeue(left)
    if not stalled:
        if trains:
            state.set(
                constants.CONDITION_PROGRESSING,
                True,
                "StepAdvancing",
                f"attempt {attempt_job.attempt} trains",
            )
            total = value.progress.total_steps
            value.message = f"training: step {value.progress.step}" + (f"/{total}" if total else "")
        return
    message = (
        f"the step has not advanced for runPolicy.progressDeadlineSeconds ({limit} s) in "
        f"attempt {attempt_job.attempt} (last step {value.progress.step})"
    )
    state.set(constants.CONDITION_PROGRESSING, False, REASON_STALLED, message)
    value.message = message
    if spec.run_policy.restart_on_stall:
        restart_or_fail(spec, state, observed, plan, attempt_job.attempt, REASON_STALLED, message)


def _check_stragglers(
    spec: api.AccelTrainJobSpec, state: StatusDraft, ranks: tuple[straggler.RankTime, ...]
) -> None:
    """Straggler: True once one rank's own work per step stays far above the others'."""
    policy, value = spec.run_policy, state.status
    verdict = straggler.judge(value.rank_spread, ranks, policy, format_time(state.now))
    if verdict is None:
        return
    value.rank_spread = verdict.spread
    if verdict.straggling:
        message = straggler.straggler_message(verdict.spread, policy)
        state.set(constants.CONDITION_STRAGGLER, True, straggler.REASON_SLOW_RANK, message)
    elif state.is_true(constants.CONDITION_STRAGGLER):
        state.set(
            constants.CONDITION_STRAGGLER,
            False,
            straggler.REASON_RECOVERED,
            f"rank {verdict.spread.rank} caught up: {straggler.even_message(policy)}",
        )
    elif state.condition(constants.CONDITION_STRAGGLER) is None:
        state.set(
            constants.CONDITION_STRAGGLER,
            False,
            straggler.REASON_EVEN,
            straggler.even_message(policy),
        )
