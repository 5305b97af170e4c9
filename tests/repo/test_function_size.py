"""Product functions fit on a screen: at most 60 lines in the operator, the trainer, the contract
and the local cluster. The functions still longer are listed with their size, which may only
shrink: a new long function, or a listed one that grows, fails here."""

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

# Not split yet: name -> lines today.
STILL_LONG = {
    "hack/localcluster/cluster.py:_start": 146,
    "hack/localcluster/prometheus.py:scrape_config": 81,
    "hack/localcluster/pki.py:create_pki": 79,
    "hack/localcluster/nodeagent.py:_prepare": 77,
    "hack/localcluster/podspec.py:resolve_env": 67,
    "trainer_image/accel_trainer/train.py:setup": 64,
    "hack/localcluster/nodeagent.py:_run_once": 61,
}


def _function_lengths() -> dict[str, int]:
    lengths: dict[str, int] = {}
    for folder in PRODUCT:
        for path in sorted((REPO_ROOT / folder).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    key = f"{path.relative_to(REPO_ROOT)}:{node.name}"
                    size = (node.end_lineno or node.lineno) - node.lineno + 1
                    lengths[key] = max(size, lengths.get(key, 0))
    return lengths


def test_no_product_function_is_longer_than_a_screen_unless_listed_and_not_growing() -> None:
    too_long = {
        name: size
        for name, size in _function_lengths().items()
        if size > MAX_LINES and size > STILL_LONG.get(name, MAX_LINES)
    }
    assert too_long == {}, f"split these (at most {MAX_LINES} lines): {too_long}"


def test_the_list_of_long_functions_holds_only_functions_still_too_long() -> None:
    lengths = _function_lengths()
    fixed = {name for name in STILL_LONG if lengths.get(name, 0) <= MAX_LINES}
    assert fixed == set(), f"no longer too long, take them off STILL_LONG: {sorted(fixed)}"
