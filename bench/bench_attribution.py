"""Where the operator's extra client CPU goes, next to the hand-written loop of bench_scoring.py (a).

One interleaved batch (``--rounds`` rounds, default 4) at latency 50 ms (``--latency-ms``), capacity
16, 500 rows per request, concurrency 16, model ``constant``, 400k rows; per variant the median rows/s
over the busy window and the client's and moto's CPU inside it:

- the operator as in section (a): Parquet from S3, parts to S3, bodies encoded by its child process;
- the same with ``encode_processes=0``: bodies encoded in the operator's own process;
- the operator on local Parquet in and out (no S3 traffic at all);
- the operator on S3 with a raw boto3 invoker instead of the hook's (no validation, classification
  or Airflow user-agent suffix): ``SageMakerRuntimeHook.make_invoker`` is replaced in this process;
- the operator on S3 with every CSV body written by Arrow's CSV writer, as the loop writes them (the
  encoder's orjson path off: ``encoders._uniform_numeric_matrix`` answers None, and
  ``encode_processes=0`` so that it is this process's encoder that runs);
- the hand-written loop.

Then the operator on S3 runs ``--rounds`` more times with its stages timed: the CPU time of the
calling thread (``time.thread_time``) inside each stage of the invoke workers' loop (the task's share
of encoding a body: handing the rows to the child and reading the body back; the call through the
hook's transport; decoding the predictions; handing them to the in-order writer; taking the next task),
per request, beside the whole loop's and the client's CPU in the window; what is left (the client minus
the workers' loop) is the child's encoding, the read-ahead, the committers and the caller's thread.
Client CPU counts the encoder child's (``_measure.WindowCpu``).
The wrappers are bench-only instrumentation, installed for those runs only.

Run: ``.venv/bin/python bench/bench_attribution.py [--rounds N] [--latency-ms MS]`` (about 5 minutes).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_scoring as b
from _measure import LOOP, loop_peer, measure_run, operator_peer, paired_rounds, quiet_logs
from _stack import LocalStackProcess, load, local_control, runtime_client, s3_client

VARIANTS = (
    "operator, S3",
    "operator, S3, bodies encoded in its own process (encode_processes=0)",
    "operator, local files",
    "operator, S3, raw boto3 invoker",
    "operator, S3, Arrow's CSV writer",
    LOOP,
)


@contextlib.contextmanager
def timed_stages() -> Iterator[collections.Counter[str]]:
    """While open, the CPU seconds of the calling thread inside each stage of the invoke workers' loop."""
    from airflow_provider_smrt.scoring import pipeline, scorer, tasks, writer
    from airflow_provider_smrt.scoring.codecs import selection

    seconds: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    writer_stage = "hand to the in-order writer (post, drain)"
    stages = [
        ("the workers' loop, all of it (Pipeline._work)", pipeline.Pipeline, "_work"),
        ("encode a body, the task's share (PayloadCodec.encode)", selection.PayloadCodec, "encode"),
        ("the call: sign, send, read the response (RequestScorer._call)", scorer.RequestScorer, "_call"),
        ("decode the predictions (RequestScorer._decode)", scorer.RequestScorer, "_decode"),
        (writer_stage, writer.InOrderWriter, "post"),
        (writer_stage, writer.InOrderWriter, "drain"),
        ("take the next task (TaskSource.next)", tasks.TaskSource, "next"),
    ]
    originals = [(owner, name, getattr(owner, name)) for _, owner, name in stages]

    def timed(label: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:  # bench-only instrumentation
            started = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                spent = time.thread_time() - started
                with lock:
                    seconds[label] += spent

        return wrapper

    for (label, _, _), (owner, name, original) in zip(stages, originals, strict=True):
        setattr(owner, name, timed(label, original))
    try:
        yield seconds
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--latency-ms", type=float, default=50.0, help="the endpoint's service time")
    args = parser.parse_args()

    from airflow_provider_smrt.hooks.sagemaker_runtime import SageMakerRuntimeHook
    from airflow_provider_smrt.invocation import InvokeEndpointResult
    from airflow_provider_smrt.scoring.codecs import encoders

    hook_invoker = SageMakerRuntimeHook.make_invoker
    work = Path(tempfile.mkdtemp(prefix="smrt-bench-attribution-"))
    with LocalStackProcess(cpus=b.STACK_CPU) as stack:
        url = stack.runtime_endpoint_url
        stack_pid = stack.process.pid if stack.process is not None else 0
        s3 = s3_client(stack.s3_endpoint_url, max_pool_connections=20)
        quiet_logs()

        def raw_invoker(self: Any, endpoint_name: str, **params: Any) -> Any:
            client = runtime_client(url, max_pool_connections=18)

            def invoke(body: bytes, inference_id: str | None = None) -> InvokeEndpointResult:  # EndpointInvoker
                extra = {"InferenceId": inference_id} if inference_id else {}
                response = client.invoke_endpoint(
                    EndpointName=endpoint_name, Body=body, ContentType="text/csv", **extra
                )
                return InvokeEndpointResult(
                    body=response["Body"].read(),
                    content_type=response.get("ContentType"),
                    invoked_production_variant=response.get("InvokedProductionVariant"),
                )

            return invoke

        prefix = f"s3://{b.BUCKET}/bench/in-{uuid.uuid4().hex[:6]}/"
        b.run_generator(work / "s3", files=16, rows_per_file=25_000, row_group=12_500, s3_prefix=prefix)
        s3_inputs = [f"{prefix}part-{i:04d}.parquet" for i in range(16)]
        local_inputs = [
            str(p) for p in b.generate(directory=work / "local", files=16, rows_per_file=25_000, row_group=12_500)
        ]
        faults = {"latency_ms": args.latency_ms, "capacity": 16}
        endpoint = local_control.put_endpoint(url, model="constant", faults=faults)
        on_s3 = operator_peer(endpoint, s3_inputs, rows_per_request=500, concurrency=16)
        in_task = operator_peer(endpoint, s3_inputs, rows_per_request=500, concurrency=16, encode_processes=0)

        def with_raw_invoker() -> int:
            SageMakerRuntimeHook.make_invoker = raw_invoker  # type: ignore[method-assign]
            try:
                return on_s3()
            finally:
                SageMakerRuntimeHook.make_invoker = hook_invoker  # type: ignore[method-assign]

        fast_matrix = encoders._uniform_numeric_matrix

        def with_arrow_csv_writer() -> int:
            encoders._uniform_numeric_matrix = lambda table: None
            try:
                return in_task()
            finally:
                encoders._uniform_numeric_matrix = fast_matrix

        peers = {
            VARIANTS[0]: on_s3,
            VARIANTS[1]: in_task,
            VARIANTS[2]: operator_peer(
                endpoint, local_inputs, rows_per_request=500, concurrency=16, output_dir=str(work)
            ),
            VARIANTS[3]: with_raw_invoker,
            VARIANTS[4]: with_arrow_csv_writer,
            LOOP: loop_peer(LOOP, url, endpoint, s3_inputs, s3, rows_per_request=500, concurrency=16),
        }
        runs = paired_rounds(url, endpoint, peers, rounds=args.rounds, stack_pid=stack_pid)
        results = {
            variant: [(run["busy_rate"], run["cpu"]["client"], run["cpu"]["moto"]) for run in runs[variant]]
            for variant in VARIANTS
        }
        staged: list[tuple[dict[str, Any], collections.Counter[str], int]] = []
        for _ in range(args.rounds):
            with timed_stages() as seconds:
                run = measure_run(url, endpoint, on_s3, stack_pid=stack_pid)
            requests = local_control.endpoint_stats(url, endpoint)["requests"]
            staged.append((run, seconds, requests))

    print(f"\n{args.rounds} interleaved rounds, latency {args.latency_ms:g} ms, model `constant`, medians; {load()}")
    print("| variant | rows/s | client CPU s in the window | moto CPU s | runs (k rows/s) |")
    print("|---|---|---|---|---|")
    for variant, runs in results.items():
        rates = [r[0] for r in runs]
        print(
            f"| {variant} | {statistics.median(rates):,.0f} | {statistics.median(r[1] for r in runs):.2f} | "
            f"{statistics.median(r[2] for r in runs):.2f} | {', '.join(f'{r / 1000:.0f}' for r in rates)} |"
        )

    print(
        f"\nThe operator on S3 with its stages timed, {args.rounds} runs, medians: {load()}\n"
        "| stage of the invoke workers' loop | thread CPU ms per request |\n|---|---|"
    )
    medians = {
        label: statistics.median(seconds[label] / requests * 1e3 for _, seconds, requests in staged)
        for label in staged[0][1]
    }
    for label, per_request in sorted(medians.items(), key=lambda item: -item[1]):
        print(f"| {label} | {per_request:.2f} |")
    process = statistics.median(run["cpu"]["client"] / requests * 1e3 for run, _, requests in staged)
    rate = statistics.median(run["busy_rate"] for run, _, _ in staged)
    print(f"| the client (this process and its encoder child), in the busy window | {process:.2f} |")
    print(f"(rows/s of these runs: {rate:,.0f})")


if __name__ == "__main__":
    main()
