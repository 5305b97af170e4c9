"""The pure pieces of hack/localcluster/images.py: reading ``ctr images ls``, deciding what to
import, and naming the cached archives. The import itself runs when the local cluster starts its
real node (tests/localcluster/test_real_node.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "hack"))

from localcluster.images import (
    IMAGE_ID_LABEL,
    ImageError,
    archive_path,
    archives_of,
    cache_dir,
    needs_import,
    normalize_id,
    parse_image_labels,
    stale_image_ids,
)

ID_A = "sha256:" + "a" * 64
ID_B = "sha256:" + "b" * 64
OPERATOR = "ghcr.io/acceltrain/operator:0.1.0"
TRAINER = "ghcr.io/acceltrain/trainer:0.1.0"
TRAINER_CPU = "ghcr.io/acceltrain/trainer-cpu:0.1.0"

# As ctr 2.2 prints it: a tabwriter table whose SIZE column holds a space and whose rows end in
# a padded empty cell.
CTR_LISTING = "".join(
    f"{row} \n"
    for row in (
        "REF                                  TYPE                                                 "
        "DIGEST                                                                  SIZE      "
        "PLATFORMS   LABELS",
        f"{OPERATOR}    application/vnd.docker.distribution.manifest.v2+json "
        f"sha256:{'c' * 64} 120.5 MiB linux/amd64 "
        f"io.cri-containerd.image=managed,{IMAGE_ID_LABEL}={ID_A}",
        "registry.k8s.io/pause:3.10.1         application/vnd.oci.image.manifest.v1+json           "
        f"sha256:{'d' * 64} 351.2 KiB linux/amd64 -",
    )
)


def test_ctr_listing_gives_each_reference_its_labels() -> None:
    images = parse_image_labels(CTR_LISTING)

    assert images == {
        OPERATOR: {"io.cri-containerd.image": "managed", IMAGE_ID_LABEL: ID_A},
        "registry.k8s.io/pause:3.10.1": {},
    }


def test_image_ids_of_older_builds_are_stale_and_those_of_named_images_are_not() -> None:
    current, old = f"sha256:{'c' * 64}", f"sha256:{'e' * 64}"
    listing = CTR_LISTING + "".join(
        f"{ref} application/vnd.docker.distribution.manifest.v2+json {target} 5.9 GiB "
        "linux/amd64 io.cri-containerd.image=managed \n"
        for ref, target in ((ID_A, current), (ID_B, old))
    )

    assert stale_image_ids(listing) == [ID_B]
    assert stale_image_ids(CTR_LISTING) == []


def test_an_empty_containerd_lists_no_images() -> None:
    header_only = "REF TYPE DIGEST SIZE PLATFORMS LABELS \n"

    assert parse_image_labels(header_only) == {}
    assert parse_image_labels("") == {}


def test_an_image_imported_from_the_same_build_is_not_imported_again() -> None:
    present = parse_image_labels(CTR_LISTING)

    assert not needs_import(present, OPERATOR, ID_A)
    assert not needs_import(present, OPERATOR, "a" * 64)  # podman prints the bare hex


def test_a_rebuilt_missing_or_unlabelled_image_is_imported() -> None:
    present = parse_image_labels(CTR_LISTING)

    assert needs_import(present, OPERATOR, ID_B)
    assert needs_import(present, TRAINER_CPU, ID_A)
    assert needs_import(present, "registry.k8s.io/pause:3.10.1", ID_A)


def test_image_ids_are_normalized_and_garbage_is_refused() -> None:
    assert normalize_id(f"{'a' * 64}\n") == ID_A
    assert normalize_id(ID_A) == ID_A
    with pytest.raises(ImageError):
        normalize_id("Error: image not known")


def test_the_archive_name_holds_the_image_name_and_its_id(tmp_path: Path) -> None:
    path = archive_path(tmp_path, TRAINER_CPU, ID_A)

    assert path.parent == tmp_path
    assert path.name == f"ghcr.io_acceltrain_trainer-cpu_0.1.0-{'a' * 64}.tar"
    assert archive_path(tmp_path, TRAINER_CPU, ID_B) != path


def test_archives_of_a_name_exclude_other_names_sharing_its_prefix(tmp_path: Path) -> None:
    trainer_old = archive_path(tmp_path, TRAINER, ID_A)
    trainer_new = archive_path(tmp_path, TRAINER, ID_B)
    trainer_cpu = archive_path(tmp_path, TRAINER_CPU, ID_A)
    partial = tmp_path / f"{trainer_new.name}.partial"
    for path in (trainer_old, trainer_new, trainer_cpu, partial):
        path.touch()

    assert archives_of(tmp_path, TRAINER) == sorted([trainer_old, trainer_new])
    assert archives_of(tmp_path, TRAINER_CPU) == [trainer_cpu]
    assert archives_of(tmp_path / "absent", TRAINER) == []


def test_the_archive_cache_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ACCELTRAIN_IMAGE_CACHE", str(tmp_path / "images"))
    assert cache_dir() == tmp_path / "images"

    monkeypatch.delenv("ACCELTRAIN_IMAGE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "acceltrain" / "images"
