"""Print the requirements of pyproject.toml, one per line, for an image's dependency layer.

The Dockerfiles install these before they copy any code, so the dependency layers (torch and
DeepSpeed above all) are reused after a code change; the project itself is then installed with
``pip install --no-deps``. Printed: the build system's requirements (``--no-build-isolation``
needs them), the project's dependencies and those of the extras named on the command line.

    python requirements.py pyproject.toml trainer > requirements.txt
"""

from __future__ import annotations

import sys

# The standard library's from Python 3.11 on, which every image base has (ruff's py310 target
# files it with the third-party imports).
import tomllib


def requirements(pyproject: dict[str, object], extras: list[str]) -> list[str]:
    build_system = pyproject["build-system"]
    project = pyproject["project"]
    assert isinstance(build_system, dict) and isinstance(project, dict)
    found = [*build_system.get("requires", []), *project.get("dependencies", [])]
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise SystemExit(f"requirements.py: pyproject.toml has no extra {extra!r}")
        found.extend(optional[extra])
    return list(dict.fromkeys(found))


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit("usage: requirements.py PYPROJECT [EXTRA ...]")
    with open(argv[0], "rb") as file:
        pyproject = tomllib.load(file)
    print("\n".join(requirements(pyproject, argv[1:])))


if __name__ == "__main__":
    main(sys.argv[1:])
