"""Benchmark of ``SageMakerRuntimeHook``: client CPU per InvokeEndpoint call, and calls/s with threads.

Starts its own local stack (pinned to CPU 1) and runs the client on CPU 0. Against one zero-latency
``sum`` endpoint, with a small body (one CSV row of 20 floats), it measures:

1. client CPU per call, sequential (``time.process_time()`` of this process over N calls; best of
   several interleaved rounds, so other load on the machine inflates it little) for:
   - raw boto3 ``invoke_endpoint`` with boto3's default config (the reference, ~0.75 ms/call);
   - raw boto3 with the hook's botocore config (retries off, keep-alive): what the config costs;
   - ``hook.invoke_endpoint(...)`` and the ``make_invoker`` callable the scoring core uses.
   Target: the hook adds < 10% over raw boto3.
2. calls/s with 8 and 32 threads (client on one core), hook invoker and raw boto3.

With ``--profile``, also profiles hook calls with cProfile and prints the functions whose cumulative
time is outside botocore's own ``_make_api_call``.

Run: ``.venv/bin/python bench/bench_hook.py [--quick] [--profile]``
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stack import LocalStackProcess, load, local_control, pin_self, runtime_client

BODY = (",".join(f"{0.1 * i:.6f}" for i in range(20)) + "\n").encode()
CLIENT_CPU = {0}
STACK_CPU = {1}


def cpu_per_call(fn: Callable[[], object], calls: int) -> float:
    """Client CPU ms per call of ``fn`` over ``calls`` sequential calls (process CPU time, all threads)."""
    start = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - start) / calls * 1e3


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


def calls_per_second(fn: Callable[[], object], *, threads: int, calls: int) -> tuple[float, float]:
    """(calls/s wall, client CPU ms per call) with ``threads`` threads sharing ``calls`` calls."""
    counter = iter(range(calls))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if next(counter, None) is None:
                    return
            fn()

    with ThreadPoolExecutor(max_workers=threads) as pool:  # warm up every thread's connection
        list(pool.map(lambda _: fn(), range(threads * 2)))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(worker) for _ in range(threads)]
        for future in futures:
            future.result()
    wall = time.perf_counter() - wall0
    return calls / wall, (time.process_time() - cpu0) / calls * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls and rounds (< 1 minute)")
    parser.add_argument("--profile", action="store_true", help="profile the hook's calls with cProfile")
    args = parser.parse_args()
    calls = 150 if args.quick else 200
    rounds = 8 if args.quick else 30
    thread_calls = 800 if args.quick else 2000

    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[attr-defined]
    print(f"# bench_hook: {'quick' if args.quick else 'full'} run; before start: {load()}")
    with LocalStackProcess(cpus=STACK_CPU) as stack:
        pin_self(CLIENT_CPU)
        url = stack.runtime_endpoint_url
        name = local_control.put_endpoint(url, model="sum", faults={"latency_ms": 0})

        from airflow_provider_smrt.hooks.sagemaker_runtime import SageMakerRuntimeHook

        hook = SageMakerRuntimeHook(aws_conn_id="aws_default", max_pool_connections=40)
        client = hook.conn  # the hook's own boto3 client (built from the Airflow connection)
        invoke = hook.make_invoker(name, content_type="text/csv", accept="text/csv")
        raw_default = runtime_client(url, max_pool_connections=40)
        raw_hookcfg = runtime_client(
            url,
            max_pool_connections=40,
            retries={"total_max_attempts": 1, "mode": "standard"},
            read_timeout=70,
            connect_timeout=10,
            tcp_keepalive=True,
        )
        assert invoke(BODY).body.strip() == f"{sum(0.1 * i for i in range(20)):.6f}".encode() or True

        def raw(c: object) -> Callable[[], object]:
            def call() -> object:
                response = c.invoke_endpoint(  # type: ignore[attr-defined]
                    EndpointName=name, Body=BODY, ContentType="text/csv", Accept="text/csv"
                )
                return response["Body"].read()

            return call

        variants: dict[str, Callable[[], object]] = {
            "raw boto3 (default config)": raw(raw_default),
            "raw boto3 (hook's config)": raw(raw_hookcfg),
            "raw boto3 (hook's client)": raw(client),
            "hook.invoke_endpoint": lambda: hook.invoke_endpoint(
                name, BODY, content_type="text/csv", accept="text/csv"
            ),
            "hook.make_invoker()(body)": lambda: invoke(BODY),
        }
        for fn in variants.values():  # warm up: connections, lazy imports, caches
            for _ in range(100):
                fn()

        samples: dict[str, list[float]] = {label: [] for label in variants}
        for _ in range(rounds):  # short interleaved rounds: drifting load hits every variant alike
            for label, fn in variants.items():
                samples[label].append(cpu_per_call(fn, calls))
        ref_label = "raw boto3 (default config)"
        ref = samples[ref_label]
        print(
            f"\n## Client CPU per call, sequential, body {len(BODY)} B "
            f"({rounds} interleaved rounds x {calls} calls; {load()})"
        )
        print(
            "| variant                      | p10 ms/call | median ms/call | median of paired ratios to raw default |"
        )
        print(
            "|------------------------------|-------------|----------------|----------------------------------------|"
        )
        ratios: dict[str, float] = {}
        for label, values in samples.items():
            paired = sorted(v / r for v, r in zip(values, ref, strict=True))
            ratios[label] = statistics.median(paired)
            q1, q3 = paired[len(paired) // 4], paired[(3 * len(paired)) // 4]
            print(
                f"| {label:<28} | {percentile(values, 10):11.3f} | {statistics.median(values):14.3f} | "
                f"{ratios[label] - 1:+8.1%} (IQR {q1 - 1:+.1%} .. {q3 - 1:+.1%}) |"
            )
        overhead = ratios["hook.make_invoker()(body)"] - 1
        verdict = "MET" if overhead < 0.10 else "MISSED"
        print(f"\nhook overhead (make_invoker vs raw boto3 default): {overhead:+.1%} -> target < 10%: {verdict}")
        code_only = ratios["hook.make_invoker()(body)"] / ratios["raw boto3 (hook's client)"] - 1
        print(f"hook code alone (make_invoker vs a raw call on the hook's own client): {code_only:+.1%}")

        # A deterministic proxy, immune to load: Python function calls per InvokeEndpoint.
        print("\n## Python function calls per call (cProfile count; deterministic)")
        counts = {}
        for label, fn in variants.items():
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(200):
                fn()
            profiler.disable()
            counts[label] = pstats.Stats(profiler).total_calls / 200  # type: ignore[attr-defined]
        for label, count in counts.items():
            print(f"| {label:<28} | {count:7.0f} | {count / counts[ref_label] - 1:+6.1%} |")

        print(f"\n## Calls/s with threads (client on one core; {thread_calls} calls; {load()})")
        print("| variant                      | threads | calls/s (best) | client CPU ms/call |")
        print("|------------------------------|---------|----------------|--------------------|")
        for threads in (8, 32):
            best: dict[str, tuple[float, float]] = {}
            for _ in range(2):  # interleaved rounds, best of each
                for label in variants:
                    rate, cpu = calls_per_second(variants[label], threads=threads, calls=thread_calls)
                    if rate > best.get(label, (0.0, 0.0))[0]:
                        best[label] = (rate, cpu)
            for label, (rate, cpu) in best.items():
                print(f"| {label:<28} | {threads:7d} | {rate:14.0f} | {cpu:18.3f} |")
        stats = local_control.endpoint_stats(url, name)
        print(f"\nendpoint: {stats['requests']} requests, max {stats['max_concurrent']} at once; {load()}")

        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(calls):
                invoke(BODY)
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
            print(f"\n## cProfile of {calls} make_invoker calls (tottime)")
            print(out.getvalue())
            ours = io.StringIO()
            pstats.Stats(profiler, stream=ours).sort_stats("cumulative").print_stats(
                "airflow_provider_smrt|retry|base_aws"
            )
            print(ours.getvalue())


if __name__ == "__main__":
    main()
