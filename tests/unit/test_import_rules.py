"""The layering rules hold: pure API and rendering, a one-way trainer contract."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
OPERATOR = REPO_ROOT / "operator" / "accel_operator"
TRAINER = REPO_ROOT / "trainer_image" / "accel_trainer"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _top(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names}


@pytest.mark.parametrize("module", ["api.py", "render.py"])
def test_api_and_render_do_no_io(module: str) -> None:
    imported = _imports(OPERATOR / module)
    forbidden = {"kopf", "kubernetes", "requests", "urllib3", "aiohttp", "socket", "subprocess"}
    assert _top(imported) & forbidden == set()
    assert not {
        name
        for name in imported
        if name.startswith(("accel_operator.kube", "accel_operator.handlers"))
    }


def test_trainer_contract_imports_only_pydantic_and_the_standard_library() -> None:
    imported = _top(_imports(TRAINER / "config.py"))
    third_party = imported - set(sys.stdlib_module_names) - {"__future__"}
    assert third_party == {"pydantic"}


def test_trainer_never_imports_the_operator() -> None:
    for path in TRAINER.rglob("*.py"):
        assert "accel_operator" not in _top(_imports(path)), path


def test_import_linter_contracts_hold() -> None:
    linter = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert linter, "import-linter is part of the dev extra"
    result = subprocess.run([linter], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_operator_image_carries_every_trainer_module_the_operator_imports() -> None:
    """The operator image copies only a few trainer modules; an import of another one would
    crash the operator pod at start-up."""
    imported: set[str] = set()
    for path in OPERATOR.glob("*.py"):
        for tree_node in ast.walk(ast.parse(path.read_text())):
            if isinstance(tree_node, ast.ImportFrom) and tree_node.module == "accel_trainer":
                imported.update(f"accel_trainer.{alias.name}" for alias in tree_node.names)
        imported.update(name for name in _imports(path) if name.startswith("accel_trainer."))
    modules = {name for name in imported if (TRAINER / f"{name.split('.')[1]}.py").exists()}
    dockerfile = (REPO_ROOT / "operator" / "Dockerfile").read_text()
    missing = [
        name
        for name in sorted(modules)
        if f"trainer_image/accel_trainer/{name.split('.')[1]}.py" not in dockerfile
    ]
    assert missing == []


# The generated client's transport (ApiClient.param_serialize/call_api, the REST client) changes
# between client generations; the operator reaches the API server only through public entry
# points (DynamicClient.request, the config loaders).
TRANSPORT_INTERNALS = ("param_serialize", "call_api", "rest_client", "kubernetes.watch.watch")


def test_the_operator_uses_no_internal_of_the_kubernetes_client() -> None:
    found = {
        f"{path.name}: {name}"
        for path in OPERATOR.glob("*.py")
        for name in TRANSPORT_INTERNALS
        if name in path.read_text()
    }
    private = {
        f"{path.name}: {node.attr}"
        for path in OPERATOR.glob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and isinstance(node.value, ast.Name)
        and node.value.id in {"kubernetes", "kopf"}
    }
    assert not found | private, sorted(found | private)
