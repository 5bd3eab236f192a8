"""A scoring run's tasks: each request's rows, cut in input order from the read batches.

:class:`TaskSource` hands the next :class:`Task` to whichever worker asks, and tells the in-order
writer (through :class:`UnitEvents`) where each unit begins and ends.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa

from airflow_provider_smrt.exceptions import InputDataError, InvocationError
from airflow_provider_smrt.scoring.batching import RequestPlanner
from airflow_provider_smrt.scoring.dataset import WorkUnit
from airflow_provider_smrt.scoring.readahead import ReadAhead

__all__ = ["Piece", "RowErrors", "Task", "TaskSource", "UnitEvents", "locate_input_error"]


@dataclass
class Task:
    """The rows of one request: ``seq`` numbers the unit's tasks in input order."""

    unit: WorkUnit
    seq: int
    offset: int  # first row of this request within the unit
    features: pa.Table
    passthrough: pa.Table


@dataclass
class Piece:
    """Predictions for rows ``offset`` to ``offset + predictions.num_rows - 1`` of a task."""

    offset: int  # within the task
    predictions: pa.Table
    variant: str | None


#: Rows of a task the model rejected: ``(offset within the task, row count, error)``.
RowErrors = list[tuple[int, int, InvocationError]]


class UnitEvents(Protocol):
    """Where the task source posts ``begin`` (a unit) and ``end`` (a unit and its task count)."""

    def post(self, kind: str, payload: Any, *, drain: bool = True) -> None: ...


def locate_input_error(err: InputDataError, unit: WorkUnit, base: int) -> InputDataError:
    """Name the file and row of a planner error; ``base`` is where the planned rows start in the unit."""
    offset = getattr(err, "row_offset", None)
    where = unit.describe(base + offset, 1) if offset is not None else unit.describe()
    return InputDataError(f"{where}: {err}")


class TaskSource:
    """The next request's rows, in input order, for the worker that asks (thread-safe).

    Reads ``(unit, batch)`` pairs from a :class:`~airflow_provider_smrt.scoring.readahead.ReadAhead`,
    cuts each batch into requests with the planner (sizing them, not encoding them), numbers each
    unit's requests, and posts the unit's ``begin`` and ``end`` to ``events`` without draining them
    (it holds its lock; the worker drains after :meth:`next`).

    :param batches: ``(unit, batch)`` pairs, units in order, each unit's batches contiguous.
    :param stop: the run's stop event: once set, :meth:`next` returns None.
    :param unit_offsets: where the batches of a unit start within it (a unit resumed from checkpoints;
        default 0).
    """

    def __init__(
        self,
        batches: Iterable[tuple[WorkUnit, pa.RecordBatch]],
        *,
        planner: RequestPlanner,
        feature_columns: list[str],
        passthrough_columns: list[str],
        events: UnitEvents,
        stop: threading.Event,
        unit_offsets: Mapping[WorkUnit, int] | None = None,
    ) -> None:
        self.planner = planner
        self.unit_offsets = unit_offsets or {}
        self.feature_columns = feature_columns
        self.passthrough_columns = passthrough_columns
        self.events = events
        self.stop = stop
        self._lock = threading.Lock()
        self._reader = ReadAhead(batches, stop=stop)
        self._items = iter(self._reader)
        self._unit: WorkUnit | None = None
        self._seq = 0
        self._rows_in_unit = 0  # rows of the unit before the current batch
        self._features: pa.Table | None = None
        self._passthrough: pa.Table | None = None
        self._offset = 0
        self._done = False

    def next(self) -> Task | None:
        """The next task, or None when the input is exhausted (or the run stopped)."""
        events, stop = self.events, self.stop
        with self._lock:
            while not self._done and not stop.is_set():
                features = self._features
                if features is not None and self._offset < features.num_rows:
                    assert self._unit is not None and self._passthrough is not None
                    try:
                        count = self.planner.slice_rows(features, self._offset)
                    except InputDataError as err:
                        raise locate_input_error(err, self._unit, self._rows_in_unit) from err
                    task = Task(
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
                        events.post("end", (self._unit, self._seq), drain=False)
                    return None
                unit, batch = item
                if unit is not self._unit:
                    if self._unit is not None:
                        events.post("end", (self._unit, self._seq), drain=False)
                    self._unit, self._seq, self._rows_in_unit = unit, 0, self.unit_offsets.get(unit, 0)
                    events.post("begin", unit, drain=False)
                table = pa.Table.from_batches([batch])
                self._features = table.select(self.feature_columns)
                self._passthrough = table.select(self.passthrough_columns)
                self._offset = 0
            return None

    def close(self) -> None:
        """Stop the read-ahead thread and close the source."""
        self._reader.close()
