"""Getting the images built by ``make images`` into the real node's containerd.

Owns the way from the image engine's store (Docker's or podman's; see hack/images/build.sh) to a
containerd reached at a socket: the engine's image ID of each name, an exported archive per ID
under ``${ACCELTRAIN_IMAGE_CACHE:-~/.cache/acceltrain/images}`` (reused if an import was
interrupted, older archives of the same name deleted, removed once imported), and ``ctr images
import`` with the ID as an image label, so that an image already imported from the same build is
not imported again (containerd's roots are kept between clusters, see
:mod:`localcluster.realnode`). Pods then run them
with ``imagePullPolicy: Never``/``IfNotPresent``: nothing can be pulled where this runs.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from .tools import cache_path

# The label that records which engine image an imported containerd image was exported from.
IMAGE_ID_LABEL = "io.acceltrain.image-id"
# The CRI plugin of the real node unpacks into this snapshotter (realnode's containerd config).
DEFAULT_SNAPSHOTTER = "overlayfs"
# Exporting or importing the trainer image (several GB) takes minutes on a small machine.
TRANSFER_TIMEOUT_SECONDS = 1800.0
_HEX_ID = re.compile(r"[0-9a-f]{64}")


class ImageError(RuntimeError):
    """An image could not be found, exported or imported."""


@functools.cache
def engine() -> str:
    """``docker`` when a Docker engine answers, else ``podman``: the choice build.sh makes
    (``ACCELTRAIN_IMAGE_ENGINE`` forces one)."""
    forced = os.environ.get("ACCELTRAIN_IMAGE_ENGINE", "")
    if forced:
        if forced not in ("docker", "podman"):
            raise ImageError(f"ACCELTRAIN_IMAGE_ENGINE={forced}: use docker or podman")
        return forced
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "info"], capture_output=True, timeout=60, check=False)
        if probe.returncode == 0:
            return "docker"
    if shutil.which("podman"):
        return "podman"
    raise ImageError("no image engine: start a Docker engine (`docker info`) or install podman")


def image_names() -> dict[str, str]:
    """The project's images by name in ``make image-names`` (the Makefile names them):
    ``operator``, ``trainer`` (CUDA) and ``trainer-cpu``."""
    result = subprocess.run(
        ["make", "-s", "--no-print-directory", "image-names"],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    names = result.stdout.split()
    if result.returncode != 0 or len(names) != 3:
        raise ImageError(f"`make image-names` failed: {result.stderr.strip() or result.stdout}")
    return dict(zip(("operator", "trainer", "trainer-cpu"), names, strict=True))


def node_image_names() -> list[str]:
    """The operator and CPU trainer images, which the local cluster's real node runs."""
    names = image_names()
    return [names["operator"], names["trainer-cpu"]]


def normalize_id(raw: str) -> str:
    """An engine's image ID as ``sha256:<64 hex>`` (podman prints the bare hex)."""
    text = raw.strip()
    hex_part = text.removeprefix("sha256:")
    if not _HEX_ID.fullmatch(hex_part):
        raise ImageError(f"not an image ID: {raw!r}")
    return f"sha256:{hex_part}"


def image_id(name: str) -> str:
    """The ID (config digest) of ``name`` in the engine's store, as ``sha256:<hex>``."""
    result = subprocess.run(
        [engine(), "image", "inspect", "--format", "{{.Id}}", name],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise ImageError(
            f"{name} is not in {engine()}'s image store ({result.stderr.strip()}): build it "
            "with `make images` (or bash hack/images/build.sh)"
        )
    return normalize_id(result.stdout)


def cache_dir() -> Path:
    """Where exported archives are kept between runs."""
    return cache_path("ACCELTRAIN_IMAGE_CACHE", "images")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def archive_path(directory: Path, name: str, identifier: str) -> Path:
    """The archive of one build of ``name``: ``<name as a file name>-<ID hex>.tar``. The name is
    part of it because the archive records the name it was saved under."""
    return directory / f"{_slug(name)}-{normalize_id(identifier).removeprefix('sha256:')}.tar"


def archives_of(directory: Path, name: str) -> list[Path]:
    """Every cached archive of ``name`` (any build), and of no other name."""
    pattern = re.compile(re.escape(_slug(name)) + r"-[0-9a-f]{64}\.tar")
    if not directory.is_dir():
        return []
    return sorted(path for path in directory.iterdir() if pattern.fullmatch(path.name))


def parse_image_labels(listing: str) -> dict[str, dict[str, str]]:
    """``ctr images ls`` output -> {ref: labels}. Columns: REF TYPE DIGEST SIZE PLATFORMS LABELS,
    where SIZE holds a space ("1.2 MiB") and LABELS is ``k=v,k=v`` or ``-``."""
    images: dict[str, dict[str, str]] = {}
    for fields in _rows(listing):
        labels: dict[str, str] = {}
        if fields[-1] != "-":
            for pair in fields[-1].split(","):
                key, _, value = pair.partition("=")
                labels[key] = value
        images[fields[0]] = labels
    return images


def _rows(listing: str) -> list[list[str]]:
    lines = listing.splitlines()
    rows = lines[1:] if lines and lines[0].startswith("REF") else lines
    return [fields for fields in (line.split() for line in rows) if len(fields) >= 6]


def stale_image_ids(listing: str) -> list[str]:
    """The ``sha256:<image id>`` references of ``ctr images ls`` that no named image shares a
    target with: the CRI plugin keeps one such reference per image it has seen, and after a
    rebuild the old build's reference alone still holds its unpacked layers (GBs of the trainer
    image per build)."""
    targets = {fields[0]: fields[2] for fields in _rows(listing)}
    named = {target for ref, target in targets.items() if not ref.startswith("sha256:")}
    return sorted(
        ref for ref, target in targets.items() if ref.startswith("sha256:") and target not in named
    )


def needs_import(present: Mapping[str, Mapping[str, str]], name: str, identifier: str) -> bool:
    """False when containerd has ``name`` imported from the engine image ``identifier``."""
    return present.get(name, {}).get(IMAGE_ID_LABEL) != normalize_id(identifier)


def _run(argv: Sequence[str], what: str, timeout: float = 60.0) -> str:
    result = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip()[-2000:]
        raise ImageError(f"{what} failed (exit {result.returncode}): {output}")
    return result.stdout


def export_archive(name: str, identifier: str, directory: Path) -> Path:
    """The engine's archive of ``name`` (build ``identifier``): the cached one, else a fresh
    ``save``; older archives of the name are deleted."""
    target = archive_path(directory, name, identifier)
    for stale in archives_of(directory, name):
        if stale != target:
            stale.unlink(missing_ok=True)
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.partial")
    partial.unlink(missing_ok=True)
    argv = [engine(), "save", "-o", str(partial), name]
    if engine() == "podman":
        # Docker's archive format keeps the name, which ctr then imports the image under.
        argv[2:2] = ["--format", "docker-archive"]
    try:
        _run(argv, f"{engine()} save {name}", timeout=TRANSFER_TIMEOUT_SECONDS)
        partial.rename(target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def import_images(
    names: Sequence[str],
    *,
    ctr: Path,
    address: str,
    namespace: str = "k8s.io",
    snapshotter: str = DEFAULT_SNAPSHOTTER,
) -> None:
    """Makes each image of the engine's store available (unpacked) to the containerd at socket
    ``address``; images it already has from the same engine build are skipped."""
    base = [str(ctr), "--address", address, "--namespace", namespace, "images"]
    present = parse_image_labels(_run([*base, "ls"], "ctr images ls"))
    wanted = {name: image_id(name) for name in names}
    directory = cache_dir()
    for name, identifier in wanted.items():
        if not needs_import(present, name, identifier):
            continue
        if name in present:
            # An older build of the name: remove it and wait for containerd's garbage collector,
            # which otherwise runs later, in the background, and never ran when the cluster
            # stopped right after an import (roots grew by an unpacked trainer image per build).
            _run([*base, "rm", "--sync", name], f"ctr images rm {name}")
        archive = export_archive(name, identifier, directory)
        _run(
            [
                *base,
                "import",
                f"--snapshotter={snapshotter}",
                # Only the unpacked snapshots are needed to run; keeping the layer blobs too
                # would double the disk the (several GB) trainer image takes. Discarding needs
                # the client-side import (--local) rather than the transfer service.
                "--discard-unpacked-layers",
                "--local",
                f"--label={IMAGE_ID_LABEL}={identifier}",
                str(archive),
            ],
            f"ctr images import {archive.name}",
            timeout=TRANSFER_TIMEOUT_SECONDS,
        )
        # containerd's roots are kept between clusters (localcluster.realnode), so an archive is
        # needed again only for a new root; several GB of disk are worth more than a re-export.
        archive.unlink(missing_ok=True)
    listing = _run([*base, "ls"], "ctr images ls")
    for stale in stale_image_ids(listing):
        _run([*base, "rm", "--sync", stale], f"ctr images rm {stale}")
    # The archive names the image; a name the engine stores differently (a short Docker Hub
    # name, say) would otherwise be imported under another reference without notice.
    present = parse_image_labels(listing)
    missing = [
        name for name, identifier in wanted.items() if needs_import(present, name, identifier)
    ]
    if missing:
        raise ImageError(
            f"containerd at {address} does not list {', '.join(missing)} after the import; "
            f"it has: {', '.join(sorted(present)) or 'no images'}"
        )
