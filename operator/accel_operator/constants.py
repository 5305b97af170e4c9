"""Names the operator shares with the cluster: labels, annotations, paths, condition types.

The env var names and exit codes shared with the trainer live in :mod:`accel_contract.config`
(the contract); they are re-exported here so operator code has one place to import from.
"""

from __future__ import annotations

from accel_contract.config import (
    DEFAULT_MASTER_PORT,
    ENV_ATTEMPT,
    ENV_CONFIG,
    ENV_JOB_NAME,
    ENV_MEMORY_LIMIT_BYTES,
    ENV_METRICS_PORT,
    ENV_NAMESPACE,
    ENV_NNODES,
    ENV_NODE_RANK,
    ENV_NPROC_PER_NODE,
    ENV_POD_IP,
    ENV_POD_NAME,
    PERMANENT_EXIT_CODES,
    ExitCode,
)

__all__ = [
    "DEFAULT_MASTER_PORT",
    "ENV_ATTEMPT",
    "ENV_CONFIG",
    "ENV_JOB_NAME",
    "ENV_MEMORY_LIMIT_BYTES",
    "ENV_METRICS_PORT",
    "ENV_NAMESPACE",
    "ENV_NNODES",
    "ENV_NODE_RANK",
    "ENV_NPROC_PER_NODE",
    "ENV_POD_IP",
    "ENV_POD_NAME",
    "PERMANENT_EXIT_CODES",
    "ExitCode",
]

DOMAIN = "acceltrain.io"
LABEL_JOB_NAME = f"{DOMAIN}/job-name"
LABEL_ATTEMPT = f"{DOMAIN}/attempt"
LABEL_ROLE = f"{DOMAIN}/role"
ROLE_WORKER = "worker"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "acceltrain-operator"
LABEL_KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
# Kueue labels the Workload it makes for a batch/v1 Job with the Job's uid.
LABEL_KUEUE_JOB_UID = "kueue.x-k8s.io/job-uid"
KUEUE_GROUP, KUEUE_VERSION = "kueue.x-k8s.io", "v1beta2"
KUEUE_API = f"/apis/{KUEUE_GROUP}/{KUEUE_VERSION}"
KUEUE_WORKLOADS_PATH = KUEUE_API + "/namespaces/{namespace}/workloads"
KUEUE_LABEL_PREFIX = "kueue.x-k8s.io/"
LABEL_JOB_COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"

# The operator's own settings, set by the Helm chart's Deployment (templates/deployment.yaml).
ENV_RECONCILE_INTERVAL = "ACCELTRAIN_RECONCILE_INTERVAL"
DEFAULT_RECONCILE_INTERVAL_SECONDS = 3.0
"""How often a running job is looked at (progress scrape, gang and stall checks) and the least
time between status writes that are not transitions: the CLI's ``--reconcile-interval``, the
environment's ``ACCELTRAIN_RECONCILE_INTERVAL`` and the chart's
``operator.reconcileIntervalSeconds`` all default to it."""
ENV_DEFAULT_TRAINER_IMAGE = "ACCELTRAIN_DEFAULT_TRAINER_IMAGE"
ENV_GPU_NODE_SELECTOR = "ACCELTRAIN_GPU_NODE_SELECTOR"
ENV_GPU_TOLERATIONS = "ACCELTRAIN_GPU_TOLERATIONS"

FIELD_MANAGER = "acceltrain-operator"
FINALIZER = f"{DOMAIN}/finalizer"

GPU_RESOURCE = "nvidia.com/gpu"
# The node lifecycle controller's taints of a node that stopped answering or is not ready.
NODE_LOSS_TAINTS = ("node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready")
# The taint manager's DisruptionTarget reason for a pod it evicts (a NoExecute taint).
DISRUPTION_BY_TAINT = "DeletionByTaintManager"
TRAINER_CONTAINER = "trainer"
CONFIG_VOLUME = "acceltrain-config"
CONFIG_MOUNT_PATH = "/etc/acceltrain"
TRAINER_CONFIG_FILE = "trainer.json"
DEEPSPEED_CONFIG_FILE = "ds_config.json"
METRICS_PORT_NAME = "metrics"
RENDEZVOUS_PORT_NAME = "rendezvous"
SHM_VOLUME = "dshm"
SHM_MOUNT_PATH = "/dev/shm"
# The read-only root filesystem's writable stand-in: HOME, TMPDIR and caches.
SCRATCH_VOLUME = "scratch"
SCRATCH_MOUNT_PATH = "/scratch"
# Volumes and mount paths every worker pod has; a user volume cannot take them.
RESERVED_VOLUME_NAMES = (CONFIG_VOLUME, SCRATCH_VOLUME, SHM_VOLUME)
RESERVED_MOUNT_PATHS = (CONFIG_MOUNT_PATH, SCRATCH_MOUNT_PATH, SHM_MOUNT_PATH)

# Condition types on AccelTrainJob status.
CONDITION_CREATED = "Created"
CONDITION_SCHEDULED = "Scheduled"
CONDITION_RUNNING = "Running"
CONDITION_PROGRESSING = "Progressing"
# True while one rank's own work per step stays far above the other ranks' (straggler.py).
CONDITION_STRAGGLER = "Straggler"
CONDITION_RESTARTING = "Restarting"
CONDITION_SUSPENDED = "Suspended"
CONDITION_SUCCEEDED = "Succeeded"
CONDITION_FAILED = "Failed"
# False while the API server keeps refusing the operator's requests for a reason retrying may
# cure (throttling, a timeout, a permission an administrator can grant); True again after.
CONDITION_RECONCILED = "Reconciled"
