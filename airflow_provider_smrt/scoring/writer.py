"""Writing a scoring run's results: each unit's tasks, in input order, into its part.

:class:`TaskWriter` joins one task's predictions to its pass-through rows and writes them, and the
rows the model rejected, into a :class:`~airflow_provider_smrt.scoring.sink.PartWriter`; it tracks
the prediction schema. :class:`InOrderWriter` puts the tasks of each unit back in input order,
leaves checkpoints of the units being written (see :mod:`~airflow_provider_smrt.scoring.checkpoints`)
and commits complete parts, both on :data:`COMMIT_THREADS` committer threads.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa

from airflow_provider_smrt.exceptions import OutputError, ScoringCancelledError, SmrtError
from airflow_provider_smrt.s3 import basename
from airflow_provider_smrt.scoring.checkpoints import CheckpointPolicy
from airflow_provider_smrt.scoring.compare import CompareStats, TargetErrors
from airflow_provider_smrt.scoring.coordinator import Coordinator
from airflow_provider_smrt.scoring.dataset import WorkUnit
from airflow_provider_smrt.scoring.inference_ids import inference_id
from airflow_provider_smrt.scoring.sink import (
    ERROR_FIELDS,
    ERROR_INFERENCE_ID_COLUMN,
    ERROR_TARGET_COLUMN,
    ORIGINAL_MESSAGE_BYTES,
    PartWriter,
    PendingSegment,
)
from airflow_provider_smrt.scoring.stats import RunStats
from airflow_provider_smrt.scoring.tasks import Piece, RowErrors, Task

__all__ = ["COMMIT_THREADS", "InOrderWriter", "TaskWriter"]

#: Threads writing checkpoints and committing complete parts (the last row group, closing the Parquet
#: writer, the upload), so an upload never holds up the writing.
COMMIT_THREADS = 2


class TaskWriter:
    """Writes one task's predictions (joined to its pass-through rows) and failed rows into a part.

    The first predictions written fix :attr:`prediction_schema`; they must not reuse a pass-through
    column's name. Thread-safe.

    :param passthrough_schema: the pass-through columns of every part.
    :param variant_column: if set, an output column holding each row's invoked production variant.
    :param compare_stats: with ``compare_targets``: the pieces hold every target's suffixed columns, the
        errors are per target; a row counts as scored when every target answered it, as failed (once)
        when any target failed it, and its predictions are folded into the agreement counters.
    """

    def __init__(
        self,
        *,
        passthrough_schema: pa.Schema,
        stats: RunStats,
        variant_column: str | None = None,
        inference_id_prefix: str | None = None,
        compare_stats: CompareStats | None = None,
    ) -> None:
        self.compare_stats = compare_stats
        self.inference_id_prefix = inference_id_prefix
        self.passthrough_schema = passthrough_schema
        self.stats = stats
        self.variant_column = variant_column
        #: The prediction columns of the first predictions written (with the variant column), or None.
        self.prediction_schema: pa.Schema | None = None
        self._schema_lock = threading.Lock()

    def adopt(self, schema: pa.Schema) -> None:
        """Take the prediction columns of ``schema`` (an existing part's) if no prediction is known yet."""
        names = set(self.passthrough_schema.names)
        with self._schema_lock:
            if self.prediction_schema is None:
                self.prediction_schema = pa.schema([field for field in schema if field.name not in names])

    def empty_schema(self) -> pa.Schema:
        """The schema of a part whose rows all failed: pass-through columns and known predictions."""
        fields = list(self.passthrough_schema)
        if self.prediction_schema is not None:
            fields += list(self.prediction_schema)
        return pa.schema(fields)

    def write(
        self,
        part: PartWriter,
        task: Task,
        pieces: list[Piece],
        errors: RowErrors,
        target_errors: TargetErrors | None = None,
    ) -> None:
        compare = self.compare_stats
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
            if compare is not None:
                compare.fold(predictions)
            else:
                self.stats.add(rows_scored=rows)
            if piece.variant:
                with self.stats.lock:
                    self.stats.variants[piece.variant] += 1
        tagged = [(offset, count, err, None) for offset, count, err in errors] + list(target_errors or [])
        for offset, count, err, target in tagged:
            table = task.passthrough.slice(offset, count)
            first = task.unit.start + task.offset + offset
            story = error_story(err)
            story[ERROR_INFERENCE_ID_COLUMN] = (
                None
                if self.inference_id_prefix is None
                else inference_id(self.inference_id_prefix, task.unit, task.offset + offset, count)
            )
            story[ERROR_TARGET_COLUMN] = target
            for field in ERROR_FIELDS:
                values = range(first, first + count) if field.name == "input_row" else [story[field.name]] * count
                table = table.append_column(field, pa.array(values, type=field.type))
            part.write_errors(table)
            if compare is None:
                self.stats.add(rows_failed=count)
            elif target is not None:
                compare.add_failed(target, count)
        if compare is not None:
            failed: set[int] = set()
            for offset, count, _, _ in tagged:
                failed.update(range(offset, offset + count))
            self.stats.add(rows_scored=task.features.num_rows - len(failed), rows_failed=len(failed))


def error_story(err: SmrtError) -> dict[str, Any]:
    """The values of :data:`~airflow_provider_smrt.scoring.sink.ERROR_FIELDS` for a row that failed with ``err``.

    Kept in ``_errors/`` only (data, never logged): ``original_message`` is the container's own
    message, cut to :data:`~airflow_provider_smrt.scoring.sink.ORIGINAL_MESSAGE_BYTES`, since it
    usually says what is wrong with the row.
    """
    original = getattr(err, "original_message", None)
    if original is not None:
        original = str(original).encode("utf-8")[:ORIGINAL_MESSAGE_BYTES].decode("utf-8", errors="ignore")
    return {
        "error_class": type(err).__name__,
        "error_message": str(err),
        "error_code": getattr(err, "code", None),
        "http_status": getattr(err, "http_status", None),
        "original_status_code": getattr(err, "original_status_code", None),
        "original_message": original,
        "log_stream_arn": getattr(err, "log_stream_arn", None),
        "request_id": getattr(err, "request_id", None),
        "attempts": getattr(err, "attempts", None),
        "invoked_variant": getattr(err, "invoked_production_variant", None),
        "target": None,
    }


class InOrderWriter:
    """Writes each unit's results into its part in input order, on whichever thread posts an event.

    Events (``begin`` a unit, a worker's ``result``, ``end`` of a unit with its request count) are
    appended to an inbox under a lock. A thread that finds nobody draining drains the inbox (events
    posted meanwhile included) and returns when it is empty; the others return at once. So events
    are handled one at a time, in the order posted, without a thread of their own. Complete parts
    are committed on the committer threads.

    Each ``result`` holds one slot of ``buffer``, released once it is written (or dropped). Once the
    run has failed or been cancelled, results are dropped and nothing more is written (checkpoints
    already taken are still written); :meth:`close` aborts the parts left open.

    With a ``checkpoint_policy``, once a unit's written requests or the time since its previous
    checkpoint call for one (and the unit is not about to commit), the rows written since then are
    handed to a committer thread as a segment: taking them costs the writing a list swap. When the
    unit's previous segment is still being written, writing waits for it first, so the rows no
    checkpoint holds never exceed two intervals and the requests in flight. The checkpoints and the
    commit of one part run one at a time, in order.

    Every part of one output has the same columns: a part whose rows all failed is held (uncommitted,
    only its error rows in memory) until the run knows its prediction columns, from the first scored
    rows, or at the end of the run from ``fallback_schema()`` (an existing part's schema). Only when
    no row of the output was ever scored is it committed with the pass-through columns alone.

    :param open_part: ``open_part(unit) -> PartWriter`` for a unit about to be written.
    :param task_writer: writes a task's results into its part.
    :param buffer: the workers' buffer slots, one per task taken and not yet written.
    :param coordinator: the run's status: errors are handed to it, and its stop event ends writing.
    """

    def __init__(
        self,
        *,
        open_part: Callable[[WorkUnit], PartWriter],
        task_writer: TaskWriter,
        buffer: threading.Semaphore,
        coordinator: Coordinator,
        stats: RunStats,
        checkpoint_policy: CheckpointPolicy | None = None,
        fallback_schema: Callable[[], pa.Schema | None] | None = None,
    ) -> None:
        self.open_part = open_part
        self.checkpoint_policy = checkpoint_policy if checkpoint_policy and checkpoint_policy.enabled else None
        self.fallback_schema = fallback_schema
        #: Complete parts whose rows all failed, waiting for the prediction columns to be known.
        self._held: list[PartWriter] = []
        self.task_writer = task_writer
        self.buffer = buffer
        self.coordinator = coordinator
        self.stats = stats
        self._lock = threading.Lock()
        self._inbox: list[tuple[str, Any]] = []
        self._draining = False
        self._parts: dict[WorkUnit, PartWriter] = {}
        self._pending: dict[WorkUnit, dict[int, Any]] = {}
        self._next_seq: dict[WorkUnit, int] = {}
        self._expected: dict[WorkUnit, int] = {}
        #: per unit: (monotonic time of the previous checkpoint, requests written since)
        self._since: dict[WorkUnit, tuple[float, int]] = {}
        self._committer = ThreadPoolExecutor(max_workers=COMMIT_THREADS, thread_name_prefix="smrt-commit")
        #: per part: the checkpoints and the commit still to run, one at a time, in order
        self._queues: dict[int, deque[Callable[[], None]]] = {}
        self._queue_lock = threading.Lock()
        self._failed_writing = False

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
        if self.coordinator.stop.is_set():
            if kind == "result":
                self.buffer.release()
            return
        try:
            if kind == "begin":
                self._parts[payload] = self.open_part(payload)
                self._pending[payload], self._next_seq[payload] = {}, 0
                self._since[payload] = (time.monotonic(), 0)
                return
            if kind == "end":
                unit, count = payload
                self._expected[unit] = count
            else:
                task = payload[0]
                unit = task.unit
                self._pending[unit][task.seq] = payload
            pending = self._pending[unit]
            part = self._parts[unit]
            while self._next_seq[unit] in pending:
                task, pieces, errors, *more = pending.pop(self._next_seq[unit])
                try:
                    self.task_writer.write(part, task, pieces, errors, *more)
                    part.advance(unit.start + task.offset + task.features.num_rows)
                finally:
                    self.buffer.release()
                self._next_seq[unit] += 1
                if self.checkpoint_policy is not None and self._next_seq[unit] != self._expected.get(unit):
                    self._maybe_checkpoint(unit, part)  # after each request: a segment never exceeds an interval
            if unit in self._expected and self._next_seq[unit] == self._expected[unit]:
                del self._parts[unit], self._pending[unit], self._next_seq[unit], self._expected[unit]
                del self._since[unit]
                if part.rows == 0 and self.task_writer.prediction_schema is None:
                    self._held.append(part)  # committed once the prediction columns are known
                else:
                    self._submit(part, lambda: self._commit(part))
            if self._held and self.task_writer.prediction_schema is not None:
                held, self._held = self._held, []
                for held_part in held:
                    self._submit(held_part, functools.partial(self._commit, held_part))
        except BaseException as err:  # noqa: BLE001 - handed to the coordinator, re-raised by the pipeline
            self._failed_writing = True  # a part may hold part of a task: none is checkpointed any more
            self.coordinator.fail(err)
            for items in self._pending.values():  # unblock the workers: nothing more will be written
                for _ in items:
                    self.buffer.release()
                items.clear()

    def _maybe_checkpoint(self, unit: WorkUnit, part: PartWriter) -> None:
        """Called after each request written into a unit's part that does not complete the unit."""
        assert self.checkpoint_policy is not None
        since, requests = self._since[unit]
        requests += 1
        # Never the unit's last row: a unit a rerun resumes always has rows to score (and so a part to commit).
        if self.checkpoint_policy.due(requests=requests, since=since) and part.written_end < unit.end:
            # The previous segment is still being written: wait for it, so that the work a kill can lose stays
            # within two intervals and the requests in flight (scoring slows to S3's pace, not the reverse).
            while not part.wait_for_segment(0.05):
                if self.coordinator.stop.is_set():
                    self._since[unit] = (since, requests)
                    return
            segment = part.take_segment()
            if segment is not None:
                self._submit(part, lambda: self._checkpoint(part, segment))
                self._since[unit] = (time.monotonic(), 0)
                return
        self._since[unit] = (since, requests)

    def _submit(self, part: PartWriter, job: Callable[[], None]) -> None:
        """Run ``job`` on a committer thread after the part's earlier jobs (one at a time per part)."""
        key = id(part)
        with self._queue_lock:
            queue = self._queues.get(key)
            if queue is not None:  # a job of this part is running: it runs this one next
                queue.append(job)
                return
            self._queues[key] = deque([job])
        self._committer.submit(self._run_queue, key)

    def _run_queue(self, key: int) -> None:
        while True:
            with self._queue_lock:
                queue = self._queues[key]
                if not queue:
                    del self._queues[key]
                    return
                job = queue.popleft()
            job()

    def _checkpoint(self, part: PartWriter, segment: PendingSegment) -> None:
        try:
            part.write_segment(segment)
        except BaseException as err:  # noqa: BLE001 - handed to the coordinator, re-raised by the pipeline
            self.coordinator.fail(err)
            return
        self.stats.add(checkpoints_written=1)

    def _commit(self, part: PartWriter) -> None:
        coordinator = self.coordinator
        try:
            if coordinator.stop.is_set():
                part.abort(coordinator.error or ScoringCancelledError("scoring stopped"))
                return
            part.commit(self.task_writer.empty_schema())
        except BaseException as err:  # noqa: BLE001 - handed to the coordinator, re-raised by the pipeline
            coordinator.fail(err)
            return
        self.stats.add(parts_written=1)
        with self.stats.lock:
            self.stats.part_rows[basename(part.uri)] = (part.rows, part.error_rows)

    def close(self) -> None:
        """After the last event: commit the held parts, wait for the commits, then abort the parts still
        open (a failed or cancelled run), checkpointing first the rows written into them since their last
        checkpoint."""
        held, self._held = self._held, []
        if held and not self.coordinator.stop.is_set():
            try:
                if self.task_writer.prediction_schema is None and self.fallback_schema is not None:
                    schema = self.fallback_schema()
                    if schema is not None:
                        self.task_writer.adopt(schema)
            except BaseException as err:  # noqa: BLE001 - handed to the coordinator, re-raised by the pipeline
                self.coordinator.fail(err)
            for part in held:
                self._submit(part, functools.partial(self._commit, part))  # aborted there if the run failed
            held = []
        self._committer.shutdown(wait=True)
        reason = self.coordinator.error or ScoringCancelledError("scoring stopped")
        for part in held:
            part.abort(reason)
        for unit, part in self._parts.items():
            if self.checkpoint_policy is not None and not self._failed_writing and part.written_end < unit.end:
                segment = part.take_segment()
                if segment is not None:
                    self._checkpoint(part, segment)
            part.abort(reason)
        self._parts.clear()
        self._since.clear()
