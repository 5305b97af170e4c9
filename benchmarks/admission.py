"""Admission property check: thousands of hostile variants of the shipped examples, each sent to
the real API server and, where it is accepted, through the operator's own checks and a dry run
of every child it would create.

The invariant, for every variant: refused at ``kubectl apply`` with the field named (every cause
the API server gives has a ``spec.``/``metadata.`` field), or accepted and then either every
rendered child passes a server-side dry run, or the operator fails the job with
``Failed/InvalidSpec`` (a rule only the operator checks, or a child the API server refuses).
A sample of the accepted variants of each kind is then created for real with the operator
running: the ones that must fail reach ``Failed/InvalidSpec`` within 5 s, every one shows a
phase, and the operator's log holds no traceback.

The variants come from hypothesis (seeded, so every run tries the same ones): one to three
mutations of an example's spec, each setting a field (existing or one users often add) to a value
from a pool of hostile ones, deleting one, or adding a structured entry (a toleration, a node
requirement, a volume, an env var, a DeepSpeed override).

    .venv/bin/python benchmarks/admission.py                    # own cluster, ~3 min
    .venv/bin/python benchmarks/admission.py --kubeconfig .cluster/kubeconfig --cases 500

Targets (issue 13): no violation; apply-to-Failed p99 <= 2 s for what only the operator refuses.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from operator_launch import percentile, start_session

from accel_operator import api, refusals, render, rules
from accel_operator.kube import ApiError, KubeClient

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO_ROOT / "manifests" / "examples").glob("*.yaml"))
DEFAULTS = render.ClusterDefaults(trainer_image="ghcr.io/acceltrain/trainer:0.1.0")
FAIL_WITHIN_SECONDS = 5.0
TARGET_P99_SECONDS = 2.0

Spec = dict[str, Any]
Path_ = tuple[str | int, ...]


def example_specs() -> list[Spec]:
    specs = []
    for path in EXAMPLES:
        for document in yaml.safe_load_all(path.read_text()):
            if document and document.get("kind") == api.KIND:
                specs.append(document["spec"])
    return specs


# --- the variants ------------------------------------------------------------------------------
HOSTILE_SCALARS: list[Any] = [
    "",
    " ",
    "  x",
    "x ",
    "..",
    "/a/../b",
    "/data/../../etc",
    "a;rm -rf /",
    "Not_A_Name",
    "UPPER",
    "ghcr.io/acme/x:1",
    "ghcr.io/Acme/x",
    "-1",
    "0",
    "1e3",
    "500m",
    "64Gi",
    "1.5Gi",
    "two",
    "a b",
    "a/b",
    "example.com/fpga",
    "x" * 70,
    "ü",
    "/checkpoints",
    "/scratch",
    "/etc/acceltrain",
    "/dev/shm",
    "/data/train.parquet",
    0,
    -1,
    1,
    2,
    7,
    1023,
    1024,
    9400,
    29499,
    29500,
    65533,
    65535,
    65536,
    2**31,
    1.5,
    True,
    False,
    None,
    [],
    {},
    ["a"],
    {"a": 1},
]
# Fields users often set that an example may not have.
EXTRA_PATHS: list[Path_] = [
    ("image",),
    ("priorityClassName",),
    ("serviceAccountName",),
    ("procsPerWorker",),
    ("resources", "requests", "cpu"),
    ("resources", "requests", "memory"),
    ("resources", "limits", "cpu"),
    ("resources", "limits", "memory"),
    ("resources", "limits", "nvidia.com/gpu"),
    ("resources", "limits", "fpga"),
    ("nodePool", "nodeSelector", "acceltrain.io/pool"),
    ("nodePool", "nodeSelector", "bad key"),
    ("metrics", "port"),
    ("checkpoint", "path"),
    ("data", "path"),
    ("data", "evalPath"),
    ("model", "pretrained"),
    ("model", "tokenizer"),
    ("runPolicy", "queueName"),
]
NAMES = st.sampled_from(["ckpt", "data", "scratch", "dshm", "acceltrain-config", "Bad_Name", "x"])
PATHS = st.sampled_from(["/checkpoints", "/data", "/scratch", "/dev/shm", "/a/..", "rel", "/m/"])
TEXT = st.sampled_from(HOSTILE_SCALARS)


def _volume() -> st.SearchStrategy[dict[str, Any]]:
    source = st.one_of(
        st.fixed_dictionaries(
            {"persistentVolumeClaim": st.fixed_dictionaries({"claimName": TEXT})}
        ),
        st.fixed_dictionaries({"hostPath": st.fixed_dictionaries({"path": PATHS})}),
        st.fixed_dictionaries({"emptyDir": st.fixed_dictionaries({"sizeLimit": TEXT})}),
        st.fixed_dictionaries({"configMap": st.fixed_dictionaries({"name": TEXT})}),
    )
    return st.builds(
        lambda name, mount, src: {"name": name, "mountPath": mount, **src}, NAMES, PATHS, source
    )


def _toleration() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {},
        optional={
            "key": st.sampled_from(["", "gpu", "a b", "example.com/x", "x" * 70]),
            "operator": st.sampled_from(["Equal", "Exists", "In"]),
            "value": st.sampled_from(["", "v", "a/b", "x" * 70]),
            "effect": st.sampled_from(["NoSchedule", "NoExecute", "Sometimes"]),
            "tolerationSeconds": st.sampled_from([0, 30, -5]),
        },
    )


def _requirement() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "key": st.sampled_from(["zone", "a b", "example.com/gen", ""]),
            "operator": st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]),
        },
        optional={"values": st.lists(st.sampled_from(["a", "1", "x y", "", "-3"]), max_size=3)},
    )


def _affinity(requirement: dict[str, Any]) -> dict[str, Any]:
    terms = {"nodeSelectorTerms": [{"matchExpressions": [requirement]}]}
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": terms}}


def _env() -> st.SearchStrategy[dict[str, Any]]:
    key_ref = st.fixed_dictionaries({"name": st.sampled_from(["s", "Bad_Name"]), "key": TEXT})
    return st.fixed_dictionaries(
        {"name": st.sampled_from(["HF_TOKEN", "RANK", "ACCELTRAIN_X", "MASTER_PORT", "9x"])},
        optional={"value": TEXT, "valueFrom": st.fixed_dictionaries({"secretKeyRef": key_ref})},
    )


def _override() -> st.SearchStrategy[tuple[Path_, Any]]:
    owned = [key.path for key in rules.OWNED_OVERRIDE_KEYS]
    allowed: list[Path_] = [
        ("zero_optimization", "round_robin_gradients"),
        ("flops_profiler",),
        ("communication_data_type",),
    ]
    return st.tuples(st.sampled_from([*owned, *allowed]), TEXT)


@dataclass(frozen=True)
class Mutation:
    kind: str
    path: Path_
    value: Any = None

    def apply(self, spec: Spec) -> None:
        parent: Any = spec
        for part in self.path[:-1]:
            if isinstance(parent, dict):
                child = parent.get(part)
                if not isinstance(child, (dict, list)):
                    child = {}
                    parent[part] = child
                parent = child
            elif isinstance(parent, list) and isinstance(part, int) and part < len(parent):
                parent = parent[part]
            else:
                return
        leaf = self.path[-1]
        if self.kind == "delete":
            if isinstance(parent, dict):
                parent.pop(leaf, None)
            return
        if isinstance(parent, dict) or (
            isinstance(parent, list) and isinstance(leaf, int) and leaf < len(parent)
        ):
            parent[leaf] = copy.deepcopy(self.value)


def _leaf_paths(node: Any, prefix: Path_ = ()) -> list[Path_]:
    """Every path into ``node``: its dict keys and list items, at any depth."""
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, child in node.items():
            found += _leaf_paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found += _leaf_paths(child, (*prefix, index))
    return found


def mutations(base: Spec) -> st.SearchStrategy[Mutation]:
    paths = st.sampled_from(_leaf_paths(base) + EXTRA_PATHS)
    return st.one_of(
        st.builds(lambda p, v: Mutation("set", p, v), paths, TEXT),
        st.builds(lambda p: Mutation("delete", p), paths),
        st.builds(lambda v: Mutation("set", ("volumes",), [v]), _volume()),
        st.builds(lambda t: Mutation("set", ("nodePool", "tolerations"), [t]), _toleration()),
        st.builds(
            lambda r: Mutation("set", ("nodePool", "affinity"), _affinity(r)), _requirement()
        ),
        st.builds(lambda e: Mutation("set", ("env",), [e]), _env()),
        st.builds(lambda o: Mutation("set", ("deepspeed", "overrides", *o[0]), o[1]), _override()),
    )


def variants() -> st.SearchStrategy[Spec]:
    def mutated(base: Spec) -> st.SearchStrategy[Spec]:
        def build(changes: list[Mutation]) -> Spec:
            spec = copy.deepcopy(base)
            for change in changes:
                change.apply(spec)
            return spec

        return st.lists(mutations(base), min_size=1, max_size=3).map(build)

    return st.sampled_from(example_specs()).flatmap(mutated)


# --- one variant against the API server and the operator's checks -----------------------------
REFUSED = "refused at apply"
CLEAN = "accepted, children valid"
OPERATOR_RULE = "accepted, operator refuses the spec"
CHILD_REFUSED = "accepted, a child refused in the dry run"
VIOLATION = "violation"


@dataclass
class Tally:
    counts: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    samples: dict[str, list[Spec]] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, kind: str, spec: Spec, detail: str = "") -> None:
        self.counts[kind] += 1
        if kind == VIOLATION:
            self.violations.append(f"{detail}\n  spec: {json.dumps(spec)[:1500]}")
        self.samples.setdefault(kind, [])
        if len(self.samples[kind]) < 40:
            self.samples[kind].append(spec)


def _post(kube: KubeClient, namespace: str, name: str, spec: Spec, *, dry_run: bool) -> Any:
    """Create the AccelTrainJob (or only dry-run it); returns the object as stored."""
    body = {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }
    return kube.request(
        "POST",
        f"/apis/{api.API_VERSION}/namespaces/{namespace}/{api.PLURAL}",
        verb="create",
        resource=api.PLURAL,
        query={"dryRun": "All"} if dry_run else None,
        body=body,
    )


def _names_a_field(error: ApiError) -> bool:
    if error.fields:
        return all(field.startswith(("spec", "metadata", "<nil>")) for field in error.fields)
    return "spec." in error.message or '"spec' in error.message


def classify(kube: KubeClient, namespace: str, spec: Spec, tally: Tally) -> None:
    """Send one variant through admission, the operator's parse and the children's dry run."""
    try:
        stored = _post(kube, namespace, "variant", spec, dry_run=True)
    except ApiError as error:
        if error.status in (400, 422) and _names_a_field(error):
            tally.add(REFUSED, spec)
        else:
            tally.add(VIOLATION, spec, f"refused without a field: {error}")
        return
    # The operator reads the object as stored: defaulted, with nulls pruned.
    try:
        parsed = api.parse_spec(stored["spec"], name="variant")
    except api.SpecError as error:
        kind = OPERATOR_RULE if "spec." in str(error) else VIOLATION
        tally.add(kind, spec, f"operator refusal without a field: {error}")
        return
    try:
        uid = stored["metadata"].get("uid") or "00000000-0000-0000-0000-000000000000"
        ref = render.JobRef(name="variant", namespace=namespace, uid=uid)
        children = render.render_attempt(parsed, ref, 1, DEFAULTS)
    except Exception as error:  # a crash of the renderer is what this check looks for
        tally.add(VIOLATION, spec, f"render raised {type(error).__name__}: {error}")
        return
    for child in children:
        try:
            kube.apply(child, dry_run=True)
        except ApiError as error:
            if refusals.is_permanent(error):
                tally.add(CHILD_REFUSED, spec)
            else:
                tally.add(VIOLATION, spec, f"transient refusal of a child: {error}")
            return
    tally.add(CLEAN, spec)


def fuzz(kube: KubeClient, namespace: str, cases: int) -> Tally:
    tally = Tally()
    started = time.monotonic()

    @settings(
        max_examples=cases,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(variants())
    def one(spec: Spec) -> None:
        classify(kube, namespace, spec, tally)

    one()
    tally.seconds = time.monotonic() - started
    return tally


# --- a sample created for real, with the operator running ------------------------------------
def after_apply_cases() -> list[Spec]:
    """Specs the API server accepts that cannot run: only the operator can refuse them, so they
    time the apply-to-Failed path (the installation sets no default image here; Secret keys and
    ConfigMap names the CRD does not model are refused by the Job's validation)."""
    base = next(spec for spec in example_specs() if spec.get("devicesPerWorker") == 0)
    no_image = {key: value for key, value in base.items() if key != "image"}
    bad_key = {
        **base,
        "env": [{"name": "HUB", "valueFrom": {"secretKeyRef": {"name": "s", "key": "a b"}}}],
    }
    return [no_image, bad_key]


def _phase_and_reason(kube: KubeClient, namespace: str, name: str) -> tuple[str, str]:
    body = kube.get_accel_job(namespace, name) or {}
    status = body.get("status") or {}
    failed = [c for c in status.get("conditions") or [] if c.get("type") == "Failed"]
    return str(status.get("phase") or ""), str(failed[0].get("reason") if failed else "")


def live(kube: KubeClient, namespace: str, tally: Tally, per_kind: int) -> tuple[list[float], int]:
    """Create up to ``per_kind`` accepted variants of each kind; returns the apply-to-Failed
    seconds of those that must fail, and how many were created."""
    seconds: list[float] = []
    created = 0
    known = [spec for spec in after_apply_cases() for _ in range(per_kind)]
    for kind in (OPERATOR_RULE, CHILD_REFUSED, CLEAN):
        specs = tally.samples.get(kind, [])[:per_kind] + (known if kind == OPERATOR_RULE else [])
        for index, spec in enumerate(specs):
            name = f"live-{kind.split()[1][:4].strip(',')}-{index}"
            must_fail = kind != CLEAN
            if not must_fail:
                # Only the phase matters here: no pods, no training.
                spec = {**spec, "runPolicy": {**spec.get("runPolicy", {}), "suspend": True}}
            posted = time.monotonic()
            _post(kube, namespace, name, spec, dry_run=False)
            created += 1
            while True:
                phase, reason = _phase_and_reason(kube, namespace, name)
                waited = time.monotonic() - posted
                if must_fail and phase == "Failed":
                    if reason != "InvalidSpec":
                        tally.add(VIOLATION, spec, f"{name} failed with {reason}, not InvalidSpec")
                    seconds.append(waited)
                    break
                if not must_fail and phase:
                    break
                if waited > FAIL_WITHIN_SECONDS:
                    what = "Failed/InvalidSpec" if must_fail else "a phase"
                    tally.add(VIOLATION, spec, f"{name}: no {what} within 5 s (phase {phase!r})")
                    break
                time.sleep(0.05)
            with contextlib.suppress(ApiError):
                kube.request(
                    "DELETE",
                    f"/apis/{api.API_VERSION}/namespaces/{namespace}/{api.PLURAL}/{name}",
                    verb="delete",
                    resource=api.PLURAL,
                )
    return seconds, created


def report(tally: Tally, seconds: list[float], created: int, tracebacks: int) -> dict[str, Any]:
    total = sum(tally.counts.values())
    row: dict[str, Any] = {
        "variants": total,
        "per second": round(total / tally.seconds, 1) if tally.seconds else 0.0,
        **{
            kind: tally.counts.get(kind, 0)
            for kind in (REFUSED, CLEAN, OPERATOR_RULE, CHILD_REFUSED)
        },
        "violations": len(tally.violations),
        "created for real": created,
        "apply to Failed p50 (s)": round(percentile(seconds, 0.5), 3) if seconds else None,
        "apply to Failed p99 (s)": round(percentile(seconds, 0.99), 3) if seconds else None,
        "operator tracebacks": tracebacks,
    }
    p99 = row["apply to Failed p99 (s)"]
    row["target met"] = (
        not tally.violations and tracebacks == 0 and (p99 is None or p99 <= TARGET_P99_SECONDS)
    )
    print("| measure | value |\n|---|---:|")
    for key, value in row.items():
        print(f"| {key} | {value} |")
    for violation in tally.violations[:20]:
        print(f"VIOLATION: {violation}")
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", type=Path, help="use this running cluster")
    parser.add_argument("--cases", type=int, default=3000, help="variants to try (default 3000)")
    parser.add_argument("--live", type=int, default=15, help="created for real per kind")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        kube, namespace, _, _, log = start_session(
            stack, args.kubeconfig, nodes=2, prefix="admission"
        )
        tally = fuzz(kube, namespace, args.cases)
        seconds, created = live(kube, namespace, tally, args.live)
        time.sleep(1)
        tracebacks = log.read_text(errors="replace").count("Traceback")
        print(f"operator log: {log}")
        row = report(tally, seconds, created, tracebacks)
        if args.json:
            args.json.write_text(json.dumps({**row, "violation details": tally.violations}))
    return 0 if row["target met"] else 1


if __name__ == "__main__":
    sys.exit(main())
