"""The batching benchmark's table and ratios when only some contenders run (``--contenders``)."""

from __future__ import annotations

import pytest

from tests.benchmarks.scripts import load_benchmark

batching = load_benchmark("batching", "batching_benchmark")


def _runs(*tokens_per_second: float) -> list[object]:
    return [batching.Measurement(value, value / 20, 0.95, 60.0) for value in tokens_per_second]


def test_two_contenders_give_only_the_ratio_between_them_from_their_best_runs() -> None:
    args = batching.parse_args(["--contenders", "hf,grouped", "--repeats", "2"])
    assert args.contenders == ["hf", "grouped"]
    measured = {"grouped": _runs(900.0, 1000.0), "hf": _runs(800.0, 750.0)}

    lines = batching.report(measured, args)

    rows = [line for line in lines if line.startswith("| ours:") or line.startswith("| HF")]
    assert [row.split("|")[1].strip() for row in rows] == [
        "ours: Longest + groupByLength",
        "HF Trainer: group_by_length",
    ]
    assert lines[-1] == "ratio_vs_hf=1.250"
    assert not any(line.startswith("ratio_vs_max_length") for line in lines)
    assert (
        "| ours (Longest + groupByLength) / HF Trainer (group_by_length) | 1.250 | >= 1.1 | yes |"
        in lines
    )


def test_a_ratio_below_its_target_is_reported_not_met() -> None:
    args = batching.parse_args(["--contenders", "grouped,max_length"])
    measured = {"grouped": _runs(700.0), "max_length": _runs(250.0)}

    lines = batching.report(measured, args)

    assert "| ours (Longest + groupByLength) / ours (MaxLength) | 2.800 | >= 3.0 | no |" in lines
    assert lines[-1] == "ratio_vs_max_length=2.800"


def test_without_the_grouped_contender_there_is_no_ratio() -> None:
    args = batching.parse_args(["--contenders", "longest,hf"])

    lines = batching.report({"longest": _runs(500.0), "hf": _runs(900.0)}, args)

    assert not any("=" in line and line.startswith("ratio_") for line in lines)


def test_an_unknown_contender_is_refused_with_the_valid_names(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        batching.parse_args(["--contenders", "grouped,deepspeed"])

    error = capsys.readouterr().err
    assert "--contenders: no contender deepspeed" in error
    assert "grouped, longest, max_length, hf" in error


def test_by_default_every_contender_trains_one_epoch_of_the_same_sentences() -> None:
    assert batching.parse_args([]).steps == 4096 // (2 * 32)
    assert batching.parse_args(["--sentences", "2048", "--nproc", "1"]).steps == 2048 // 32
    assert batching.parse_args(["--steps", "30"]).steps == 30
    assert batching.parse_args(["--quick"]).steps == 6
