"""Benchmark: N tasks scoring the shards of one input against one local endpoint, N = 1, 2, 4.

Starts its own local stack pinned to CPU 1. By default its endpoint, model ``sum`` with no added
latency, is bound by that one core (it parses every CSV body in Python); ``--latency-ms``,
``--capacity`` and ``--model`` set another endpoint (e.g. ``--latency-ms 50 --capacity 16 --model
constant``, section (a) of bench_scoring.py). The input (``--rows`` rows of an int64 id and 20 float
features in 16 Parquet files of 2 row groups) is written to the local S3 by a separate process. For
each N, ``plan_shards`` cuts it into N shards, and N worker processes, pinned together to CPU 0 (all
CPUs with ``--unpinned``, as section (a)'s client), each score one shard with
``SageMakerBatchScoreOperator.build_job(map_index)`` and ``--concurrency`` slots (``--total-concurrency``
/ N with that option) into one output, as N mapped tasks on one worker machine would. The workers
import and plan first, then start together; the repeats interleave the N (1, 2, 4, 1, 2, 4, ...);
reported per N:

- rows/s over the endpoint's busy window (endpoint stats: rows_ok / busy_seconds) and over the wall
  time from the start signal to the last worker's exit;
- the workers' CPU seconds per 100k rows (user + system, from ``getrusage`` in each worker, its encoder
  child included), which gives one worker core's rate: 100k / (CPU seconds per 100k rows);
- the endpoint's CPU seconds over the run (its process tree, from /proc).

Every figure is printed with the load average (other jobs share this 2-core machine).

Run: ``.venv/bin/python bench/bench_shards.py [--rows 400000] [--repeats 2] [--tasks 1 2 4] [--concurrency 8]
[--total-concurrency N] [--latency-ms 0] [--capacity N] [--model sum] [--unpinned]``
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stack import REPO, LocalStackProcess, load, local_control, pin_self, s3_client

FILES, ROWS_PER_REQUEST = 16, 500
ALL_CPUS = os.sched_getaffinity(0)


def log(*parts: object) -> None:
    print(*parts, flush=True)


def _worker_main(argv: Sequence[str]) -> None:
    """One shard, scored by the operator's job once the parent writes a line to stdin."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--shard", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--map-index", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    args = parser.parse_args(argv)
    import logging

    from airflow_provider_smrt.operators.batch_score import SageMakerBatchScoreOperator

    logging.disable(logging.INFO)
    operator = SageMakerBatchScoreOperator(
        task_id="score",
        endpoint_name=args.endpoint,
        input_uri=json.loads(args.shard),
        output_uri=args.output,
        passthrough_columns=["id"],
        max_rows_per_request=ROWS_PER_REQUEST,
        concurrency=args.concurrency,
        progress_interval=3600.0,
    )
    job = operator.build_job(args.map_index)
    print("ready", flush=True)
    sys.stdin.readline()
    usage = (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)  # the encoder child, reaped by the run's end
    before = [resource.getrusage(who) for who in usage]
    summary = job.run()
    after = [resource.getrusage(who) for who in usage]
    cpu = sum((a.ru_utime - b.ru_utime) + (a.ru_stime - b.ru_stime) for a, b in zip(after, before, strict=True))
    print("RESULT " + json.dumps({"rows": summary["rows_scored"], "cpu_seconds": cpu}), flush=True)


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its children (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    pids.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    for member in pids:
        try:
            fields = (Path("/proc") / str(member) / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def run_tasks(
    stack: LocalStackProcess,
    endpoint: str,
    input_uri: str,
    output: str,
    tasks: int,
    storage: Any,
    *,
    concurrency: int,
    total_concurrency: int | None,
    pinned: bool,
) -> dict[str, Any]:
    from airflow_provider_smrt.scoring.shards import plan_shards

    shards = plan_shards(storage, input_uri, tasks)
    workers = []
    for index, shard in enumerate(shards):
        workers.append(
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "_worker",
                    "--shard",
                    json.dumps(shard),
                    "--output",
                    output,
                    "--endpoint",
                    endpoint,
                    "--map-index",
                    str(index),
                    "--concurrency",
                    str(max(1, total_concurrency // len(shards)) if total_concurrency else concurrency),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=REPO,
                # The parent is pinned to CPU 0 and a child inherits that: set the workers' CPUs either way.
                preexec_fn=functools.partial(os.sched_setaffinity, 0, {0} if pinned else ALL_CPUS),
            )
        )
    for worker in workers:
        assert worker.stdout is not None
        while (line := worker.stdout.readline()) and line.strip() != "ready":
            pass
        assert line, f"a worker exited before it was ready ({worker.wait()})"
    local_control.reset_stats(stack.runtime_endpoint_url, endpoint)
    stack_pid = stack.process.pid if stack.process is not None else os.getpid()
    endpoint_cpu = tree_cpu_seconds(stack_pid)
    started = time.perf_counter()
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    results = []
    for worker in workers:
        out, _ = worker.communicate(timeout=1800)
        assert worker.returncode == 0, f"a worker failed with {worker.returncode}"
        results.append(json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:]))
    wall = time.perf_counter() - started
    endpoint_cpu = tree_cpu_seconds(stack_pid) - endpoint_cpu
    stats = local_control.endpoint_stats(stack.runtime_endpoint_url, endpoint)
    rows = sum(result["rows"] for result in results)
    cpu = sum(result["cpu_seconds"] for result in results)
    return {
        "tasks": len(shards),
        "rows": rows,
        "busy_rate": stats["rows_ok"] / max(stats["busy_seconds"], 1e-9),
        "wall_rate": rows / wall,
        "worker_cpu_per_100k": cpu / rows * 100_000,
        "endpoint_cpu_per_100k": endpoint_cpu / rows * 100_000,
        "peak_in_flight": stats["max_concurrent"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tasks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--concurrency", type=int, default=8, help="slots of each task")
    parser.add_argument(
        "--total-concurrency", type=int, help="slots of all tasks together instead (each task: this / N)"
    )
    parser.add_argument("--latency-ms", type=float, default=0.0, help="the endpoint's service time")
    parser.add_argument("--capacity", type=int, help="the endpoint's capacity (default: unlimited)")
    parser.add_argument("--model", default="sum", help="the endpoint's model (sum parses every body)")
    parser.add_argument("--unpinned", action="store_true", help="workers on every CPU (default: CPU 0)")
    args = parser.parse_args()
    import bench_scoring

    from airflow_provider_smrt.scoring.storage import Storage

    slots = f"{args.total_concurrency} in all" if args.total_concurrency else f"{args.concurrency} per task"
    log(
        f"bench_shards: {args.rows} rows, {FILES} files, {ROWS_PER_REQUEST} rows/request, concurrency {slots}, "
        f"model {args.model}, latency {args.latency_ms} ms, capacity {args.capacity}, "
        f"workers {'on every CPU' if args.unpinned else 'on CPU 0'}"
    )
    log(f"start: {load()}")
    with LocalStackProcess(cpus={1}) as stack:
        pin_self({0})
        faults: dict[str, Any] = {"latency_ms": args.latency_ms}
        if args.capacity:
            faults["capacity"] = args.capacity
        endpoint = local_control.put_endpoint(stack.runtime_endpoint_url, model=args.model, faults=faults)
        prefix = f"s3://smrt-local/bench-shards-{uuid.uuid4().hex[:8]}/"
        rows_per_file = args.rows // FILES
        bench_scoring.run_generator(
            Path(f"/tmp/smrt-bench-shards-{os.getpid()}"),
            files=FILES,
            rows_per_file=rows_per_file,
            row_group=rows_per_file // 2,
            s3_prefix=prefix + "in/",
        )
        storage = Storage(s3_client=s3_client(stack.s3_endpoint_url))
        log("tasks  rows/s (endpoint busy)  rows/s (wall)  worker CPU s/100k  endpoint CPU s/100k  peak in flight")
        for repeat in range(args.repeats):
            for tasks in args.tasks:
                output = f"{prefix}out-{tasks}-{repeat}/"
                result = run_tasks(
                    stack,
                    endpoint,
                    prefix + "in/",
                    output,
                    tasks,
                    storage,
                    concurrency=args.concurrency,
                    total_concurrency=args.total_concurrency,
                    pinned=not args.unpinned,
                )
                log(
                    f"{result['tasks']:>5}  {result['busy_rate']:>21,.0f}  {result['wall_rate']:>13,.0f}  "
                    f"{result['worker_cpu_per_100k']:>17.2f}  {result['endpoint_cpu_per_100k']:>19.2f}  "
                    f"{result['peak_in_flight']:>14}  {load()}"
                )
    log(f"end: {load()}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        _worker_main(sys.argv[2:])
    else:
        main()
