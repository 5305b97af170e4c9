"""Product functions fit on a screen: at most 60 lines in the operator, the trainer, the contract
and the local cluster, every module of their packages included."""

from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PRODUCT = (
    "operator/accel_operator",
    "trainer_image/accel_trainer",
    "trainer_image/accel_contract",
    "hack/localcluster",
)
MAX_LINES = 60


def _function_lengths() -> dict[str, int]:
    lengths: dict[str, int] = {}
    for folder in PRODUCT:
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    key = f"{path.relative_to(REPO_ROOT)}:{node.name}"
                    size = (node.end_lineno or node.lineno) - node.lineno + 1
                    lengths[key] = max(size, lengths.get(key, 0))
    return lengths


def test_no_product_function_is_longer_than_a_screen() -> None:
    too_long = {name: size for name, size in _function_lengths().items() if size > MAX_LINES}
    assert too_long == {}, f"split these (at most {MAX_LINES} lines): {too_long}"


def test_the_check_reads_the_modules_of_subpackages_too() -> None:
    lengths = _function_lengths()
    assert "operator/accel_operator/lifecycle/machine.py:decide" in lengths
