"""Every reference to a section of ``docs/design.md`` names a section that exists."""

from __future__ import annotations

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DESIGN = REPO_ROOT / "docs" / "design.md"
SEARCHED = (
    "operator",
    "trainer_image",
    "hack",
    "benchmarks",
    "charts",
    "manifests",
    "docs",
    "tests",
)
REFERENCE = re.compile(r"design\.md#([a-z0-9-]+)")


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^a-z0-9 -]", "", heading.strip().lower()).replace(" ", "-")


def anchors() -> set[str]:
    return {
        _anchor(line.lstrip("#"))
        for line in DESIGN.read_text().splitlines()
        if line.startswith("#")
    }


def references() -> dict[str, list[str]]:
    """Anchor -> the files that cite it."""
    found: dict[str, list[str]] = {}
    files = [REPO_ROOT / "README.md"]
    for top in SEARCHED:
        files += [
            p
            for p in (REPO_ROOT / top).rglob("*")
            if p.suffix in {".py", ".md", ".yaml", ".sh", ".tpl"}
        ]
    for path in files:
        for anchor in REFERENCE.findall(path.read_text(errors="replace")):
            found.setdefault(anchor, []).append(str(path.relative_to(REPO_ROOT)))
    return found


def test_the_anchor_of_a_heading_is_the_one_github_links_to() -> None:
    assert _anchor(" The operator-trainer contract: v1") == "the-operator-trainer-contract-v1"
    assert _anchor("Where a change belongs") == "where-a-change-belongs"


def test_every_reference_to_the_design_names_an_existing_section() -> None:
    cited = references()
    assert cited, "nothing cites docs/design.md"
    missing = {anchor: files for anchor, files in cited.items() if anchor not in anchors()}
    assert not missing, f"sections cited but not in docs/design.md: {missing}"


def test_no_file_cites_a_design_document_outside_the_repository() -> None:
    outside = [
        str(path.relative_to(REPO_ROOT))
        for top in ("operator", "trainer_image", "hack", "tests", "benchmarks")
        for path in (REPO_ROOT / top).rglob("*.py")
        if re.search(r"DESIGN\.md", path.read_text(errors="replace"))
    ]
    assert not outside, outside
