"""The contract between operator and trainer: ``trainer.json``, the pod env, and the exit codes
(docs/design.md#the-operator-trainer-contract).

This module imports only pydantic. The operator builds a :class:`TrainerConfig` from an
``AccelTrainJob`` spec and writes it as ``trainer.json``; the trainer reads it back. The section
models (model, data, training, pruning, export, metrics) are also the matching sections of the
``AccelTrainJob`` spec, so their field descriptions, bounds and defaults are the ones users see in
``kubectl explain``. JSON uses camelCase on the wire; Python uses snake_case.
"""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

# --- Environment the operator sets in every trainer pod -----------------------------------------
ENV_CONFIG = "ACCELTRAIN_CONFIG"
ENV_JOB_NAME = "ACCELTRAIN_JOB_NAME"
ENV_NAMESPACE = "ACCELTRAIN_NAMESPACE"
ENV_ATTEMPT = "ACCELTRAIN_ATTEMPT"
ENV_NNODES = "ACCELTRAIN_NNODES"
ENV_NPROC_PER_NODE = "ACCELTRAIN_NPROC_PER_NODE"
ENV_NODE_RANK = "ACCELTRAIN_NODE_RANK"
ENV_POD_NAME = "ACCELTRAIN_POD_NAME"
ENV_POD_IP = "ACCELTRAIN_POD_IP"
ENV_METRICS_PORT = "ACCELTRAIN_METRICS_PORT"
# The container's memory limit in bytes, from the downward API (resourceFieldRef limits.memory;
# Kubernetes reports the node's allocatable memory when the container has no limit). A CPU
# trainer splits it over its local ranks as the budget of the memory preflight (memoryfit.py).
ENV_MEMORY_LIMIT_BYTES = "ACCELTRAIN_MEMORY_LIMIT_BYTES"
# Set by Kubernetes for Indexed Jobs; the node rank when ENV_NODE_RANK is absent.
ENV_JOB_COMPLETION_INDEX = "JOB_COMPLETION_INDEX"
ENV_MASTER_ADDR = "MASTER_ADDR"
ENV_MASTER_PORT = "MASTER_PORT"

# Names the trainer and torch's launcher own. A user env var with one of these names, or with the
# ACCELTRAIN_ prefix, would silently break the rendezvous, so the API rejects it.
RESERVED_ENV_NAMES = frozenset(
    {
        "MASTER_ADDR",
        "MASTER_PORT",
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "NODE_RANK",
        "GROUP_RANK",
        "JOB_COMPLETION_INDEX",
    }
)
RESERVED_ENV_PREFIX = "ACCELTRAIN_"

DEFAULT_CONFIG_PATH = "/etc/acceltrain/trainer.json"
DEFAULT_MASTER_PORT = 29500
DEFAULT_METRICS_PORT = 9400


class ExitCode(enum.IntEnum):
    """Trainer exit codes. The operator restarts the pod group after a retryable one only.

    Permanent codes (64-67) mean a retry cannot help: the config, the data or the memory budget is
    wrong. Everything else, including death by a signal (128+N), is retryable: lost peers, a
    failed rendezvous, preemption after the SIGTERM checkpoint.
    """

    SUCCESS = 0
    CONFIG_ERROR = 64
    DATA_ERROR = 65
    MISSING_INPUT = 66
    OUT_OF_MEMORY = 67
    COMMUNICATION_LOST = 75
    PREEMPTED = 76


PERMANENT_EXIT_CODES: tuple[int, ...] = (
    ExitCode.CONFIG_ERROR,
    ExitCode.DATA_ERROR,
    ExitCode.MISSING_INPUT,
    ExitCode.OUT_OF_MEMORY,
)


class CamelModel(BaseModel):
    """Base for contract models: camelCase JSON, snake_case Python, unknown keys rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
    )


# --- model --------------------------------------------------------------------------------------
class Task(str, enum.Enum):
    SEQUENCE_CLASSIFICATION = "sequence-classification"
    TOKEN_CLASSIFICATION = "token-classification"
    CAUSAL_LM = "causal-lm"


class Architecture(str, enum.Enum):
    BERT = "bert"
    ROBERTA = "roberta"
    GPT2 = "gpt2"
    LLAMA = "llama"


class ModelArchitectureSpec(CamelModel):
    """A randomly initialised model of a given architecture and size."""

    architecture: Architecture = Architecture.BERT
    """Transformers architecture to build (bert, roberta, gpt2, llama)."""
    hidden_size: Annotated[int, Field(ge=8, le=65536)] = 128
    """Width of the hidden states; must be divisible by numHeads."""
    num_layers: Annotated[int, Field(ge=1, le=256)] = 2
    """Number of transformer blocks."""
    num_heads: Annotated[int, Field(ge=1, le=256)] = 2
    """Attention heads per block."""
    intermediate_size: Annotated[int | None, Field(ge=8, le=262144)] = None
    """Width of the MLP; defaults to 4 x hiddenSize."""
    vocab_size: Annotated[int | None, Field(ge=32, le=1048576)] = None
    """Vocabulary size; defaults to the size of the tokenizer trained from the data."""
    max_position_embeddings: Annotated[int, Field(ge=16, le=1048576)] = 512
    """Longest sequence the position embeddings cover; must be >= data.maxLength."""

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> ModelArchitectureSpec:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.config.hiddenSize ({self.hidden_size}) must be divisible by "
                f"model.config.numHeads ({self.num_heads}): pick sizes such as 256 and 4"
            )
        return self


class ModelSpec(CamelModel):
    """The model to train: a pretrained checkpoint or an architecture built from a config."""

    task: Task = Task.SEQUENCE_CLASSIFICATION
    """What the model learns: sequence-classification, token-classification or causal-lm."""
    pretrained: Annotated[str | None, Field(min_length=1, max_length=1024)] = None
    """A Hugging Face hub name or a path in the pod (a mounted volume). Exclusive with config."""
    config: ModelArchitectureSpec | None = None
    """Build a randomly initialised model of this architecture. Exclusive with pretrained."""
    tokenizer: Annotated[str | None, Field(min_length=1, max_length=1024)] = None
    """Tokenizer name or path; defaults to pretrained, or one trained from the data for config."""
    num_labels: Annotated[int | None, Field(ge=2, le=100000)] = None
    """Number of classes for classification tasks; defaults to the labels found in the data."""

    @model_validator(mode="after")
    def _exactly_one_source(self) -> ModelSpec:
        if (self.pretrained is None) == (self.config is None):
            raise ValueError(
                "model: set exactly one of model.pretrained (a hub name or a path) or "
                "model.config (an architecture to initialise randomly)"
            )
        return self


# --- data ---------------------------------------------------------------------------------------
class DataFormat(str, enum.Enum):
    JSONL = "jsonl"
    CSV = "csv"
    CONLL = "conll"


class Padding(str, enum.Enum):
    LONGEST = "Longest"
    MAX_LENGTH = "MaxLength"


class BatchingSpec(CamelModel):
    """How examples become batches: what gets padded, and which examples share a batch."""

    padding: Padding = Padding.LONGEST
    """Longest: each batch is padded to its own longest example (on GPUs rounded up to a
    multiple of 8, what tensor cores want); MaxLength: every batch is padded to
    data.maxLength."""
    group_by_length: bool = False
    """Put examples of similar length in the same batch (less padding on data of mixed lengths):
    each epoch's shuffled order is cut into windows of 50 global micro-batches, each window is
    sorted by length and its batches shuffled again, so the order stays random between batches,
    deterministic and resumable."""


class SyntheticDataSpec(CamelModel):
    """Generated data for smoke runs: learnable, deterministic, no files needed."""

    num_samples: Annotated[int, Field(ge=16, le=100_000_000)] = 4096
    """Number of generated training examples."""
    num_labels: Annotated[int, Field(ge=2, le=1000)] = 2
    """Classes of the generated classification task."""
    vocab_words: Annotated[int, Field(ge=16, le=100000)] = 512
    """Distinct words the generator draws from."""
    seed: Annotated[int, Field(ge=0)] = 1234
    """Seed of the generator; the same seed gives the same data set on every rank."""


class DataSpec(CamelModel):
    """Training data: files on a volume, or a synthetic set."""

    path: Annotated[str | None, Field(min_length=1, max_length=1024)] = None
    """Training file inside the pod (JSONL, CSV or CoNLL). Exclusive with synthetic."""
    format: DataFormat | None = None
    """File format; inferred from the extension of path (.jsonl, .csv, .conll/.txt) when unset."""
    eval_path: Annotated[str | None, Field(min_length=1, max_length=1024)] = None
    """Evaluation file; when unset, evalFraction of the training file is held out."""
    test_path: Annotated[str | None, Field(min_length=1, max_length=1024)] = None
    """Test file, same format: scored once, after training, into eval/test.json (never used to
    pick anything during the run). Labels must be those of the training file."""
    eval_fraction: Annotated[float, Field(ge=0.0, le=0.5)] = 0.1
    """Share of the training data held out for evaluation when evalPath is unset."""
    text_field: Annotated[str, Field(min_length=1, max_length=253)] = "text"
    """JSONL/CSV field holding the text."""
    label_field: Annotated[str, Field(min_length=1, max_length=253)] = "label"
    """JSONL/CSV field holding the label (a class name or an integer id)."""
    max_length: Annotated[int, Field(ge=8, le=131072)] = 128
    """Tokens per example after truncation; the padded length too with batching.padding
    MaxLength."""
    batching: BatchingSpec = Field(default_factory=BatchingSpec)
    """Padding and length grouping of the batches."""
    synthetic: SyntheticDataSpec | None = None
    """Generate data instead of reading files. Exclusive with path."""

    @model_validator(mode="after")
    def _exactly_one_source(self) -> DataSpec:
        if (self.path is None) == (self.synthetic is None):
            raise ValueError(
                "data: set exactly one of data.path (a file on a volume) or data.synthetic"
            )
        if self.synthetic is not None and self.eval_path is not None:
            raise ValueError("data.evalPath cannot be used with data.synthetic: remove evalPath")
        if self.synthetic is not None and self.test_path is not None:
            raise ValueError("data.testPath cannot be used with data.synthetic: remove testPath")
        return self

    def resolved_format(self) -> DataFormat | None:
        """The format of ``path``: the explicit one, or the one its extension names."""
        if self.format is not None or self.path is None:
            return self.format
        suffix = Path(self.path).suffix.lower()
        by_suffix = {
            ".jsonl": DataFormat.JSONL,
            ".json": DataFormat.JSONL,
            ".csv": DataFormat.CSV,
            ".conll": DataFormat.CONLL,
            ".txt": DataFormat.CONLL,
            ".bio": DataFormat.CONLL,
        }
        return by_suffix.get(suffix)


# --- training -----------------------------------------------------------------------------------
class OptimizerType(str, enum.Enum):
    ADAMW = "adamw"
    ADAM = "adam"
    SGD = "sgd"
    LAMB = "lamb"


class OptimizerSpec(CamelModel):
    """The optimizer DeepSpeed builds."""

    type: OptimizerType = OptimizerType.ADAMW
    """adamw, adam, sgd (with momentum) or lamb."""
    lr: Annotated[float, Field(gt=0.0, le=10.0)] = 5e-5
    """Peak learning rate, reached at the end of the warmup."""
    weight_decay: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    """Decoupled weight decay (adamw, lamb) or L2 penalty (adam, sgd)."""
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    """Momentum of sgd; ignored by the other optimizers."""
    betas: tuple[
        Annotated[float, Field(ge=0.0, lt=1.0)], Annotated[float, Field(ge=0.0, lt=1.0)]
    ] = (0.9, 0.999)
    """Adam-family beta1 and beta2."""
    eps: Annotated[float, Field(gt=0.0, le=1.0)] = 1e-8
    """Adam-family epsilon."""


class SchedulerType(str, enum.Enum):
    CONSTANT = "constant"
    LINEAR = "linear"
    COSINE = "cosine"


class SchedulerSpec(CamelModel):
    """Learning-rate schedule: linear warmup, then constant, linear or cosine decay."""

    type: SchedulerType = SchedulerType.LINEAR
    """Decay after the warmup: constant, linear (to 0) or cosine (to minLrRatio x lr)."""
    warmup_steps: Annotated[int, Field(ge=0)] = 0
    """Optimizer steps of linear warmup from 0 to lr."""
    min_lr_ratio: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    """Floor of the cosine decay as a fraction of lr."""


class TrainingSpec(CamelModel):
    """How long and how to train."""

    max_steps: Annotated[int | None, Field(ge=1, le=100_000_000)] = None
    """Optimizer steps to run. Exclusive with epochs; one of them is required."""
    epochs: Annotated[int | None, Field(ge=1, le=100000)] = None
    """Passes over the training data. Exclusive with maxSteps."""
    micro_batch_size: Annotated[int, Field(ge=1, le=65536)] = 8
    """Examples per rank per forward pass (DeepSpeed's train_micro_batch_size_per_gpu)."""
    gradient_accumulation: Annotated[int, Field(ge=1, le=65536)] = 1
    """Micro-batches accumulated per optimizer step."""
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    """Optimizer and its hyper-parameters."""
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    """Learning-rate schedule."""
    gradient_clipping: Annotated[float | None, Field(gt=0.0)] = 1.0
    """Clip the global gradient norm to this value; null disables clipping."""
    seed: Annotated[int, Field(ge=0)] = 42
    """Seed for initialisation, shuffling and dropout."""
    eval_every: Annotated[int | None, Field(ge=1)] = None
    """Evaluate every this many optimizer steps (and always at the end)."""
    log_every: Annotated[int, Field(ge=1)] = 10
    """Log a progress line every this many optimizer steps."""

    @model_validator(mode="after")
    def _one_length(self) -> TrainingSpec:
        if (self.max_steps is None) == (self.epochs is None):
            raise ValueError("training: set exactly one of training.maxSteps or training.epochs")
        return self


# --- pruning and export -------------------------------------------------------------------------
class PruningScope(str, enum.Enum):
    GLOBAL = "global"
    PER_LAYER = "per-layer"


# The pooler belongs to the classification head: in checkpoints trained without it (sentence
# encoders such as all-MiniLM) its weights are tiny, so a global magnitude ranking would remove
# all of it and every input would reach the classifier as the same vector.
DEFAULT_PRUNING_EXCLUDE = (
    "*embeddings*",
    "*pooler*",
    "*classifier*",
    "*LayerNorm*",
    "*layernorm*",
    "*ln_*",
)


class PruningSpec(CamelModel):
    """Gradual magnitude pruning on the cubic schedule of Zhu & Gupta (2017)."""

    method: Literal["magnitude"] = "magnitude"
    """Pruning criterion; magnitude removes the weights of smallest absolute value."""
    scope: PruningScope = PruningScope.GLOBAL
    """global ranks all included weights together; per-layer prunes each matrix to the target."""
    structure: Literal["unstructured"] = "unstructured"
    """Sparsity pattern; unstructured zeroes individual weights."""
    target_sparsity: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
    """Fraction of the included weights that are zero at endStep, for example 0.5."""
    start_step: Annotated[int, Field(ge=0)] = 0
    """Optimizer step of the first pruning round."""
    end_step: Annotated[int, Field(ge=1)] = 1000
    """Optimizer step at which targetSparsity is reached; masks are kept after it."""
    frequency: Annotated[int, Field(ge=1)] = 10
    """Optimizer steps between pruning rounds."""
    include: list[Annotated[str, Field(min_length=1, max_length=253)]] = Field(
        default_factory=lambda: ["*"]
    )
    """Glob patterns of parameter names to prune (only 2-D weight matrices are considered)."""
    exclude: list[Annotated[str, Field(min_length=1, max_length=253)]] = Field(
        default_factory=lambda: list(DEFAULT_PRUNING_EXCLUDE)
    )
    """Glob patterns of parameter names never pruned; embeddings, pooler, classifier, norms."""

    @model_validator(mode="after")
    def _schedule_consistent(self) -> PruningSpec:
        if self.start_step >= self.end_step:
            raise ValueError(
                f"pruning.startStep ({self.start_step}) must be smaller than pruning.endStep "
                f"({self.end_step}): the ramp needs at least one step"
            )
        return self


class QuantizeMode(str, enum.Enum):
    NONE = "none"
    INT8_DYNAMIC = "int8-dynamic"


class ExportSpec(CamelModel):
    """What is saved when training succeeds."""

    quantize: QuantizeMode = QuantizeMode.NONE
    """Also save a dynamically int8-quantized copy of the final model (int8-dynamic)."""


class MetricsSpec(CamelModel):
    """Where the trainer serves Prometheus metrics."""

    port: Annotated[int, Field(ge=1024, le=65535)] = DEFAULT_METRICS_PORT
    """Port of each rank-0-of-pod exporter; each further local rank serves on port + local rank."""
    peak_tflops: Annotated[float | None, Field(gt=0.0)] = None
    """Peak TFLOP/s of one device for MFU; defaults to the table entry for the detected device."""


# --- the trainer's own view ---------------------------------------------------------------------
class JobIdentity(CamelModel):
    """Which AccelTrainJob and attempt this trainer belongs to (metric labels, log lines)."""

    name: str = "local"
    namespace: str = "default"
    attempt: Annotated[int, Field(ge=0)] = 0


class CheckpointConfig(CamelModel):
    """Checkpointing as the trainer sees it: a directory inside the pod."""

    dir: Annotated[str, Field(min_length=1)] = "/checkpoints"
    """Directory that survives restarts of the pod group."""
    every_steps: Annotated[int | None, Field(ge=1)] = 500
    """Save every this many optimizer steps (also on SIGTERM and at the end); null: only those."""
    keep: Annotated[int, Field(ge=1, le=1000)] = 2
    """Complete checkpoints kept; older ones are deleted after a newer one is complete."""
    resume: bool = True
    """Resume from the latest complete checkpoint on start."""


class TrainerConfig(CamelModel):
    """Everything one trainer process needs besides the rendezvous env."""

    job: JobIdentity = Field(default_factory=JobIdentity)
    model: ModelSpec
    data: DataSpec
    training: TrainingSpec
    pruning: PruningSpec | None = None
    export: ExportSpec = Field(default_factory=ExportSpec)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    deepspeed_config: str = "ds_config.json"
    """DeepSpeed JSON; a relative path is resolved next to trainer.json."""
    device: Literal["cpu", "cuda"] = "cpu"
    """cuda when the pod has GPUs; cpu runs DeepSpeed's CPU accelerator over gloo."""
    procs_per_worker: Annotated[int, Field(ge=1, le=256)] = 1
    """Local ranks in each pod (GPUs per pod, or CPU processes)."""
    activation_checkpointing: bool = False
    """Recompute activations in the backward pass (the model's gradient checkpointing)."""
    output_dir: str | None = None
    """Where eval reports and the exported model go; defaults to <checkpoint.dir>/output."""

    @classmethod
    def load(cls, path: str | Path) -> TrainerConfig:
        """Read ``trainer.json``; resolves ``deepspeedConfig`` relative to the file."""
        file = Path(path)
        config = cls.model_validate_json(file.read_text())
        ds_path = Path(config.deepspeed_config)
        if not ds_path.is_absolute():
            config = config.model_copy(update={"deepspeed_config": str(file.parent / ds_path)})
        return config

    def to_json(self) -> str:
        """camelCase JSON, as the operator writes it into the ConfigMap."""
        return json.dumps(self.model_dump(mode="json", by_alias=True), indent=2, sort_keys=True)

    def resolved_output_dir(self) -> str:
        return self.output_dir or str(Path(self.checkpoint.dir) / "output")
