"""Evaluation scores: CoNLL entity extraction, per-tag precision/recall/F1, classification
accuracy and macro-F1, perplexity, and padding entries that do not count."""

from __future__ import annotations

import math

import pytest
import torch

from accel_contract.config import Task
from accel_trainer.data import IGNORE_INDEX, TokenizedSplit
from accel_trainer.evaluate import Evaluator, extract_entities, format_report


@pytest.mark.parametrize(
    ("tags", "entities"),
    [
        (["B-PER", "I-PER", "O", "B-LOC"], {("PER", 0, 1), ("LOC", 3, 3)}),
        (["I-ORG", "I-ORG", "O"], {("ORG", 0, 1)}),  # I- without B- starts an entity
        (["B-PER", "I-LOC", "I-LOC"], {("PER", 0, 0), ("LOC", 1, 2)}),  # type change splits
        (["B-PER", "B-PER"], {("PER", 0, 0), ("PER", 1, 1)}),
        (["O", "O"], set()),
    ],
)
def test_entities_follow_the_conll_convention(
    tags: list[str], entities: set[tuple[str, int, int]]
) -> None:
    assert extract_entities(tags) == entities


def split_of(labels: list[list[int]] | list[int], length: int = 4) -> TokenizedSplit:
    count = len(labels)
    return TokenizedSplit(
        input_ids=torch.ones(count, length, dtype=torch.int32),
        attention_mask=torch.ones(count, length, dtype=torch.int32),
        labels=torch.tensor(labels, dtype=torch.int32),
    )


def evaluator(task: Task, split: TokenizedSplit, names: list[str]) -> Evaluator:
    return Evaluator(
        task, split, names, batch_size=2, world_size=1, rank=0, device=torch.device("cpu")
    )


def logits_for(predictions: list[list[int]] | list[int], classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(predictions), classes).float() * 10


def test_ner_scores_per_tag_and_micro_average() -> None:
    names = ["O", "B-LOC", "B-PER", "I-PER"]
    gold = [[2, 3, 0, 1], [1, 0, 2, IGNORE_INDEX]]
    guess = [[2, 3, 0, 0], [1, 0, 2, 0]]  # LOC missed in sentence 1; PER and LOC right otherwise
    predictions = iter([logits_for(guess, 4)])
    split = split_of(gold)

    result = evaluator(Task.TOKEN_CLASSIFICATION, split, names).evaluate(
        lambda batch: next(predictions), reduce=False
    )

    assert result["per_tag"]["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}
    assert result["per_tag"]["LOC"]["precision"] == 1.0
    assert result["per_tag"]["LOC"]["recall"] == 0.5
    assert result["micro avg"]["support"] == 4
    assert result["recall"] == pytest.approx(3 / 4)
    assert result["token_accuracy"] == pytest.approx(6 / 7)
    assert "PER" in result["report"] and "macro avg" in result["report"]


def test_classification_accuracy_macro_f1_and_confusion_matrix() -> None:
    gold = [0, 1, 1, 2]
    guess = [0, 1, 0, 2]
    batches = iter([logits_for(guess[:2], 3), logits_for(guess[2:], 3)])

    result = evaluator(Task.SEQUENCE_CLASSIFICATION, split_of(gold), ["a", "b", "c"]).evaluate(
        lambda batch: next(batches), reduce=False
    )

    assert result["accuracy"] == 0.75
    f1_a, f1_b, f1_c = 2 / 3, 2 / 3, 1.0
    assert result["macro_f1"] == pytest.approx((f1_a + f1_b + f1_c) / 3)
    assert result["confusion_matrix"] == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert result["examples"] == 4


def test_padding_entries_of_an_uneven_shard_are_not_counted() -> None:
    split = split_of([1, 0, 1])
    shard = Evaluator(
        Task.SEQUENCE_CLASSIFICATION,
        split,
        ["x", "y"],
        batch_size=4,
        world_size=2,
        rank=1,
        device=torch.device("cpu"),
    )

    result = shard.evaluate(
        lambda batch: logits_for([0] * len(batch["input_ids"]), 2), reduce=False
    )

    assert shard.indices == [1, 0] and shard.weights == [1.0, 0.0]
    assert result["examples"] == 1 and result["accuracy"] == 1.0


def test_perplexity_is_the_exponential_of_the_mean_token_loss() -> None:
    labels = [[5, 6, 7, IGNORE_INDEX]]
    uniform = torch.zeros(1, 4, 10)

    result = evaluator(Task.CAUSAL_LM, split_of(labels), []).evaluate(
        lambda batch: uniform, reduce=False
    )

    assert result["tokens"] == 2
    assert result["perplexity"] == pytest.approx(10.0)
    assert result["loss"] == pytest.approx(math.log(10))


def test_the_report_table_has_a_row_per_class_and_the_averages() -> None:
    table = format_report(
        {
            "PER": {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2},
            "macro avg": {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2},
        }
    )

    lines = table.splitlines()
    assert lines[0].split() == ["precision", "recall", "f1-score", "support"]
    assert lines[2].split() == ["PER", "1.0000", "0.5000", "0.6667", "2"]
    assert lines[-1].split()[:2] == ["macro", "avg"]
