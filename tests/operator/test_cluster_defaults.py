"""The operator takes the installation's defaults (trainer image, GPU pool) from its environment,
and refuses to start on a value it cannot use, naming the variable and the fix."""

from __future__ import annotations

import getpass
import json
import os
import socket

import pytest

from accel_operator import api, constants, render
from accel_operator.__main__ import main, name_the_user
from tests.specs import EXAMPLES_DIR, load_example

IMAGE = constants.ENV_DEFAULT_TRAINER_IMAGE
SELECTOR = constants.ENV_GPU_NODE_SELECTOR
TOLERATIONS = constants.ENV_GPU_TOLERATIONS


def test_the_charts_default_values_give_an_image_and_an_empty_gpu_pool() -> None:
    # What templates/deployment.yaml renders with the default values.
    defaults = render.cluster_defaults_from_env(
        {IMAGE: "ghcr.io/acceltrain/trainer:0.1.0", SELECTOR: "{}", TOLERATIONS: "[]"}
    )
    assert defaults == render.ClusterDefaults(trainer_image="ghcr.io/acceltrain/trainer:0.1.0")


def test_unset_empty_and_null_settings_mean_no_defaults() -> None:
    assert render.cluster_defaults_from_env({}) == render.ClusterDefaults()
    assert (
        render.cluster_defaults_from_env({IMAGE: "", SELECTOR: "null", TOLERATIONS: " "})
        == render.ClusterDefaults()
    )


def test_a_gpu_pool_from_the_environment_reaches_gpu_workers() -> None:
    defaults = render.cluster_defaults_from_env(
        {
            IMAGE: "registry.example/trainer:7",
            SELECTOR: json.dumps({"pool": "a100"}),
            TOLERATIONS: json.dumps(
                [
                    {
                        "key": "dedicated",
                        "operator": "Equal",
                        "value": "ml",
                        "effect": "NoSchedule",
                    },
                    {"key": "spot", "operator": "Exists"},
                ]
            ),
        }
    )
    document = load_example(EXAMPLES_DIR / "bert-classification-zero2-fp16.yaml")
    del document["spec"]["image"]
    document["spec"].pop("nodePool", None)
    spec = api.parse_spec(document["spec"])
    pod = render.render_job(spec, render.JobRef("j", "ns", "uid"), 1, defaults)["spec"]["template"][
        "spec"
    ]
    assert pod["containers"][0]["image"] == "registry.example/trainer:7"
    assert pod["nodeSelector"] == {"pool": "a100"}
    assert {
        "key": "dedicated",
        "operator": "Equal",
        "value": "ml",
        "effect": "NoSchedule",
    } in pod["tolerations"]
    assert {"key": "spot", "operator": "Exists"} in pod["tolerations"]


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        (SELECTOR, "{pool: a100}", rf"{SELECTOR}: not valid JSON"),
        (SELECTOR, '["pool"]', rf"{SELECTOR}: must be a JSON object of label strings"),
        (SELECTOR, '{"pool": 3}', rf"{SELECTOR}: must be a JSON object of label strings"),
        (TOLERATIONS, '{"key": "a"}', rf"{TOLERATIONS}: must be a JSON list of tolerations"),
        (
            TOLERATIONS,
            '[{"key": "a", "operator": "Exists"}, {"operator": "Sometimes"}]',
            rf"{TOLERATIONS}\[1\]: not a toleration \(operator: ",
        ),
        (TOLERATIONS, '[{"key": "a", "colour": "red"}]', rf"{TOLERATIONS}\[0\]: .*colour"),
        (IMAGE, "ghcr.io/acceltrain/trainer 0.1", rf"{IMAGE}='.*': an image reference"),
    ],
)
def test_an_unusable_setting_is_named_with_its_fix(
    variable: str, value: str, expected: str
) -> None:
    with pytest.raises(render.ClusterDefaultsError, match=expected) as raised:
        render.cluster_defaults_from_env({variable: value})
    assert "Helm value trainer." in str(raised.value)


def test_the_operator_refuses_to_start_with_an_unusable_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(TOLERATIONS, '[{"operator": "Sometimes"}]')
    with pytest.raises(SystemExit, match=rf"{TOLERATIONS}\[0\]: not a toleration"):
        main(["run", "--metrics-port", "0", "--liveness-port", "0"])


def test_an_operator_under_a_uid_without_a_passwd_entry_names_itself_after_its_pod(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for variable in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(variable, raising=False)
    name_the_user()
    # kopf's peering identity comes from getpass, which must not consult /etc/passwd now.
    assert getpass.getuser() == socket.gethostname()


def test_a_user_named_by_the_environment_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER", "someone")
    name_the_user()
    assert os.environ["USER"] == "someone"
