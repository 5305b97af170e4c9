"""Command line: ``run`` starts a pod's (or a laptop's) ranks; ``worker`` is one rank.

    python -m accel_trainer run --config /etc/acceltrain/trainer.json
    python -m accel_trainer run --config trainer.json --nproc 2 --max-steps 50

``run`` reads and checks trainer.json and ds_config.json (exit 64/66 with one line naming the
field or file), then starts the ranks through :mod:`accel_trainer.launch` and exits with the
code it decides (see that module and :class:`accel_contract.config.ExitCode`). ``worker`` is
started by the launcher once per local rank and is not meant to be run by hand.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from accel_contract import package_version
from accel_contract.config import DEFAULT_CONFIG_PATH, ENV_CONFIG, ENV_METRICS_PORT
from accel_trainer.errors import ConfigError, TrainerError, exit_code_for, one_line
from accel_trainer.launch import (
    DEFAULT_RENDEZVOUS_TIMEOUT_S,
    DEFAULT_SHUTDOWN_TIMEOUT_S,
    launch,
    rendezvous_from_env,
    write_rank_report,
)
from accel_trainer.runconfig import (
    LocalOverrides,
    apply_overrides,
    check_inputs_exist,
    load_deepspeed_config,
    load_trainer_config,
    validate,
    with_schedule_length,
)

PROGRAM = "accel-trainer"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"{PROGRAM} {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="check the config and train with this pod's ranks")
    run.add_argument(
        "--config",
        default=os.environ.get(ENV_CONFIG, DEFAULT_CONFIG_PATH),
        help=f"trainer.json (default: ${ENV_CONFIG} or {DEFAULT_CONFIG_PATH})",
    )
    run.add_argument("--nproc", type=_positive, help="local ranks (default: the pod's env)")
    run.add_argument(
        "--max-steps", type=_positive, help="replace training.maxSteps/epochs with this length"
    )
    run.add_argument("--checkpoint-dir", help="replace checkpoint.dir")
    run.add_argument("--output-dir", help="replace outputDir")
    run.add_argument("--metrics-port", type=_positive, help="replace metrics.port")
    run.add_argument(
        "--shutdown-timeout",
        type=_positive,
        default=DEFAULT_SHUTDOWN_TIMEOUT_S,
        help="seconds the ranks get to checkpoint after SIGTERM before they are killed",
    )
    run.add_argument(
        "--rendezvous-timeout",
        type=_positive,
        default=DEFAULT_RENDEZVOUS_TIMEOUT_S,
        help="seconds to wait for every pod of the job to join",
    )
    worker = commands.add_parser("worker", help="one rank (started by 'run')")
    worker.add_argument("--config", required=True)
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def run_command(args: argparse.Namespace) -> int:
    try:
        metrics_port = args.metrics_port
        if metrics_port is None and os.environ.get(ENV_METRICS_PORT):
            if not os.environ[ENV_METRICS_PORT].isdigit():
                raise ConfigError(
                    f"env {ENV_METRICS_PORT}={os.environ[ENV_METRICS_PORT]!r} is not a port "
                    "number: the operator sets it from metrics.port; check the pod spec"
                )
            metrics_port = int(os.environ[ENV_METRICS_PORT])
        overrides = LocalOverrides(
            max_steps=args.max_steps,
            checkpoint_dir=args.checkpoint_dir,
            output_dir=args.output_dir,
            metrics_port=metrics_port,
        )
        config = apply_overrides(load_trainer_config(args.config), overrides)
        rendezvous = rendezvous_from_env(os.environ, config, args.nproc)
        ds_config = load_deepspeed_config(config.deepspeed_config)
        validate(config, ds_config, rendezvous.world_size)
        check_inputs_exist(config)
    except TrainerError as error:
        print(f"{PROGRAM}: {one_line(error)}", file=sys.stderr, flush=True)
        return int(error.exit_code)
    print(
        f"{PROGRAM}: job {config.job.namespace}/{config.job.name} attempt {config.job.attempt}: "
        f"node {rendezvous.node_rank} of {rendezvous.nnodes}, {rendezvous.nproc_per_node} "
        f"local ranks, rendezvous {rendezvous.master_addr}:{rendezvous.master_port}",
        flush=True,
    )
    outcome = launch(
        config,
        rendezvous,
        # A shorter or longer local run gets a learning-rate schedule of its own length.
        ds_config=with_schedule_length(ds_config, args.max_steps) if args.max_steps else None,
        shutdown_timeout=args.shutdown_timeout,
        rendezvous_timeout=args.rendezvous_timeout,
    )
    if outcome.exit_code != 0:
        where = f"rank {outcome.rank}: " if outcome.rank >= 0 else ""
        print(
            f"{PROGRAM}: exit {outcome.exit_code}: {where}{outcome.message}",
            file=sys.stderr,
            flush=True,
        )
    return outcome.exit_code


def _stop_with_launcher() -> None:
    """Ask the kernel to send this rank SIGTERM when its launcher dies, even by SIGKILL.

    torch starts each rank in its own session, so a signal to the launcher's process group
    (a node agent stopping a pod, Ctrl-C) would otherwise leave the ranks running. SIGTERM makes
    them checkpoint and exit like a preemption. (The kernel watches the thread that started the
    rank: torch's agent starts ranks from the launcher's main thread, which lives as long as the
    launcher does.)
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    launcher = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != launcher:  # the launcher died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def worker_command(args: argparse.Namespace) -> int:
    rank = int(os.environ.get("RANK", "0"))
    _stop_with_launcher()
    try:
        from accel_trainer.runconfig import load_trainer_config as load
        from accel_trainer.train import run

        code = run(load(args.config))
        message = ""
    except BaseException as error:  # every failure becomes an exit code and one line
        code = exit_code_for(error)
        message = one_line(error)
        print(f"{PROGRAM}: rank {rank}: {message}", file=sys.stderr, flush=True)
        if code == 1:
            import traceback

            traceback.print_exc()
    write_rank_report(rank, code, message)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "worker":
        return worker_command(args)
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
