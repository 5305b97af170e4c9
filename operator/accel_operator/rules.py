"""The AccelTrainJob rule table: each rule once, as a Python check and as CEL for the API server.

Rules are keyed by the name of the API model they sit on (``self`` in their CEL is that model;
``AccelTrainJobSpec`` for rules spanning the spec). :mod:`accel_operator.crdgen` attaches the CEL
to the CRD so that ``kubectl apply`` refuses a spec that breaks one, with the rule's message on
the rule's field; :mod:`accel_operator.api` runs the Python checks when it parses a spec (defence
in depth: a CRD installed from an older chart, or a spec stored before a rule existed). The rules
of the run settings that the trainer checks too come from :mod:`accel_contract.rules`.

Also here: what Kubernetes will check later, in the form the API server can check now (image
references, quantities, label syntax, tolerations, reserved volumes, the ports of every local
rank, paths without ``..``), and the DeepSpeed keys ``deepspeed.overrides`` may not set because a
typed field owns them.

Pure: no I/O; the models are only read through their attributes.
"""

from __future__ import annotations

import dataclasses
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from accel_contract.config import DEFAULT_MASTER_PORT, RESERVED_ENV_NAMES, RESERVED_ENV_PREFIX
from accel_contract.rules import CEL_PROCS, RUN_RULES, Rule, RunFacts
from accel_operator import constants

# --- grammars Kubernetes applies to the children --------------------------------------------
# An OCI image reference: [registry[:port]/]path[:tag][@digest], no whitespace.
IMAGE_REFERENCE = (
    r"^(([a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)(\.([a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?))*"
    r"(:[0-9]+)?/)?[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*(/[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*)*"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*"
    r":[0-9a-fA-F]{32,})?$"
)
# A non-negative resource quantity: 2, 500m, 1.5, 16Gi, 1e3.
QUANTITY = r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?[0-9]+))?$"
# A label key (qualified name, optional DNS-subdomain prefix) and a label value.
LABEL_KEY = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
# A ".." path segment, anywhere.
PARENT_SEGMENT = r"(^|/)\.\.(/|$)"
# Resource names without a domain that Kubernetes knows; others need one (example.com/fpga).
STANDARD_RESOURCES = ("cpu", "memory", "ephemeral-storage")
_BINARY_SUFFIXES = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL_SUFFIXES = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}


def _cel_string(text: str) -> str:
    """A CEL string literal (raw, so regex backslashes stay as they are)."""
    return "r'" + text.replace("'", "") + "'"


def quantity(value: int | str) -> Decimal | None:
    """The value of a Kubernetes quantity, or None when it is not one."""
    text = str(value)
    if not re.match(QUANTITY, text):
        return None
    match = re.match(r"^([0-9.]+)(.*)$", text)
    assert match is not None
    number, suffix = match.groups()
    try:
        if suffix in _BINARY_SUFFIXES:
            return Decimal(number) * _BINARY_SUFFIXES[suffix]
        if suffix in _DECIMAL_SUFFIXES:
            return Decimal(number) * _DECIMAL_SUFFIXES[suffix]
        return Decimal(number + suffix)
    except InvalidOperation:
        return None


def has_parent_segment(path: str | None) -> bool:
    return path is not None and re.search(PARENT_SEGMENT, path) is not None


def _no_parent(cel_path: str, optional: bool = False) -> str:
    check = f"!{cel_path}.matches({_cel_string(PARENT_SEGMENT)})"
    if optional:
        owner, _, leaf = cel_path.rpartition(".")
        return f"!has({owner}.{leaf}) || {check}"
    return check


def _procs(spec: Any) -> int:
    if spec.devices_per_worker > 0:
        return int(spec.devices_per_worker)
    return int(spec.procs_per_worker or 1)


def _checkpoint_volume_missing(spec: Any) -> bool:
    return bool(spec.checkpoint.resume) and checkpoint_volume(spec) is None


def checkpoint_volume(spec: Any) -> Any | None:
    """The persistent volume whose mount holds ``checkpoint.path``, if any."""
    path = spec.checkpoint.path.rstrip("/") + "/"
    matches = [
        volume
        for volume in spec.volumes
        if volume.persistent and path.startswith(volume.mount_path.rstrip("/") + "/")
    ]
    return max(matches, key=lambda volume: len(volume.mount_path), default=None)


def _mount_paths(spec: Any) -> list[str]:
    return [volume.mount_path for volume in spec.volumes]


def _format_unknown(spec: Any) -> bool:
    return spec.data.path is not None and spec.data.resolved_format() is None


def run_facts(spec: Any) -> RunFacts:
    """What the shared run rules look at, read from the spec."""
    zero = spec.deepspeed.zero
    return RunFacts(
        on_cpu=spec.devices_per_worker == 0,
        precision=spec.deepspeed.precision.value,
        zero_stage=zero.stage,
        offload_optimizer=zero.offload_optimizer.value != "none",
        offload_params=zero.offload_params.value != "none",
        optimizer=spec.training.optimizer.type.value,
        max_length=spec.data.max_length,
        max_positions=spec.model.config.max_position_embeddings if spec.model.config else None,
    )


_CEL_MOUNT = "(v.mountPath.endsWith('/') ? v.mountPath : v.mountPath + '/')"
_DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".conll", ".txt", ".bio")

SPEC_RULES: tuple[Rule[Any], ...] = (
    Rule(
        name="image-reference",
        field=".image",
        message="not an image reference: use [registry[:port]/]name[:tag][@sha256:digest] "
        "without spaces, for example ghcr.io/acceltrain/trainer:0.1.0",
        broken=lambda spec: spec.image is not None and not re.match(IMAGE_REFERENCE, spec.image),
        cel=f"!has(self.image) || self.image.matches({_cel_string(IMAGE_REFERENCE)})",
    ),
    Rule(
        name="procs-match-devices",
        field=".procsPerWorker",
        message="must equal devicesPerWorker on GPU workers (one rank per GPU); omit "
        "procsPerWorker",
        broken=lambda spec: (
            spec.devices_per_worker > 0
            and spec.procs_per_worker not in (None, spec.devices_per_worker)
        ),
        cel="self.devicesPerWorker == 0 || !has(self.procsPerWorker) "
        "|| self.procsPerWorker == self.devicesPerWorker",
    ),
    Rule(
        name="metrics-ports-fit",
        field=".metrics.port",
        message="every local rank serves metrics on port + its local rank, so port + ranks per "
        "worker - 1 must be at most 65535; lower metrics.port",
        broken=lambda spec: spec.metrics.port + _procs(spec) - 1 > 65535,
        cel=f"self.metrics.port + {CEL_PROCS} - 1 <= 65535",
    ),
    Rule(
        name="metrics-ports-clear-rendezvous",
        field=".metrics.port",
        message=f"the metrics ports (port to port + ranks per worker - 1) include the rendezvous "
        f"port {DEFAULT_MASTER_PORT}; choose another metrics.port",
        broken=lambda spec: (
            spec.metrics.port <= DEFAULT_MASTER_PORT < spec.metrics.port + _procs(spec)
        ),
        cel=f"!(self.metrics.port <= {DEFAULT_MASTER_PORT} && "
        f"{DEFAULT_MASTER_PORT} < self.metrics.port + {CEL_PROCS})",
    ),
    Rule(
        name="gpus-from-devices",
        field=".resources",
        message=f"do not set {constants.GPU_RESOURCE}; it comes from devicesPerWorker",
        broken=lambda spec: (
            constants.GPU_RESOURCE in spec.resources.requests
            or constants.GPU_RESOURCE in spec.resources.limits
        ),
        cel=f"!('{constants.GPU_RESOURCE}' in self.resources.requests) && "
        f"!('{constants.GPU_RESOURCE}' in self.resources.limits)",
    ),
    Rule(
        name="pruning-ends-in-time",
        field=".pruning.endStep",
        message="is after training.maxSteps: the target sparsity would never be reached; "
        "lower pruning.endStep",
        broken=lambda spec: (
            spec.pruning is not None
            and spec.training.max_steps is not None
            and spec.pruning.end_step > spec.training.max_steps
        ),
        cel="!has(self.pruning) || !has(self.training.maxSteps) "
        "|| self.pruning.endStep <= self.training.maxSteps",
    ),
    Rule(
        name="data-format-known",
        field=".data.format",
        message="cannot infer the format of data.path from its extension "
        f"({', '.join(_DATA_SUFFIXES)}); set data.format to jsonl, csv or conll",
        broken=_format_unknown,
        cel="!has(self.data.path) || has(self.data.format) || "
        + " || ".join(f"self.data.path.lowerAscii().endsWith('{s}')" for s in _DATA_SUFFIXES),
    ),
    Rule(
        name="paths-without-parent",
        field=".data",
        message="data.path, data.evalPath and data.testPath must not contain a '..' segment; "
        "give the path inside the volume directly",
        broken=lambda spec: any(
            has_parent_segment(path)
            for path in (spec.data.path, spec.data.eval_path, spec.data.test_path)
        ),
        cel=f"({_no_parent('self.data.path', optional=True)}) && "
        f"({_no_parent('self.data.evalPath', optional=True)}) && "
        f"({_no_parent('self.data.testPath', optional=True)})",
    ),
    Rule(
        name="checkpoint-path-without-parent",
        field=".checkpoint.path",
        message="must not contain a '..' segment (it could leave the volume); give the "
        "directory inside the volume directly",
        broken=lambda spec: has_parent_segment(spec.checkpoint.path),
        cel=_no_parent("self.checkpoint.path"),
    ),
    Rule(
        name="model-path-without-parent",
        field=".model",
        message="model.pretrained and model.tokenizer must not contain a '..' segment",
        broken=lambda spec: (
            has_parent_segment(spec.model.pretrained) or has_parent_segment(spec.model.tokenizer)
        ),
        cel=f"({_no_parent('self.model.pretrained', optional=True)}) && "
        f"({_no_parent('self.model.tokenizer', optional=True)})",
    ),
    Rule(
        name="checkpoint-on-persistent-volume",
        field=".checkpoint.path",
        message="is not on a persistentVolumeClaim or hostPath volume, so a restarted attempt "
        "could not resume; add such a volume with a mountPath containing it, or set "
        "checkpoint.resume: false",
        broken=_checkpoint_volume_missing,
        cel="!self.checkpoint.resume || self.volumes.exists(v, "
        "(has(v.persistentVolumeClaim) || has(v.hostPath)) && "
        f"(self.checkpoint.path + '/').startsWith({_CEL_MOUNT}))",
    ),
    Rule(
        name="coscheduling-needs-scheduler",
        field=".runPolicy.schedulerName",
        message="gangPolicy Coscheduling needs the name of the scheduler-plugins scheduler that "
        "runs the Coscheduling plugin; set runPolicy.schedulerName",
        broken=lambda spec: (
            spec.run_policy.gang_policy.value == "Coscheduling"
            and not spec.run_policy.scheduler_name
        ),
        cel="self.runPolicy.gangPolicy != 'Coscheduling' || has(self.runPolicy.schedulerName)",
    ),
    Rule(
        name="volume-names-unique",
        field=".volumes",
        message="two volumes have the same name; give each its own",
        broken=lambda spec: len({volume.name for volume in spec.volumes}) != len(spec.volumes),
        cel="self.volumes.all(v, self.volumes.exists_one(w, w.name == v.name))",
    ),
    Rule(
        name="mount-paths-unique",
        field=".volumes",
        message="two volumes have the same mountPath; give each its own",
        broken=lambda spec: len(set(_mount_paths(spec))) != len(spec.volumes),
        cel="self.volumes.all(v, self.volumes.exists_one(w, w.mountPath == v.mountPath))",
    ),
)

_RESERVED_MOUNTS = (
    "^(" + "|".join(re.escape(path) for path in constants.RESERVED_MOUNT_PATHS) + ")/*$"
)
_ENV_NAMES = ", ".join(sorted(RESERVED_ENV_NAMES))

_VOLUME_SOURCES = ("persistent_volume_claim", "host_path", "empty_dir", "config_map")

VOLUME_RULES: tuple[Rule[Any], ...] = (
    Rule(
        name="volume-one-source",
        field="",
        message="set exactly one of persistentVolumeClaim, hostPath, emptyDir or configMap",
        broken=lambda volume: sum(getattr(volume, s) is not None for s in _VOLUME_SOURCES) != 1,
        cel="[has(self.persistentVolumeClaim), has(self.hostPath), has(self.emptyDir), "
        "has(self.configMap)].exists_one(x, x)",
    ),
    Rule(
        name="volume-name-not-reserved",
        field=".name",
        message=f"{', '.join(constants.RESERVED_VOLUME_NAMES)} are the names of volumes "
        "acceltrain adds to every worker; choose another name",
        broken=lambda volume: volume.name in constants.RESERVED_VOLUME_NAMES,
        cel="!(self.name in ["
        + ", ".join(f"'{name}'" for name in constants.RESERVED_VOLUME_NAMES)
        + "])",
    ),
    Rule(
        name="mount-path-not-reserved",
        field=".mountPath",
        message=f"{', '.join(constants.RESERVED_MOUNT_PATHS)} are where acceltrain mounts its "
        "config, scratch space and shared memory; choose another path",
        broken=lambda volume: re.match(_RESERVED_MOUNTS, volume.mount_path) is not None,
        cel=f"!self.mountPath.matches({_cel_string(_RESERVED_MOUNTS)})",
    ),
    Rule(
        name="mount-path-without-parent",
        field=".mountPath",
        message="must not contain a '..' segment; give the absolute path directly",
        broken=lambda volume: has_parent_segment(volume.mount_path),
        cel=_no_parent("self.mountPath"),
    ),
    Rule(
        name="host-path-without-parent",
        field=".hostPath.path",
        message="must not contain a '..' segment; give the absolute path directly",
        broken=lambda volume: (
            volume.host_path is not None and has_parent_segment(volume.host_path.path)
        ),
        cel=f"!has(self.hostPath) || {_no_parent('self.hostPath.path')}",
    ),
    Rule(
        name="empty-dir-size-is-quantity",
        field=".emptyDir.sizeLimit",
        message="is not a quantity such as 10Gi or 500Mi",
        broken=lambda volume: (
            volume.empty_dir is not None
            and volume.empty_dir.size_limit is not None
            and quantity(volume.empty_dir.size_limit) is None
        ),
        cel="!has(self.emptyDir) || !has(self.emptyDir.sizeLimit) || "
        f"string(self.emptyDir.sizeLimit).matches({_cel_string(QUANTITY)})",
    ),
)

ENV_RULES: tuple[Rule[Any], ...] = (
    Rule(
        name="env-name-not-reserved",
        field=".name",
        message=f"{_ENV_NAMES} and {RESERVED_ENV_PREFIX}* are set by acceltrain for the "
        "rendezvous; rename the variable",
        broken=lambda env: (
            env.name in RESERVED_ENV_NAMES or env.name.startswith(RESERVED_ENV_PREFIX)
        ),
        cel="!(self.name in ["
        + ", ".join(f"'{name}'" for name in sorted(RESERVED_ENV_NAMES))
        + f"]) && !self.name.startsWith('{RESERVED_ENV_PREFIX}')",
    ),
    Rule(
        name="env-one-source",
        field="",
        message="set exactly one of value or valueFrom",
        broken=lambda env: (env.value is None) == (env.value_from is None),
        cel="has(self.value) != has(self.valueFrom)",
    ),
)


def _requests_above_limits(resources: Any) -> bool:
    for name, request in resources.requests.items():
        limit = resources.limits.get(name)
        wanted, bound = quantity(request), quantity(limit) if limit is not None else None
        if wanted is not None and bound is not None and wanted > bound:
            return True
    return False


def _quantities(resources: Any) -> list[int | str]:
    return [*resources.requests.values(), *resources.limits.values()]


def _resource_names(resources: Any) -> list[str]:
    return [*resources.requests, *resources.limits]


def _bad_resource_name(name: str) -> bool:
    if name in STANDARD_RESOURCES or name.startswith("hugepages-"):
        return False
    return "/" not in name or re.match(LABEL_KEY, name) is None


def _cel_each_resource(check: str) -> str:
    return " && ".join(
        f"self.{part}.all(k, {check.replace('{part}', part)})" for part in ("requests", "limits")
    )


ENV_SOURCE_RULES: tuple[Rule[Any], ...] = (
    Rule(
        name="env-source-one-reference",
        field="",
        message="set exactly one of secretKeyRef or configMapKeyRef",
        broken=lambda source: (
            (source.secret_key_ref is None) == (source.config_map_key_ref is None)
        ),
        cel="has(self.secretKeyRef) != has(self.configMapKeyRef)",
    ),
)

RESOURCE_RULES: tuple[Rule[Any], ...] = (
    Rule(
        name="resource-quantities",
        field="",
        message="every value must be a quantity such as 8, 500m or 64Gi (no sign, no spaces)",
        broken=lambda resources: any(quantity(value) is None for value in _quantities(resources)),
        cel=_cel_each_resource(f"string(self.{{part}}[k]).matches({_cel_string(QUANTITY)})"),
    ),
    Rule(
        name="resource-names",
        field="",
        message=f"resource names are {', '.join(STANDARD_RESOURCES)}, hugepages-<size>, or a "
        "name with a domain such as example.com/fpga",
        broken=lambda resources: any(map(_bad_resource_name, _resource_names(resources))),
        cel=_cel_each_resource(
            "k in [" + ", ".join(f"'{name}'" for name in STANDARD_RESOURCES) + "] || "
            "k.startsWith('hugepages-') || "
            f"(k.contains('/') && k.matches({_cel_string(LABEL_KEY)}))"
        ),
    ),
    Rule(
        name="requests-within-limits",
        field=".requests",
        message="a request is above its limit; lower the request or raise the limit",
        broken=_requests_above_limits,
        cel="self.requests.all(k, !(k in self.limits) || "
        "!isQuantity(string(self.requests[k])) || !isQuantity(string(self.limits[k])) || "
        "quantity(string(self.requests[k])).compareTo(quantity(string(self.limits[k]))) <= 0)",
    ),
)

TOLERATION_RULES: tuple[Rule[Any], ...] = (
    Rule(
        name="toleration-key-syntax",
        field=".key",
        message="is not a label key (name or prefix/name of letters, digits, '-', '_', '.')",
        broken=lambda toleration: (
            bool(toleration.key) and re.match(LABEL_KEY, toleration.key) is None
        ),
        cel=f"!has(self.key) || self.key == '' || self.key.matches({_cel_string(LABEL_KEY)})",
    ),
    Rule(
        name="toleration-empty-key-needs-exists",
        field=".operator",
        message="a toleration without a key tolerates every taint and needs operator: Exists",
        broken=lambda toleration: not toleration.key and toleration.operator.value != "Exists",
        cel="(has(self.key) && self.key != '') || self.operator == 'Exists'",
    ),
    Rule(
        name="toleration-exists-without-value",
        field=".value",
        message="must be empty with operator: Exists; remove the value or use operator: Equal",
        broken=lambda toleration: toleration.operator.value == "Exists" and bool(toleration.value),
        cel="self.operator != 'Exists' || !has(self.value) || self.value == ''",
    ),
    Rule(
        name="toleration-value-syntax",
        field=".value",
        message="is not a label value (letters, digits, '-', '_', '.', at most 63)",
        broken=lambda toleration: (
            bool(toleration.value) and re.match(LABEL_VALUE, toleration.value) is None
        ),
        cel=f"!has(self.value) || self.value.matches({_cel_string(LABEL_VALUE)})",
    ),
    Rule(
        name="toleration-seconds-need-no-execute",
        field=".tolerationSeconds",
        message="applies only to effect: NoExecute; set the effect or remove tolerationSeconds",
        broken=lambda toleration: (
            toleration.toleration_seconds is not None
            and (toleration.effect is None or toleration.effect.value != "NoExecute")
        ),
        cel="!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
    ),
)


def _values_fit_operator(requirement: Any) -> bool:
    operator, values = requirement.operator.value, requirement.values
    if operator in ("In", "NotIn"):
        return len(values) > 0
    if operator in ("Exists", "DoesNotExist"):
        return len(values) == 0
    return len(values) == 1 and re.match(r"^-?[0-9]+$", values[0]) is not None


NODE_REQUIREMENT_RULES: tuple[Rule[Any], ...] = (
    Rule(
        name="node-requirement-key-syntax",
        field=".key",
        message="is not a label key (name or prefix/name of letters, digits, '-', '_', '.')",
        broken=lambda requirement: re.match(LABEL_KEY, requirement.key) is None,
        cel=f"self.key.matches({_cel_string(LABEL_KEY)})",
    ),
    Rule(
        name="node-requirement-values-fit-operator",
        field=".values",
        message="In and NotIn need at least one value, Exists and DoesNotExist none, Gt and Lt "
        "exactly one integer",
        broken=lambda requirement: not _values_fit_operator(requirement),
        cel="(self.operator in ['In', 'NotIn']) ? size(self.values) > 0 : "
        "((self.operator in ['Exists', 'DoesNotExist']) ? size(self.values) == 0 : "
        "(size(self.values) == 1 && self.values[0].matches('^-?[0-9]+$')))",
    ),
    Rule(
        name="node-requirement-value-syntax",
        field=".values",
        message="every value must be a label value (letters, digits, '-', '_', '.', at most 63)",
        broken=lambda requirement: any(
            re.match(LABEL_VALUE, value) is None for value in requirement.values
        ),
        cel=f"self.values.all(v, v.matches({_cel_string(LABEL_VALUE)}))",
    ),
)

NODE_POOL_RULES: tuple[Rule[Any], ...] = (
    Rule(
        name="node-selector-syntax",
        field=".nodeSelector",
        message="keys must be label keys and values label values (letters, digits, '-', '_', "
        "'.'; a key may have a DNS prefix/)",
        broken=lambda pool: any(
            re.match(LABEL_KEY, key) is None or re.match(LABEL_VALUE, value) is None
            for key, value in pool.node_selector.items()
        ),
        cel=f"self.nodeSelector.all(k, k.matches({_cel_string(LABEL_KEY)}) && "
        f"self.nodeSelector[k].matches({_cel_string(LABEL_VALUE)}))",
    ),
)


def _run_rule_on_spec(rule: Rule[RunFacts]) -> Rule[Any]:
    """A run rule of the trainer's table, checked on a spec."""
    return dataclasses.replace(rule, broken=lambda spec: rule.broken(run_facts(spec)))


# Model name -> its rules. ``AccelTrainJobSpec`` also gets the run rules the trainer checks.
MODEL_RULES: dict[str, tuple[Rule[Any], ...]] = {
    "AccelTrainJobSpec": (*map(_run_rule_on_spec, RUN_RULES), *SPEC_RULES),
    "VolumeSpec": VOLUME_RULES,
    "EnvVar": ENV_RULES,
    "EnvVarSource": ENV_SOURCE_RULES,
    "ResourcesSpec": RESOURCE_RULES,
    "Toleration": TOLERATION_RULES,
    "NodeSelectorRequirement": NODE_REQUIREMENT_RULES,
    "NodePoolSpec": NODE_POOL_RULES,
}


def model_problems(model: Any) -> list[str]:
    """What ``model`` breaks of its own rules, each as ``.field: message`` (``: message`` for a
    rule on the whole model), relative to where the model sits."""
    rules = MODEL_RULES.get(type(model).__name__, ())
    return [f"{rule.field}: {rule.message}" for rule in rules if rule.broken(model)]


def cel_validations(model_name: str) -> list[dict[str, str]]:
    """The ``x-kubernetes-validations`` of a model's rules."""
    on_spec = model_name == "AccelTrainJobSpec"
    return [
        rule.cel_validation(on_spec=on_spec) for rule in MODEL_RULES.get(model_name, ()) if rule.cel
    ]


# --- deepspeed.overrides --------------------------------------------------------------------
_SCALAR: dict[str, Any] = {"x-kubernetes-int-or-string": True}
_NUMBER: dict[str, Any] = {"type": "number"}
_BOOLEAN: dict[str, Any] = {"type": "boolean"}
_BLOCK: dict[str, Any] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


@dataclasses.dataclass(frozen=True)
class OwnedKey:
    """A DeepSpeed key that a typed field renders; ``deepspeed.overrides`` may not set it."""

    path: tuple[str, ...]
    """The key in ds_config.json (nested keys as a path)."""
    typed_field: str
    """The spec field to set instead."""
    schema: dict[str, Any]
    """How the CRD declares the key, so that CEL can see it (an undeclared key is invisible)."""

    @property
    def dotted(self) -> str:
        return ".".join(self.path)

    @property
    def message(self) -> str:
        return (
            f"spec.deepspeed.overrides.{self.dotted}: acceltrain sets this from "
            f"{self.typed_field}; set that field and remove the override"
        )


OWNED_OVERRIDE_KEYS: tuple[OwnedKey, ...] = (
    OwnedKey(
        ("train_batch_size",),
        "training.microBatchSize and training.gradientAccumulation (times the ranks)",
        _SCALAR,
    ),
    OwnedKey(("train_micro_batch_size_per_gpu",), "training.microBatchSize", _SCALAR),
    OwnedKey(("gradient_accumulation_steps",), "training.gradientAccumulation", _SCALAR),
    OwnedKey(("gradient_clipping",), "training.gradientClipping", _NUMBER),
    OwnedKey(("steps_per_print",), "training.logEvery", _SCALAR),
    OwnedKey(("optimizer",), "training.optimizer", _BLOCK),
    OwnedKey(("scheduler",), "training.scheduler", _BLOCK),
    OwnedKey(("fp16",), "deepspeed.precision and deepspeed.fp16", _BLOCK),
    OwnedKey(("bf16",), "deepspeed.precision", _BLOCK),
    OwnedKey(("bfloat16",), "deepspeed.precision", _BLOCK),
    OwnedKey(("zero_optimization", "stage"), "deepspeed.zero.stage", _SCALAR),
    OwnedKey(("zero_optimization", "offload_optimizer"), "deepspeed.zero.offloadOptimizer", _BLOCK),
    OwnedKey(("zero_optimization", "offload_param"), "deepspeed.zero.offloadParams", _BLOCK),
    OwnedKey(("zero_optimization", "cpu_offload"), "deepspeed.zero.offloadOptimizer", _BOOLEAN),
    OwnedKey(
        ("zero_optimization", "reduce_bucket_size"), "deepspeed.zero.reduceBucketSize", _SCALAR
    ),
    OwnedKey(
        ("zero_optimization", "allgather_bucket_size"),
        "deepspeed.zero.allgatherBucketSize",
        _SCALAR,
    ),
    OwnedKey(("zero_optimization", "overlap_comm"), "deepspeed.zero.overlapComm", _BOOLEAN),
    OwnedKey(
        ("zero_optimization", "contiguous_gradients"),
        "deepspeed.zero.contiguousGradients",
        _BOOLEAN,
    ),
)


def _contains(tree: Any, path: tuple[str, ...]) -> bool:
    node = tree
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def override_problems(overrides: dict[str, Any]) -> list[str]:
    """The owned keys ``overrides`` sets, each with the typed field to use instead."""
    return [key.message for key in OWNED_OVERRIDE_KEYS if _contains(overrides, key.path)]


def overrides_schema() -> dict[str, Any]:
    """The CRD schema of ``deepspeed.overrides``: free-form, with the owned keys declared and
    refused by CEL, each with a message naming the typed field."""
    properties: dict[str, Any] = {}
    rules = []
    for key in OWNED_OVERRIDE_KEYS:
        parent = properties
        for part in key.path[:-1]:
            block = {"description": "DeepSpeed's block; some keys are owned.", **_BLOCK}
            parent = parent.setdefault(part, {**block, "properties": {}})["properties"]
        parent[key.path[-1]] = {
            "description": f"Not allowed: acceltrain sets it from {key.typed_field}.",
            **key.schema,
        }
        guards = [f"has(self.{'.'.join(key.path[: depth + 1])})" for depth in range(len(key.path))]
        rules.append(
            {
                "rule": "!(" + " && ".join(guards) + ")",
                "message": key.message,
                "fieldPath": "." + key.dotted,
            }
        )
    return {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
        "properties": properties,
        "x-kubernetes-validations": rules,
    }
