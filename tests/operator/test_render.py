"""Rendering turns every example into an Indexed Job, a headless Service and a ConfigMap."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from accel_contract.config import TrainerConfig
from accel_operator import api, constants, render
from tests.specs import example_files, load_example

EXAMPLES = example_files()
REF_UID = "0b4f2a36-4bde-4a8f-9d44-2d5d1f0c9e11"


def _render(
    path: Path, attempt: int = 1
) -> tuple[api.AccelTrainJobSpec, dict[str, dict[str, Any]]]:
    document = load_example(path)
    name = document["metadata"]["name"]
    spec = api.parse_spec(document["spec"], name=name)
    ref = render.JobRef(name=name, namespace="team-a", uid=REF_UID)
    children = {child["kind"]: child for child in render.render_attempt(spec, ref, attempt)}
    return spec, children


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


def test_there_are_examples_for_every_headline_feature() -> None:
    names = {path.name for path in EXAMPLES}
    assert "cpu-smoke.yaml" in names
    specs = [api.parse_spec(load_example(path)["spec"]) for path in EXAMPLES]
    assert any(s.deepspeed.zero.stage == 2 and s.deepspeed.precision.value == "fp16" for s in specs)
    assert any(
        s.deepspeed.zero.stage == 3
        and s.deepspeed.zero.offload_params.value == "cpu"
        and s.deepspeed.precision.value == "bf16"
        and s.model.task.value == "causal-lm"
        for s in specs
    )
    assert any(
        s.pruning is not None
        and s.pruning.target_sparsity == 0.5
        and s.model.task.value == "token-classification"
        for s in specs
    )
    assert any(s.on_cpu and s.workers == 2 and s.procs == 2 and s.data.synthetic for s in specs)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_renders_an_indexed_job_with_one_pod_per_worker(path: Path) -> None:
    spec, children = _render(path, attempt=3)
    name = load_example(path)["metadata"]["name"]
    job = children["Job"]
    assert job["metadata"]["name"] == f"{name}-a3"
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == spec.workers
    assert job["spec"]["backoffLimit"] == 0
    rule = job["spec"]["podFailurePolicy"]["rules"][0]
    assert rule["action"] == "FailJob"
    assert rule["onExitCodes"]["values"] == [64, 65, 66, 67]
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    if spec.workers > 1:
        assert pod["subdomain"] == name == children["Service"]["metadata"]["name"]
    else:
        # A single worker's ranks meet on loopback: no Service, no subdomain.
        assert "subdomain" not in pod and "Service" not in children


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_env_describes_the_static_rendezvous(path: Path) -> None:
    spec, children = _render(path, attempt=2)
    name = load_example(path)["metadata"]["name"]
    container = children["Job"]["spec"]["template"]["spec"]["containers"][0]
    env = _env(container)
    master = f"{name}-a2-0.{name}.team-a.svc" if spec.workers > 1 else "127.0.0.1"
    assert env["MASTER_ADDR"] == master
    assert env["MASTER_PORT"] == "29500"
    assert env["ACCELTRAIN_NNODES"] == str(spec.workers)
    assert env["ACCELTRAIN_NPROC_PER_NODE"] == str(spec.procs)
    assert env["ACCELTRAIN_NODE_RANK"] == {
        "fieldRef": {
            "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        }
    }
    assert env["ACCELTRAIN_ATTEMPT"] == "2"
    assert env["ACCELTRAIN_JOB_NAME"] == name
    assert env["ACCELTRAIN_CONFIG"] == "/etc/acceltrain/trainer.json"
    assert container["command"] == [
        "python",
        "-m",
        "accel_trainer",
        "run",
        "--config",
        "/etc/acceltrain/trainer.json",
    ]
    # The master's pod hostname is what the Job controller gives index 0 under the subdomain.
    assert render.pod_hostname(name, 2, 0) == f"{name}-a2-0"
    assert len(render.pod_hostname(name, 999, api.MAX_WORKERS - 1)) <= 63


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_batch_math_matches_the_world_size(path: Path) -> None:
    spec, children = _render(path)
    ds_config = json.loads(children["ConfigMap"]["data"]["ds_config.json"])
    world = spec.workers * spec.procs
    assert ds_config["train_batch_size"] == (
        ds_config["train_micro_batch_size_per_gpu"]
        * ds_config["gradient_accumulation_steps"]
        * world
    )
    trainer = TrainerConfig.model_validate_json(children["ConfigMap"]["data"]["trainer.json"])
    assert trainer.procs_per_worker == spec.procs
    assert trainer.device == ("cpu" if spec.on_cpu else "cuda")
    assert trainer.checkpoint.dir == spec.checkpoint.path
    assert trainer.deepspeed_config == "ds_config.json"
    assert trainer.job.name == load_example(path)["metadata"]["name"]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_children_are_owned_and_labelled(path: Path) -> None:
    spec, children = _render(path)
    name = load_example(path)["metadata"]["name"]
    if "Service" not in children:  # a single worker's; what two workers would get
        ref = render.JobRef(name=name, namespace="team-a", uid=REF_UID)
        children["Service"] = render.render_service(spec.model_copy(update={"workers": 2}), ref)
    for child in children.values():
        owner = child["metadata"]["ownerReferences"][0]
        assert owner == {
            "apiVersion": "acceltrain.io/v1alpha1",
            "kind": "AccelTrainJob",
            "name": name,
            "uid": REF_UID,
            "controller": True,
            "blockOwnerDeletion": True,
        }
        assert child["metadata"]["namespace"] == "team-a"
        assert child["metadata"]["labels"][constants.LABEL_JOB_NAME] == name
    pod_labels = children["Job"]["spec"]["template"]["metadata"]["labels"]
    selector = children["Service"]["spec"]["selector"]
    assert all(pod_labels[key] == value for key, value in selector.items())
    assert pod_labels[constants.LABEL_ATTEMPT] == "1"
    assert children["Service"]["spec"]["clusterIP"] == "None"
    assert children["Service"]["spec"]["publishNotReadyAddresses"] is True


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_pods_run_with_secure_defaults_and_mount_config(path: Path) -> None:
    spec, children = _render(path)
    pod = children["Job"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    assert mounts["/etc/acceltrain"]["readOnly"] is True
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert (
        volumes["acceltrain-config"]["configMap"]["name"]
        == children["ConfigMap"]["metadata"]["name"]
    )
    for user_volume in spec.volumes:
        assert mounts[user_volume.mount_path]["name"] == user_volume.name
        assert volumes[user_volume.name]["name"] == user_volume.name
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    rank_ports = {
        ("metrics" if rank == 0 else f"metrics-{rank}"): spec.metrics.port + rank
        for rank in range(spec.procs)
    }
    assert ports == {**rank_ports, "rendezvous": 29500}


def test_every_local_rank_declares_its_metrics_port_so_prometheus_scrapes_it() -> None:
    document = load_example(next(path for path in EXAMPLES if path.name == "cpu-smoke.yaml"))
    spec = api.parse_spec({**document["spec"], "procsPerWorker": 3, "metrics": {"port": 9400}})
    ref = render.JobRef(name="smoke", namespace="team-a", uid=REF_UID)
    children = {child["kind"]: child for child in render.render_attempt(spec, ref, 1)}
    container = children["Job"]["spec"]["template"]["spec"]["containers"][0]

    declared = {port["name"]: port["containerPort"] for port in container["ports"]}

    assert declared["metrics"] == 9400
    assert declared["metrics-1"] == 9401
    assert declared["metrics-2"] == 9402
    assert all(len(name) <= 15 for name in declared)  # IANA service name limit


def test_a_failed_trainers_log_tail_becomes_its_termination_message() -> None:
    # The operator explains a failed job from the container status alone, without the
    # kubelet's log endpoint (which a least-privilege install or a private node may not offer).
    for path in EXAMPLES:
        container = _render(path)[1]["Job"]["spec"]["template"]["spec"]["containers"][0]
        assert container["terminationMessagePolicy"] == "FallbackToLogsOnError", path.name


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_gpu_workers_request_their_gpus_and_tolerate_the_pool(path: Path) -> None:
    spec, children = _render(path)
    pod = children["Job"]["spec"]["template"]["spec"]
    resources = pod["containers"][0].get("resources", {})
    tolerations = pod.get("tolerations", [])
    gpu_toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    if spec.on_cpu:
        assert "nvidia.com/gpu" not in resources.get("limits", {})
        assert gpu_toleration not in tolerations
    else:
        assert resources["limits"]["nvidia.com/gpu"] == str(spec.devices_per_worker)
        assert gpu_toleration in tolerations
        assert pod.get("nodeSelector", {}) == spec.node_pool.node_selector


def test_user_env_and_secrets_reach_the_trainer_after_ours() -> None:
    path = next(p for p in EXAMPLES if p.name.startswith("bert-classification"))
    _, children = _render(path)
    env = children["Job"]["spec"]["template"]["spec"]["containers"][0]["env"]
    names = [item["name"] for item in env]
    assert names[-1] == "HF_TOKEN"
    assert env[-1]["valueFrom"] == {
        "secretKeyRef": {"name": "hf-token", "key": "token", "optional": True}
    }


def test_queue_name_creates_a_suspended_job_for_kueue() -> None:
    document = load_example(EXAMPLES[0])
    document["spec"].setdefault("runPolicy", {})["queueName"] = "team-a-queue"
    spec = api.parse_spec(document["spec"])
    job = render.render_job(spec, render.JobRef("q", "ns", "uid"), 1)
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a-queue"
    assert "kueue.x-k8s.io/queue-name" not in job["spec"]["template"]["metadata"]["labels"]


def test_rendering_is_deterministic() -> None:
    for path in EXAMPLES:
        assert _render(path) == _render(path)


def test_cluster_defaults_fill_the_image_and_gpu_pool_a_spec_leaves_out() -> None:
    document = load_example(next(p for p in EXAMPLES if p.name.startswith("ner-pruning")))
    del document["spec"]["image"]
    spec = api.parse_spec(document["spec"])
    defaults = render.ClusterDefaults(
        trainer_image="registry.example/trainer:7",
        gpu_node_selector={"pool": "a100"},
        gpu_tolerations=({"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"},),
    )
    pod = render.render_job(spec, render.JobRef("j", "ns", "uid"), 1, defaults)["spec"]["template"][
        "spec"
    ]
    assert pod["containers"][0]["image"] == "registry.example/trainer:7"
    assert pod["nodeSelector"] == {"pool": "a100"}
    assert {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_a_job_without_any_image_is_refused_with_the_fix() -> None:
    document = load_example(EXAMPLES[0])
    del document["spec"]["image"]
    spec = api.parse_spec(document["spec"])
    with pytest.raises(render.MissingImageError, match=r"spec\.image"):
        render.render_attempt(spec, render.JobRef("j", "ns", "uid"), 1)


def test_cpu_workers_do_not_get_the_gpu_pool_defaults() -> None:
    spec = api.parse_spec(
        load_example(next(p for p in EXAMPLES if p.name == "cpu-smoke.yaml"))["spec"]
    )
    defaults = render.ClusterDefaults(gpu_node_selector={"pool": "a100"})
    pod = render.render_job(spec, render.JobRef("j", "ns", "uid"), 1, defaults)["spec"]["template"][
        "spec"
    ]
    assert "nodeSelector" not in pod


def _pod_of(document: dict[str, Any]) -> dict[str, Any]:
    spec = api.parse_spec(document)
    job = render.render_job(spec, render.JobRef("j", "ns", "uid"), 1)
    pod: dict[str, Any] = job["spec"]["template"]["spec"]
    return pod


def test_workers_leave_a_lost_node_after_node_loss_seconds_not_the_default_five_minutes() -> None:
    document = load_example(next(p for p in EXAMPLES if p.name == "cpu-smoke.yaml"))["spec"]
    document.setdefault("runPolicy", {})["nodeLossSeconds"] = 45
    lost = {
        t["key"]: t["tolerationSeconds"]
        for t in _pod_of(document)["tolerations"]
        if t.get("effect") == "NoExecute"
    }
    assert lost == {"node.kubernetes.io/unreachable": 45, "node.kubernetes.io/not-ready": 45}


def test_a_pools_own_toleration_of_a_lost_node_wins() -> None:
    document = load_example(next(p for p in EXAMPLES if p.name == "cpu-smoke.yaml"))["spec"]
    own = {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"}
    document["nodePool"] = {"tolerations": [own]}
    tolerations = _pod_of(document)["tolerations"]
    assert own in tolerations
    assert [t["key"] for t in tolerations if t["key"].startswith("node.kubernetes.io/")] == [
        "node.kubernetes.io/unreachable",
        "node.kubernetes.io/not-ready",
    ]
    # A toleration of every taint (empty key) covers both: nothing is added.
    document["nodePool"] = {"tolerations": [{"operator": "Exists"}]}
    assert _pod_of(document)["tolerations"] == [{"operator": "Exists"}]


@pytest.mark.parametrize(
    ("job_name", "owner"),
    [("bert-a1", "bert"), ("my-a2-job-a17", "my-a2-job"), ("bert", None), ("bert-ax", None)],
)
def test_the_accel_train_job_of_an_attempt_job_is_read_from_its_name(
    job_name: str, owner: str | None
) -> None:
    assert render.accel_job_of_attempt(job_name) == owner
    if owner is not None:
        assert render.attempt_job_name(owner, int(job_name.rsplit("-a", 1)[1])) == job_name
