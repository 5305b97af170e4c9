"""Token classification on CoNLL files: the run ends with an entity-level report per tag."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from .conftest import render_job, run_trainer

pytestmark = [pytest.mark.training, pytest.mark.slow]

ENTITIES = {
    "PER": [["Ada", "Lovelace"], ["Alan", "Turing"], ["Grace", "Hopper"], ["Linus"], ["Barbara"]],
    "LOC": [["Paris"], ["New", "York"], ["Lagos"], ["Kyoto"], ["Buenos", "Aires"]],
    "ORG": [["Acme", "Corp"], ["Globex"], ["Initech"], ["Umbrella", "Labs"], ["Hooli"]],
}
TEMPLATES = [
    ["{PER}", "moved", "to", "{LOC}", "to", "join", "{ORG}", "."],
    ["{ORG}", "opened", "an", "office", "in", "{LOC}", "."],
    ["yesterday", "{PER}", "met", "{PER}", "at", "{ORG}", "."],
    ["the", "weather", "in", "{LOC}", "was", "mild", "for", "{PER}", "."],
]


def write_conll(path: Path, sentences: int, seed: int) -> None:
    """Two-column BIO file with -DOCSTART- and blank lines between sentences."""
    rng = random.Random(seed)
    lines = ["-DOCSTART- O", ""]
    for _ in range(sentences):
        for slot in rng.choice(TEMPLATES):
            if slot.startswith("{"):
                kind = slot[1:-1]
                words = rng.choice(ENTITIES[kind])
                lines += [f"{word} {'B' if i == 0 else 'I'}-{kind}" for i, word in enumerate(words)]
            else:
                lines.append(f"{slot} O")
        lines.append("")
    path.write_text("\n".join(lines) + "\n")


def test_ner_on_conll_files_reports_precision_recall_and_f1_per_tag(tmp_path: Path) -> None:
    train_file, eval_file = tmp_path / "train.conll", tmp_path / "eval.conll"
    write_conll(train_file, 800, seed=1)
    write_conll(eval_file, 100, seed=2)
    job = render_job(
        tmp_path,
        {
            "model": {"task": "token-classification"},
            "data": {"synthetic": None, "path": str(train_file), "evalPath": str(eval_file)},
            "training": {"maxSteps": 40, "evalEvery": 20},
        },
    )

    run = run_trainer(job)

    assert run.returncode == 0, run.tail()
    report = job.eval_report()
    assert report["task"] == "token-classification"
    assert report["sentences"] == 100
    assert set(report["per_tag"]) == {"PER", "LOC", "ORG"}
    for tag, scores in report["per_tag"].items():
        assert scores["support"] > 0, tag
        assert 0.5 <= scores["f1"] <= 1.0, (tag, scores)
        assert set(scores) == {"precision", "recall", "f1", "support"}
    assert report["micro avg"]["support"] == sum(s["support"] for s in report["per_tag"].values())
    assert job.eval_report("step-00000020")["step"] == 20
    # The same report as a table at the end of the log, one row per tag and the averages.
    tags = ("PER", "LOC", "ORG")
    table_rows = [line.split()[0] for line in run.lines if line.strip()[:3] in tags]
    assert sorted(table_rows) == ["LOC", "ORG", "PER"]
    assert any(line.strip().startswith("macro avg") for line in run.lines)
