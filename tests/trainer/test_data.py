"""Trainer data: readers fail with the file, line and field; labels, splits, the per-rank order
and its resumable position; tokenization and tag alignment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from accel_contract.config import DataSpec, ModelSpec, Padding, SyntheticDataSpec, Task
from accel_trainer.data import (
    GPU_PAD_MULTIPLE,
    IGNORE_INDEX,
    DataPosition,
    ShardedOrder,
    TokenCount,
    eval_shard,
    load_corpus,
    pad_multiple,
    synthetic_examples,
    tokenize,
)
from accel_trainer.errors import ConfigError, DataError, MissingInputError
from accel_trainer.tokenization import from_serialized, train_wordpiece

CONFIG_MODEL = {"config": {"hiddenSize": 64, "numHeads": 2}}


def model(task: str = "sequence-classification", **extra: Any) -> ModelSpec:
    return ModelSpec.model_validate({"task": task, **CONFIG_MODEL, **extra})


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def corpus_of(
    path: Path,
    task: str = "sequence-classification",
    model_extra: dict[str, Any] | None = None,
    **data: Any,
) -> Any:
    spec = DataSpec.model_validate({"path": str(path), "evalFraction": 0.0, **data})
    return load_corpus(spec, model(task, **(model_extra or {})), seed=0)


# --- readers and their messages -------------------------------------------------------------
def test_jsonl_string_labels_become_sorted_class_ids(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"text": "a", "label": "pos"},
            {"text": "b", "label": "neg"},
            {"text": "c", "label": "pos"},
        ],
    )

    corpus = corpus_of(path)

    assert corpus.label_names == ["neg", "pos"]
    assert corpus.train.labels == [1, 0, 1]
    assert corpus.train.texts == ["a", "b", "c"]


def test_jsonl_record_without_the_text_field_names_file_line_and_setting(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0}, {"body": "b", "label": 1}])

    with pytest.raises(DataError) as error:
        corpus_of(path)

    assert str(error.value) == (
        f"{path}:2: field 'text' is missing or empty: add it to every record or set "
        "data.textField to the field that holds it"
    )


def test_a_line_that_is_not_json_is_reported_with_its_number(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": 0}\n{"text": "b", "label": 1\n')

    with pytest.raises(DataError, match=rf"^{path}:2: not valid JSON"):
        corpus_of(path)


def test_csv_without_the_label_column_names_the_columns_it_has(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("text,category\nhello,1\n")

    with pytest.raises(DataError) as error:
        corpus_of(path)

    assert "has no column 'label' (columns: text, category)" in str(error.value)
    assert "data.labelField" in str(error.value)


def test_csv_custom_fields_and_integer_labels(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('body,y\n"hello, world",1\nbye,0\n')

    corpus = corpus_of(path, textField="body", labelField="y")

    assert corpus.train.texts == ["hello, world", "bye"]
    assert corpus.train.labels == [1, 0]
    assert corpus.label_names == ["0", "1"]


def test_an_integer_label_outside_num_labels_is_rejected_with_its_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 3}])

    with pytest.raises(DataError) as error:
        corpus_of(path, model_extra={"numLabels": 3})

    assert str(error.value).startswith(f"{path}:2: field 'label' is 3, outside 0..2")
    assert "model.numLabels" in str(error.value)


def test_an_eval_label_the_training_file_lacks_is_rejected(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": "x"}])
    held = write_jsonl(tmp_path / "e.jsonl", [{"text": "b", "label": "y"}])

    with pytest.raises(DataError, match=rf"^{held}:1: field 'label' is 'y'"):
        corpus_of(train, evalPath=str(held))


def test_a_missing_file_is_missing_input_not_bad_data(tmp_path: Path) -> None:
    with pytest.raises(MissingInputError, match=r"data\.path '.*nope\.jsonl' does not exist"):
        corpus_of(tmp_path / "nope.jsonl")


def test_an_unknown_extension_asks_for_data_format(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    path.write_text("")

    with pytest.raises(ConfigError, match=r"set data\.format"):
        corpus_of(path)


def test_conll_sentences_tags_and_docstart(tmp_path: Path) -> None:
    path = tmp_path / "d.conll"
    path.write_text("-DOCSTART- O\n\nAda B-PER\nLovelace I-PER\nwrote O\n\nParis B-LOC\n")

    corpus = corpus_of(path, task="token-classification")

    assert corpus.label_names == ["O", "B-LOC", "B-PER", "I-PER"]
    assert corpus.train.texts == [["Ada", "Lovelace", "wrote"], ["Paris"]]
    assert corpus.train.labels == [[2, 3, 0], [1]]


def test_conll_tag_that_is_not_bio_is_rejected_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "d.conll"
    path.write_text("Ada B-PER\nLovelace PERSON\n")

    with pytest.raises(DataError, match=rf"^{path}:2: tag 'PERSON' is not a BIO tag"):
        corpus_of(path, task="token-classification")


def test_the_test_file_is_read_with_the_training_files_tags(tmp_path: Path) -> None:
    train, test = tmp_path / "train.conll", tmp_path / "test.conll"
    train.write_text("Ada B-PER\nwrote O\n\nParis B-LOC\n")
    test.write_text("-DOCSTART- -X- -X- O\n\nLagos NNP B-NP B-LOC\nwas VBD B-VP O\n")

    corpus = corpus_of(train, task="token-classification", testPath=str(test))

    assert corpus.test is not None and corpus.test.texts == [["Lagos", "was"]]
    assert corpus.test.labels == [[corpus.label_names.index("B-LOC"), 0]]


def test_a_test_file_tag_unknown_to_training_names_the_file_and_line(tmp_path: Path) -> None:
    train, test = tmp_path / "train.conll", tmp_path / "test.conll"
    train.write_text("Ada B-PER\n")
    test.write_text("Acme B-ORG\n")

    with pytest.raises(DataError, match=rf"^{test}:1: tag 'B-ORG' does not occur"):
        corpus_of(train, task="token-classification", testPath=str(test))


def test_a_missing_test_file_names_data_test_path(tmp_path: Path) -> None:
    train = tmp_path / "train.conll"
    train.write_text("Ada B-PER\n")

    with pytest.raises(MissingInputError, match=r"data\.testPath"):
        corpus_of(train, task="token-classification", testPath=str(tmp_path / "nope.conll"))


def test_token_classification_refuses_jsonl(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0}])

    with pytest.raises(ConfigError, match="token-classification reads CoNLL files"):
        corpus_of(path, task="token-classification")


# --- synthetic data and splits ------------------------------------------------------------------
def test_synthetic_data_is_the_same_for_the_same_seed_and_differs_for_another() -> None:
    spec = SyntheticDataSpec(num_samples=64, num_labels=3, seed=7)

    first = synthetic_examples(spec, Task.SEQUENCE_CLASSIFICATION, max_words=30)
    again = synthetic_examples(spec, Task.SEQUENCE_CLASSIFICATION, max_words=30)
    other = synthetic_examples(
        spec.model_copy(update={"seed": 8}), Task.SEQUENCE_CLASSIFICATION, max_words=30
    )

    assert first.train.texts == again.train.texts and first.train.labels == again.train.labels
    assert first.train.texts != other.train.texts
    assert first.label_names == ["class0", "class1", "class2"]


def test_eval_fraction_holds_out_a_deterministic_disjoint_share() -> None:
    data = DataSpec.model_validate({"synthetic": {"numSamples": 200}, "evalFraction": 0.1})

    corpus = load_corpus(data, model(), seed=3)
    again = load_corpus(data, model(), seed=3)

    assert len(corpus.train) == 180 and corpus.eval is not None and len(corpus.eval) == 20
    assert again.eval is not None and corpus.eval.texts == again.eval.texts


# --- order and position -------------------------------------------------------------------------
def test_one_epoch_gives_each_rank_disjoint_examples_covering_whole_global_batches() -> None:
    orders = [ShardedOrder(100, micro_batch=4, world_size=3, rank=r, seed=1) for r in range(3)]
    steps = orders[0].micro_steps_per_epoch

    used = [index for order in orders for step in range(steps) for index in order.indices(step)]

    assert steps == 100 // 12
    assert len(used) == len(set(used)) == steps * 12


def test_the_next_epoch_is_a_new_permutation_of_the_same_examples() -> None:
    order = ShardedOrder(16, micro_batch=16, world_size=1, rank=0, seed=5)

    assert order.indices(0) != order.indices(1)
    assert sorted(order.indices(0)) == sorted(order.indices(1)) == list(range(16))


def test_the_saved_position_resumes_at_the_next_unseen_micro_batch() -> None:
    order = ShardedOrder(100, micro_batch=4, world_size=2, rank=1, seed=1)
    done = 30  # micro-steps, crossing into the third epoch (12 per epoch)

    position = order.position_after(done)

    assert position == DataPosition(epoch=2, samples_into_epoch=6 * 8)
    assert order.micro_step_of(position) == done


def test_a_resume_with_another_world_size_continues_from_the_same_sample_offset() -> None:
    two_ranks = ShardedOrder(96, micro_batch=4, world_size=2, rank=0, seed=1)
    position = two_ranks.position_after(5)  # 40 samples into epoch 0

    four_ranks = ShardedOrder(96, micro_batch=4, world_size=4, rank=0, seed=1)

    assert four_ranks.micro_step_of(position) == 40 // 16  # rounds down to whole batches


def test_too_little_data_for_one_global_micro_batch_is_a_data_error() -> None:
    with pytest.raises(DataError, match="fewer than one global micro-batch"):
        ShardedOrder(7, micro_batch=4, world_size=2, rank=0, seed=0)


def test_eval_shards_are_padded_to_equal_length_with_zero_weight() -> None:
    shards = [eval_shard(10, 4, rank) for rank in range(4)]

    assert {len(indices) for indices, _ in shards} == {3}
    assert sum(sum(weights) for _, weights in shards) == 10
    real = sorted(
        i for indices, weights in shards for i, w in zip(indices, weights, strict=True) if w
    )
    assert real == list(range(10))


# --- tokenization -------------------------------------------------------------------------------
def test_trained_wordpiece_is_identical_for_identical_texts() -> None:
    texts = [f"token{i % 7} word{i % 11} the end" for i in range(200)]

    assert train_wordpiece(texts, 500) == train_wordpiece(texts, 500)


def test_token_tags_go_to_the_first_sub_word_of_each_word() -> None:
    texts = ["alpha beta", "alphabetical gamma"] * 20
    tokenizer = from_serialized(train_wordpiece(texts, 60), max_length=16)
    sentence = ["alphabetical", "gamma"]
    corpus = synthetic_examples(SyntheticDataSpec(num_samples=16), Task.TOKEN_CLASSIFICATION, 8)
    corpus.train.texts = [sentence]
    corpus.train.labels = [[1, 2]]

    split = tokenize(corpus.train, Task.TOKEN_CLASSIFICATION, tokenizer, 16, Padding.LONGEST)

    word_ids = tokenizer(sentence, is_split_into_words=True).word_ids()
    labels = split.labels[0].tolist()
    firsts = {word: i for i, word in reversed(list(enumerate(word_ids))) if word is not None}
    assert [labels[firsts[0]], labels[firsts[1]]] == [1, 2]
    assert all(
        labels[i] == IGNORE_INDEX
        for i, word in enumerate(word_ids)
        if word is None or i not in firsts.values()
    )
    assert split.input_ids.shape == (1, 16)


# --- length-aware batching ----------------------------------------------------------------------
def _split_of(sentences: list[str], padding: Padding, max_length: int = 64) -> Any:
    tokenizer = from_serialized(train_wordpiece(sentences * 4, 200), max_length=max_length)
    corpus = synthetic_examples(SyntheticDataSpec(num_samples=16), Task.SEQUENCE_CLASSIFICATION, 8)
    corpus.train.texts = sentences
    corpus.train.labels = [0] * len(sentences)
    return tokenize(corpus.train, Task.SEQUENCE_CLASSIFICATION, tokenizer, max_length, padding)


SENTENCES = [" ".join(f"w{j}" for j in range(n)) for n in (3, 20, 5, 9, 40, 2, 11, 7)]


def test_a_batch_on_cpu_is_cut_to_exactly_its_longest_example() -> None:
    split = _split_of(SENTENCES, Padding.LONGEST)

    batch = split.batch([0, 2, 5], torch.device("cpu"))  # 3, 5 and 2 words

    longest = max(split.lengths[i] for i in (0, 2, 5))
    width = batch.tensors["input_ids"].shape[1]
    assert width == longest
    assert batch.tokens == TokenCount(
        real=sum(split.lengths[i] for i in (0, 2, 5)), padded=3 * width
    )
    # Nothing real is cut off: the mask keeps every real token.
    assert int(batch.tensors["attention_mask"].sum()) == batch.tokens.real


def test_a_batch_on_a_gpu_rounds_its_longest_example_up_to_a_multiple_of_eight() -> None:
    split = _split_of(SENTENCES, Padding.LONGEST)
    index = torch.tensor([0, 2, 5])
    longest = max(split.lengths[i] for i in (0, 2, 5))

    width = split._columns(index, pad_multiple(torch.device("cuda"))).stop

    assert pad_multiple(torch.device("cuda")) == GPU_PAD_MULTIPLE == 8
    assert width % 8 == 0 and longest <= width < longest + 8


def test_max_length_padding_keeps_every_batch_at_data_max_length() -> None:
    split = _split_of(SENTENCES, Padding.MAX_LENGTH)

    batch = split.batch([0, 2, 5], torch.device("cpu"))

    assert batch.tensors["input_ids"].shape == (3, 64)
    assert batch.tokens.padded == 3 * 64 and batch.tokens.real < batch.tokens.padded


def test_cutting_padding_gives_the_model_the_same_tokens_as_padding_to_max_length() -> None:
    longest = _split_of(SENTENCES, Padding.LONGEST).batch([1, 3], torch.device("cpu")).tensors
    full = _split_of(SENTENCES, Padding.MAX_LENGTH).batch([1, 3], torch.device("cpu")).tensors

    width = longest["input_ids"].shape[1]
    assert torch.equal(longest["input_ids"], full["input_ids"][:, :width])
    assert int(full["attention_mask"][:, width:].sum()) == 0


def test_grouping_by_length_puts_similar_lengths_together_and_still_covers_the_epoch() -> None:
    lengths = [(i * 37) % 120 + 1 for i in range(2000)]
    plain = ShardedOrder(2000, micro_batch=8, world_size=2, rank=0, seed=4)
    grouped = ShardedOrder(2000, micro_batch=8, world_size=2, rank=0, seed=4, lengths=lengths)

    def padded(order: ShardedOrder) -> int:
        return sum(
            8 * max(lengths[i] for i in order.indices(step))
            for step in range(order.micro_steps_per_epoch)
        )

    assert padded(grouped) < 0.6 * padded(plain)
    ranks = [
        ShardedOrder(2000, micro_batch=8, world_size=2, rank=r, seed=4, lengths=lengths)
        for r in range(2)
    ]
    used = [i for order in ranks for step in range(125) for i in order.indices(step)]
    assert sorted(used) == list(range(2000))


def test_grouped_order_is_the_same_on_every_call_and_resumes_at_the_same_batch() -> None:
    lengths = [(i * 13) % 50 + 1 for i in range(500)]
    first = ShardedOrder(500, micro_batch=4, world_size=2, rank=1, seed=9, lengths=lengths)
    again = ShardedOrder(500, micro_batch=4, world_size=2, rank=1, seed=9, lengths=lengths)

    resumed_at = again.micro_step_of(first.position_after(70))

    assert [first.indices(s) for s in range(70, 80)] == [
        again.indices(s) for s in range(resumed_at, resumed_at + 10)
    ]
    # Batch order is shuffled too: the epoch does not run from longest to shortest.
    batch_lengths = [max(lengths[i] for i in first.indices(s)) for s in range(40)]
    assert batch_lengths != sorted(batch_lengths, reverse=True)


def test_eval_shards_with_lengths_come_longest_first_and_keep_their_weights() -> None:
    lengths = [5, 50, 7, 30, 1, 9, 60, 2, 3, 4]

    indices, weights = eval_shard(10, 3, 0, lengths)

    real = [i for i, w in zip(indices, weights, strict=True) if w]
    assert sorted(real) == [0, 3, 6, 9]
    assert [lengths[i] for i in real] == sorted((lengths[i] for i in real), reverse=True)
