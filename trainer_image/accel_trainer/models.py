"""Hugging Face models for the three tasks, pretrained from a path or built from a config.

A config-built model is initialised from ``training.seed`` on every rank, so all ranks start
from identical weights. Pretrained paths that exist in the pod are loaded with
``local_files_only`` (the hub is not asked); a hub name is downloaded only when the pod can
reach the hub.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from accel_contract.config import Architecture, ModelArchitectureSpec, ModelSpec, Task
from accel_trainer.errors import ConfigError, MissingInputError


@dataclass
class ModelShape:
    """What the FLOPs estimate needs to know about a model."""

    num_params: int
    num_layers: int
    hidden_size: int


def _auto_class(task: Task) -> Any:
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

    return {
        Task.SEQUENCE_CLASSIFICATION: AutoModelForSequenceClassification,
        Task.TOKEN_CLASSIFICATION: AutoModelForTokenClassification,
        Task.CAUSAL_LM: AutoModelForCausalLM,
    }[task]


def _label_kwargs(task: Task, label_names: list[str]) -> dict[str, Any]:
    if task is Task.CAUSAL_LM:
        return {}
    return {
        "num_labels": len(label_names),
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: i for i, name in enumerate(label_names)},
    }


def _architecture_config(
    spec: ModelArchitectureSpec, tokenizer: Any, task: Task, label_names: list[str]
) -> Any:
    from transformers import BertConfig, GPT2Config, LlamaConfig, RobertaConfig

    intermediate = spec.intermediate_size or 4 * spec.hidden_size
    vocab_size = max(spec.vocab_size or 0, len(tokenizer))
    pad_id = tokenizer.pad_token_id
    common: dict[str, Any] = {"vocab_size": vocab_size, "pad_token_id": pad_id}
    common.update(_label_kwargs(task, label_names))
    bos_id = (
        tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    )
    eos_id = (
        tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    )
    if spec.architecture in (Architecture.BERT, Architecture.ROBERTA):
        config_class: type[BertConfig] | type[RobertaConfig] = BertConfig
        positions = spec.max_position_embeddings
        if spec.architecture is Architecture.ROBERTA:
            config_class = RobertaConfig
            # RoBERTa numbers positions from pad_token_id + 1, so it needs that many extra slots.
            positions += (pad_id or 0) + 1
        return config_class(
            hidden_size=spec.hidden_size,
            num_hidden_layers=spec.num_layers,
            num_attention_heads=spec.num_heads,
            intermediate_size=intermediate,
            max_position_embeddings=positions,
            is_decoder=task is Task.CAUSAL_LM,
            **common,
        )
    if spec.architecture is Architecture.GPT2:
        return GPT2Config(
            n_embd=spec.hidden_size,
            n_layer=spec.num_layers,
            n_head=spec.num_heads,
            n_inner=intermediate,
            n_positions=spec.max_position_embeddings,
            bos_token_id=bos_id,
            eos_token_id=eos_id,
            **common,
        )
    return LlamaConfig(
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        intermediate_size=intermediate,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        **common,
    )


def build_model(
    spec: ModelSpec,
    tokenizer: Any,
    label_names: list[str],
    *,
    seed: int,
    activation_checkpointing: bool,
) -> Any:
    """The model to train, in fp32 on the CPU (DeepSpeed moves and casts it)."""
    auto_class = _auto_class(spec.task)
    torch.manual_seed(seed)
    if spec.config is not None:
        config = _architecture_config(spec.config, tokenizer, spec.task, label_names)
        model = auto_class.from_config(config)
    else:
        assert spec.pretrained is not None  # ModelSpec guarantees one source
        model = load_pretrained(spec.pretrained, spec.task, label_names)
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        raise ConfigError(
            f"model.tokenizer has {len(tokenizer)} tokens but the model's embedding table has "
            f"{model.get_input_embeddings().num_embeddings}: use the model's own tokenizer"
        )
    if activation_checkpointing:
        if not model.supports_gradient_checkpointing:
            raise ConfigError(
                f"activationCheckpointing: {type(model).__name__} does not support gradient "
                "checkpointing: turn it off"
            )
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def empty_model(spec: ModelSpec, tokenizer: Any, label_names: list[str]) -> Any:
    """The model :func:`build_model` builds, on the meta device: every shape, no weights.

    Nothing is allocated; a pretrained model contributes only its config.json. Checkpointing
    and the embedding-size check are left out: neither changes the parameter count.
    """
    if spec.config is not None:
        config = _architecture_config(spec.config, tokenizer, spec.task, label_names)
    else:
        assert spec.pretrained is not None  # ModelSpec guarantees one source
        config = _pretrained_config(spec.pretrained, spec.task, label_names)
    with torch.device("meta"):
        return _auto_class(spec.task).from_config(config)


def load_pretrained(name_or_path: str, task: Task, label_names: list[str]) -> Any:
    """A pretrained model with a head sized for ``label_names`` (a new head when it differs)."""
    config = _pretrained_config(name_or_path, task, label_names)
    try:
        return _auto_class(task).from_pretrained(
            name_or_path,
            config=config,
            local_files_only=os.path.exists(name_or_path),
            ignore_mismatched_sizes=True,
            dtype=torch.float32,
        )
    except (OSError, ValueError) as error:
        raise _cannot_load(name_or_path, error) from None


def _pretrained_config(name_or_path: str, task: Task, label_names: list[str]) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(
            name_or_path,
            local_files_only=os.path.exists(name_or_path),
            **_label_kwargs(task, label_names),
        )
    except (OSError, ValueError) as error:
        raise _cannot_load(name_or_path, error) from None


def _cannot_load(name_or_path: str, error: Exception) -> MissingInputError:
    return MissingInputError(
        f"model.pretrained: cannot load '{name_or_path}' "
        f"({' '.join(str(error).split())[:200]}): give a directory with config.json and "
        "weights mounted in the pod, or a hub name the pod can download"
    )


def model_shape(model: Any) -> ModelShape:
    """Parameter count, depth and width, read before DeepSpeed partitions the parameters."""
    config = model.config
    num_layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None) or 1
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None) or 1
    num_params = sum(p.numel() for p in model.parameters())
    return ModelShape(num_params=num_params, num_layers=int(num_layers), hidden_size=int(hidden))
