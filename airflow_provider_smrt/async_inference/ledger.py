"""The invoke operator's submission records: deterministic ids, and a ledger object in S3.

Idempotency (task retries, cleared tasks, a worker killed mid-submission)
------------------------------------------------------------------------
SageMaker does not deduplicate async requests: the same request sent twice is scored twice. The
operator therefore makes every submission *deterministic* and *recorded*:

1-2. **Deterministic inference ids and output names** (:mod:`~airflow_provider_smrt.async_inference.ids`):
   the same task instance sends the same InferenceId and ``Filename`` for the same input on every try.
3. **A ledger in S3.** The records of submitted requests (input, inference id, OutputLocation,
   FailureLocation, submitted_at) are written to one JSON object per task instance (map index
   included), at ``ledger_uri`` or by default under the first input's directory:
   ``<input dir>/_smrt_async_ledger/<dag_id>/<task_id>/<sha256(run_id, map_index)[:32]>.json``.
   Every submission is recorded as soon as its response arrives, before its slot is given to the
   next request: the worker thread appends it to a small *segment* object next to the ledger
   (``<ledger>.parts/<writer>-<seq>.json``; completions that arrive while a segment is being written
   go into the next one). At the end the segments are folded into the ledger object. So a kill or a
   timeout at any point (even inside the submitter's shutdown) leaves unrecorded at most the
   requests in flight. A later try of the same task instance reads the ledger and its segments
   first and does not resubmit what they list; its records (with their original ``submitted_at``)
   are returned again. For inputs the ledger lacks (in flight when the worker died), the operator
   predicts the output (and failure) key from a recorded sibling and the deterministic ``Filename``
   and skips the request when that object already exists.

Why not XCom: Airflow clears a task instance's XCom when a new try starts. Why not a ledger "next
to the output": the OutputLocation is only known from the first response, so a retry could not
find it. Inline bodies without any S3 input need ``ledger_uri`` for the ledger; without it the
operator still relies on (1) and (2) and logs a warning. ``resubmit=True`` ignores the ledger.

:func:`deterministic_inference_id` makes (1), :class:`SubmissionLedger` is (3), and
:func:`recover_unrecorded` finds the requests a killed try submitted without recording. Airflow-free.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_smrt.async_inference.ids import DEFAULT_FILENAME as DEFAULT_FILENAME
from airflow_provider_smrt.async_inference.ids import AsyncRequest as AsyncRequest
from airflow_provider_smrt.async_inference.ids import deterministic_inference_id as deterministic_inference_id
from airflow_provider_smrt.async_inference.ids import is_per_request as is_per_request
from airflow_provider_smrt.async_inference.ids import now_iso as now_iso
from airflow_provider_smrt.async_inference.ids import output_id as output_id
from airflow_provider_smrt.async_inference.ids import render_filename as render_filename
from airflow_provider_smrt.async_inference.ids import task_key as task_key
from airflow_provider_smrt.async_inference.poll import poll_sync
from airflow_provider_smrt.async_inference.tracker import AsyncInferenceTracker, InvocationState
from airflow_provider_smrt.async_inference.wait import Log
from airflow_provider_smrt.exceptions import SmrtError
from airflow_provider_smrt.s3 import S3Location, error_code, is_not_found

LEDGER_DIRNAME = "_smrt_async_ledger"
_SLUG = re.compile(r"[^A-Za-z0-9-]+")
_LEDGER_VERSION = 1

#: A submission record: input, inference_id, output_location, failure_location, submitted_at, ttl, timeout.
Record = dict[str, Any]


def ledger_location(
    key: dict[str, Any], requests: Sequence[AsyncRequest], *, ledger_uri: str | None
) -> S3Location | None:
    """Where a task instance's ledger lives: ``ledger_uri`` (an object, or a prefix ending in ``/``), else
    ``<first S3 input's dir>/_smrt_async_ledger/<dag>/<task>/<sha256(run_id, map_index)[:32]>.json``; None
    when there is neither."""
    name = hashlib.sha256(json.dumps([key["run_id"], key["map_index"]]).encode()).hexdigest()[:32] + ".json"
    suffix = f"{_SLUG.sub('_', key['dag_id'])}/{_SLUG.sub('_', key['task_id'])}/{name}"
    if ledger_uri:
        if ledger_uri.endswith("/"):
            return S3Location.parse(ledger_uri + suffix)
        return S3Location.parse(ledger_uri)
    first = next((r.input_location for r in requests if (r.input_location or "").startswith("s3://")), None)
    if first is None:
        return None
    loc = S3Location.parse(first)
    return S3Location(bucket=loc.bucket, key=f"{loc.directory}{LEDGER_DIRNAME}/{suffix}")


@dataclass(frozen=True)
class SubmissionLedger:
    """The JSON object recording one task instance's submissions.

    :param client: a boto3 S3 client.
    :param location: the ledger object.
    :param key: ``dag_id``, ``task_id``, ``run_id``, ``map_index`` (written into the document).
    :param endpoint_name: written into the document.
    """

    client: Any
    location: S3Location
    key: dict[str, Any]
    endpoint_name: str

    @classmethod
    def for_task(
        cls,
        client: Any,
        key: dict[str, Any],
        requests: Sequence[AsyncRequest],
        *,
        ledger_uri: str | None,
        endpoint_name: str,
    ) -> SubmissionLedger | None:
        """The ledger of the task instance ``key`` (see :func:`ledger_location`); None when it has no place."""
        location = ledger_location(key, requests, ledger_uri=ledger_uri)
        if location is None:
            return None
        return cls(client=client, location=location, key=key, endpoint_name=endpoint_name)

    @classmethod
    def at(cls, client: Any, ledger_uri: str) -> SubmissionLedger:
        """The ledger object ``ledger_uri`` (an operator's summary names it), for reading."""
        location = S3Location.parse(ledger_uri)
        return cls(client=client, location=location, key={}, endpoint_name="")

    @property
    def segments_prefix(self) -> str:
        """The key prefix of this ledger's segments (records appended one response at a time)."""
        return self.location.key + ".parts/"

    def read(self) -> dict[str, Record]:
        """The records by input: the ledger object's and its segments'; empty when there is no ledger yet."""
        records = self._read_document(self.location.key) or {}
        for key in self._segment_keys():
            records.update(self._read_document(key) or {})
        return records

    def _read_document(self, key: str) -> dict[str, Record] | None:
        loc = self.location
        try:
            response = self.client.get_object(Bucket=loc.bucket, Key=key)
        except Exception as err:
            if is_not_found(err):
                return None
            code = error_code(err) or ""
            raise SmrtError(
                f"cannot read the submission ledger s3://{loc.bucket}/{key}: {type(err).__name__} {code}"
            ) from err
        with response["Body"] as stream:
            return parse_document(stream.read())

    def _segment_keys(self) -> list[str]:
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.location.bucket, Prefix=self.segments_prefix):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return sorted(keys)

    def previous_submissions(
        self,
        requests: Sequence[AsyncRequest],
        ids: dict[str, str],
        *,
        filename: str | None,
        record: Callable[..., Record],
        log: Log,
    ) -> dict[str, Record]:
        """What earlier tries submitted: the ledger's records, plus unrecorded requests that have a result.

        The recovered ones are written back to the ledger. See :func:`recover_unrecorded` for the arguments.
        """
        recorded = self.read()
        recovered = recover_unrecorded(self.client, requests, ids, recorded, filename=filename, record=record)
        if recovered:
            log.info("%d request(s) missing from the ledger already have a result; not resubmitting", len(recovered))
        recorded.update(recovered)
        if recorded:
            in_order = {r.identity: recorded[r.identity] for r in requests if r.identity in recorded}
            log.info(
                "%d of %d request(s) were already submitted by an earlier try (ledger %s); not resubmitting them",
                sum(1 for r in requests if r.identity in recorded),
                len(requests),
                self.location.uri,
            )
            if recovered:
                self.write({**in_order, **recorded})
        return recorded

    def write(self, records: dict[str, Record]) -> None:
        """Write the ledger object with ``records`` (every record of the task instance, in request order)."""
        self._put(self.location.key, list(records.values()))

    def _put(self, key: str, records: list[Record]) -> None:
        document = {
            "version": _LEDGER_VERSION,
            **self.key,
            "endpoint_name": self.endpoint_name,
            "written_at": now_iso(),
            "invocations": records,
        }
        self.client.put_object(
            Bucket=self.location.bucket,
            Key=key,
            Body=json.dumps(document, indent=1).encode(),
            ContentType="application/json",
        )

    def appender(self) -> LedgerAppender:
        """A thread-safe appender of records to new segments of this ledger."""
        return LedgerAppender(self)


def parse_document(raw: bytes) -> dict[str, Record]:
    """The records of a ledger (or segment) document, by input, in the document's order."""
    document = json.loads(raw)
    return {entry["input"]: entry for entry in document.get("invocations", [])}


def read_ledger(client: Any, ledger_uri: str) -> list[Record]:
    """The records of the ledger ``ledger_uri`` (and of its segments), in request order, with a boto3 client.

    :raises SmrtError: there is no ledger there, or it cannot be read.
    """
    ledger = SubmissionLedger.at(client, ledger_uri)
    records = ledger.read()
    if not records:
        raise SmrtError(_no_ledger(ledger_uri))
    return list(records.values())


async def read_ledger_async(client: Any, ledger_uri: str) -> list[Record]:
    """:func:`read_ledger` with an aiobotocore client (the trigger)."""
    ledger = SubmissionLedger.at(client, ledger_uri)
    location = ledger.location

    async def document(key: str) -> dict[str, Record]:
        try:
            response = await client.get_object(Bucket=location.bucket, Key=key)
        except Exception as err:
            if is_not_found(err):
                return {}
            code = error_code(err) or ""
            raise SmrtError(
                f"cannot read the submission ledger s3://{location.bucket}/{key}: {type(err).__name__} {code}"
            ) from err
        async with response["Body"] as stream:
            return parse_document(await stream.read())

    records = await document(location.key)
    paginator = client.get_paginator("list_objects_v2")
    keys: list[str] = []
    async for page in paginator.paginate(Bucket=location.bucket, Prefix=ledger.segments_prefix):
        keys.extend(item["Key"] for item in page.get("Contents", []))
    for key in sorted(keys):
        records.update(await document(key))
    if not records:
        raise SmrtError(_no_ledger(ledger_uri))
    return list(records.values())


def _no_ledger(ledger_uri: str) -> str:
    return (
        f"no submission ledger at {ledger_uri}: pass the ledger_uri of an invoke operator's summary (its XCom) "
        "after the operator ran"
    )


@dataclass
class LedgerAppender:
    """Records submissions durably as their responses arrive (group commit), from any thread.

    :meth:`append` returns once the record is in S3: in a segment written by this call, or by a call
    that took it while this one waited for the write lock. :meth:`fold` writes every record into the
    ledger object and removes this appender's segments.
    """

    ledger: SubmissionLedger
    _writer: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    _pending: list[Record] = field(default_factory=list)
    _pending_lock: threading.Lock = field(default_factory=threading.Lock)
    _write_lock: threading.Lock = field(default_factory=threading.Lock)
    _segments: list[str] = field(default_factory=list)

    def append(self, record: Record) -> None:
        with self._pending_lock:
            self._pending.append(record)
        with self._write_lock:
            with self._pending_lock:
                batch, self._pending = self._pending, []
            if not batch:
                return  # an earlier holder of the write lock wrote it
            key = f"{self.ledger.segments_prefix}{self._writer}-{len(self._segments):07d}.json"
            try:
                self.ledger._put(key, batch)
            except BaseException:
                with self._pending_lock:
                    self._pending[:0] = batch
                raise
            self._segments.append(key)

    def fold(self, records: dict[str, Record]) -> None:
        """Write ``records`` (all of them) into the ledger object, then delete this appender's segments."""
        self.ledger.write(records)
        with self._write_lock:
            segments, self._segments = self._segments, []
        client, bucket = self.ledger.client, self.ledger.location.bucket
        for start in range(0, len(segments), 1000):
            chunk = segments[start : start + 1000]
            client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": key} for key in chunk], "Quiet": True})


def recover_unrecorded(
    client: Any,
    requests: Sequence[AsyncRequest],
    ids: dict[str, str],
    recorded: dict[str, Record],
    *,
    filename: str | None,
    record: Callable[..., Record],
) -> dict[str, Record]:
    """Requests the ledger lacks whose output or failure object already exists.

    Their keys are predicted from a recorded sibling and the deterministic ``filename`` (a template with
    ``{output_id}`` or ``{inference_id}``); ``record(request, inference_id, output_location=, failure_location=,
    submitted_at=)`` builds each record. Nothing can be predicted without a sibling or when the service did
    not use the ``Filename`` as the key name.
    """
    if not recorded or not is_per_request(filename):
        return {}

    def filename_for(inference_id: str) -> str:
        return render_filename(filename, inference_id) or ""

    sibling = next(iter(recorded.values()))
    if not sibling["output_location"].endswith("/" + filename_for(sibling["inference_id"])):
        return {}  # the service did not use Filename as the key name: nothing can be predicted
    out = S3Location.parse(sibling["output_location"])
    fail_template: tuple[str, str, str] | None = None
    if sibling.get("failure_location"):
        fail = S3Location.parse(sibling["failure_location"])
        stem = sibling["inference_id"]
        base = fail.key[len(fail.directory) :]
        if stem in base:
            fail_template = (fail.bucket, fail.directory, base.replace(stem, "{inference_id}"))
    candidates = []
    for request in requests:
        if request.identity in recorded:
            continue
        inference_id = ids[request.identity]
        failure = None
        if fail_template is not None:
            bucket, directory, base = fail_template
            failure = f"s3://{bucket}/{directory}{base.replace('{inference_id}', inference_id)}"
        candidates.append(
            record(
                request,
                inference_id,
                output_location=f"s3://{out.bucket}/{out.directory}{filename_for(inference_id)}",
                failure_location=failure,
                submitted_at=None,
            )
        )
    if not candidates:
        return {}
    tracker = AsyncInferenceTracker(candidates)
    poll_sync(tracker, client)
    return {
        entry["input"]: entry
        for status, entry in zip(tracker.statuses, candidates, strict=True)
        if status.state is not InvocationState.PENDING
    }
