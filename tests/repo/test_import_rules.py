"""The layering rules hold. import-linter's contracts (pyproject.toml: pure API, rendering and
lifecycle, the lifecycle's layers, a one-way trainer contract) run here too; the rest are what
it cannot express: what each image copies, and how the project uses the kubernetes client."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
OPERATOR = REPO_ROOT / "operator" / "accel_operator"
CONTRACT = REPO_ROOT / "trainer_image" / "accel_contract"


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


def test_the_contract_imports_only_pydantic_and_the_standard_library() -> None:
    """Both images install the contract: the operator's has no torch, the trainer's no kopf.
    (import-linter forbids named packages; this allows only pydantic.)"""
    for path in CONTRACT.glob("*.py"):
        imported = _top(_imports(path))
        third_party = imported - set(sys.stdlib_module_names) - {"__future__", "accel_contract"}
        assert third_party <= {"pydantic"}, path


def test_import_linter_contracts_hold() -> None:
    linter = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert linter, "import-linter is part of the dev extra"
    result = subprocess.run([linter], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("dockerfile", "own_package"),
    [("operator/Dockerfile", "accel_operator"), ("trainer_image/Dockerfile", "accel_trainer")],
)
def test_each_image_copies_only_its_own_package_and_the_contract(
    dockerfile: str, own_package: str
) -> None:
    copied = {
        Path(source).name
        for line in (REPO_ROOT / dockerfile).read_text().splitlines()
        if line.startswith("COPY") and "--from" not in line
        for source in line.split()[1:-1]
        if source.startswith(("operator/", "trainer_image/"))
        and not source.endswith((".txt", ".sh", "Dockerfile"))
    }
    assert copied == {own_package, "accel_contract"}


# The generated client's transport (ApiClient.param_serialize/call_api, the REST client) changes
# between client generations; the project reaches the API server only through public entry
# points (DynamicClient.request, kubernetes.watch.Watch, the typed APIs, the config loaders).
TRANSPORT_INTERNALS = ("param_serialize", "call_api", "rest_client", "kubernetes.watch.watch")
CODE_DIRS = ("operator", "trainer_image", "hack", "benchmarks", "tests")


def _project_sources() -> list[Path]:
    this_file = Path(__file__).resolve()
    return [
        path
        for folder in CODE_DIRS
        for path in sorted((REPO_ROOT / folder).rglob("*.py"))
        if path.resolve() != this_file
    ]


def test_no_code_of_the_project_uses_an_internal_of_the_kubernetes_client() -> None:
    sources = _project_sources()
    found = {
        f"{path.relative_to(REPO_ROOT)}: {name}"
        for path in sources
        for name in TRANSPORT_INTERNALS
        if name in path.read_text()
    }
    private = {
        f"{path.relative_to(REPO_ROOT)}: {node.attr}"
        for path in sources
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and isinstance(node.value, ast.Name)
        and node.value.id in {"kubernetes", "kopf"}
    }
    assert not found | private, sorted(found | private)


def test_only_the_access_layer_builds_a_kubernetes_transport() -> None:
    """One access layer (accel_operator.kube) for the operator, the node agent and the
    benchmarks; the tests may use the client's typed APIs, the harness its own small client."""
    builders = ("DynamicClient(", "client.ApiClient(", "kubernetes.client.ApiClient(")
    found = {
        str(path.relative_to(REPO_ROOT))
        for path in _project_sources()
        if not path.is_relative_to(REPO_ROOT / "tests")
        and any(builder in path.read_text() for builder in builders)
    }
    assert found == {"operator/accel_operator/kube.py"}
