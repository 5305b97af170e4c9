"""Where the harness finds its binaries (``.tools/bin``, from ``make tools``) and their versions."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS_DIR = REPO_ROOT / ".tools"
VERSIONS_FILE = REPO_ROOT / "hack" / "tools" / "versions.env"


class MissingToolError(RuntimeError):
    """A binary the cluster needs is not installed."""


def pinned_versions() -> dict[str, str]:
    """The pins of ``hack/tools/versions.env`` (e.g. ``KUBERNETES_VERSION`` -> ``v1.35.4``)."""
    versions = {}
    for line in VERSIONS_FILE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            versions[key.strip()] = value.strip()
    return versions


def tool_path(name: str, tools_dir: Path = TOOLS_DIR) -> Path:
    """The path of a Go-built tool in ``.tools/bin``; a clear error when it was not built."""
    path = tools_dir / "bin" / name
    if not path.exists():
        raise MissingToolError(
            f"{path} does not exist (or is a link to a removed cache entry): run `make tools` "
            "in the repository root to build it"
        )
    return path


def kwok_stages_path(tools_dir: Path = TOOLS_DIR) -> Path:
    path = tools_dir / "share" / "kwok-stages.yaml"
    if not path.exists():
        raise MissingToolError(f"{path} does not exist: run `make tools` to install kwok")
    return path


def cache_path(override_variable: str, name: str) -> Path:
    """A directory kept between runs: ``$override_variable`` when set, else
    ``${XDG_CACHE_HOME:-~/.cache}/acceltrain/<name>``."""
    configured = os.environ.get(override_variable)
    if configured:
        return Path(configured)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "acceltrain" / name
