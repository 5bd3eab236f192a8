"""Peak memory of SageMakerBatchScoreOperator run through Airflow, against the input's row count.

Starts its own local stack (pinned to CPU 1; moto is the S3 server) and, for each storage (a local
Parquet file, and the same on the local S3) and each pair of sizes (200k vs 2M rows, 1M vs 10M rows),
runs ``airflow dags test smrt_bench_memory`` (``bench/dags/bench_memory_dag.py``: one operator task,
1,000 rows a request, concurrency 16, ``id`` passed through, output to the same storage) in a fresh
process. The input is ONE Parquet file per run (int64 ``id`` + 20 float64 features, row groups of
50,000 rows), written (and uploaded) by a separate process before the run. Endpoint: model ``sum``,
zero latency.

The parent samples ``VmRSS`` of the run's whole process tree from ``/proc`` every 50 ms (a child's
``ru_maxrss`` inherits the parent's size, DESIGN.md); the task's success callback adds the task
process's ``VmHWM`` and Arrow's memory pool peak. Growth = peak(large) - peak(small); target < 64 MB.

Run: ``.venv/bin/python bench/bench_memory.py [--pairs small,large] [--storage local,s3] [--repeat N]
[--arrow-pool mimalloc|jemalloc|system]`` (the pool: ``ARROW_DEFAULT_MEMORY_POOL`` of the Airflow process;
default: pyarrow's, mimalloc).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stack import REPO, LocalStackProcess, load, local_control, s3_client
from bench_scoring import run_generator, tree_rss_bytes

BUCKET = "smrt-local"
ROW_GROUP = 50_000
DAGS = Path(__file__).resolve().parent / "dags"
PAIRS = {"small": (200_000, 2_000_000), "large": (1_000_000, 10_000_000)}
TARGET = 64 * 2**20


def log(*parts: object) -> None:
    print(*parts, flush=True)


#: Added to the Airflow process's environment: --arrow-pool (as ARROW_DEFAULT_MEMORY_POOL), then --env KEY=VALUE.
EXTRA_ENV: dict[str, str] = {}


def airflow_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(EXTRA_ENV)
    env["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAGS)
    env["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    env["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return env


def airflow_bin() -> str:
    return str(Path(sys.executable).parent / "airflow")


def run_dag(endpoint: str, input_uri: str, output_uri: str, workdir: Path) -> dict[str, Any]:
    """One ``airflow dags test`` in a fresh process; its process tree's peak VmRSS and the task's report."""
    report = workdir / f"report-{uuid.uuid4().hex[:6]}.json"
    conf = {"endpoint_name": endpoint, "input_uri": input_uri, "output_uri": output_uri, "report": str(report)}
    cmd = [airflow_bin(), "dags", "test", "smrt_bench_memory", "--conf", json.dumps(conf)]
    with open(workdir / "dag.log", "wb") as out:
        child = subprocess.Popen(cmd, env=airflow_env(), stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        started = time.monotonic()
        peak = 0
        timeline: list[int] = []
        while child.poll() is None:
            rss = tree_rss_bytes(child.pid)
            peak = max(peak, rss)
            timeline.append(rss)
            time.sleep(0.05)
    wall = time.monotonic() - started
    if child.returncode != 0 or not report.exists():
        tail = (workdir / "dag.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"airflow dags test failed ({child.returncode}):\n{tail}")
    doc = json.loads(report.read_text())
    marks = [timeline[min(len(timeline) - 1, int(len(timeline) * q))] for q in (0.25, 0.5, 0.75, 0.95)]
    doc.update(peak_rss=peak, marks=marks, wall=wall, load=load())
    return doc


def dataset(workdir: Path, rows: int, storage: str, s3: Any) -> str:
    """One Parquet file of ``rows`` rows (written by another process), local or on the local S3."""
    directory = workdir / f"data-{rows}"
    if storage == "local":
        if not directory.exists():
            run_generator(directory, files=1, rows_per_file=rows, row_group=ROW_GROUP)
        return str(directory / "part-0000.parquet")
    prefix = f"s3://{BUCKET}/bench-memory/in-{rows}/"
    key = f"bench-memory/in-{rows}/part-0000.parquet"
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=key)
    if not listing.get("KeyCount"):
        if directory.exists():
            s3.upload_file(str(directory / "part-0000.parquet"), BUCKET, key)
        else:
            run_generator(directory, files=1, rows_per_file=rows, row_group=ROW_GROUP, s3_prefix=prefix)
    return prefix + "part-0000.parquet"


def clear_output(output: str, s3: Any) -> None:
    if output.startswith("s3://"):
        prefix = output[len(f"s3://{BUCKET}/") :]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=BUCKET, Delete={"Objects": keys, "Quiet": True})
    else:
        shutil.rmtree(output, ignore_errors=True)


def mb(value: float | None) -> str:
    return "—" if value is None else f"{value / 2**20:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default="small,large", help="size pairs: small (200k/2M), large (1M/10M)")
    parser.add_argument("--storage", default="local,s3", help="local, s3 or both")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each size (the peaks of one run vary)")
    parser.add_argument(
        "--arrow-pool", choices=["mimalloc", "jemalloc", "system"], help="ARROW_DEFAULT_MEMORY_POOL of the run"
    )
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="set in the run's environment (repeatable)"
    )
    args = parser.parse_args()
    if args.arrow_pool:
        EXTRA_ENV["ARROW_DEFAULT_MEMORY_POOL"] = args.arrow_pool
    EXTRA_ENV.update(item.split("=", 1) for item in args.env)
    started = time.perf_counter()
    log(f"# bench_memory: start {load()}; {os.cpu_count()} CPUs")
    workdir = Path(tempfile.mkdtemp(prefix="smrt-bench-memory-"))
    results: list[dict[str, Any]] = []
    try:
        subprocess.run([airflow_bin(), "db", "migrate"], env=airflow_env(), check=True, capture_output=True)
        with LocalStackProcess(cpus={1}) as stack:
            s3 = s3_client(stack.s3_endpoint_url)
            endpoint = local_control.put_endpoint(stack.runtime_endpoint_url, model="sum", faults={"latency_ms": 0})
            for pair in args.pairs.split(","):
                for storage in args.storage.split(","):
                    runs: dict[int, list[dict[str, Any]]] = {}
                    for rows in PAIRS[pair]:
                        input_uri = dataset(workdir, rows, storage, s3)
                        for _ in range(args.repeat):
                            output = (
                                f"s3://{BUCKET}/bench-memory/out-{uuid.uuid4().hex[:6]}/"
                                if storage == "s3"
                                else str(workdir / f"out-{uuid.uuid4().hex[:6]}")
                            )
                            doc = run_dag(endpoint, input_uri, output, workdir)
                            clear_output(output, s3)
                            runs.setdefault(rows, []).append(doc)
                            log(
                                f"  {storage} {rows:,} rows: peak {mb(doc['peak_rss'])} MB, VmHWM "
                                f"{mb(doc['vm_hwm'])} MB, Arrow pool peak {mb(doc['arrow_max'])} MB, "
                                f"job {doc['elapsed']:.1f} s, {doc['load']}"
                            )
                    small, large = PAIRS[pair]
                    growth = max(d["peak_rss"] for d in runs[large]) - max(d["peak_rss"] for d in runs[small])
                    results.append({"pair": pair, "storage": storage, "runs": runs, "growth": growth})
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    pool = EXTRA_ENV.get("ARROW_DEFAULT_MEMORY_POOL", "default")
    log(f"\nArrow memory pool: {pool}; environment added: {EXTRA_ENV or 'none'}")
    log(
        "\n## Peak RSS through `airflow dags test`: one Parquet file (row groups of 50,000 rows), 1,000 rows a "
        "request, concurrency 16, zero latency; process tree VmRSS sampled every 50 ms\n"
    )
    log(
        "| storage | rows | peak VmRSS MB | VmHWM MB (task process) | VmRSS MB at 25/50/75/95% "
        "| Arrow pool peak MB | job s | load |"
    )
    log("|---|---|---|---|---|---|---|---|")
    for result in results:
        for rows, docs in result["runs"].items():
            for doc in docs:
                log(
                    f"| {result['storage']} | {rows:,} | {mb(doc['peak_rss'])} | {mb(doc['vm_hwm'])} | "
                    f"{' / '.join(mb(m) for m in doc['marks'])} | {mb(doc['arrow_max'])} ({doc['arrow_pool']}) | "
                    f"{doc['elapsed']:.1f} | {doc['load']} |"
                )
    log("\n| storage | sizes | growth of the peak (max over runs) | target < 64 MB |")
    log("|---|---|---|---|")
    for result in results:
        small, large = PAIRS[result["pair"]]
        verdict = "met" if result["growth"] < TARGET else "MISSED"
        log(f"| {result['storage']} | {small:,} → {large:,} | {result['growth'] / 2**20:+.0f} MB | {verdict} |")
    log(f"\ndone in {time.perf_counter() - started:.0f} s; end: {load()}")


if __name__ == "__main__":
    main()
