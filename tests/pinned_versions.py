"""Reading the constraint files of `make lock` (hack/lock.sh): the versions the suite runs on
and the images install."""

from __future__ import annotations

import re
from pathlib import Path

from packaging.utils import canonicalize_name

REPO_ROOT = Path(__file__).resolve().parents[1]
DEV = REPO_ROOT / "hack" / "constraints-dev.txt"
OPERATOR = REPO_ROOT / "operator" / "constraints.txt"
TRAINER = REPO_ROOT / "trainer_image" / "constraints.txt"


def pins(path: Path) -> dict[str, str]:
    """Canonical package name -> pinned version."""
    found = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        if match:
            found[canonicalize_name(match.group(1))] = match.group(2)
    return found
