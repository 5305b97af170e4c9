"""The trainer's launcher: rendezvous from the pod env, threads per rank, and the exit code the
pod reports from its ranks' outcomes (the contract with the operator's restart policy)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch.distributed as torch_dist

from accel_contract.config import ExitCode, TrainerConfig
from accel_trainer.errors import DataError, MissingInputError, exit_code_for
from accel_trainer.launch import (
    RankOutcome,
    decide_exit_code,
    rank_environment,
    read_rank_reports,
    rendezvous_from_env,
    threads_per_rank,
    usable_cpus,
)

CONFIG = TrainerConfig.model_validate(
    {
        "model": {"config": {}},
        "data": {"synthetic": {}},
        "training": {"maxSteps": 1},
        "procsPerWorker": 3,
    }
)


def outcomes(*codes: int) -> dict[int, RankOutcome]:
    return {
        rank: RankOutcome(rank, code, f"rank {rank} said {code}") for rank, code in enumerate(codes)
    }


# --- the pod's exit code ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("reported", "agent_saw", "signalled", "expected"),
    [
        pytest.param((0, 0), {}, None, 0, id="all ranks succeeded"),
        pytest.param((75, 65), {0: 75}, None, 65, id="a permanent code from any rank wins"),
        pytest.param((66, 66), {0: 66, 1: 66}, None, 66, id="missing input on every rank"),
        pytest.param((75,), {1: -9}, None, 75, id="peer killed: the survivor lost contact"),
        pytest.param((), {1: -9}, None, 137, id="killed rank without a report: 128 + signal"),
        pytest.param((76, 75), {1: 75}, None, 75, id="communication lost beats preempted"),
        pytest.param((76, 76), {}, signal.SIGTERM, 76, id="pod SIGTERM, every rank checkpointed"),
        pytest.param((76,), {1: -9}, signal.SIGTERM, 143, id="pod SIGTERM, one rank did not save"),
        pytest.param((1, 0), {0: 1}, None, 1, id="an unexpected error stays retryable"),
        pytest.param((67, 0), {0: 67}, signal.SIGTERM, 67, id="out of memory beats the signal"),
    ],
)
def test_the_pod_exit_code_is_the_most_meaningful_rank_outcome(
    reported: tuple[int, ...], agent_saw: dict[int, int], signalled: int | None, expected: int
) -> None:
    assert decide_exit_code(outcomes(*reported), agent_saw, signalled).exit_code == expected


def test_a_rank_report_wins_over_the_agents_view_of_that_rank() -> None:
    decided = decide_exit_code(outcomes(0, 65), {1: 65}, None)

    assert decided == RankOutcome(1, 65, "rank 1 said 65")


def test_rank_reports_are_read_back_from_the_report_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from accel_trainer.launch import ENV_REPORT_DIR, write_rank_report

    monkeypatch.setenv(ENV_REPORT_DIR, str(tmp_path))
    write_rank_report(0, 76, "stopped by SIGTERM")
    write_rank_report(3, 65, "bad data")

    assert read_rank_reports(tmp_path) == {
        0: RankOutcome(0, 76, "stopped by SIGTERM"),
        3: RankOutcome(3, 65, "bad data"),
    }


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (DataError("x"), ExitCode.DATA_ERROR),
        (MissingInputError("x"), ExitCode.MISSING_INPUT),
        (MemoryError(), ExitCode.OUT_OF_MEMORY),
        (RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"), ExitCode.OUT_OF_MEMORY),
        (torch_dist.DistBackendError("NCCL watchdog timeout"), ExitCode.COMMUNICATION_LOST),
        (RuntimeError("[gloo] Read error: Connection reset by peer"), ExitCode.COMMUNICATION_LOST),
        (ConnectionRefusedError(), ExitCode.COMMUNICATION_LOST),
        (ValueError("a bug"), 1),
    ],
)
def test_each_failure_maps_to_its_contract_exit_code(error: BaseException, code: int) -> None:
    assert exit_code_for(error) == code


# --- rendezvous ---------------------------------------------------------------------------------
def test_without_the_pod_env_the_run_is_standalone_on_a_free_local_port() -> None:
    rendezvous = rendezvous_from_env({}, CONFIG, nproc_override=2)

    assert (rendezvous.nnodes, rendezvous.node_rank, rendezvous.nproc_per_node) == (1, 0, 2)
    assert rendezvous.master_addr == "127.0.0.1" and rendezvous.standalone
    assert 1024 <= rendezvous.master_port <= 65535


def test_standalone_defaults_to_the_configs_procs_per_worker() -> None:
    assert rendezvous_from_env({}, CONFIG, nproc_override=None).nproc_per_node == 3


def test_in_a_pod_the_node_rank_comes_from_the_job_completion_index() -> None:
    env = {
        "ACCELTRAIN_NNODES": "4",
        "ACCELTRAIN_NPROC_PER_NODE": "8",
        "JOB_COMPLETION_INDEX": "2",
        "MASTER_ADDR": "demo-a0-0.demo.team-a.svc",
        "MASTER_PORT": "29500",
    }

    rendezvous = rendezvous_from_env(env, CONFIG, nproc_override=None)

    assert (rendezvous.nnodes, rendezvous.node_rank, rendezvous.nproc_per_node) == (4, 2, 8)
    assert rendezvous.world_size == 32
    assert (rendezvous.master_addr, rendezvous.master_port) == ("demo-a0-0.demo.team-a.svc", 29500)
    assert not rendezvous.standalone


def test_an_explicit_node_rank_wins_over_the_completion_index() -> None:
    env = {"ACCELTRAIN_NNODES": "2", "ACCELTRAIN_NODE_RANK": "1", "JOB_COMPLETION_INDEX": "0"}
    env["MASTER_ADDR"] = "x"

    assert rendezvous_from_env(env, CONFIG, None).node_rank == 1


def test_a_node_rank_outside_the_group_is_a_config_error() -> None:
    env = {"ACCELTRAIN_NNODES": "2", "JOB_COMPLETION_INDEX": "2", "MASTER_ADDR": "x"}

    with pytest.raises(Exception, match=r"node rank 2 .* is outside 0\.\.1"):
        rendezvous_from_env(env, CONFIG, None)


def test_several_pods_without_a_master_address_is_a_config_error() -> None:
    with pytest.raises(Exception, match="MASTER_ADDR is unset"):
        rendezvous_from_env({"ACCELTRAIN_NNODES": "2"}, CONFIG, None)


def test_a_non_numeric_env_value_names_the_variable() -> None:
    with pytest.raises(Exception, match="ACCELTRAIN_NNODES='two' is not an integer"):
        rendezvous_from_env({"ACCELTRAIN_NNODES": "two"}, CONFIG, None)


# --- threads and env ----------------------------------------------------------------------------
def test_threads_split_the_usable_cpus_between_local_ranks() -> None:
    cpus = usable_cpus()

    assert threads_per_rank(1) == cpus
    assert threads_per_rank(cpus) == 1
    assert threads_per_rank(cpus * 4) == 1


def test_rank_env_sets_threads_unless_the_user_did(tmp_path: Path) -> None:
    rendezvous = rendezvous_from_env({}, CONFIG, nproc_override=2)

    chosen = rank_environment(CONFIG, rendezvous, tmp_path, {"HOME": str(tmp_path)})
    kept = rank_environment(CONFIG, rendezvous, tmp_path, {"OMP_NUM_THREADS": "7"})

    assert chosen["OMP_NUM_THREADS"] == str(threads_per_rank(2))
    assert "OMP_NUM_THREADS" not in kept
    assert chosen["DS_ACCELERATOR"] == "cpu"
    assert chosen["TORCH_EXTENSIONS_DIR"].endswith("torch_extensions")


def test_a_local_pretrained_path_makes_the_ranks_work_offline(tmp_path: Path) -> None:
    local = CONFIG.model_copy(
        update={
            "model": CONFIG.model.model_copy(update={"pretrained": str(tmp_path), "config": None})
        }
    )
    rendezvous = rendezvous_from_env({}, local, nproc_override=1)

    assert rank_environment(local, rendezvous, tmp_path, {})["HF_HUB_OFFLINE"] == "1"
