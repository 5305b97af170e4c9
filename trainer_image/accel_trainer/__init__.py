"""accel_trainer: the program inside every AccelTrainJob worker pod.

``python -m accel_trainer run --config /etc/acceltrain/trainer.json`` checks the configuration,
starts the pod's local ranks (:mod:`launch`), and each rank runs the DeepSpeed training recipe
(:mod:`train`): data (:mod:`data`, :mod:`tokenization`), model (:mod:`models`), ZeRO engine,
pruning (:mod:`pruning`, :mod:`weights`), checkpoints (:mod:`checkpoint`), evaluation
(:mod:`evaluate`), the final export (:mod:`export`) and the Prometheus exporter (:mod:`metrics`).
:mod:`config` is the contract with the operator; :mod:`errors` maps failures to its exit codes.
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
