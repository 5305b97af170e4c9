"""The operator at scale on kwok GPU nodes: many 8-worker AccelTrainJobs submitted in bursts.

Nothing trains: the pods go to kwok's fake GPU nodes, where kwok moves them to Running and then
completes them, so every job should reach Succeeded. Against the real control plane (API server,
scheduler, Job controller, garbage collector) with the operator as
``python -m accel_operator run``, it measures:

- launch latency: from the client's POST of the AccelTrainJob until every worker pod was seen
  Running (watch streams on the namespace's pods; :mod:`operator_launch`'s machinery);
- the operator's resident memory (current and peak) and CPU seconds, from ``/proc``;
- API requests per job: the operator's ``acceltrain_operator_api_requests_total`` (all verbs,
  and the writes among them), over the number of jobs;
- correctness: every job Succeeded on its first attempt with no restart (no lost reconcile).

::

    .venv/bin/python benchmarks/scale.py                    # 1000 jobs x 8 workers, own cluster
    .venv/bin/python benchmarks/scale.py --jobs 100         # a small run
    .venv/bin/python benchmarks/scale.py --kubeconfig .cluster/kubeconfig --jobs 50

Targets (issue 7): operator RSS <= 300 MB, launch p99 <= 10 s, every job Succeeded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCHMARKS_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCHMARKS_DIR.parent
sys.path.insert(0, str(BENCHMARKS_DIR))
sys.path.insert(0, str(REPO_ROOT / "hack"))

from operator_launch import (  # noqa: E402
    Launch,
    Operator,
    Watcher,
    job_spec,
    percentile,
    post_job,
    restarted,
    start_session,
)

from accel_operator import api  # noqa: E402
from accel_operator.kube import KubeClient  # noqa: E402

RSS_TARGET_MB = 300.0
LAUNCH_P99_TARGET_S = 10.0
POST_THREADS = 4


@dataclass
class ScaleResult:
    """What one run measured."""

    jobs: int
    workers: int
    gpus_per_worker: int
    burst: int
    interval: float
    ttl: int | None
    launches: list[Launch]
    phases: dict[str, int]
    restarted: int
    requests: float
    writes: float
    requests_by_kind: dict[tuple[str, str], float]
    rss_mb: float
    peak_rss_mb: float
    cpu_seconds: float
    posting_seconds: float
    wall_seconds: float

    @property
    def running_latencies(self) -> list[float]:
        return [value for launch in self.launches if (value := launch.all_running) is not None]

    @property
    def succeeded(self) -> int:
        return self.phases.get("Succeeded", 0)

    def checks(self) -> list[tuple[str, str, str, bool]]:
        """(measure, value, target, met) rows of the summary table."""
        latencies = self.running_latencies
        p50 = statistics.median(latencies) if latencies else math.nan
        p99 = percentile(latencies, 0.99)
        return [
            (
                "jobs Succeeded, first attempt",
                f"{self.succeeded - self.restarted}/{self.jobs}",
                f"{self.jobs}/{self.jobs}",
                self.succeeded == self.jobs and self.restarted == 0,
            ),
            (
                "launched (all pods Running)",
                f"{len(latencies)}/{self.jobs}",
                f"{self.jobs}/{self.jobs}",
                len(latencies) == self.jobs,
            ),
            ("launch p50 s", f"{p50:.2f}", "-", True),
            (
                "launch p99 s",
                f"{p99:.2f}",
                f"<= {LAUNCH_P99_TARGET_S:.0f}",
                p99 <= LAUNCH_P99_TARGET_S,
            ),
            ("launch max s", f"{max(latencies, default=math.nan):.2f}", "-", True),
            ("operator RSS MB (end)", f"{self.rss_mb:.0f}", "-", True),
            (
                "operator RSS MB (peak)",
                f"{self.peak_rss_mb:.0f}",
                f"<= {RSS_TARGET_MB:.0f}",
                self.peak_rss_mb <= RSS_TARGET_MB,
            ),
            ("operator CPU s (total)", f"{self.cpu_seconds:.1f}", "-", True),
            ("operator CPU s per job", f"{self.cpu_seconds / self.jobs:.3f}", "-", True),
            ("API requests per job", f"{self.requests / self.jobs:.1f}", "-", True),
            ("API writes per job", f"{self.writes / self.jobs:.1f}", "-", True),
            ("posting s (all bursts)", f"{self.posting_seconds:.1f}", "-", True),
            ("wall s (first POST to last Succeeded)", f"{self.wall_seconds:.1f}", "-", True),
        ]

    def passed(self) -> bool:
        return all(met for *_, met in self.checks())

    def to_json(self) -> dict[str, Any]:
        return {
            "jobs": self.jobs,
            "workers": self.workers,
            "gpus_per_worker": self.gpus_per_worker,
            "burst": self.burst,
            "interval": self.interval,
            "ttl_seconds_after_finished": self.ttl,
            "phases": self.phases,
            "restarted": self.restarted,
            "launch_seconds": sorted(self.running_latencies),
            "requests_per_job": self.requests / self.jobs,
            "writes_per_job": self.writes / self.jobs,
            "requests_per_job_by_verb_and_resource": {
                f"{verb} {resource}": count / self.jobs
                for (verb, resource), count in sorted(self.requests_by_kind.items())
            },
            "rss_mb": self.rss_mb,
            "peak_rss_mb": self.peak_rss_mb,
            "cpu_seconds": self.cpu_seconds,
            "wall_seconds": self.wall_seconds,
            "checks": [
                {"measure": m, "value": v, "target": t, "met": ok} for m, v, t, ok in self.checks()
            ],
            "passed": self.passed(),
        }


def print_table(result: ScaleResult) -> None:
    print(
        f"{result.jobs} AccelTrainJobs x {result.workers} workers x {result.gpus_per_worker} GPU, "
        f"bursts of {result.burst} every {result.interval:g} s, "
        + ("finished jobs kept" if result.ttl is None else f"ttlSecondsAfterFinished {result.ttl}")
    )
    print("| measure | value | target | pass |")
    print("|---|---:|---:|:---:|")
    for measure, value, target, met in result.checks():
        verdict = ("PASS" if met else "FAIL") if target != "-" else ""
        print(f"| {measure} | {value} | {target} | {verdict} |")
    print("| API requests per job: verb | resource | per job |")
    print("|---|---|---:|")
    for (verb, resource), count in sorted(
        result.requests_by_kind.items(), key=lambda item: -item[1]
    ):
        print(f"| {verb} | {resource} | {count / result.jobs:.2f} |")
    print(f"overall: {'PASS' if result.passed() else 'FAIL'}")


def final_phases(
    kube: KubeClient, namespace: str, launches: dict[str, Launch]
) -> tuple[dict[str, int], int]:
    """Phase counts of the benchmark's jobs, and how many needed more than one attempt.

    A job its TTL already deleted counts with the last phase the watch saw (Succeeded, or
    ``deleted`` if it was never seen to succeed)."""
    path = f"/apis/{api.API_VERSION}/namespaces/{namespace}/{api.PLURAL}"
    answer = kube.request("GET", path, verb="list", resource=api.PLURAL)
    phases: dict[str, int] = {}
    restarted_names = {name for name, launch in launches.items() if launch.restarted}
    listed = set()
    for item in answer.get("items") or []:
        name = item["metadata"]["name"]
        if name not in launches:
            continue
        listed.add(name)
        status = item.get("status") or {}
        phase = str(status.get("phase") or "none")
        phases[phase] = phases.get(phase, 0) + 1
        if restarted(status):
            restarted_names.add(name)
    for name in launches.keys() - listed:
        phase = "Succeeded" if launches[name].succeeded is not None else "deleted"
        phases[phase] = phases.get(phase, 0) + 1
    return phases, len(restarted_names)


def _succeeded(watcher: Watcher, launches: dict[str, Launch]) -> int:
    with watcher.lock:
        return sum(1 for launch in launches.values() if launch.succeeded)


def post_in_bursts(
    kube: KubeClient,
    watcher: Watcher,
    namespace: str,
    spec: dict[str, Any],
    launches: dict[str, Launch],
    *,
    burst: int,
    interval: float,
    progress: bool,
) -> float:
    """POSTs the jobs ``burst`` at a time every ``interval`` seconds; the time it took."""
    names = list(launches)

    def post(name: str) -> None:
        launches[name].posted = time.monotonic()
        post_job(kube, namespace, name, spec)

    started = time.monotonic()
    with ThreadPoolExecutor(POST_THREADS) as pool:
        for number, first in enumerate(range(0, len(names), burst)):
            # Open loop: a burst starts on its schedule however far the previous ones got.
            delay = started + number * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            list(pool.map(post, names[first : first + burst]))
            if progress:
                print(
                    f"  {time.monotonic() - started:6.1f} s: posted {first + burst:>5}/"
                    f"{len(names)}, {_succeeded(watcher, launches)} Succeeded",
                    flush=True,
                )
    return time.monotonic() - started


def wait_for_success(
    watcher: Watcher,
    launches: dict[str, Launch],
    started: float,
    *,
    timeout: float,
    progress: bool,
) -> float:
    """Waits until every job Succeeded or ``timeout`` passed; seconds from ``started`` to the
    last success (to now when none succeeded)."""
    deadline = time.monotonic() + timeout
    while (done := _succeeded(watcher, launches)) < len(launches):
        if time.monotonic() > deadline:
            break
        if progress:
            elapsed = time.monotonic() - started
            print(f"  {elapsed:6.1f} s: {done}/{len(launches)} Succeeded", flush=True)
        time.sleep(5)
    with watcher.lock:
        finished = [launch.succeeded for launch in launches.values() if launch.succeeded]
    return (max(finished) if finished else time.monotonic()) - started


def run(
    kube: KubeClient,
    watcher: Watcher,
    operator: Operator,
    namespace: str,
    *,
    jobs: int,
    workers: int,
    gpus: int,
    burst: int,
    interval: float,
    timeout: float,
    ttl: int | None = None,
    progress: bool = True,
) -> ScaleResult:
    requests_before = operator.counters()
    writes_before = sum(operator.writes().values())
    cpu_before = operator.cpu_seconds()
    spec = job_spec(workers, gpus)
    if ttl is not None:
        spec["runPolicy"]["ttlSecondsAfterFinished"] = ttl
    launches = {name: Launch(name, workers) for name in (f"scale-{i:05d}" for i in range(jobs))}
    with watcher.lock:
        watcher.launches.update(launches)

    started = time.monotonic()
    posting = post_in_bursts(
        kube, watcher, namespace, spec, launches, burst=burst, interval=interval, progress=progress
    )
    wall = wait_for_success(watcher, launches, started, timeout=timeout, progress=progress)
    # Let the last status patches and events land before reading the counters.
    time.sleep(2)
    phases, restarts = final_phases(kube, namespace, launches)
    requests_after = operator.counters()
    by_kind = {
        key: count - requests_before.get(key, 0.0)
        for key, count in requests_after.items()
        if count > requests_before.get(key, 0.0)
    }
    rss, peak = operator.rss_mib()
    return ScaleResult(
        jobs=jobs,
        workers=workers,
        gpus_per_worker=gpus,
        burst=burst,
        interval=interval,
        ttl=ttl,
        launches=list(launches.values()),
        phases=phases,
        restarted=restarts,
        requests=sum(by_kind.values()),
        writes=sum(operator.writes().values()) - writes_before,
        requests_by_kind=by_kind,
        rss_mb=rss * 1.048576,
        peak_rss_mb=peak * 1.048576,
        cpu_seconds=operator.cpu_seconds() - cpu_before,
        posting_seconds=posting,
        wall_seconds=wall,
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--kubeconfig", type=Path, help="use this running cluster")
    parser.add_argument("--jobs", type=_positive, default=1000, help="AccelTrainJobs (1000)")
    parser.add_argument("--workers", type=_positive, default=8, help="workers per job (8)")
    parser.add_argument("--gpus", type=_positive, default=1, help="GPUs per worker (1)")
    parser.add_argument("--burst", type=_positive, default=10, help="jobs per burst (10)")
    parser.add_argument(
        "--interval", type=float, default=10.0, help="seconds from one burst to the next (10)"
    )
    parser.add_argument(
        "--nodes", type=_positive, default=40, help="kwok nodes x 8 GPUs of an own cluster (40)"
    )
    parser.add_argument(
        "--timeout", type=float, default=1200.0, help="seconds to wait after the last burst"
    )
    parser.add_argument(
        "--ttl",
        type=int,
        default=60,
        help="ttlSecondsAfterFinished of every job (60): finished jobs and their pods go away, "
        "as on a cluster that runs jobs all day",
    )
    parser.add_argument(
        "--keep-finished",
        action="store_true",
        help="no TTL: every finished job keeps its pods until the run ends",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.ttl < 0:
        parser.error(f"--ttl {args.ttl}: must be >= 0 seconds")
    if args.interval < 0:
        parser.error(f"--interval {args.interval}: must be >= 0 seconds")

    with contextlib.ExitStack() as stack:
        kube, namespace, operator, watcher, log = start_session(
            stack,
            args.kubeconfig,
            nodes=args.nodes,
            prefix="scale",
            start_timeout=180,
        )
        result = run(
            kube,
            watcher,
            operator,
            namespace,
            jobs=args.jobs,
            workers=args.workers,
            gpus=args.gpus,
            burst=args.burst,
            interval=args.interval,
            timeout=args.timeout,
            ttl=None if args.keep_finished else args.ttl,
        )
        print(f"operator log: {log}")
        resumed = watcher.streams_opened() - len(watcher.threads)
        print(f"watch streams resumed after the API server closed them: {resumed}")
        print_table(result)
        if args.json:
            args.json.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return 0 if result.passed() else 1


if __name__ == "__main__":
    sys.exit(main())
