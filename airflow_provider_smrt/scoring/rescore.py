"""Rescoring the rows under ``_errors/`` (``retry_failed_rows``), and repairing a rescoring a kill cut short.

With ``retry_failed_rows=True`` (and ``if_exists="resume"``), a rerun scores again only the rows the
error parts of its finished units list (:data:`~airflow_provider_smrt.scoring.sink.ERROR_ROW_COLUMN`:
absolute row numbers within the input file), reading just the input's row groups that hold them. Each
such unit is a :class:`RetryUnit` in the pipeline, written by a :class:`RetryPart`, which at commit:

1. rewrites the **data part** (when a row now succeeds) with those rows at their input positions, so
   the part keeps the input's row order; its footer's key-value metadata :data:`MISSING_ROWS_KEY`
   lists the rows of the unit it lacks (those that still fail). The new object replaces the old one of
   the same name atomically (one PutObject on S3, a rename locally);
2. then rewrites the **error part** with the rows that still fail (their new story), or deletes it.

A kill between the two leaves rows both in the data part and in ``_errors/``. Every later run repairs
that before scoring (:func:`repair_error_part`, whatever ``retry_failed_rows``): a finished part whose
data and error rows add up to more than its unit is the trace of such a kill, and the rows the data
part's footer does not list as missing are dropped from the error part. So a row is never counted,
nor read by a reader of the manifest, as both scored and failed, and nothing is lost: a kill before
step 1 leaves the old parts as they were. Units without an error part are not read at all.

Units whose input or configuration changed since are not finished under their new part names: they
are scored in full like any unit (their old parts and error parts are stale, removed after the run).
Airflow-free.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from airflow_provider_smrt.exceptions import OutputError
from airflow_provider_smrt.s3 import ObjectInfo
from airflow_provider_smrt.scoring.dataset import InputFile, WorkUnit
from airflow_provider_smrt.scoring.sink import (
    ERROR_ROW_COLUMN,
    ROW_GROUP_ROWS,
    ExistingPart,
    PartWriter,
    _join,
)
from airflow_provider_smrt.scoring.storage import Storage

__all__ = ["MISSING_ROWS_KEY", "RetryPart", "RetryUnit", "iter_retry_rows", "plan_retries", "repair_error_part"]

#: Footer key-value metadata of a data part rewritten by a retry: the JSON list of the unit's input rows
#: the part lacks (they are in its error part).
MISSING_ROWS_KEY = b"smrt.missing_rows"


@dataclass(frozen=True, eq=False)
class RetryUnit(WorkUnit):
    """The failed rows of a finished unit, as a unit of ``len(rows)`` rows (row ``i`` is input row ``rows[i]``).

    ``start`` is 0 and ``end`` ``len(rows)``, so the pipeline's row offsets index ``rows``; it never
    equals a :class:`WorkUnit` (another class).
    """

    rows: tuple[int, ...] = ()
    #: the finished unit and its committed part
    unit: WorkUnit | None = None
    part: ExistingPart | None = None

    __hash__ = WorkUnit.__hash__

    def describe(self, offset: int = 0, count: int | None = None) -> str:
        first = self.rows[offset]
        last = self.rows[min(offset + (len(self.rows) - offset if count is None else count), len(self.rows)) - 1]
        return f"{self.file.uri} row {first}" if first == last else f"{self.file.uri} rows {first}-{last} (failed rows)"


def _read(storage: Storage, uri: str, columns: Sequence[str] | None = None) -> pa.Table:
    with storage.open_read(ObjectInfo(uri=uri, size=0)) as handle:
        return pq.ParquetFile(handle).read(columns=list(columns) if columns is not None else None, use_threads=False)


def _missing_rows(storage: Storage, part: ExistingPart) -> set[int] | None:
    """The rows a rewritten data part lacks (its footer's :data:`MISSING_ROWS_KEY`), or None if not rewritten."""
    with storage.open_read(ObjectInfo(uri=part.uri, size=0)) as handle:
        metadata = pq.ParquetFile(handle).schema_arrow.metadata or {}
    value = metadata.get(MISSING_ROWS_KEY)
    return None if value is None else {int(row) for row in orjson.loads(value)}


def repair_error_part(storage: Storage, part: ExistingPart) -> int:
    """Drop from ``part``'s error part the rows its data part holds (a retry killed between its two writes).

    Returns the error rows left (the error part is deleted, and ``part.error_uri`` cleared, when none is).
    """
    assert part.error_uri is not None
    errors = _read(storage, part.error_uri)
    missing = _missing_rows(storage, part)
    if missing is None:  # not rewritten by a retry: nothing this module can tell
        return int(errors.num_rows)
    keep = pc.is_in(errors[ERROR_ROW_COLUMN], value_set=pa.array(sorted(missing), pa.int64()))
    errors = errors.filter(keep)
    if errors.num_rows:
        with storage.open_write(part.error_uri) as handle:
            pq.write_table(errors, handle)
    else:
        storage.delete([part.error_uri])
        part.error_uri = None
    return int(errors.num_rows)


def plan_retries(storage: Storage, done: dict[WorkUnit, ExistingPart]) -> list[RetryUnit]:
    """The failed rows of every finished unit that has an error part, in input order."""
    retries = []
    for unit, part in done.items():
        if part.error_uri is None:
            continue
        rows = _read(storage, part.error_uri, [ERROR_ROW_COLUMN])[ERROR_ROW_COLUMN].to_pylist()
        wanted = tuple(sorted({int(row) for row in rows if row is not None and unit.start <= row < unit.end}))
        if wanted:
            retries.append(RetryUnit(file=unit.file, start=0, end=len(wanted), rows=wanted, unit=unit, part=part))
    return retries


def iter_retry_rows(
    storage: Storage, file: InputFile, units: Sequence[RetryUnit], *, columns: Sequence[str]
) -> Iterator[tuple[WorkUnit, pa.RecordBatch]]:
    """Yield ``(unit, rows)`` of the failed rows of ``units`` (of one file), reading only their row groups."""
    starts = [0]
    for count in file.row_group_rows:
        starts.append(starts[-1] + count)
    with storage.open_read(file.info) as handle:
        parquet = pq.ParquetFile(handle, metadata=file.metadata)
        for unit in units:
            by_group: dict[int, list[int]] = {}
            for row in unit.rows:
                by_group.setdefault(bisect.bisect_right(starts, row) - 1, []).append(row)
            for group, rows in by_group.items():  # in row order: unit.rows is sorted
                table = parquet.read_row_group(group, columns=list(columns), use_threads=False)
                taken = table.take(pa.array([row - starts[group] for row in rows], pa.int64()))
                for batch in taken.combine_chunks().to_batches():
                    yield unit, batch


class RetryPart(PartWriter):
    """Collects the rescored rows of a :class:`RetryUnit`; at commit rewrites the unit's data part, then
    its error part (see the module's docstring for the order and the repair)."""

    def __init__(
        self, *, unit: RetryUnit, storage: Storage, output_uri: str, name: str, error_passthrough_schema: pa.Schema
    ) -> None:
        super().__init__(
            storage=storage, output_uri=output_uri, name=name, error_passthrough_schema=error_passthrough_schema
        )
        self.unit = unit
        self._scored: list[tuple[pa.Table, pa.Table]] = []
        self._failed: list[pa.Table] = []

    def write(self, passthrough: pa.Table, predictions: pa.Table) -> None:
        predictions = self._conform(predictions)
        if predictions.num_rows:
            self._scored.append((passthrough, predictions))
        self.rows += predictions.num_rows

    def write_errors(self, table: pa.Table) -> None:
        if table.num_rows:
            self._failed.append(table)
            self.error_rows += table.num_rows

    def commit(self, empty_schema: pa.Schema) -> None:
        unit, finished, part = self.unit, self.unit.unit, self.unit.part
        assert finished is not None and part is not None
        rows = pa.array(unit.rows, pa.int64())
        failed = pa.concat_tables(self._failed).cast(self._error_schema) if self._failed else None
        if failed is not None:  # the pipeline numbers the rows of the retry unit: back to input rows
            index = failed.schema.get_field_index(ERROR_ROW_COLUMN)
            failed = failed.set_column(index, ERROR_ROW_COLUMN, pc.take(rows, failed[ERROR_ROW_COLUMN]))
        still = set(failed[ERROR_ROW_COLUMN].to_pylist()) if failed is not None else set()
        if self._scored:
            self._rewrite_data(finished, part, scored=[row for row in unit.rows if row not in still], missing=still)
        if failed is not None:
            with self.storage.open_write(self.error_uri) as handle:
                pq.write_table(failed, handle, compression=self._compression)
        else:
            self.storage.delete([self.error_uri])
        self._scored, self._failed = [], []
        with self.storage.open_read(ObjectInfo(uri=self.uri, size=0)) as handle:
            self.rows = int(pq.ParquetFile(handle).metadata.num_rows)  # for the manifest: the whole part
        self.error_rows = len(still)

    def _rewrite_data(self, finished: WorkUnit, part: ExistingPart, *, scored: list[int], missing: set[int]) -> None:
        """Write the data part again with the rows ``scored`` at their positions; it lacks the rows ``missing``."""
        old = _read(self.storage, part.uri)
        lacked = set(self.unit.rows)
        positions = [row for row in range(finished.start, finished.end) if row not in lacked]
        if len(positions) != old.num_rows:
            raise OutputError(
                f"{part.uri} has {old.num_rows} rows but its unit and error part leave {len(positions)}: the output "
                "was changed outside this provider; rescore it with if_exists='overwrite'"
            )
        new = _join(self._scored)
        schema = old.schema.remove_metadata() if old.num_rows else new.schema
        try:
            new = new.cast(schema)
            old = old.cast(schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as err:
            raise OutputError(
                f"the rescored rows of {part.uri} do not have its columns ({new.schema} vs {schema}): make the model "
                "return one type per output, or rescore with if_exists='overwrite'"
            ) from err
        order = pc.sort_indices(pa.array(positions + scored, pa.int64()))
        table = pa.concat_tables([old, new]).take(order)
        table = table.replace_schema_metadata({MISSING_ROWS_KEY: orjson.dumps(sorted(missing))})
        with self.storage.open_write(self.uri) as handle:
            pq.write_table(table, handle, compression=self._compression, row_group_size=ROW_GROUP_ROWS)

    def abort(self, err: BaseException) -> None:
        self._scored, self._failed = [], []
