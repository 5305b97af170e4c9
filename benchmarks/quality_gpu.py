"""The BERT-base CoNLL-2003 reference run on one machine with a GPU, without a cluster.

Runs the spec of ``manifests/examples/conll2003-bert-base.yaml`` (BERT-Base cased, the reference
recipe: AdamW at 5e-5, linear warmup and decay, 3 epochs, batch 32, fp16, ZeRO-2) with the trainer
the operator would start, on this machine: the spec is rendered to ``trainer.json`` and
``ds_config.json`` by the operator's own renderer, the manifest's ``/inputs`` claim becomes
``--inputs`` (what ``benchmarks/quality/prepare_data.py`` and ``prepare_bert.py`` write), and
``python -m accel_trainer run`` starts one rank per GPU. It then writes ``--doc``
(docs/quality-gpu.md): the CoNLL-style per-type reports on dev and on test, the throughput the
trainer measured (real tokens/s, TFLOP/s and MFU per device, padding efficiency), the wall time,
and the targets (dev micro-F1 >= 94.00, test >= 90.00), each ``met: no`` when missed.

``--cpu`` runs the same recipe on CPU ranks in fp32 (how the script is tested, at a tiny size with
``--max-steps``); the page then says so.

Usage::

    make quality-gpu                      # = python benchmarks/quality_gpu.py
    python benchmarks/quality_gpu.py --inputs /data/quality --max-steps 200
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "operator"))
sys.path.insert(0, str(REPO_ROOT / "trainer_image"))

from accel_operator import api, render  # noqa: E402

MANIFEST = REPO_ROOT / "manifests" / "examples" / "conll2003-bert-base.yaml"
INPUTS_MOUNT = "/inputs"
TARGET_DEV_F1 = 0.94
TARGET_TEST_F1 = 0.90
SUMMARY = re.compile(r"accel-trainer: done: (.*)")


def load_spec(path: Path) -> dict[str, Any]:
    for document in yaml.safe_load_all(path.read_text()):
        if document and document.get("kind") == api.KIND:
            spec: dict[str, Any] = document["spec"]
            return spec
    raise SystemExit(f"{path} has no {api.KIND}")


def local_spec(spec: dict[str, Any], *, cpu: bool, max_steps: int | None) -> dict[str, Any]:
    """The manifest's spec for this machine: CPU ranks in fp32 with ``cpu``; ``max_steps``
    replaces the epochs (warmup, evaluations and checkpoints scaled down to fit)."""
    spec = json.loads(json.dumps(spec))
    if cpu:
        spec.update(devicesPerWorker=0, procsPerWorker=1, image="acceltrain/trainer-cpu:local")
        spec["deepspeed"]["precision"] = "fp32"
    if max_steps is not None:
        training = spec["training"]
        training.pop("epochs", None)
        training["maxSteps"] = max_steps
        training["evalEvery"] = max_steps
        training["logEvery"] = max(1, min(training.get("logEvery", 50), max_steps // 4 or 1))
        training["scheduler"]["warmupSteps"] = max(1, max_steps // 10)
        spec["checkpoint"]["everySteps"] = max_steps
    return spec


def _on_this_machine(path: str, inputs: Path) -> str:
    if path == INPUTS_MOUNT or path.startswith(INPUTS_MOUNT + "/"):
        return str(inputs / path[len(INPUTS_MOUNT) :].lstrip("/"))
    return path


def write_trainer_files(spec_doc: dict[str, Any], inputs: Path, work: Path) -> Path:
    """trainer.json and ds_config.json as the operator renders them, with the claims' paths
    moved to this machine's directories."""
    spec = api.AccelTrainJobSpec.model_validate(spec_doc)
    ref = render.JobRef("conll2003-bert-base", "default", "local")
    config = render.trainer_config(spec, ref, attempt=0)
    data = config.data.model_copy(
        update={
            name: _on_this_machine(value, inputs)
            for name in ("path", "eval_path", "test_path")
            if (value := getattr(config.data, name)) is not None
        }
    )
    model = config.model.model_copy(
        update={"pretrained": _on_this_machine(config.model.pretrained or "", inputs)}
    )
    checkpoint = config.checkpoint.model_copy(update={"dir": str(work / "checkpoints")})
    config = config.model_copy(update={"data": data, "model": model, "checkpoint": checkpoint})
    (work / "trainer.json").write_text(config.to_json())
    (work / "ds_config.json").write_text(json.dumps(render.deepspeed_config(spec), indent=2))
    return work / "trainer.json"


def run_trainer(config: Path, log: Path) -> tuple[int, float]:
    """Exit code and wall seconds of the trainer, its output teed to ``log``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELTRAIN_")}
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    started = time.monotonic()
    with log.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "accel_trainer", "run", "--config", str(config)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert process.stdout is not None
        for line in process.stdout:
            sink.write(line)
            if line.startswith("accel-trainer:"):
                print(line, end="", flush=True)
        code = process.wait()
    return code, time.monotonic() - started


def summary_of(log_text: str) -> dict[str, str]:
    found = SUMMARY.findall(log_text)
    if not found:
        return {}
    return dict(pair.split("=", 1) for pair in found[-1].split() if "=" in pair)


def _pct(value: float) -> str:
    return f"{value * 100:.2f}"


def targets(dev: dict[str, Any], test: dict[str, Any] | None) -> list[str]:
    test_f1 = test["f1"] if test else 0.0
    rows = [
        (f"dev micro-F1 >= {_pct(TARGET_DEV_F1)}", _pct(dev["f1"]), dev["f1"] >= TARGET_DEV_F1),
        (f"test micro-F1 >= {_pct(TARGET_TEST_F1)}", _pct(test_f1), test_f1 >= TARGET_TEST_F1),
    ]
    return ["| target | measured | met |", "|---|---|---|"] + [
        f"| {target} | {measured} | {'yes' if met else 'no'} |" for target, measured, met in rows
    ]


def render_page(
    spec: dict[str, Any], eval_dir: Path, summary: dict[str, str], wall: float, how: str
) -> str:
    dev = json.loads((eval_dir / "final.json").read_text())
    test_file = eval_dir / "test.json"
    test = json.loads(test_file.read_text()) if test_file.exists() else None
    training, ds = spec["training"], spec["deepspeed"]
    length = (
        f"{training['epochs']} epochs" if "epochs" in training else f"{training['maxSteps']} steps"
    )
    out = [
        "# Quality: BERT-base cased on CoNLL-2003 (the reference run)",
        "",
        "Generated by `benchmarks/quality_gpu.py` from one run of the spec of "
        "`manifests/examples/conll2003-bert-base.yaml`, rendered by the operator's renderer and "
        "run by the trainer on one machine; every number below was measured in that run.",
        "",
        f"**Run**: {how}; {length} ({dev['step']} optimizer steps), micro-batch "
        f"{training['microBatchSize']}, lr {training['optimizer']['lr']}, ZeRO-"
        f"{ds['zero']['stage']}, {ds['precision']}; wall time {wall / 60:.1f} min (model load, "
        "training, evaluations, export).",
        "",
        "**Throughput** (steady state, the trainer's summary): "
        f"{summary.get('samples_per_second', '-')} samples/s, "
        f"{summary.get('tokens_per_second', '-')} real tokens/s, "
        f"{summary.get('tflops_per_device', '-')} TFLOP/s per device, MFU "
        f"{summary.get('mfu', '-')}, padding efficiency {summary.get('padding_efficiency', '-')}.",
        "",
        "## Targets",
        "",
        *targets(dev, test),
        "",
    ]
    for split, scores in (("dev", dev), ("test", test)):
        if scores is not None:
            out += [f"## {split}", "", "```", scores["report"].rstrip(), "```", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--inputs",
        type=Path,
        default=Path("/var/lib/acceltrain/quality"),
        help="what the quality-inputs claim holds: conll2003/ and bert-base-cased/",
    )
    parser.add_argument("--manifest", type=Path, default=MANIFEST)
    parser.add_argument("--work-dir", type=Path, help="checkpoints and the log of this run")
    parser.add_argument("--doc", type=Path, default=REPO_ROOT / "docs" / "quality-gpu.md")
    parser.add_argument("--cpu", action="store_true", help="CPU ranks in fp32 (tests)")
    parser.add_argument("--max-steps", type=int, help="reduced: optimizer steps instead of epochs")
    args = parser.parse_args(argv)

    work = (args.work_dir or Path(tempfile.mkdtemp(prefix="acceltrain-quality-gpu-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    spec = local_spec(load_spec(args.manifest), cpu=args.cpu, max_steps=args.max_steps)
    config = write_trainer_files(spec, args.inputs.resolve(), work)
    code, wall = run_trainer(config, work / "trainer.log")
    if code != 0:
        print(f"the trainer failed (exit {code}); its log: {work / 'trainer.log'}")
        return code
    how = "CPU ranks in fp32 (--cpu)" if args.cpu else "one rank per GPU"
    if args.max_steps:
        how += f", reduced to {args.max_steps} steps (--max-steps)"
    summary = summary_of((work / "trainer.log").read_text())
    page = render_page(spec, work / "checkpoints" / "output" / "eval", summary, wall, how)
    args.doc.write_text(page)
    print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
