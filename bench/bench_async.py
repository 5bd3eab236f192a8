"""Benchmark of the async path: submission rate, and S3 requests per pending location per poke.

Run on the local stack::

    .venv/bin/smrt-local run -- .venv/bin/python bench/bench_async.py [--invocations 200]

For N invocations on an endpoint that takes ``--delay`` seconds each (``--capacity`` at once), it
measures:

* the submission rate of ``SageMakerInvokeEndpointAsyncOperator`` (requests/s, ``--concurrency`` in flight);
* for the sensor in poke mode and the trigger (deferrable mode): every S3 request, counted with a
  botocore ``before-call.s3`` event handler on the very client each one uses, divided by the pending
  locations (output + failure per pending invocation) at the start of each poke. Target: <= 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="smrt-bench-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))

import local_control  # tests/support/local_control.py: the local stack's control API


class PollMeter:
    """Wraps a poll function: per poll, the pending locations at its start and the S3 requests it made."""

    def __init__(self) -> None:
        self.requests = 0
        self.polls: list[tuple[int, int]] = []  # (pending locations, requests)
        self._clients: set[int] = set()

    def count(self, **_: Any) -> None:
        self.requests += 1

    def attach(self, client: Any) -> None:
        if id(client) not in self._clients:
            self._clients.add(id(client))
            client.meta.events.register("before-call.s3", self.count)

    def _pending_locations(self, tracker: Any) -> int:
        return sum(1 + bool(s.invocation.failure_location) for s in tracker.pending)

    def wrap_sync(self, poll: Callable[..., None]) -> Callable[..., None]:
        def wrapped(tracker: Any, client: Any, **kwargs: Any) -> None:
            self.attach(client)
            pending, before = self._pending_locations(tracker), self.requests
            poll(tracker, client, **kwargs)
            self.polls.append((pending, self.requests - before))

        return wrapped

    def wrap_async(self, poll: Callable[..., Any]) -> Callable[..., Any]:
        async def wrapped(tracker: Any, client: Any, **kwargs: Any) -> None:
            self.attach(client)
            pending, before = self._pending_locations(tracker), self.requests
            await poll(tracker, client, **kwargs)
            self.polls.append((pending, self.requests - before))

        return wrapped

    def report(self, label: str) -> dict[str, float]:
        polls = [(p, r) for p, r in self.polls if p]
        per_location = [r / p for p, r in polls]
        figures = {
            "polls": len(polls),
            "s3_requests": sum(r for _, r in polls),
            "max_pending_locations": max((p for p, _ in polls), default=0),
            "requests_per_pending_location_per_poll_mean": sum(per_location) / len(per_location) if polls else 0.0,
            "requests_per_pending_location_per_poll_max": max(per_location, default=0.0),
            "requests_per_poll_max": max((r for _, r in polls), default=0),
        }
        print(f"{label}:")
        for key, value in figures.items():
            print(f"  {key:48s} {value:.4f}" if isinstance(value, float) else f"  {key:48s} {value}")
        return figures


def _context(run_id: str) -> dict[str, Any]:
    return {"ti": SimpleNamespace(dag_id="bench", task_id="invoke", run_id=run_id, map_index=-1, try_number=1)}


def submit(endpoint: str, inputs: list[str], run_id: str, concurrency: int) -> list[dict[str, Any]]:
    from airflow_provider_smrt.async_inference import read_records
    from airflow_provider_smrt.operators.invoke_endpoint_async import SageMakerInvokeEndpointAsyncOperator

    op = SageMakerInvokeEndpointAsyncOperator(
        task_id="invoke",
        endpoint_name=endpoint,
        input_location=inputs,
        content_type="text/csv",
        concurrency=concurrency,
    )
    op.hook.conn  # noqa: B018 - client creation is not part of the rate
    started = time.perf_counter()
    summary = op.execute(_context(run_id))
    elapsed = time.perf_counter() - started
    records = read_records(op.s3_client, summary)
    print(f"submitted {len(records)} async invocations in {elapsed:.2f}s: {len(records) / elapsed:.0f}/s "
          f"(concurrency {concurrency}, ledger writes included)")
    return records


def bench_poke(records: list[dict[str, Any]], poke_interval: float) -> dict[str, float]:
    from airflow_provider_smrt.sensors import async_inference as sensor_module

    meter = PollMeter()
    original = sensor_module.poll_sync
    sensor_module.poll_sync = meter.wrap_sync(original)
    try:
        sensor = sensor_module.SageMakerAsyncInferenceSensor(
            task_id="wait", invocations=records, poke_interval=poke_interval, mode="poke"
        )
        started = time.perf_counter()
        result = sensor.execute({})
        elapsed = time.perf_counter() - started
    finally:
        sensor_module.poll_sync = original
    assert all(s["status"] == "succeeded" for s in result), "some invocations did not succeed"
    print(f"sensor (poke mode) waited {elapsed:.1f}s")
    return meter.report("sensor, poke mode")


def bench_trigger(records: list[dict[str, Any]], poke_interval: float) -> dict[str, float]:
    from airflow_provider_smrt.triggers import async_inference as trigger_module

    meter = PollMeter()
    original = trigger_module.poll_async
    trigger_module.poll_async = meter.wrap_async(original)
    try:
        trigger = trigger_module.SageMakerAsyncInferenceTrigger(
            invocations=records, poke_interval=poke_interval, timeout=600
        )

        async def run() -> Any:
            return [event async for event in trigger.run()]

        started = time.perf_counter()
        (event,) = asyncio.run(run())
        elapsed = time.perf_counter() - started
    finally:
        trigger_module.poll_async = original
    assert event.payload["status"] == "success", event.payload["message"]
    print(f"trigger (deferrable mode) waited {elapsed:.1f}s")
    return meter.report("trigger, deferrable mode")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--invocations", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--delay", type=float, default=2.0, help="seconds the endpoint takes per request")
    parser.add_argument("--capacity", type=int, default=40, help="requests the endpoint processes at once")
    parser.add_argument("--poke-interval", type=float, default=1.0)
    args = parser.parse_args()

    runtime_url = os.environ.get("SMRT_RUNTIME_ENDPOINT_URL")
    if not runtime_url or "AIRFLOW_CONN_AWS_DEFAULT" not in os.environ:
        sys.exit("run under the local stack: .venv/bin/smrt-local run -- .venv/bin/python bench/bench_async.py")
    import boto3
    from botocore.config import Config

    s3 = boto3.client(
        "s3", endpoint_url=os.environ["SMRT_S3_ENDPOINT_URL"], config=Config(s3={"addressing_style": "path"})
    )
    prefix = f"bench-async/{int(time.time())}/"
    inputs = []
    for i in range(args.invocations):
        key = f"{prefix}in/{i:04d}.csv"
        s3.put_object(Bucket="smrt-local", Key=key, Body=f"{i},1,2\n".encode())
        inputs.append(f"s3://smrt-local/{key}")
    faults = {"async_delay_seconds": args.delay, "async_capacity": args.capacity}
    print(f"{args.invocations} invocations; endpoint: {args.delay}s each, {args.capacity} at once; "
          f"poke interval {args.poke_interval}s")

    endpoint = local_control.put_endpoint(runtime_url, model="sum", faults=faults)
    bench_poke(submit(endpoint, inputs, "poke", args.concurrency), args.poke_interval)
    endpoint = local_control.put_endpoint(runtime_url, model="sum", faults=faults)
    bench_trigger(submit(endpoint, inputs, "deferrable", args.concurrency), args.poke_interval)


if __name__ == "__main__":
    main()
