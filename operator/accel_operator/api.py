"""The ``AccelTrainJob`` API (``acceltrain.io/v1alpha1``): the single source of its CRD schema.

Pure: pydantic models and validation only, no I/O. The model, data, training, pruning, export and
metrics sections are the trainer contract's own models (:mod:`accel_contract.config`), so the
operator and the trainer cannot disagree on them. The rules that span fields live once in the
rule table (:mod:`accel_operator.rules`): the models here run its Python checks when a spec is
parsed, and the CRD carries the same rules as CEL, so that ``kubectl apply`` refuses the spec
before any object is created. Every message names the field path and the fix.
"""

from __future__ import annotations

import enum
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from accel_contract.config import (
    CamelModel,
    DataSpec,
    ExportSpec,
    MetricsSpec,
    ModelArchitectureSpec,
    ModelSpec,
    PruningSpec,
    TrainingSpec,
)
from accel_operator import constants, rules

GROUP = "acceltrain.io"
VERSION = "v1alpha1"
KIND = "AccelTrainJob"
PLURAL = "acceltrainjobs"
SINGULAR = "acceltrainjob"
SHORT_NAMES = ("atj",)
API_VERSION = f"{GROUP}/{VERSION}"

# Derived names: Service "<job>", Job "<job>-a<attempt>", pod hostname "<job>-a<attempt>-<index>".
# The hostname must stay a DNS label (63 characters) for the largest attempt and index allowed.
MAX_ATTEMPT_DIGITS = 3
MAX_WORKERS = 1024
MAX_INDEX_DIGITS = len(str(MAX_WORKERS - 1))
MAX_JOB_NAME_LENGTH = 63 - len("-a") - MAX_ATTEMPT_DIGITS - len("-") - MAX_INDEX_DIGITS
JOB_NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"

ShortString = Annotated[str, Field(min_length=1, max_length=253)]
# The name of a Kubernetes object (a DNS-1123 subdomain): ServiceAccount, PriorityClass, claim.
ObjectName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
    ),
]
LabelValue = Annotated[str, Field(max_length=63)]
# Kubernetes quantities ("2", "500m", "16Gi") arrive as integers or strings; both are accepted.
Quantity = Annotated[
    int | str,
    Field(json_schema_extra={"x-kubernetes-int-or-string": True, "maxLength": 64}),
]


class RuledModel(CamelModel):
    """A model whose rules live in the rule table (:mod:`accel_operator.rules`)."""

    @model_validator(mode="after")
    def _table_rules(self) -> RuledModel:
        problems = rules.model_problems(self)
        if problems:
            # One line per problem; parse_spec puts the model's path in front of each.
            raise ValueError("\n".join(problems))
        return self


# --- pods and placement -------------------------------------------------------------------------
class ResourcesSpec(RuledModel):
    """CPU, memory and other resources of each worker (GPUs come from devicesPerWorker)."""

    requests: Annotated[dict[str, Quantity], Field(max_length=16)] = Field(default_factory=dict)
    """Resources reserved for each worker pod, for example {cpu: 8, memory: 64Gi}."""
    limits: Annotated[dict[str, Quantity], Field(max_length=16)] = Field(default_factory=dict)
    """Upper bounds for each worker pod; nvidia.com/gpu is set from devicesPerWorker."""


class TolerationOperator(str, enum.Enum):
    EXISTS = "Exists"
    EQUAL = "Equal"


class TaintEffect(str, enum.Enum):
    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


class Toleration(RuledModel):
    """A toleration for the taints of the GPU node pool (Kubernetes' core/v1 Toleration)."""

    key: Annotated[str | None, Field(max_length=317)] = None
    """Taint key to tolerate; empty with operator Exists tolerates every taint."""
    operator: TolerationOperator = TolerationOperator.EQUAL
    """Exists or Equal."""
    value: Annotated[str | None, Field(max_length=63)] = None
    """Taint value to match with operator Equal."""
    effect: TaintEffect | None = None
    """Taint effect to match; empty matches all effects."""
    toleration_seconds: Annotated[int | None, Field(ge=0)] = None
    """How long a NoExecute taint is tolerated."""


class NodeSelectorOperator(str, enum.Enum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"
    GT = "Gt"
    LT = "Lt"


class NodeSelectorRequirement(RuledModel):
    """One label expression a node must satisfy."""

    key: Annotated[str, Field(min_length=1, max_length=317)]
    """Node label key."""
    operator: NodeSelectorOperator
    """In, NotIn, Exists, DoesNotExist, Gt or Lt."""
    values: Annotated[list[LabelValue], Field(max_length=32)] = Field(default_factory=list)
    """Label values for In/NotIn; one integer for Gt/Lt."""


class NodeSelectorTerm(CamelModel):
    """Expressions that must all hold (terms are ORed)."""

    match_expressions: Annotated[list[NodeSelectorRequirement], Field(max_length=32)] = Field(
        default_factory=list
    )
    """Label expressions on the node."""


class RequiredNodeAffinity(CamelModel):
    """Hard node constraints."""

    node_selector_terms: Annotated[list[NodeSelectorTerm], Field(min_length=1, max_length=16)]
    """Any one of these terms must match."""


class PreferredSchedulingTerm(CamelModel):
    """A weighted soft node preference."""

    weight: Annotated[int, Field(ge=1, le=100)]
    """Weight of this preference, 1-100."""
    preference: NodeSelectorTerm
    """The node labels preferred."""


class NodeAffinity(CamelModel):
    """Node affinity of the worker pods (Kubernetes' core/v1 NodeAffinity)."""

    required_during_scheduling_ignored_during_execution: RequiredNodeAffinity | None = None
    """Nodes the workers must run on."""
    preferred_during_scheduling_ignored_during_execution: Annotated[
        list[PreferredSchedulingTerm], Field(max_length=16)
    ] = Field(default_factory=list)
    """Nodes the workers prefer."""


class Affinity(CamelModel):
    """Scheduling affinity of the worker pods."""

    node_affinity: NodeAffinity | None = None
    """Node affinity (required and preferred terms)."""


class NodePoolSpec(RuledModel):
    """Where the worker pods run: the GPU node pool's labels and taints."""

    node_selector: Annotated[dict[str, LabelValue], Field(max_length=32)] = Field(
        default_factory=dict
    )
    """Node labels every worker node must have, for example {acceltrain.io/pool: gpu}."""
    tolerations: Annotated[list[Toleration], Field(max_length=32)] = Field(default_factory=list)
    """Tolerations for the pool's taints. GPU workers tolerate nvidia.com/gpu automatically."""
    affinity: Affinity | None = None
    """Node affinity for finer placement."""


class KeyRef(CamelModel):
    """A key of a Secret or ConfigMap in the job's namespace."""

    name: ObjectName
    """Name of the Secret or ConfigMap."""
    key: Annotated[str, Field(min_length=1, max_length=253)]
    """Key inside it."""
    optional: bool = False
    """Start the pod even if the key is missing."""


class EnvVarSource(RuledModel):
    """Where an env var's value comes from; set exactly one."""

    secret_key_ref: KeyRef | None = None
    """A key of a Secret (for example a hub token)."""
    config_map_key_ref: KeyRef | None = None
    """A key of a ConfigMap."""


class EnvVar(RuledModel):
    """An extra environment variable of the trainer container."""

    name: Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
    """Variable name; MASTER_ADDR, RANK, WORLD_SIZE and ACCELTRAIN_* are reserved."""
    value: Annotated[str | None, Field(max_length=32768)] = None
    """Literal value."""
    value_from: EnvVarSource | None = None
    """Take the value from a Secret or ConfigMap key instead."""


class HostPathType(str, enum.Enum):
    DIRECTORY = "Directory"
    DIRECTORY_OR_CREATE = "DirectoryOrCreate"
    FILE = "File"


class PvcSource(CamelModel):
    """A PersistentVolumeClaim in the job's namespace."""

    claim_name: ObjectName
    """Name of the claim; ReadWriteMany when workers on several nodes share a checkpoint dir."""


class HostPathSource(CamelModel):
    """A directory of the node (single-node and local clusters)."""

    path: Annotated[str, Field(min_length=1, max_length=4096, pattern=r"^/")]
    """Absolute path on the node."""
    type: HostPathType = HostPathType.DIRECTORY_OR_CREATE
    """Directory, DirectoryOrCreate or File."""


class EmptyDirSource(CamelModel):
    """Scratch space that lives as long as the pod."""

    medium: Literal["", "Memory"] = ""
    """Empty for disk, Memory for tmpfs."""
    size_limit: Quantity | None = None
    """Maximum size, for example 10Gi."""


class ConfigMapSource(CamelModel):
    """Files from a ConfigMap."""

    name: ObjectName
    """Name of the ConfigMap."""


class VolumeSpec(RuledModel):
    """A volume mounted into every worker: model weights, data, checkpoints."""

    name: Annotated[
        str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    ]
    """Volume name, a DNS label unique within the job."""
    mount_path: Annotated[str, Field(min_length=1, max_length=4096, pattern=r"^/")]
    """Absolute path inside the trainer container."""
    read_only: bool = False
    """Mount read-only (data and model volumes)."""
    persistent_volume_claim: PvcSource | None = None
    """Use a PersistentVolumeClaim."""
    host_path: HostPathSource | None = None
    """Use a directory of the node."""
    empty_dir: EmptyDirSource | None = None
    """Use pod-lifetime scratch space (lost when the pod group restarts)."""
    config_map: ConfigMapSource | None = None
    """Use the files of a ConfigMap."""

    @property
    def persistent(self) -> bool:
        """Whether files written here survive the pod group being recreated."""
        return self.persistent_volume_claim is not None or self.host_path is not None


# --- DeepSpeed ----------------------------------------------------------------------------------
class Precision(str, enum.Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"


class OffloadDevice(str, enum.Enum):
    NONE = "none"
    CPU = "cpu"


class ZeroSpec(CamelModel):
    """ZeRO partitioning of optimizer state (1), gradients (2) and parameters (3)."""

    stage: Annotated[int, Field(ge=0, le=3)] = 2
    """ZeRO stage 0-3; a resumed attempt always uses the stage of its checkpoint."""
    offload_optimizer: OffloadDevice = OffloadDevice.NONE
    """Keep optimizer state in CPU memory (cpu); needs stage >= 1."""
    offload_params: OffloadDevice = OffloadDevice.NONE
    """Keep parameters in CPU memory (cpu); needs stage 3."""
    reduce_bucket_size: Annotated[int, Field(ge=1, le=10**11)] = 500_000_000
    """Elements reduced at a time; lower it to save memory, raise it for bandwidth."""
    allgather_bucket_size: Annotated[int, Field(ge=1, le=10**11)] = 500_000_000
    """Elements all-gathered at a time (stages 1-2)."""
    overlap_comm: bool = False
    """Overlap gradient reduction with the backward pass (more memory, faster on GPUs)."""
    contiguous_gradients: bool = True
    """Copy gradients into a contiguous buffer to avoid fragmentation."""


class Fp16Spec(CamelModel):
    """Dynamic loss scaling of fp16 training."""

    loss_scale: Annotated[float, Field(ge=0.0)] = 0.0
    """0 for dynamic loss scaling, or a fixed scale."""
    initial_scale_power: Annotated[int, Field(ge=0, le=64)] = 16
    """The dynamic scale starts at 2**initialScalePower."""
    loss_scale_window: Annotated[int, Field(ge=1)] = 1000
    """Steps without overflow before the scale doubles."""
    hysteresis: Annotated[int, Field(ge=1)] = 2
    """Overflows tolerated before the scale halves."""
    min_loss_scale: Annotated[float, Field(gt=0.0)] = 1.0
    """The scale never drops below this."""


class DeepSpeedSpec(CamelModel):
    """DeepSpeed engine settings; rendered into ds_config.json."""

    zero: ZeroSpec = Field(default_factory=ZeroSpec)
    """ZeRO stage, offload and bucket sizes."""
    precision: Precision = Precision.BF16
    """fp32, fp16 (GPU only, dynamic loss scaling) or bf16."""
    fp16: Fp16Spec = Field(default_factory=Fp16Spec)
    """Loss-scale settings, used when precision is fp16."""
    activation_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True, "type": "object"},
    )
    """Raw DeepSpeed JSON merged last, for settings the typed fields do not cover."""


# --- checkpoint and run policy ------------------------------------------------------------------
class CheckpointSpec(CamelModel):
    """Checkpoints: where, how often, how many, and whether a restart resumes from them."""

    path: Annotated[str, Field(min_length=1, max_length=4096, pattern=r"^/")] = "/checkpoints"
    """Directory inside the pod; must be under the mountPath of a persistentVolumeClaim or
    hostPath volume when resume is on."""
    every_steps: Annotated[int | None, Field(ge=1)] = 500
    """Save every this many optimizer steps (also on SIGTERM and at the end)."""
    keep: Annotated[int, Field(ge=1, le=1000)] = 2
    """Complete checkpoints to keep."""
    resume: bool = True
    """Resume a restarted attempt from the latest complete checkpoint."""


class GangPolicy(str, enum.Enum):
    AUTO = "Auto"
    NATIVE = "Native"
    TIMEOUT = "Timeout"
    VOLCANO = "Volcano"
    COSCHEDULING = "Coscheduling"


class RunPolicy(CamelModel):
    """Restarts, deadlines, clean-up and gang behaviour of the pod group."""

    max_restarts: Annotated[int, Field(ge=0, le=100)] = 3
    """Whole-group restarts after retryable failures before the job fails (mutable). A worker
    evicted, preempted or drained away (DisruptionTarget) restarts the group without spending
    one."""
    backoff_seconds: Annotated[int, Field(ge=0, le=3600)] = 10
    """Delay before the first restart; doubles after each restart, capped at 10 minutes."""
    active_deadline_seconds: Annotated[int | None, Field(ge=1)] = None
    """Fail the job if it runs longer than this, counted from its first start."""
    ttl_seconds_after_finished: Annotated[int | None, Field(ge=0)] = None
    """Delete the job and its children this long after it Succeeded or Failed."""
    suspend: bool = False
    """Set true to stop the pods (after a checkpoint); false resumes from it (mutable)."""
    gang_timeout_seconds: Annotated[int, Field(ge=1, le=86400)] = 300
    """All pods of an attempt must run within this, or the attempt is torn down and retried.
    An attempt the cluster had no room for is retried without spending a restart; under a gang
    policy that binds nothing before all fit, one with no pod placed simply keeps waiting."""
    progress_deadline_seconds: Annotated[int | None, Field(ge=10)] = None
    """Mark the job Stalled when the step does not advance for this long. The clock starts when
    every worker runs, so it also bounds start-up (model load, DeepSpeed's one-time op build on
    a new node): leave room for that."""
    restart_on_stall: bool = True
    """Restart the attempt (from its checkpoint) when it stalls."""
    node_loss_seconds: Annotated[int, Field(ge=0, le=3600)] = 30
    """How long the workers stay bound to a node that is unreachable or not ready before they
    are evicted and the group restarts elsewhere from its checkpoint, spending no restart (the
    tolerationSeconds of the node.kubernetes.io/unreachable and not-ready taints; Kubernetes'
    default is 300). The cluster declares a node lost after kube-controller-manager's
    --node-monitor-grace-period (40-50 s by default)."""
    gang_policy: GangPolicy = GangPolicy.AUTO
    """How the workers are placed all or nothing: Auto (Native where the cluster serves
    scheduling.k8s.io/v1alpha1 Workloads, else Timeout), Native (kube-scheduler binds no worker
    until all fit), Timeout (pods bind one by one; gangTimeoutSeconds tears down a partial
    attempt), Volcano or Coscheduling (a PodGroup for that scheduler)."""
    scheduler_name: ObjectName | None = None
    """schedulerName of the worker pods; Volcano defaults to volcano, Coscheduling needs the name
    of the scheduler-plugins scheduler."""
    queue_name: Annotated[str | None, Field(min_length=1, max_length=63)] = None
    """Kueue LocalQueue; the Job is created suspended with kueue.x-k8s.io/queue-name."""
    straggler_threshold: Annotated[float, Field(ge=1.1, le=100.0)] = 1.5
    """A rank is a straggler when its own work per step (acceltrain_step_own_seconds: loading
    its micro-batches and their forward passes, which wait for no other rank) is above this many
    times the median of the other ranks' for stragglerChecks checks in a row (one check every
    10 s while the job runs). The Straggler condition then names its pod, node and rank."""
    straggler_checks: Annotated[int, Field(ge=1, le=100)] = 3
    """Checks in a row a rank must be above stragglerThreshold before it is named a straggler."""


# --- the job ------------------------------------------------------------------------------------
class AccelTrainJobSpec(CamelModel):
    """A DeepSpeed training run on a group of worker pods."""

    image: Annotated[str | None, Field(min_length=1, max_length=1024)] = None
    """Trainer image; defaults to the operator's trainer image (Helm value trainer.image)."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    """Kubernetes image pull policy of the trainer container."""
    workers: Annotated[int, Field(ge=1, le=MAX_WORKERS)] = 1
    """Worker pods; each runs devicesPerWorker (or procsPerWorker) local ranks."""
    devices_per_worker: Annotated[int, Field(ge=0, le=16)] = 1
    """GPUs per worker pod (nvidia.com/gpu); 0 runs a CPU trainer with procsPerWorker ranks."""
    procs_per_worker: Annotated[int | None, Field(ge=1, le=256)] = None
    """Local ranks per CPU worker; with GPUs it is devicesPerWorker and may be omitted."""
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    """CPU and memory of each worker."""
    node_pool: NodePoolSpec = Field(default_factory=NodePoolSpec)
    """Node selector, tolerations and affinity of the workers."""
    priority_class_name: ObjectName | None = None
    """PriorityClass of the worker pods."""
    service_account_name: ObjectName | None = None
    """ServiceAccount of the worker pods (for example to read a model from object storage)."""
    env: Annotated[list[EnvVar], Field(max_length=128)] = Field(default_factory=list)
    """Extra env vars of the trainer container."""
    volumes: Annotated[list[VolumeSpec], Field(max_length=32)] = Field(default_factory=list)
    """Volumes mounted into every worker (model, data, checkpoints)."""
    model: ModelSpec
    """The model to train."""
    data: DataSpec
    """Training and evaluation data."""
    training: TrainingSpec
    """Steps, batch sizes, optimizer and schedule."""
    deepspeed: DeepSpeedSpec = Field(default_factory=DeepSpeedSpec)
    """ZeRO stage, offload, precision and raw overrides."""
    pruning: PruningSpec | None = None
    """Gradual magnitude pruning; omit to train dense."""
    export: ExportSpec = Field(default_factory=ExportSpec)
    """What is saved at the end (optionally an int8-dynamic copy)."""
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    """Where and how often to checkpoint."""
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    """Prometheus exporter port and the device peak used for MFU."""
    run_policy: RunPolicy = Field(default_factory=RunPolicy)
    """Restarts, deadlines, TTL, suspend and gang timeout."""

    @property
    def procs(self) -> int:
        """Local ranks in each worker pod."""
        if self.devices_per_worker > 0:
            return self.devices_per_worker
        return self.procs_per_worker or 1

    @property
    def world_size(self) -> int:
        return self.workers * self.procs

    @property
    def on_cpu(self) -> bool:
        return self.devices_per_worker == 0

    @model_validator(mode="after")
    def _cross_field_rules(self) -> AccelTrainJobSpec:
        problems = cross_field_problems(self)
        if problems:
            raise ValueError("\n".join(problems))
        return self


def cross_field_problems(spec: AccelTrainJobSpec) -> list[str]:
    """Every rule that spans the spec, as messages naming the field path and the fix.

    The rules of the nested models (volumes, env, resources, tolerations, node requirements)
    run when those models are validated; see :mod:`accel_operator.rules`."""
    problems = [
        rule.problem() for rule in rules.MODEL_RULES["AccelTrainJobSpec"] if rule.broken(spec)
    ]
    return problems + rules.override_problems(spec.deepspeed.overrides)


def job_name_problems(name: str) -> list[str]:
    """Why ``name`` cannot be an AccelTrainJob name (its children's names derive from it)."""
    problems = []
    if not re.match(JOB_NAME_PATTERN, name):
        problems.append(
            f"metadata.name: {name!r} must be a DNS-1035 label (lower-case letters, digits and "
            "'-', starting with a letter), because it names the job's headless Service"
        )
    if len(name) > MAX_JOB_NAME_LENGTH:
        problems.append(
            f"metadata.name: {name!r} is {len(name)} characters; at most {MAX_JOB_NAME_LENGTH} "
            "keep every pod hostname (<name>-a<attempt>-<index>) a valid DNS label"
        )
    return problems


# --- status -------------------------------------------------------------------------------------
class Phase(str, enum.Enum):
    PENDING = "Pending"
    STARTING = "Starting"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


class Condition(CamelModel):
    """A standard metav1.Condition."""

    type: Annotated[str, Field(min_length=1, max_length=316)]
    """Created, Scheduled, Running, Progressing, Restarting, Suspended, Succeeded, Failed or
    Reconciled (False while the operator retries requests the API server refused)."""
    status: Literal["True", "False", "Unknown"]
    """True, False or Unknown."""
    reason: Annotated[str, Field(min_length=1, max_length=1024)]
    """CamelCase reason for the last transition."""
    message: Annotated[str, Field(max_length=32768)] = ""
    """Human-readable details."""
    last_transition_time: str
    """When the status last changed (RFC 3339)."""
    observed_generation: Annotated[int | None, Field(ge=0)] = None
    """The spec generation the condition was computed from."""


class WorkerCounts(CamelModel):
    """Pods of the current attempt."""

    total: Annotated[int, Field(ge=0)] = 0
    """Pods the attempt wants."""
    ready: Annotated[int, Field(ge=0)] = 0
    """Pods running and ready."""
    active: Annotated[int, Field(ge=0)] = 0
    """Pods created and not finished."""
    succeeded: Annotated[int, Field(ge=0)] = 0
    """Pods that exited 0."""
    failed: Annotated[int, Field(ge=0)] = 0
    """Pods that failed."""
    summary: str = "0/0"
    """ready/total, for kubectl get."""


class Progress(CamelModel):
    """Live training progress scraped from rank 0's metrics."""

    step: Annotated[int, Field(ge=0)] = 0
    """Optimizer steps done."""
    total_steps: Annotated[int | None, Field(ge=0)] = None
    """Optimizer steps planned."""
    samples_per_second: Annotated[float, Field(ge=0)] = 0.0
    """Training samples per second of the whole job."""
    tokens_per_second: Annotated[float, Field(ge=0)] = 0.0
    """Real (non-padding) training tokens per second of the whole job."""
    tflops_per_device: Annotated[float, Field(ge=0)] = 0.0
    """Achieved TFLOP/s per device."""
    mfu: Annotated[float, Field(ge=0)] = 0.0
    """Model FLOPs utilisation (0-1)."""
    padding_efficiency: Annotated[float | None, Field(ge=0, le=1)] = None
    """Real tokens over the token positions the model processed, padding included (1: none
    padded); tokens/s, TFLOP/s and MFU count real tokens only."""
    loss: float | None = None
    """Latest training loss."""
    sparsity: Annotated[float | None, Field(ge=0, le=1)] = None
    """Measured weight sparsity."""
    eta: str | None = None
    """Estimated time to finish, like 1h02m."""
    last_step_time: str | None = None
    """When the step last advanced (RFC 3339)."""
    estimated_memory_bytes: Annotated[int | None, Field(ge=0)] = None
    """The trainer's start-up estimate of one rank's memory (model states and activations)."""
    memory_budget_bytes: Annotated[int | None, Field(ge=0)] = None
    """The memory one rank has: its GPU, or the container's limit over its local ranks."""


class CheckpointStatus(CamelModel):
    """The latest complete checkpoint."""

    step: Annotated[int, Field(ge=0)]
    """Optimizer step of the checkpoint."""
    path: str
    """Its directory inside the pods."""
    time: str
    """When it was observed (RFC 3339)."""


MAX_FAILED_WORKERS = 16
"""Failed workers kept in the status: enough for any group a person reads, bounded so that a
256-worker failure cannot outgrow the object."""
LAST_LINE_CHARACTERS = 300


class FailedWorker(CamelModel):
    """One worker pod of the last failed attempt that failed."""

    pod: str
    """The pod's name."""
    index: Annotated[int | None, Field(ge=0)] = None
    """Its completion index (the worker's node rank)."""
    node: str | None = None
    """The node it ran on."""
    exit_code: int | None = None
    """The trainer container's exit code (none when the pod failed before it ran)."""
    reason: str = ""
    """Why, in the kubelet's or the trainer's words (Error, OOMKilled, Evicted, ...)."""
    last_line: Annotated[str, Field(max_length=LAST_LINE_CHARACTERS)] = ""
    """The trainer's last log line (its termination message)."""


class RankSpread(CamelModel):
    """The last comparison of the ranks' own work per step (every rank's exporter read)."""

    rank: Annotated[int, Field(ge=0)]
    """The global rank with the most own work per step."""
    pod: str
    """Its worker pod."""
    node: str | None = None
    """The node that pod runs on."""
    own_seconds: Annotated[float, Field(ge=0.0)]
    """Its own work per step (acceltrain_step_own_seconds), in seconds."""
    others_median_seconds: Annotated[float, Field(ge=0.0)]
    """The median of the other ranks' own work per step."""
    checks_above: Annotated[int, Field(ge=0)] = 0
    """Checks in a row this rank was above runPolicy.stragglerThreshold (0: it is not now)."""
    time: str
    """When the ranks were compared (RFC 3339)."""


class AccelTrainJobStatus(CamelModel):
    """Observed state of the job, written by the operator."""

    model_config = ConfigDict(extra="ignore")

    phase: Phase = Phase.PENDING
    """Pending, Starting, Running, Restarting, Succeeded, Failed or Suspended."""
    conditions: Annotated[list[Condition], Field(max_length=16)] = Field(default_factory=list)
    """Standard conditions with reasons."""
    attempt: Annotated[int, Field(ge=0)] = 0
    """Current attempt (pod group) number, from 1."""
    restarts: Annotated[int, Field(ge=0)] = 0
    """Whole-group restarts so far (they spend runPolicy.maxRestarts)."""
    gang_retries: Annotated[int, Field(ge=0)] = 0
    """Attempts torn down because the cluster placed only part of the group in time; they
    spend no restart."""
    gang_policy: GangPolicy | None = None
    """The gang policy in force for the current attempt (Auto resolved for this cluster)."""
    workers: WorkerCounts = Field(default_factory=WorkerCounts)
    """Pods of the current attempt."""
    progress: Progress = Field(default_factory=Progress)
    """Live progress."""
    last_checkpoint: CheckpointStatus | None = None
    """Latest complete checkpoint."""
    next_attempt_time: str | None = None
    """While Restarting: when the next attempt is created (backoff; RFC 3339)."""
    rank_spread: RankSpread | None = None
    """The slowest rank at the last comparison of every rank's own work per step (Straggler)."""
    last_exit_code: int | None = None
    """Exit code of the worker whose failure ended the last failed attempt."""
    failed_workers: Annotated[list[FailedWorker], Field(max_length=MAX_FAILED_WORKERS)] = Field(
        default_factory=list
    )
    """Every failed worker of the last failed attempt, the one that explains the failure first
    (at most 16; the message counts the others)."""
    start_time: str | None = None
    """When the first attempt was created."""
    completion_time: str | None = None
    """When the job Succeeded or Failed."""
    message: Annotated[str, Field(max_length=32768)] = ""
    """Last notable event, for humans."""
    observed_generation: Annotated[int, Field(ge=0)] = 0
    """The spec generation last acted on."""


class AccelTrainJob(BaseModel):
    """An AccelTrainJob object as stored in the API server."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    api_version: str = Field(API_VERSION, alias="apiVersion")
    kind: str = KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: AccelTrainJobSpec
    status: AccelTrainJobStatus = Field(default_factory=AccelTrainJobStatus)


class SpecError(ValueError):
    """A spec that cannot work; the message lists every problem with its field path and fix."""


def parse_spec(spec: dict[str, Any], *, name: str | None = None) -> AccelTrainJobSpec:
    """Validate a spec as it arrives from the API server, or raise :class:`SpecError`."""
    problems = job_name_problems(name) if name is not None else []
    try:
        parsed = AccelTrainJobSpec.model_validate(spec)
    except ValidationError as error:
        problems.extend(_describe(error))
        raise SpecError("invalid AccelTrainJob: " + "; ".join(problems)) from None
    if problems:
        raise SpecError("invalid AccelTrainJob: " + "; ".join(problems))
    return parsed


def with_kueue_labels(spec: AccelTrainJobSpec, labels: dict[str, str]) -> AccelTrainJobSpec:
    """The spec with the queue of the standard ``kueue.x-k8s.io/queue-name`` label users put on
    the AccelTrainJob, as if runPolicy.queueName named it; raises :class:`SpecError` when the
    two name different queues."""
    label = labels.get(constants.LABEL_KUEUE_QUEUE)
    queue = spec.run_policy.queue_name
    if label is None or label == queue:
        return spec
    if queue is not None:
        raise SpecError(
            f"invalid AccelTrainJob: spec.runPolicy.queueName ({queue}) and the label "
            f"{constants.LABEL_KUEUE_QUEUE} ({label}) name different queues; keep one"
        )
    run_policy = spec.run_policy.model_copy(update={"queue_name": label})
    return spec.model_copy(update={"run_policy": run_policy})


def _describe(error: ValidationError) -> list[str]:
    """One message per problem, each starting with the spec path it is about."""
    messages = []
    for item in error.errors():
        path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in item["loc"])
        where = "spec" + path
        for message in item["msg"].removeprefix("Value error, ").split("\n"):
            if item["type"] != "value_error":
                messages.append(f"{where}: {message}")
            elif message.startswith((".", ":")):
                # A rule of the table, relative to the model it sits on.
                messages.append(f"{where}{message}")
            elif path and not message.startswith(path.lstrip(".")):
                messages.append(f"{where}: {message}")
            else:
                messages.append(message)
    return messages


# CEL rules that mirror the validators of the trainer contract's models (accel_contract.config),
# so the API server rejects bad specs on apply. Keyed by model; the CRD generator attaches them
# where that model appears, with the rules of accel_operator.rules.
CEL_RULES: dict[type[BaseModel], list[dict[str, str]]] = {
    ModelSpec: [
        {
            "rule": "has(self.pretrained) != has(self.config)",
            "message": "model: set exactly one of model.pretrained or model.config",
        }
    ],
    DataSpec: [
        {
            "rule": "has(self.path) != has(self.synthetic)",
            "message": "data: set exactly one of data.path or data.synthetic",
        },
        {
            "rule": "!(has(self.synthetic) && has(self.evalPath))",
            "message": "data.evalPath cannot be used with data.synthetic: remove evalPath",
        },
        {
            "rule": "!(has(self.synthetic) && has(self.testPath))",
            "message": "data.testPath cannot be used with data.synthetic: remove testPath",
        },
    ],
    ModelArchitectureSpec: [
        {
            "rule": "self.hiddenSize % self.numHeads == 0",
            "message": "model.config.hiddenSize must be divisible by model.config.numHeads",
        }
    ],
    TrainingSpec: [
        {
            "rule": "has(self.maxSteps) != has(self.epochs)",
            "message": "training: set exactly one of training.maxSteps or training.epochs",
        }
    ],
    PruningSpec: [
        {
            "rule": "self.startStep < self.endStep",
            "message": "pruning.startStep must be smaller than pruning.endStep",
        }
    ],
}

# Spec fields a running job may change; everything else is immutable (CEL self == oldSelf).
MUTABLE_SPEC_FIELDS = frozenset({"runPolicy"})
MUTABLE_RUN_POLICY_FIELDS = frozenset(
    {"suspend", "maxRestarts", "ttlSecondsAfterFinished", "activeDeadlineSeconds"}
)
