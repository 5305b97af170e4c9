"""Print pyproject.toml for one image's build: only the console scripts whose package it carries.

Each image copies its own package and the contract package (accel_contract) and installs the
project from them; setuptools finds only the packages present, and this drops the scripts of the
others, so the trainer image has no ``acceltrain-operator`` that could not start.

    python image_pyproject.py pyproject.toml accel_trainer accel_contract > pyproject.image.toml
"""

from __future__ import annotations

import sys


def image_pyproject(text: str, packages: set[str]) -> str:
    kept: list[str] = []
    table = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            table = stripped
        elif table == "[project.scripts]" and "=" in stripped and not stripped.startswith("#"):
            target = stripped.split("=", 1)[1].strip().strip("\"'")
            if target.split(".", 1)[0] not in packages:
                continue
        kept.append(line)
    return "\n".join(kept) + "\n"


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit("usage: image_pyproject.py PYPROJECT PACKAGE [PACKAGE ...]")
    with open(argv[0], encoding="utf-8") as file:
        sys.stdout.write(image_pyproject(file.read(), set(argv[1:])))


if __name__ == "__main__":
    main(sys.argv[1:])
