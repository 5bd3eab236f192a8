"""The scoring pipeline: bounded, adaptive concurrency over InvokeEndpoint with in-order part writing.

Threads:

- *workers* (``concurrency`` + :data:`ENCODE_AHEAD` threads) each loop as a hand-written scoring
  loop does: take a buffer slot (so buffered work stays bounded), take the next request's rows
  from the :class:`~airflow_provider_smrt.scoring.tasks.TaskSource` (which reads Parquet batches on
  a read-ahead thread and cuts them, in input order, under a lock), encode them, take an in-flight
  slot of the :class:`~airflow_provider_smrt.scoring.limiter.AdaptiveLimiter` only for the call
  itself (so the next bodies are encoded while ``concurrency`` requests are at the endpoint), and
  have the :class:`~airflow_provider_smrt.scoring.scorer.RequestScorer` send it with the retry policy,
  bisect a batch the model rejects to isolate poison rows and decode the predictions, then hand them
  to the in-order writer;
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

import threading
import time
from collections.abc import Callable, Iterable, Mapping

import pyarrow as pa

from airflow_provider_smrt.exceptions import (
    InputDataError,
    InvocationError,
)
from airflow_provider_smrt.retry import RetryPolicy
from airflow_provider_smrt.scoring.batching import RequestPlanner
from airflow_provider_smrt.scoring.checkpoints import CheckpointPolicy
from airflow_provider_smrt.scoring.codecs import Codec
from airflow_provider_smrt.scoring.compare import CompareStats
from airflow_provider_smrt.scoring.coordinator import Coordinator
from airflow_provider_smrt.scoring.dataset import WorkUnit
from airflow_provider_smrt.scoring.limiter import AdaptiveLimiter
from airflow_provider_smrt.scoring.scorer import (
    BISECT_SERVER_ERROR_ATTEMPTS,
    IdentifyingInvoker,
    Invoker,
    InvokeResult,
    RequestScorer,
    isolates_rows,
)
from airflow_provider_smrt.scoring.sink import PartWriter
from airflow_provider_smrt.scoring.stats import RunStats
from airflow_provider_smrt.scoring.tasks import Task, TaskSource, locate_input_error
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

#: Workers beyond ``concurrency``: they encode the next requests while ``concurrency`` are in flight.
#: One keeps most of the gain at low concurrency; more cost GIL hand-offs (docs/performance.md, Limits:
#: 4 scored 0.94 x and 16 0.88 x the rows/s of one at 50 ms and 16 slots).
ENCODE_AHEAD = 1


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
        self.planner = planner
        self.feature_columns = feature_columns
        self.passthrough_columns = passthrough_columns
        self.concurrency = concurrency
        self.stats = stats or RunStats()
        self.coordinator = coordinator or Coordinator()
        self.limiter = AdaptiveLimiter(limit=concurrency)
        self.scorer = RequestScorer(
            invoke=invoke,
            codec=codec,
            retry_policy=retry_policy,
            stats=self.stats,
            coordinator=self.coordinator,
            limiter=self.limiter,
            endpoint_name=endpoint_name,
            variant_column=variant_column,
            inference_id_prefix=inference_id_prefix,
            max_failed_rows=max_failed_rows,
            budget_error=budget_error,
            fallback_schema=fallback_schema,
            oversize_invoke=oversize_invoke,
            targets=targets,
            compare_stats=compare_stats,
        )
        comparing = self.scorer.targets is not None
        #: One slot per task a worker holds or the writer has not yet written: bounds buffered work.
        self.buffer = threading.Semaphore(2 * concurrency + 2)
        self.task_writer = TaskWriter(
            passthrough_schema=passthrough_schema,
            stats=self.stats,
            variant_column=None if comparing else variant_column,
            inference_id_prefix=inference_id_prefix,
            compare_stats=self.scorer.compare_stats if comparing else None,
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

    @property
    def isolated(self) -> dict[str, int]:
        """Rows isolated into ``_errors/`` so far, by error class."""
        return self.scorer.isolated

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
            pieces, errors, target_errors = self.scorer.score(task, requests)
            # Posted once every target answered or failed every request of the task: the unit of resume.
            self.writer.post("result", (task, pieces, errors, target_errors))
        except BaseException as err:  # noqa: BLE001 - handed to the coordinator, re-raised by run()
            self.coordinator.fail(err)
