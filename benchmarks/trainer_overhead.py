"""What the trainer's own work costs: samples/s of ``accel_trainer`` against a bare
``deepspeed.initialize`` loop and plain PyTorch DDP, on the same model, batch and ranks.

    .venv/bin/python benchmarks/trainer_overhead.py                   # ZeRO-2 bf16, 2 ranks
    .venv/bin/python benchmarks/trainer_overhead.py --zero 3 --steps 120 --repeats 2

The three contenders run in turn, ``--repeats`` times (interleaved, so a noisy neighbour hurts
all of them alike), each as 2 processes under torch's elastic launcher with one OpenMP thread
per core per rank:

* ours  - ``python -m accel_trainer run`` on a job rendered by the operator's renderer, its
  summary line's steady-state samples/s (the loop with metrics, logging, the per-step stop
  check; evaluation and checkpoints excluded, the first steps excluded);
* bare  - the same model (the config the trainer exported), the same ``ds_config.json`` and
  the trainer's own batches, built before the clock starts: forward, ``engine.backward``,
  ``engine.step`` and nothing else, with the env our launcher gives its ranks;
* ddp   - the same model under ``DistributedDataParallel`` with ``torch.optim.AdamW`` (bf16
  autocast when the job trains in bf16).

``--pruning 0.5`` adds gradual pruning to our run (the baselines stay dense) and reports the
share of step time spent keeping the masks. It prints a table (best and median samples/s of
each) and, as the last line, ``overhead_ratio=<ours/bare>`` from the best runs; the target is
>= 0.98.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
WARMUP_STEPS = 2  # the same number the trainer leaves out of its summary


def job_spec(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "image": "acceltrain/trainer-cpu:bench",
        "workers": 1,
        "devicesPerWorker": 0,
        "procsPerWorker": args.nproc,
        "model": {
            "task": "sequence-classification",
            "config": {
                "architecture": "bert",
                "hiddenSize": args.hidden,
                "numLayers": args.layers,
                "numHeads": max(1, args.hidden // 64),
                "maxPositionEmbeddings": max(64, args.seq),
            },
        },
        "data": {
            "synthetic": {"numSamples": 8192, "numLabels": 2, "vocabWords": 1024},
            "maxLength": args.seq,
            "evalFraction": 0.0,
        },
        "training": {
            "maxSteps": args.steps,
            "microBatchSize": args.micro_batch,
            "logEvery": 50,
            "optimizer": {"type": "adamw", "lr": 1e-4},
            "scheduler": {"type": "linear", "warmupSteps": 10},
        },
        "deepspeed": {"zero": {"stage": args.zero}, "precision": args.precision},
        "checkpoint": {"path": "/checkpoints", "everySteps": 1000000, "keep": 1},
        **(
            {
                "pruning": {
                    "targetSparsity": args.pruning,
                    "startStep": 0,
                    "endStep": max(2, args.steps // 2),
                    "frequency": 10,
                }
            }
            if args.pruning
            else {}
        ),
        "volumes": [{"name": "c", "mountPath": "/checkpoints", "hostPath": {"path": "/tmp"}}],
    }


def render(directory: Path, args: argparse.Namespace) -> Path:
    return render_spec(directory, job_spec(args), args.metrics_port)


def render_spec(directory: Path, job: dict[str, Any], metrics_port: int) -> Path:
    """trainer.json and ds_config.json of ``job`` (an AccelTrainJob spec) exactly as the
    operator renders them, checkpoints in ``directory/ckpt``; the path of trainer.json."""
    sys.path.insert(0, str(REPO_ROOT / "operator"))
    from accel_operator import api, render

    spec = api.AccelTrainJobSpec.model_validate(job)
    config = render.trainer_config(spec, render.JobRef("bench", "default", "bench"), attempt=0)
    config = config.model_copy(
        update={
            "checkpoint": config.checkpoint.model_copy(update={"dir": str(directory / "ckpt")}),
            "metrics": config.metrics.model_copy(update={"port": metrics_port}),
        }
    )
    (directory / "trainer.json").write_text(config.to_json())
    (directory / "ds_config.json").write_text(json.dumps(render.deepspeed_config(spec), indent=2))
    return directory / "trainer.json"


def clean_env() -> dict[str, str]:
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("ACCELTRAIN_") and key not in ("MASTER_ADDR", "MASTER_PORT")
    }


def trainer_summary(config: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """Run ``python -m accel_trainer run`` on ``config``; the fields of its summary line."""
    completed = subprocess.run(
        [sys.executable, "-m", "accel_trainer", "run", "--config", str(config)],
        env=env if env is not None else clean_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"accel-trainer: done: (.*)", completed.stdout)
    if completed.returncode != 0 or not match:
        raise SystemExit(f"the trainer failed:\n{(completed.stdout + completed.stderr)[-4000:]}")
    return dict(pair.split("=", 1) for pair in match.group(1).split())


def run_ours(directory: Path, args: argparse.Namespace) -> tuple[float, float]:
    """(samples/s, share of step time spent applying pruning masks) from the summary line."""
    summary = trainer_summary(render(directory, args))
    return float(summary["samples_per_second"]), float(summary["mask_time_ratio"])


def rank_env(directory: Path, nproc: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The env our launcher gives its ranks (threads per rank, DeepSpeed accelerator, caches)
    for the job rendered in ``directory``, on top of ``base`` (default: :func:`clean_env`)."""
    from accel_trainer.launch import rank_environment, rendezvous_from_env
    from accel_trainer.runconfig import load_trainer_config

    config = load_trainer_config(directory / "trainer.json")
    rendezvous = rendezvous_from_env({}, config, nproc)
    env = dict(base) if base is not None else clean_env()
    env.update(rank_environment(config, rendezvous, directory, env))
    return env


def launch_ranks(
    nproc: int, script_args: list[str], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """``nproc`` ranks of a script under ``torch.distributed.run`` (standalone rendezvous)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
            *script_args,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def run_baseline(kind: str, directory: Path, args: argparse.Namespace) -> float:
    result = directory / f"{kind}.json"
    completed = launch_ranks(
        args.nproc,
        [
            __file__,
            "--worker",
            kind,
            "--workdir",
            str(directory),
            "--result",
            str(result),
            "--steps",
            str(args.steps),
        ],
        rank_env(directory, args.nproc),
    )
    if completed.returncode != 0 or not result.exists():
        raise SystemExit(
            f"the {kind} loop failed:\n{(completed.stdout + completed.stderr)[-4000:]}"
        )
    samples_per_second: float = json.loads(result.read_text())["samples_per_second"]
    result.unlink()
    return samples_per_second


# --- the baseline loops (run once per rank under torch.distributed.run) ----------------------
def trainer_batches(
    workdir: Path, trainer: dict[str, Any], micro: int, count: int
) -> list[dict[str, Any]]:
    """This rank's first ``count`` micro-batches as the trainer builds them (same data, tokenizer
    and order): padding changes the attention kernels, so random full-length batches would not
    compare."""
    import torch

    from accel_contract.config import TrainerConfig
    from accel_trainer.data import ShardedOrder, load_corpus, tokenize
    from accel_trainer.tokenization import from_serialized, serialized_from_dir

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    config = TrainerConfig.model_validate(trainer)
    corpus = load_corpus(config.data, config.model, config.training.seed)
    tokenizer = from_serialized(
        serialized_from_dir(workdir / "ckpt" / "output" / "model"), config.data.max_length
    )
    batching = config.data.batching
    split = tokenize(
        corpus.train, config.model.task, tokenizer, config.data.max_length, batching.padding
    )
    lengths = split.lengths if batching.group_by_length else None
    order = ShardedOrder(len(split), micro, world, rank, config.training.seed, lengths)
    return [
        split.batch(order.indices(index), torch.device("cpu")).tensors for index in range(count)
    ]


def bare_step(
    model: Any, ds_config: dict[str, Any], batches: Iterator[dict[str, Any]]
) -> Callable[[], None]:
    """Joins the ranks, builds the DeepSpeed engine, and returns one optimizer step of the loop
    every DeepSpeed tutorial starts from."""
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), config=ds_config
    )

    def step() -> None:
        for _ in range(ds_config["gradient_accumulation_steps"]):
            loss = engine(**next(batches)).loss
            engine.backward(loss)
            engine.step()

    return step


def ddp_step(
    model: Any, ds_config: dict[str, Any], batches: Iterator[dict[str, Any]]
) -> Callable[[], None]:
    """Joins the ranks, wraps ``model`` in DDP, and returns one optimizer step of plain DDP with
    torch's AdamW (bf16 autocast when ``ds_config`` asks for bf16)."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=ds_config["optimizer"]["params"]["lr"])
    bf16 = bool(ds_config.get("bf16", {}).get("enabled"))
    accumulation = ds_config["gradient_accumulation_steps"]

    def step() -> None:
        for index in range(accumulation):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = ddp(**next(batches)).loss / accumulation
            if index < accumulation - 1:
                with ddp.no_sync():
                    loss.backward()
            else:
                loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def worker(kind: str, workdir: Path, result: Path, steps: int) -> None:
    import torch
    import torch.distributed as dist
    from transformers import AutoConfig, AutoModelForSequenceClassification

    trainer = json.loads((workdir / "trainer.json").read_text())
    ds_config = json.loads((workdir / "ds_config.json").read_text())
    world = int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    # The model the trainer built, from the config it exported (same vocabulary size).
    model_config = AutoConfig.from_pretrained(workdir / "ckpt" / "output" / "model")
    torch.manual_seed(trainer["training"]["seed"])
    model = AutoModelForSequenceClassification.from_config(model_config)
    micro = ds_config["train_micro_batch_size_per_gpu"]
    accumulation = ds_config["gradient_accumulation_steps"]
    ds_config["train_batch_size"] = micro * accumulation * world
    # Built before the clock starts.
    batches = iter(trainer_batches(workdir, trainer, micro, steps * accumulation))
    step = (bare_step if kind == "bare" else ddp_step)(model, ds_config, batches)

    for _ in range(WARMUP_STEPS):
        step()
    dist.barrier()
    started = time.perf_counter()
    for _ in range(steps - WARMUP_STEPS):
        step()
    dist.barrier()
    seconds = time.perf_counter() - started
    if int(os.environ["RANK"]) == 0:
        samples = (steps - WARMUP_STEPS) * micro * accumulation * world
        result.write_text(json.dumps({"samples_per_second": samples / seconds}))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zero", type=int, default=2, choices=(0, 1, 2, 3))
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--metrics-port", type=int, default=19400)
    parser.add_argument(
        "--pruning", type=float, default=0.0, help="also prune our run to this sparsity"
    )
    parser.add_argument("--worker", choices=("bare", "ddp"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.workdir, args.result, args.steps)
        return

    measured: dict[str, list[float]] = {"ours": [], "bare": [], "ddp": []}
    mask_ratios: list[float] = []
    with tempfile.TemporaryDirectory(prefix="trainer-overhead-") as temporary:
        directory = Path(temporary)
        for repeat in range(args.repeats):
            # A fresh directory each time: the trainer would resume from an earlier checkpoint.
            workdir = directory / f"repeat-{repeat}"
            workdir.mkdir()
            # The baselines reuse the model config the trainer exported, so it runs first.
            samples_per_second, mask_ratio = run_ours(workdir, args)
            measured["ours"].append(samples_per_second)
            mask_ratios.append(mask_ratio)
            baselines = ["bare", "ddp"] if repeat % 2 == 0 else ["ddp", "bare"]
            for kind in baselines:
                measured[kind].append(run_baseline(kind, workdir, args))
            print(
                f"repeat {repeat + 1}/{args.repeats}: "
                + "  ".join(f"{name} {values[-1]:.1f}" for name, values in measured.items()),
                flush=True,
            )
    # Other processes on the machine only ever slow a run down, so the best of the repeats is
    # the closest to what each loop can do; the median shows the spread.
    best = {name: max(values) for name, values in measured.items()}
    medians = {name: statistics.median(values) for name, values in measured.items()}
    bare = best["bare"]
    print()
    print(
        f"ZeRO-{args.zero} {args.precision}, {args.nproc} ranks, BERT hidden {args.hidden} x "
        f"{args.layers} layers, seq {args.seq}, micro-batch {args.micro_batch}, {args.steps} "
        f"steps, best and median of {args.repeats} runs each"
    )
    print(f"{'loop':<28}{'best samples/s':>16}{'median':>10}{'best vs bare':>14}")
    labels = {
        "ours": "accel_trainer",
        "bare": "bare deepspeed.initialize",
        "ddp": "plain DDP (torch AdamW)",
    }
    for name, label in labels.items():
        print(f"{label:<28}{best[name]:>16.1f}{medians[name]:>10.1f}{best[name] / bare:>14.3f}")
    if args.pruning:
        print(
            f"pruning to {args.pruning} (ours only): applying masks took "
            f"{100 * statistics.median(mask_ratios):.2f}% of step time (median)"
        )
    print(f"overhead_ratio={best['ours'] / bare:.3f}")


if __name__ == "__main__":
    main()
