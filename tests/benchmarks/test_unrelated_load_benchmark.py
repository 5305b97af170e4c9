"""The unrelated-load benchmark's verdict (benchmarks/unrelated_load.py; `make bench-unrelated`)."""

from __future__ import annotations

import pytest

from tests.benchmarks.scripts import load_benchmark

unrelated = load_benchmark("unrelated_load", "unrelated_load_benchmark")


def phase(name: str, rss: float, cpu: float) -> object:
    return unrelated.Phase(name, 80.0, rss, cpu, requests_per_job=12.0, launch_p50_s=1.0)


@pytest.mark.parametrize(
    ("rss_with", "cpu_with", "met"),
    [
        (119.0, 0.105, True),  # +19 MB, +5 %
        (121.0, 0.105, False),  # +21 MB
        (110.0, 0.111, False),  # +11 %
    ],
)
def test_the_targets_are_met_only_within_20_mb_and_10_percent(
    rss_with: float, cpu_with: float, met: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    verdict = unrelated.print_table(
        phase("without", 100.0, 0.100), phase("with", rss_with, cpu_with), pods=20000, jobs=2000
    )

    assert verdict is met
    table = capsys.readouterr().out
    assert ("| no |" in table) is not met


def test_the_unrelated_objects_carry_no_label_the_operator_selects() -> None:
    pod = unrelated.unrelated_pod("app-00001", "node-1")
    job = unrelated.unrelated_job("batch-00001")

    assert pod["spec"]["nodeName"] == "node-1"  # bound: kwok runs it, no scheduler needed
    assert job["spec"]["suspend"] is True  # no pods of its own
    for obj in (pod, job, job["spec"]["template"]):
        assert "acceltrain.io/job-name" not in obj["metadata"]["labels"]
