"""The fault-drill benchmark's verdict (benchmarks/drills.py; `make bench-drills` runs it)."""

from __future__ import annotations

from tests.benchmarks.scripts import load_benchmark

drills = load_benchmark("drills", "drills_benchmark")


def test_a_drill_that_loses_more_than_a_checkpoint_interval_is_missed() -> None:
    kill = next(d for d in drills.DRILLS if d.name == "kill")

    within = drills.row(kill, seconds=21.04, restarts=1, lost=37, every=50)
    beyond = drills.row(kill, seconds=21.0, restarts=1, lost=51, every=50)

    assert (within["recovered s"], within["lost / interval"]) == (21.0, 0.74)
    assert within["within a checkpoint interval"] == "met"
    assert (beyond["lost / interval"], beyond["within a checkpoint interval"]) == (1.02, "missed")
