"""Starting and stopping the cluster's component processes, and proving that none is left.

Each component runs in its own session (so its process group id is its pid) with stdout and stderr
in ``logs/<component>.log``. A component is identified by pid *and* start time (from
``/proc/<pid>/stat``), so that stopping a cluster from a stale state file never signals an
unrelated process that reused the pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcessRecord:
    """A started component: enough to find it again from another process."""

    name: str
    pid: int
    start_ticks: int

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "pid": self.pid, "start_ticks": self.start_ticks}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> ProcessRecord:
        pid = data["pid"]
        start_ticks = data["start_ticks"]
        if not isinstance(pid, int) or not isinstance(start_ticks, int):
            raise ValueError(f"bad process record in the cluster state file: {dict(data)}")
        return cls(name=str(data["name"]), pid=pid, start_ticks=start_ticks)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) is in parentheses and may contain spaces.
    return raw[raw.rindex(")") + 2 :].split()


def start_ticks_of(pid: int) -> int | None:
    """The start time of a live process in clock ticks since boot, or None if there is none."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] == "Z":
        return None
    return int(fields[19])


def is_alive(record: ProcessRecord) -> bool:
    """True while the recorded process (same pid and start time) runs and is not a zombie."""
    return start_ticks_of(record.pid) == record.start_ticks


def group_members(pgid: int) -> list[int]:
    """Pids of the live (non-zombie) processes in a process group."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> tuple[subprocess.Popen[bytes], ProcessRecord]:
    """Starts a component in its own session with its output appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(f"--- starting: {' '.join(argv)}\n".encode())
        log.flush()
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    ticks = start_ticks_of(process.pid)
    if ticks is None:
        # It died before we could read its start time; the caller's readiness check reports why.
        ticks = -1
    return process, ProcessRecord(name=name, pid=process.pid, start_ticks=ticks)


def _signal_group(record: ProcessRecord, sig: signal.Signals) -> None:
    if not is_alive(record) and not group_members(record.pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(record.pid, sig)


def _reap(pid: int) -> None:
    # Our own children must be reaped or they stay zombies; others are reaped by their parent.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop(record: ProcessRecord, *, grace_seconds: float, group: bool = True) -> list[int]:
    """Stops a component: SIGTERM, then SIGKILL to its whole process group after the grace period.

    With ``group=False`` the first SIGTERM goes to the component alone, for components that stop
    their own children in an orderly way on SIGTERM (the node agent). Returns the pids still alive
    afterwards (empty when the stop was clean).
    """
    if is_alive(record):
        if group:
            _signal_group(record, signal.SIGTERM)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        _reap(record.pid)
        if not is_alive(record) and not group_members(record.pid):
            return []
        time.sleep(0.05)
    _signal_group(record, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        _reap(record.pid)
        if not is_alive(record) and not group_members(record.pid):
            return []
        time.sleep(0.05)
    leftovers = group_members(record.pid)
    if is_alive(record) and record.pid not in leftovers:
        leftovers.append(record.pid)
    return leftovers
