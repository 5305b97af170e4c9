"""The pod-level launcher: checks the config, starts the local ranks with torch's elastic launch
API and a static rendezvous, and turns their outcome into the pod's exit code.

Rendezvous. Inside a pod the operator's env describes the group: ``ACCELTRAIN_NNODES`` pods,
this pod's rank from ``ACCELTRAIN_NODE_RANK`` or ``JOB_COMPLETION_INDEX``, ``MASTER_ADDR`` /
``MASTER_PORT`` of pod 0 and ``ACCELTRAIN_NPROC_PER_NODE`` local ranks. Pod 0's launcher hosts
the rendezvous store; every launcher registers with a fixed node rank (torch's ``static``
backend), so no etcd or c10d negotiation is involved. Without that env (a laptop) the run is
standalone: one node, master 127.0.0.1 on a free port, ``--nproc`` ranks.

Threads. Each rank gets ``usable CPUs // local ranks`` OpenMP threads (the CPU affinity mask and
the cgroup quota both count), unless ``OMP_NUM_THREADS`` is already set: two ranks with the
default thread count on two cores ran 2-5x slower.

Exit code. Every rank records its exit code and a one-line reason in a report file before it
exits, because the elastic agent only sees the ranks that fail first and stops the others with
SIGTERM. The pod's exit code is the most meaningful one (:func:`decide_exit_code`):

1. a permanent code (64 config, 65 data, 66 missing input, 67 out of memory) from any rank;
2. after the pod itself got SIGTERM: 76 when every rank saved its checkpoint and reported 76,
   otherwise 128 + the signal number (retryable, the last complete checkpoint is used);
3. 75 (communication lost) from any rank: a peer or the rendezvous went away;
4. 128 + N for a rank killed by signal N (for example 137 after the kernel's OOM killer);
5. 76 from the ranks (preempted without the pod being signalled);
6. any other non-zero code (an unexpected error; retryable);
7. 0 when every rank succeeded.

A failed rendezvous (pod 0 unreachable, a timeout) is 75 as well.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accel_contract.config import (
    DEFAULT_MASTER_PORT,
    ENV_JOB_COMPLETION_INDEX,
    ENV_MASTER_ADDR,
    ENV_MASTER_PORT,
    ENV_NNODES,
    ENV_NODE_RANK,
    ENV_NPROC_PER_NODE,
    PERMANENT_EXIT_CODES,
    ExitCode,
    TrainerConfig,
)
from accel_trainer.errors import ConfigError

# Internal: where the launcher asks its ranks to leave their exit reports.
ENV_REPORT_DIR = "ACCELTRAIN_RANK_REPORT_DIR"
DEFAULT_RENDEZVOUS_TIMEOUT_S = 600
# Below the pod's terminationGracePeriodSeconds (120), so the launcher can still report 76.
DEFAULT_SHUTDOWN_TIMEOUT_S = 90


@dataclass(frozen=True)
class Rendezvous:
    """Who this pod is in the job and where the group meets."""

    nnodes: int
    node_rank: int
    nproc_per_node: int
    master_addr: str
    master_port: int
    standalone: bool

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node


def _int_env(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(
            f"env {name}={raw!r} is not an integer: the operator sets it; check the pod spec"
        ) from None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def rendezvous_from_env(
    env: Mapping[str, str], config: TrainerConfig, nproc_override: int | None
) -> Rendezvous:
    """The rendezvous the operator's env describes, or a standalone one (module docstring)."""
    in_pod = ENV_NNODES in env or ENV_MASTER_ADDR in env
    if not in_pod:
        return Rendezvous(
            nnodes=1,
            node_rank=0,
            nproc_per_node=nproc_override or config.procs_per_worker,
            master_addr="127.0.0.1",
            master_port=free_port(),
            standalone=True,
        )
    nnodes = _int_env(env, ENV_NNODES, 1)
    node_rank = _int_env(env, ENV_NODE_RANK, _int_env(env, ENV_JOB_COMPLETION_INDEX, 0))
    nproc = nproc_override or _int_env(env, ENV_NPROC_PER_NODE, config.procs_per_worker)
    if nnodes < 1 or nproc < 1:
        raise ConfigError(
            f"env {ENV_NNODES}={nnodes} and {ENV_NPROC_PER_NODE}={nproc} must be at least 1"
        )
    if not 0 <= node_rank < nnodes:
        raise ConfigError(
            f"node rank {node_rank} (from {ENV_NODE_RANK} or {ENV_JOB_COMPLETION_INDEX}) is "
            f"outside 0..{nnodes - 1} ({ENV_NNODES}={nnodes}): check the Job's completions"
        )
    master_addr = env.get(ENV_MASTER_ADDR) or "127.0.0.1"
    if nnodes > 1 and ENV_MASTER_ADDR not in env:
        raise ConfigError(
            f"{ENV_NNODES}={nnodes} but {ENV_MASTER_ADDR} is unset: the operator sets it to pod "
            "0's DNS name"
        )
    return Rendezvous(
        nnodes=nnodes,
        node_rank=node_rank,
        nproc_per_node=nproc,
        master_addr=master_addr,
        master_port=_int_env(env, ENV_MASTER_PORT, DEFAULT_MASTER_PORT),
        standalone=False,
    )


def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2/v1 CPU quota."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    count = count or 1
    quota = _cgroup_cpu_quota()
    return max(1, min(count, math.ceil(quota))) if quota else count


def _cgroup_cpu_quota() -> float | None:
    try:
        fields = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if fields and fields[0] != "max":
            return int(fields[0]) / int(fields[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


def threads_per_rank(local_ranks: int) -> int:
    return max(1, usable_cpus() // max(1, local_ranks))


def _writable_dir(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK)


def rank_environment(
    config: TrainerConfig, rendezvous: Rendezvous, report_dir: Path, env: Mapping[str, str]
) -> dict[str, str]:
    """Env additions for the ranks (they inherit the launcher's env)."""
    added: dict[str, str] = {ENV_REPORT_DIR: str(report_dir), "PYTHONUNBUFFERED": "1"}
    if "OMP_NUM_THREADS" not in env:
        threads = str(threads_per_rank(rendezvous.nproc_per_node))
        added["OMP_NUM_THREADS"] = threads
        added["MKL_NUM_THREADS"] = threads
    # The ranks encode data in one go; tokenizer thread pools would fight the training threads.
    added.setdefault("TOKENIZERS_PARALLELISM", "false")
    if "TORCH_EXTENSIONS_DIR" not in env:
        # DeepSpeed compiles a communication op (~30 s) on first use; keep it across starts.
        cache = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "torch_extensions"
        if not _writable_dir(cache):
            cache = Path(config.checkpoint.dir) / ".torch_extensions"
        added["TORCH_EXTENSIONS_DIR"] = str(cache)
    if config.device == "cpu" and "DS_ACCELERATOR" not in env:
        added["DS_ACCELERATOR"] = "cpu"
    local_sources = [config.model.pretrained, config.model.tokenizer]
    if any(source and os.path.exists(source) for source in local_sources):
        added.setdefault("HF_HUB_OFFLINE", "1")
    return added


# --- exit reports ------------------------------------------------------------------------------
def write_rank_report(rank: int, code: int, message: str) -> None:
    """Called by a rank as it exits; a no-op outside a launch."""
    directory = os.environ.get(ENV_REPORT_DIR)
    if not directory:
        return
    path = Path(directory) / f"rank-{rank}.json"
    temporary = path.with_name(path.name + ".tmp")
    try:
        temporary.write_text(json.dumps({"rank": rank, "exit_code": code, "message": message}))
        temporary.replace(path)
    except OSError:
        pass  # the agent still sees the process exit code


@dataclass(frozen=True)
class RankOutcome:
    rank: int
    exit_code: int
    message: str = ""


def read_rank_reports(report_dir: Path) -> dict[int, RankOutcome]:
    outcomes: dict[int, RankOutcome] = {}
    for path in sorted(report_dir.glob("rank-*.json")):
        try:
            data = json.loads(path.read_text())
            outcomes[int(data["rank"])] = RankOutcome(
                int(data["rank"]), int(data["exit_code"]), str(data.get("message", ""))
            )
        except (OSError, ValueError, KeyError):
            continue
    return outcomes


def _as_exit_code(process_exit_code: int) -> int:
    """A subprocess return code as a shell would report it (signal N -> 128 + N)."""
    return 128 - process_exit_code if process_exit_code < 0 else process_exit_code


def _describe_return_code(code: int) -> str:
    if code < 0:
        return f"killed by signal {-code} ({signal.Signals(-code).name})"
    return f"exited with {code} without a report"


def decide_exit_code(
    outcomes: Mapping[int, RankOutcome],
    failures: Mapping[int, int],
    received_signal: int | None,
) -> RankOutcome:
    """The pod's exit code from the ranks' reports and the agent's view (module docstring).

    ``failures`` maps global ranks to the return codes the agent saw (negative: killed by that
    signal); a rank's own report wins over the agent's view of it.
    """
    merged: dict[int, RankOutcome] = {
        rank: RankOutcome(rank, _as_exit_code(code), _describe_return_code(code))
        for rank, code in failures.items()
    }
    merged.update(outcomes)
    ordered = [merged[rank] for rank in sorted(merged)]

    def first(predicate: Callable[[RankOutcome], bool]) -> RankOutcome | None:
        return next((o for o in ordered if predicate(o)), None)

    permanent = first(lambda o: o.exit_code in PERMANENT_EXIT_CODES)
    if permanent:
        return permanent
    if received_signal is not None:
        preempted = [o for o in ordered if o.exit_code == ExitCode.PREEMPTED]
        if ordered and len(preempted) == len(ordered):
            return preempted[0]
        return RankOutcome(
            -1,
            128 + received_signal,
            f"stopped by signal {received_signal} before every rank saved a checkpoint",
        )
    for predicate in (
        lambda o: o.exit_code == ExitCode.COMMUNICATION_LOST,
        lambda o: o.exit_code > 128,
        lambda o: o.exit_code == ExitCode.PREEMPTED,
        lambda o: o.exit_code != 0,
    ):
        found = first(predicate)
        if found:
            return found
    return RankOutcome(-1, 0, "")


# --- launching ---------------------------------------------------------------------------------
def launch(
    config: TrainerConfig,
    rendezvous: Rendezvous,
    *,
    ds_config: dict[str, Any] | None = None,
    shutdown_timeout: int = DEFAULT_SHUTDOWN_TIMEOUT_S,
    rendezvous_timeout: int = DEFAULT_RENDEZVOUS_TIMEOUT_S,
) -> RankOutcome:
    """Run this pod's ranks to the end and return the pod's outcome.

    ``ds_config``, when given, replaces the file ``config.deepspeed_config`` names (a local run
    whose CLI options changed it).
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    report_dir = Path(tempfile.mkdtemp(prefix="accel-trainer-"))
    if ds_config is not None:
        ds_file = report_dir / "ds_config.json"
        ds_file.write_text(json.dumps(ds_config, indent=2), encoding="utf-8")
        config = config.model_copy(update={"deepspeed_config": str(ds_file)})
    config_file = report_dir / "trainer.json"
    config_file.write_text(config.to_json(), encoding="utf-8")
    os.environ.update(rank_environment(config, rendezvous, report_dir, os.environ))

    launch_config = LaunchConfig(
        min_nodes=rendezvous.nnodes,
        max_nodes=rendezvous.nnodes,
        nproc_per_node=rendezvous.nproc_per_node,
        run_id=f"{config.job.namespace}-{config.job.name}-{config.job.attempt}",
        role="trainer",
        rdzv_backend="static",
        rdzv_endpoint=f"{rendezvous.master_addr}:{rendezvous.master_port}",
        rdzv_configs={"rank": rendezvous.node_rank, "timeout": rendezvous_timeout},
        max_restarts=0,  # the operator restarts the whole pod group
        monitor_interval=0.2,
        start_method="spawn",
        shutdown_timeout=shutdown_timeout,
    )
    failures: dict[int, int] = {}
    received_signal: int | None = None
    try:
        elastic_launch(launch_config, sys.executable)(
            "-m", "accel_trainer", "worker", "--config", str(config_file)
        )
    except ChildFailedError as error:
        failures = {rank: failure.exitcode for rank, failure in error.failures.items()}
    except SignalException as error:
        received_signal = int(error.sigval)
    except Exception as error:  # the rendezvous itself failed: pod 0 unreachable, a timeout
        return RankOutcome(
            -1,
            int(ExitCode.COMMUNICATION_LOST),
            f"rendezvous at {rendezvous.master_addr}:{rendezvous.master_port} failed "
            f"({type(error).__name__}: {' '.join(str(error).split())[:300]})",
        )
    outcome = decide_exit_code(read_rank_reports(report_dir), failures, received_signal)
    _remove_tree(report_dir)
    return outcome


def _remove_tree(path: Path) -> None:
    for child in path.iterdir():
        child.unlink(missing_ok=True)
    path.rmdir()
