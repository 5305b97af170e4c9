"""Evaluation: loss, accuracy and macro-F1 for classification; entity-level precision, recall
and F1 per tag for NER (the CoNLL-2003 convention, like seqeval's default mode); perplexity for
causal LM.

Each rank evaluates its shard of the evaluation set (:func:`data.eval_shard`); the counts, not
the scores, are summed over ranks, so the result equals a single-process evaluation. Reports are
JSON, written by rank 0 under ``<outputDir>/eval/``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
import torch.nn.functional as functional

from accel_contract.config import Task
from accel_trainer.data import IGNORE_INDEX, OUTSIDE_TAG, TokenizedSplit, eval_shard
from accel_trainer.weights import collective_device

Forward = Callable[[dict[str, torch.Tensor]], torch.Tensor]
"""Maps a batch (input_ids, attention_mask) to logits."""


def extract_entities(tags: list[str]) -> set[tuple[str, int, int]]:
    """Entities as (type, first, last) token positions from a BIO tag sequence.

    An entity starts at ``B-X``, or at ``I-X`` that does not continue an ``X`` entity, and
    extends over the following ``I-X`` tags.
    """
    entities: set[tuple[str, int, int]] = set()
    current: tuple[str, int] | None = None
    for position, tag in enumerate([*tags, OUTSIDE_TAG]):
        prefix, _, kind = tag.partition("-")
        continues = current is not None and prefix == "I" and kind == current[0]
        if current is not None and not continues:
            entities.add((current[0], current[1], position - 1))
            current = None
        if prefix in ("B", "I") and not continues:
            current = (kind, position)
    return entities


def _scores(true_positive: float, predicted: float, gold: float) -> dict[str, float]:
    precision = true_positive / predicted if predicted else 0.0
    recall = true_positive / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "support": int(gold)}


def _averages(per_class: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    support = sum(row["support"] for row in per_class.values())
    count = len(per_class) or 1
    macro = {
        key: sum(row[key] for row in per_class.values()) / count
        for key in ("precision", "recall", "f1")
    }
    weighted = {
        key: (sum(row[key] * row["support"] for row in per_class.values()) / support)
        if support
        else 0.0
        for key in ("precision", "recall", "f1")
    }
    return {
        "macro avg": {**macro, "support": support},
        "weighted avg": {**weighted, "support": support},
    }


def format_report(rows: dict[str, dict[str, float]]) -> str:
    """A classification report table (precision, recall, F1, support per row)."""
    width = max([len(name) for name in rows] + [12])
    lines = [f"{'':>{width}}  precision    recall  f1-score   support", ""]
    for name, row in rows.items():
        if name in ("micro avg", "macro avg", "weighted avg") and lines[-1] != "":
            lines.append("")
        lines.append(
            f"{name:>{width}}  {row['precision']:9.4f} {row['recall']:9.4f} "
            f"{row['f1']:9.4f} {int(row['support']):9d}"
        )
    return "\n".join(lines)


class Evaluator:
    """Evaluates a model on this rank's shard of a tokenized split."""

    def __init__(
        self,
        task: Task,
        split: TokenizedSplit,
        label_names: list[str],
        *,
        batch_size: int,
        world_size: int,
        rank: int,
        device: torch.device,
    ) -> None:
        self.task = task
        self.split = split
        self.label_names = label_names
        self.batch_size = batch_size
        self.device = device
        self.world_size = world_size
        lengths = None if split.pad_to_max_length else split.lengths
        self.indices, self.weights = eval_shard(len(split), world_size, rank, lengths)
        self.entity_types = sorted(
            {name.partition("-")[2] for name in label_names if name != OUTSIDE_TAG}
        )

    def evaluate(self, forward: Forward, *, reduce: bool = True) -> dict[str, Any]:
        """Scores of the whole split; ``reduce`` sums counts over ranks (collective)."""
        totals: torch.Tensor | None = None
        with torch.no_grad():
            for start in range(0, len(self.indices), self.batch_size):
                indices = self.indices[start : start + self.batch_size]
                weights = torch.tensor(self.weights[start : start + self.batch_size])
                tensors = self.split.batch(indices, self.device).tensors
                logits = forward(
                    {"input_ids": tensors["input_ids"], "attention_mask": tensors["attention_mask"]}
                )
                counts = self._counts(logits.float().cpu(), tensors["labels"].cpu(), weights)
                totals = counts if totals is None else totals + counts
        if totals is None:
            totals = self._counts_size_zero()
        if reduce and self.world_size > 1 and torch_dist.is_initialized():
            on_device = totals.to(collective_device())
            torch_dist.all_reduce(on_device)
            totals = on_device.cpu()
        return self._scores_from(totals)

    # --- counting per task ----------------------------------------------------------------------
    def _counts_size_zero(self) -> torch.Tensor:
        if self.task is Task.SEQUENCE_CLASSIFICATION:
            return torch.zeros(2 + len(self.label_names) ** 2, dtype=torch.float64)
        if self.task is Task.TOKEN_CLASSIFICATION:
            return torch.zeros(4 + 3 * len(self.entity_types), dtype=torch.float64)
        return torch.zeros(2, dtype=torch.float64)

    def _counts(
        self, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        counts = self._counts_size_zero()
        if self.task is Task.SEQUENCE_CLASSIFICATION:
            losses = functional.cross_entropy(logits, labels, reduction="none")
            counts[0] = float((losses * weights).sum())
            counts[1] = float(weights.sum())
            classes = len(self.label_names)
            matrix = torch.zeros(classes, classes, dtype=torch.float64)
            matrix.index_put_(
                (labels, logits.argmax(dim=-1)), weights.to(torch.float64), accumulate=True
            )
            counts[2:] = matrix.view(-1)
            return counts
        if self.task is Task.CAUSAL_LM:
            shifted_logits = logits[:, :-1, :]
            shifted_labels = labels[:, 1:]
            losses = functional.cross_entropy(
                shifted_logits.reshape(-1, shifted_logits.shape[-1]),
                shifted_labels.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="none",
            ).view(shifted_labels.shape)
            valid = (shifted_labels != IGNORE_INDEX).float() * weights[:, None]
            counts[0] = float((losses * valid).sum())
            counts[1] = float(valid.sum())
            return counts
        losses = functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            labels.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="none",
        ).view(labels.shape)
        predicted = logits.argmax(dim=-1)
        type_index = {kind: i for i, kind in enumerate(self.entity_types)}
        for row, weight in enumerate(weights.tolist()):
            if weight == 0:
                continue
            valid = labels[row] != IGNORE_INDEX
            gold_ids = labels[row][valid].tolist()
            guess_ids = predicted[row][valid].tolist()
            counts[0] += float(losses[row][valid].sum())
            counts[1] += len(gold_ids)
            counts[2] += sum(g == p for g, p in zip(gold_ids, guess_ids, strict=True))
            counts[3] += 1
            gold = extract_entities([self.label_names[i] for i in gold_ids])
            guess = extract_entities([self.label_names[i] for i in guess_ids])
            base = 4
            for kind, _, _ in gold:
                counts[base + 3 * type_index[kind] + 2] += 1
            for entity in guess:
                if entity[0] in type_index:
                    counts[base + 3 * type_index[entity[0]] + 1] += 1
                    if entity in gold:
                        counts[base + 3 * type_index[entity[0]]] += 1
        return counts

    def _scores_from(self, totals: torch.Tensor) -> dict[str, Any]:
        values = totals.tolist()
        if self.task is Task.SEQUENCE_CLASSIFICATION:
            return self._classification_scores(values)
        if self.task is Task.CAUSAL_LM:
            tokens = values[1]
            loss = values[0] / tokens if tokens else math.nan
            return {
                "task": self.task.value,
                "tokens": int(tokens),
                "loss": loss,
                "perplexity": math.exp(min(loss, 700.0)) if tokens else math.nan,
            }
        return self._entity_scores(values)

    def _classification_scores(self, values: list[float]) -> dict[str, Any]:
        """Accuracy, per-class and macro scores from (loss, examples, confusion matrix)."""
        examples = values[1]
        classes = len(self.label_names)
        matrix = torch.tensor(values[2:]).view(classes, classes)
        per_class = {
            name: _scores(float(matrix[i, i]), float(matrix[:, i].sum()), float(matrix[i].sum()))
            for i, name in enumerate(self.label_names)
            if float(matrix[i].sum()) > 0 or float(matrix[:, i].sum()) > 0
        }
        correct = float(matrix.diag().sum())
        averages = _averages(per_class)
        return {
            "task": self.task.value,
            "examples": int(examples),
            "loss": values[0] / examples if examples else math.nan,
            "accuracy": correct / examples if examples else 0.0,
            "macro_f1": averages["macro avg"]["f1"],
            "per_class": per_class,
            "confusion_matrix": matrix.long().tolist(),
            "report": format_report({**per_class, **averages}),
        }

    def _entity_scores(self, values: list[float]) -> dict[str, Any]:
        """CoNLL-style entity scores from (loss, tokens, correct tokens, sentences, then true
        positives, predicted and gold entities of each type)."""
        tokens, correct, sentences = values[1], values[2], values[3]
        per_tag: dict[str, dict[str, float]] = {}
        total_tp = total_pred = total_gold = 0.0
        for i, kind in enumerate(self.entity_types):
            tp, predicted, gold = values[4 + 3 * i : 7 + 3 * i]
            total_tp, total_pred, total_gold = (
                total_tp + tp,
                total_pred + predicted,
                total_gold + gold,
            )
            if gold or predicted:
                per_tag[kind] = _scores(tp, predicted, gold)
        micro = _scores(total_tp, total_pred, total_gold)
        averages = _averages(per_tag)
        return {
            "task": self.task.value,
            "sentences": int(sentences),
            "loss": values[0] / tokens if tokens else math.nan,
            "token_accuracy": correct / tokens if tokens else 0.0,
            "precision": micro["precision"],
            "recall": micro["recall"],
            "f1": micro["f1"],
            "per_tag": per_tag,
            "micro avg": micro,
            **averages,
            "report": format_report({**per_tag, "micro avg": micro, **averages}),
        }


def headline(result: dict[str, Any]) -> str:
    """The one-line summary of an evaluation for the log."""
    task = result["task"]
    if task == Task.SEQUENCE_CLASSIFICATION.value:
        return (
            f"loss {result['loss']:.4f} accuracy {result['accuracy']:.4f} "
            f"macro_f1 {result['macro_f1']:.4f} examples {result['examples']}"
        )
    if task == Task.TOKEN_CLASSIFICATION.value:
        return (
            f"loss {result['loss']:.4f} f1 {result['f1']:.4f} precision "
            f"{result['precision']:.4f} recall {result['recall']:.4f} "
            f"sentences {result['sentences']}"
        )
    return (
        f"loss {result['loss']:.4f} perplexity {result['perplexity']:.2f} tokens {result['tokens']}"
    )


def write_report(result: dict[str, Any], directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(result, indent=2, sort_keys=True), encoding="utf-8")
    temporary.replace(path)
    return path
