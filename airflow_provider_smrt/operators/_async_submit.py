"""Bounded, recorded submission of InvokeEndpointAsync requests for the invoke operator.

:func:`submit_all` keeps at most ``concurrency`` requests in flight (:class:`BoundedSubmitter`). Each
worker records its answer in the ledger (a segment:
:class:`~airflow_provider_smrt.async_inference.ledger.LedgerAppender`) before its slot is freed, so
whatever interrupts the task (a kill, ``execution_timeout`` firing inside the pool's shutdown) leaves
at most the requests in flight unrecorded. At the end the segments are folded into the ledger object.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from airflow_provider_smrt.async_inference.ledger import AsyncRequest, Record, SubmissionLedger
from airflow_provider_smrt.async_inference.wait import Log
from airflow_provider_smrt.exceptions import InvocationError, SmrtError


class BoundedSubmitter:
    """Run calls on a thread pool with at most ``limit`` in flight: a slot is taken *before* submitting.

    As s3transfer's BoundedExecutor: the producer blocks instead of queueing without bound. The first
    error is kept; once it is set nothing new is submitted.
    """

    def __init__(self, limit: int) -> None:
        self._slots = threading.BoundedSemaphore(limit)
        self._pool = ThreadPoolExecutor(max_workers=limit, thread_name_prefix="smrt-async")
        self.first_error: BaseException | None = None
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[], Any], *, on_wait: Callable[[], None]) -> Future[Any] | None:
        """Submit ``fn`` once a slot is free; call ``on_wait`` while waiting. None once an error is set."""
        while not self._slots.acquire(timeout=0.5):
            on_wait()
        if self.first_error is not None:
            self._slots.release()
            return None
        future = self._pool.submit(fn)
        future.add_done_callback(self._done)
        return future

    def _done(self, future: Future[Any]) -> None:
        err = future.exception()
        if err is not None:
            with self._lock:
                if self.first_error is None:
                    self.first_error = err
        self._slots.release()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)


def _nothing() -> None:
    return None


def submit_all(
    todo: Sequence[AsyncRequest],
    submit_one: Callable[[AsyncRequest], Record],
    records: dict[str, Record],
    *,
    ledger: SubmissionLedger | None,
    concurrency: int,
    log: Log,
    endpoint_name: str,
    order: Sequence[str] = (),
) -> None:
    """Submit ``todo`` (``submit_one`` makes one request and returns its record) into ``records``.

    The ledger is written with the records of ``order`` (the identities of all the task's requests) in
    that order, then any others.

    :raises InvocationError: the first submission error, as the hook classified it.
    :raises SmrtError: any other first error, with how many were submitted.
    """
    if not todo:
        return
    lock = threading.Lock()
    started = time.monotonic()
    appender = ledger.appender() if ledger is not None else None

    def run(request: AsyncRequest) -> None:
        record = submit_one(request)
        with lock:
            records[request.identity] = record
        if appender is not None:
            appender.append(record)  # durable before this worker's slot is freed

    submitter = BoundedSubmitter(concurrency)
    try:
        for request in todo:
            if submitter.submit(functools.partial(run, request), on_wait=_nothing) is None:
                break
    finally:
        submitter.shutdown()
    if appender is not None:
        with lock:
            snapshot = {identity: records[identity] for identity in order if identity in records}
            snapshot.update(records)
        appender.fold(snapshot)
    elapsed = time.monotonic() - started
    submitted = sum(1 for request in todo if request.identity in records)
    log.info(
        "submitted %d of %d async request(s) to endpoint %s in %.2fs (%.1f/s)",
        submitted,
        len(todo),
        endpoint_name,
        elapsed,
        submitted / elapsed if elapsed > 0 else 0.0,
    )
    if submitter.first_error is not None:
        err = submitter.first_error
        if isinstance(err, InvocationError):
            raise err  # already classified by the hook, with its cause attached
        raise SmrtError(
            f"submission stopped after {submitted} of {len(todo)} request(s): {type(err).__name__}: {err}"
        ) from err
