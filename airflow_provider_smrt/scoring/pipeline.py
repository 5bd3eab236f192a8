"""The scoring pipeline: bounded, adaptive concurrency over InvokeEndpoint with in-order part writing.

Threads:

- *workers* (``concurrency`` + :data:`ENCODE_AHEAD` threads) each loop as a hand-written scoring
  loop does: take a buffer slot (so buffered work stays bounded), take the next request's rows
  from the :class:`~airflow_provider_smrt.scoring.tasks.TaskSource` (which reads Parquet batches on
  a read-ahead thread and cuts them, in input order, under a lock), encode them, take an in-flight
  slot of the :class:`~airflow_provider_smrt.scoring.limiter.AdaptiveLimiter` only for the call
  itself (so the next bodies are encoded while ``concurrency`` requests are at the endpoint), send
  it with the retry policy, bisect a batch the model rejects to isolate poison rows, decode the
  predictions and hand them to the in-order writer;
- the *in-order writer* (:class:`~airflow_provider_smrt.scoring.writer.InOrderWriter`) has no thread
  of its own: whichever thread posts an event drains its inbox unless another is draining it;
- *committers* (:data:`~airflow_provider_smrt.scoring.writer.COMMIT_THREADS`) commit complete parts.

A request passes no work from thread to thread on its way: every hand-off costs a wake-up and a
wait for the GIL, and when all threads are busy those waits set the pace (``docs/performance.md``).
The caller's thread only waits and reports progress.

One :class:`~airflow_provider_smrt.scoring.coordinator.Coordinator` holds the first fatal error;
every thread checks it before new work. Airflow-free: the caller passes an ``invoke(body) -> result``
callable.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Protocol

import pyarrow as pa

from airflow_provider_smrt.exceptions import (
    InputDataError,
    InvocationError,
    ModelInputError,
    PredictionCountMismatchError,
    ScoringCancelledError,
)
from airflow_provider_smrt.retry import RetryPolicy
from airflow_provider_smrt.scoring.batching import RequestPlanner
from airflow_provider_smrt.scoring.codecs import Codec
from airflow_provider_smrt.scoring.coordinator import Coordinator
from airflow_provider_smrt.scoring.dataset import WorkUnit
from airflow_provider_smrt.scoring.limiter import AdaptiveLimiter
from airflow_provider_smrt.scoring.sink import PartWriter
from airflow_provider_smrt.scoring.stats import RunStats
from airflow_provider_smrt.scoring.tasks import Piece, RowErrors, Task, TaskSource, locate_input_error
from airflow_provider_smrt.scoring.writer import InOrderWriter, TaskWriter

__all__ = ["ENCODE_AHEAD", "InvokeResult", "Invoker", "Pipeline"]

log = logging.getLogger(__name__)

#: Workers beyond ``concurrency``: they encode the next requests while ``concurrency`` are in flight.
#: One keeps most of the gain at low concurrency; more cost GIL wake-ups at high concurrency
#: (docs/performance.md, "Encode-ahead workers").
ENCODE_AHEAD = 1


class InvokeResult(Protocol):
    """What the core needs of an InvokeEndpoint response."""

    @property
    def body(self) -> bytes: ...

    @property
    def invoked_production_variant(self) -> str | None: ...


Invoker = Callable[[bytes], InvokeResult]


class Pipeline:
    """Runs work units through the endpoint into parts. One instance per run.

    :param invoke: ``invoke(body) -> result`` making exactly one request (errors classified).
    :param codec: encodes feature rows and decodes predictions.
    :param planner: cuts feature batches into requests under the payload and row limits.
    :param open_part: ``open_part(unit) -> PartWriter`` for a unit about to be scored.
    :param concurrency: requests in flight at most.
    :param retry_policy: the retry policy applied to each request.
    :param variant_column: if set, an output column holding each row's invoked production variant.
    :param on_progress: called from the caller's thread (the one in :meth:`run`) about every
        ``progress_interval`` seconds.
    """

    def __init__(
        self,
        *,
        invoke: Invoker,
        codec: Codec,
        planner: RequestPlanner,
        open_part: Callable[[WorkUnit], PartWriter],
        feature_columns: list[str],
        passthrough_columns: list[str],
        passthrough_schema: pa.Schema,
        concurrency: int,
        retry_policy: RetryPolicy,
        endpoint_name: str | None = None,
        variant_column: str | None = None,
        stats: RunStats | None = None,
        coordinator: Coordinator | None = None,
        on_progress: Callable[[RunStats], None] | None = None,
        progress_interval: float = 10.0,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.invoke = invoke
        self.codec = codec
        #: Rows isolated into ``_errors/`` in this run, by error class (logged as they happen).
        self._isolated: dict[str, int] = {}
        self._isolated_lock = threading.Lock()
        self.planner = planner
        self.feature_columns = feature_columns
        self.passthrough_columns = passthrough_columns
        self.retry_policy = retry_policy
        self.endpoint_name = endpoint_name
        self.concurrency = concurrency
        self.stats = stats or RunStats()
        self.coordinator = coordinator or Coordinator()
        self.limiter = AdaptiveLimiter(limit=concurrency)
        #: One slot per task a worker holds or the writer has not yet written: bounds buffered work.
        self.buffer = threading.Semaphore(2 * concurrency + 2)
        self.task_writer = TaskWriter(
            passthrough_schema=passthrough_schema, stats=self.stats, variant_column=variant_column
        )
        self.writer = InOrderWriter(
            open_part=open_part,
            task_writer=self.task_writer,
            buffer=self.buffer,
            coordinator=self.coordinator,
            stats=self.stats,
        )
        self._on_progress = on_progress
        self._progress_interval = progress_interval
        self._last_progress = time.monotonic()

    # -- the caller's thread -----------------------------------------------------------------

    def run(self, batches: Iterable[tuple[WorkUnit, pa.RecordBatch]]) -> RunStats:
        """Score every ``(unit, rows)`` batch (units in order, each unit's batches contiguous)."""
        source = TaskSource(
            batches,
            planner=self.planner,
            feature_columns=self.feature_columns,
            passthrough_columns=self.passthrough_columns,
            events=self.writer,
            stop=self.coordinator.stop,
        )
        workers = [
            threading.Thread(target=self._work_loop, args=(source,), name=f"smrt-invoke-{i}", daemon=True)
            for i in range(self.concurrency + ENCODE_AHEAD)
        ]
        try:
            for worker in workers:
                worker.start()
            for worker in workers:
                while worker.is_alive():
                    worker.join(timeout=min(1.0, self._progress_interval))
                    self._maybe_progress()
        except BaseException as err:  # noqa: BLE001 - e.g. KeyboardInterrupt: stop the workers, re-raised below
            self.coordinator.fail(err)
            for worker in workers:
                worker.join()
        finally:
            source.close()
            self.writer.drain()
            self.writer.close()
        self.coordinator.raise_if_failed()
        return self.stats

    def _acquire(self, stop: threading.Event) -> bool:
        while not self.buffer.acquire(timeout=0.1):
            if stop.is_set():
                return False
        return True

    def _maybe_progress(self) -> None:
        now = time.monotonic()
        if self._on_progress is not None and now - self._last_progress >= self._progress_interval:
            self._last_progress = now
            self._on_progress(self.stats)

    # -- workers ---------------------------------------------------------------------------------

    def _work_loop(self, source: TaskSource) -> None:
        """One worker: take a buffer slot and the next task, score it, hand it to the writer; repeat."""
        stop = self.coordinator.stop
        try:
            while not stop.is_set():
                if not self._acquire(stop):
                    return
                try:
                    task = source.next()
                finally:
                    self.writer.drain()  # the unit events the source posted
                if task is None:
                    self.buffer.release()
                    return
                self._work(task)
                # Drop the reference before waiting for the next slot: a task's rows are slices that
                # keep their whole read batch (every feature column) alive.
                del task
        except BaseException as err:  # noqa: BLE001 - handed to the coordinator, re-raised by run()
            self.coordinator.fail(err)

    def _work(self, task: Task) -> None:
        try:
            if self.coordinator.stop.is_set():
                return
            try:
                requests = list(self.planner.split(task.features))
            except InputDataError as err:
                raise locate_input_error(err, task.unit, task.offset) from err
            pieces: list[Piece] = []
            errors: RowErrors = []
            for request in requests:
                more_pieces, more_errors = self._score(task, request.offset, request.num_rows, request.body)
                pieces += more_pieces
                errors += more_errors
            self.writer.post("result", (task, pieces, errors))
        except BaseException as err:  # noqa: BLE001 - handed to the coordinator, re-raised by run()
            self.coordinator.fail(err)

    def _on_retry(self, err: InvocationError, attempt: int, delay: float) -> None:
        self.stats.add(retries=1, throttles=1 if err.throttled else 0)
        if err.throttled:
            self.limiter.on_throttle()
            log.debug("retrying after %s (attempt %d, sleeping %.2fs)", err.code, attempt, delay)
        else:  # the class and code only: a container's message may quote the payload
            log.info("retrying after %s %s (attempt %d, sleeping %.2fs)", type(err).__name__, err.code, attempt, delay)

    @property
    def isolated(self) -> dict[str, int]:
        """Rows isolated into ``_errors/`` so far, by error class."""
        with self._isolated_lock:
            return dict(self._isolated)

    def _log_isolated(self, task: Task, offset: int, err: Exception) -> None:
        """One info line per isolated row; one warning per distinct error class, with the rows so far."""
        name = type(err).__name__
        with self._isolated_lock:
            self._isolated[name] = seen = self._isolated.get(name, 0) + 1
        row = task.unit.start + task.offset + offset  # the row's number in its file
        log.info("row %d of %s isolated into _errors/ (%s)", row, task.unit.file.uri, name)
        if seen == 1:
            log.warning("rows failing with %s are isolated into _errors/ (%d row(s) so far)", name, seen)

    def _score(self, task: Task, offset: int, count: int, body: bytes) -> tuple[list[Piece], RowErrors]:
        """Score rows ``[offset, offset+count)`` of a task; bisect if the model rejects them.

        The in-flight slot is held for the call (with its retries) only: encoding and decoding happen
        outside it.
        """
        if not self.limiter.acquire(self.coordinator.stop):
            raise ScoringCancelledError("scoring stopped")
        rejected: ModelInputError | None = None
        try:
            self.stats.add(requests=1)
            result = self.retry_policy.call(
                lambda: self.invoke(body),
                endpoint_name=self.endpoint_name,
                on_retry=self._on_retry,
                cancel=self.coordinator.stop,
            )
        except ModelInputError as err:
            rejected = err
        finally:
            self.limiter.release()
        if rejected is not None:
            if count == 1:
                self._log_isolated(task, offset, rejected)
                return [], [(offset, 1, rejected)]
            log.info(
                "%s on rows %d-%d of %s: splitting the request to isolate the failing rows",
                type(rejected).__name__,
                task.unit.start + task.offset + offset,
                task.unit.start + task.offset + offset + count - 1,
                task.unit.file.uri,
            )
            self.stats.add(bisections=1)
            half = count // 2
            left = self._score(task, offset, half, self.codec.encode(task.features.slice(offset, half)))
            right_body = self.codec.encode(task.features.slice(offset + half, count - half))
            right = self._score(task, offset + half, count - half, right_body)
            return left[0] + right[0], left[1] + right[1]
        self.limiter.on_success()
        try:
            predictions = self.codec.decode(result.body, num_rows=count, content_type=None)
        except PredictionCountMismatchError as err:
            raise PredictionCountMismatchError(
                f"{task.unit.describe(task.offset + offset, count)}: {err} (endpoint {self.endpoint_name!r}); "
                "the model must return one prediction per input row: check the model's input/output format, "
                "content_type/accept and the decoder"
            ) from err
        if predictions.num_rows != count:
            raise PredictionCountMismatchError(
                f"{task.unit.describe(task.offset + offset, count)}: the endpoint returned {predictions.num_rows} "
                f"predictions for {count} rows: the model must return one prediction per input row"
            )
        return [Piece(offset, predictions, result.invoked_production_variant)], []
