"""The BERT-base CoNLL-2003 reference run script (``make quality-gpu``), at a tiny size on CPU.

The GPU run itself needs a GPU and BERT-Base; here the same script runs the same manifest's spec
with a tiny BERT written by the test (same files as the converted checkpoint: config, safetensors,
cased WordPiece vocabulary) on a CoNLL-2003 subset, on CPU ranks. It must produce the page a GPU
run produces: per-type reports on dev and on test, the trainer's throughput, and targets that
say ``no`` when missed (a tiny model trained for a few steps misses them).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.benchmarks.scripts import load_benchmark

pytestmark = [
    pytest.mark.slow,
    pytest.mark.training,
    pytest.mark.usefixtures("deepspeed_ops"),
]

STEPS = 6


def _tiny_cased_bert(directory: Path, words: list[str]) -> None:
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    directory.mkdir(parents=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    (directory / "vocab.txt").write_text("\n".join(specials + words) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(directory / "vocab.txt"), do_lower_case=False)
    tokenizer.save_pretrained(directory)
    config = BertConfig(
        vocab_size=len(specials) + len(words),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
    )
    BertForMaskedLM(config).save_pretrained(directory)


def test_the_reference_run_script_writes_dev_and_test_reports_and_honest_targets(
    tmp_path: Path,
) -> None:
    quality = load_benchmark("quality", "quality_benchmark")
    script = load_benchmark("quality_gpu", "quality_gpu")
    inputs = tmp_path / "inputs"
    quality.prepare(inputs, 256, 64)
    train = (inputs / "conll2003" / "train.conll").read_text().split()
    words = sorted({token for token in train[0::2]})[:2000]
    _tiny_cased_bert(inputs / "bert-base-cased", words)
    doc = tmp_path / "quality-gpu.md"

    code = script.main(
        [
            "--inputs", str(inputs), "--work-dir", str(tmp_path / "work"), "--doc", str(doc),
            "--cpu", "--max-steps", str(STEPS),
        ]
    )  # fmt: skip

    assert code == 0, (tmp_path / "work" / "trainer.log").read_text()[-3000:]
    page = doc.read_text()
    dev, test = page.split("## dev", 1)[1].split("## test", 1)
    # The reference's layout: one row per entity type, then the averages, on both splits.
    for section in (dev, test):
        rows = [line.split()[0] for line in section.splitlines() if line.strip()]
        assert {"PER", "ORG", "LOC", "MISC"} <= set(rows), section
        assert "micro avg" in section and "macro avg" in section
    assert "| dev micro-F1 >= 94.00 |" in page and "| test micro-F1 >= 90.00 |" in page
    # A tiny model after six steps is far from the targets: the page must say so.
    assert page.count("| no |") == 2, page
    assert f"({STEPS} optimizer steps)" in page
    assert "real tokens/s" in page and "MFU" in page
