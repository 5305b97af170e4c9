"""The other tasks and model sources: a causal LM (GPT-2 shape) that learns its text and reports
perplexity, and fine-tuning from a pretrained model directory in the pod, offline."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoModelForCausalLM

from .conftest import render_job, run_trainer

pytestmark = [pytest.mark.training, pytest.mark.slow]

SENTENCES = [
    "the cat sat on the mat and looked at the door",
    "one two three four five six seven eight nine ten",
    "red orange yellow green blue indigo violet",
    "monday tuesday wednesday thursday friday saturday sunday",
]


def test_a_causal_lm_learns_its_text_and_reports_perplexity(tmp_path: Path) -> None:
    rng = random.Random(0)
    data = tmp_path / "text.jsonl"
    data.write_text("".join(json.dumps({"text": rng.choice(SENTENCES)}) + "\n" for _ in range(800)))
    job = render_job(
        tmp_path,
        {
            "model": {"task": "causal-lm", "config": {"architecture": "gpt2"}},
            "data": {"synthetic": None, "path": str(data), "evalFraction": 0.1},
            "training": {"maxSteps": 40, "evalEvery": 10},
        },
    )

    run = run_trainer(job)

    assert run.returncode == 0, run.tail()
    early, final = job.eval_report("step-00000010"), job.eval_report()
    assert final["task"] == "causal-lm" and final["tokens"] > 0
    assert final["perplexity"] < early["perplexity"]
    assert final["perplexity"] < 3.0  # four memorised sentences: little left to guess
    model = AutoModelForCausalLM.from_pretrained(job.output_dir / "model")
    assert type(model).__name__ == "GPT2LMHeadModel"


def test_fine_tuning_a_pretrained_model_from_a_local_directory(tmp_path: Path) -> None:
    synthetic = {"synthetic": {"numSamples": 1024, "numLabels": 2, "vocabWords": 256}}
    pretraining = render_job(
        tmp_path / "pretrain",
        {
            "model": {"task": "causal-lm", "config": {"architecture": "llama"}},
            "data": synthetic,
            "training": {"maxSteps": 10},
            "deepspeed": {"zero": {"stage": 3}, "precision": "bf16"},
        },
    )
    assert run_trainer(pretraining).returncode == 0
    pretrained = pretraining.output_dir / "model"
    job = render_job(
        tmp_path / "finetune",
        {
            "model": {
                "task": "sequence-classification",
                "config": None,
                "pretrained": str(pretrained),
            },
            "data": synthetic,
        },
    )

    run = run_trainer(job)

    assert run.returncode == 0, run.tail()
    progress = run.progress()
    assert progress[-1]["loss"] < 0.5 * progress[0]["loss"]
    assert job.eval_report()["accuracy"] >= 0.9
    exported = AutoConfig.from_pretrained(job.output_dir / "model")
    assert exported.architectures == ["LlamaForSequenceClassification"]
    assert exported.num_labels == 2
