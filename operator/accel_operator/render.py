"""Pure construction of an attempt's children from a validated spec.

Given an :class:`~accel_operator.api.AccelTrainJobSpec`, the job's name, namespace and uid, and an
attempt number, these functions return the desired objects as plain dicts: the ConfigMap with
``trainer.json`` and ``ds_config.json``, the headless Service (for jobs of several workers),
and the Indexed ``batch/v1`` Job.
No I/O, no kopf, no Kubernetes client: the reconciler applies what these return.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from accel_contract.config import (
    CheckpointConfig,
    JobIdentity,
    SchedulerType,
    TrainerConfig,
)
from accel_operator import api, constants, gang

TERMINATION_GRACE_SECONDS = 120
TRAINER_COMMAND = ("python", "-m", "accel_trainer", "run", "--config")


@dataclass(frozen=True)
class ClusterDefaults:
    """What the operator's installation supplies when a spec leaves it out (Helm values)."""

    trainer_image: str | None = None
    """Image of jobs without spec.image."""
    gpu_node_selector: dict[str, str] = field(default_factory=dict)
    """Node selector of GPU workers whose spec.nodePool.nodeSelector is empty."""
    gpu_tolerations: tuple[dict[str, Any], ...] = ()
    """Tolerations added to every GPU worker."""
    native_gang: bool = False
    """Whether the API server serves scheduling.k8s.io/v1alpha1 Workloads (detected at start-up):
    the Auto gang policy is then Native."""
    pod_group_apis: tuple[str, ...] = ()
    """The PodGroup apiVersions (Volcano's, scheduler-plugins') the API server serves, detected
    at start-up: the operator watches their PodGroups and restores a live attempt's."""


class MissingImageError(ValueError):
    """Neither the spec nor the operator's installation names a trainer image."""


class ClusterDefaultsError(ValueError):
    """An operator setting for cluster defaults cannot be used; the message names it."""


def cluster_defaults_from_env(environ: Mapping[str, str]) -> ClusterDefaults:
    """The installation's defaults from the operator's environment (the Helm chart sets them).

    ``ACCELTRAIN_DEFAULT_TRAINER_IMAGE`` is an image reference; ``ACCELTRAIN_GPU_NODE_SELECTOR``
    a JSON object of label strings; ``ACCELTRAIN_GPU_TOLERATIONS`` a JSON list of core/v1
    tolerations. Unset, empty or ``null`` means no default.
    """
    image = environ.get(constants.ENV_DEFAULT_TRAINER_IMAGE, "").strip()
    if any(character.isspace() for character in image):
        raise ClusterDefaultsError(
            f"{constants.ENV_DEFAULT_TRAINER_IMAGE}={image!r}: an image reference has no "
            "spaces; set it to, for example, ghcr.io/acceltrain/trainer:0.1.0 (Helm value "
            "trainer.image)"
        )
    selector = _json_setting(
        environ, constants.ENV_GPU_NODE_SELECTOR, "trainer.gpuPool.nodeSelector"
    )
    if selector is None:
        selector = {}
    if not isinstance(selector, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in selector.items()
    ):
        raise ClusterDefaultsError(
            f"{constants.ENV_GPU_NODE_SELECTOR}: must be a JSON object of label strings, for "
            'example {"acceltrain.io/pool": "gpu"} (Helm value trainer.gpuPool.nodeSelector); '
            f"got {selector!r}"
        )
    raw_tolerations = _json_setting(
        environ, constants.ENV_GPU_TOLERATIONS, "trainer.gpuPool.tolerations"
    )
    if raw_tolerations is None:
        raw_tolerations = []
    if not isinstance(raw_tolerations, list):
        raise ClusterDefaultsError(
            f"{constants.ENV_GPU_TOLERATIONS}: must be a JSON list of tolerations, for example "
            '[{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}] (Helm value '
            f"trainer.gpuPool.tolerations); got {raw_tolerations!r}"
        )
    tolerations = []
    for index, raw in enumerate(raw_tolerations):
        try:
            toleration = api.Toleration.model_validate(raw)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in item['loc']) or 'item'}: {item['msg']}"
                for item in error.errors()
            )
            raise ClusterDefaultsError(
                f"{constants.ENV_GPU_TOLERATIONS}[{index}]: not a toleration ({problems}); "
                "fix the Helm value trainer.gpuPool.tolerations"
            ) from None
        tolerations.append(toleration.model_dump(by_alias=True, exclude_none=True, mode="json"))
    return ClusterDefaults(
        trainer_image=image or None,
        gpu_node_selector=dict(selector),
        gpu_tolerations=tuple(tolerations),
    )


def _json_setting(environ: Mapping[str, str], variable: str, helm_value: str) -> Any:
    text = environ.get(variable, "").strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError as error:
        raise ClusterDefaultsError(
            f"{variable}: not valid JSON ({error}); set the Helm value {helm_value}, or the "
            "variable to a JSON value"
        ) from None


@dataclass(frozen=True)
class JobRef:
    """Identity of the AccelTrainJob whose children are rendered."""

    name: str
    namespace: str
    uid: str
    kueue_labels: tuple[tuple[str, str], ...] = ()
    """The AccelTrainJob's Kueue labels (kueue.x-k8s.io/*), passed on to each attempt's Job."""


# --- names --------------------------------------------------------------------------------------
def service_name(job_name: str) -> str:
    return job_name


def attempt_job_name(job_name: str, attempt: int) -> str:
    return f"{job_name}-a{attempt}"


def accel_job_of_attempt(job_name: str) -> str | None:
    """The AccelTrainJob an attempt's Job name (``<job>-a<attempt>``) belongs to, else None."""
    head, separator, attempt = job_name.rpartition("-a")
    return head if separator and head and attempt.isdigit() else None


def config_map_name(job_name: str, attempt: int) -> str:
    return f"{attempt_job_name(job_name, attempt)}-config"


def pod_hostname(job_name: str, attempt: int, index: int) -> str:
    """The hostname the Job controller gives the pod of ``index`` (``<job name>-<index>``)."""
    return f"{attempt_job_name(job_name, attempt)}-{index}"


def needs_service(spec: api.AccelTrainJobSpec) -> bool:
    """Whether the job gets its headless Service: only ranks on different pods need DNS names
    to find each other. A single worker's ranks meet on the pod's loopback, which saves two
    requests per launch (the Service's dry run and apply) and a Service per job."""
    return spec.workers > 1


def master_address(spec: api.AccelTrainJobSpec, ref: JobRef, attempt: int) -> str:
    """DNS name of rank 0's pod through the headless Service; loopback for a single worker."""
    if not needs_service(spec):
        return "127.0.0.1"
    return f"{pod_hostname(ref.name, attempt, 0)}.{service_name(ref.name)}.{ref.namespace}.svc"


# --- metadata -----------------------------------------------------------------------------------
def selector_labels(job_name: str) -> dict[str, str]:
    """Labels that select every worker pod of the job, whatever the attempt."""
    return {constants.LABEL_JOB_NAME: job_name, constants.LABEL_ROLE: constants.ROLE_WORKER}


def attempt_labels(job_name: str, attempt: int) -> dict[str, str]:
    return {
        **selector_labels(job_name),
        constants.LABEL_ATTEMPT: str(attempt),
        constants.LABEL_MANAGED_BY: constants.MANAGED_BY,
    }


def owner_reference(ref: JobRef) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "name": ref.name,
        "uid": ref.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(name: str, ref: JobRef, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": ref.namespace,
        "labels": dict(labels),
        "ownerReferences": [owner_reference(ref)],
    }


# --- DeepSpeed config ---------------------------------------------------------------------------
_OPTIMIZER_TYPES = {"adamw": "AdamW", "adam": "Adam", "sgd": "SGD", "lamb": "Lamb"}


def deepspeed_config(spec: api.AccelTrainJobSpec) -> dict[str, Any]:
    """ds_config.json: the typed fields first, then ``deepspeed.overrides`` merged on top."""
    training = spec.training
    zero = spec.deepspeed.zero
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": training.micro_batch_size,
        "gradient_accumulation_steps": training.gradient_accumulation,
        "train_batch_size": training.micro_batch_size
        * training.gradient_accumulation
        * spec.world_size,
        "gradient_clipping": training.gradient_clipping or 0.0,
        "steps_per_print": training.log_every,
        "wall_clock_breakdown": False,
        "zero_optimization": _zero_block(zero),
        "optimizer": _optimizer_block(spec),
        "scheduler": _scheduler_block(spec),
    }
    precision = spec.deepspeed.precision
    if precision is api.Precision.BF16:
        config["bf16"] = {"enabled": True}
    elif precision is api.Precision.FP16:
        fp16 = spec.deepspeed.fp16
        config["fp16"] = {
            "enabled": True,
            "loss_scale": fp16.loss_scale,
            "initial_scale_power": fp16.initial_scale_power,
            "loss_scale_window": fp16.loss_scale_window,
            "hysteresis": fp16.hysteresis,
            "min_loss_scale": fp16.min_loss_scale,
        }
    if training.optimizer.type.value == "sgd" and zero.stage > 0:
        # DeepSpeed guards ZeRO with optimizers outside its tested list; SGD is a plain torch
        # optimizer whose state partitions like any other.
        config["zero_allow_untested_optimizer"] = True
    if spec.deepspeed.activation_checkpointing:
        config["activation_checkpointing"] = {
            "partition_activations": False,
            "contiguous_memory_optimization": False,
            "cpu_checkpointing": False,
        }
    return merge_overrides(config, spec.deepspeed.overrides)


def _zero_block(zero: api.ZeroSpec) -> dict[str, Any]:
    block: dict[str, Any] = {"stage": zero.stage}
    if zero.stage == 0:
        return block
    block.update(
        {
            "reduce_bucket_size": zero.reduce_bucket_size,
            "allgather_bucket_size": zero.allgather_bucket_size,
            "overlap_comm": zero.overlap_comm,
            "contiguous_gradients": zero.contiguous_gradients,
        }
    )
    if zero.offload_optimizer is api.OffloadDevice.CPU:
        block["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if zero.offload_params is api.OffloadDevice.CPU:
        block["offload_param"] = {"device": "cpu", "pin_memory": False}
    return block


def _optimizer_block(spec: api.AccelTrainJobSpec) -> dict[str, Any]:
    optimizer = spec.training.optimizer
    kind = optimizer.type.value
    params: dict[str, Any] = {"lr": optimizer.lr, "weight_decay": optimizer.weight_decay}
    if kind == "sgd":
        params["momentum"] = optimizer.momentum
    else:
        params["betas"] = list(optimizer.betas)
        params["eps"] = optimizer.eps
    if kind in ("adam", "adamw") and spec.on_cpu:
        # DeepSpeed's fused and CPU Adam kernels compile on first use; torch's runs at once.
        params["torch_adam"] = True
    if kind == "adam":
        # DeepSpeed's "Adam" means AdamW unless told otherwise; the user asked for L2 Adam.
        params["adam_w_mode"] = False
    return {"type": _OPTIMIZER_TYPES[kind], "params": params}


def _scheduler_block(spec: api.AccelTrainJobSpec) -> dict[str, Any]:
    scheduler = spec.training.scheduler
    lr = spec.training.optimizer.lr
    total_steps = spec.training.max_steps
    # DeepSpeed's warmup schedulers refuse warmup_num_steps 0 (and warm up over at least two
    # steps whatever the number). Without warmup the ramp starts at the full rate where the
    # scheduler allows it: WarmupLR from warmup_min_lr, WarmupCosineLR from warmup_min_ratio.
    # WarmupDecayLR decays only the part above warmup_min_lr, so it keeps a two-step ramp.
    no_warmup = scheduler.warmup_steps == 0
    warmup_steps = max(1, scheduler.warmup_steps)
    if scheduler.type is SchedulerType.CONSTANT:
        return {
            "type": "WarmupLR",
            "params": {
                "warmup_min_lr": lr if no_warmup else 0.0,
                "warmup_max_lr": lr,
                "warmup_num_steps": warmup_steps,
                "warmup_type": "linear",
            },
        }
    if scheduler.type is SchedulerType.LINEAR:
        params: dict[str, Any] = {
            "warmup_min_lr": 0.0,
            "warmup_max_lr": lr,
            "warmup_num_steps": warmup_steps,
            "warmup_type": "linear",
        }
        name = "WarmupDecayLR"
    else:
        params = {
            "warmup_min_ratio": 1.0 if no_warmup else 0.0,
            "warmup_num_steps": warmup_steps,
            "cos_min_ratio": scheduler.min_lr_ratio,
            "warmup_type": "linear",
        }
        name = "WarmupCosineLR"
    # With epochs the step count depends on the data set size: the trainer fills it in.
    if total_steps is not None:
        params["total_num_steps"] = total_steps
    return {"type": name, "params": params}


def merge_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``overrides`` into a copy of ``base``; override values win, dicts merge."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_overrides(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


# --- trainer config -----------------------------------------------------------------------------
def trainer_config(spec: api.AccelTrainJobSpec, ref: JobRef, attempt: int) -> TrainerConfig:
    """The trainer's view of the spec (``trainer.json``)."""
    return TrainerConfig(
        job=JobIdentity(name=ref.name, namespace=ref.namespace, attempt=attempt),
        model=spec.model,
        data=spec.data,
        training=spec.training,
        pruning=spec.pruning,
        export=spec.export,
        checkpoint=CheckpointConfig(
            dir=spec.checkpoint.path,
            every_steps=spec.checkpoint.every_steps,
            keep=spec.checkpoint.keep,
            resume=spec.checkpoint.resume,
        ),
        metrics=spec.metrics,
        deepspeed_config=constants.DEEPSPEED_CONFIG_FILE,
        device="cpu" if spec.on_cpu else "cuda",
        procs_per_worker=spec.procs,
        activation_checkpointing=spec.deepspeed.activation_checkpointing,
    )


# --- children -----------------------------------------------------------------------------------
def render_config_map(spec: api.AccelTrainJobSpec, ref: JobRef, attempt: int) -> dict[str, Any]:
    ds_config = json.dumps(deepspeed_config(spec), indent=2, sort_keys=True)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(
            config_map_name(ref.name, attempt), ref, attempt_labels(ref.name, attempt)
        ),
        "data": {
            constants.TRAINER_CONFIG_FILE: trainer_config(spec, ref, attempt).to_json(),
            constants.DEEPSPEED_CONFIG_FILE: ds_config,
        },
    }


def render_service(spec: api.AccelTrainJobSpec, ref: JobRef) -> dict[str, Any]:
    """Headless Service that gives every worker pod a stable DNS name."""
    labels = {**selector_labels(ref.name), constants.LABEL_MANAGED_BY: constants.MANAGED_BY}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(service_name(ref.name), ref, labels),
        "spec": {
            "clusterIP": "None",
            # Ranks resolve each other before they are ready: the rendezvous is what makes them so.
            "publishNotReadyAddresses": True,
            "selector": selector_labels(ref.name),
            "ports": [
                {
                    "name": constants.RENDEZVOUS_PORT_NAME,
                    "port": constants.DEFAULT_MASTER_PORT,
                    "targetPort": constants.DEFAULT_MASTER_PORT,
                    "protocol": "TCP",
                },
                {
                    "name": constants.METRICS_PORT_NAME,
                    "port": spec.metrics.port,
                    "targetPort": spec.metrics.port,
                    "protocol": "TCP",
                },
            ],
        },
    }


def render_job(
    spec: api.AccelTrainJobSpec,
    ref: JobRef,
    attempt: int,
    defaults: ClusterDefaults = ClusterDefaults(),
) -> dict[str, Any]:
    """The Indexed batch/v1 Job of one attempt: one pod per worker, all or nothing."""
    labels = attempt_labels(ref.name, attempt)
    name = attempt_job_name(ref.name, attempt)
    policy = gang.in_force(spec, defaults.native_gang).policy
    grouped = gang.pod_additions(policy, spec, name)
    pod_spec = {**_pod_spec(spec, ref, attempt, defaults), **grouped["spec"]}
    job_labels = {**labels, **dict(ref.kueue_labels)}
    if spec.run_policy.queue_name:
        job_labels[constants.LABEL_KUEUE_QUEUE] = spec.run_policy.queue_name
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(name, ref, job_labels),
        "spec": {
            "completionMode": "Indexed",
            "completions": spec.workers,
            "parallelism": spec.workers,
            # The operator restarts the whole group; the Job never replaces single pods.
            "backoffLimit": 0,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": constants.TRAINER_CONTAINER,
                            "operator": "In",
                            "values": sorted(int(code) for code in constants.PERMANENT_EXIT_CODES),
                        },
                    }
                ]
            },
            # Kueue admits a suspended Job as a whole and unsuspends it.
            "suspend": spec.run_policy.queue_name is not None,
            "template": {
                "metadata": {
                    "labels": {**labels, **grouped["labels"]},
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(spec.metrics.port),
                        **grouped["annotations"],
                    },
                },
                "spec": pod_spec,
            },
        },
    }


def _pod_spec(
    spec: api.AccelTrainJobSpec, ref: JobRef, attempt: int, defaults: ClusterDefaults
) -> dict[str, Any]:
    node_pool = spec.node_pool
    tolerations = [
        toleration.model_dump(by_alias=True, exclude_none=True, mode="json")
        for toleration in node_pool.tolerations
    ]
    node_selector = dict(node_pool.node_selector)
    if not spec.on_cpu:
        tolerations.append(
            {"key": constants.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
        )
        tolerations.extend(
            dict(toleration)
            for toleration in defaults.gpu_tolerations
            if toleration not in tolerations
        )
        node_selector = node_selector or dict(defaults.gpu_node_selector)
    pod: dict[str, Any] = {
        **({"subdomain": service_name(ref.name)} if needs_service(spec) else {}),
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(spec, ref, attempt, defaults)],
        "volumes": _volumes(spec, ref, attempt),
    }
    tolerations.extend(_node_loss_tolerations(spec, tolerations))
    if node_selector:
        pod["nodeSelector"] = node_selector
    if tolerations:
        pod["tolerations"] = tolerations
    if node_pool.affinity is not None:
        pod["affinity"] = node_pool.affinity.model_dump(
            by_alias=True, exclude_none=True, mode="json"
        )
    if spec.priority_class_name:
        pod["priorityClassName"] = spec.priority_class_name
    if spec.service_account_name:
        pod["serviceAccountName"] = spec.service_account_name
    return pod


def _node_loss_tolerations(
    spec: api.AccelTrainJobSpec, tolerations: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Tolerate a lost node for runPolicy.nodeLossSeconds instead of the API server's default
    300 s: a group with a worker on a dead node trains no further, and its other GPUs wait.
    Taints the pool's own tolerations already cover are left to them."""
    covered = {toleration.get("key") for toleration in tolerations}
    if None in covered or "" in covered:  # an empty key tolerates every taint
        return []
    return [
        {
            "key": key,
            "operator": "Exists",
            "effect": "NoExecute",
            "tolerationSeconds": spec.run_policy.node_loss_seconds,
        }
        for key in constants.NODE_LOSS_TAINTS
        if key not in covered
    ]


def trainer_image(spec: api.AccelTrainJobSpec, defaults: ClusterDefaults) -> str:
    """The image the workers run: the spec's, else the installation's default."""
    image = spec.image or defaults.trainer_image
    if not image:
        raise MissingImageError(
            "spec.image: no trainer image; set spec.image, or the operator's default trainer "
            f"image (Helm value trainer.image, env {constants.ENV_DEFAULT_TRAINER_IMAGE})"
        )
    return image


def _container(
    spec: api.AccelTrainJobSpec, ref: JobRef, attempt: int, defaults: ClusterDefaults
) -> dict[str, Any]:
    image = trainer_image(spec, defaults)
    config_path = f"{constants.CONFIG_MOUNT_PATH}/{constants.TRAINER_CONFIG_FILE}"
    requests = {key: str(value) for key, value in spec.resources.requests.items()}
    limits = {key: str(value) for key, value in spec.resources.limits.items()}
    if not spec.on_cpu:
        limits[constants.GPU_RESOURCE] = str(spec.devices_per_worker)
        requests[constants.GPU_RESOURCE] = str(spec.devices_per_worker)
    resources: dict[str, Any] = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    mounts = [
        {
            "name": constants.CONFIG_VOLUME,
            "mountPath": constants.CONFIG_MOUNT_PATH,
            "readOnly": True,
        },
        {"name": constants.SCRATCH_VOLUME, "mountPath": constants.SCRATCH_MOUNT_PATH},
    ]
    if not spec.on_cpu:
        mounts.append({"name": constants.SHM_VOLUME, "mountPath": constants.SHM_MOUNT_PATH})
    for volume in spec.volumes:
        mount: dict[str, Any] = {"name": volume.name, "mountPath": volume.mount_path}
        if volume.read_only:
            mount["readOnly"] = True
        mounts.append(mount)
    return {
        "name": constants.TRAINER_CONTAINER,
        "image": image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": [*TRAINER_COMMAND, config_path],
        "env": _env(spec, ref, attempt, config_path),
        "ports": [
            *metrics_ports(spec),
            {
                "name": constants.RENDEZVOUS_PORT_NAME,
                "containerPort": constants.DEFAULT_MASTER_PORT,
            },
        ],
        "resources": resources,
        "volumeMounts": mounts,
        # The trainer's last log lines (its error) become the container's termination
        # message, which the operator reads without going through the node's log endpoint.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }


def _field_env(name: str, field_path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field_path}}}


def metrics_ports(spec: api.AccelTrainJobSpec) -> list[dict[str, Any]]:
    """One named port per local rank: each rank serves its own exporter on ``port + local_rank``,
    and Prometheus (pod discovery or a PodMonitor) makes one target per declared port."""
    return [
        {
            "name": constants.METRICS_PORT_NAME
            if local_rank == 0
            else f"{constants.METRICS_PORT_NAME}-{local_rank}",
            "containerPort": spec.metrics.port + local_rank,
        }
        for local_rank in range(spec.procs)
    ]


def _env(
    spec: api.AccelTrainJobSpec, ref: JobRef, attempt: int, config_path: str
) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": constants.ENV_CONFIG, "value": config_path},
        {"name": "MASTER_ADDR", "value": master_address(spec, ref, attempt)},
        {"name": "MASTER_PORT", "value": str(constants.DEFAULT_MASTER_PORT)},
        {"name": constants.ENV_NNODES, "value": str(spec.workers)},
        {"name": constants.ENV_NPROC_PER_NODE, "value": str(spec.procs)},
        _field_env(
            constants.ENV_NODE_RANK,
            f"metadata.annotations['{constants.LABEL_JOB_COMPLETION_INDEX}']",
        ),
        {"name": constants.ENV_JOB_NAME, "value": ref.name},
        _field_env(constants.ENV_NAMESPACE, "metadata.namespace"),
        {"name": constants.ENV_ATTEMPT, "value": str(attempt)},
        _field_env(constants.ENV_POD_NAME, "metadata.name"),
        _field_env(constants.ENV_POD_IP, "status.podIP"),
        {"name": constants.ENV_METRICS_PORT, "value": str(spec.metrics.port)},
        # The memory preflight's budget (the node's allocatable memory without a limit).
        {
            "name": constants.ENV_MEMORY_LIMIT_BYTES,
            "valueFrom": {
                "resourceFieldRef": {
                    "containerName": constants.TRAINER_CONTAINER,
                    "resource": "limits.memory",
                }
            },
        },
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    # The root filesystem is read-only: caches and temporary files go to the scratch volume,
    # unless the user points them elsewhere (a persistent extension cache, for instance).
    defaults = {"HOME": constants.SCRATCH_MOUNT_PATH, "TMPDIR": constants.SCRATCH_MOUNT_PATH}
    user_names = {variable.name for variable in spec.env}
    env.extend(
        {"name": name, "value": value} for name, value in defaults.items() if name not in user_names
    )
    env.extend(
        variable.model_dump(by_alias=True, exclude_none=True, mode="json") for variable in spec.env
    )
    return env


def _volumes(spec: api.AccelTrainJobSpec, ref: JobRef, attempt: int) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {
            "name": constants.CONFIG_VOLUME,
            "configMap": {"name": config_map_name(ref.name, attempt)},
        },
        {"name": constants.SCRATCH_VOLUME, "emptyDir": {}},
    ]
    if not spec.on_cpu:
        volumes.append({"name": constants.SHM_VOLUME, "emptyDir": {"medium": "Memory"}})
    for volume in spec.volumes:
        source = volume.model_dump(
            by_alias=True,
            exclude_none=True,
            mode="json",
            include={"persistent_volume_claim", "host_path", "empty_dir", "config_map"},
        )
        volumes.append({"name": volume.name, **source})
    return volumes


def render_gang_object(
    spec: api.AccelTrainJobSpec, ref: JobRef, attempt: int, defaults: ClusterDefaults
) -> dict[str, Any] | None:
    """The attempt's Workload or PodGroup (named as its Job), None under a policy without one."""
    name = attempt_job_name(ref.name, attempt)
    policy = gang.in_force(spec, defaults.native_gang).policy
    return gang.group_object(
        policy, spec, name, _metadata(name, ref, attempt_labels(ref.name, attempt))
    )


def render_attempt(
    spec: api.AccelTrainJobSpec,
    ref: JobRef,
    attempt: int,
    defaults: ClusterDefaults = ClusterDefaults(),
) -> list[dict[str, Any]]:
    """Every child of one attempt, in the order they should be applied: the gang object
    before the Job whose pods name it."""
    group = render_gang_object(spec, ref, attempt, defaults)
    return [
        render_config_map(spec, ref, attempt),
        *([render_service(spec, ref)] if needs_service(spec) else []),
        *([group] if group is not None else []),
        render_job(spec, ref, attempt, defaults),
    ]
