"""Google's original BERT checkpoints as Hugging Face ``BertForMaskedLM`` directories.

This module owns the translation from the variable names of Google's ``modeling.py``
(``bert/encoder/layer_3/attention/self/query/kernel``, ...) to the state-dict names of
``transformers``' BERT (``bert.encoder.layer.3.attention.self.query.weight``, ...), the
``BertConfig`` implied by the variables' shapes, and the directory it writes: weights
(``model.safetensors``), ``config.json``, ``vocab.txt`` and the fast tokenizer's files.

Nothing is guessed: a variable no rule maps, or one whose shape differs from what the config
implies, is refused by name. Known variables that ``BertForMaskedLM`` has no place for (the
next-sentence head, optimizer state) are dropped and listed in the result. The pooler is kept:
``BertForMaskedLM`` ignores it, but sequence classification starts from it.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .tf_bundle import BundleReader

WORD_EMBEDDINGS = "bert/embeddings/word_embeddings"
POSITION_EMBEDDINGS = "bert/embeddings/position_embeddings"
TOKEN_TYPE_EMBEDDINGS = "bert/embeddings/token_type_embeddings"
FIRST_INTERMEDIATE = "bert/encoder/layer_0/intermediate/dense/kernel"
LAYER = re.compile(r"bert/encoder/layer_(\d+)/")
# Google's BERT models all use 64-wide attention heads (H-768 A-12, H-1024 A-16, H-256 A-4).
GOOGLE_HEAD_SIZE = 64

# Full-match patterns of every variable a BERT MLM checkpoint may hold; the HF name follows
# from the path (see _hf_name), so the table only decides what is allowed.
MAPPED = [
    re.compile(pattern)
    for pattern in (
        r"bert/embeddings/(word|position|token_type)_embeddings",
        r"bert/embeddings/LayerNorm/(gamma|beta)",
        r"bert/encoder/layer_\d+/attention/self/(query|key|value)/(kernel|bias)",
        r"bert/encoder/layer_\d+/(attention/output|intermediate|output)/dense/(kernel|bias)",
        r"bert/encoder/layer_\d+/(attention/output|output)/LayerNorm/(gamma|beta)",
        r"bert/pooler/dense/(kernel|bias)",
        r"cls/predictions/transform/dense/(kernel|bias)",
        r"cls/predictions/transform/LayerNorm/(gamma|beta)",
        r"cls/predictions/output_bias",
    )
]
# Known variables with no place in BertForMaskedLM: the next-sentence-prediction head, and
# the training state Google's pretraining checkpoints may carry (Adam moments, step count).
DROPPED = [
    re.compile(pattern)
    for pattern in (
        r"cls/seq_relationship/output_(weights|bias)",
        r".*/adam_[mv]",
        r"global_step",
    )
]
# The decoder is tied to the word embeddings (and its bias to cls.predictions.bias), so the
# checkpoint stores neither: transformers re-ties them on load.
TIED = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")
SEQ_RELATIONSHIP_PREFIX = "cls.seq_relationship."


class ConversionError(ValueError):
    """The checkpoint cannot be converted faithfully; the message names the variable."""


@dataclass
class Conversion:
    """A converted checkpoint: HF state dict, its config, and what was left out."""

    state_dict: dict[str, torch.Tensor]
    config: Any  # transformers.BertConfig
    dropped: list[str] = field(default_factory=list)


def is_dropped(tf_name: str) -> bool:
    return any(pattern.fullmatch(tf_name) for pattern in DROPPED)


def hf_name(tf_name: str) -> str:
    """The HF state-dict name of a Google BERT variable; ConversionError when none maps."""
    if not any(pattern.fullmatch(tf_name) for pattern in MAPPED):
        raise ConversionError(f"variable {tf_name!r} maps to no BertForMaskedLM parameter")
    if tf_name == "cls/predictions/output_bias":
        return "cls.predictions.bias"
    parts = LAYER.sub(lambda match: f"bert/encoder/layer/{match.group(1)}/", tf_name).split("/")
    leaf = parts[-1]
    if leaf.endswith("_embeddings"):
        parts.append("weight")
    else:
        parts[-1] = {"kernel": "weight", "gamma": "weight", "beta": "bias"}.get(leaf, leaf)
    return ".".join(parts)


def needs_transpose(tf_name: str) -> bool:
    # TF dense kernels are [in, out]; torch.nn.Linear weights are [out, in].
    return tf_name.endswith("/kernel")


def scoped_names(reader: BundleReader, scope: str = "") -> dict[str, str]:
    """Google name -> stored name. TF Hub modules keep the graph under a scope (``module/``);
    a variable outside ``scope`` is refused rather than guessed at."""
    names: dict[str, str] = {}
    for stored in reader.names():
        if not stored.startswith(scope):
            raise ConversionError(f"variable {stored!r} is outside the scope {scope!r}")
        names[stored[len(scope) :]] = stored
    return names


def bert_config(
    shapes: Mapping[str, tuple[int, ...]], num_attention_heads: int | None = None
) -> Any:
    """The ``BertConfig`` implied by the shapes of the variables (by Google name).

    Shapes do not reveal the head count; without ``num_attention_heads`` it is hidden / 64,
    the head size of every Google BERT model.
    """
    from transformers import BertConfig

    for required in (WORD_EMBEDDINGS, POSITION_EMBEDDINGS, TOKEN_TYPE_EMBEDDINGS):
        if len(shapes.get(required, ())) != 2:
            raise ConversionError(f"variable {required!r} is missing or not a matrix")
    vocab_size, hidden = shapes[WORD_EMBEDDINGS]
    layers = sorted({int(m.group(1)) for name in shapes if (m := LAYER.match(name))})
    if not layers or layers != list(range(len(layers))):
        raise ConversionError(f"encoder layers are not numbered 0..N-1: {layers}")
    if len(shapes.get(FIRST_INTERMEDIATE, ())) != 2:
        raise ConversionError(f"variable {FIRST_INTERMEDIATE!r} is missing or not a matrix")
    if num_attention_heads is None:
        if hidden % GOOGLE_HEAD_SIZE:
            raise ConversionError(
                f"hidden size {hidden} is not a multiple of {GOOGLE_HEAD_SIZE}: give the "
                "number of attention heads"
            )
        num_attention_heads = hidden // GOOGLE_HEAD_SIZE
    if hidden % num_attention_heads:
        raise ConversionError(f"hidden size {hidden} is not divisible by {num_attention_heads}")
    return BertConfig(
        architectures=["BertForMaskedLM"],
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=len(layers),
        num_attention_heads=num_attention_heads,
        intermediate_size=shapes[FIRST_INTERMEDIATE][1],
        max_position_embeddings=shapes[POSITION_EMBEDDINGS][0],
        type_vocab_size=shapes[TOKEN_TYPE_EMBEDDINGS][0],
        # Google's gelu is the tanh approximation; "gelu" (exact erf) is what the published
        # HF conversions of these checkpoints use; the two differ by at most 5e-4 anywhere.
        hidden_act="gelu",
        layer_norm_eps=1e-12,
        pad_token_id=0,
    )


def expected_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    """HF parameter name -> shape for ``config``: BertForPreTraining's parameters (the MLM
    model plus the pooler), without the stored-nowhere tied decoder and the dropped NSP head."""
    from transformers import BertForPreTraining

    with torch.device("meta"):
        model = BertForPreTraining(config)
    return {
        name: tuple(tensor.shape)
        for name, tensor in model.state_dict().items()
        if name not in TIED and not name.startswith(SEQ_RELATIONSHIP_PREFIX)
    }


def convert(
    reader: BundleReader, num_attention_heads: int | None = None, scope: str = ""
) -> Conversion:
    """Every variable of ``reader`` as an HF tensor (float32), checked against the config."""
    names = scoped_names(reader, scope)
    config = bert_config({name: reader.shape(names[name]) for name in names}, num_attention_heads)
    expected = expected_shapes(config)
    conversion = Conversion(state_dict={}, config=config)
    for tf_name, stored in sorted(names.items()):
        if is_dropped(tf_name):
            conversion.dropped.append(stored)
            continue
        try:
            name = hf_name(tf_name)
        except ConversionError:
            raise ConversionError(
                f"variable {stored!r} maps to no BertForMaskedLM parameter"
            ) from None
        if name not in expected:
            raise ConversionError(f"variable {stored!r} ({name}) is not part of the model")
        array = reader.read(stored).astype(np.float32, copy=False)
        if needs_transpose(tf_name):
            array = np.ascontiguousarray(array.T)
        if array.shape != expected[name]:
            raise ConversionError(
                f"variable {stored!r} has shape {reader.shape(stored)}, so {name} would be "
                f"{array.shape}; the config implies {expected[name]}"
            )
        conversion.state_dict[name] = torch.from_numpy(array)
    missing = sorted(set(expected) - set(conversion.state_dict))
    if missing:
        raise ConversionError(f"the checkpoint lacks {len(missing)} parameters: {missing[:8]}")
    return conversion


def read_vocab(vocab_file: Path) -> dict[str, int]:
    """Token -> id of a BERT vocabulary file: one token per line, the id is the line number."""
    # Tokens may contain spaces, so only the line break is stripped.
    tokens = vocab_file.read_text(encoding="utf-8").rstrip("\n").split("\n")
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        duplicates = sorted({token for token in tokens if tokens.count(token) > 1})
        raise ConversionError(f"{vocab_file} lists tokens more than once: {duplicates[:8]}")
    return vocab


def save_tokenizer(vocab_file: Path, out_dir: Path, max_length: int) -> list[Path]:
    """The fast (tokenizer.json) BERT tokenizer of ``vocab_file``, cased, saved in ``out_dir``."""
    import inspect

    from transformers import BertTokenizerFast  # type: ignore[attr-defined]

    vocab = read_vocab(vocab_file)
    options: dict[str, Any] = {"vocab_file": str(vocab_file)}
    if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters:
        # transformers 5 builds the WordPiece model from `vocab` and would silently ignore
        # `vocab_file`, leaving only the five special tokens; 4.x reads `vocab_file`.
        options = {"vocab": vocab}
    tokenizer = BertTokenizerFast(
        **options,
        do_lower_case=False,  # a cased model: case is part of the vocabulary
        model_max_length=max_length,
    )
    if tokenizer.get_vocab() != vocab:
        raise ConversionError(f"the tokenizer built from {vocab_file} has a different vocabulary")
    return [Path(path) for path in tokenizer.save_pretrained(str(out_dir))]


def write_hf_directory(conversion: Conversion, vocab_file: Path, out_dir: Path) -> list[Path]:
    """Write weights, config, vocabulary and fast-tokenizer files; returns the files written."""
    from safetensors.torch import save_file

    vocab = read_vocab(vocab_file)
    rows = conversion.config.vocab_size
    if len(vocab) > rows:
        raise ConversionError(
            f"{vocab_file} has {len(vocab)} tokens but the embedding table only {rows} rows"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("pytorch_model.bin", "model.safetensors.index.json"):
        (out_dir / stale).unlink(missing_ok=True)  # would shadow or contradict the new weights
    conversion.config.pad_token_id = vocab.get("[PAD]", 0)
    weights = out_dir / "model.safetensors"
    save_file(conversion.state_dict, str(weights), {"format": "pt"})
    conversion.config.save_pretrained(out_dir)
    # save_file creates the weights owner-only (0600); trainer pods that mount the directory
    # under another user must read them, so they get the umask-derived mode of config.json.
    shutil.copymode(out_dir / "config.json", weights)
    if vocab_file.resolve() != (out_dir / "vocab.txt").resolve():
        shutil.copyfile(vocab_file, out_dir / "vocab.txt")
    saved = save_tokenizer(
        out_dir / "vocab.txt", out_dir, conversion.config.max_position_embeddings
    )
    return sorted({weights, out_dir / "config.json", *saved})


def convert_checkpoint(
    prefix: Path,
    vocab_file: Path,
    out_dir: Path,
    num_attention_heads: int | None = None,
    scope: str = "",
) -> Conversion:
    """Convert the bundle at ``prefix`` with ``vocab_file`` into the HF directory ``out_dir``."""
    conversion = convert(BundleReader(prefix), num_attention_heads, scope)
    write_hf_directory(conversion, vocab_file, out_dir)
    return conversion
