"""Benchmark of ``SageMakerRuntimeHook``: client CPU per InvokeEndpoint call, boto3 against the hook's two paths.

Starts its own local stack (pinned to CPU 1) and runs the client on CPU 0. Against one zero-latency
``sum`` endpoint, with a 200 KB CSV body (rows of 20 floats), it measures the client CPU per call
(``time.process_time()`` of this process, all threads) of:

- boto3's default client, ``invoke_endpoint`` (the reference);
- ``hook.make_invoker(...)`` with ``transport="botocore"`` (the botocore client path);
- ``hook.make_invoker(...)`` with ``transport="auto"`` (the lean path).

The variants run paired and interleaved (A, B, C, A, B, C, ...) in ``--rounds`` rounds of
``--calls`` calls, sequentially and with ``--threads`` threads; each variant's figure is the median
over the rounds of its ratio to the reference in the same round, so load that drifts during the run
meets every variant alike. Target: the lean path <= 0.45x boto3's default client.

With ``--floor``, the same rounds also measure, as references for where the lean path's floor is
(none of them is a transport the hook could use):

- ``SigV4Auth + urllib3 pool``: botocore's signer on an ``AWSRequest`` and a plain urllib3
  connection pool's ``urlopen``, nothing else (the least these parts can do per call);
- ``SigV4Auth + http.client``: the same signer and the standard library's HTTP connection, one per
  thread (what is left without urllib3's layers);
- ``urllib3 pool, presigned`` and ``http.client, presigned``: the same two exchanges with headers
  signed once a minute instead of per call (the HTTP part of a call alone);
- ``SigV4Auth alone`` and ``SHA-256 of the body alone`` (no request sent).

The rows add up to the floor of a call built from botocore's signer and urllib3: ``SigV4Auth alone``
plus ``urllib3 pool, presigned``; the summary line prints that sum against the target.

With ``--profile``, also profiles the lean invoker with cProfile (CPU time of the calling thread).

Run: ``.venv/bin/python bench/bench_hook.py [--rounds 9] [--calls 300] [--threads 8] [--floor] [--profile]``
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import http.client
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

ROW = (",".join(f"{0.1 * i:.6f}" for i in range(20)) + "\n").encode()
BODY = ROW * (200_000 // len(ROW) + 1)  # 200 KB
CLIENT_CPU = {0}
STACK_CPU = {1}
TARGET = 0.45
REFERENCE = "boto3 default client"
FLOOR_SIGNER = "floor: SigV4Auth alone"
FLOOR_URLLIB3_PRESIGNED = "floor: urllib3 pool, presigned"


def cpu_per_call(fn: Callable[[], object], calls: int, threads: int) -> float:
    """Client CPU ms per call of ``fn`` over ``calls`` calls shared by ``threads`` threads."""
    if threads == 1:
        start = time.process_time()
        for _ in range(calls):
            fn()
        return (time.process_time() - start) / calls * 1e3
    counter = iter(range(calls))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if next(counter, None) is None:
                    return
            fn()

    with ThreadPoolExecutor(max_workers=threads) as pool:
        start = time.process_time()
        for future in [pool.submit(worker) for _ in range(threads)]:
            future.result()
        return (time.process_time() - start) / calls * 1e3


def paired(variants: dict[str, Callable[[], object]], *, rounds: int, calls: int, threads: int) -> None:
    samples: dict[str, list[float]] = {label: [] for label in variants}
    for _ in range(rounds):
        for label, fn in variants.items():
            samples[label].append(cpu_per_call(fn, calls, threads))
    ref = samples[REFERENCE]
    print(
        f"\n## Client CPU per call, {threads} thread(s), body {len(BODY):,} B "
        f"({rounds} rounds x {calls} calls; {load()})"
    )
    print("| variant | median ms/call | median of paired ratios to boto3 (min .. max) |")
    print("|---|---|---|")
    for label, values in samples.items():
        ratios = sorted(v / r for v, r in zip(values, ref, strict=True))
        verdict = ""
        if label.endswith("lean path"):
            verdict = f" -> target <= {TARGET}x: {'MET' if statistics.median(ratios) <= TARGET else 'MISSED'}"
        print(
            f"| {label} | {statistics.median(values):.3f} | "
            f"**{statistics.median(ratios):.2f}x** ({ratios[0]:.2f} .. {ratios[-1]:.2f}){verdict} |"
        )
    if FLOOR_SIGNER in samples and FLOOR_URLLIB3_PRESIGNED in samples:
        parts = statistics.median(
            (s + h) / r for s, h, r in zip(samples[FLOOR_SIGNER], samples[FLOOR_URLLIB3_PRESIGNED], ref, strict=True)
        )
        print(
            f"\nfloor of botocore's signer + urllib3 (SigV4Auth alone + urllib3 pool, presigned): {parts:.2f}x "
            f"boto3 (median of paired sums), against the target <= {TARGET}x"
        )


def floor_variants(url: str, name: str, credentials: object, pool_size: int) -> dict[str, Callable[[], object]]:
    """The reference pieces of ``--floor`` (see the module docstring), against endpoint ``name``."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from urllib3 import HTTPConnectionPool
    from urllib3.util.retry import Retry

    target = f"{url}/endpoints/{name}/invocations"
    path = f"/endpoints/{name}/invocations"
    host = url.split("//", 1)[1]
    headers = {"Content-Type": "text/csv", "Accept": "text/csv"}
    pool = HTTPConnectionPool(*host.split(":"), maxsize=pool_size, block=True)
    local = threading.local()

    def signed() -> dict[str, str]:
        request = AWSRequest(method="POST", url=target, headers=headers, data=BODY)
        frozen = credentials.get_frozen_credentials()  # type: ignore[attr-defined]
        SigV4Auth(frozen, "sagemaker", "us-east-1").add_auth(request)
        return dict(request.headers.items())

    presigned: list[tuple[float, dict[str, str]]] = []

    def signed_lately() -> dict[str, str]:
        """Headers signed at most a minute ago (the local endpoint, like the service, rejects old ones)."""
        if not presigned or time.monotonic() - presigned[-1][0] > 60:
            presigned.append((time.monotonic(), signed()))
        return presigned[-1][1]

    def with_urllib3(sign: Callable[[], dict[str, str]] = signed) -> bytes:
        response = pool.urlopen("POST", path, body=BODY, headers=sign(), retries=Retry(False))
        return bytes(response.data)

    def with_http_client(sign: Callable[[], dict[str, str]] = signed) -> bytes:
        connection = getattr(local, "connection", None)
        if connection is None:
            connection = local.connection = http.client.HTTPConnection(host)
        connection.request("POST", path, body=BODY, headers=sign())
        return connection.getresponse().read()

    return {
        "floor: SigV4Auth + urllib3 pool": with_urllib3,
        "floor: SigV4Auth + http.client": with_http_client,
        FLOOR_URLLIB3_PRESIGNED: lambda: with_urllib3(signed_lately),
        "floor: http.client, presigned": lambda: with_http_client(signed_lately),
        FLOOR_SIGNER: signed,
        "floor: SHA-256 of the body alone": lambda: hashlib.sha256(BODY).hexdigest(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9, help="paired rounds (>= 5)")
    parser.add_argument("--calls", type=int, default=300, help="calls per variant per round")
    parser.add_argument("--threads", type=int, default=8, help="threads for the threaded section (0: skip it)")
    parser.add_argument("--floor", action="store_true", help="also measure the floor's pieces (see the docstring)")
    parser.add_argument("--profile", action="store_true", help="profile the lean invoker with cProfile")
    args = parser.parse_args()
    if args.rounds < 5:
        parser.error("--rounds must be >= 5")

    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[attr-defined]
    print(f"# bench_hook: {args.rounds} rounds x {args.calls} calls; before start: {load()}")
    with LocalStackProcess(cpus=STACK_CPU) as stack:
        pin_self(CLIENT_CPU)
        url = stack.runtime_endpoint_url
        name = local_control.put_endpoint(url, model="sum", faults={"latency_ms": 0})

        from airflow_provider_smrt.hooks.sagemaker_runtime import SageMakerRuntimeHook

        pool = max(10, args.threads)
        params = {"content_type": "text/csv", "accept": "text/csv"}
        botocore_path = SageMakerRuntimeHook(
            aws_conn_id="aws_default", max_pool_connections=pool, transport="botocore"
        ).make_invoker(name, **params)
        lean_path = SageMakerRuntimeHook(aws_conn_id="aws_default", max_pool_connections=pool).make_invoker(
            name, **params
        )
        boto3_client = runtime_client(url, max_pool_connections=pool)

        def boto3_call() -> object:
            response = boto3_client.invoke_endpoint(
                EndpointName=name, Body=BODY, ContentType="text/csv", Accept="text/csv"
            )
            return response["Body"].read()

        variants: dict[str, Callable[[], object]] = {
            REFERENCE: boto3_call,
            "hook.make_invoker, botocore path": lambda: botocore_path(BODY),
            "hook.make_invoker, lean path": lambda: lean_path(BODY),
        }
        if args.floor:
            variants.update(floor_variants(url, name, boto3_client._request_signer._credentials, pool))
        expected = boto3_call()
        for label, fn in variants.items():  # warm up: connections, lazy imports, caches; and the same answer
            for _ in range(50):
                result = fn()
            if label not in (FLOOR_SIGNER, "floor: SHA-256 of the body alone"):
                body = result if isinstance(result, bytes) else result.body  # type: ignore[attr-defined]
                assert body == expected, label

        paired(variants, rounds=args.rounds, calls=args.calls, threads=1)
        if args.threads:
            paired(variants, rounds=args.rounds, calls=args.calls, threads=args.threads)
        stats = local_control.endpoint_stats(url, name)
        print(f"\nendpoint: {stats['requests']} requests, max {stats['max_concurrent']} at once; {load()}")

        if args.profile:
            profiler = cProfile.Profile(time.thread_time)
            profiler.enable()
            for _ in range(args.calls):
                lean_path(BODY)
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
            print(f"\n## cProfile of {args.calls} lean make_invoker calls (tottime)")
            print(out.getvalue())


if __name__ == "__main__":
    main()
