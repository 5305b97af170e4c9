"""Helpers for the trainer tests: jobs rendered by the operator's own renderer, and runs of the
real trainer (``python -m accel_trainer run``, 2 CPU ranks) as subprocesses.

The tests that start DeepSpeed on the CPU are marked ``training`` and ``slow``. The models are
tiny (hidden 64, 2 layers, sequences of 32) so that a run takes seconds; the first run on a
machine also compiles DeepSpeed's shared-memory op once (~30-80 s) into
``~/.cache/torch_extensions``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from accel_operator import api, render
from accel_trainer.launch import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 300

# A job as a user writes it: a tiny BERT on a learnable synthetic task, 2 CPU ranks.
BASE_SPEC: dict[str, Any] = {
    "image": "ghcr.io/acceltrain/trainer-cpu:0.1.0",
    "workers": 1,
    "devicesPerWorker": 0,
    "procsPerWorker": 2,
    "model": {
        "task": "sequence-classification",
        "config": {
            "architecture": "bert",
            "hiddenSize": 64,
            "numLayers": 2,
            "numHeads": 2,
            "maxPositionEmbeddings": 64,
        },
    },
    "data": {
        "synthetic": {"numSamples": 1024, "numLabels": 2, "vocabWords": 256},
        "maxLength": 32,
    },
    "training": {
        "maxSteps": 40,
        "microBatchSize": 16,
        "logEvery": 5,
        "optimizer": {"type": "adamw", "lr": 0.003},
        "scheduler": {"type": "linear", "warmupSteps": 3},
    },
    "deepspeed": {"zero": {"stage": 2}, "precision": "bf16"},
    "checkpoint": {"path": "/checkpoints", "everySteps": 20, "keep": 2},
    "volumes": [{"name": "ckpt", "mountPath": "/checkpoints", "hostPath": {"path": "/tmp"}}],
}


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` merged in; nested dicts merge, a None value deletes the key."""
    result = copy.deepcopy(base)
    for key, value in changes.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


@dataclass
class Job:
    """A rendered job in a test directory: trainer.json, ds_config.json, checkpoints."""

    directory: Path
    metrics_port: int

    @property
    def config_path(self) -> Path:
        return self.directory / "trainer.json"

    @property
    def ds_config_path(self) -> Path:
        return self.directory / "ds_config.json"

    @property
    def checkpoint_dir(self) -> Path:
        return self.directory / "checkpoints"

    @property
    def output_dir(self) -> Path:
        return self.checkpoint_dir / "output"

    def ds_config(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.ds_config_path.read_text())
        return loaded

    def write_ds_config(self, ds_config: dict[str, Any]) -> None:
        self.ds_config_path.write_text(json.dumps(ds_config, indent=2))

    def eval_report(self, name: str = "final") -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((self.output_dir / "eval" / f"{name}.json").read_text())
        return loaded

    def export_report(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((self.output_dir / "export.json").read_text())
        return loaded

    def latest_checkpoint(self) -> Path:
        return self.checkpoint_dir / (self.checkpoint_dir / "latest").read_text().strip()

    def checkpoint_state(self, checkpoint: Path | None = None) -> dict[str, Any]:
        folder = checkpoint or self.latest_checkpoint()
        loaded: dict[str, Any] = json.loads((folder / "trainer_state.json").read_text())
        return loaded


def render_job(directory: Path, spec_changes: dict[str, Any] | None = None, name: str = "t") -> Job:
    """Render ``BASE_SPEC`` + ``spec_changes`` with the operator's renderer into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    spec = api.AccelTrainJobSpec.model_validate(merged(BASE_SPEC, spec_changes or {}))
    ref = render.JobRef(name=name, namespace="trainer-tests", uid="00000000-test")
    job = Job(directory=directory, metrics_port=free_port())
    config = render.trainer_config(spec, ref, attempt=0)
    config = config.model_copy(
        update={
            "checkpoint": config.checkpoint.model_copy(update={"dir": str(job.checkpoint_dir)}),
            "metrics": config.metrics.model_copy(update={"port": job.metrics_port}),
        }
    )
    job.config_path.write_text(config.to_json())
    job.write_ds_config(render.deepspeed_config(spec))
    return job


@dataclass
class Run:
    """A finished trainer run."""

    returncode: int
    output: str
    lines: list[str] = field(default_factory=list)

    def progress(self) -> list[dict[str, float]]:
        """The progress log lines as numbers: step, loss, lr, samples/s, tokens/s, padding
        efficiency, sparsity."""
        found = []
        for line in self.lines:
            match = PROGRESS_LINE.search(line)
            if match:
                values = match.groupdict()
                found.append(
                    {
                        key: (float(value) if value != "-" else float("nan"))
                        for key, value in values.items()
                    }
                )
        return found

    def summary(self) -> dict[str, str]:
        for line in reversed(self.lines):
            if "accel-trainer: done:" in line:
                return dict(pair.split("=", 1) for pair in line.split("done:", 1)[1].split())
        raise AssertionError(f"no summary line in the output:\n{self.tail()}")

    def tail(self, count: int = 60) -> str:
        return "\n".join(self.lines[-count:])


PROGRESS_LINE = re.compile(
    r"accel-trainer: step (?P<step>\d+)/\d+ loss (?P<loss>\S+) lr (?P<lr>\S+) "
    r"samples/s (?P<samples_per_second>\S+) tokens/s (?P<tokens_per_second>\S+) "
    r"padding-efficiency (?P<padding_efficiency>\S+) sparsity (?P<sparsity>\S+)"
)


def trainer_env() -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("ACCELTRAIN_") and key not in ("MASTER_ADDR", "MASTER_PORT")
    }
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_trainer(
    job: Job, *args: str, env: Mapping[str, str] | None = None
) -> subprocess.Popen[str]:
    """Start ``python -m accel_trainer run`` for ``job`` in its own process group; ``env`` adds
    to the test environment (the operator's ACCELTRAIN_ variables are not inherited)."""
    return subprocess.Popen(
        [sys.executable, "-m", "accel_trainer", "run", "--config", str(job.config_path), *args],
        cwd=job.directory,
        env={**trainer_env(), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def rank_pids(launcher_pid: int) -> dict[int, int]:
    """PIDs of a launcher's rank processes (its children) by their RANK env."""
    found: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent != launcher_pid:
                continue
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        for item in environ:
            if item.startswith(b"RANK="):
                found[int(item[5:])] = int(entry.name)
    return found


def kill_trainer(process: subprocess.Popen[str]) -> None:
    """SIGKILL the launcher and its ranks. Each rank runs in a session of its own, so killing
    the launcher's group alone leaves them holding the output pipe open (and a hung rank would
    block the test that reads it)."""
    ranks = rank_pids(process.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    for pid in ranks.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def run_trainer(
    job: Job, *args: str, timeout: float = RUN_TIMEOUT_S, env: Mapping[str, str] | None = None
) -> Run:
    process = start_trainer(job, *args, env=env)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_trainer(process)
        output, _ = process.communicate()
        raise AssertionError(f"the trainer ran past {timeout}s:\n{output[-6000:]}") from None
    return Run(process.returncode, output, output.splitlines())


class LiveRun:
    """A running trainer whose output is read line by line while the test acts on it."""

    def __init__(self, job: Job, *args: str) -> None:
        self.process = start_trainer(job, *args)
        self.lines: list[str] = []

    def wait_for_line(self, pattern: str, timeout: float = RUN_TIMEOUT_S) -> re.Match[str]:
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        stream: IO[str] | None = self.process.stdout
        assert stream is not None
        while time.monotonic() < deadline:
            line = stream.readline()
            if not line:
                break
            self.lines.append(line.rstrip("\n"))
            match = compiled.search(line)
            if match:
                return match
        raise AssertionError(
            f"no line matching {pattern!r} (exit {self.process.poll()}):\n"
            + "\n".join(self.lines[-60:])
        )

    def finish(self, timeout: float = RUN_TIMEOUT_S) -> Run:
        try:
            rest, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_trainer(self.process)
            rest, _ = self.process.communicate()
        self.lines.extend(rest.splitlines())
        return Run(self.process.returncode, "\n".join(self.lines), self.lines)

    def rank_pids(self) -> dict[int, int]:
        """PIDs of the rank processes (children of the launcher) by their RANK env."""
        return rank_pids(self.process.pid)

    def kill(self) -> None:
        """SIGKILL the launcher and its ranks."""
        if self.process.poll() is None:
            kill_trainer(self.process)
            self.process.communicate()


@pytest.fixture
def live_runs() -> Iterator[list[LiveRun]]:
    """Live runs a test starts; any still running at the end are killed."""
    started: list[LiveRun] = []
    yield started
    for run in started:
        run.kill()
