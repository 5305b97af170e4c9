"""The operator's exporter: its own series beside the standard process and Python ones, clean for
promtool as the trainer's are."""

from __future__ import annotations

import prometheus_client

from accel_operator.metrics import OperatorMetrics
from tests.trainer.test_metrics import promtool_check, promtool_or_skip


def exposition(metrics: OperatorMetrics) -> str:
    return prometheus_client.generate_latest(metrics.registry).decode()


def test_the_operator_exports_process_memory_gc_and_its_own_series() -> None:
    metrics = OperatorMetrics()
    metrics.count_request("apply", "jobs")
    metrics.record_phase("team-a", "bert", "Running")
    metrics.record_build("0.1.0", "v1.35.0")
    text = exposition(metrics)
    for name in (
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "python_gc_collections_total",
        "python_info",
        "acceltrain_operator_leader",
        "acceltrain_operator_leader_transitions_total",
        'acceltrain_operator_jobs{phase="Running"} 1.0',
        'acceltrain_operator_build_info{kubernetes_version="v1.35.0",version="0.1.0"} 1.0',
        'acceltrain_operator_api_requests_total{resource="jobs",verb="apply"} 1.0',
        # controller-runtime's names, so that alerts written for Go controllers apply.
        'controller_runtime_reconcile_total{controller="acceltrainjob",result="success"} 0.0',
        'controller_runtime_reconcile_errors_total{controller="acceltrainjob"} 0.0',
        "controller_runtime_reconcile_time_seconds_bucket",
        'workqueue_depth{name="acceltrainjob"} 0.0',
        'workqueue_adds_total{name="acceltrainjob"} 0.0',
        "workqueue_queue_duration_seconds_bucket",
        "workqueue_work_duration_seconds_bucket",
    ):
        assert name in text, name


def test_every_restart_reason_is_exported_at_zero_before_any_restart() -> None:
    text = exposition(OperatorMetrics())
    for reason in (
        "WorkerFailed",
        "Evicted",
        "Preempted",
        "GangTimeout",
        "Stalled",
        "AttemptDeleted",
    ):
        assert f'acceltrain_operator_restarts_total{{reason="{reason}"}} 0.0' in text, reason


def test_promtool_finds_the_operators_metrics_clean() -> None:
    promtool = promtool_or_skip()
    metrics = OperatorMetrics()
    metrics.count_request("apply", "jobs")

    result = promtool_check(promtool, exposition(metrics))

    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_build_info_names_only_the_latest_versions() -> None:
    metrics = OperatorMetrics()
    metrics.record_build("0.1.0", "v1.34.2")
    metrics.record_build("0.1.0", "v1.35.0")
    series = [
        line
        for line in exposition(metrics).splitlines()
        if line.startswith("acceltrain_operator_build_info{")
    ]
    assert series == [
        'acceltrain_operator_build_info{kubernetes_version="v1.35.0",version="0.1.0"} 1.0'
    ]
