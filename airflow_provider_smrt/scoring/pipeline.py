"""The scoring pipeline: bounded, adaptive concurrency over InvokeEndpoint with in-order part writing.

Threads:

- *workers* (``concurrency`` + :data:`ENCODE_AHEAD` threads) each loop as a hand-written scoring
  loop does: take a buffer slot (so buffered work stays bounded), take the next request's rows
  from the :class:`_TaskSource` (which reads Parquet batches from a read-ahead thread and cuts
  them, in input order, under a lock), encode them, take an in-flight slot only for the call
  itself (so the next bodies are encoded while ``concurrency`` requests are at the endpoint), send
  it with the retry policy, bisect a batch the model rejects to isolate poison rows, decode the
  predictions and hand them to the in-order writer;
- the *in-order writer* (:class:`InOrderWriter`) has no thread of its own: whichever thread posts
  an event drains the writer's inbox unless another is draining it. It joins predictions to
  pass-through columns and streams each unit's rows, in input order, into its part;
- *committers* (:data:`COMMIT_THREADS`) commit complete parts atomically, so an upload never holds
  up the writing.

A request therefore passes no work from thread to thread on its way: every hand-off costs a
wake-up and a wait for the GIL, and in a process whose threads are all busy those waits, not the
work, set the pace (``docs/performance.md``). The caller's thread only waits and reports progress.

One :class:`Coordinator` holds the first fatal error; every thread checks it before new work.
Throttling lowers the in-flight target multiplicatively; successes raise it back additively.
Airflow-free: the caller passes an ``invoke(body) -> result`` callable.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa

from airflow_provider_smrt.exceptions import (
    InputDataError,
    InvocationError,
    ModelInputError,
    OutputError,
    PredictionCountMismatchError,
    ScoringCancelledError,
    SmrtError,
)
from airflow_provider_smrt.retry import RetryPolicy
from airflow_provider_smrt.scoring.dataset import WorkUnit
from airflow_provider_smrt.scoring.sink import (
    ERROR_CLASS_COLUMN,
    ERROR_MESSAGE_COLUMN,
    ERROR_ROW_COLUMN,
    PartWriter,
)
from airflow_provider_smrt.scoring.storage import basename

log = logging.getLogger(__name__)

#: Workers beyond ``concurrency``: they encode the next requests while ``concurrency`` are in flight.
#: Measured (latency 50 ms, 500 rows a request, medians of 5 interleaved runs, docs/performance.md):
#: at concurrency 4, 0 / 1 / 2 extra workers ran at 0.97 / 1.02 / 1.05 x a hand-written loop; at 16,
#: where the GIL is the limit, at 0.91 / 0.92 / 0.82 x in one batch (a waiting worker costs a
#: wake-up per request), though other batches could not tell 1 from 2 within their noise. One keeps
#: most of the gain at low concurrency.
ENCODE_AHEAD = 1

#: Threads committing complete parts (the last row group, closing the Parquet writer, the upload).
COMMIT_THREADS = 2


class InvokeResult(Protocol):
    """What the core needs of an InvokeEndpoint response."""

    @property
    def body(self) -> bytes: ...

    @property
    def invoked_production_variant(self) -> str | None: ...


Invoker = Callable[[bytes], InvokeResult]


class Coordinator:
    """Status of one run: the first fatal error, and the event every thread checks before new work."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.error: BaseException | None = None

    def fail(self, err: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = err
        self.stop.set()

    def cancel(self, reason: str) -> None:
        self.fail(ScoringCancelledError(reason))

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error


class AdaptiveLimiter:
    """In-flight request limit that shrinks on throttling and grows back on success (AIMD).

    :param limit: the upper bound (the user's ``concurrency``).
    :param decrease: factor applied on throttling, at most once per ``cooldown`` seconds.
    """

    def __init__(self, *, limit: int, decrease: float = 0.7, cooldown: float = 0.25) -> None:
        self.max_limit = limit
        self._limit = float(limit)
        self._decrease = decrease
        self._cooldown = cooldown
        self._last_decrease = 0.0
        self._in_flight = 0
        self._cond = threading.Condition()
        self.min_seen = limit

    @property
    def limit(self) -> int:
        return max(1, int(self._limit))

    def acquire(self, stop: threading.Event) -> bool:
        """Wait for a slot; False if ``stop`` was set first."""
        with self._cond:
            while self._in_flight >= self.limit:
                if stop.is_set():
                    return False
                self._cond.wait(0.05)
            if stop.is_set():
                return False
            self._in_flight += 1
            return True

    def release(self) -> None:
        with self._cond:
            self._in_flight -= 1
            self._cond.notify()

    def on_throttle(self) -> None:
        with self._cond:
            now = time.monotonic()
            if now - self._last_decrease >= self._cooldown:
                self._limit = max(1.0, self._limit * self._decrease)
                self._last_decrease = now
                self.min_seen = min(self.min_seen, self.limit)

    def on_success(self) -> None:
        with self._cond:
            if self._limit < self.max_limit:
                self._limit = min(float(self.max_limit), self._limit + 1.0 / self._limit)
                self._cond.notify()


class ReadAhead:
    """Iterate ``items`` on a thread of its own, ``depth`` items ahead of the consumer.

    Keeps Parquet reads (S3 round trips) off the thread that submits requests. An error of the
    source is raised to the consumer; :meth:`close` stops the source and closes it in its own thread.
    """

    _DONE = object()

    def __init__(self, items: Iterable[Any], *, stop: threading.Event, depth: int = 2) -> None:
        self._items = items
        self._stop = stop
        self._closed = threading.Event()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._produce, name="smrt-reader", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        iterator = iter(self._items)
        try:
            for item in iterator:
                if self._stop.is_set() or not self._put(item):
                    break
            self._put(self._DONE)
        except BaseException as err:  # noqa: BLE001 - raised again in the consumer's thread
            self._put(err)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> Any:
        while True:
            item = self._queue.get()
            if item is self._DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._closed.set()
        self._thread.join()


class InOrderWriter:
    """Writes each unit's results into its part in input order, on whichever thread posts an event.

    Events (``begin`` a unit, a worker's ``result``, ``end`` of a unit with its request count) are
    appended to an inbox under a lock. A thread that finds nobody draining drains the inbox (events
    posted meanwhile included) and returns when it is empty; the others return at once. So events
    are handled one at a time, in the order posted, without a thread of their own. Complete parts
    are committed on the committer threads.

    Once the run has failed or been cancelled, results are dropped (their buffer slots released) and
    nothing more is written; :meth:`close` aborts the parts left open.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        self._lock = threading.Lock()
        self._inbox: list[tuple[str, Any]] = []
        self._draining = False
        self._parts: dict[WorkUnit, PartWriter] = {}
        self._pending: dict[WorkUnit, dict[int, Any]] = {}
        self._next_seq: dict[WorkUnit, int] = {}
        self._expected: dict[WorkUnit, int] = {}
        self._committer = ThreadPoolExecutor(max_workers=COMMIT_THREADS, thread_name_prefix="smrt-commit")

    def post(self, kind: str, payload: Any, *, drain: bool = True) -> None:
        """Add an event; with ``drain=False`` only add it (the caller holds a lock and drains later)."""
        with self._lock:
            self._inbox.append((kind, payload))
        if drain:
            self.drain()

    def drain(self) -> None:
        with self._lock:
            if self._draining or not self._inbox:
                return
            self._draining = True
        while True:
            with self._lock:
                if not self._inbox:
                    self._draining = False
                    return
                events, self._inbox = self._inbox, []
            for event in events:
                self._handle(*event)

    def _handle(self, kind: str, payload: Any) -> None:
        pipeline = self._pipeline
        if pipeline.coordinator.stop.is_set():
            if kind == "result":
                pipeline._buffer.release()
            return
        try:
            if kind == "begin":
                self._parts[payload] = pipeline.open_part(payload)
                self._pending[payload], self._next_seq[payload] = {}, 0
                return
            if kind == "end":
                unit, count = payload
                self._expected[unit] = count
            else:
                task, pieces, errors = payload
                unit = task.unit
                self._pending[unit][task.seq] = (task, pieces, errors)
            pending = self._pending[unit]
            while self._next_seq[unit] in pending:
                task, pieces, errors = pending.pop(self._next_seq[unit])
                try:
                    pipeline._write_task(self._parts[unit], task, pieces, errors)
                finally:
                    pipeline._buffer.release()
                self._next_seq[unit] += 1
            if unit in self._expected and self._next_seq[unit] == self._expected[unit]:
                part = self._parts.pop(unit)
                del self._pending[unit], self._next_seq[unit], self._expected[unit]
                self._committer.submit(self._commit, part)
        except BaseException as err:  # noqa: BLE001 - handed to the coordinator, re-raised by run()
            pipeline.coordinator.fail(err)
            for items in self._pending.values():  # unblock the workers: nothing more will be written
                for _ in items:
                    pipeline._buffer.release()
                items.clear()

    def _commit(self, part: PartWriter) -> None:
        pipeline = self._pipeline
        try:
            if pipeline.coordinator.stop.is_set():
                part.abort(pipeline.coordinator.error or ScoringCancelledError("scoring stopped"))
                return
            part.commit(pipeline._empty_schema())
        except BaseException as err:  # noqa: BLE001 - handed to the coordinator, re-raised by run()
            pipeline.coordinator.fail(err)
            return
        pipeline.stats.add(parts_written=1)
        with pipeline.stats.lock:
            pipeline.stats.part_rows[basename(part.uri)] = (part.rows, part.error_rows)

    def close(self) -> None:
        """After the last event: wait for the commits, then abort the parts still open (a failed run)."""
        self._committer.shutdown(wait=True)
        reason = self._pipeline.coordinator.error or ScoringCancelledError("scoring stopped")
        for part in self._parts.values():
            part.abort(reason)
        self._parts.clear()


class _TaskSource:
    """The next request's rows, in input order, for the worker that asks (thread-safe).

    Reads ``(unit, batch)`` pairs from a :class:`ReadAhead`, cuts each batch into requests with the
    planner, numbers each unit's requests, and tells the writer where units begin and end.
    """

    def __init__(self, pipeline: Pipeline, batches: Iterable[tuple[WorkUnit, pa.RecordBatch]]) -> None:
        self._pipeline = pipeline
        self._lock = threading.Lock()
        self._reader = ReadAhead(batches, stop=pipeline.coordinator.stop)
        self._items = iter(self._reader)
        self._unit: WorkUnit | None = None
        self._seq = 0
        self._rows_in_unit = 0  # rows of the unit before the current batch
        self._features: pa.Table | None = None
        self._passthrough: pa.Table | None = None
        self._offset = 0
        self._done = False

    def next(self) -> _Task | None:
        """The next task, or None when the input is exhausted (or the run stopped)."""
        pipeline, writer = self._pipeline, self._pipeline._writer
        with self._lock:
            while not self._done and not pipeline.coordinator.stop.is_set():
                features = self._features
                if features is not None and self._offset < features.num_rows:
                    assert self._unit is not None and self._passthrough is not None
                    try:
                        count = pipeline.planner.slice_rows(features, self._offset)
                    except InputDataError as err:
                        raise pipeline._locate(err, self._unit, self._rows_in_unit) from err
                    task = _Task(
                        unit=self._unit,
                        seq=self._seq,
                        offset=self._rows_in_unit + self._offset,
                        features=features.slice(self._offset, count),
                        passthrough=self._passthrough.slice(self._offset, count),
                    )
                    self._seq += 1
                    self._offset += count
                    return task
                if features is not None:
                    self._rows_in_unit += features.num_rows
                    self._features = self._passthrough = None
                item = next(self._items, None)
                if item is None:
                    self._done = True
                    if self._unit is not None:
                        writer.post("end", (self._unit, self._seq), drain=False)
                    return None
                unit, batch = item
                if unit is not self._unit:
                    if self._unit is not None:
                        writer.post("end", (self._unit, self._seq), drain=False)
                    self._unit, self._seq, self._rows_in_unit = unit, 0, 0
                    writer.post("begin", unit, drain=False)
                table = pa.Table.from_batches([batch])
                self._features = table.select(pipeline.feature_columns)
                self._passthrough = table.select(pipeline.passthrough_columns)
                self._offset = 0
            return None

    def close(self) -> None:
        self._reader.close()


@dataclass
class RunStats:
    """Counters of one run (thread-safe through ``lock``)."""

    rows_total: int = 0
    rows_scored: int = 0
    rows_failed: int = 0
    requests: int = 0
    retries: int = 0
    throttles: int = 0
    bisections: int = 0
    parts_written: int = 0
    variants: Counter[str] = field(default_factory=Counter)
    #: part name → (rows scored, rows failed), for the manifest
    part_rows: dict[str, tuple[int, int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **deltas: int) -> None:
        with self.lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)


class Codec(Protocol):
    def encode(self, features: pa.Table) -> bytes: ...

    def decode(self, body: bytes, *, num_rows: int, content_type: str | None) -> pa.Table: ...


class Planner(Protocol):
    def split(self, features: pa.Table | pa.RecordBatch) -> Iterable[Any]: ...

    def slice_rows(self, features: pa.Table, offset: int) -> int: ...


@dataclass
class _Task:
    unit: WorkUnit
    seq: int
    offset: int  # first row of this request within the unit
    features: pa.Table
    passthrough: pa.Table


@dataclass
class _Piece:
    offset: int  # within the task
    predictions: pa.Table
    variant: str | None


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
        planner: Planner,
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
        self.planner = planner
        self.open_part = open_part
        self.feature_columns = feature_columns
        self.passthrough_columns = passthrough_columns
        self.passthrough_schema = passthrough_schema
        self.retry_policy = retry_policy
        self.endpoint_name = endpoint_name
        self.variant_column = variant_column
        self.stats = stats or RunStats()
        self.coordinator = coordinator or Coordinator()
        self.limiter = AdaptiveLimiter(limit=concurrency)
        self._buffer = threading.Semaphore(2 * concurrency + 2)
        self._writer = InOrderWriter(self)
        self._on_progress = on_progress
        self._progress_interval = progress_interval
        self._last_progress = time.monotonic()
        self.prediction_schema: pa.Schema | None = None
        self._schema_lock = threading.Lock()
        self.concurrency = concurrency

    # -- the caller's thread -----------------------------------------------------------------

    def run(self, batches: Iterable[tuple[WorkUnit, pa.RecordBatch]]) -> RunStats:
        """Score every ``(unit, rows)`` batch (units in order, each unit's batches contiguous)."""
        source = _TaskSource(self, batches)
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
            self._writer.drain()
            self._writer.close()
        self.coordinator.raise_if_failed()
        return self.stats

    @staticmethod
    def _locate(err: InputDataError, unit: WorkUnit, base: int) -> InputDataError:
        """Name the file and row of a planner error; ``base`` is where the planned rows start in the unit."""
        offset = getattr(err, "row_offset", None)
        where = unit.describe(base + offset, 1) if offset is not None else unit.describe()
        return InputDataError(f"{where}: {err}")

    def _acquire(self, stop: threading.Event) -> bool:
        while not self._buffer.acquire(timeout=0.1):
            if stop.is_set():
                return False
        return True

    def _maybe_progress(self) -> None:
        now = time.monotonic()
        if self._on_progress is not None and now - self._last_progress >= self._progress_interval:
            self._last_progress = now
            self._on_progress(self.stats)

    # -- workers ---------------------------------------------------------------------------------

    def _work_loop(self, source: _TaskSource) -> None:
        """One worker: take a buffer slot and the next task, score it, hand it to the writer; repeat."""
        stop = self.coordinator.stop
        try:
            while not stop.is_set():
                if not self._acquire(stop):
                    return
                try:
                    task = source.next()
                finally:
                    self._writer.drain()  # the unit events the source posted
                if task is None:
                    self._buffer.release()
                    return
                self._work(task)
                # Drop the reference before waiting for the next slot: a task's rows are slices that
                # keep their whole read batch (every feature column) alive.
                del task
        except BaseException as err:  # noqa: BLE001 - handed to the coordinator, re-raised by run()
            self.coordinator.fail(err)

    def _work(self, task: _Task) -> None:
        try:
            if self.coordinator.stop.is_set():
                return
            try:
                requests = list(self.planner.split(task.features))
            except InputDataError as err:
                raise self._locate(err, task.unit, task.offset) from err
            pieces: list[_Piece] = []
            errors: list[tuple[int, int, InvocationError]] = []
            for request in requests:
                more_pieces, more_errors = self._score(task, request.offset, request.num_rows, request.body)
                pieces += more_pieces
                errors += more_errors
            self._writer.post("result", (task, pieces, errors))
        except BaseException as err:  # noqa: BLE001 - handed to the coordinator, re-raised by run()
            self.coordinator.fail(err)

    def _on_retry(self, err: InvocationError, attempt: int, delay: float) -> None:
        self.stats.add(retries=1, throttles=1 if err.throttled else 0)
        if err.throttled:
            self.limiter.on_throttle()
        log.debug("retrying after %s (attempt %d, sleeping %.2fs)", err.code, attempt, delay)

    def _score(
        self, task: _Task, offset: int, count: int, body: bytes
    ) -> tuple[list[_Piece], list[tuple[int, int, InvocationError]]]:
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
                return [], [(offset, 1, rejected)]
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
        return [_Piece(offset, predictions, result.invoked_production_variant)], []

    # -- writing (called by the InOrderWriter) ------------------------------------------------

    def _empty_schema(self) -> pa.Schema:
        """The schema of a part whose rows all failed: pass-through columns and known predictions."""
        fields = list(self.passthrough_schema)
        if self.prediction_schema is not None:
            fields += list(self.prediction_schema)
        return pa.schema(fields)

    def _write_task(
        self, part: PartWriter, task: _Task, pieces: list[_Piece], errors: list[tuple[int, int, InvocationError]]
    ) -> None:
        for piece in pieces:
            rows = piece.predictions.num_rows
            passthrough = task.passthrough.slice(piece.offset, rows)
            predictions = piece.predictions
            if self.variant_column is not None:
                predictions = predictions.append_column(
                    self.variant_column, pa.array([piece.variant] * rows, type=pa.string())
                )
            with self._schema_lock:
                if self.prediction_schema is None:
                    clash = set(predictions.column_names) & set(passthrough.column_names)
                    if clash:
                        raise OutputError(
                            f"prediction columns {sorted(clash)} have the names of pass-through columns: rename "
                            "them with prediction_columns (or variant_column)"
                        )
                    self.prediction_schema = predictions.schema
            part.write(passthrough, predictions)
            self.stats.add(rows_scored=rows)
            if piece.variant:
                with self.stats.lock:
                    self.stats.variants[piece.variant] += 1
        for offset, count, err in errors:
            rows = task.passthrough.slice(offset, count)
            first = task.unit.start + task.offset + offset
            table = rows.append_column(ERROR_ROW_COLUMN, pa.array(range(first, first + count), type=pa.int64()))
            table = table.append_column(ERROR_CLASS_COLUMN, pa.array([type(err).__name__] * count, pa.string()))
            table = table.append_column(ERROR_MESSAGE_COLUMN, pa.array([_error_text(err)] * count, pa.string()))
            part.write_errors(table)
            self.stats.add(rows_failed=count)


def _error_text(err: SmrtError) -> str:
    """The message kept with a poison row in ``_errors/`` (data, never logged).

    The container's own message is included there, since it usually says what is wrong with the row.
    """
    original = getattr(err, "original_message", None)
    return f"{err}; model said: {original}" if original else str(err)
