"""accel_trainer: the program inside every AccelTrainJob worker pod.

``python -m accel_trainer run --config /etc/acceltrain/trainer.json`` checks the configuration,
starts the pod's local ranks (:mod:`launch`), and each rank runs the DeepSpeed training recipe
(:mod:`train`): data (:mod:`data`, :mod:`tokenization`), model (:mod:`models`), ZeRO engine,
pruning (:mod:`pruning`, :mod:`weights`), checkpoints (:mod:`checkpoint`), evaluation
(:mod:`evaluate`), the final export (:mod:`export`) and the Prometheus exporter (:mod:`metrics`).
:mod:`config` is the contract with the operator; :mod:`errors` maps failures to its exit codes.
"""
