"""accel_trainer: the program inside every AccelTrainJob worker pod.

``python -m accel_trainer run --config /etc/acceltrain/trainer.json`` checks the configuration,
starts the pod's local ranks (:mod:`launch`), and each rank runs the DeepSpeed training recipe
(:mod:`train`): data (:mod:`data`, :mod:`tokenization`), model (:mod:`models`), ZeRO engine,
pruning (:mod:`pruning`, :mod:`weights`), checkpoints (:mod:`checkpoint`), evaluation
(:mod:`evaluate`), the final export (:mod:`export`) and the Prometheus exporter (:mod:`metrics`).
Its contract with the operator (``trainer.json``, the pod env, exit codes, metric names) is the
:mod:`accel_contract` package; :mod:`errors` maps failures to the contract's exit codes.
"""
