"""Writing a scoring run's results: each unit's tasks, in input order, into its part.

:class:`TaskWriter` joins one task's predictions to its pass-through rows and writes them, and the
rows the model rejected, into a :class:`~airflow_provider_smrt.scoring.sink.PartWriter`; it tracks
the prediction schema. :class:`InOrderWriter` puts the tasks of each unit back in input order and
commits complete parts on :data:`COMMIT_THREADS` committer threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa

from airflow_provider_smrt.exceptions import OutputError, ScoringCancelledError, SmrtError
from airflow_provider_smrt.s3 import basename
from airflow_provider_smrt.scoring.coordinator import Coordinator
from airflow_provider_smrt.scoring.dataset import WorkUnit
from airflow_provider_smrt.scoring.inference_ids import inference_id
from airflow_provider_smrt.scoring.sink import (
    ERROR_CLASS_COLUMN,
    ERROR_INFERENCE_ID_COLUMN,
    ERROR_MESSAGE_COLUMN,
    ERROR_ROW_COLUMN,
    PartWriter,
)
from airflow_provider_smrt.scoring.stats import RunStats
from airflow_provider_smrt.scoring.tasks import Piece, RowErrors, Task

__all__ = ["COMMIT_THREADS", "InOrderWriter", "TaskWriter"]

#: Threads committing complete parts (the last row group, closing the Parquet writer, the upload),
#: so an upload never holds up the writing.
COMMIT_THREADS = 2


class TaskWriter:
    """Writes one task's predictions (joined to its pass-through rows) and failed rows into a part.

    The first predictions written fix :attr:`prediction_schema`; they must not reuse a pass-through
    column's name. Thread-safe.

    :param passthrough_schema: the pass-through columns of every part.
    :param variant_column: if set, an output column holding each row's invoked production variant.
    """

    def __init__(
        self,
        *,
        passthrough_schema: pa.Schema,
        stats: RunStats,
        variant_column: str | None = None,
        inference_id_prefix: str | None = None,
    ) -> None:
        self.inference_id_prefix = inference_id_prefix
        self.passthrough_schema = passthrough_schema
        self.stats = stats
        self.variant_column = variant_column
        #: The prediction columns of the first predictions written (with the variant column), or None.
        self.prediction_schema: pa.Schema | None = None
        self._schema_lock = threading.Lock()

    def empty_schema(self) -> pa.Schema:
        """The schema of a part whose rows all failed: pass-through columns and known predictions."""
        fields = list(self.passthrough_schema)
        if self.prediction_schema is not None:
            fields += list(self.prediction_schema)
        return pa.schema(fields)

    def write(self, part: PartWriter, task: Task, pieces: list[Piece], errors: RowErrors) -> None:
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
            table = table.append_column(ERROR_MESSAGE_COLUMN, pa.array([error_text(err)] * count, pa.string()))
            request_id = (
                None
                if self.inference_id_prefix is None
                else inference_id(self.inference_id_prefix, task.unit, task.offset + offset, count)
            )
            table = table.append_column(ERROR_INFERENCE_ID_COLUMN, pa.array([request_id] * count, pa.string()))
            part.write_errors(table)
            self.stats.add(rows_failed=count)


def error_text(err: SmrtError) -> str:
    """The message kept with a poison row in ``_errors/`` (data, never logged).

    The container's own message is included there, since it usually says what is wrong with the row.
    """
    original = getattr(err, "original_message", None)
    return f"{err}; model said: {original}" if original else str(err)


class InOrderWriter:
    """Writes each unit's results into its part in input order, on whichever thread posts an event.

    Events (``begin`` a unit, a worker's ``result``, ``end`` of a unit with its request count) are
    appended to an inbox under a lock. A thread that finds nobody draining drains the inbox (events
    posted meanwhile included) and returns when it is empty; the others return at once. So events
    are handled one at a time, in the order posted, without a thread of their own. Complete parts
    are committed on the committer threads.

    Each ``result`` holds one slot of ``buffer``, released once it is written (or dropped). Once the
    run has failed or been cancelled, results are dropped and nothing more is written; :meth:`close`
    aborts the parts left open.

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
    ) -> None:
        self.open_part = open_part
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
        if self.coordinator.stop.is_set():
            if kind == "result":
                self.buffer.release()
            return
        try:
            if kind == "begin":
                self._parts[payload] = self.open_part(payload)
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
                    self.task_writer.write(self._parts[unit], task, pieces, errors)
                finally:
                    self.buffer.release()
                self._next_seq[unit] += 1
            if unit in self._expected and self._next_seq[unit] == self._expected[unit]:
                part = self._parts.pop(unit)
                del self._pending[unit], self._next_seq[unit], self._expected[unit]
                self._committer.submit(self._commit, part)
        except BaseException as err:  # noqa: BLE001 - handed to the coordinator, re-raised by the pipeline
            self.coordinator.fail(err)
            for items in self._pending.values():  # unblock the workers: nothing more will be written
                for _ in items:
                    self.buffer.release()
                items.clear()

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
        """After the last event: wait for the commits, then abort the parts still open (a failed run)."""
        self._committer.shutdown(wait=True)
        reason = self.coordinator.error or ScoringCancelledError("scoring stopped")
        for part in self._parts.values():
            part.abort(reason)
        self._parts.clear()
