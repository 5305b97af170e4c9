"""Trainer failures and the exit code each one maps to (the contract in :class:`ExitCode`).

Every failure the trainer can explain is raised as a :class:`TrainerError` subclass whose message
is one line naming the field, file or line at fault and the fix; the entry points print that line
and exit with the subclass's code. :func:`exit_code_for` classifies everything else (out of
memory, a lost peer) so that the operator can tell a retry that may help from one that cannot.
"""

from __future__ import annotations

from accel_contract.config import ExitCode


class TrainerError(Exception):
    """A failure with a one-line explanation and a contract exit code."""

    exit_code: ExitCode = ExitCode.CONFIG_ERROR


class ConfigError(TrainerError):
    """trainer.json, ds_config.json or a CLI override cannot work (permanent)."""

    exit_code = ExitCode.CONFIG_ERROR


class DataError(TrainerError):
    """The data files exist but their content is wrong: a field, a label, a line (permanent)."""

    exit_code = ExitCode.DATA_ERROR


class MissingInputError(TrainerError):
    """A file or directory the config names does not exist (permanent)."""

    exit_code = ExitCode.MISSING_INPUT


class OutOfMemoryError(TrainerError):
    """The model and batch do not fit the device or host memory (permanent)."""

    exit_code = ExitCode.OUT_OF_MEMORY


class CommunicationLostError(TrainerError):
    """A peer rank or the rendezvous went away (retryable)."""

    exit_code = ExitCode.COMMUNICATION_LOST


# Fragments of the messages torch.distributed (gloo, NCCL, the TCP store) raises when a peer dies
# or cannot be reached. Matching on text is the only option: these arrive as plain RuntimeErrors
# from C++ in several torch versions.
_COMMUNICATION_FAILURE_MARKERS = (
    "connection closed by peer",
    "connection reset by peer",
    "broken pipe",
    "socket timeout",
    "timed out",
    "connection refused",
    "nccl error",
    "nccl communicator was aborted",
    "gloo",
    "the server socket has failed",
    "failed to recv",
    "failed to send",
    "no route to host",
    "network is unreachable",
    "tcpstore",
)


def exit_code_for(error: BaseException) -> int:
    """The exit code a rank reports for ``error``; see :class:`ExitCode` for the meanings."""
    if isinstance(error, TrainerError):
        return int(error.exit_code)
    if isinstance(error, MemoryError):
        return int(ExitCode.OUT_OF_MEMORY)
    # torch is imported lazily: this module is used by the launcher before torch is loaded.
    try:
        import torch
        import torch.distributed as torch_dist
    except ImportError:  # pragma: no cover - torch is always present in the trainer image
        return 1
    if isinstance(error, torch.OutOfMemoryError):
        return int(ExitCode.OUT_OF_MEMORY)
    if isinstance(error, torch_dist.DistError):
        return int(ExitCode.COMMUNICATION_LOST)
    if isinstance(error, RuntimeError | ConnectionError | TimeoutError):
        text = str(error).lower()
        if "out of memory" in text:
            return int(ExitCode.OUT_OF_MEMORY)
        if isinstance(error, ConnectionError | TimeoutError) or any(
            marker in text for marker in _COMMUNICATION_FAILURE_MARKERS
        ):
            return int(ExitCode.COMMUNICATION_LOST)
    return 1


def one_line(error: BaseException) -> str:
    """``error`` as a single log line (the operator shows the log tail on failure)."""
    text = " ".join(str(error).split())
    if isinstance(error, TrainerError):
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
