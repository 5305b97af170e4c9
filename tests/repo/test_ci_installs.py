"""A fresh machine gets every program the suite needs: .ci/run installs the Debian package of
each host tool the real node checks for (a machine that already had one hides a missing entry)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "hack"))

from localcluster import realnode  # noqa: E402


def _installed_by_ci() -> dict[str, str]:
    text = (REPO_ROOT / ".ci" / "run").read_text()
    listed = re.search(r"for tool in (.*?); do", text, re.S)
    assert listed, ".ci/run has no `for tool in ...; do` list of host tools"
    entries = listed.group(1).replace("\\\n", " ").split()
    return dict(entry.split(":", 1) for entry in entries)


def test_ci_installs_the_package_of_every_host_tool_the_real_node_needs() -> None:
    installed = _installed_by_ci()
    missing = {
        tool: package
        for tool, package in realnode.HOST_TOOLS.items()
        if installed.get(tool) != package
    }
    assert missing == {}, f"add these tool:package entries to .ci/run: {missing}"
    assert installed.get(str(realnode.CNI_BIN_DIR / "bridge")) == "containernetworking-plugins"
