"""Pruning: the cubic schedule, which weights are selected, exact sparsity per scope, masks that
survive optimizer steps (where Adam's momentum would otherwise regrow weights), and the fp32
masters of the fp16 optimizer layout being masked, not just the fp16 copies."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from accel_contract.config import PruningScope, PruningSpec
from accel_trainer.errors import ConfigError
from accel_trainer.pruning import Pruner, cubic_sparsity, is_pruning_round, select_parameters
from accel_trainer.weights import MasterWeights

SPEC = PruningSpec(target_sparsity=0.8, start_step=10, end_step=50, frequency=10)


def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    return BertForSequenceClassification(config)


def plain_engine(model: torch.nn.Module) -> Any:
    """The parts of a ZeRO-0 fp32 DeepSpeed engine the pruner uses: the module is the master."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return SimpleNamespace(module=model, optimizer=optimizer)


def zeros_of(tensors: Sequence[torch.Tensor]) -> float:
    return sum(int((t == 0).sum()) for t in tensors) / sum(t.numel() for t in tensors)


# --- schedule -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("step", "sparsity"),
    [
        (0, 0.0),
        (10, 0.0),
        (19, 0.0),  # between rounds the last round's value holds
        (20, 0.8 * (1 - 0.75**3)),
        (30, 0.8 * (1 - 0.5**3)),
        (40, 0.8 * (1 - 0.25**3)),
        (50, 0.8),
        (500, 0.8),
    ],
)
def test_the_cubic_schedule_of_zhu_and_gupta(step: int, sparsity: float) -> None:
    assert cubic_sparsity(SPEC, step) == pytest.approx(sparsity)


def test_rounds_run_every_frequency_steps_and_at_the_end_step() -> None:
    spec = PruningSpec(target_sparsity=0.5, start_step=0, end_step=25, frequency=10)

    assert [step for step in range(40) if is_pruning_round(spec, step)] == [0, 10, 20, 25]


# --- selection ------------------------------------------------------------------------------
def test_only_2d_encoder_weights_are_selected_by_default() -> None:
    names = [name for name, _ in select_parameters(list(tiny_bert().named_parameters()), SPEC)]

    assert "bert.encoder.layer.0.attention.self.query.weight" in names
    # The pooler feeds the classifier: pruning it away would give every input the same logits.
    assert not any(
        "embeddings" in n or "pooler" in n or "classifier" in n or n.endswith(".bias")
        for n in names
    )
    assert len(names) == 2 * 6


def test_a_selection_of_nothing_is_a_config_error() -> None:
    spec = PruningSpec(include=["*nothing*"])

    with pytest.raises(ConfigError, match="leave no 2-D weight matrix to prune"):
        select_parameters(list(tiny_bert().named_parameters()), spec)


# --- sparsity and masks ---------------------------------------------------------------------
def test_global_pruning_reaches_the_target_over_the_selection() -> None:
    model = tiny_bert()
    pruner = Pruner(SPEC, plain_engine(model), MasterWeights(plain_engine(model)))

    pruner.prune_to(0.5)

    assert zeros_of(pruner.params) == pytest.approx(0.5, abs=1e-4)
    assert pruner.report().measured == pytest.approx(0.5, abs=1e-4)
    per_matrix = {zeros_of([p]) for p in pruner.params}
    assert len(per_matrix) > 1  # global ranking prunes matrices unevenly


def test_per_layer_pruning_gives_every_matrix_the_target() -> None:
    spec = SPEC.model_copy(update={"scope": PruningScope.PER_LAYER})
    model = tiny_bert()
    pruner = Pruner(spec, plain_engine(model), MasterWeights(plain_engine(model)))

    pruner.prune_to(0.3)

    for param in pruner.params:
        assert zeros_of([param]) == pytest.approx(0.3, abs=1 / param.numel())


def test_masks_keep_pruned_weights_at_zero_through_adam_steps() -> None:
    model = tiny_bert()
    engine = plain_engine(model)
    pruner = Pruner(SPEC, engine, MasterWeights(engine))
    batch = {"input_ids": torch.randint(0, 100, (8, 16)), "labels": torch.randint(0, 2, (8,))}

    def train_steps(count: int, masked: bool) -> None:
        for _ in range(count):
            engine.optimizer.zero_grad()
            model(**batch).loss.backward()
            engine.optimizer.step()
            if masked:
                pruner.apply_masks()

    train_steps(3, masked=False)  # Adam has momentum in every weight before pruning
    pruner.prune_to(0.6)
    train_steps(5, masked=True)
    assert zeros_of(pruner.params) == pytest.approx(0.6, abs=1e-4)

    train_steps(3, masked=False)  # the control: without masks the momentum regrows weights
    assert zeros_of(pruner.params) < 0.01


def test_a_later_round_keeps_earlier_pruned_weights_pruned() -> None:
    model = tiny_bert()
    pruner = Pruner(SPEC, plain_engine(model), MasterWeights(plain_engine(model)))
    pruner.prune_to(0.3)
    first = [mask.clone() for mask in pruner.masks if mask is not None]

    pruner.prune_to(0.6)

    for before, after in zip(first, pruner.masks, strict=True):
        assert after is not None and not bool((after & ~before).any())


def test_pruning_state_restores_masks_into_a_fresh_model() -> None:
    source = tiny_bert()
    pruner = Pruner(SPEC, plain_engine(source), MasterWeights(plain_engine(source)))
    pruner.prune_to(0.4)
    restored_model = tiny_bert()
    restored = Pruner(
        SPEC, plain_engine(restored_model), MasterWeights(plain_engine(restored_model))
    )

    restored.load_state_dict(pruner.state_dict())

    assert restored.target == 0.4
    assert zeros_of(restored.params) == pytest.approx(0.4, abs=1e-4)


def test_fp16_optimizer_layout_masks_the_fp32_master_not_only_the_fp16_copy() -> None:
    model = tiny_bert()
    params = [p for p in model.parameters() if p.requires_grad]
    flat_master = torch.cat([p.detach().reshape(-1) for p in params]).float()
    optimizer = SimpleNamespace(fp16_groups=[params], fp32_groups_flat=[flat_master])
    engine = SimpleNamespace(module=model, optimizer=optimizer)
    pruner = Pruner(SPEC, engine, MasterWeights(engine))

    pruner.prune_to(0.5)

    offsets: dict[int, int] = {}
    offset = 0
    for param in params:
        offsets[id(param)] = offset
        offset += param.numel()
    masters = [flat_master.narrow(0, offsets[id(p)], p.numel()) for p in pruner.params]
    assert zeros_of(masters) == pytest.approx(0.5, abs=1e-4)
    assert zeros_of(pruner.params) == pytest.approx(0.5, abs=1e-4)
