"""Training data: reading JSONL/CSV/CoNLL files or generating a synthetic set, labels, the
train/eval split, tokenization, and the deterministic per-rank order of micro-batches.

Reading happens on every rank before the process group starts, so bad data fails every rank the
same way, fast, with a :class:`~accel_trainer.errors.DataError` naming the file, line and field.

Order and position: epoch ``e`` visits the training set in the permutation drawn from
``seed + e``. Global micro-step ``k`` covers ``micro_batch x world_size`` consecutive entries of
that permutation; rank ``r`` takes the ``r``-th slice of ``micro_batch``. The position saved in a
checkpoint is ``(epoch, samples_into_epoch)``, so a resumed run continues with the next unseen
micro-batch, nothing repeated or skipped, and also restarts sensibly when the world size
changed (it rounds down to a whole global micro-batch). With ``data.batching.groupByLength``
the order also depends on the global micro-batch size, so a run resumed on a different world size
continues in a different order of the same epoch.

Batches are cut to their longest example (on a GPU rounded up to a multiple of 8) unless
``data.batching.padding`` is MaxLength; each :class:`Batch` says how many of its token positions
are real, which is what tokens/s and TFLOP/s count.
"""

from __future__ import annotations

import csv
import json
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from accel_contract.config import (
    DataFormat,
    DataSpec,
    ModelSpec,
    Padding,
    SyntheticDataSpec,
    Task,
)
from accel_trainer.errors import ConfigError, DataError, MissingInputError

IGNORE_INDEX = -100
"""Label value the loss ignores (padding, sub-word continuations)."""

OUTSIDE_TAG = "O"


@dataclass
class Examples:
    """Raw examples of one split: texts (or word lists for CoNLL) and label ids."""

    texts: list[str] | list[list[str]]
    labels: list[int] | list[list[int]] | None
    source: str
    """The file (or "synthetic data") the examples came from, for messages."""

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int]) -> Examples:
        texts: Any = [self.texts[i] for i in indices]
        labels: Any = None if self.labels is None else [self.labels[i] for i in indices]
        return Examples(texts=texts, labels=labels, source=self.source)


@dataclass
class Corpus:
    """The training and evaluation examples of a run plus the label names."""

    task: Task
    train: Examples
    eval: Examples | None
    label_names: list[str] = field(default_factory=list)
    test: Examples | None = None
    """data.testPath's examples, scored once after training."""

    def training_texts(self) -> Iterator[str]:
        """Training text as plain strings, for training a tokenizer."""
        for text in self.train.texts:
            yield text if isinstance(text, str) else " ".join(text)


# --- reading files ------------------------------------------------------------------------------
@dataclass
class _RawRecords:
    texts: list[Any]
    labels: list[Any]
    lines: list[int]
    path: str


def _read_jsonl(path: Path, spec: DataSpec, need_label: bool) -> _RawRecords:
    records = _RawRecords(texts=[], labels=[], lines=[], path=str(path))
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(
                    f"{path}:{line_number}: not valid JSON ({error.msg} at column {error.colno}): "
                    "each line of a JSONL file must be one JSON object"
                ) from None
            if not isinstance(record, dict):
                raise DataError(
                    f"{path}:{line_number}: expected a JSON object, found "
                    f"{type(record).__name__}: each line must look like "
                    f'{{"{spec.text_field}": "...", "{spec.label_field}": ...}}'
                )
            records.texts.append(
                _required_text(record, spec.text_field, path, line_number, "data.textField")
            )
            if need_label:
                records.labels.append(
                    _required_field(record, spec.label_field, path, line_number, "data.labelField")
                )
            records.lines.append(line_number)
    return records


def _read_csv(path: Path, spec: DataSpec, need_label: bool) -> _RawRecords:
    records = _RawRecords(texts=[], labels=[], lines=[], path=str(path))
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        wanted = [(spec.text_field, "data.textField")]
        if need_label:
            wanted.append((spec.label_field, "data.labelField"))
        for name, setting in wanted:
            if name not in header:
                raise DataError(
                    f"{path}:1: the CSV header has no column '{name}' (columns: "
                    f"{', '.join(header) or 'none'}): rename the column or set {setting}"
                )
        for row in reader:
            line_number = reader.line_num
            records.texts.append(
                _required_text(row, spec.text_field, path, line_number, "data.textField")
            )
            if need_label:
                records.labels.append(
                    _required_field(row, spec.label_field, path, line_number, "data.labelField")
                )
            records.lines.append(line_number)
    return records


def _required_field(
    record: dict[str, Any], name: str, path: Path, line_number: int, setting: str
) -> Any:
    value = record.get(name)
    if value is None or value == "":
        raise DataError(
            f"{path}:{line_number}: field '{name}' is missing or empty: add it to every record "
            f"or set {setting} to the field that holds it"
        )
    return value


def _required_text(
    record: dict[str, Any], name: str, path: Path, line_number: int, setting: str
) -> str:
    value = _required_field(record, name, path, line_number, setting)
    if not isinstance(value, str):
        raise DataError(
            f"{path}:{line_number}: field '{name}' must be a string, found "
            f"{type(value).__name__}: fix the record or set {setting}"
        )
    return value


def _read_conll(path: Path) -> tuple[list[list[str]], list[list[str]], list[int]]:
    """Sentences of (word, tag) pairs: word first, tag last, blank lines between sentences."""
    sentences: list[list[str]] = []
    tags: list[list[str]] = []
    first_lines: list[int] = []
    words: list[str] = []
    sentence_tags: list[str] = []
    start_line = 1
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            columns = line.split()
            if not columns or columns[0] == "-DOCSTART-":
                if words:
                    sentences.append(words)
                    tags.append(sentence_tags)
                    first_lines.append(start_line)
                words, sentence_tags = [], []
                continue
            if len(columns) < 2:
                raise DataError(
                    f"{path}:{line_number}: expected a token and its tag separated by whitespace, "
                    f"found '{line.strip()}': CoNLL lines are 'TOKEN ... TAG'"
                )
            tag = columns[-1]
            if tag != OUTSIDE_TAG and not (tag[:2] in ("B-", "I-") and len(tag) > 2):
                raise DataError(
                    f"{path}:{line_number}: tag '{tag}' is not a BIO tag: use O, B-TYPE or I-TYPE"
                )
            if not words:
                start_line = line_number
            words.append(columns[0])
            sentence_tags.append(tag)
    if words:
        sentences.append(words)
        tags.append(sentence_tags)
        first_lines.append(start_line)
    return sentences, tags, first_lines


# --- labels -------------------------------------------------------------------------------------
def _is_integer_label(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and value.strip().lstrip("-").isdigit()


def _label_names(raw: list[Any], num_labels: int | None) -> tuple[list[str], bool]:
    """The label vocabulary: class ids when every label is an integer, else sorted names."""
    if raw and all(_is_integer_label(value) for value in raw):
        count = num_labels if num_labels is not None else max(int(v) for v in raw) + 1
        return [str(i) for i in range(max(count, 2))], True
    names = sorted({str(value) for value in raw})
    return names, False


def _label_ids(
    records: _RawRecords, names: list[str], integer: bool, field_name: str, num_labels: int | None
) -> list[int]:
    index = {name: i for i, name in enumerate(names)}
    ids: list[int] = []
    for value, line_number in zip(records.labels, records.lines, strict=True):
        if integer:
            if not _is_integer_label(value):
                raise DataError(
                    f"{records.path}:{line_number}: field '{field_name}' is {value!r} but the "
                    "training labels are integer class ids: use an id in the same range"
                )
            label = int(value)
            if not 0 <= label < len(names):
                raise DataError(
                    f"{records.path}:{line_number}: field '{field_name}' is {label}, outside "
                    f"0..{len(names) - 1} (the model has {len(names)} labels): fix the label or "
                    "set model.numLabels"
                )
        else:
            if str(value) not in index:
                raise DataError(
                    f"{records.path}:{line_number}: field '{field_name}' is {str(value)!r}, a "
                    f"label the training data does not have ({', '.join(names[:10])}): fix the "
                    "label or add training examples of it"
                )
            label = index[str(value)]
        ids.append(label)
    if num_labels is not None and not integer and len(names) > num_labels:
        raise DataError(
            f"{records.path}: the data has {len(names)} distinct labels in field "
            f"'{field_name}' but model.numLabels is {num_labels}: raise model.numLabels or fix "
            "the labels"
        )
    return ids


def _tag_names(tags: list[list[str]], num_labels: int | None, path: str) -> list[str]:
    found = {tag for sentence in tags for tag in sentence} - {OUTSIDE_TAG}
    names = [OUTSIDE_TAG, *sorted(found)]
    if num_labels is not None and len(names) > num_labels:
        raise DataError(
            f"{path}: the data has {len(names)} distinct tags but model.numLabels is "
            f"{num_labels}: raise model.numLabels or fix the tags"
        )
    return names


def _tag_ids(
    tags: list[list[str]], first_lines: list[int], names: list[str], path: str
) -> list[list[int]]:
    index = {name: i for i, name in enumerate(names)}
    result: list[list[int]] = []
    for sentence, line_number in zip(tags, first_lines, strict=True):
        ids: list[int] = []
        for offset, tag in enumerate(sentence):
            if tag not in index:
                raise DataError(
                    f"{path}:{line_number + offset}: tag '{tag}' does not occur in the training "
                    "file: fix the tag or add training examples of it"
                )
            ids.append(index[tag])
        result.append(ids)
    return result


# --- synthetic data -----------------------------------------------------------------------------
def synthetic_examples(spec: SyntheticDataSpec, task: Task, max_words: int) -> Corpus:
    """A learnable task from a seeded generator: each class (or entity type) owns topic words.

    Sequence classification: a text mixes background words with its class's topic words.
    Token classification: topic words are single-word entities of their class's type.
    Causal LM: the same texts, so the model can learn their word statistics.
    """
    rng = random.Random(spec.seed)
    words = [f"w{i}" for i in range(spec.vocab_words)]
    topic_size = max(2, spec.vocab_words // (4 * spec.num_labels))
    topics = [words[c * topic_size : (c + 1) * topic_size] for c in range(spec.num_labels)]
    background = words[spec.num_labels * topic_size :] or words
    longest = max(6, min(48, max_words))
    texts: list[list[str]] = []
    classes: list[int] = []
    word_tags: list[list[int]] = []
    for _ in range(spec.num_samples):
        label = rng.randrange(spec.num_labels)
        length = rng.randint(min(6, longest), longest)
        sentence: list[str] = []
        sentence_tags: list[int] = []
        for _ in range(length):
            if rng.random() < 0.3:
                sentence.append(rng.choice(topics[label]))
                sentence_tags.append(1 + label)
            else:
                sentence.append(rng.choice(background))
                sentence_tags.append(0)
        texts.append(sentence)
        classes.append(label)
        word_tags.append(sentence_tags)
    source = "synthetic data"
    if task is Task.TOKEN_CLASSIFICATION:
        names = [OUTSIDE_TAG] + [f"B-T{c}" for c in range(spec.num_labels)]
        return Corpus(task, Examples(texts, word_tags, source), None, names)
    joined = [" ".join(sentence) for sentence in texts]
    if task is Task.CAUSAL_LM:
        return Corpus(task, Examples(joined, None, source), None, [])
    names = [f"class{c}" for c in range(spec.num_labels)]
    return Corpus(task, Examples(joined, classes, source), None, names)


# --- loading a corpus ---------------------------------------------------------------------------
def _existing_file(path_text: str, setting: str) -> Path:
    path = Path(path_text)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise MissingInputError(
            f"{setting} '{path_text}' {what} in this pod: mount the volume that holds it or fix "
            f"{setting}"
        )
    return path


def _read_split(
    path: Path, data: DataSpec, task: Task, label_names: list[str] | None, num_labels: int | None
) -> tuple[Examples, list[str]]:
    """One file as examples; ``label_names`` given means: use the training file's labels."""
    data_format = data.format or data.resolved_format()
    if task is Task.TOKEN_CLASSIFICATION:
        if data_format is not DataFormat.CONLL:
            raise ConfigError(
                f"data.format: token-classification reads CoNLL files, not {path.name}: "
                "set data.format to conll"
            )
        sentences, tags, first_lines = _read_conll(path)
        if not sentences:
            raise DataError(f"{path}: no sentences found: the file is empty")
        names = label_names or _tag_names(tags, num_labels, str(path))
        return Examples(sentences, _tag_ids(tags, first_lines, names, str(path)), str(path)), names
    if data_format is DataFormat.CONLL:
        raise ConfigError(
            f"data.format: CoNLL files hold token tags, which only token-classification uses "
            f"({path.name}): give a JSONL or CSV file for {task.value}"
        )
    need_label = task is Task.SEQUENCE_CLASSIFICATION
    reader = _read_csv if data_format is DataFormat.CSV else _read_jsonl
    records = reader(path, data, need_label)
    if not records.texts:
        raise DataError(f"{path}: no records found: the file is empty")
    if not need_label:
        return Examples(records.texts, None, str(path)), []
    if label_names is None:
        names, integer = _label_names(records.labels, num_labels)
    else:
        names, integer = label_names, all(name.isdigit() for name in label_names)
    ids = _label_ids(records, names, integer, data.label_field, num_labels)
    return Examples(records.texts, ids, str(path)), names


def load_corpus(data: DataSpec, model: ModelSpec, seed: int) -> Corpus:
    """Read (or generate) the data of a run and split off the evaluation set."""
    task = model.task
    if data.synthetic is not None:
        corpus = synthetic_examples(data.synthetic, task, max_words=data.max_length - 2)
        if model.num_labels is not None and len(corpus.label_names) > model.num_labels:
            raise ConfigError(
                f"model.numLabels ({model.num_labels}) is smaller than the "
                f"{len(corpus.label_names)} labels of data.synthetic: raise model.numLabels"
            )
    else:
        assert data.path is not None  # DataSpec guarantees path or synthetic
        if (data.format or data.resolved_format()) is None:
            raise ConfigError(
                f"data.format: cannot tell the format of '{data.path}' from its extension: set "
                "data.format to jsonl, csv or conll"
            )
        train_path = _existing_file(data.path, "data.path")
        train, names = _read_split(train_path, data, task, None, model.num_labels)
        corpus = Corpus(task, train, None, names)
        if data.eval_path is not None:
            eval_path = _existing_file(data.eval_path, "data.evalPath")
            held_out, _ = _read_split(eval_path, data, task, names, model.num_labels)
            corpus.eval = held_out
        if data.test_path is not None:
            test_path = _existing_file(data.test_path, "data.testPath")
            corpus.test, _ = _read_split(test_path, data, task, names, model.num_labels)
    if corpus.eval is None and data.eval_fraction > 0:
        corpus.train, corpus.eval = _hold_out(corpus.train, data.eval_fraction, seed)
    if task is not Task.CAUSAL_LM and model.num_labels is not None:
        names = corpus.label_names
        names.extend(str(i) for i in range(len(names), model.num_labels))
    return corpus


def _hold_out(examples: Examples, fraction: float, seed: int) -> tuple[Examples, Examples | None]:
    count = len(examples)
    held = math.ceil(count * fraction)
    if held == 0 or held >= count:
        return examples, None
    order = list(range(count))
    random.Random(seed).shuffle(order)
    eval_indices = sorted(order[:held])
    train_indices = sorted(order[held:])
    return examples.subset(train_indices), examples.subset(eval_indices)


# --- tokenization -------------------------------------------------------------------------------
GPU_PAD_MULTIPLE = 8
"""Batch lengths on a GPU round up to a multiple of this: tensor cores work in such tiles, and
fewer distinct shapes mean fewer kernel selections. A CPU gains nothing from it (its matrix
kernels tile the hidden size, not the sequence: a forward and backward pass costs the same per
position at any length; docs/benchmarks.md, length-aware batching), so there a batch is cut to
its longest example."""


def pad_multiple(device: torch.device) -> int:
    """What a batch's length rounds up to on ``device`` (GPU_PAD_MULTIPLE on CUDA, else 1)."""
    return GPU_PAD_MULTIPLE if device.type == "cuda" else 1


@dataclass(frozen=True)
class TokenCount:
    """Token positions processed: ``real`` ones (not padding) out of ``padded`` in all."""

    real: int = 0
    padded: int = 0

    def __add__(self, other: TokenCount) -> TokenCount:
        return TokenCount(self.real + other.real, self.padded + other.padded)


@dataclass
class Batch:
    """Model inputs of one batch, and how many of its token positions are real."""

    tensors: dict[str, torch.Tensor]
    tokens: TokenCount


@dataclass
class TokenizedSplit:
    """Model inputs of one split, stored padded to ``data.maxLength``; :meth:`batch` cuts each
    batch to its own longest example unless ``pad_to_max_length``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    pad_to_max_length: bool = False

    def __post_init__(self) -> None:
        self.lengths: list[int] = self.attention_mask.sum(dim=1).tolist()
        """Real (non-padding) tokens of each example."""

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_length(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def mean_length(self) -> float:
        return sum(self.lengths) / len(self.lengths) if self.lengths else 0.0

    def _columns(self, index: torch.Tensor, multiple: int) -> slice:
        """The token positions a batch needs: the span its real tokens cover, widened to a
        multiple of ``multiple`` on the padding side (right or left, as the tokenizer pads)."""
        if self.pad_to_max_length:
            return slice(0, self.seq_length)
        used = self.attention_mask[index].any(dim=0).nonzero().flatten()
        if used.numel() == 0:
            return slice(0, min(multiple, self.seq_length))
        first, last = int(used[0]), int(used[-1])
        width = min(self.seq_length, -(-(last + 1 - first) // multiple) * multiple)
        start = min(first, self.seq_length - width)
        return slice(start, start + width)

    def batch(self, indices: Sequence[int], device: torch.device) -> Batch:
        index = torch.as_tensor(list(indices), dtype=torch.long)
        columns = self._columns(index, pad_multiple(device))
        labels = self.labels[index]
        if labels.dim() == 2:
            labels = labels[:, columns]
        tensors = {
            "input_ids": self.input_ids[index, columns].to(device, dtype=torch.long),
            "attention_mask": self.attention_mask[index, columns].to(device, dtype=torch.long),
            "labels": labels.to(device, dtype=torch.long),
        }
        width = columns.stop - columns.start
        real = sum(self.lengths[i] for i in indices)
        return Batch(tensors, TokenCount(real=real, padded=len(indices) * width))


def tokenize(
    examples: Examples, task: Task, tokenizer: Any, max_length: int, padding: Padding
) -> TokenizedSplit:
    """Encode a split with ``tokenizer`` (a transformers fast tokenizer)."""
    if task is Task.TOKEN_CLASSIFICATION:
        encoded = tokenizer(
            examples.texts,
            is_split_into_words=True,
            truncation=True,
            padding="max_length",
            max_length=max_length,
        )
        assert examples.labels is not None
        labels = []
        for row, word_labels in enumerate(examples.labels):
            assert isinstance(word_labels, list)
            aligned: list[int] = []
            previous_word: int | None = None
            # The first sub-word of each word carries the word's tag; the rest are ignored.
            for word in encoded.word_ids(row):
                if word is None or word == previous_word:
                    aligned.append(IGNORE_INDEX)
                else:
                    aligned.append(word_labels[word])
                previous_word = word
            labels.append(aligned)
        label_tensor = torch.tensor(labels, dtype=torch.int32)
    else:
        encoded = tokenizer(
            list(examples.texts), truncation=True, padding="max_length", max_length=max_length
        )
        if task is Task.CAUSAL_LM:
            ids = torch.tensor(encoded["input_ids"], dtype=torch.int32)
            mask = torch.tensor(encoded["attention_mask"], dtype=torch.int32)
            label_tensor = ids.masked_fill(mask == 0, IGNORE_INDEX)
        else:
            assert examples.labels is not None
            label_tensor = torch.tensor(examples.labels, dtype=torch.int32)
    return TokenizedSplit(
        input_ids=torch.tensor(encoded["input_ids"], dtype=torch.int32),
        attention_mask=torch.tensor(encoded["attention_mask"], dtype=torch.int32),
        labels=label_tensor,
        pad_to_max_length=padding is Padding.MAX_LENGTH,
    )


# --- order and position -------------------------------------------------------------------------
@dataclass(frozen=True)
class DataPosition:
    """Where the next training micro-batch starts: epoch and samples already used in it."""

    epoch: int = 0
    samples_into_epoch: int = 0


GROUPING_WINDOW = 50
"""Global micro-batches per length-sorted window with data.batching.groupByLength: wide enough
to find batch-mates of similar length, narrow enough to keep the epoch's order random."""


class ShardedOrder:
    """Which training examples each rank uses at each global micro-step (module docstring).

    With ``lengths`` (data.batching.groupByLength), each epoch's permutation is cut into windows
    of GROUPING_WINDOW global micro-batches, each window is sorted by length (longest first,
    ties by position), and the epoch's global micro-batches are shuffled again from the same
    seed: every rank computes the same order, and a position still names one micro-step.
    """

    def __init__(
        self,
        num_examples: int,
        micro_batch: int,
        world_size: int,
        rank: int,
        seed: int,
        lengths: Sequence[int] | None = None,
    ) -> None:
        self.num_examples = num_examples
        self.micro_batch = micro_batch
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.lengths = lengths
        self.global_micro_batch = micro_batch * world_size
        self.micro_steps_per_epoch = num_examples // self.global_micro_batch
        if self.micro_steps_per_epoch == 0:
            raise DataError(
                f"the training set has {num_examples} examples, fewer than one global "
                f"micro-batch ({micro_batch} per rank x {world_size} ranks): add data or lower "
                "training.microBatchSize"
            )
        self._epoch_cached = -1
        self._permutation: list[int] = []

    def _order_of(self, epoch: int) -> list[int]:
        if epoch != self._epoch_cached:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            permutation = torch.randperm(self.num_examples, generator=generator).tolist()
            if self.lengths is not None:
                permutation = self._grouped(permutation, generator)
            self._permutation = permutation
            self._epoch_cached = epoch
        return self._permutation

    def _grouped(self, permutation: list[int], generator: torch.Generator) -> list[int]:
        lengths, size = self.lengths, self.global_micro_batch
        assert lengths is not None
        used = permutation[: self.micro_steps_per_epoch * size]
        window = GROUPING_WINDOW * size
        ordered: list[int] = []
        for start in range(0, len(used), window):
            ordered += sorted(used[start : start + window], key=lambda i: -lengths[i])
        batches = [ordered[i : i + size] for i in range(0, len(ordered), size)]
        shuffled = torch.randperm(len(batches), generator=generator).tolist()
        return [index for b in shuffled for index in batches[b]]

    def indices(self, micro_step: int) -> list[int]:
        """Example indices of this rank at global micro-step ``micro_step`` (0-based)."""
        epoch, within = divmod(micro_step, self.micro_steps_per_epoch)
        start = within * self.global_micro_batch + self.rank * self.micro_batch
        return self._order_of(epoch)[start : start + self.micro_batch]

    def position_after(self, micro_steps_done: int) -> DataPosition:
        epoch, within = divmod(micro_steps_done, self.micro_steps_per_epoch)
        return DataPosition(epoch=epoch, samples_into_epoch=within * self.global_micro_batch)

    def micro_step_of(self, position: DataPosition) -> int:
        within = min(
            position.samples_into_epoch // self.global_micro_batch, self.micro_steps_per_epoch
        )
        return position.epoch * self.micro_steps_per_epoch + within


def eval_shard(
    num_examples: int, world_size: int, rank: int, lengths: Sequence[int] | None = None
) -> tuple[list[int], list[float]]:
    """This rank's evaluation examples and weights, padded so every rank runs as many batches.

    ZeRO-3 gathers parameters collectively in each forward pass, so ranks must make the same
    number of them; padding entries repeat example 0 with weight 0 and are not counted. With
    ``lengths`` the rank's examples come longest first, so that batches cut to their longest
    example carry little padding (the scores do not depend on the order).
    """
    mine = list(range(rank, num_examples, world_size))
    if lengths is not None:
        mine.sort(key=lambda i: -lengths[i])
    per_rank = math.ceil(num_examples / world_size) if num_examples else 0
    weights = [1.0] * len(mine) + [0.0] * (per_rank - len(mine))
    mine += [0] * (per_rank - len(mine))
    return mine, weights
