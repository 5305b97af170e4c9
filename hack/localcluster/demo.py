"""``make demo``: the local cluster, the operator and the CPU demo job, with live progress.

::

    PYTHONPATH=hack .venv/bin/python -m localcluster.demo up      # make demo
    PYTHONPATH=hack .venv/bin/python -m localcluster.demo down    # make demo-down

``up`` starts (or reuses, when a previous ``up`` left them running) a local cluster with the real
node (kubelet + containerd running the images of ``make node-images``), a few kwok GPU nodes and
Prometheus; installs the CRD; starts the operator as a local process; applies
``manifests/examples/cpu-demo.yaml`` as it is (its checkpoint claim and the job), so the trainers
run in containers from the CPU trainer image; shows the job's progress from its status until it
Succeeded or Failed; then prints the final evaluation, where the checkpoints and the exported
model are (the claim's local volume on the host), and a PromQL query answered by Prometheus. It
exits 0 only when the job Succeeded, and leaves everything running so the user can look around;
``down`` stops it all and removes the state directory. Ctrl-C (or SIGTERM) during ``up`` tears
everything down as ``down`` does.

State directory (``.demo/``, git-ignored)::

    cluster/               the local cluster (kubeconfig, component logs, Prometheus data)
    cluster/node/volumes/  the local volumes: the job's claim holds its checkpoints, evaluation
                           reports and exported model
    operator.log           the operator's output
    demo.json              the operator's pid record and ports

The trainer image carries DeepSpeed's compiled ops, so no pod compiles anything.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import yaml

from . import prometheus
from .cluster import Cluster, ClusterError, free_port, operator_argv
from .images import ImageError, node_image_names
from .kubeapi import ApiError
from .processes import ProcessRecord, is_alive, spawn, stop
from .tools import REPO_ROOT, MissingToolError

DEFAULT_STATE_DIR = REPO_ROOT / ".demo"
DEMO_MANIFEST = REPO_ROOT / "manifests" / "examples" / "cpu-demo.yaml"
CRD_FILE = REPO_ROOT / "manifests" / "crd" / "acceltrain.io_acceltrainjobs.yaml"
NAMESPACE = "default"
JOBS_PATH = f"/apis/acceltrain.io/v1alpha1/namespaces/{NAMESPACE}/acceltrainjobs"
JOB_LABEL = "acceltrain.io/job-name"
GPU_NODES = 3
STATE_FILE = "demo.json"
OPERATOR_STOP_SECONDS = 15.0
# The demo job takes about two minutes on two cores; this is how long before giving up.
JOB_TIMEOUT_SECONDS = 900.0
FINISHED = ("Succeeded", "Failed")


class DemoError(RuntimeError):
    """The demo could not be started or its job did not succeed; the message says what to do."""


@dataclass
class DemoPaths:
    """Where the demo keeps its state."""

    root: Path

    @property
    def cluster(self) -> Path:
        return self.root / "cluster"

    @property
    def operator_log(self) -> Path:
        return self.root / "operator.log"

    @property
    def state_file(self) -> Path:
        return self.root / STATE_FILE


# --- the job ------------------------------------------------------------------------------------
def demo_documents() -> list[dict[str, Any]]:
    """``cpu-demo.yaml``'s objects (its claim, then the job), in the demo's namespace."""
    documents = [doc for doc in yaml.safe_load_all(DEMO_MANIFEST.read_text()) if doc]
    for document in documents:
        document["metadata"]["namespace"] = NAMESPACE
    return documents


def demo_job(documents: list[dict[str, Any]]) -> dict[str, Any]:
    return next(doc for doc in documents if doc["kind"] == "AccelTrainJob")


def host_path_of(job: dict[str, Any], pod_path: str, claim_dirs: dict[str, Path]) -> Path | None:
    """The host path behind a path inside the job's pods, through its claims (``claim_dirs``: the
    host directory of each bound claim) and hostPath volumes."""
    best: tuple[int, Path] | None = None
    for volume in job["spec"].get("volumes") or []:
        mount = volume["mountPath"].rstrip("/")
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
        host = claim_dirs.get(claim) if claim else (volume.get("hostPath") or {}).get("path")
        if host is None or not (pod_path == mount or pod_path.startswith(mount + "/")):
            continue
        if best is None or len(mount) > best[0]:
            best = (len(mount), Path(host) / pod_path[len(mount) :].lstrip("/"))
    return None if best is None else best[1]


def claims_of(job: dict[str, Any]) -> list[str]:
    return [
        volume["persistentVolumeClaim"]["claimName"]
        for volume in job["spec"].get("volumes") or []
        if "persistentVolumeClaim" in volume
    ]


# --- progress -----------------------------------------------------------------------------------
def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def progress_line(status: dict[str, Any], total_steps: int, elapsed: float) -> str:
    """One line: phase, step/total with a bar, throughput, loss, sparsity, workers, elapsed."""
    progress = status.get("progress") or {}
    phase = str(status.get("phase") or "Pending")
    step = int(progress.get("step") or 0)
    total = int(progress.get("totalSteps") or total_steps)
    width = 12
    filled = min(width, width * step // total) if total else 0
    bar = "#" * filled + "-" * (width - filled)
    loss = progress.get("loss")
    sparsity = progress.get("sparsity")
    workers = status.get("workers") or {}
    parts = [
        f"{phase:<10}",
        f"step {step:>4}/{total} [{bar}]",
        f"{float(progress.get('samplesPerSecond') or 0):6.1f} samples/s",
        f"{float(progress.get('tokensPerSecond') or 0):7,.0f} tokens/s",
        f"loss {loss:.4f}" if isinstance(loss, (int, float)) else "loss      -",
        f"sparsity {sparsity:.2f}" if isinstance(sparsity, (int, float)) else "sparsity    -",
        f"workers {workers.get('summary', '-')}",
        f"{_duration(elapsed):>6}",
    ]
    return "  ".join(parts)


class ProgressView:
    """Shows progress lines: one refreshing line on a terminal, else a line per change."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.last_printed: tuple[str, int] | None = None
        self.last_time = 0.0

    def show(self, line: str, phase: str, step: int) -> None:
        if self.tty:
            # A line longer than the terminal would wrap, and \r only rewrites its last row.
            width = shutil.get_terminal_size().columns - 1
            self.out.write("\r\x1b[K" + line[:width])
            self.out.flush()
            return
        now = time.monotonic()
        key = (phase, step)
        # In a log, a line when the phase changes, else at most every 5 s while steps advance.
        if (
            self.last_printed is None
            or key[0] != self.last_printed[0]
            or (key != self.last_printed and now - self.last_time >= 5)
        ):
            self.out.write(line + "\n")
            self.out.flush()
            self.last_printed = key
            self.last_time = now

    def end(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


# --- the demo -----------------------------------------------------------------------------------
def _tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return f"({path} does not exist)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _shown(path: Path) -> str:
    """A path relative to the working directory when it is below it (shorter to read)."""
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    return str(path)


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


class Demo:
    """One ``up`` or ``down`` of the demo in a state directory."""

    def __init__(self, state_dir: Path, *, out: TextIO = sys.stdout) -> None:
        self.paths = DemoPaths(state_dir.resolve())
        self.out = out
        self.operator: ProcessRecord | None = None

    def say(self, message: str) -> None:
        self.out.write(message + "\n")
        self.out.flush()

    # ---- up --------------------------------------------------------------------------------------
    def up(self) -> int:
        """Run the demo; tear everything down on Ctrl-C or SIGTERM. Returns the exit code."""
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            return self._up()
        except KeyboardInterrupt:
            self.say("\ninterrupted: stopping the operator, the trainers and the cluster ...")
            self._teardown_ignoring_interrupts()
            return 130
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _teardown_ignoring_interrupts(self) -> None:
        def still_stopping(_signum: int, _frame: FrameType | None) -> None:
            self.say("still stopping; it takes up to a minute while trainer pods exit")

        handlers = {
            sig: signal.signal(sig, still_stopping) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            self.down()
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)

    def _up(self) -> int:
        started = time.monotonic()
        self.paths.root.mkdir(parents=True, exist_ok=True)
        cluster = self._cluster()
        self._install_crd(cluster)
        self._start_operator(cluster)
        documents = demo_documents()
        self._apply(cluster, documents)
        job = demo_job(documents)
        status = self._watch(cluster, job)
        self.say(f"(the demo took {_duration(time.monotonic() - started)} in all)")
        return self._report(cluster, job, status)

    def _cluster(self) -> Cluster:
        with contextlib.suppress(ClusterError):
            existing = Cluster.attach(self.paths.cluster)
            if existing.running_components():
                try:
                    existing.wait_ready(timeout=15)
                except ClusterError:
                    self.say("the previous demo cluster is not healthy: restarting it")
                    existing.stop()
                else:
                    self.say(f"[1/4] local cluster: reusing the running one ({existing.api_url})")
                    return existing
        self.say(
            "[1/4] local cluster: starting etcd, the control plane, kwok GPU nodes, "
            "the real node (kubelet + containerd) and Prometheus ..."
        )
        began = time.monotonic()
        cluster = Cluster(
            self.paths.cluster,
            gpu_nodes=GPU_NODES,
            gpus_per_node=8,
            process_node=False,
            real_node=True,
            images=node_image_names(),
        )
        cluster.start(timeout=120)
        self.say(
            f"      ready in {time.monotonic() - began:.1f} s: API server {cluster.api_url}, "
            f"Prometheus {cluster.prometheus_url}"
        )
        return cluster

    def _install_crd(self, cluster: Cluster) -> None:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
        cluster.wait_crd_established("acceltrainjobs.acceltrain.io")
        self.say("[2/4] CRD acceltrainjobs.acceltrain.io installed")

    # ---- the operator ----------------------------------------------------------------------------
    def _saved_state(self) -> dict[str, Any]:
        if not self.paths.state_file.exists():
            return {}
        state: dict[str, Any] = json.loads(self.paths.state_file.read_text())
        return state

    def _save_state(self, state: dict[str, Any]) -> None:
        temporary = self.paths.state_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(state, indent=2) + "\n")
        temporary.replace(self.paths.state_file)

    def _start_operator(self, cluster: Cluster) -> None:
        state = self._saved_state()
        if "operator" in state:
            record = ProcessRecord.from_json(state["operator"])
            if is_alive(record) and self._operator_alive(state["liveness_port"]):
                self.operator = record
                self.say(f"[3/4] operator: reusing the running one (pid {record.pid})")
                return
            stop(record, grace_seconds=OPERATOR_STOP_SECONDS)
        liveness_port = free_port()
        argv = operator_argv(
            metrics_port=cluster.operator_metrics_port,
            liveness_port=liveness_port,
            scrape_network=str(cluster.real_node_cidr),
        )
        env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "PYTHONUNBUFFERED": "1"}
        popen, record = spawn(
            "operator", argv, log_path=self.paths.operator_log, env=env, cwd=REPO_ROOT
        )
        self.operator = record
        self._save_state({"operator": record.to_json(), "liveness_port": liveness_port})
        deadline = time.monotonic() + 60
        while not self._operator_alive(liveness_port):
            if popen.poll() is not None:
                raise DemoError(
                    f"the operator exited with code {popen.returncode}; the end of "
                    f"{_shown(self.paths.operator_log)}:\n{_tail(self.paths.operator_log)}"
                )
            if time.monotonic() > deadline:
                raise DemoError(
                    f"the operator did not answer on :{liveness_port}/healthz within 60 s; "
                    f"see {_shown(self.paths.operator_log)}"
                )
            time.sleep(0.2)
        self.say(
            f"[3/4] operator running (pid {record.pid}, log {_shown(self.paths.operator_log)}, "
            f"metrics on :{cluster.operator_metrics_port})"
        )

    @staticmethod
    def _operator_alive(port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _check_operator(self) -> None:
        if self.operator is not None and not is_alive(self.operator):
            raise DemoError(
                f"the operator exited; the end of {_shown(self.paths.operator_log)}:\n"
                f"{_tail(self.paths.operator_log)}"
            )

    # ---- the job ---------------------------------------------------------------------------------
    def _apply(self, cluster: Cluster, documents: list[dict[str, Any]]) -> None:
        document = demo_job(documents)
        name = document["metadata"]["name"]
        api = cluster.admin_api()
        path = f"{JOBS_PATH}/{name}"
        with contextlib.suppress(ApiError):
            api.get(path)
            self.say(f"      deleting {name} of the previous run ...")
            api.request("DELETE", path, {"propagationPolicy": "Foreground"})
            deadline = time.monotonic() + 120
            while self._exists(api, path) or self._pods(cluster, name):
                if time.monotonic() > deadline:
                    raise DemoError(
                        f"the previous {name} was not deleted within 120 s; run `make demo-down`"
                    )
                time.sleep(0.5)
        # A checkpoint left by an earlier run would be resumed, finishing the job at once: the
        # job gets a new claim (and so a fresh volume) every run.
        for claim in claims_of(document):
            cluster.kubectl(
                "delete", "pvc", claim, "-n", NAMESPACE, "--ignore-not-found", "--wait=true"
            )
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(documents, sort_keys=False))
        spec = document["spec"]
        deepspeed = spec["deepspeed"]
        self.say(
            f"[4/4] applied {_shown(DEMO_MANIFEST)} as {NAMESPACE}/{name}: {spec['workers']} "
            f"workers x {spec['procsPerWorker']} CPU ranks, ZeRO-{deepspeed['zero']['stage']}, "
            f"{deepspeed['precision']}, pruning to {spec['pruning']['targetSparsity']:.0%}"
        )
        self.say(
            f"      watch it yourself: kubectl --kubeconfig {_shown(cluster.kubeconfig)} get atj -w"
        )

    @staticmethod
    def _exists(api: Any, path: str) -> bool:
        try:
            api.get(path)
        except ApiError as error:
            if error.status == 404:
                return False
            raise
        return True

    @staticmethod
    def _pods(cluster: Cluster, name: str) -> list[str]:
        pods = cluster.admin_api().get(
            f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector={JOB_LABEL}%3D{name}"
        )["items"]
        return [str(pod["metadata"]["name"]) for pod in pods]

    def _watch(self, cluster: Cluster, document: dict[str, Any]) -> dict[str, Any]:
        name = document["metadata"]["name"]
        total = int(document["spec"]["training"]["maxSteps"])
        api = cluster.admin_api()
        view = ProgressView(self.out)
        started = time.monotonic()
        deadline = started + JOB_TIMEOUT_SECONDS
        sparsity_checked = 0.0
        status: dict[str, Any] = {}
        try:
            while True:
                self._check_operator()
                try:
                    status = api.get(f"{JOBS_PATH}/{name}").get("status") or {}
                except (ApiError, OSError) as error:
                    # Two busy cores can make a read time out now and then; only a lasting
                    # failure ends the demo (through the deadline).
                    if time.monotonic() > deadline:
                        raise DemoError(f"cannot read {name}: {error}") from error
                    time.sleep(1)
                    continue
                progress = status.setdefault("progress", {})
                now = time.monotonic()
                if progress.get("sparsity") is None and now - sparsity_checked > 5:
                    # Before the status carries it, the trainers' own gauge does.
                    sparsity_checked = now
                    measured = self._prometheus_value(
                        cluster, f'max(acceltrain_sparsity_ratio{{acceltrain_job="{name}"}})'
                    )
                    if measured is not None:
                        progress["sparsity"] = measured
                phase = str(status.get("phase") or "Pending")
                view.show(
                    progress_line(status, total, now - started),
                    phase,
                    int(progress.get("step") or 0),
                )
                if phase in FINISHED:
                    return status
                if now > deadline:
                    raise DemoError(
                        f"{name} did not finish within {JOB_TIMEOUT_SECONDS:.0f} s "
                        f"(phase {phase}); see {_shown(self.paths.operator_log)}"
                    )
                time.sleep(1)
        finally:
            view.end()

    @staticmethod
    def _prometheus_value(cluster: Cluster, promql: str) -> float | None:
        if cluster.prometheus_url is None:
            return None
        try:
            result = prometheus.query(cluster.prometheus_url, promql)
        except (OSError, prometheus.PrometheusError):
            return None
        return float(result[0]["value"][1]) if result else None

    # ---- the report ------------------------------------------------------------------------------
    def _report(self, cluster: Cluster, document: dict[str, Any], status: dict[str, Any]) -> int:
        name = document["metadata"]["name"]
        phase = status.get("phase")
        message = f": {status['message']}" if status.get("message") else ""
        self.say(
            f"\n{name} {phase} (attempt {status.get('attempt', 1)}, "
            f"{status.get('restarts', 0)} restart(s)){message}"
        )
        if phase != "Succeeded":
            self._report_failure(cluster, name, status)
            return 1
        claim_dirs = {claim: cluster.volume_path(NAMESPACE, claim) for claim in claims_of(document)}
        checkpoints = host_path_of(document, document["spec"]["checkpoint"]["path"], claim_dirs)
        assert checkpoints is not None, "the demo job's checkpoint path is on its claim"
        self._report_evaluation(checkpoints / "output")
        self._report_artifacts(document, checkpoints, claim_dirs)
        self._report_prometheus(cluster, name)
        self.say(
            f"\nkubectl: export KUBECONFIG={_shown(cluster.kubeconfig)}; "
            f"{_shown(REPO_ROOT / '.tools/bin/kubectl')} get atj"
        )
        self.say("Tear down with `make demo-down`.")
        return 0

    def _report_failure(self, cluster: Cluster, name: str, status: dict[str, Any]) -> None:
        for condition in status.get("conditions") or []:
            self.say(
                f"  {condition.get('type')}={condition.get('status')} "
                f"{condition.get('reason', '')}: {condition.get('message', '')}"
            )
        for pod in self._pods(cluster, name):
            logs = cluster.kubectl(
                "logs", "-n", NAMESPACE, pod, "-c", "trainer", "--tail=20", check=False
            )
            self.say(f"--- the end of pod {pod}'s log ---\n{logs.stdout}{logs.stderr}")
        self.say(f"operator log: {_shown(self.paths.operator_log)}")
        self.say("Everything is still running for a look around; tear down with `make demo-down`.")

    def _report_evaluation(self, output: Path) -> None:
        final = output / "eval" / "final.json"
        if not final.exists():
            self.say(f"no final evaluation report at {_shown(final)}")
            return
        result = json.loads(final.read_text())
        self.say(f"\nFinal evaluation at step {result.get('step')} ({_shown(final)}):")
        if "report" in result:
            self.say(result["report"].rstrip())
        scores = {
            key: result[key]
            for key in ("accuracy", "macro_f1", "loss", "f1", "perplexity")
            if isinstance(result.get(key), (int, float))
        }
        self.say("  " + "  ".join(f"{key} {value:.4f}" for key, value in scores.items()))

    def _report_artifacts(
        self, document: dict[str, Any], checkpoints: Path, claim_dirs: dict[str, Path]
    ) -> None:
        output = checkpoints / "output"
        steps = sorted(path.name for path in checkpoints.glob("step-*") if path.is_dir())
        self.say(f"\nCheckpoints:     {_shown(checkpoints)}/{{{','.join(steps)}}}")
        export_file = output / "export.json"
        if not export_file.exists():
            self.say(f"no export report at {_shown(export_file)}")
            return
        exported = json.loads(export_file.read_text())

        def located(pod_path: str) -> str:
            host = host_path_of(document, pod_path, claim_dirs)
            return _shown(host) if host is not None else pod_path

        line = (
            f"Exported model:  {located(exported['model_dir'])} ({exported['size_bytes']:,} bytes"
        )
        if "sparsity" in exported:
            line += f", sparsity {exported['sparsity']:.2f} of the pruned weights"
        if "accuracy" in (exported.get("eval") or {}):
            line += f", accuracy {exported['eval']['accuracy']:.4f}"
        self.say(line + ")")
        quantized = exported.get("quantized")
        if quantized:
            line = (
                f"int8 copy:       {located(quantized['model_dir'])} "
                f"({quantized['size_bytes']:,} bytes"
            )
            if "accuracy" in (quantized.get("eval") or {}):
                line += f", accuracy {quantized['eval']['accuracy']:.4f}"
            self.say(line + ")")
        self.say(f"Export report:   {_shown(export_file)}")
        self.say(f"Operator log:    {_shown(self.paths.operator_log)}")

    def _report_prometheus(self, cluster: Cluster, name: str) -> None:
        if cluster.prometheus_url is None:
            return
        promql = f'max_over_time(acceltrain_samples_per_second{{acceltrain_job="{name}"}}[1h])'
        result: list[dict[str, Any]] = []
        with contextlib.suppress(OSError, prometheus.PrometheusError):
            result = prometheus.query(cluster.prometheus_url, promql)
        self.say(
            f"\nPrometheus ({cluster.prometheus_url}) scraped the trainers; "
            "peak samples/s per rank:"
        )
        self.say(
            f"  curl -s {cluster.prometheus_url}/api/v1/query --data-urlencode 'query={promql}'"
        )
        if not result:
            self.say(
                "  (no answer: Prometheus has no samples of the job; see its targets page "
                f"{cluster.prometheus_url}/targets)"
            )
            return
        for series in sorted(result, key=lambda s: int(s["metric"].get("rank", 0))):
            labels = series["metric"]
            self.say(
                f"  rank {labels.get('rank')} (pod {labels.get('pod')}): "
                f"{float(series['value'][1]):.1f}"
            )

    # ---- down ------------------------------------------------------------------------------------
    def down(self) -> None:
        """Stop the operator and the cluster (trainer pods with it); remove the state directory."""
        leftovers: list[str] = []
        records = [self.operator] if self.operator is not None else []
        with contextlib.suppress(OSError, ValueError, KeyError):
            records.append(ProcessRecord.from_json(self._saved_state()["operator"]))
        for record in records:
            left = stop(record, grace_seconds=OPERATOR_STOP_SECONDS)
            if left:
                leftovers.append(f"operator: {left}")
        if (self.paths.cluster / "state.json").exists():
            try:
                Cluster.attach(self.paths.cluster).stop()
            except ClusterError as error:
                leftovers.append(str(error))
        if leftovers:
            raise DemoError(
                f"processes still alive after stopping the demo: {'; '.join(leftovers)}; "
                f"{self.paths.root} is kept"
            )
        shutil.rmtree(self.paths.root, ignore_errors=True)
        self.say(f"demo stopped; {_shown(self.paths.root)} removed")


@contextlib.contextmanager
def _sigint_as_keyboard_interrupt() -> Iterator[None]:
    # `make` may start the driver with SIGINT ignored when it runs in the background.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m localcluster.demo",
        description="The acceltrain demo: local cluster, operator and a CPU training job.",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help="where the demo keeps its cluster, logs and checkpoints (default: %(default)s)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="run the demo job; leaves the cluster running")
    commands.add_parser("down", help="stop everything the demo started and remove its state")
    args = parser.parse_args(argv)
    demo = Demo(args.state_dir)
    try:
        if args.command == "up":
            with _sigint_as_keyboard_interrupt():
                return demo.up()
        demo.down()
        return 0
    except (DemoError, ClusterError, MissingToolError, ImageError) as error:
        print(f"error: {error}", file=sys.stderr)
        if args.command == "up":
            print("tear down with `make demo-down`", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
