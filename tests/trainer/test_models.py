"""Models built from ``model.config``: every architecture for every task, at its longest input."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from accel_contract.config import Architecture, ModelSpec, Task
from accel_trainer.models import build_model, model_shape
from accel_trainer.tokenization import from_serialized, train_wordpiece

MAX_POSITIONS = 32
LABELS = ["negative", "neutral", "positive"]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    texts = [f"token{i % 7} word{i % 11} and the end" for i in range(100)]
    return from_serialized(train_wordpiece(texts, 80), max_length=MAX_POSITIONS)


@pytest.mark.parametrize("task", list(Task), ids=lambda task: task.value)
@pytest.mark.parametrize("architecture", list(Architecture), ids=lambda arch: arch.value)
def test_every_architecture_builds_for_every_task_and_reads_its_longest_input(
    architecture: Architecture, task: Task, tokenizer: Any
) -> None:
    spec = ModelSpec.model_validate(
        {
            "task": task.value,
            "config": {
                "architecture": architecture.value,
                "hiddenSize": 32,
                "numHeads": 2,
                "numLayers": 2,
                "maxPositionEmbeddings": MAX_POSITIONS,
            },
        }
    )
    labels = [] if task is Task.CAUSAL_LM else LABELS

    model = build_model(spec, tokenizer, labels, seed=0, activation_checkpointing=False)
    input_ids = torch.randint(5, len(tokenizer), (2, MAX_POSITIONS))
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).logits

    expected_width = len(tokenizer) if task is Task.CAUSAL_LM else len(LABELS)
    if task is Task.SEQUENCE_CLASSIFICATION:
        assert logits.shape == (2, expected_width)
    else:
        assert logits.shape == (2, MAX_POSITIONS, expected_width)
    shape = model_shape(model)
    assert (shape.num_layers, shape.hidden_size) == (2, 32)
    if task is not Task.CAUSAL_LM:
        assert model.config.id2label == dict(enumerate(LABELS))
