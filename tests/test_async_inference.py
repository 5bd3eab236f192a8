"""The Airflow-free core: planning the fewest S3 requests and reading statuses (sync and async)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from types import SimpleNamespace
from typing import Any

import pytest
from botocore.exceptions import ClientError

from airflow_provider_smrt.async_inference import (
    AsyncInferenceTracker,
    AsyncInvocation,
    InvocationState,
    default_timeout_seconds,
    poll_async,
    poll_sync,
)
from airflow_provider_smrt.exceptions import CredentialsError, ParameterValidationError
from airflow_provider_smrt.retry import RetryPolicy
from airflow_provider_smrt.s3 import S3Location

NOW = dt.datetime(2026, 1, 1, 12, 0, 5, tzinfo=dt.timezone.utc)


def _not_found(op: str) -> ClientError:
    return ClientError({"Error": {"Code": "404"}, "ResponseMetadata": {"HTTPStatusCode": 404}}, op)


class FakeS3:
    """An in-memory S3 answering head/list/get like boto3, counting every call."""

    def __init__(self, objects: dict[str, bytes] | None = None, *, page_size: int = 1000) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        for uri, data in (objects or {}).items():
            self.put(uri, data)
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.page_size = page_size
        self.fail_next: list[Exception] = []

    def put(self, uri: str, data: bytes) -> None:
        loc = S3Location.parse(uri)
        self.objects[(loc.bucket, loc.key)] = data

    def _maybe_fail(self) -> None:
        if self.fail_next:
            raise self.fail_next.pop(0)

    def head_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        self.calls.append(("head_object", {"Bucket": Bucket, "Key": Key}))
        self._maybe_fail()
        if (Bucket, Key) not in self.objects:
            raise _not_found("HeadObject")
        return {"ContentLength": len(self.objects[(Bucket, Key)]), "LastModified": NOW}

    def list_objects_v2(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("list_objects_v2", kwargs))
        self._maybe_fail()
        bucket, prefix = kwargs["Bucket"], kwargs.get("Prefix", "")
        after = kwargs.get("ContinuationToken") or kwargs.get("StartAfter") or ""
        keys = sorted(k for b, k in self.objects if b == bucket and k.startswith(prefix) and k > after)
        page = keys[: min(self.page_size, kwargs.get("MaxKeys", 1000))]
        truncated = len(keys) > len(page)
        out: dict[str, Any] = {
            "Contents": [{"Key": k, "Size": len(self.objects[(bucket, k)]), "LastModified": NOW} for k in page],
            "IsTruncated": truncated,
        }
        if truncated:
            out["NextContinuationToken"] = page[-1]
        return out

    def get_object(self, *, Bucket: str, Key: str, Range: str | None = None) -> dict[str, Any]:
        self.calls.append(("get_object", {"Bucket": Bucket, "Key": Key, "Range": Range}))
        data = self.objects[(Bucket, Key)]
        if Range:
            start, end = Range.removeprefix("bytes=").split("-")
            data = data[int(start) : int(end) + 1]
        return {"Body": _Body(data)}

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, n: int = -1) -> bytes:
        return self.data if n < 0 else self.data[:n]

    def __enter__(self) -> _Body:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class AsyncFakeS3:
    """The aiobotocore-shaped twin of :class:`FakeS3`."""

    def __init__(self, sync: FakeS3) -> None:
        self.sync = sync

    async def head_object(self, **kwargs: Any) -> dict[str, Any]:
        return self.sync.head_object(**kwargs)

    async def list_objects_v2(self, **kwargs: Any) -> dict[str, Any]:
        return self.sync.list_objects_v2(**kwargs)

    async def get_object(self, **kwargs: Any) -> dict[str, Any]:
        response = self.sync.get_object(**kwargs)
        return {"Body": _AsyncBody(response["Body"].data)}


class _AsyncBody(_Body):
    async def read(self, n: int = -1) -> bytes:  # type: ignore[override]
        return self.data if n < 0 else self.data[:n]

    async def __aenter__(self) -> _AsyncBody:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


def _invocations(n: int, *, out: str = "s3://b/out/", fail: str = "s3://b/fail/") -> list[dict[str, Any]]:
    return [
        {
            "inference_id": f"id-{i:03d}",
            "input": f"s3://b/in/{i}.csv",
            "output_location": f"{out}id-{i:03d}.out",
            "failure_location": f"{fail}id-{i:03d}-error.out",
            "submitted_at": "2026-01-01T12:00:00+00:00",
        }
        for i in range(n)
    ]


def test_plan_groups_by_directory_and_heads_single_keys() -> None:
    tracker = AsyncInferenceTracker(_invocations(3) + _invocations(1, out="s3://c/x/", fail="s3://c/y/"))
    plan = tracker.plan()
    kinds = {(p.bucket, p.prefix, p.is_head) for p in plan}
    assert ("b", "out/id-00", False) in kinds
    assert ("b", "fail/id-00", False) in kinds
    assert ("c", "x/id-000.out", True) in kinds and ("c", "y/id-000-error.out", True) in kinds
    assert len(plan) == 4


def test_poll_sync_few_requests_and_never_repolls_finished() -> None:
    invs = _invocations(200)
    s3 = FakeS3({f"s3://b/other/{i}": b"x" for i in range(50)})
    tracker = AsyncInferenceTracker(invs)
    poll_sync(tracker, s3)
    assert s3.names() == ["list_objects_v2", "list_objects_v2"]  # one listing per directory for 200 pending
    assert len(tracker.pending) == 200

    for i in range(150):
        s3.put(invs[i]["output_location"], b"1\n2\n")
    s3.put(invs[150]["failure_location"], b"boom: the model said no" + b"x" * 10_000)
    s3.calls.clear()
    poll_sync(tracker, s3)
    assert sorted(tracker.summary().items()) == [("failed", 1), ("pending", 49), ("succeeded", 150), ("total", 200)]
    assert s3.names().count("list_objects_v2") == 2
    gets = [c for c in s3.calls if c[0] == "get_object"]
    assert len(gets) == 1 and gets[0][1]["Range"] == "bytes=0-4095"
    failed = tracker.failed[0]
    assert failed.failure_message.startswith("boom") and len(failed.failure_message) == 4096
    assert "id-150" in str(tracker.failure_error()) and "s3://b/in/150.csv" in str(tracker.failure_error())

    # Finished ones are not probed again: the listing starts after the first pending key.
    s3.calls.clear()
    poll_sync(tracker, s3)
    starts = sorted(c[1]["StartAfter"] for c in s3.calls if c[0] == "list_objects_v2")
    assert starts == ["fail/id-151-error.ou", "out/id-151.ou"]
    assert [c for c in s3.calls if c[0] == "get_object"] == []  # the message is read once

    for i in range(151, 200):
        s3.put(invs[i]["output_location"], b"ok")
    poll_sync(tracker, s3)
    assert tracker.done and len(tracker.succeeded) == 199
    status = tracker.succeeded[0]
    assert status.output_size == 4 and status.time_to_completion_seconds == 5.0


def test_single_pending_uses_head_and_pagination_stops_early() -> None:
    invs = _invocations(5)
    s3 = FakeS3(page_size=2)
    for i in range(4):
        s3.put(invs[i]["output_location"], b"ok")
    for i in range(100):  # same prefix, sorting after the last wanted key
        s3.put(f"s3://b/out/id-009-{i:03d}", b"unrelated")
    tracker = AsyncInferenceTracker(invs)
    poll_sync(tracker, s3)
    outs = [c for c in s3.calls if c[0] == "list_objects_v2" and c[1]["Prefix"].startswith("out/")]
    assert len(outs) == 3  # 2 pages of wanted keys, 1 page past the last: never walks the 100 others
    s3.calls.clear()
    poll_sync(tracker, s3)
    assert sorted(s3.names()) == ["head_object", "head_object"]  # one pending: output + failure HEAD


def test_poll_async_matches_sync() -> None:
    invs = _invocations(10)
    s3 = FakeS3()
    for i in range(0, 10, 2):
        s3.put(invs[i]["output_location"], b"ok")
    s3.put(invs[1]["failure_location"], b"bad input")
    tracker = AsyncInferenceTracker(invs)
    asyncio.run(poll_async(tracker, AsyncFakeS3(s3)))
    assert tracker.summary() == {"total": 10, "succeeded": 5, "failed": 1, "pending": 4}
    assert tracker.failed[0].failure_message == "bad input"
    assert tracker.requests == 3  # two listings + one ranged GET


def test_transient_errors_are_retried_and_permanent_ones_raised() -> None:
    s3 = FakeS3()
    s3.fail_next = [
        ClientError({"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "ListObjectsV2")
    ]
    tracker = AsyncInferenceTracker(_invocations(3))
    poll_sync(tracker, s3, retry_policy=RetryPolicy(max_attempts=3, base_delay=0.001))
    assert tracker.requests == 3  # 2 listings + 1 retry
    s3.fail_next = [
        ClientError({"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "ListObjectsV2")
    ]
    with pytest.raises(CredentialsError):
        poll_sync(tracker, s3, retry_policy=RetryPolicy(max_attempts=3, base_delay=0.001))


def test_invocation_parsing_and_timeout() -> None:
    inv = AsyncInvocation.from_value({"output_location": "s3://b/k", "extra": 1, "request_ttl_seconds": 60})
    assert inv.deadline_seconds == 60 + 900
    assert default_timeout_seconds([inv]) == 1020
    assert default_timeout_seconds([AsyncInvocation(output_location="s3://b/k")]) == 21600 + 900 + 60
    with pytest.raises(ParameterValidationError):
        AsyncInvocation.from_value({"output_location": "https://example.com/x"})
    with pytest.raises(ParameterValidationError):
        AsyncInvocation.from_value({"inference_id": "x"})
    tracker = AsyncInferenceTracker([inv])
    assert tracker.statuses[0].state is InvocationState.PENDING
    assert tracker.to_dicts()[0]["status"] == "pending"


def test_listing_against_the_s3_server(s3_client: Any, s3_prefix: str) -> None:
    """StartAfter/Prefix narrowing behaves on the real (moto) S3 server as on the fake."""
    invs = _invocations(20, out=f"{s3_prefix}out/", fail=f"{s3_prefix}fail/")
    bucket = S3Location.parse(s3_prefix + "x").bucket
    for inv in invs[:7]:
        loc = S3Location.parse(inv["output_location"])
        s3_client.put_object(Bucket=bucket, Key=loc.key, Body=b"1")
    loc = S3Location.parse(invs[7]["failure_location"])
    s3_client.put_object(Bucket=bucket, Key=loc.key, Body=b"model failed")
    tracker = AsyncInferenceTracker(invs)
    poll_sync(tracker, s3_client)
    assert tracker.summary() == {"total": 20, "succeeded": 7, "failed": 1, "pending": 12}
    assert tracker.requests == 3
    assert tracker.failed[0].failure_message == "model failed"


def test_one_wait_loop_success_failure_timeout_and_cancel() -> None:
    """wait_sync: the loop of the operator's wait and the Parquet invoker (the trigger runs wait_async)."""
    import threading

    from airflow_provider_smrt.async_inference import Watch, outcome_result, wait_sync

    invs = _invocations(2)
    s3 = FakeS3({inv["output_location"]: b"1" for inv in invs})
    tracker = AsyncInferenceTracker(invs)
    outcome = wait_sync(Watch(tracker, poke_interval=0.01), s3)
    assert outcome.status == "success" and tracker.polls == 1

    s3 = FakeS3({invs[0]["output_location"]: b"1", invs[1]["failure_location"]: b"bad input"})
    tracker = AsyncInferenceTracker(invs)
    outcome = wait_sync(Watch(tracker, poke_interval=0.01), s3)
    assert outcome.status == "failure" and outcome.failures[0]["failure_message"] == "bad input"
    tolerated = wait_sync(Watch(AsyncInferenceTracker(invs), poke_interval=0.01, max_failures=1), s3)
    assert tolerated.status == "success"

    tracker = AsyncInferenceTracker(invs)
    outcome = wait_sync(Watch.for_timeout(tracker, timeout=0.05, poke_interval=0.01), FakeS3())
    assert outcome.status == "timeout" and "2 invocation(s) still pending" in outcome.message
    assert tracker.polls >= 2  # the last poll comes after the deadline

    class Timeout(Exception):
        pass

    import logging

    log = logging.getLogger("test")
    with pytest.raises(Timeout, match="still pending"):
        outcome_result(outcome.event(tracker), log=log, timeout_error=Timeout)

    cancel = threading.Event()
    cancel.set()
    outcome = wait_sync(Watch(AsyncInferenceTracker(invs), poke_interval=5), FakeS3(), cancel=cancel)
    assert outcome.status == "cancelled"


def test_outcome_event_without_per_invocation_statuses_names_the_first_failures() -> None:
    """A ledger-fed wait's event has counts and the first failures (capped, no messages), never one entry each."""
    from airflow_provider_smrt.async_inference import FIRST_FAILURES, outcome_event
    from airflow_provider_smrt.async_inference.wait import SUCCESS, WaitOutcome

    invs = _invocations(30)
    tracker = AsyncInferenceTracker(invs)
    for status in tracker.statuses[:12]:
        status.state = InvocationState.FAILED
        status.failure_message = "the container's own words"
    for status in tracker.statuses[12:]:
        status.state = InvocationState.SUCCEEDED
    event = WaitOutcome(SUCCESS, "done").event(tracker, per_invocation=False)
    assert "invocations" not in event and event["summary"]["failed"] == 12
    assert [f["inference_id"] for f in event["first_failures"]] == [i["inference_id"] for i in invs[:FIRST_FAILURES]]
    assert "container" not in json.dumps(event)

    warnings: list[str] = []
    log = SimpleNamespace(info=lambda *a: None, warning=lambda msg, *args: warnings.append(msg % args))
    assert outcome_event(event, log=log, timeout_error=RuntimeError) is event
    assert len(warnings) == FIRST_FAILURES + 1 and warnings[-1] == "... and 2 more tolerated failure(s)"
    assert tracker.failure_error().failures == [s.to_dict() for s in tracker.failed[:FIRST_FAILURES]]
