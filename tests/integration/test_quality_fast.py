"""The quality pipeline end to end, small: MiniLM-L6 fine-tuned on BBC News and Twitter NER.

The fast variant of ``benchmarks/quality.py``: the real pretrained model and real data (a few
hundred examples written by ``benchmarks/quality/prepare_data.py``), the pruned example manifests
shortened to a few dozen steps, run as AccelTrainJobs by the operator on the local cluster. It
checks that the pipeline works (the loss falls, the reports and both exports are written, the
pruned weights reach the target sparsity, the pruned classifier still beats chance), not the
quality targets of the full benchmark. The jobs run in fp32 with short sequences: CPUs without
native bf16 (AVX2-only machines such as CI runners) emulate bf16 matrix products dozens of times
slower than fp32.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from .operator_harness import REPO_ROOT, install_crd, running_operator

pytestmark = [pytest.mark.slow, pytest.mark.trainer, pytest.mark.usefixtures("deepspeed_ops")]

FAST_STEPS = 40
PRUNE_FROM = 20
PRUNE_UNTIL = 32
FAST_TRAIN = 320
FAST_EVAL = 64
FAST_MAX_LENGTH = 32
FAST_MICRO_BATCH = 8
JOB_TIMEOUT = 300
BBC_TOPICS = 5


def _benchmark() -> ModuleType:
    # benchmarks/ is not a package and benchmarks/quality/ shadows the module's name.
    spec = importlib.util.spec_from_file_location(
        "quality_benchmark", REPO_ROOT / "benchmarks" / "quality.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def benchmark() -> ModuleType:
    return _benchmark()


@pytest.fixture(scope="module")
def inputs(benchmark: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("quality-inputs")
    benchmark.prepare(directory, FAST_TRAIN, FAST_EVAL)
    return directory


def _loss_before_and_after_learning(losses: list[tuple[int, float]]) -> tuple[float, float]:
    """Mean of the first two logged losses, and of the last two before pruning starts (the
    fast schedule prunes half the encoder in a dozen steps, which costs some of the learning)."""
    dense = [loss for step, loss in losses if step <= PRUNE_FROM]
    return (dense[0] + dense[1]) / 2, (dense[-2] + dense[-1]) / 2


@pytest.mark.parametrize("manifest", ["bbc-minilm-pruned-zero2", "ner-minilm-pruned-zero2"])
def test_a_pruned_minilm_fine_tune_learns_reports_and_exports_through_the_operator(
    manifest: str,
    benchmark: ModuleType,
    inputs: Path,
    cluster: Any,
    namespace: str,
    tmp_path: Path,
) -> None:
    install_crd(cluster)
    runs = tmp_path / "runs"
    spec = benchmark.local_spec(
        benchmark.load_manifest(manifest),
        inputs_dir=inputs,
        runs_dir=runs,
        max_steps=FAST_STEPS,
        precision="fp32",
    )
    spec["data"]["maxLength"] = FAST_MAX_LENGTH
    spec["training"]["microBatchSize"] = FAST_MICRO_BATCH
    # Learn first, then prune: the logged losses before pruning starts show the learning alone.
    spec["pruning"].update(startStep=PRUNE_FROM, endStep=PRUNE_UNTIL, frequency=4)
    spec["runPolicy"]["maxRestarts"] = 0

    with running_operator(cluster, namespace, tmp_path):
        jobs = benchmark.Jobs(cluster.kubeconfig)
        run = benchmark.run_job(
            cluster, jobs, namespace, manifest, spec, runs / manifest, JOB_TIMEOUT
        )
    assert run.phase == "Succeeded", f"{manifest}: {run.message}\n{run.log[-3000:]}"

    steps = [step for step, _ in run.losses]
    assert steps[-1] == FAST_STEPS and len(steps) >= 4, f"logged steps: {steps}"
    first, learned = _loss_before_and_after_learning(run.losses)
    assert learned < first, f"the training loss did not fall: {run.losses}"

    result = benchmark.collect(run, inputs)
    final = result.final
    assert final["step"] == FAST_STEPS
    if final["task"] == "sequence-classification":
        assert final["examples"] == FAST_EVAL
        assert set(final["per_class"]) <= set(
            json.loads((inputs / "split.json").read_text())["bbc"]["labels"]
        )
        # Pruning must leave a working classifier: removing the pooler (its weights are tiny in
        # this checkpoint) once sent every document to the same topic, 1 in 5 right.
        assert final["accuracy"] >= 2 / BBC_TOPICS, final["report"]
    else:
        assert final["sentences"] > 0
        assert {"micro avg", "macro avg"} <= set(final)
    assert "precision" in final["report"] and "f1" in final["report"]

    # The target is reached by pruning.endStep and the masks hold until the export.
    target = spec["pruning"]["targetSparsity"]
    assert result.sparsity == pytest.approx(target, abs=0.01)
    assert result.export["sparsity"] == pytest.approx(result.sparsity, abs=1e-6)

    comparison = result.int8
    assert comparison["size_ratio"] < 1.0
    assert comparison["int8_ms"] > 0 and comparison["fp32_ms"] > 0
    assert (run.output_dir / "model-int8" / "model_int8.pt").is_file()
