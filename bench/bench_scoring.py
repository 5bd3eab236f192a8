"""Benchmark of SageMakerBatchScoreOperator and the scoring core against its peers, on the local stack.

Starts its own local stack (pinned to CPU 1). Every comparison is paired and interleaved in one run:
round after round, each peer runs once on the same data against the same endpoint (operator, loop,
..., operator, loop, ...), and the summary gives the medians of the rounds' paired ratios, so a load
that drifts (other jobs share this 2-core machine) hits every peer alike. Each run reports rows/s
over the endpoint's busy window (endpoint stats: rows_ok / busy_seconds, first request in to last
response out), wall time, and the client's CPU seconds per 100k rows *inside* that window. The peers
(``_measure.py``): the operator, the hand-written 16-thread boto3 loop, the same loop on aiobotocore
(asyncio), the sequential loop of a plain ``PythonOperator`` (the floor), and two ceilings (bodies
encoded before the window, then only the calls): through boto3's client, and through the hook's lean
transport, the operator's own (no client on that transport does less work per request).

a. endpoint-bound: endpoint ``latency_ms=50``, ``capacity=16``, model ``constant`` (answers without
   parsing, so the server's CPU is little more than HTTP, as a remote endpoint's would be for the
   client's machine); 400k rows x 20 float features + an int64 id, Parquet on the local S3 (16 files
   of 2 row groups, written by a separate process before timing); 500 rows per request,
   concurrency 16. Targets: operator >= 0.85 of the ideal 16 x 500 / 0.05 s = 160k rows/s, >= 1.05x
   the boto3 loop, client CPU per 100k rows <= the loop's.
a2. client-bound: the same at zero service time (200k rows). Target: >= 1.3x the boto3 loop.
b. client CPU-bound on one core: zero latency, model ``constant`` (as in (a): parsing 2,000 rows of 20
   floats per request, ``sum`` would hold the stack's core at 90-95% and cap the rate below what the
   client's core gives), the scoring core (``ScoringJob`` with the hook's invoker, local Parquet in and
   out) and the boto3 loop, paired, in a child process pinned to ONE core (CPU 0; the stack on CPU 1);
   concurrency 8/16 x 500/2000 rows per request;
   per-thread CPU of the best configuration, and a cProfile of it with ``--profile``. Target:
   >= 300k rows/s.
c. peak RSS for 1M vs 10M rows: local Parquet in (files of 1M rows, row groups of 128k rows,
   written by a separate process), local output directory, zero latency, operator defaults; each
   run in a fresh subprocess whose process tree's ``VmRSS`` is sampled from ``/proc`` every 50 ms.
   Target: growth < 64 MB.
d. ``docs/performance-throughput.png``: rows/s against concurrency (1..64, latency 50 ms,
   capacity 64), operator and boto3 loop paired at each level, beside the ideal (needs matplotlib).
   Target: at 32 and 64 the operator is not below the loop.

Every figure is printed with the load average at the time. ``--json PATH`` also writes the summaries.

Run: ``.venv/bin/python bench/bench_scoring.py [--quick] [--only abcd] [--rounds N] [--profile] [--json PATH]``
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import (
    AIO,
    BUCKET,
    CEILING,
    FEATURES,
    IN_TASK,
    LEAN_CEILING,
    LOOP,
    OPERATOR,
    SEQUENTIAL,
    ThreadCpu,
    WallSampler,
    hand_loop,
    log,
    loop_peer,
    measure_run,
    operator_peer,
    paired_median,
    paired_rounds,
    quiet_logs,
    read_tables,
    run_operator,
    summarize,
    tree_rss_bytes,
)
from _stack import REPO, LocalStackProcess, load, local_control, runtime_client, s3_client

CLIENT_CPU = {0}
STACK_CPU = {1}
PLOT_PATH = REPO / "docs" / "performance-throughput.png"


# ---------------------------------------------------------------------------------------------
# Data generation (run as a separate process: `bench_scoring.py _gen ...`)


def generate(
    *, directory: Path, files: int, rows_per_file: int, row_group: int, seed: int = 0, first_id: int = 0
) -> list[Path]:
    """Write ``files`` Parquet files of ``rows_per_file`` rows (int64 ``id`` + 20 float64 features)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    next_id = first_id
    for index in range(files):
        path = directory / f"part-{index:04d}.parquet"
        writer = None
        for start in range(0, rows_per_file, row_group):
            n = min(row_group, rows_per_file - start)
            columns = {"id": pa.array(np.arange(next_id, next_id + n, dtype=np.int64))}
            next_id += n
            matrix = rng.normal(size=(len(FEATURES), n))
            for name, values in zip(FEATURES, matrix, strict=True):
                columns[name] = pa.array(values)
            table = pa.table(columns)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, compression="snappy")
            writer.write_table(table, row_group_size=row_group)
        assert writer is not None
        writer.close()
        paths.append(path)
    return paths


def _gen_main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--files", type=int, required=True)
    parser.add_argument("--rows-per-file", type=int, required=True)
    parser.add_argument("--row-group", type=int, required=True)
    parser.add_argument("--s3-prefix", help="upload the files here (then delete the local copies)")
    args = parser.parse_args(argv)
    paths = generate(directory=args.dir, files=args.files, rows_per_file=args.rows_per_file, row_group=args.row_group)
    if args.s3_prefix:
        s3 = s3_client(os.environ["SMRT_S3_ENDPOINT_URL"])
        bucket, prefix = args.s3_prefix[5:].split("/", 1)
        for path in paths:
            s3.upload_file(str(path), bucket, prefix + path.name)
            path.unlink()


def run_generator(
    directory: Path, *, files: int, rows_per_file: int, row_group: int, s3_prefix: str | None = None
) -> None:
    cmd = [
        sys.executable,
        __file__,
        "_gen",
        "--dir",
        str(directory),
        "--files",
        str(files),
        "--rows-per-file",
        str(rows_per_file),
        "--row-group",
        str(row_group),
    ]
    if s3_prefix:
        cmd += ["--s3-prefix", s3_prefix]
    subprocess.run(cmd, check=True)


# ---------------------------------------------------------------------------------------------
# Section a


def profile_operator(url: str, endpoint: str, inputs: list[str], *, concurrency: int, stack_pid: int) -> None:
    """One more operator run under the wall-clock stack sampler, with the pipeline's in-flight count."""
    import airflow_provider_smrt.scoring.pipeline as pipeline_module

    captured: list[Any] = []
    original = pipeline_module.Pipeline.__init__

    def capture(self: Any, *args: Any, **kwargs: Any) -> None:  # bench-only instrumentation
        original(self, *args, **kwargs)
        captured.append(self)

    def gauge() -> tuple[int, int] | None:
        if not captured:
            return None
        pipeline = captured[-1]
        return pipeline.limiter.in_flight, pipeline.buffer._value

    pipeline_module.Pipeline.__init__ = capture  # type: ignore[method-assign]
    try:
        with WallSampler(gauge=gauge) as sampler:
            peer = operator_peer(endpoint, inputs, rows_per_request=500, concurrency=concurrency)
            run = measure_run(url, endpoint, peer, stack_pid=stack_pid)
    finally:
        pipeline_module.Pipeline.__init__ = original  # type: ignore[method-assign]
    in_flight = [g[0] for g in sampler.gauges]
    log(
        f"\n### a. profile: operator run under a wall-clock stack sampler (5 ms): {run['busy_rate']:,.0f} rows/s; "
        f"requests in flight: mean {statistics.mean(in_flight):.1f} of {concurrency}, below {concurrency} "
        f"{sum(v < concurrency for v in in_flight) / len(in_flight):.0%} of the time; free buffer slots mean "
        f"{statistics.mean(g[1] for g in sampler.gauges):.1f} of {2 * concurrency + 2}; {run['load']}\n```"
    )
    log(sampler.report())
    log("```")


def peers_for(url: str, endpoint: str, inputs: list[str], s3: Any, *, concurrency: int) -> dict[str, Callable[[], int]]:
    """The seven peers of section (a); the sequential floor scores only the first input (it is slow)."""
    peers = {
        OPERATOR: operator_peer(endpoint, inputs, rows_per_request=500, concurrency=concurrency),
        IN_TASK: operator_peer(endpoint, inputs, rows_per_request=500, concurrency=concurrency, encode_processes=0),
    }
    for kind in (LOOP, AIO, SEQUENTIAL, CEILING, LEAN_CEILING):
        peers[kind] = loop_peer(
            kind,
            url,
            endpoint,
            inputs[:1] if kind == SEQUENTIAL else inputs,
            s3,
            rows_per_request=500,
            concurrency=concurrency,
        )
    return peers


def section_a(
    url: str, inputs: list[str], s3: Any, *, stack_pid: int, rounds: int, profile: bool = False
) -> dict[str, Any]:
    ideal = 16 * 500 / 0.05
    endpoint = local_control.put_endpoint(url, model="constant", faults={"latency_ms": 50, "capacity": 16})
    results = paired_rounds(
        url, endpoint, peers_for(url, endpoint, inputs, s3, concurrency=16), rounds=rounds, stack_pid=stack_pid
    )
    rows = results[OPERATOR][0]["rows"]
    bound = summarize(
        results,
        ideal=ideal,
        title=(
            f"## a. Endpoint-bound: latency 50 ms, capacity 16, 500 rows/request, concurrency 16 ({rows:,} rows; "
            f"the sequential loop {results[SEQUENTIAL][0]['rows']:,}), model `constant`, {rounds} paired rounds"
        ),
    )
    if profile:
        profile_operator(url, endpoint, inputs, concurrency=16, stack_pid=stack_pid)

    half = inputs[: max(1, len(inputs) // 2)]
    endpoint = local_control.put_endpoint(url, model="constant", faults={"latency_ms": 0, "capacity": 16})
    results = paired_rounds(
        url, endpoint, peers_for(url, endpoint, half, s3, concurrency=16), rounds=rounds, stack_pid=stack_pid
    )
    rows = results[OPERATOR][0]["rows"]
    client = summarize(
        results,
        ideal=None,
        title=(
            f"## a2. Client-bound: zero service time, capacity 16, 500 rows/request, concurrency 16 ({rows:,} rows; "
            f"the sequential loop {results[SEQUENTIAL][0]['rows']:,}), model `constant`, {rounds} paired rounds"
        ),
    )
    return {"endpoint_bound": bound, "client_bound": client}


# ---------------------------------------------------------------------------------------------
# Section b (runs in a child pinned to one core)


def _cpu_child_main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--inputs", nargs="+", required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--rows-per-request", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    quiet_logs()

    from airflow_provider_smrt.hooks.sagemaker_runtime import SageMakerRuntimeHook
    from airflow_provider_smrt.scoring.job import ScoringConfig, ScoringJob
    from airflow_provider_smrt.scoring.storage import Storage

    url = os.environ["SMRT_RUNTIME_ENDPOINT_URL"]
    stack_pid = int(os.environ["BENCH_STACK_PID"])
    endpoint = local_control.put_endpoint(url, model="constant", faults={"latency_ms": 0})

    def job_for(concurrency: int, rows_per_request: int, inputs: Sequence[str] | None = None) -> ScoringJob:
        hook = SageMakerRuntimeHook(aws_conn_id="aws_default", max_pool_connections=concurrency + 2)
        config = ScoringConfig(
            endpoint_name=endpoint,
            input_uri=list(inputs or args.inputs),
            output_uri=str(args.workdir / f"out-{uuid.uuid4().hex[:8]}"),
            passthrough_columns=["id"],
            max_rows_per_request=rows_per_request,
            concurrency=concurrency,
        )
        invoke = hook.make_invoker(endpoint, content_type="text/csv", accept="text/csv")
        return ScoringJob(config=config, invoke=invoke, storage=Storage(), progress_interval=3600)

    def measure(run: Callable[[], int]) -> dict[str, Any]:
        result = measure_run(url, endpoint, run, stack_pid=stack_pid)
        cpu, busy = result["cpu"], result["busy"]
        result.update(
            wall_rate=result["rows"] / result["wall"],
            client_util=cpu["client"] / busy,
            stack_util=(cpu["endpoint"] + cpu["moto"]) / busy,
        )
        return result

    def run_job(concurrency: int, rows_per_request: int) -> Callable[[], int]:
        def run() -> int:
            summary = job_for(concurrency, rows_per_request).run()
            return int(summary["rows_scored"])

        return run

    tables = read_tables(args.inputs, None)

    def run_hand(concurrency: int, rows_per_request: int) -> Callable[[], int]:
        def run() -> int:
            client = runtime_client(url, max_pool_connections=concurrency + 2)
            return int(
                hand_loop(tables, client, endpoint, rows_per_request=rows_per_request, concurrency=concurrency).num_rows
            )

        return run

    # warm up (imports, connection, code paths)
    job_for(4, 500, args.inputs[:1]).run()
    run_hand(4, 500)()
    results = []
    for round_index in range(args.repeats):  # paired: each configuration's core run, then its loop run
        for rows_per_request in args.rows_per_request:
            for concurrency in args.concurrency:
                for kind, make in (("core", run_job), ("hand", run_hand)):
                    result = measure(make(concurrency, rows_per_request))
                    result.update(
                        kind=kind, round=round_index, concurrency=concurrency, rows_per_request=rows_per_request
                    )
                    results.append(result)
                    print(json.dumps(result), flush=True)

    # Per-thread CPU of the best core configuration (by median rate).
    def median_rate(config: tuple[int, int]) -> float:
        return statistics.median(
            r["busy_rate"]
            for r in results
            if r["kind"] == "core" and (r["concurrency"], r["rows_per_request"]) == config
        )

    configs = {(r["concurrency"], r["rows_per_request"]) for r in results}
    top_concurrency, top_rpr = max(configs, key=median_rate)
    top = {"concurrency": top_concurrency, "rows_per_request": top_rpr}
    with ThreadCpu() as sampler:
        result = measure(run_job(top["concurrency"], top["rows_per_request"]))
    roles = sampler.by_role()
    total = sum(roles.values())
    print(
        json.dumps(
            {
                "kind": "threads",
                "concurrency": top["concurrency"],
                "rows_per_request": top["rows_per_request"],
                "rows": result["rows"],
                "roles": {k: v / result["rows"] * 1e5 for k, v in roles.items()},
                "total_per_100k": total / result["rows"] * 1e5,
                "busy_rate": result["busy_rate"],
            }
        ),
        flush=True,
    )

    if args.profile:
        profiles: list[cProfile.Profile] = []
        lock = threading.Lock()

        def start_thread_profile(frame: Any, event: str, arg: Any) -> None:
            profile = cProfile.Profile(time.thread_time)  # CPU time of this thread, not wall time
            with lock:
                profiles.append(profile)
            sys.setprofile(None)
            profile.enable()

        main_profile = cProfile.Profile(time.thread_time)
        threading.setprofile(start_thread_profile)
        main_profile.enable()
        job_for(top["concurrency"], top["rows_per_request"]).run()
        main_profile.disable()
        threading.setprofile(None)  # type: ignore[arg-type]
        time.sleep(0.5)
        out = io.StringIO()
        stats = pstats.Stats(main_profile, stream=out)
        for profile in profiles:
            with contextlib.suppress(Exception):
                stats.add(profile)
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats("airflow_provider_smrt", 40)
        print("PROFILE-BEGIN\n" + out.getvalue() + "\nPROFILE-END", flush=True)


def section_b(
    inputs: list[str], workdir: Path, stack: LocalStackProcess, *, quick: bool, rounds: int, profile: bool
) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "_cpu", "--workdir", str(workdir), "--inputs", *inputs]
    cmd += ["--repeats", str(rounds)]
    if quick:
        cmd += ["--concurrency", "16"]
    if profile:
        cmd += ["--profile"]
    env = {**os.environ, "BENCH_STACK_PID": str(stack.process.pid if stack.process else 0)}
    child = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, text=True, env=env, preexec_fn=lambda: os.sched_setaffinity(0, CLIENT_CPU)
    )
    assert child.stdout is not None
    results: list[dict[str, Any]] = []
    profile_text: list[str] = []
    in_profile = False
    for line in child.stdout:
        if line.startswith("PROFILE-BEGIN"):
            in_profile = True
            continue
        if line.startswith("PROFILE-END"):
            in_profile = False
            continue
        if in_profile:
            profile_text.append(line)
            continue
        if line.startswith("{"):
            results.append(json.loads(line))
    if child.wait() != 0:
        raise RuntimeError(f"the CPU-bound child failed with {child.returncode}")
    rows = results[0]["rows"]
    log(
        f"\n## b. Client CPU-bound: zero latency, model `constant`, client on ONE core (CPU 0), stack on CPU 1 "
        f"({rows:,} rows/run), {rounds} paired rounds (scoring core, then boto3 loop, per configuration)"
    )
    log(
        "| round | run | concurrency | rows/request | rows/s (busy window) | rows/s (wall) | client CPU s / 100k rows "
        "| client core use | stack core use | load |"
    )
    log("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if r["kind"] not in ("core", "hand"):
            continue
        label = "scoring core" if r["kind"] == "core" else "boto3 loop"
        log(
            f"| {r['round'] + 1} | {label} | {r['concurrency']} | {r['rows_per_request']} | {r['busy_rate']:,.0f} | "
            f"{r['wall_rate']:,.0f} | {r['cpu_per_100k']:.3f} | {r['client_util']:.0%} | {r['stack_util']:.0%} | "
            f"{r['load']} |"
        )
    configs = sorted({(r["concurrency"], r["rows_per_request"]) for r in results if r["kind"] == "core"})
    log(f"\nmedians over {rounds} rounds; ratios are medians of the rounds' paired ratios (core / loop):")
    log(
        "| concurrency | rows/request | core rows/s | loop rows/s | core / loop | core CPU s/100k | loop CPU s/100k "
        "| core / loop, CPU per row | core stack use |"
    )
    log("|---|---|---|---|---|---|---|---|---|")
    summary = []
    for concurrency, rpr in configs:

        def pick(kind: str, c: int = concurrency, n: int = rpr) -> list[dict[str, Any]]:
            return [r for r in results if r["kind"] == kind and (r["concurrency"], r["rows_per_request"]) == (c, n)]

        runs = {"core": pick("core"), "hand": pick("hand")}
        row = {
            "concurrency": concurrency,
            "rows_per_request": rpr,
            "core": statistics.median(r["busy_rate"] for r in runs["core"]),
            "hand": statistics.median(r["busy_rate"] for r in runs["hand"]),
            "ratio": paired_median(runs, "busy_rate", "core", "hand"),
            "core_cpu": statistics.median(r["cpu_per_100k"] for r in runs["core"]),
            "hand_cpu": statistics.median(r["cpu_per_100k"] for r in runs["hand"]),
            "cpu_ratio": paired_median(runs, "cpu_per_100k", "core", "hand"),
            "stack_util": statistics.median(r["stack_util"] for r in runs["core"]),
        }
        summary.append(row)
        log(
            f"| {concurrency} | {rpr} | {row['core']:,.0f} | {row['hand']:,.0f} | {row['ratio']:.2f} | "
            f"{row['core_cpu']:.3f} | {row['hand_cpu']:.3f} | {row['cpu_ratio']:.2f} | {row['stack_util']:.0%} |"
        )
    top = max(summary, key=lambda r: r["core"])
    verdict = "MET" if top["core"] >= 300_000 else "MISSED"
    log(
        f"\nbest scoring core (median): {top['core']:,.0f} rows/s (busy window) at concurrency {top['concurrency']}, "
        f"{top['rows_per_request']} rows/request, {top['core_cpu']:.3f} client CPU s/100k rows "
        f"(= {1e5 / top['core_cpu']:,.0f} rows/s per full client core) -> target >= 300k rows/s: {verdict}"
    )
    threads = next((r for r in results if r["kind"] == "threads"), None)
    if threads:
        log(
            f"\nper-thread client CPU of the best core configuration (concurrency {threads['concurrency']}, "
            f"{threads['rows_per_request']} rows/request), CPU s per 100k rows:"
        )
        for role, value in sorted(threads["roles"].items(), key=lambda kv: -kv[1]):
            log(f"| {role} | {value:.3f} | {value / threads['total_per_100k']:.0%} |")
        log(f"| total (threads sampled) | {threads['total_per_100k']:.3f} | |")
    if profile_text:
        log("\n### cProfile (per-thread CPU time, all threads merged) of the best configuration\n```")
        log("".join(profile_text).rstrip())
        log("```")
    return {"best": top, "configs": summary}


# ---------------------------------------------------------------------------------------------
# Section c (each run in a fresh subprocess)


def _mem_child_main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--endpoint", required=True)
    args = parser.parse_args(argv)
    quiet_logs()
    summary = run_operator(args.endpoint, [args.input], args.output, rows_per_request=None, concurrency=8)
    with open("/proc/self/status") as fh:
        hwm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
    import pyarrow as pa

    pool = pa.default_memory_pool()
    doc = {
        "rows": summary["rows_scored"],
        "elapsed": summary["elapsed_seconds"],
        "vm_hwm": hwm,
        "arrow_pool": pool.backend_name,
        "arrow_max": pool.max_memory(),
    }
    print(json.dumps(doc), flush=True)


def run_memory(input_dir: Path, output_dir: Path, endpoint: str) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "_mem",
        "--input",
        str(input_dir),
        "--output",
        str(output_dir),
        "--endpoint",
        endpoint,
    ]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    peak = 0
    samples = 0
    timeline: list[int] = []
    while child.poll() is None:
        rss = tree_rss_bytes(child.pid)
        peak = max(peak, rss)
        timeline.append(rss)
        samples += 1
        time.sleep(0.05)
    out = child.stdout.read() if child.stdout else ""
    if child.returncode != 0:
        raise RuntimeError(f"the memory child failed with {child.returncode}")
    doc = json.loads(out.strip().splitlines()[-1])
    marks = (
        [timeline[min(len(timeline) - 1, int(len(timeline) * q))] for q in (0.25, 0.5, 0.75, 0.95)] if timeline else []
    )
    doc.update(peak_rss=peak, samples=samples, load=load(), marks=marks)
    return doc


def section_c(url: str, workdir: Path, *, quick: bool) -> dict[str, Any]:
    small_files, large_files = (1, 10) if not quick else (1, 5)
    rows_per_file = 1_000_000 if not quick else 100_000
    row_group = 131_072 if not quick else 65_536
    small, large = workdir / "mem-small", workdir / "mem-large"
    run_generator(small, files=small_files, rows_per_file=rows_per_file, row_group=row_group)
    run_generator(large, files=large_files, rows_per_file=rows_per_file, row_group=row_group)
    endpoint = local_control.put_endpoint(url, model="sum", faults={"latency_ms": 0})
    runs = {}
    for label, directory in (("small", small), ("large", large)):
        out = workdir / f"mem-out-{label}"
        runs[label] = run_memory(directory, out, endpoint)
        shutil.rmtree(out, ignore_errors=True)
    s, big = runs["small"], runs["large"]
    growth = big["peak_rss"] - s["peak_rss"]
    log(
        f"\n## c. Peak RSS (process tree VmRSS sampled every 50 ms), operator defaults (concurrency 8, payload limit "
        f"5 MiB), zero latency, local Parquet (files of {rows_per_file:,} rows, row groups {row_group:,}) "
        "to a local directory"
    )
    log(
        "| rows | files | peak VmRSS MB (sampled) | VmHWM MB (child, at exit) "
        "| VmRSS MB at 25/50/75/95% of the run | Arrow pool peak MB | job s | load |"
    )
    log("|---|---|---|---|---|---|---|---|")
    for label, files in (("small", small_files), ("large", large_files)):
        r = runs[label]
        log(
            f"| {r['rows']:,} | {files} | {r['peak_rss'] / 2**20:.0f} | {r['vm_hwm'] / 2**20:.0f} | "
            f"{' / '.join(f'{m / 2**20:.0f}' for m in r['marks'])} | "
            f"{r['arrow_max'] / 2**20:.0f} ({r['arrow_pool']}) | {r['elapsed']:.1f} | {r['load']} |"
        )
    verdict = "MET" if growth < 64 * 2**20 else "MISSED"
    if quick:
        verdict += " (quick run: the small run is below one work unit and does not reach steady state; not comparable)"
    log(
        f"\ngrowth: {growth / 2**20:+.0f} MB (VmHWM: {(big['vm_hwm'] - s['vm_hwm']) / 2**20:+.0f} MB) "
        f"-> target < 64 MB: {verdict}"
    )
    shutil.rmtree(small, ignore_errors=True)
    shutil.rmtree(large, ignore_errors=True)
    return {"runs": runs, "growth": growth}


# ---------------------------------------------------------------------------------------------
# Section d


def section_d(
    url: str, all_inputs: list[str], rows_per_file: int, s3: Any, *, quick: bool, rounds: int, stack_pid: int
) -> dict[str, Any]:
    endpoint = local_control.put_endpoint(url, model="constant", faults={"latency_ms": 50, "capacity": 64})
    levels = [1, 2, 4, 8, 16, 32, 64] if not quick else [16, 32, 64]
    seconds = 1.5 if not quick else 0.5
    peers: dict[int, dict[str, Callable[[], int]]] = {}
    for concurrency in levels:
        files = max(1, min(len(all_inputs), round(concurrency * 500 / 0.05 * seconds / rows_per_file)))
        inputs = all_inputs[:files]
        peers[concurrency] = {
            OPERATOR: operator_peer(endpoint, inputs, rows_per_request=500, concurrency=concurrency),
            LOOP: loop_peer(LOOP, url, endpoint, inputs, s3, rows_per_request=500, concurrency=concurrency),
        }
        for run in peers[concurrency].values():
            run()  # warm-up
    # Interleaved: each round walks every level, operator then loop.
    results: dict[int, dict[str, list[dict[str, Any]]]] = {c: {OPERATOR: [], LOOP: []} for c in levels}
    for _ in range(rounds):
        for concurrency in levels:
            for label, run in peers[concurrency].items():
                results[concurrency][label].append(measure_run(url, endpoint, run, stack_pid=stack_pid))
    points = []
    for concurrency in levels:
        runs = results[concurrency]
        points.append(
            {
                "concurrency": concurrency,
                "ideal": concurrency * 500 / 0.05,
                "rows": runs[OPERATOR][0]["rows"],
                "operator": statistics.median(r["busy_rate"] for r in runs[OPERATOR]),
                "hand": statistics.median(r["busy_rate"] for r in runs[LOOP]),
                "ratio": paired_median(runs, "busy_rate", OPERATOR, LOOP),
                "cpu_ratio": paired_median(runs, "cpu_per_100k", OPERATOR, LOOP),
                "operator_cpu": statistics.median(r["cpu_per_100k"] for r in runs[OPERATOR]),
                "hand_cpu": statistics.median(r["cpu_per_100k"] for r in runs[LOOP]),
                "load": runs[LOOP][-1]["load"],
            }
        )
    log(
        f"\n## d. Rows/s (busy window) against concurrency: latency 50 ms, capacity 64, 500 rows/request, "
        f"model `constant`; medians of {rounds} paired rounds"
    )
    log(
        "| concurrency | rows | ideal | operator | operator / ideal | boto3 loop | operator / loop (paired) "
        "| client CPU s / 100k rows: operator / loop | load |"
    )
    log("|---|---|---|---|---|---|---|---|---|")
    for p in points:
        log(
            f"| {p['concurrency']} | {p['rows']:,} | {p['ideal']:,.0f} | {p['operator']:,.0f} | "
            f"{p['operator'] / p['ideal']:.2f} | {p['hand']:,.0f} | {p['ratio']:.2f} | "
            f"{p['operator_cpu']:.3f} / {p['hand_cpu']:.3f} | {p['load']} |"
        )
    return {"points": points, "plot": write_plot(points, rounds)}


def write_plot(points: list[dict[str, Any]], rounds: int) -> str | None:
    """``docs/performance-throughput.png`` from section (d)'s points (None without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("\nmatplotlib is not installed: no plot (pip install matplotlib)")
        return None
    xs = [p["concurrency"] for p in points]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.plot(xs, [p["ideal"] / 1000 for p in points], "k--", label="ideal (concurrency x 500 rows / 50 ms)")
    ax.plot(xs, [p["hand"] / 1000 for p in points], "s-", color="tab:gray", label="hand-written boto3 loop")
    ax.plot(xs, [p["operator"] / 1000 for p in points], "o-", color="tab:orange", label="SageMakerBatchScoreOperator")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("concurrency (requests in flight)")
    ax.set_ylabel("thousand rows/s (endpoint busy window)")
    ax.set_title(
        "Local endpoint, latency 50 ms, capacity 64, 500 rows/request, 20 float features, CSV;\n"
        f"medians of {rounds} paired rounds; shared 2-core machine, {points[-1]['load']} at the end",
        fontsize=9,
    )
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(loc="upper left")
    fig.tight_layout()
    PLOT_PATH.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT_PATH)
    log(f"\nplot written to {PLOT_PATH.relative_to(REPO)}")
    return str(PLOT_PATH)


# ---------------------------------------------------------------------------------------------


def verdicts(out: dict[str, Any]) -> None:
    """The issue's targets, met or not, from this run's summaries."""
    rows: list[tuple[str, str, str]] = []
    if "a" in out:
        bound, client = out["a"]["endpoint_bound"]["peers"], out["a"]["client_bound"]["peers"]
        vs_ideal = bound[OPERATOR]["rate"] / 160_000
        rows.append(("operator, 50 ms: x ideal 160k rows/s", ">= 0.85", f"{vs_ideal:.2f}"))
        rows.append(("operator, 50 ms: / boto3 loop (paired)", ">= 1.05", f"{bound[LOOP]['ratio']:.2f}"))
        rows.append(
            (
                "(the lean ceiling, 50 ms: x ideal)",
                "-",
                f"{bound[LEAN_CEILING]['rate'] / 160_000:.2f} "
                f"(operator / it, paired {bound[LEAN_CEILING]['ratio']:.2f})",
            )
        )
        rows.append(
            (
                "operator, 50 ms: client CPU s / 100k rows",
                f"<= loop's {bound[LOOP]['cpu_per_100k']:.3f}",
                f"{bound[OPERATOR]['cpu_per_100k']:.3f} (paired ratio {bound[LOOP]['cpu_ratio']:.2f})",
            )
        )
        rows.append(("operator, zero service time: / boto3 loop (paired)", ">= 1.3", f"{client[LOOP]['ratio']:.2f}"))
    if "b" in out:
        rows.append(("scoring core, one core, zero latency: rows/s", ">= 300,000", f"{out['b']['best']['core']:,.0f}"))
    if "d" in out:
        for p in out["d"]["points"]:
            if p["concurrency"] in (32, 64):
                rows.append(
                    (f"operator / loop at concurrency {p['concurrency']} (paired)", ">= 1.00", f"{p['ratio']:.2f}")
                )
    if not rows:
        return
    log("\n## Targets")
    log("| target | wanted | measured |")
    log("|---|---|---|")
    for row in rows:
        log("| " + " | ".join(row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run (fewer rows, levels and rounds)")
    parser.add_argument("--only", default="abcd", help="sections to run (default abcd)")
    parser.add_argument("--rounds", type=int, help="paired rounds per comparison (default 5, quick 3)")
    parser.add_argument("--json", type=Path, help="also write the summaries here")
    parser.add_argument("--plot-from", type=Path, help="only redraw the plot from a --json file of an earlier run")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile (all threads) the best CPU-bound configuration"
    )
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 5)
    if args.plot_from:
        saved = json.loads(args.plot_from.read_text())
        write_plot(saved["d"]["points"], saved["rounds"])
        return
    started = time.perf_counter()
    log(f"# bench_scoring: {'quick' if args.quick else 'full'} run; start: {load()}; {os.cpu_count()} CPUs")
    workdir = Path(tempfile.mkdtemp(prefix="smrt-bench-scoring-"))
    out: dict[str, Any] = {"started": load(), "quick": args.quick, "rounds": rounds}
    try:
        with LocalStackProcess(cpus=STACK_CPU) as stack:
            url = stack.runtime_endpoint_url
            stack_pid = stack.process.pid if stack.process is not None else os.getpid()
            s3 = s3_client(stack.s3_endpoint_url, max_pool_connections=20)
            quiet_logs()
            if "a" in args.only or "d" in args.only:
                files, rows_per_file = (16, 25_000) if not args.quick else (8, 10_000)
                prefix = f"s3://{BUCKET}/bench/in-{uuid.uuid4().hex[:6]}/"
                run_generator(
                    workdir / "s3-data",
                    files=files,
                    rows_per_file=rows_per_file,
                    row_group=rows_per_file // 2,
                    s3_prefix=prefix,
                )
                s3_inputs = [f"{prefix}part-{i:04d}.parquet" for i in range(files)]
                if "a" in args.only:
                    out["a"] = section_a(url, s3_inputs, s3, stack_pid=stack_pid, rounds=rounds, profile=args.profile)
                if "d" in args.only:
                    out["d"] = section_d(
                        url, s3_inputs, rows_per_file, s3, quick=args.quick, rounds=rounds, stack_pid=stack_pid
                    )
            if "b" in args.only:
                files, rows_per_file = (2, 100_000) if not args.quick else (1, 50_000)
                run_generator(workdir / "cpu-data", files=files, rows_per_file=rows_per_file, row_group=50_000)
                inputs = [str(p) for p in sorted((workdir / "cpu-data").glob("*.parquet"))]
                out["b"] = section_b(inputs, workdir, stack, quick=args.quick, rounds=rounds, profile=args.profile)
            if "c" in args.only:
                section_c(url, workdir, quick=args.quick)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    verdicts(out)
    out["ended"] = load()
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))
    log(f"\ndone in {time.perf_counter() - started:.0f} s; end: {load()}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("_gen", "_cpu", "_mem"):
        command, rest = sys.argv[1], sys.argv[2:]
        {"_gen": _gen_main, "_cpu": _cpu_child_main, "_mem": _mem_child_main}[command](rest)
    else:
        main()
