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
every thread checks it before new work. With an error budget (``max_failed_rows``), the first row
that fails beyond it stops the run: no request is sent after that, bisections included.
Airflow-free: the caller passes an ``invoke(body) -> result`` callable.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol, cast

import pyarrow as pa

from airflow_provider_smrt.exceptions import (
    InputDataError,
    InvocationError,
    ModelError,
    ModelInputError,
    ModelServerError,
    PredictionCountMismatchError,
    ScoringCancelledError,
)
from airflow_provider_smrt.retry import RetryPolicy
from airflow_provider_smrt.scoring.batching import RequestPlanner
from airflow_provider_smrt.scoring.checkpoints import CheckpointPolicy
from airflow_provider_smrt.scoring.codecs import Codec
from airflow_provider_smrt.scoring.compare import CompareStats, TargetErrors, TargetSchemas, merge_targets
from airflow_provider_smrt.scoring.coordinator import Coordinator
from airflow_provider_smrt.scoring.dataset import WorkUnit
from airflow_provider_smrt.scoring.inference_ids import inference_id
from airflow_provider_smrt.scoring.limiter import AdaptiveLimiter
from airflow_provider_smrt.scoring.sink import PartWriter
from airflow_provider_smrt.scoring.stats import RunStats
from airflow_provider_smrt.scoring.tasks import Piece, RowErrors, Task, TaskSource, locate_input_error
from airflow_provider_smrt.scoring.writer import InOrderWriter, TaskWriter

__all__ = [
    "BISECT_SERVER_ERROR_ATTEMPTS",
    "ENCODE_AHEAD",
    "IdentifyingInvoker",
    "InvokeResult",
    "Invoker",
    "Pipeline",
    "isolates_rows",
]

log = logging.getLogger(__name__)

#: Workers beyond ``concurrency``: they encode the next requests while ``concurrency`` are in flight.
#: One keeps most of the gain at low concurrency; more cost GIL wake-ups at high concurrency
#: (docs/performance.md, "Encode-ahead workers").
ENCODE_AHEAD = 1

#: Attempts of a sub-request of a bisection that fails with a container 5xx (ModelServerError): the
#: request it was cut from already failed after the full retry policy, so a 5xx here most likely
#: means a poison row, and one retry is enough to tell a transient failure from it. Every other
#: retryable error (throttling, service 5xx, transport) keeps the full policy.
BISECT_SERVER_ERROR_ATTEMPTS = 2


def isolates_rows(err: InvocationError) -> bool:
    """True for a failure bisection can pin to rows: a ModelError, unless the container answered 429.

    The container failed on what it was sent (4xx), or crashed on it (5xx: many model servers answer
    500 for any unhandled exception); a 429 means it is overloaded, which is about load, not rows.
    Throttling, service 5xx and transport errors are about the endpoint: they fail the task once the
    retry policy gives up.
    """
    return isinstance(err, ModelError) and err.original_status_code != 429


def _give_up_bisecting(err: InvocationError, attempt: int) -> bool:
    return isinstance(err, ModelServerError) and isolates_rows(err) and attempt >= BISECT_SERVER_ERROR_ATTEMPTS


class InvokeResult(Protocol):
    """What the core needs of an InvokeEndpoint response."""

    @property
    def body(self) -> bytes: ...

    @property
    def invoked_production_variant(self) -> str | None: ...


#: ``invoke(body) -> result``: one InvokeEndpoint attempt per call.
Invoker = Callable[[bytes], InvokeResult]


class IdentifyingInvoker(Protocol):
    """An invoker that also sends the request's InferenceId (the hook's ``make_invoker`` returns one)."""

    def __call__(self, body: bytes, inference_id: str | None = None) -> InvokeResult: ...


class Pipeline:
    """Runs work units through the endpoint into parts. One instance per run.

    :param invoke: ``invoke(body) -> result`` making exactly one request (errors classified).
    :param codec: encodes feature rows and decodes predictions.
    :param planner: cuts feature batches into requests under the payload and row limits.
    :param open_part: ``open_part(unit) -> PartWriter`` for a unit about to be scored.
    :param concurrency: requests in flight at most.
    :param retry_policy: the retry policy applied to each request.
    :param variant_column: if set, an output column holding each row's invoked production variant.
    :param max_failed_rows: the error budget: once more rows than this have failed (the ``stats``
        already counted included), the run stops with ``budget_error(failed rows, last error)``.
        None: no budget.
    :param fallback_schema: the schema of an existing part of the output, for parts whose rows all
        failed when this run scores no row (see :class:`~airflow_provider_smrt.scoring.writer.InOrderWriter`);
        with ``targets``, also each target's columns before its first answer
        (:class:`~airflow_provider_smrt.scoring.compare.TargetSchemas`).
    :param inference_id_prefix: if set, each request is sent with its deterministic InferenceId
        (:func:`~airflow_provider_smrt.scoring.inference_ids.inference_id`): ``invoke`` must then take
        ``inference_id=`` (an :class:`IdentifyingInvoker`).
    :param oversize_invoke: ``invoke(body) -> result`` for the requests the planner flags ``oversize``
        (one row over the payload limit), e.g. through InvokeEndpointAsync; it takes no in-flight slot.
    :param targets: ``compare_targets``: ``(name, invoke)`` per target (``invoke`` is then unused). Each
        request goes to every target, one after the other (each call with its own in-flight slot, retries
        and bisection); the request is handed to the writer once every target answered or failed, as one
        result of suffixed prediction columns (:func:`~airflow_provider_smrt.scoring.compare.merge_targets`).
        The error budget counts a row once if any target failed it.
    :param compare_stats: where per-target failures and agreement are counted (with ``targets``).
    :param on_progress: called from the caller's thread (the one in :meth:`run`) about every
        ``progress_interval`` seconds.
    :param checkpoint_policy: when the writer leaves checkpoints of the units being written (None: never).
    :param unit_offsets: the first row to score of each unit resumed from checkpoints (within the unit).
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
        inference_id_prefix: str | None = None,
        stats: RunStats | None = None,
        coordinator: Coordinator | None = None,
        max_failed_rows: float | None = None,
        budget_error: Callable[[int, InvocationError], BaseException] | None = None,
        fallback_schema: Callable[[], pa.Schema | None] | None = None,
        on_progress: Callable[[RunStats], None] | None = None,
        progress_interval: float = 10.0,
        checkpoint_policy: CheckpointPolicy | None = None,
        unit_offsets: Mapping[WorkUnit, int] | None = None,
        oversize_invoke: Invoker | None = None,
        targets: list[tuple[str, Invoker]] | None = None,
        compare_stats: CompareStats | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.invoke = invoke
        self.targets = targets or None
        self.compare_stats = compare_stats
        if self.targets is not None and self.compare_stats is None:
            self.compare_stats = CompareStats(
                names=tuple(name for name, _ in self.targets), variant_column=variant_column
            )
        #: Each target's prediction schema, for its null rows in requests it fails entirely.
        self._target_schemas = TargetSchemas(
            [name for name, _ in self.targets or []], existing=fallback_schema, variant_column=variant_column
        )
        self._variant_column = variant_column
        self.oversize_invoke = oversize_invoke
        self.codec = codec
        #: Rows isolated into ``_errors/`` in this run, by error class (logged as they happen).
        self._isolated: dict[str, int] = {}
        self._isolated_lock = threading.Lock()
        self.planner = planner
        self.feature_columns = feature_columns
        self.passthrough_columns = passthrough_columns
        self.retry_policy = retry_policy
        self.endpoint_name = endpoint_name
        self.inference_id_prefix = inference_id_prefix
        self.concurrency = concurrency
        self.stats = stats or RunStats()
        self.coordinator = coordinator or Coordinator()
        self.limiter = AdaptiveLimiter(limit=concurrency)
        self.max_failed_rows = max_failed_rows
        self._budget_error = budget_error
        self._failed_lock = threading.Lock()
        self._failed_rows = self.stats.rows_failed  # rows failed so far, counted as they fail
        #: One slot per task a worker holds or the writer has not yet written: bounds buffered work.
        self.buffer = threading.Semaphore(2 * concurrency + 2)
        self.task_writer = TaskWriter(
            passthrough_schema=passthrough_schema,
            stats=self.stats,
            variant_column=None if self.targets is not None else variant_column,
            inference_id_prefix=inference_id_prefix,
            compare_stats=self.compare_stats if self.targets is not None else None,
        )
        self.writer = InOrderWriter(
            open_part=open_part,
            task_writer=self.task_writer,
            buffer=self.buffer,
            coordinator=self.coordinator,
            stats=self.stats,
            checkpoint_policy=checkpoint_policy,
            fallback_schema=fallback_schema,
        )
        self.unit_offsets = unit_offsets or {}
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
            unit_offsets=self.unit_offsets,
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
            target_errors: TargetErrors = []
            for request in requests:
                if request.oversize:
                    more_pieces, more_errors = self._score_oversize(task, request.offset, request.body)
                elif self.targets is not None:
                    more_pieces, more_target_errors = self._score_targets(
                        task, request.offset, request.num_rows, request.body
                    )
                    pieces += more_pieces
                    target_errors += more_target_errors
                    continue
                else:
                    more_pieces, more_errors = self._score(task, request.offset, request.num_rows, request.body)
                pieces += more_pieces
                errors += more_errors
            # Posted once every target answered or failed every request of the task: the unit of resume.
            self.writer.post("result", (task, pieces, errors, target_errors))
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

    def _count_failed(self, rows: int, err: InvocationError) -> None:
        """Count rows that failed; past the error budget, stop the run (no request is sent after this)."""
        with self._failed_lock:
            self._failed_rows += rows
            failed = self._failed_rows
        if self.max_failed_rows is not None and failed > self.max_failed_rows:
            if self._budget_error is not None:
                self.coordinator.fail(self._budget_error(failed, err))
            else:
                self.coordinator.cancel("the error budget is spent")

    def _call(
        self, body: bytes, request_id: str | None, invoke: Invoker | None = None, target: str | None = None
    ) -> InvokeResult:
        """One HTTP call (one attempt of a request), counted with its bytes and latency (and target)."""
        invoke = invoke or self.invoke
        started = time.monotonic()
        try:
            if request_id is None:
                result = invoke(body)
            else:
                result = cast(IdentifyingInvoker, invoke)(body, inference_id=request_id)
        except BaseException:
            self.stats.record_call(
                variant=None, sent=len(body), received=0, started=started, ended=time.monotonic(), target=target
            )
            raise
        self.stats.record_call(
            variant=result.invoked_production_variant,
            sent=len(body),
            received=len(result.body),
            started=started,
            ended=time.monotonic(),
            target=target,
        )
        return result

    def _score_targets(self, task: Task, offset: int, count: int, body: bytes) -> tuple[list[Piece], TargetErrors]:
        """Score rows ``[offset, offset+count)`` of a task at every target: the merged pieces and the errors
        of each target; the error budget counts each failed row once."""
        assert self.targets is not None and self.compare_stats is not None
        results = [
            self._score(task, offset, count, body, invoke=invoke, target=name, count_failures=False)
            for name, invoke in self.targets
        ]
        schemas = self._target_schemas.known()
        pieces, errors, learned = merge_targets(
            num_rows=count,
            names=[name for name, _ in self.targets],
            results=results,
            schemas=schemas,
            variant_column=self._variant_column,
        )
        self._target_schemas.learn(schemas, learned)
        failed_rows: set[int] = set()
        for error_offset, error_count, _, _ in errors:
            failed_rows.update(range(error_offset, error_offset + error_count))
        if failed_rows:
            self._count_failed(len(failed_rows), errors[-1][2])
        return pieces, errors

    def _score_oversize(self, task: Task, offset: int, body: bytes) -> tuple[list[Piece], RowErrors]:
        """Score one row over the payload limit through ``oversize_invoke`` (no in-flight slot: another endpoint)."""
        assert self.oversize_invoke is not None  # the planner flags rows only when there is one
        self.stats.add(requests=1, rows_async=1)
        try:
            result = self.retry_policy.call(
                lambda: self.oversize_invoke(body),  # type: ignore[misc]
                endpoint_name=self.endpoint_name,
                on_retry=self._on_retry,
                cancel=self.coordinator.stop,
            )
        except ModelInputError as err:
            self._count_failed(1, err)
            return [], [(offset, 1, err)]
        return [self._decode(task, offset, 1, result)], []

    def _score(
        self,
        task: Task,
        offset: int,
        count: int,
        body: bytes,
        *,
        bisecting: bool = False,
        invoke: Invoker | None = None,
        target: str | None = None,
        count_failures: bool = True,
    ) -> tuple[list[Piece], RowErrors]:
        """Score rows ``[offset, offset+count)`` of a task; bisect if the model fails on them.

        The in-flight slot is held for the call (with its retries) only: encoding and decoding happen
        outside it. Bisection goes depth first, left half first, so single failing rows are found (and
        counted against the error budget) after the fewest requests; every request checks the stop
        event first, so a spent budget ends a bisection at once.
        """
        if self.coordinator.stop.is_set() or not self.limiter.acquire(self.coordinator.stop):
            raise ScoringCancelledError("scoring stopped")
        failed: InvocationError | None = None
        request_id = (
            None
            if self.inference_id_prefix is None
            else inference_id(self.inference_id_prefix, task.unit, task.offset + offset, count)
        )
        try:
            self.stats.add(requests=1)
            result = self.retry_policy.call(
                lambda: self._call(body, request_id, invoke, target),
                endpoint_name=self.endpoint_name,
                on_retry=self._on_retry,
                cancel=self.coordinator.stop,
                give_up=_give_up_bisecting if bisecting else None,
            )
        except ModelError as err:
            if not isolates_rows(err) or self.coordinator.stop.is_set():
                raise
            failed = err
        finally:
            self.limiter.release()
        if failed is not None:
            if count == 1:
                if count_failures:
                    self._count_failed(1, failed)
                self._log_isolated(task, offset, failed)
                return [], [(offset, 1, failed)]
            log.info(
                "%s on rows %d-%d of %s: splitting the request to isolate the failing rows",
                type(failed).__name__,
                task.unit.start + task.offset + offset,
                task.unit.start + task.offset + offset + count - 1,
                task.unit.file.uri,
            )
            self.stats.add(bisections=1)
            half = count // 2
            left_body = self.codec.encode(task.features.slice(offset, half))
            left = self._score(
                task,
                offset,
                half,
                left_body,
                bisecting=True,
                invoke=invoke,
                target=target,
                count_failures=count_failures,
            )
            right_body = self.codec.encode(task.features.slice(offset + half, count - half))
            right = self._score(
                task,
                offset + half,
                count - half,
                right_body,
                bisecting=True,
                invoke=invoke,
                target=target,
                count_failures=count_failures,
            )
            return left[0] + right[0], left[1] + right[1]
        self.limiter.on_success()
        return [self._decode(task, offset, count, result)], []

    def _decode(self, task: Task, offset: int, count: int, result: InvokeResult) -> Piece:
        """The predictions of rows ``[offset, offset+count)`` of a task from the endpoint's answer."""
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
        return Piece(offset, predictions, result.invoked_production_variant)
