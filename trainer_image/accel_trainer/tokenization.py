"""Tokenizers: the pretrained model's own, or a WordPiece vocabulary trained from the data.

A model built from ``model.config`` has no tokenizer of its own, so rank 0 builds a small
WordPiece vocabulary from the training texts (offline, deterministic, seconds) and
sends it to the other ranks, so every rank encodes with the same vocabulary. It is saved in
every checkpoint and in the exported model; a resumed run loads it from the checkpoint instead of
building a new one.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from accel_contract.config import ModelSpec, Task
from accel_trainer.errors import MissingInputError

DEFAULT_VOCAB_SIZE = 8192
SPECIAL_TOKENS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}


def train_wordpiece(texts: Iterable[str], vocab_size: int) -> str:
    """A BERT-style WordPiece tokenizer built from ``texts``, serialized as JSON; the same texts
    give the same vocabulary and ids.

    The vocabulary is every character seen (alone and as a ``##`` continuation, so no word is
    ever unknown) plus the most frequent whole words, ties broken alphabetically. The
    ``tokenizers`` trainer is not used: it breaks ties between equally frequent merges in
    hash-map order, so two runs over the same texts can learn different vocabularies.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        words = pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
        counts.update(word for word, _ in words)
    specials = list(SPECIAL_TOKENS.values())
    characters = sorted({character for word in counts for character in word})
    base = specials + characters + [f"##{character}" for character in characters]
    frequent = sorted(
        (word for word in counts if len(word) > 1), key=lambda word: (-counts[word], word)
    )
    ordered = base + frequent[: max(0, vocab_size - len(base))]

    tokenizer = Tokenizer(
        models.WordPiece(
            vocab={token: index for index, token in enumerate(ordered)},
            unk_token=SPECIAL_TOKENS["unk_token"],
        )
    )
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.WordPiece()
    cls_id = tokenizer.token_to_id(SPECIAL_TOKENS["cls_token"])
    sep_id = tokenizer.token_to_id(SPECIAL_TOKENS["sep_token"])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    serialized: str = tokenizer.to_str()
    return serialized


def from_serialized(serialized: str, max_length: int) -> Any:
    """A transformers fast tokenizer around a serialized ``tokenizers`` tokenizer."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=Tokenizer.from_str(serialized),
        model_max_length=max_length,
        **SPECIAL_TOKENS,
    )


def serialized_from_dir(path: Path) -> str:
    """The ``tokenizer.json`` of a saved tokenizer directory."""
    return (path / "tokenizer.json").read_text(encoding="utf-8")


def load_pretrained(name_or_path: str, task: Task, max_length: int) -> Any:
    """The tokenizer of a pretrained model; pads causal-LM tokenizers with their EOS token."""
    from transformers import AutoTokenizer

    local = os.path.exists(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            name_or_path, local_files_only=local, model_max_length=max_length
        )
    except (OSError, ValueError) as error:
        raise MissingInputError(
            f"model.tokenizer: cannot load a tokenizer from '{name_or_path}' "
            f"({' '.join(str(error).split())[:200]}): point model.tokenizer or model.pretrained "
            "at a directory with tokenizer files"
        ) from None
    if tokenizer.pad_token is None:
        # GPT-2 and Llama tokenizers ship without a pad token; padding positions are masked out.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if not getattr(tokenizer, "is_fast", False) and task is Task.TOKEN_CLASSIFICATION:
        raise MissingInputError(
            f"model.tokenizer: '{name_or_path}' has only a slow tokenizer, and "
            "token-classification needs a fast one (tokenizer.json) to align tags to words"
        )
    return tokenizer


def tokenizer_source(model: ModelSpec) -> str | None:
    """The name or path the tokenizer comes from, or None when it is trained from the data."""
    return model.tokenizer or model.pretrained
