"""Benchmark of the scoring core and SageMakerBatchScoreOperator on the local stack.

Starts its own local stack (pinned to CPU 1) and measures, in one run:

a. throughput against the ideal and against a hand-written loop: endpoint ``latency_ms=50``,
   ``capacity=16``, model ``constant`` (answers without parsing: the server's CPU is little more than
   HTTP, as a remote endpoint's would be for the client's machine), then model ``sum``; 400k rows x
   20 float features + an int64 id, Parquet on the local S3 (16 files of 2 row groups, written by a
   separate process before timing); 500 rows per request, concurrency 16.
   (i) the operator (``execute({})``, output to S3), (ii) a hand-written 16-thread boto3 loop that
   reads all data first, encodes with ``pyarrow.csv.write_csv`` and parses with numpy, and (iii) the
   boto3 ceiling: 16 threads sending bodies encoded before the window (no client does less). Rows/s over
   the endpoint's busy window (endpoint stats: rows_ok / busy_seconds, first request in to last
   response out) and wall time. Targets: >= 0.80 of the ideal 16 x 500 / 0.05 s = 160k rows/s, and
   >= 0.95 of the hand-written loop.
b. client CPU-bound throughput: zero latency, the scoring core (``ScoringJob`` with the hook's
   invoker, local Parquet in and out) in a child process pinned to ONE core (CPU 0; the stack on
   CPU 1); concurrency 4/8/16 x max_rows_per_request 500/2000; rows/s (busy window and wall) and
   client CPU seconds per 100k rows; the hand-written loop on the same core for reference; per-thread
   CPU of the best configuration (reader / invoke workers / committers), and a cProfile of it
   (every thread) when ``--profile`` is given. Target: >= 150k rows/s.
c. peak RSS for 1M vs 10M rows: local Parquet in (files of 1M rows, row groups of 128k rows,
   written by a separate process), local output directory, zero latency, operator defaults; each
   run in a fresh subprocess whose process tree's ``VmRSS`` is sampled from ``/proc`` every 50 ms.
   Target: growth < 64 MB.
d. ``docs/performance-throughput.png``: rows/s against concurrency (1..32, latency 50 ms,
   capacity 32) for the operator and the hand-written loop, beside the ideal (needs matplotlib).

Every figure is printed with the load average at the time (other jobs share this 2-core machine).

Run: ``.venv/bin/python bench/bench_scoring.py [--quick] [--only abcd] [--profile]``
"""

from __future__ import annotations

import argparse
import bisect
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stack import REPO, LocalStackProcess, load, local_control, runtime_client, s3_client

BUCKET = "smrt-local"
FEATURES = [f"f{i:02d}" for i in range(20)]
CLIENT_CPU = {0}
STACK_CPU = {1}
CLK_TCK = os.sysconf("SC_CLK_TCK")
PLOT_PATH = REPO / "docs" / "performance-throughput.png"


def log(*parts: object) -> None:
    print(*parts, flush=True)


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
# Measurement helpers


def proc_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc/*/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as fh:
                    todo.extend(int(child) for child in fh.read().split())
    return found


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one live process (0 if it is gone)."""
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    return 0.0


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process tree (live processes only)."""
    return sum(proc_cpu_seconds(member) for member in proc_tree(pid))


def tree_rss_bytes(pid: int) -> int:
    total = 0
    for member in proc_tree(pid):
        with contextlib.suppress(OSError):
            with open(f"/proc/{member}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
    return total


class WindowCpu:
    """CPU seconds of this process, the endpoint server and moto, sampled every 10 ms with the time.

    :meth:`between` interpolates the CPU used between two ``time.monotonic()`` instants: the local
    endpoint reports its busy window's ends on that clock (CLOCK_MONOTONIC, shared by the machine's
    processes), so this gives each process's CPU *inside* the window.
    """

    def __init__(self, stack_pid: int, interval: float = 0.01) -> None:
        self.stack_pid = stack_pid
        self.interval = interval
        self.samples: list[tuple[float, float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-window-cpu", daemon=True)

    def _split(self) -> tuple[float, float]:
        endpoint = moto = 0.0
        for member in proc_tree(self.stack_pid):
            with contextlib.suppress(OSError):
                with open(f"/proc/{member}/cmdline", "rb") as fh:
                    is_moto = b"moto" in fh.read()
                if is_moto:
                    moto += proc_cpu_seconds(member)
                else:
                    endpoint += proc_cpu_seconds(member)
        return endpoint, moto

    def _take(self) -> None:
        usage = os.times()
        self.samples.append((time.monotonic(), usage.user + usage.system, *self._split()))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._take()

    def __enter__(self) -> WindowCpu:
        self._take()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._take()

    def _at(self, instant: float) -> list[float]:
        times = [sample[0] for sample in self.samples]
        index = min(max(bisect.bisect_left(times, instant), 1), len(times) - 1)
        (t0, *low), (t1, *high) = self.samples[index - 1], self.samples[index]
        weight = (instant - t0) / (t1 - t0) if t1 > t0 else 0.0
        return [a + (b - a) * weight for a, b in zip(low, high, strict=True)]

    def between(self, start: float | None, end: float | None) -> dict[str, float]:
        """CPU seconds of ``client`` (this process), ``endpoint`` and ``moto`` between two instants."""
        if start is None or end is None or len(self.samples) < 2:
            return {"client": float("nan"), "endpoint": float("nan"), "moto": float("nan")}
        low, high = self._at(start), self._at(end)
        return dict(zip(("client", "endpoint", "moto"), (b - a for a, b in zip(low, high, strict=True)), strict=True))


class ThreadCpu:
    """Samples every Python thread's CPU clock (``pthread_getcpuclockid``) every ``interval`` seconds."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.seconds: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-cpu-sampler", daemon=True)

    def _sample(self) -> None:
        for thread in threading.enumerate():
            if thread.ident is None or thread is self._thread:
                continue
            with contextlib.suppress(OSError, ValueError):
                cpu = time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
                self.seconds[thread.ident] = (thread.name, cpu)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> ThreadCpu:
        self._sample()
        self.baseline = dict(self.seconds)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sample()
        self._stop.set()
        self._thread.join()

    def by_role(self) -> dict[str, float]:
        roles: dict[str, float] = {}
        for ident, (name, cpu) in self.seconds.items():
            base = self.baseline.get(ident, (name, 0.0))[1]
            role = thread_role(name)
            roles[role] = roles.get(role, 0.0) + cpu - base
        return roles


class WallSampler:
    """A poor man's py-spy: every ``interval`` s, the stack of every thread (wall clock, so waits show).

    Per thread role (the caller's thread, read-ahead, invoke workers, committers) it counts the innermost
    ``airflow_provider_smrt`` frame and the leaf frame. ``gauge`` (optional) is sampled alongside.
    """

    def __init__(self, interval: float = 0.005, gauge: Callable[[], Any] | None = None) -> None:
        import collections

        self.interval = interval
        self.gauge = gauge
        self.gauges: list[Any] = []
        self.samples: dict[str, collections.Counter[tuple[str, str]]] = collections.defaultdict(collections.Counter)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-wall-sampler", daemon=True)

    def _loop(self) -> None:
        import traceback

        me = threading.get_ident()
        while not self._stop.wait(self.interval):
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                name = names.get(ident, "?")
                if ident == me or name.startswith("bench-"):
                    continue
                role = thread_role(name)
                stack = traceback.extract_stack(frame)
                own = next(
                    (
                        f"{f.filename.split('airflow_provider_smrt/')[1]}:{f.lineno} {f.name}"
                        for f in reversed(stack)
                        if "airflow_provider_smrt" in f.filename
                    ),
                    "-",
                )
                leaf = f"{stack[-1].filename.rsplit('/', 1)[-1]}:{stack[-1].lineno} {stack[-1].name}"
                self.samples[role][(own, leaf)] += 1
            if self.gauge is not None:
                value = self.gauge()
                if value is not None:
                    self.gauges.append(value)

    def __enter__(self) -> WallSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def report(self, top: int = 8) -> str:
        lines = []
        for role in sorted(self.samples):
            counter = self.samples.get(role)
            if not counter:
                continue
            total = sum(counter.values())
            lines.append(f"{role} ({total} samples; share of its wall time, innermost package frame <- leaf frame):")
            for (own, leaf), count in counter.most_common(top):
                lines.append(f"  {count / total:6.1%}  {own}  <-  {leaf}")
        return "\n".join(lines)


def thread_role(name: str) -> str:
    """The pipeline role of a thread, from its name."""
    if name == "MainThread":
        return "caller's thread (plans, then waits)"
    if "reader" in name:
        return "read-ahead (smrt-reader)"
    if "commit" in name:
        return "committers (smrt-commit)"
    if "invoke" in name:
        return "invoke workers"
    return "other"


def busy_rate(url: str, name: str) -> tuple[float, dict[str, Any]]:
    stats = local_control.endpoint_stats(url, name)
    busy = stats["busy_seconds"] or float("nan")
    return stats["rows_ok"] / busy, stats


# ---------------------------------------------------------------------------------------------
# The hand-written loop (reads everything first, then 16 threads of plain boto3)


def read_tables(uris: Sequence[str], s3: Any) -> list[Any]:
    import pyarrow.parquet as pq

    tables = []
    for uri in uris:
        if uri.startswith("s3://"):
            bucket, key = uri[5:].split("/", 1)
            data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            tables.append(pq.read_table(io.BytesIO(data)))
        else:
            tables.append(pq.read_table(uri))
    return tables


def request_slices(tables: list[Any], rows_per_request: int) -> list[Any]:
    """The hand-written loops' requests: consecutive slices of ``rows_per_request`` rows of each table."""
    return [
        table.slice(offset, rows_per_request)
        for table in tables
        for offset in range(0, table.num_rows, rows_per_request)
    ]


def csv_body(piece: Any, options: Any) -> bytes:
    """A slice's feature columns as a CSV body (``options``: no header, no quoting), by ``pyarrow.csv``."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    sink = pa.BufferOutputStream()
    pacsv.write_csv(piece.select(FEATURES), sink, options)
    return sink.getvalue().to_pybytes()  # type: ignore[no-any-return]


def hand_loop(tables: list[Any], client: Any, endpoint: str, *, rows_per_request: int, concurrency: int) -> Any:
    """Score ``tables``: slices of ``rows_per_request`` rows, CSV by Arrow, ``concurrency`` threads, numpy parse."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    options = pacsv.WriteOptions(include_header=False, quoting_style="none")
    slices = request_slices(tables, rows_per_request)

    def work(piece: Any) -> Any:
        response = client.invoke_endpoint(
            EndpointName=endpoint, Body=csv_body(piece, options), ContentType="text/csv", Accept="text/csv"
        )
        values = np.fromstring(response["Body"].read(), sep="\n")
        if len(values) != piece.num_rows:
            raise RuntimeError(f"{len(values)} predictions for {piece.num_rows} rows")
        return values

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        predictions = list(pool.map(work, slices))
    ids = pa.concat_arrays([piece.column("id").combine_chunks() for piece in slices])
    return pa.table({"id": ids, "prediction": np.concatenate(predictions)})


def prebuilt_loop(tables: list[Any], client: Any, endpoint: str, *, rows_per_request: int, concurrency: int) -> int:
    """The ceiling of boto3 on this machine: bodies encoded *before* the window, then only the calls.

    ``concurrency`` threads send the pre-encoded CSV bodies and read the responses (nothing parsed).
    No scoring client can beat it: it does strictly less work per request than any of them.
    """
    import pyarrow.csv as pacsv

    options = pacsv.WriteOptions(include_header=False, quoting_style="none")
    bodies = [csv_body(piece, options) for piece in request_slices(tables, rows_per_request)]

    def call(body: bytes) -> int:
        response = client.invoke_endpoint(EndpointName=endpoint, Body=body, ContentType="text/csv", Accept="text/csv")
        return len(response["Body"].read())

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(call, bodies))
    return sum(table.num_rows for table in tables)


# ---------------------------------------------------------------------------------------------
# Runs


def run_operator(
    endpoint: str, inputs: list[str], output: str, *, rows_per_request: int | None, concurrency: int
) -> dict[str, Any]:
    from airflow_provider_smrt.operators.batch_score import SageMakerBatchScoreOperator

    operator = SageMakerBatchScoreOperator(
        task_id=f"bench_{uuid.uuid4().hex[:6]}",
        endpoint_name=endpoint,
        input_uri=inputs,
        output_uri=output,
        passthrough_columns=["id"],
        max_rows_per_request=rows_per_request,
        concurrency=concurrency,
        progress_interval=3600,
    )
    return operator.execute({})  # type: ignore[arg-type]


def quiet_logs() -> None:
    import logging

    for name in ("airflow", "airflow.task", "airflow.providers", "airflow_provider_smrt", "botocore", "smart_open"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with contextlib.suppress(Exception):
        import structlog

        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


@contextlib.contextmanager
def settled_gc() -> Any:
    """A full collection, then the surviving objects frozen, for one measured run (both sides alike).

    The benchmark process holds Airflow's ~300k objects; a generation-2 collection over them stops
    every thread for ~250 ms (measured), which lands at random in some 3-second windows and not in
    others. ``gc.freeze()`` keeps them out of collections during the run, as ``timeit`` keeps the
    collector out of its timings.
    """
    import gc

    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def measure_operator(
    url: str,
    endpoint: str,
    inputs: list[str],
    *,
    rows_per_request: int | None,
    concurrency: int,
    output: str | None = None,
) -> dict[str, Any]:
    """One operator run into ``output`` (default: a fresh prefix on the local S3)."""
    with settled_gc():
        return _measure_operator(
            url, endpoint, inputs, rows_per_request=rows_per_request, concurrency=concurrency, output=output
        )


def _measure_operator(
    url: str, endpoint: str, inputs: list[str], *, rows_per_request: int | None, concurrency: int, output: str | None
) -> dict[str, Any]:
    local_control.reset_stats(url, endpoint)
    output = output or f"s3://{BUCKET}/bench/out-{uuid.uuid4().hex[:8]}/"
    wall0 = time.perf_counter()
    summary = run_operator(endpoint, inputs, output, rows_per_request=rows_per_request, concurrency=concurrency)
    wall = time.perf_counter() - wall0
    rate, stats = busy_rate(url, endpoint)
    return {"rows": summary["rows_scored"], "busy_rate": rate, "wall": wall, "stats": stats, "load": load()}


def measure_hand_loop(
    url: str,
    endpoint: str,
    inputs: list[str],
    s3: Any,
    *,
    rows_per_request: int,
    concurrency: int,
    prebuilt: bool = False,
) -> dict[str, Any]:
    """One run of the hand-written loop (or, with ``prebuilt``, of :func:`prebuilt_loop`)."""
    with settled_gc():
        return _measure_hand_loop(
            url, endpoint, inputs, s3, rows_per_request=rows_per_request, concurrency=concurrency, prebuilt=prebuilt
        )


def _measure_hand_loop(
    url: str, endpoint: str, inputs: list[str], s3: Any, *, rows_per_request: int, concurrency: int, prebuilt: bool
) -> dict[str, Any]:
    local_control.reset_stats(url, endpoint)
    client = runtime_client(url, max_pool_connections=concurrency + 2)
    wall0 = time.perf_counter()
    tables = read_tables(inputs, s3)
    if prebuilt:
        rows = prebuilt_loop(tables, client, endpoint, rows_per_request=rows_per_request, concurrency=concurrency)
    else:
        rows = hand_loop(tables, client, endpoint, rows_per_request=rows_per_request, concurrency=concurrency).num_rows
    wall = time.perf_counter() - wall0
    rate, stats = busy_rate(url, endpoint)
    return {"rows": rows, "busy_rate": rate, "wall": wall, "stats": stats, "load": load()}


# ---------------------------------------------------------------------------------------------
# Section a


def profile_operator(url: str, endpoint: str, inputs: list[str], *, concurrency: int) -> None:
    """One more operator run under the wall-clock stack sampler, with the pipeline's in-flight count."""
    import statistics

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
            run = measure_operator(url, endpoint, inputs, rows_per_request=500, concurrency=concurrency)
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


#: Section (a)'s endpoint models: ``constant`` answers without parsing the features, so the endpoint
#: server's CPU (which a real endpoint does not take from the client's machine) is little more than
#: HTTP; ``sum`` parses every feature value (≈0.8 ms CPU per 500 x 20 request on this stack).
A_MODELS = ("constant", "sum")

#: Section (a)'s third client: boto3 alone, sending bodies encoded before the window (:func:`prebuilt_loop`).
CEILING = "boto3 ceiling (bodies encoded beforehand)"


def section_a(
    url: str, inputs: list[str], s3: Any, *, stack_pid: int, repeats: int, profile: bool = False
) -> dict[str, Any]:
    ideal = 16 * 500 / 0.05
    out: dict[str, Any] = {}
    for model in A_MODELS:
        endpoint = local_control.put_endpoint(url, model=model, faults={"latency_ms": 50, "capacity": 16})
        results: dict[str, list[dict[str, Any]]] = {"operator": [], "hand-written loop": [], CEILING: []}
        for _ in range(repeats):  # alternate, so drifting load hits all alike
            for label in results:
                with WindowCpu(stack_pid) as cpu:
                    if label == "operator":
                        run = measure_operator(url, endpoint, inputs, rows_per_request=500, concurrency=16)
                    else:
                        run = measure_hand_loop(
                            url, endpoint, inputs, s3, rows_per_request=500, concurrency=16, prebuilt=label == CEILING
                        )
                stats = run["stats"]
                run["cpu"] = cpu.between(stats.get("first_arrival_monotonic"), stats.get("last_response_monotonic"))
                results[label].append(run)
        rows = results["operator"][0]["rows"]
        log(
            f"\n## a. Throughput at latency 50 ms, capacity 16, 500 rows/request, concurrency 16 ({rows:,} rows), "
            f"endpoint model `{model}`"
        )
        log(
            "| run | rows/s (busy window) | vs ideal 160k | busy s | CPU s in the window: client / endpoint / moto "
            "| client cores | wall s | load |"
        )
        log("|---|---|---|---|---|---|---|---|")
        for label, runs in results.items():
            for run in runs:
                cpu, busy = run["cpu"], run["stats"]["busy_seconds"]
                log(
                    f"| {label} | {run['busy_rate']:,.0f} | {run['busy_rate'] / ideal:.2f} | {busy:.2f} | "
                    f"{cpu['client']:.2f} / {cpu['endpoint']:.2f} / {cpu['moto']:.2f} | {cpu['client'] / busy:.2f} | "
                    f"{run['wall']:.2f} | {run['load']} |"
                )
        best = {label: max(runs, key=lambda run: run["busy_rate"]) for label, runs in results.items()}
        median = {label: statistics.median(run["busy_rate"] for run in runs) for label, runs in results.items()}
        op, hand = best["operator"]["busy_rate"], best["hand-written loop"]["busy_rate"]
        # Runs alternate, so each round's operator and loop runs met the same load: their ratio is the
        # least noisy comparison on a shared machine.
        rounds = zip(results["operator"], results["hand-written loop"], strict=True)
        paired = statistics.median(o["busy_rate"] / h["busy_rate"] for o, h in rounds)
        log(
            f"\nmodel `{model}`, best of {repeats}: operator {op:,.0f} rows/s = {op / ideal:.2f} x ideal "
            f"(target >= 0.80: {'MET' if op / ideal >= 0.80 else 'MISSED'}), {op / hand:.2f} x the hand-written "
            f"loop's best {hand:,.0f} (target >= 0.95: {'MET' if op / hand >= 0.95 else 'MISSED'}); medians: "
            f"operator {median['operator']:,.0f} = {median['operator'] / ideal:.2f} x ideal, loop "
            f"{median['hand-written loop']:,.0f}, ratio {median['operator'] / median['hand-written loop']:.2f}; "
            f"median of the rounds' paired ratios (operator / loop run of the same round) {paired:.2f}; "
            f"{CEILING} (the most any client reaches here): best {best[CEILING]['busy_rate'] / ideal:.2f} x ideal, "
            f"median {median[CEILING] / ideal:.2f}; operator / ceiling (medians) "
            f"{median['operator'] / median[CEILING]:.2f}"
        )
        if profile:
            profile_operator(url, endpoint, inputs, concurrency=16)
        out[model] = {"results": results, "vs_ideal": op / ideal, "vs_hand": op / hand, "paired": paired}
    return out


# ---------------------------------------------------------------------------------------------
# Section b (runs in a child pinned to one core)


def _cpu_child_main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--inputs", nargs="+", required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--rows-per-request", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--hand-concurrency", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    quiet_logs()

    from airflow_provider_smrt.hooks.sagemaker_runtime import SageMakerRuntimeHook
    from airflow_provider_smrt.scoring.job import ScoringConfig, ScoringJob
    from airflow_provider_smrt.scoring.storage import Storage

    url = os.environ["SMRT_RUNTIME_ENDPOINT_URL"]
    stack_pid = int(os.environ["BENCH_STACK_PID"])
    endpoint = local_control.put_endpoint(url, model="sum", faults={"latency_ms": 0})

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

    def measure(run: Callable[[], int], *, sampler: ThreadCpu | None = None) -> dict[str, Any]:
        local_control.reset_stats(url, endpoint)
        stack0 = tree_cpu_seconds(stack_pid)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        rows = run()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        stack_cpu = tree_cpu_seconds(stack_pid) - stack0
        rate, _ = busy_rate(url, endpoint)
        return {
            "rows": rows,
            "busy_rate": rate,
            "wall_rate": rows / wall,
            "cpu_per_100k": cpu / rows * 1e5,
            "client_util": cpu / wall,
            "stack_util": stack_cpu / wall,
            "load": load(),
        }

    def run_job(concurrency: int, rows_per_request: int) -> Callable[[], int]:
        def run() -> int:
            summary = job_for(concurrency, rows_per_request).run()
            return int(summary["rows_scored"])

        return run

    # warm up (imports, connection, code paths)
    job_for(4, 500, args.inputs[:1]).run()
    results = []
    for _ in range(args.repeats):
        for rows_per_request in args.rows_per_request:
            for concurrency in args.concurrency:
                result = measure(run_job(concurrency, rows_per_request))
                result.update(kind="core", concurrency=concurrency, rows_per_request=rows_per_request)
                results.append(result)
                print(json.dumps(result), flush=True)

    # The hand-written loop on the same core, same data (read before timing).
    tables = read_tables(args.inputs, None)
    for rows_per_request in args.rows_per_request:
        for concurrency in args.hand_concurrency:
            best = None
            for _ in range(args.repeats):
                client = runtime_client(url, max_pool_connections=concurrency + 2)

                def run(client: Any = client, rpr: int = rows_per_request, c: int = concurrency) -> int:
                    return int(hand_loop(tables, client, endpoint, rows_per_request=rpr, concurrency=c).num_rows)

                result = measure(run)
                if best is None or result["busy_rate"] > best["busy_rate"]:
                    best = result
            assert best is not None
            best.update(kind="hand", concurrency=concurrency, rows_per_request=rows_per_request)
            results.append(best)
            print(json.dumps(best), flush=True)

    # Per-thread CPU of the best core configuration.
    cores = [r for r in results if r["kind"] == "core"]
    top = max(cores, key=lambda r: r["busy_rate"])
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
    inputs: list[str], workdir: Path, stack: LocalStackProcess, *, quick: bool, profile: bool
) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "_cpu", "--workdir", str(workdir), "--inputs", *inputs]
    cmd += ["--repeats", "1" if quick else "2"]
    if quick:
        cmd += ["--concurrency", "16", "--hand-concurrency", "16"]
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
    log(f"\n## b. Client CPU-bound: zero latency, client on ONE core (CPU 0), stack on CPU 1 ({rows:,} rows/run)")
    log(
        "| run | concurrency | rows/request | rows/s (busy window) | rows/s (wall) | client CPU s / 100k rows "
        "| => rows/s per full core | client core use | stack core use | load |"
    )
    log("|---|---|---|---|---|---|---|---|---|---|")
    best: dict[tuple[str, int, int], dict[str, Any]] = {}
    for r in results:
        if r["kind"] not in ("core", "hand"):
            continue
        key = (r["kind"], r["concurrency"], r["rows_per_request"])
        if key not in best or r["busy_rate"] > best[key]["busy_rate"]:
            best[key] = r
        label = "scoring core" if r["kind"] == "core" else "hand-written loop"
        log(
            f"| {label} | {r['concurrency']} | {r['rows_per_request']} | {r['busy_rate']:,.0f} | "
            f"{r['wall_rate']:,.0f} | {r['cpu_per_100k']:.3f} | {1e5 / r['cpu_per_100k']:,.0f} | "
            f"{r['client_util']:.0%} | {r['stack_util']:.0%} | {r['load']} |"
        )
    cores = [r for key, r in best.items() if key[0] == "core"]
    top = max(cores, key=lambda r: r["busy_rate"])
    hands = [r for key, r in best.items() if key[0] == "hand"]
    top_hand = max(hands, key=lambda r: r["busy_rate"]) if hands else None
    verdict = "MET" if top["busy_rate"] >= 150_000 else "MISSED"
    log(
        f"\nbest scoring core: {top['busy_rate']:,.0f} rows/s (busy window; wall {top['wall_rate']:,.0f}) "
        f"at concurrency "
        f"{top['concurrency']}, {top['rows_per_request']} rows/request, {top['cpu_per_100k']:.3f} CPU s/100k rows "
        f"-> target >= 150k rows/s: {verdict}"
    )
    per_core = max(cores, key=lambda r: 1e5 / r["cpu_per_100k"])
    per_core_rate = 1e5 / per_core["cpu_per_100k"]
    log(
        f"on a CPU basis (1 / client CPU per row, i.e. one full core): best {per_core_rate:,.0f} rows/s at "
        f"concurrency {per_core['concurrency']}, {per_core['rows_per_request']} rows/request -> target >= 150k: "
        f"{'MET' if per_core_rate >= 150_000 else 'MISSED'}"
    )
    if top_hand:
        log(
            f"best hand-written loop on the same core: {top_hand['busy_rate']:,.0f} rows/s at concurrency "
            f"{top_hand['concurrency']}, {top_hand['rows_per_request']} rows/request, "
            f"{top_hand['cpu_per_100k']:.3f} CPU s/100k rows"
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
    return {"best": top, "results": results}


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


def section_d(url: str, all_inputs: list[str], rows_per_file: int, s3: Any, *, quick: bool) -> dict[str, Any]:
    endpoint = local_control.put_endpoint(url, model="sum", faults={"latency_ms": 50, "capacity": 32})
    levels = [1, 2, 4, 8, 16, 32] if not quick else [1, 16]
    seconds = 1.5 if not quick else 0.5
    points = []
    for concurrency in levels:
        ideal = concurrency * 500 / 0.05
        files = max(1, min(len(all_inputs), round(ideal * seconds / rows_per_file)))
        inputs = all_inputs[:files]
        op = measure_operator(url, endpoint, inputs, rows_per_request=500, concurrency=concurrency)
        hand = measure_hand_loop(url, endpoint, inputs, s3, rows_per_request=500, concurrency=concurrency)
        points.append({"concurrency": concurrency, "ideal": ideal, "operator": op, "hand": hand, "rows": op["rows"]})
    log("\n## d. Rows/s (busy window) against concurrency: latency 50 ms, capacity 32, 500 rows/request")
    log("| concurrency | rows | ideal | operator | operator / ideal | hand-written loop | operator / hand | load |")
    log("|---|---|---|---|---|---|---|---|")
    for p in points:
        op, hand = p["operator"]["busy_rate"], p["hand"]["busy_rate"]
        log(
            f"| {p['concurrency']} | {p['rows']:,} | {p['ideal']:,.0f} | {op:,.0f} | {op / p['ideal']:.2f} | "
            f"{hand:,.0f} | "
            f"{op / hand:.2f} | {p['hand']['load']} |"
        )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("\nmatplotlib is not installed: no plot (pip install matplotlib)")
        return {"points": points, "plot": None}
    xs = [p["concurrency"] for p in points]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.plot(xs, [p["ideal"] / 1000 for p in points], "k--", label="ideal (concurrency x 500 rows / 50 ms)")
    ax.plot(
        xs, [p["hand"]["busy_rate"] / 1000 for p in points], "s-", color="tab:gray", label="hand-written boto3 loop"
    )
    ax.plot(
        xs,
        [p["operator"]["busy_rate"] / 1000 for p in points],
        "o-",
        color="tab:orange",
        label="SageMakerBatchScoreOperator",
    )
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("concurrency (requests in flight)")
    ax.set_ylabel("thousand rows/s (endpoint busy window)")
    ax.set_title(
        "Local endpoint, latency 50 ms, capacity 32, 500 rows/request, 20 float features, CSV\n"
        f"2-core machine shared with other jobs ({points[-1]['hand']['load']} at the end)",
        fontsize=9,
    )
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    PLOT_PATH.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT_PATH)
    log(f"\nplot written to {PLOT_PATH.relative_to(REPO)}")
    return {"points": points, "plot": str(PLOT_PATH)}


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run (< ~1 minute)")
    parser.add_argument("--only", default="abcd", help="sections to run (default abcd)")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile (all threads) the best CPU-bound configuration"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    log(f"# bench_scoring: {'quick' if args.quick else 'full'} run; start: {load()}; {os.cpu_count()} CPUs")
    workdir = Path(tempfile.mkdtemp(prefix="smrt-bench-scoring-"))
    try:
        with LocalStackProcess(cpus=STACK_CPU) as stack:
            url = stack.runtime_endpoint_url
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
                    section_a(
                        url,
                        s3_inputs,
                        s3,
                        stack_pid=stack.process.pid if stack.process is not None else os.getpid(),
                        repeats=1 if args.quick else 5,
                        profile=args.profile,
                    )
                if "d" in args.only:
                    section_d(url, s3_inputs, rows_per_file, s3, quick=args.quick)
            if "b" in args.only:
                files, rows_per_file = (2, 100_000) if not args.quick else (1, 50_000)
                run_generator(workdir / "cpu-data", files=files, rows_per_file=rows_per_file, row_group=50_000)
                inputs = [str(p) for p in sorted((workdir / "cpu-data").glob("*.parquet"))]
                section_b(inputs, workdir, stack, quick=args.quick, profile=args.profile)
            if "c" in args.only:
                section_c(url, workdir, quick=args.quick)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    log(f"\ndone in {time.perf_counter() - started:.0f} s; end: {load()}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("_gen", "_cpu", "_mem"):
        command, rest = sys.argv[1], sys.argv[2:]
        {"_gen": _gen_main, "_cpu": _cpu_child_main, "_mem": _mem_child_main}[command](rest)
    else:
        main()
