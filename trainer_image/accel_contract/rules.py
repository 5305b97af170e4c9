"""The rule table of run settings, written once for the API server, the operator and the trainer.

A :class:`Rule` pairs a Python check with the same rule as a CEL expression over the
AccelTrainJob spec (``self`` is ``spec``). The operator attaches the CEL to the CRD, so that
``kubectl apply`` refuses a broken spec, and checks the Python predicate again on every
reconcile; the trainer checks the predicates over ``trainer.json`` and ``ds_config.json`` before
any rank starts, for runs started by hand with a config of their own. The checks read
:class:`RunFacts`, the few settings these rules span, so that both sides feed them from their own
representation. Rules that span Kubernetes-only fields (volumes, env, ports) live in the
operator's table, :mod:`accel_operator.rules`, which has the same shape.

Pure: imports nothing beyond the standard library.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Subject = TypeVar("Subject")

# The local ranks of one worker pod, as CEL over the spec (procsPerWorker is optional).
CEL_PROCS = (
    "(self.devicesPerWorker > 0 ? self.devicesPerWorker : "
    "(has(self.procsPerWorker) ? self.procsPerWorker : 1))"
)


@dataclasses.dataclass(frozen=True)
class Rule(Generic[Subject]):
    """One cross-field rule: where it points, what it says, and how it is checked."""

    name: str
    """Stable identifier (docs, tests)."""
    field: str
    """The spec field the message is about, relative to spec (".deepspeed.precision")."""
    message: str
    """What is wrong and the fix; names ``spec`` fields."""
    broken: Callable[[Subject], bool]
    """True when ``Subject`` breaks the rule."""
    cel: str | None
    """The rule over the spec as a CEL expression that holds when the spec is good; None when
    the API server cannot check it (the docs say why)."""

    @property
    def path(self) -> str:
        return "spec" + self.field

    def problem(self) -> str:
        return f"{self.path}: {self.message}"

    def cel_validation(self, *, on_spec: bool = True) -> dict[str, str]:
        """The ``x-kubernetes-validations`` entry of this rule. The API server prints the field
        path before the message; a rule on the spec names the field in the message too."""
        if self.cel is None:
            raise ValueError(f"rule {self.name} has no CEL form")
        message = self.problem() if on_spec else self.message
        validation = {"rule": self.cel, "message": message}
        if self.field:
            validation["fieldPath"] = self.field
        return validation


def problems(rules: Sequence[Rule[Subject]], subject: Subject) -> list[str]:
    """The messages of every rule ``subject`` breaks, each prefixed with its field path."""
    return [rule.problem() for rule in rules if rule.broken(subject)]


@dataclasses.dataclass(frozen=True)
class RunFacts:
    """The settings the run rules span, from a spec or from trainer.json and ds_config.json."""

    on_cpu: bool
    precision: str
    """fp32, fp16 or bf16."""
    zero_stage: int
    offload_optimizer: bool
    offload_params: bool
    optimizer: str
    """adamw, adam, sgd or lamb (lower case)."""
    max_length: int
    max_positions: int | None
    """model.config.maxPositionEmbeddings; None for a pretrained model."""


RUN_RULES: tuple[Rule[RunFacts], ...] = (
    Rule(
        name="fp16-needs-gpus",
        field=".deepspeed.precision",
        message="fp16 is not supported by DeepSpeed on CPU trainers (devicesPerWorker: 0); "
        "use bf16 or fp32, or request GPUs",
        broken=lambda facts: facts.on_cpu and facts.precision == "fp16",
        cel="!(self.deepspeed.precision == 'fp16' && self.devicesPerWorker == 0)",
    ),
    Rule(
        name="lamb-needs-gpus",
        field=".training.optimizer.type",
        message="lamb needs GPUs (DeepSpeed's LAMB is a CUDA kernel); use adamw, adam or sgd "
        "on CPU trainers (devicesPerWorker: 0)",
        broken=lambda facts: facts.on_cpu and facts.optimizer == "lamb",
        cel="!(self.training.optimizer.type == 'lamb' && self.devicesPerWorker == 0)",
    ),
    Rule(
        name="offload-optimizer-needs-zero",
        field=".deepspeed.zero.offloadOptimizer",
        message="cpu needs deepspeed.zero.stage >= 1; raise the stage or set "
        "offloadOptimizer: none",
        broken=lambda facts: facts.offload_optimizer and facts.zero_stage < 1,
        cel="self.deepspeed.zero.offloadOptimizer == 'none' || self.deepspeed.zero.stage >= 1",
    ),
    Rule(
        name="offload-params-needs-zero3",
        field=".deepspeed.zero.offloadParams",
        message="cpu needs deepspeed.zero.stage: 3; set the stage to 3 or offloadParams: none",
        broken=lambda facts: facts.offload_params and facts.zero_stage != 3,
        cel="self.deepspeed.zero.offloadParams == 'none' || self.deepspeed.zero.stage == 3",
    ),
    Rule(
        name="sequence-fits-positions",
        field=".data.maxLength",
        message="data.maxLength exceeds model.config.maxPositionEmbeddings; lower "
        "data.maxLength or raise maxPositionEmbeddings",
        broken=lambda facts: (
            facts.max_positions is not None and facts.max_length > facts.max_positions
        ),
        cel="!has(self.model.config) || "
        "self.data.maxLength <= self.model.config.maxPositionEmbeddings",
    ),
)
