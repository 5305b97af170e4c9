"""Checkpoint publishing: ``latest`` only ever names a complete checkpoint, even when a save is
torn by a crash, and only the newest ``keep`` complete checkpoints stay."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from accel_trainer.checkpoint import CheckpointStore, TrainState, tag_for


class FakeTokenizer:
    def save_pretrained(self, directory: str) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "tokenizer.json").write_text("{}")


class FakeEngine:
    """Writes a model file like DeepSpeed's save; can crash half-way like a killed process."""

    def __init__(self, crash: bool = False) -> None:
        self.crash = crash

    def save_checkpoint(self, save_dir: str, tag: str, save_latest: bool) -> None:
        assert not save_latest  # the store publishes "latest" itself, atomically
        folder = Path(save_dir) / tag
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "mp_rank_00_model_states.pt").write_bytes(b"weights")
        if self.crash:
            raise KeyboardInterrupt("killed mid-save")


def save(store: CheckpointStore, step: int, engine: Any = None) -> Path:
    return store.save(
        engine or FakeEngine(),
        TrainState(step=step, samples_seen=step * 32),
        rank=0,
        files={"trainer.json": "{}"},
        tokenizer=FakeTokenizer(),
        pruning_state=None,
    )


def test_latest_names_the_newest_complete_checkpoint(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=3)

    save(store, 10)
    newest = save(store, 20)

    assert store.latest() == newest == tmp_path / tag_for(20)
    assert (tmp_path / "latest").read_text() == "step-00000020"
    assert TrainState.from_json((newest / "trainer_state.json").read_text()).samples_seen == 640


def test_a_save_torn_by_a_crash_leaves_latest_on_the_previous_checkpoint(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=3)
    previous = save(store, 10)

    with pytest.raises(KeyboardInterrupt):
        save(store, 20, FakeEngine(crash=True))

    assert store.latest() == previous
    assert [path.name for path in store.complete()] == ["step-00000010"]
    assert (tmp_path / "step-00000020.partial").is_dir()


def test_the_next_save_cleans_up_a_torn_one(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=3)
    save(store, 10)
    with pytest.raises(KeyboardInterrupt):
        save(store, 20, FakeEngine(crash=True))

    save(store, 20)

    assert sorted(path.name for path in tmp_path.iterdir() if path.is_dir()) == [
        "step-00000010",
        "step-00000020",
    ]


def test_only_the_newest_keep_checkpoints_remain(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)

    for step in (5, 10, 15, 20):
        save(store, step)

    assert [path.name for path in store.complete()] == ["step-00000015", "step-00000020"]


def test_without_a_pointer_the_newest_complete_folder_is_used(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=5)
    save(store, 10)
    save(store, 30)
    (tmp_path / "latest").unlink()
    (tmp_path / "step-00000040").mkdir()  # no state file: not complete

    assert store.latest() == tmp_path / "step-00000030"


def test_saving_a_step_again_replaces_the_old_checkpoint_of_that_step(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    save(store, 10)

    again = save(store, 10)

    assert store.latest() == again
    assert [path.name for path in store.complete()] == ["step-00000010"]


def test_an_empty_or_missing_directory_has_no_checkpoint(tmp_path: Path) -> None:
    assert CheckpointStore(tmp_path / "absent", keep=1).latest() is None
    assert CheckpointStore(tmp_path, keep=1).latest() is None
