"""One poll of an :class:`~airflow_provider_smrt.async_inference.tracker.AsyncInferenceTracker`'s plan.

The S3 requests of a poll are written once, as generators that yield each request and receive its
response (:func:`_probe_steps`: one HEAD, or a listing walk; :func:`_failure_steps`: the head of a
failure object, its first :data:`FAILURE_MESSAGE_BYTES` bytes with one ranged GET). Two thin drivers
make the calls: :func:`poll_sync` with a boto3 client (probes on threads), :func:`poll_async` with an
aiobotocore client (probes as tasks). Both update the tracker in the same way.

Transient S3 errors are retried by a :class:`~airflow_provider_smrt.retry.RetryPolicy`; anything
else is raised classified, in words about S3 (:func:`~airflow_provider_smrt.classify.classify_error`
with ``s3_uri``). Object contents other than the head of a failure message are never read, logged or
returned. Airflow-free.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Generator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from airflow_provider_smrt.async_inference.tracker import AsyncInferenceTracker, InvocationStatus, Probe
from airflow_provider_smrt.retry import RetryPolicy, classifier_for_s3
from airflow_provider_smrt.s3 import ObjectInfo, S3Location, is_not_found

T = TypeVar("T")

#: How much of a failure object is read for its message (one ranged GET).
FAILURE_MESSAGE_BYTES = 4096
#: Retries of one S3 request: transient errors (5xx, SlowDown, connection resets) only.
DEFAULT_S3_RETRY_POLICY = RetryPolicy(max_attempts=5, base_delay=0.2, max_delay=5.0, deadline=60.0)
#: Requests issued at once by one poll (threads for boto3, tasks for aiobotocore).
MAX_PARALLEL_PROBES = 8
#: ListObjectsV2 page size.
_PAGE_SIZE = 1000
_DISAPPEARED = b"(the failure object disappeared before it could be read)"

Found = dict[tuple[str, str], ObjectInfo]


@dataclass(frozen=True)
class _Request:
    """One S3 call, ``client.<operation>(**params)``.

    :param tolerate_missing: answer None instead of raising when the object does not exist.
    :param read_bytes: GetObject: answer the first bytes of the body instead of the response.
    """

    operation: str
    params: dict[str, Any]
    tolerate_missing: bool = False
    read_bytes: int | None = None

    @property
    def where(self) -> str:
        return f"s3://{self.params['Bucket']}"


Steps = Generator[_Request, Any, T]


def _list_kwargs(probe: Probe, token: str | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"Bucket": probe.bucket, "Prefix": probe.prefix, "MaxKeys": _PAGE_SIZE}
    if token:
        kwargs["ContinuationToken"] = token
    elif probe.start_after:
        kwargs["StartAfter"] = probe.start_after
    return kwargs


def _take_page(probe: Probe, page: Mapping[str, Any], found: Found) -> str | None:
    """Record the probe's keys in one listing page; the continuation token, or None when done."""
    wanted = set(probe.keys)
    last = probe.keys[-1]
    passed = False
    for obj in page.get("Contents", ()) or ():
        key = obj["Key"]
        if key in wanted:
            found[(probe.bucket, key)] = ObjectInfo.from_listing(probe.bucket, obj)
        if key >= last:
            passed = True
    if passed or not page.get("IsTruncated"):
        return None
    token = page.get("NextContinuationToken")
    return str(token) if token else None


def _probe_steps(probe: Probe) -> Steps[Found]:
    """The requests answering one probe: a HEAD for one key, else a listing walk stopped past the last key."""
    found: Found = {}
    if probe.is_head:
        key = probe.keys[0]
        response = yield _Request("head_object", {"Bucket": probe.bucket, "Key": key}, tolerate_missing=True)
        if response is not None:
            found[(probe.bucket, key)] = ObjectInfo.from_head(f"s3://{probe.bucket}/{key}", response)
        return found
    token: str | None = None
    while True:
        page = yield _Request("list_objects_v2", _list_kwargs(probe, token))
        token = _take_page(probe, page, found)
        if token is None:
            return found


def _failure_steps(status: InvocationStatus) -> Steps[str]:
    """The head of one failure object's message (deleted since it was seen: say so rather than fail)."""
    loc = S3Location.parse(status.invocation.failure_location or "")
    data = yield _Request(
        "get_object",
        {"Bucket": loc.bucket, "Key": loc.key, "Range": f"bytes=0-{FAILURE_MESSAGE_BYTES - 1}"},
        tolerate_missing=True,
        read_bytes=FAILURE_MESSAGE_BYTES,
    )
    return bytes(data if data is not None else _DISAPPEARED)[:FAILURE_MESSAGE_BYTES].decode("utf-8", errors="replace")


def _record_probes(tracker: AsyncInferenceTracker, results: list[tuple[Found, int]]) -> None:
    found: Found = {}
    for probe_found, requests in results:
        found.update(probe_found)
        tracker.requests += requests
    tracker.apply(found)


# -- boto3 -------------------------------------------------------------------------------------------


def _drive_sync(steps: Steps[T], client: Any, policy: RetryPolicy) -> tuple[T, int]:
    """Make the calls ``steps`` yields, one at a time; its result and the requests made (retries included)."""
    requests = 0

    def call(request: _Request) -> Any:
        nonlocal requests
        requests += 1
        try:
            response = getattr(client, request.operation)(**request.params)
        except Exception as err:
            if request.tolerate_missing and is_not_found(err):
                return None
            raise
        if request.read_bytes is None:
            return response
        with response["Body"] as body:
            return body.read(request.read_bytes)

    try:
        request = next(steps)
        while True:
            answer = policy.call(functools.partial(call, request), classify=classifier_for_s3(request.where))
            request = steps.send(answer)
    except StopIteration as stop:
        return stop.value, requests


def poll_sync(
    tracker: AsyncInferenceTracker,
    client: Any,
    *,
    retry_policy: RetryPolicy | None = None,
    max_parallel: int = MAX_PARALLEL_PROBES,
) -> None:
    """Run one poll of ``tracker``'s plan with a boto3 S3 client, then read new failure messages.

    :param tracker: the invocations and their statuses; updated in place.
    :param client: a boto3 S3 client (thread-safe; probes run on up to ``max_parallel`` threads).
    :param retry_policy: retries of each request (default :data:`DEFAULT_S3_RETRY_POLICY`).
    :param max_parallel: probes run at once (1: in the calling thread).
    :raises InvocationError: a non-retryable S3 error, or retries exhausted (classified).
    """
    policy = retry_policy or DEFAULT_S3_RETRY_POLICY
    probes = tracker.plan()

    def run(probe: Probe) -> tuple[Found, int]:
        return _drive_sync(_probe_steps(probe), client, policy)

    if len(probes) <= 1 or max_parallel <= 1:
        results = [run(probe) for probe in probes]
    else:
        with ThreadPoolExecutor(max_workers=min(max_parallel, len(probes))) as pool:
            results = list(pool.map(run, probes))
    _record_probes(tracker, results)
    for status in tracker.unread_failures():
        status.failure_message, requests = _drive_sync(_failure_steps(status), client, policy)
        tracker.requests += requests


# -- aiobotocore -------------------------------------------------------------------------------------


async def _drive_async(steps: Steps[T], client: Any, policy: RetryPolicy) -> tuple[T, int]:
    """:func:`_drive_sync` with an aiobotocore client."""
    requests = 0

    async def call(request: _Request) -> Any:
        nonlocal requests
        requests += 1
        try:
            response = await getattr(client, request.operation)(**request.params)
        except Exception as err:
            if request.tolerate_missing and is_not_found(err):
                return None
            raise
        if request.read_bytes is None:
            return response
        async with response["Body"] as body:
            return await body.read(request.read_bytes)

    try:
        request = next(steps)
        while True:
            answer = await policy.call_async(
                functools.partial(call, request), classify=classifier_for_s3(request.where)
            )
            request = steps.send(answer)
    except StopIteration as stop:
        return stop.value, requests


async def poll_async(
    tracker: AsyncInferenceTracker,
    client: Any,
    *,
    retry_policy: RetryPolicy | None = None,
    max_parallel: int = MAX_PARALLEL_PROBES,
) -> None:
    """:func:`poll_sync` for an aiobotocore S3 client (same plan, same updates)."""
    policy = retry_policy or DEFAULT_S3_RETRY_POLICY
    gate = asyncio.Semaphore(max(1, max_parallel))

    async def run(probe: Probe) -> tuple[Found, int]:
        async with gate:
            return await _drive_async(_probe_steps(probe), client, policy)

    _record_probes(tracker, list(await asyncio.gather(*(run(probe) for probe in tracker.plan()))))
    for status in tracker.unread_failures():
        status.failure_message, requests = await _drive_async(_failure_steps(status), client, policy)
        tracker.requests += requests
