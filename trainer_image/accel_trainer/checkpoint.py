"""Checkpoints: written by every rank through DeepSpeed's own save, published atomically.

Layout under ``checkpoint.dir``::

    step-00000040/          a complete checkpoint (DeepSpeed's files for every rank, plus ours)
        trainer_state.json  step, data position, counters, world size, ZeRO stage
        trainer.json        the resolved trainer config of the run that wrote it
        ds_config.json      the resolved DeepSpeed config
        tokenizer/          the tokenizer the data was encoded with
        pruning.pt          pruning target and masks (when pruning)
        rng-rank<R>.pt      each rank's random-number generator states
    step-00000060.partial/  a save in progress (or torn by a crash): never read
    latest                  the name of the newest complete checkpoint

A save goes to ``<tag>.partial``; only after every rank has finished writing does rank 0 rename
the folder to ``<tag>`` and then replace ``latest`` (write-then-rename), so a crash at any moment
leaves ``latest`` naming a complete checkpoint. Older complete checkpoints beyond ``keep`` and
stale partial folders are deleted after each save. The directory must be shared by all pods of
the job (DeepSpeed's ZeRO checkpoints hold one shard per rank).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist

from accel_trainer.errors import ConfigError

LATEST_FILE = "latest"
STATE_FILE = "trainer_state.json"
TOKENIZER_DIR = "tokenizer"
PRUNING_FILE = "pruning.pt"
PARTIAL_SUFFIX = ".partial"
_TAG_PATTERN = re.compile(r"^step-(\d{8,})$")


def tag_for(step: int) -> str:
    return f"step-{step:08d}"


@dataclass
class TrainState:
    """Progress that a resumed run continues from."""

    step: int = 0
    """Optimizer steps completed."""
    micro_steps: int = 0
    """Global micro-steps completed (each optimizer step is gradientAccumulation of them)."""
    epoch: int = 0
    samples_into_epoch: int = 0
    samples_seen: int = 0
    """Training examples consumed by all ranks together."""
    tokens_seen: int = 0
    world_size: int = 1
    zero_stage: int = 0
    micro_batch: int = 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainState:
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})


class CheckpointStore:
    """The checkpoint directory of a run (module docstring)."""

    def __init__(self, root: str | Path, keep: int) -> None:
        self.root = Path(root)
        self.keep = keep

    # --- finding ---------------------------------------------------------------------------------
    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for entry in self.root.iterdir():
            match = _TAG_PATTERN.match(entry.name)
            if match and entry.is_dir() and (entry / STATE_FILE).is_file():
                found.append((int(match.group(1)), entry))
        return [path for _, path in sorted(found)]

    def latest(self) -> Path | None:
        """The checkpoint ``latest`` names, or the newest complete one if the pointer is gone."""
        pointer = self.root / LATEST_FILE
        if pointer.is_file():
            candidate = self.root / pointer.read_text(encoding="utf-8").strip()
            if _TAG_PATTERN.match(candidate.name) and (candidate / STATE_FILE).is_file():
                return candidate
        complete = self.complete()
        return complete[-1] if complete else None

    # --- saving ----------------------------------------------------------------------------------
    def save(
        self,
        engine: Any,
        state: TrainState,
        *,
        rank: int,
        files: dict[str, str],
        tokenizer: Any,
        pruning_state: dict[str, Any] | None,
    ) -> Path:
        """Write a checkpoint from every rank (collective) and publish it; returns its path.

        ``files`` maps file names to text that rank 0 writes into the checkpoint (configs).
        """
        tag = tag_for(state.step)
        partial_tag = tag + PARTIAL_SUFFIX
        partial = self.root / partial_tag
        if rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            # A folder left by an attempt that crashed while saving this same step.
            shutil.rmtree(partial, ignore_errors=True)
        _barrier()
        engine.save_checkpoint(str(self.root), tag=partial_tag, save_latest=False)
        partial.mkdir(parents=True, exist_ok=True)
        torch.save(_rng_state(), partial / f"rng-rank{rank}.pt")
        if rank == 0:
            for name, text in files.items():
                (partial / name).write_text(text, encoding="utf-8")
            tokenizer.save_pretrained(str(partial / TOKENIZER_DIR))
            if pruning_state is not None:
                torch.save(pruning_state, partial / PRUNING_FILE)
            # Written last: a folder holding the state file has everything else.
            _write_atomically(partial / STATE_FILE, state.to_json())
        _barrier()
        final = self.root / tag
        if rank == 0:
            self._publish(partial, final)
        _barrier()
        return final

    def _publish(self, partial: Path, final: Path) -> None:
        if final.exists():
            # The same step saved by an earlier attempt: swap it out of the way first.
            stale = final.with_name(final.name + ".replaced")
            shutil.rmtree(stale, ignore_errors=True)
            final.rename(stale)
            partial.rename(final)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            partial.rename(final)
        _fsync_dir(self.root)
        _write_atomically(self.root / LATEST_FILE, final.name)
        self._delete_old(final)

    def _delete_old(self, newest: Path) -> None:
        complete = self.complete()
        for old in complete[: max(0, len(complete) - self.keep)]:
            if old != newest:
                shutil.rmtree(old, ignore_errors=True)
        for entry in self.root.iterdir():
            if entry.name.endswith((PARTIAL_SUFFIX, ".replaced")) and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)

    # --- loading ---------------------------------------------------------------------------------
    def load(self, engine: Any, path: Path, *, rank: int, world_size: int) -> TrainState:
        """Restore engine, optimizer, scheduler and RNG states from ``path`` (collective)."""
        state = TrainState.from_json((path / STATE_FILE).read_text(encoding="utf-8"))
        stage = int(engine.zero_optimization_stage())
        if state.zero_stage != stage:
            raise ConfigError(
                f"checkpoint {path} was written with ZeRO stage {state.zero_stage} but this run "
                f"uses stage {stage}: resume with the same stage, or set checkpoint.resume false"
            )
        if stage > 0 and state.world_size != world_size:
            raise ConfigError(
                f"checkpoint {path} was written by {state.world_size} ranks but this run has "
                f"{world_size}: ZeRO-{stage} shards need the same world size; resume with "
                f"{state.world_size} ranks or set checkpoint.resume false"
            )
        load_path, _ = engine.load_checkpoint(
            str(path.parent),
            tag=path.name,
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
        if load_path is None:
            raise ConfigError(
                f"checkpoint {path} could not be loaded by DeepSpeed: delete it (the previous one "
                "is used) or set checkpoint.resume false"
            )
        rng_file = path / f"rng-rank{rank}.pt"
        if rng_file.is_file():
            _set_rng_state(torch.load(rng_file, weights_only=False))
        return state

    @staticmethod
    def pruning_state(path: Path) -> dict[str, Any] | None:
        file = path / PRUNING_FILE
        if not file.is_file():
            return None
        loaded: dict[str, Any] = torch.load(file, weights_only=False)
        return loaded


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _barrier() -> None:
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.barrier()
