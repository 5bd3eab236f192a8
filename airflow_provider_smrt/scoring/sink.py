"""Output of a scoring run: atomic Parquet parts, error rows, and resume state.

Layout under ``output_uri``::

    part-<file slug>-<first row>-<end row>-<fingerprint>.parquet     scored rows of one work unit
    _errors/part-<same name>.parquet                                 rows that could not be scored
    _checkpoints/part-<same name without .parquet>/seg-*.parquet     progress of a unit not yet committed
    _manifest.json                                                   written last, when the run completes

The fingerprint hashes the input object's identity (ETag, version, size) with the scoring
configuration, so one LIST of the output tells which units are done and still valid: resume
needs no state of its own. Names starting with ``_`` are never data parts. Checkpoints are described
in :mod:`~airflow_provider_smrt.scoring.checkpoints`; the manifest is built and written by
:mod:`~airflow_provider_smrt.scoring.manifest`. Airflow-free.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from airflow_provider_smrt.exceptions import OutputError
from airflow_provider_smrt.s3 import ObjectInfo, join_uri
from airflow_provider_smrt.scoring.checkpoints import (
    CHECKPOINTS_DIR,
    CheckpointObject,
    UnitCheckpoints,
    parse_checkpoint,
)
from airflow_provider_smrt.scoring.dataset import InputFile, WorkUnit
from airflow_provider_smrt.scoring.storage import Storage

ERRORS_DIR = "_errors"
#: Rows per row group of an output part (rows of many requests are buffered into one).
ROW_GROUP_ROWS = 65_536
MANIFEST_NAME = "_manifest.json"
ERROR_CLASS_COLUMN = "error_class"
ERROR_MESSAGE_COLUMN = "error_message"
ERROR_ROW_COLUMN = "input_row"
#: The columns of an error part after the pass-through columns: the row's story. ``error_message`` is
#: the classified message (never the container's); ``original_message`` is the container's own,
#: truncated to :data:`ORIGINAL_MESSAGE_BYTES` (it may quote the row: it is kept here, with the
#: user's data, and nowhere else).
ERROR_FIELDS: tuple[pa.Field, ...] = (
    pa.field(ERROR_ROW_COLUMN, pa.int64()),
    pa.field(ERROR_CLASS_COLUMN, pa.string()),
    pa.field(ERROR_MESSAGE_COLUMN, pa.string()),
    pa.field("error_code", pa.string()),
    pa.field("http_status", pa.int32()),
    pa.field("original_status_code", pa.int32()),
    pa.field("original_message", pa.string()),
    pa.field("log_stream_arn", pa.string()),
    pa.field("request_id", pa.string()),
    pa.field("attempts", pa.int32()),
    pa.field("invoked_variant", pa.string()),
    #: The InferenceId of the request that failed (null without ``inference_id_prefix``).
    pa.field("inference_id", pa.string()),
    #: The target of ``compare_targets`` that failed the row (null without ``compare_targets``).
    pa.field("target", pa.string()),
)
#: The container's message is cut to this many bytes (UTF-8) in ``_errors/``.
ORIGINAL_MESSAGE_BYTES = 1024
ERROR_INFERENCE_ID_COLUMN = "inference_id"
ERROR_TARGET_COLUMN = "target"
_PART = re.compile(r"^part-(?P<slug>.+)-(?P<start>\d{10})-(?P<end>\d{10})-(?P<fp>[0-9a-f]{12})\.parquet$")


def config_hash(config: dict[str, Any]) -> str:
    """A stable hash of the scoring configuration that affects predictions."""
    return hashlib.sha256(orjson.dumps(config, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def fingerprint(file: InputFile, configuration_hash: str) -> str:
    return hashlib.sha256(f"{file.identity}|{configuration_hash}".encode()).hexdigest()[:12]


def part_name(unit: WorkUnit, unit_fingerprint: str) -> str:
    return f"part-{unit.key}-{unit_fingerprint}.parquet"


def parse_part_name(name: str) -> tuple[str, int, int] | None:
    """``(file slug, first row, end row)`` of a part called ``name``; None if it is not a part's name."""
    match = _PART.match(name)
    return None if match is None else (match["slug"], int(match["start"]), int(match["end"]))
def part_slug(name: str) -> str | None:
    """The input file's slug in a part name (None if ``name`` is not a part name)."""
    match = _PART.match(name)
    return match["slug"] if match else None


def error_schema(passthrough: pa.Schema) -> pa.Schema:
    """The schema of an error part: the pass-through columns, then :data:`ERROR_FIELDS`."""
    return pa.schema([*passthrough, *ERROR_FIELDS])


@dataclass
class ExistingPart:
    """A data part found under the output (with its error twin, if any)."""

    name: str
    uri: str
    slug: str
    start: int
    end: int
    fingerprint: str
    error_uri: str | None = None


@dataclass
class OutputState:
    """What is already under ``output_uri``: data parts by name, and every other object."""

    output_uri: str
    parts: dict[str, ExistingPart] = field(default_factory=dict)
    others: list[ObjectInfo] = field(default_factory=list)
    #: objects under ``_checkpoints/`` whose folder is named after a part
    checkpoints: list[CheckpointObject] = field(default_factory=list)

    @classmethod
    def load(cls, storage: Storage, output_uri: str) -> OutputState:
        state = cls(output_uri=output_uri)
        root = output_uri.rstrip("/") + "/"
        errors: dict[str, str] = {}
        for info in storage.list(output_uri):
            relative = info.uri[len(root) :] if info.uri.startswith(root) else info.uri
            if relative.startswith(ERRORS_DIR + "/"):
                errors[relative[len(ERRORS_DIR) + 1 :]] = info.uri
                continue
            if relative.startswith(CHECKPOINTS_DIR + "/"):
                checkpoint = parse_checkpoint(relative, info.uri)
                if checkpoint is not None and _PART.match(checkpoint.part):
                    state.checkpoints.append(checkpoint)
                    continue
            match = _PART.match(relative)
            if match is None:
                state.others.append(info)
                continue
            state.parts[relative] = ExistingPart(
                name=relative,
                uri=info.uri,
                slug=match["slug"],
                start=int(match["start"]),
                end=int(match["end"]),
                fingerprint=match["fp"],
            )
        for name, uri in errors.items():
            if name in state.parts:
                state.parts[name].error_uri = uri
            else:  # an error part whose data part was never committed: stale
                state.others.append(ObjectInfo(uri=uri, size=0))
        return state

    @property
    def is_empty(self) -> bool:
        return not self.parts and not self.others and not self.checkpoints

    def parts_of(self, slugs: Iterable[str]) -> list[ExistingPart]:
        wanted = set(slugs)
        return [part for part in self.parts.values() if part.slug in wanted]

    def checkpoints_of(self, slugs: Iterable[str]) -> list[CheckpointObject]:
        wanted = set(slugs)
        return [obj for obj in self.checkpoints if part_slug(obj.part) in wanted]

    def orphan_errors_of(self, slugs: Iterable[str]) -> list[str]:
        prefix = join_uri(self.output_uri, ERRORS_DIR) + "/part-"
        wanted = tuple(f"{prefix}{slug}-" for slug in slugs)
        return [info.uri for info in self.others if info.uri.startswith(wanted)] if wanted else []


@dataclass
class PendingSegment:
    """Rows ``[start, end)`` written since the previous checkpoint, about to be written as a segment."""

    start: int
    end: int
    data: list[tuple[pa.Table, pa.Table]]
    errors: list[pa.Table]


class PartWriter:
    """Streams the scored rows of one work unit into one Parquet part, committed atomically.

    Error rows of the unit go to a twin part under ``_errors/``, committed before the data part,
    so a committed data part always means the whole unit is done. With ``checkpoints``, the rows
    written since the previous checkpoint are also kept for the next segment (:meth:`take_segment`,
    :meth:`write_segment`); segments an earlier run left are merged first when the part commits
    (so a resumed part buffers its new rows until then), and every segment of the unit is deleted
    once the part is committed.
    """

    def __init__(
        self,
        *,
        storage: Storage,
        output_uri: str,
        name: str,
        error_passthrough_schema: pa.Schema,
        compression: str = "snappy",
        stale_error_part: bool = False,
        checkpoints: UnitCheckpoints | None = None,
    ) -> None:
        self.storage = storage
        #: An error part of an earlier run sits at ``error_uri`` (this part replaces one of the same name).
        self._stale_error_part = stale_error_part
        self.uri = join_uri(output_uri, name)
        self.error_uri = join_uri(join_uri(output_uri, ERRORS_DIR), name)
        self._passthrough_schema = error_passthrough_schema
        self._error_schema = error_schema(error_passthrough_schema)
        self._compression = compression
        self._stack = contextlib.ExitStack()
        self._writer: pq.ParquetWriter | None = None
        self._prediction_schema: pa.Schema | None = None
        self._errors: list[pa.Table] = []
        self._pending: list[tuple[pa.Table, pa.Table]] = []
        self._pending_rows = 0
        self._checkpoints = checkpoints
        resumed = checkpoints.resumed if checkpoints is not None else None
        #: segments of an earlier run still to merge (at commit)
        self._resumed = resumed is not None
        self._segment: list[tuple[pa.Table, pa.Table]] = []
        self._segment_errors: list[pa.Table] = []
        #: the first row (of the input file) of the next segment, and the end of the rows written so far
        self.segment_start = self.written_end = checkpoints.first_row if checkpoints is not None else 0
        #: set while no segment of this part is being written
        self._segment_idle = threading.Event()
        self._segment_idle.set()
        self.rows = resumed.rows - resumed.failed if resumed is not None else 0
        self.error_rows = resumed.failed if resumed is not None else 0

    @property
    def checkpoint_busy(self) -> bool:
        """A segment of this part is being written."""
        return not self._segment_idle.is_set()

    def wait_for_segment(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the segment being written (True once none is)."""
        return self._segment_idle.wait(timeout)

    @property
    def checkpointing(self) -> bool:
        return self._checkpoints is not None

    def write(self, passthrough: pa.Table, predictions: pa.Table) -> None:
        """Append scored rows: their pass-through columns and their predictions (as many rows).

        The two are joined once per row group, in :meth:`_flush`, not once per request: building a
        table validates it, and every such call releases the GIL, which costs a thread switch when the
        workers are busy.
        """
        predictions = self._conform(predictions)
        if predictions.num_rows:
            self._pending.append((passthrough, predictions))
            self._pending_rows += predictions.num_rows
            if self._checkpoints is not None:
                self._segment.append((passthrough, predictions))
            if self._pending_rows >= ROW_GROUP_ROWS and not self._resumed:
                self._flush()
        self.rows += predictions.num_rows

    def _conform(self, predictions: pa.Table) -> pa.Table:
        """``predictions`` with the part's prediction schema (the first one seen fixes it)."""
        if self._prediction_schema is None:
            self._prediction_schema = predictions.schema
        elif predictions.schema != self._prediction_schema:
            try:
                return predictions.cast(self._prediction_schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as err:
                raise OutputError(
                    f"predictions changed type within {self.uri}: {predictions.schema} vs "
                    f"{self._prediction_schema}; make the model return one type per output, or set "
                    "prediction_columns and a decoder"
                ) from err
        return predictions

    def _flush(self) -> None:
        """Write the buffered requests' rows as one row group (requests are far smaller than a good row group)."""
        if not self._pending:
            return
        table = _join(self._pending)
        if self._writer is None:
            handle: IO[bytes] = self._stack.enter_context(self.storage.open_write(self.uri))
            self._writer = pq.ParquetWriter(handle, table.schema, compression=self._compression)
        self._writer.write_table(table, row_group_size=max(self._pending_rows, 1))
        self._pending, self._pending_rows = [], 0

    def write_errors(self, table: pa.Table) -> None:
        """Keep error rows (pass-through columns, input row, error class and message) for the error part."""
        if table.num_rows:
            table = table.cast(self._error_schema)
            self._errors.append(table)
            if self._checkpoints is not None:
                self._segment_errors.append(table)
            self.error_rows += table.num_rows

    # -- checkpoints -----------------------------------------------------------------------------

    def advance(self, end: int) -> None:
        """Every row before ``end`` (of the input file) is written (scored or failed)."""
        self.written_end = end

    def take_segment(self) -> PendingSegment | None:
        """The rows written since the previous checkpoint (None if none or not checkpointing); marks the
        part :attr:`checkpoint_busy` until :meth:`write_segment` has written them."""
        if self._checkpoints is None or self.written_end <= self.segment_start:
            return None
        segment = PendingSegment(self.segment_start, self.written_end, self._segment, self._segment_errors)
        self._segment, self._segment_errors = [], []
        self.segment_start = self.written_end
        self._segment_idle.clear()
        return segment

    def write_segment(self, segment: PendingSegment) -> None:
        """Write a segment (on a committer thread; the segments of one part one at a time, in order)."""
        assert self._checkpoints is not None
        try:
            data = _join(segment.data) if segment.data else self._passthrough_schema.empty_table()
            errors = pa.concat_tables(segment.errors) if segment.errors else None
            self._checkpoints.write(segment.start, segment.end, data, errors)
        finally:
            self._segment_idle.set()

    def _merge_resumed(self) -> None:
        """Put the resumed segments' rows before this run's (read on the committer thread, at commit)."""
        if not self._resumed or self._checkpoints is None:
            return
        self._resumed = False
        data, errors = self._checkpoints.read_resumed()
        width = len(self._passthrough_schema)
        pairs = []
        for table in data:
            if table.num_rows:
                passthrough = table.select(list(range(width)))
                predictions = self._conform(table.select(list(range(width, table.num_columns))))
                pairs.append((passthrough, predictions))
        self._pending = pairs + self._pending
        self._pending_rows += sum(pair[1].num_rows for pair in pairs)
        self._errors = [table.cast(self._error_schema) for table in errors] + self._errors

    # -- commit ----------------------------------------------------------------------------------

    def commit(self, empty_schema: pa.Schema) -> None:
        """Commit the error part (if any) and then the data part, then delete the unit's checkpoints."""
        self._merge_resumed()
        if self._errors:
            with self.storage.open_write(self.error_uri) as handle:
                pq.write_table(pa.concat_tables(self._errors), handle, compression=self._compression)
            self._errors = []
        self._segment, self._segment_errors = [], []
        self._flush()
        if self._writer is None:  # every row failed: still mark the unit done
            handle = self._stack.enter_context(self.storage.open_write(self.uri))
            self._writer = pq.ParquetWriter(handle, empty_schema, compression=self._compression)
        self._writer.close()
        self._stack.close()  # completes the upload / renames the staged file
        if self._stale_error_part and not self.error_rows:
            self.storage.delete([self.error_uri])  # the rows that failed before were scored this time
        if self._checkpoints is not None:
            self._checkpoints.delete()

    def abort(self, err: BaseException) -> None:
        """Drop everything of this part: nothing partial becomes visible (its checkpoints stay for a rerun)."""
        self._errors, self._pending = [], []
        self._segment, self._segment_errors = [], []
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        with contextlib.suppress(Exception):
            self._stack.__exit__(type(err), err, err.__traceback__)


def _join(pairs: list[tuple[pa.Table, pa.Table]]) -> pa.Table:
    """One table of buffered ``(pass-through, predictions)`` pairs: pass-through columns, then predictions."""
    passthrough = pa.concat_tables([pair[0] for pair in pairs])
    predictions = pa.concat_tables([pair[1] for pair in pairs])
    return pa.Table.from_arrays(
        [*passthrough.columns, *predictions.columns],
        names=[*passthrough.column_names, *predictions.column_names],
    )


def read_part_counts(storage: Storage, part: ExistingPart) -> tuple[int, int]:
    """(scored rows, error rows) of a committed part, from the Parquet footers."""

    def rows(uri: str) -> int:
        info = ObjectInfo(uri=uri, size=0)
        with storage.open_read(info) as handle:
            return int(pq.ParquetFile(handle).metadata.num_rows)

    return rows(part.uri), (rows(part.error_uri) if part.error_uri else 0)


def read_part_schema(storage: Storage, part: ExistingPart) -> pa.Schema:
    """The Arrow schema of a committed data part, from its Parquet footer."""
    with storage.open_read(ObjectInfo(uri=part.uri, size=0)) as handle:
        return pq.ParquetFile(handle).schema_arrow


def delete_parts(storage: Storage, parts: Sequence[ExistingPart]) -> None:
    """Delete data parts, then their error twins (a data part never outlives its error rows)."""
    data = [part.uri for part in parts]
    errors = [part.error_uri for part in parts if part.error_uri]
    if data:
        storage.delete(data)
    if errors:
        storage.delete(errors)
