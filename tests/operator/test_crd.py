"""The CRD is generated from the models, structural, and checked in up to date."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml

from accel_operator import api, crdgen


def _schemas(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _schemas(child, f"{path}.{name}")
    if "items" in node:
        yield from _schemas(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _schemas(node["additionalProperties"], f"{path}{{}}")


def _root() -> dict[str, Any]:
    root: dict[str, Any] = crdgen.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return root


def test_checked_in_crd_files_match_the_models() -> None:
    expected = crdgen.render_yaml()
    for path in crdgen.CRD_PATHS:
        assert path.read_text() == expected, f"{path} is stale: run `make crd`"


def test_crd_names_the_api_users_type() -> None:
    crd = yaml.safe_load(crdgen.CRD_PATHS[0].read_text())
    names = crd["spec"]["names"]
    assert crd["metadata"]["name"] == "acceltrainjobs.acceltrain.io"
    assert (crd["spec"]["group"], names["kind"], names["plural"]) == (
        "acceltrain.io",
        "AccelTrainJob",
        "acceltrainjobs",
    )
    assert names["shortNames"] == ["atj"]
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1"
    assert version["subresources"] == {"status": {}}
    columns = [column["name"].upper() for column in version["additionalPrinterColumns"]]
    assert columns[:7] == ["PHASE", "WORKERS", "STEP", "SAMPLES/S", "TOKENS/S", "RESTARTS", "AGE"]


def test_schema_is_structural() -> None:
    for path, node in _schemas(_root()):
        assert "$ref" not in node, path
        assert "$defs" not in node, path
        assert "title" not in node, path
        assert "nullable" not in node, path
        assert node.get("default", "") is not None, path
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string") is True, path
        if not node.get("x-kubernetes-int-or-string"):
            assert "type" in node, f"{path} has no type"
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            assert isinstance(node.get(bound, True), bool), path


def test_only_deepspeed_overrides_preserve_unknown_fields() -> None:
    preserving = [
        path for path, node in _schemas(_root()) if node.get("x-kubernetes-preserve-unknown-fields")
    ]
    assert preserving[0] == ".spec.deepspeed.overrides"
    # The owned DeepSpeed blocks are declared inside it only so that CEL can refuse them.
    assert all(path.startswith(".spec.deepspeed.overrides.") for path in preserving[1:])


def test_spec_fields_have_descriptions_for_kubectl_explain() -> None:
    spec = _root()["properties"]["spec"]
    missing = [
        path
        for path, node in _schemas(spec, ".spec")
        if not path.endswith(("[]", "}")) and not node.get("description")
    ]
    assert missing == []


def test_cross_field_rules_are_cel_validations_with_messages() -> None:
    rules = [
        rule for _, node in _schemas(_root()) for rule in node.get("x-kubernetes-validations", [])
    ]
    texts = " ".join(rule["rule"] for rule in rules)
    for fragment in (
        "has(self.pretrained) != has(self.config)",
        "self.deepspeed.zero.offloadOptimizer == 'none' || self.deepspeed.zero.stage >= 1",
        "self.deepspeed.zero.offloadParams == 'none' || self.deepspeed.zero.stage == 3",
        "!(has(self.zero_optimization) && has(self.zero_optimization.stage))",
        "self.startStep < self.endStep",
        "self.deepspeed.precision == 'fp16' && self.devicesPerWorker == 0",
        "startsWith('ACCELTRAIN_')",
        "size(self.metadata.name) <= ",
    ):
        assert fragment in texts
    assert all(rule.get("message") for rule in rules)


def test_everything_but_run_policy_is_immutable() -> None:
    spec = _root()["properties"]["spec"]["properties"]
    for name, node in spec.items():
        rules = [rule["rule"] for rule in node.get("x-kubernetes-validations", [])]
        assert ("self == oldSelf" in rules) == (name not in api.MUTABLE_SPEC_FIELDS), name
    run_policy = spec["runPolicy"]["properties"]
    for name in ("suspend", "maxRestarts"):
        rules = [rule["rule"] for rule in run_policy[name].get("x-kubernetes-validations", [])]
        assert "self == oldSelf" not in rules
    assert "self == oldSelf" in [
        rule["rule"] for rule in run_policy["gangTimeoutSeconds"]["x-kubernetes-validations"]
    ]


def test_check_mode_reports_drift(tmp_path: Any, monkeypatch: Any, capsys: Any) -> None:
    stale = tmp_path / "crd.yaml"
    stale.write_text("old")
    monkeypatch.setattr(crdgen, "CRD_PATHS", (stale,))
    monkeypatch.setattr(crdgen, "API_DOCS_PATH", tmp_path / "api.md")
    assert crdgen.main(["--check"]) == 1
    assert "run `make crd`" in capsys.readouterr().err
    assert crdgen.main(["--write"]) == 0
    assert crdgen.main(["--check"]) == 0


def _models_of(model: type[Any], seen: set[type[Any]]) -> set[type[Any]]:
    """``model`` and every pydantic model its fields hold, at any depth."""
    import typing

    from pydantic import BaseModel

    if model in seen:
        return seen
    seen.add(model)
    for info in model.model_fields.values():
        pending = [info.annotation]
        while pending:
            annotation = pending.pop()
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                _models_of(annotation, seen)
            pending.extend(typing.get_args(annotation))
    return seen


def test_every_model_the_operator_validates_is_checked_by_the_api_server_too() -> None:
    """A Python-only rule lets `kubectl apply` accept a spec the operator then fails."""
    from accel_operator import rules

    unchecked = []
    for model in _models_of(api.AccelTrainJobSpec, set()):
        # The rule table's validators are checked rule by rule below.
        table_validators = {"_table_rules", "_cross_field_rules"}
        validators = set(model.__pydantic_decorators__.model_validators)
        if validators - table_validators and model not in api.CEL_RULES:
            unchecked.append(model.__name__)
        if validators & table_validators:
            table = rules.MODEL_RULES[model.__name__]
            unchecked += [rule.name for rule in table if rule.cel is None]
    assert unchecked == []
