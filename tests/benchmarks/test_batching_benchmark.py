"""The batching benchmark end to end, small: ``benchmarks/batching.py --quick``.

Runs what a user runs (MiniLM-L6 on 512 CoNLL-2003 sentences, 6 steps, our trainer three ways
and the Hugging Face Trainer on DeepSpeed, 2 CPU ranks each) and checks what they would read:
four rows with real tokens/s, padding efficiency in the order length-aware batching promises,
and ratio lines that follow from the rows. The throughput targets belong to the full benchmark;
a 6-step run on a shared machine says nothing about them. No cluster is involved.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from localcluster import free_port
from tests.operator_harness import REPO_ROOT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.training,
    pytest.mark.usefixtures("deepspeed_ops"),
]

SCRIPT = REPO_ROOT / "benchmarks" / "batching.py"
TIMEOUT_S = 600
GROUPED, LONGEST, MAX_LENGTH, HF = (
    "ours: Longest + groupByLength",
    "ours: Longest",
    "ours: MaxLength",
    "HF Trainer: group_by_length",
)


def _table_rows(output: str) -> dict[str, list[str]]:
    """Markdown table rows by their first cell (header and rule rows included)."""
    rows: dict[str, list[str]] = {}
    for line in output.splitlines():
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_quick_run_compares_four_contenders_and_derives_its_ratios_from_them() -> None:
    completed = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            # The fewest steps that still time some (two warm-up steps are left out).
            "--steps",
            "4",
            "--metrics-port",
            str(free_port()),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    output = completed.stdout
    assert completed.returncode == 0, (output + completed.stderr)[-6000:]
    rows = _table_rows(output)
    contenders = [name for name in rows if name.startswith(("ours:", "HF Trainer:"))]
    assert contenders == [GROUPED, LONGEST, MAX_LENGTH, HF], output

    # Columns: real tokens/s best, median, samples/s best, padding efficiency, wall s median.
    tokens = {name: float(rows[name][0]) for name in contenders}
    efficiency = {name: float(rows[name][3]) for name in contenders}
    for name in contenders:
        assert tokens[name] > 0 and float(rows[name][2]) > 0, (name, rows[name])
        assert 0 < efficiency[name] <= 1, (name, rows[name])
    assert efficiency[GROUPED] > efficiency[LONGEST] > efficiency[MAX_LENGTH], efficiency

    # The last lines are name=value, and each value is the quotient of the rows' best tokens/s;
    # the ratio table's value and verdict say the same.
    last = dict(line.split("=", 1) for line in output.strip().splitlines()[-2:])
    expected = {
        "ratio_vs_max_length": (tokens[GROUPED] / tokens[MAX_LENGTH], 3.0),
        "ratio_vs_hf": (tokens[GROUPED] / tokens[HF], 1.1),
    }
    assert set(last) == set(expected), output
    ratio_rows = [cells for name, cells in rows.items() if " / " in name]
    assert len(ratio_rows) == 2, output
    for (name, (value, target)), cells in zip(expected.items(), ratio_rows, strict=True):
        # The table shows tokens/s to 0.1, so its quotient matches to about 1e-3.
        assert float(last[name]) == pytest.approx(value, rel=2e-3), (name, output)
        assert float(cells[0]) == float(last[name])
        assert cells[1] == f">= {target}"
        assert cells[2] == ("yes" if float(last[name]) >= target else "no"), cells
