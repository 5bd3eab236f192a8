"""Shared pieces of ``bench_scoring.py``: the peers it compares, paired rounds, CPU and memory probes.

Not a benchmark itself. The peers score the same Parquet inputs against the same local endpoint:

* the operator (``SageMakerBatchScoreOperator.execute({})``, output to S3);
* the hand-written 16-thread boto3 loop (:func:`hand_loop`): reads all data first, encodes each
  slice with ``pyarrow.csv.write_csv``, parses the answer with numpy;
* the same loop on aiobotocore (:func:`aio_loop`): asyncio, ``concurrency`` requests in flight;
* the sequential loop a ``PythonOperator`` would run (:func:`sequential_loop`): one request at a time;
* the boto3 ceiling (:func:`prebuilt_loop`): bodies encoded before the window, only the calls.

:func:`paired_rounds` runs them interleaved (operator, loop, ..., operator, loop, ...) so that each
round's runs meet the same load, and :func:`summarize` reports the medians of the paired ratios.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import io
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from _stack import load, local_control, runtime_client

BUCKET = "smrt-local"
FEATURES = [f"f{i:02d}" for i in range(20)]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(*parts: object) -> None:
    print(*parts, flush=True)


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
    """CPU seconds of the client (this process and its encoder processes), the endpoint server and moto, sampled
    every 10 ms with the time.

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

    def _members(self) -> list[tuple[int, bool]]:
        """The stack's processes (pid, is moto), found once per run: walking the tree through every thread's
        ``children`` file at each sample took 1.5 ms with 64 connections open (15% of a core, in this process,
        holding its GIL), where reading the two processes' ``stat`` takes 0.07 ms."""
        members = []
        for member in proc_tree(self.stack_pid):
            with contextlib.suppress(OSError):
                with open(f"/proc/{member}/cmdline", "rb") as fh:
                    members.append((member, b"moto" in fh.read()))
        return members

    def _split(self) -> tuple[float, float]:
        endpoint = moto = 0.0
        for member, is_moto in self._stack:
            if is_moto:
                moto += proc_cpu_seconds(member)
            else:
                endpoint += proc_cpu_seconds(member)
        return endpoint, moto

    def _client(self) -> float:
        """This process, its children reaped, and its live children other than the stack (the encoder processes).

        They are the main thread's children (the operator runs there), read from its one ``children`` file.
        """
        usage = os.times()
        total = usage.user + usage.system + usage.children_user + usage.children_system
        with contextlib.suppress(OSError):
            with open(f"/proc/self/task/{threading.main_thread().native_id}/children") as fh:
                children = [int(pid) for pid in fh.read().split()]
            for child in children:
                if child != self.stack_pid:
                    with contextlib.suppress(OSError):
                        total += proc_cpu_seconds(child)
        return total

    def _take(self) -> None:
        self.samples.append((time.monotonic(), self._client(), *self._split()))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._take()

    def __enter__(self) -> WindowCpu:
        self._stack = self._members()
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
        """CPU seconds of ``client`` (this process and its children but the stack), ``endpoint`` and ``moto``."""
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


def prebuilt_loop(
    tables: list[Any], client: Any, endpoint: str, *, rows_per_request: int, concurrency: int, lean: bool = False
) -> int:
    """A ceiling on this machine: bodies encoded *before* the window, then only the calls.

    ``concurrency`` threads send the pre-encoded CSV bodies and read the responses (nothing parsed),
    through boto3's client, or (``lean``) through ``SageMakerRuntimeHook.make_invoker``'s lean transport,
    the operator's own. A client on the same transport cannot beat it: it does strictly less work per
    request than any scoring client.
    """
    import pyarrow.csv as pacsv

    options = pacsv.WriteOptions(include_header=False, quoting_style="none")
    bodies = [csv_body(piece, options) for piece in request_slices(tables, rows_per_request)]
    if lean:
        from airflow_provider_smrt.hooks.sagemaker_runtime import SageMakerRuntimeHook

        invoke = SageMakerRuntimeHook(aws_conn_id="aws_default", max_pool_connections=concurrency + 2).make_invoker(
            endpoint, content_type="text/csv", accept="text/csv"
        )

        def call(body: bytes) -> int:
            return len(invoke(body).body)

    else:

        def call(body: bytes) -> int:
            response = client.invoke_endpoint(
                EndpointName=endpoint, Body=body, ContentType="text/csv", Accept="text/csv"
            )
            return len(response["Body"].read())

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(call, bodies))
    return sum(table.num_rows for table in tables)


# ---------------------------------------------------------------------------------------------
# Runs


def run_operator(
    endpoint: str,
    inputs: list[str],
    output: str,
    *,
    rows_per_request: int | None,
    concurrency: int,
    encode_processes: int | str = "auto",
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
        encode_processes=encode_processes,
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


def sequential_loop(tables: list[Any], client: Any, endpoint: str, *, rows_per_request: int) -> int:
    """The floor: what a plain ``PythonOperator`` callable does, one slice after another on one thread."""
    import numpy as np
    import pyarrow.csv as pacsv

    options = pacsv.WriteOptions(include_header=False, quoting_style="none")
    rows = 0
    for piece in request_slices(tables, rows_per_request):
        response = client.invoke_endpoint(
            EndpointName=endpoint, Body=csv_body(piece, options), ContentType="text/csv", Accept="text/csv"
        )
        values = np.fromstring(response["Body"].read(), sep="\n")
        if len(values) != piece.num_rows:
            raise RuntimeError(f"{len(values)} predictions for {piece.num_rows} rows")
        rows += len(values)
    return rows


def aio_loop(tables: list[Any], url: str, endpoint: str, *, rows_per_request: int, concurrency: int) -> int:
    """The hand-written loop on aiobotocore: one event loop, ``concurrency`` requests in flight."""
    import numpy as np
    import pyarrow.csv as pacsv
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    options = pacsv.WriteOptions(include_header=False, quoting_style="none")
    slices = request_slices(tables, rows_per_request)

    async def run() -> int:
        session = get_session()
        async with session.create_client(
            "sagemaker-runtime",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=AioConfig(max_pool_connections=concurrency + 2),
        ) as client:
            gate = asyncio.Semaphore(concurrency)

            async def work(piece: Any) -> int:
                async with gate:
                    response = await client.invoke_endpoint(
                        EndpointName=endpoint, Body=csv_body(piece, options), ContentType="text/csv", Accept="text/csv"
                    )
                    data = await response["Body"].read()
                values = np.fromstring(data, sep="\n")
                if len(values) != piece.num_rows:
                    raise RuntimeError(f"{len(values)} predictions for {piece.num_rows} rows")
                return len(values)

            return sum(await asyncio.gather(*(work(piece) for piece in slices)))

    return asyncio.run(run())


# ---------------------------------------------------------------------------------------------
# Peers and paired rounds

OPERATOR = "operator"
IN_TASK = "operator, bodies encoded in its own process (encode_processes=0)"
LOOP = "boto3 loop (16 threads)"
AIO = "aiobotocore loop (asyncio)"
SEQUENTIAL = "sequential loop (PythonOperator)"
CEILING = "boto3 ceiling (bodies encoded beforehand)"
LEAN_CEILING = "lean ceiling (the hook's transport, bodies encoded beforehand)"


def operator_peer(
    endpoint: str,
    inputs: list[str],
    *,
    rows_per_request: int,
    concurrency: int,
    output_dir: str | None = None,
    encode_processes: int | str = "auto",
) -> Callable[[], int]:
    """The operator, writing each run into a fresh prefix on the local S3 (or under ``output_dir``)."""

    def run() -> int:
        name = f"out-{uuid.uuid4().hex[:8]}"
        output = f"{output_dir}/{name}" if output_dir else f"s3://{BUCKET}/bench/{name}/"
        summary = run_operator(
            endpoint,
            inputs,
            output,
            rows_per_request=rows_per_request,
            concurrency=concurrency,
            encode_processes=encode_processes,
        )
        return int(summary["rows_scored"])

    return run


def loop_peer(
    kind: str, url: str, endpoint: str, inputs: list[str], s3: Any, *, rows_per_request: int, concurrency: int
) -> Callable[[], int]:
    """One of the hand-written loops: it reads its inputs (all of them, before its first request) each run."""

    def run() -> int:
        tables = read_tables(inputs, s3)
        if kind == AIO:
            return aio_loop(tables, url, endpoint, rows_per_request=rows_per_request, concurrency=concurrency)
        client = runtime_client(url, max_pool_connections=concurrency + 2)
        if kind == SEQUENTIAL:
            return sequential_loop(tables, client, endpoint, rows_per_request=rows_per_request)
        if kind in (CEILING, LEAN_CEILING):
            return prebuilt_loop(
                tables,
                client,
                endpoint,
                rows_per_request=rows_per_request,
                concurrency=concurrency,
                lean=kind == LEAN_CEILING,
            )
        return int(
            hand_loop(tables, client, endpoint, rows_per_request=rows_per_request, concurrency=concurrency).num_rows
        )

    return run


def measure_run(url: str, endpoint: str, run: Callable[[], int], *, stack_pid: int) -> dict[str, Any]:
    """One run: rows/s over the endpoint's busy window and the CPU each process spent inside it."""
    with settled_gc():
        local_control.reset_stats(url, endpoint)
        with WindowCpu(stack_pid) as cpu:
            wall0 = time.perf_counter()
            rows = run()
            wall = time.perf_counter() - wall0
    rate, stats = busy_rate(url, endpoint)
    window = cpu.between(stats.get("first_arrival_monotonic"), stats.get("last_response_monotonic"))
    ok = stats["rows_ok"] or float("nan")
    return {
        "rows": rows,
        "busy_rate": rate,
        "busy": stats["busy_seconds"],
        "wall": wall,
        "cpu": window,
        "cpu_per_100k": window["client"] / ok * 1e5,
        "load": load(),
    }


def paired_rounds(
    url: str, endpoint: str, peers: dict[str, Callable[[], int]], *, rounds: int, stack_pid: int
) -> dict[str, list[dict[str, Any]]]:
    """``rounds`` rounds of every peer in turn (operator, loop, ..., operator, loop, ...), after one warm-up each."""
    for run in peers.values():
        run()  # warm-up: imports, connections, code paths
    results: dict[str, list[dict[str, Any]]] = {label: [] for label in peers}
    for _ in range(rounds):
        for label, run in peers.items():
            results[label].append(measure_run(url, endpoint, run, stack_pid=stack_pid))
    return results


def paired_median(results: dict[str, list[dict[str, Any]]], key: str, a: str, b: str) -> float:
    """The median over rounds of ``a``'s ``key`` / ``b``'s ``key`` in the same round."""
    return statistics.median(x[key] / y[key] for x, y in zip(results[a], results[b], strict=True))


def summarize(results: dict[str, list[dict[str, Any]]], *, ideal: float | None, title: str) -> dict[str, Any]:
    """Print the runs and the summary of one comparison; return the operator's medians and paired ratios."""
    log(f"\n{title}")
    log(
        "| round | peer | rows | rows/s (busy window) | vs ideal | client CPU s / 100k rows "
        "| CPU s in the window: client / endpoint / moto | wall s | load |"
    )
    log("|---|---|---|---|---|---|---|---|---|")
    rounds = len(results[OPERATOR])
    for index in range(rounds):
        for label, runs in results.items():
            run = runs[index]
            cpu = run["cpu"]
            vs = f"{run['busy_rate'] / ideal:.2f}" if ideal else "-"
            log(
                f"| {index + 1} | {label} | {run['rows']:,} | {run['busy_rate']:,.0f} | {vs} | "
                f"{run['cpu_per_100k']:.3f} | "
                f"{cpu['client']:.2f} / {cpu['endpoint']:.2f} / {cpu['moto']:.2f} | {run['wall']:.2f} | {run['load']} |"
            )
    log(f"\nmedians over {rounds} rounds; ratios are medians of the rounds' paired ratios (operator / peer):")
    log(
        "| peer | rows/s | vs ideal | client CPU s / 100k rows | operator / peer, rows/s "
        "| operator / peer, CPU per row |"
    )
    log("|---|---|---|---|---|---|")
    out: dict[str, Any] = {"rounds": rounds, "peers": {}}
    for label, runs in results.items():
        rate = statistics.median(run["busy_rate"] for run in runs)
        cpu = statistics.median(run["cpu_per_100k"] for run in runs)
        ratio = paired_median(results, "busy_rate", OPERATOR, label)
        cpu_ratio = paired_median(results, "cpu_per_100k", OPERATOR, label)
        vs = f"{rate / ideal:.2f}" if ideal else "-"
        log(f"| {label} | {rate:,.0f} | {vs} | {cpu:.3f} | {ratio:.2f} | {cpu_ratio:.2f} |")
        out["peers"][label] = {"rate": rate, "cpu_per_100k": cpu, "ratio": ratio, "cpu_ratio": cpu_ratio}
    loads = [run["load"] for runs in results.values() for run in runs]
    log(f"load during the rounds: first {loads[0]}, last {loads[-1]}")
    return out
