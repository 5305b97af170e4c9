"""accel_contract: what the operator and the trainer agree on, installed by both images.

- :mod:`config`: ``trainer.json`` (the trainer's configuration, whose sections are also the
  AccelTrainJob spec's), the pod environment, the ports and the exit codes.
- :mod:`rules`: the run rules checked by the API server (as CEL), the operator and the trainer.
- :mod:`metrics`: the series every trainer rank exports and the operator reads.

It imports only pydantic and the standard library, so the operator image (no torch) and the
trainer image carry the same files (docs/design.md#the-operator-trainer-contract).
"""

from importlib import metadata as _metadata

DISTRIBUTION = "acceltrain"
"""The Python distribution both images install (pyproject.toml), whose version the CLIs and the
operator's build_info metric report."""


def package_version() -> str:
    """The installed acceltrain version; "unknown" when run from a tree that is not installed."""
    try:
        return _metadata.version(DISTRIBUTION)
    except _metadata.PackageNotFoundError:
        return "unknown"
