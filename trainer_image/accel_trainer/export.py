"""The final model: fp32 weights gathered from every rank, pruning masks folded in, saved in
Hugging Face format, optionally with a dynamically int8-quantized copy, and scored.

Layout under ``<outputDir>``::

    model/           config.json, model.safetensors, tokenizer files (from_pretrained loads it)
    model-int8/      config.json, model_int8.pt (a state dict), tokenizer; see load_quantized
    export.json      sizes, measured sparsity and the evaluation of each saved model

The evaluation in ``export.json`` is of the saved weights themselves (fp32 on the CPU), so a
user who loads ``model/`` and evaluates it on the same split gets the same scores.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from accel_contract.config import QuantizeMode, Task
from accel_trainer.evaluate import Evaluator
from accel_trainer.pruning import Pruner
from accel_trainer.weights import MasterWeights

MODEL_DIR = "model"
QUANTIZED_DIR = "model-int8"
QUANTIZED_FILE = "model_int8.pt"
REPORT_FILE = "export.json"


def gather_full_state(
    engine: Any, weights: MasterWeights, pruner: Pruner | None, rank: int
) -> dict[str, torch.Tensor]:
    """Every parameter in fp32 with masks folded in (collective); filled on rank 0 only."""
    state: dict[str, torch.Tensor] = {}
    for name, param in engine.module.named_parameters():
        full = weights.full(param)
        if pruner is not None:
            full = pruner.fold(name, full)
        if rank == 0:
            state[name] = full.detach().cpu().clone()
    return state


def build_standalone(engine: Any, state: dict[str, torch.Tensor]) -> Any:
    """A fresh copy of the trained model on the CPU holding ``state`` (rank 0)."""
    config = copy.deepcopy(engine.module.config)
    model = type(engine.module)(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    parameter_names = {name for name, _ in model.named_parameters()}
    absent = [name for name in missing if name in parameter_names]
    if unexpected or absent:
        raise RuntimeError(
            f"export: gathered weights do not fit the model (missing {absent[:5]}, unexpected "
            f"{unexpected[:5]})"
        )
    model.tie_weights()
    return model.float().eval()


def quantize_int8_dynamic(model: Any) -> Any:
    """Linear layers with int8 weights and dynamically quantized activations (CPU inference)."""
    with warnings.catch_warnings():
        # torch announces the move of eager-mode quantization to torchao on every call.
        warnings.simplefilter("ignore", UserWarning)
        quantized = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
            copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8
        )
    return quantized


def load_quantized(directory: str | Path, task: Task) -> Any:
    """Load a ``model-int8`` directory written by :func:`export_model`."""
    from transformers import AutoConfig

    from accel_trainer.models import _auto_class

    path = Path(directory)
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    model = quantize_int8_dynamic(_auto_class(task).from_config(config).eval())
    model.load_state_dict(torch.load(path / QUANTIZED_FILE, weights_only=False))
    return model.eval()


def selected_sparsity(model: Any, names: list[str]) -> float:
    """Share of exact zeros in the named weights of a saved model."""
    parameters = dict(model.named_parameters())
    zeros = total = 0
    for name in names:
        tensor = parameters[name]
        zeros += int(tensor.numel() - torch.count_nonzero(tensor))
        total += int(tensor.numel())
    return zeros / total if total else 0.0


def _forward(model: Any) -> Any:
    def forward(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits: torch.Tensor = model(**batch).logits
        return logits

    return forward


def export_model(
    *,
    engine: Any,
    weights: MasterWeights,
    pruner: Pruner | None,
    tokenizer: Any,
    output_dir: Path,
    rank: int,
    quantize: QuantizeMode,
    evaluator: Evaluator | None,
) -> dict[str, Any] | None:
    """Gather, save and score the final model; returns the export report on rank 0."""
    state = gather_full_state(engine, weights, pruner, rank)
    if rank != 0:
        return None
    model = build_standalone(engine, state)
    model_dir = output_dir / MODEL_DIR
    model_dir.mkdir(parents=True, exist_ok=True)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    model.save_pretrained(str(model_dir))
    tokenizer.save_pretrained(str(model_dir))
    report: dict[str, Any] = {
        "model_dir": str(model_dir),
        "size_bytes": sum(f.stat().st_size for f in model_dir.glob("*.safetensors")),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    if pruner is not None:
        report["sparsity"] = selected_sparsity(model, pruner.names)
        report["pruned_weights"] = pruner.names
    if evaluator is not None:
        report["eval"] = evaluator.evaluate(_forward(model), reduce=False)
    if quantize is QuantizeMode.INT8_DYNAMIC:
        quantized = quantize_int8_dynamic(model)
        quantized_dir = output_dir / QUANTIZED_DIR
        quantized_dir.mkdir(parents=True, exist_ok=True)
        model.config.save_pretrained(str(quantized_dir))
        tokenizer.save_pretrained(str(quantized_dir))
        torch.save(quantized.state_dict(), quantized_dir / QUANTIZED_FILE)
        report["quantized"] = {
            "mode": quantize.value,
            "model_dir": str(quantized_dir),
            "size_bytes": (quantized_dir / QUANTIZED_FILE).stat().st_size,
        }
        if evaluator is not None:
            report["quantized"]["eval"] = evaluator.evaluate(_forward(quantized), reduce=False)
    temporary = output_dir / (REPORT_FILE + ".tmp")
    temporary.write_text(json.dumps(report, indent=2, sort_keys=True), encoding="utf-8")
    temporary.replace(output_dir / REPORT_FILE)
    return report
