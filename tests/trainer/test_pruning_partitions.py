"""Pruning under ZeRO-2 when one rank's optimizer partition holds none of the pruned weights.

ZeRO-1/2 split one flat fp32 buffer of all parameters between the ranks, in parameter order.
With a large vocabulary the embeddings (never pruned) fill rank 0's half, so rank 0 owns no
fragment of any pruned matrix while rank 1 owns them all. Every collective of the pruning code
must still be entered by both ranks; a rank that decides from its own fragments alone whether to
take part leaves its peer waiting forever, so the run is bounded by a timeout.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoModelForSequenceClassification

from .conftest import render_job, run_trainer

pytestmark = [pytest.mark.training, pytest.mark.slow]

TARGET = 0.5
# A healthy run of this job takes well under a minute; a hang is cut off here.
HANG_TIMEOUT_S = 180


def test_zero2_pruning_finishes_when_one_rank_holds_no_pruned_weights(tmp_path: Path) -> None:
    job = render_job(
        tmp_path,
        {
            "model": {
                "config": {
                    "architecture": "bert",
                    "hiddenSize": 64,
                    "numLayers": 2,
                    "numHeads": 2,
                    "maxPositionEmbeddings": 64,
                    "vocabSize": 12000,
                }
            },
            "training": {"maxSteps": 20},
            "deepspeed": {"zero": {"stage": 2}, "precision": "bf16"},
            "pruning": {"targetSparsity": TARGET, "startStep": 0, "endStep": 10, "frequency": 5},
        },
    )

    run = run_trainer(job, timeout=HANG_TIMEOUT_S)

    assert run.returncode == 0, run.tail()
    sparsity_by_step = {int(line["step"]): line["sparsity"] for line in run.progress()}
    assert sorted(sparsity_by_step) == [5, 10, 15, 20]
    for step in (10, 15, 20):
        assert sparsity_by_step[step] == pytest.approx(TARGET, abs=0.01), step

    report = job.export_report()
    assert report["sparsity"] == pytest.approx(TARGET, abs=0.01)
    # The premise: the embeddings are more than half of all parameters, so the first half of
    # the flat buffer (rank 0's partition) holds nothing that is pruned.
    model = AutoModelForSequenceClassification.from_pretrained(report["model_dir"])
    sizes = {name: param.numel() for name, param in model.named_parameters()}
    embeddings = sum(size for name, size in sizes.items() if ".embeddings." in name)
    assert embeddings > sum(sizes.values()) / 2
    assert not any(".embeddings." in name for name in report["pruned_weights"])
