"""Input datasets: resolve input URIs to Parquet files, check their schemas, and cut them into work units.

A work unit is a contiguous row range of one input file, planned from the file's row groups by a
fixed rule (whole small row groups merged up to :data:`UNIT_ROWS` rows; larger row groups cut into
chunks of :data:`UNIT_ROWS`), so the same file always gives the same units: output part names derive
from them, which makes reruns and mapped tasks collide-free and resumable. Airflow-free.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from airflow_provider_smrt.exceptions import InputDataError
from airflow_provider_smrt.s3 import ObjectInfo, basename, is_s3
from airflow_provider_smrt.scoring.row_groups import SelectedObject, selection, split_row_groups
from airflow_provider_smrt.scoring.storage import Storage

#: Rows per work unit (the resume granularity and the size of one output part).
UNIT_ROWS = 131_072
#: Rows per Arrow batch read from Parquet (less for a unit smaller than that).
READ_BATCH_ROWS = 65_536
#: Compressed bytes of consecutive row groups read together: with ``pre_buffer`` pyarrow coalesces
#: their column chunks into one read (one ranged GET on S3). A larger row group is read alone.
READ_WINDOW_BYTES = 32 * 1024 * 1024
_PARQUET_MAGIC = b"PAR1"
_SLUG = re.compile(r"[^A-Za-z0-9_.-]+")
#: Suffix selecting row groups ``[start, stop)`` of one Parquet object: ``s3://b/k.parquet#row_groups=0:4``.
@dataclass(frozen=True)
class InputFile:
    """A Parquet input: where it is, its identity (ETag/version) and its row-group layout."""

    info: ObjectInfo
    num_rows: int
    row_group_rows: tuple[int, ...]
    schema: pa.Schema
    #: the footer read at planning (so scoring does not read it again); compressed bytes per row group
    metadata: pq.FileMetaData | None = dataclasses.field(default=None, compare=False, repr=False)
    row_group_bytes: tuple[int, ...] = dataclasses.field(default=(), compare=False, repr=False)
    #: only row groups ``[start, stop)`` are scored (a shard of the file); None: the whole file
    row_groups: tuple[int, int] | None = None

    def __hash__(self) -> int:
        # Cheap and consistent with equality (the generated hash would hash the schema on every call;
        # units are dictionary keys in the pipeline's hot path).
        return hash((self.info.uri, self.info.etag, self.num_rows))

    @property
    def uri(self) -> str:
        return self.info.uri

    @property
    def slug(self) -> str:
        """A short, readable, collision-free name for the file (stem + hash of the URI)."""
        stem = basename(self.uri)
        for suffix in (".parquet", ".pq"):
            if stem.endswith(suffix):
                stem = stem[: -len(suffix)]
        stem = _SLUG.sub("_", stem)[:48] or "file"
        return f"{stem}-{hashlib.sha256(self.uri.encode()).hexdigest()[:10]}"

    @property
    def identity(self) -> str:
        """What changes when the object's content changes."""
        return f"{self.info.etag}|{self.info.version_id}|{self.info.size}"

    @property
    def selected_rows(self) -> tuple[int, int]:
        """Rows ``[first, end)`` covered by the selected row groups (every row without a selection)."""
        if self.row_groups is None:
            return 0, self.num_rows
        start, stop = self.row_groups
        return sum(self.row_group_rows[:start]), sum(self.row_group_rows[:stop])

    def owns(self, start: int) -> bool:
        """Whether the unit (or part) starting at row ``start`` belongs to this selection of the file.

        A unit belongs to the selection its first row is in, so selections of consecutive row groups
        share out a file's units without overlap, whatever the selections' boundaries. The whole file,
        and a selection running to the file's last row group, also own parts starting past the file's
        end (left by a longer version of the file: stale, removed by the run that owns them).
        """
        if self.row_groups is None:
            return True
        first, end = self.selected_rows
        return first <= start and (start < end or self.row_groups[1] >= len(self.row_group_rows))


@dataclass(frozen=True)
class WorkUnit:
    """Rows ``[start, end)`` of one input file."""

    file: InputFile
    start: int
    end: int

    def __hash__(self) -> int:
        return hash((self.file.info.uri, self.start, self.end))

    @property
    def num_rows(self) -> int:
        return self.end - self.start

    @property
    def key(self) -> str:
        return f"{self.file.slug}-{self.start:010d}-{self.end:010d}"

    def describe(self, offset: int = 0, count: int | None = None) -> str:
        """Human description of rows of this unit for error messages (0-based, end exclusive)."""
        first = self.start + offset
        last = first + (self.num_rows - offset if count is None else count)
        return f"{self.file.uri} rows {first}-{last - 1}" if last - first > 1 else f"{self.file.uri} row {first}"


def plan_units(file: InputFile, unit_rows: int | None = None) -> list[WorkUnit]:
    """Cut a file into work units by the fixed rule of this module (``unit_rows`` defaults to UNIT_ROWS).

    With a row-group selection, the units are those of the whole file that the selection owns (see
    :meth:`InputFile.owns`): the same units, and so the same part names, as a run over the whole file.
    """
    units = _plan_file_units(file, unit_rows)
    if file.row_groups is None:
        return units
    return [unit for unit in units if file.owns(unit.start)]


def _plan_file_units(file: InputFile, unit_rows: int | None) -> list[WorkUnit]:
    unit_rows = unit_rows or UNIT_ROWS
    units: list[WorkUnit] = []
    start = 0
    pending = 0  # rows of merged small row groups not yet emitted
    for rows in file.row_group_rows:
        if rows > unit_rows:
            if pending:
                units.append(WorkUnit(file, start, start + pending))
                start += pending
                pending = 0
            for offset in range(0, rows, unit_rows):
                length = min(unit_rows, rows - offset)
                units.append(WorkUnit(file, start, start + length))
                start += length
            continue
        if pending and pending + rows > unit_rows:
            units.append(WorkUnit(file, start, start + pending))
            start += pending
            pending = 0
        pending += rows
    if pending:
        units.append(WorkUnit(file, start, start + pending))
    return [unit for unit in units if unit.num_rows > 0]


def _is_hidden(uri: str, root: str) -> bool:
    relative = uri[len(root) :].lstrip("/") if uri.startswith(root) else basename(uri)
    return any(part.startswith(("_", ".")) for part in relative.split("/") if part)


def resolve_inputs(storage: Storage, input_uris: str | Sequence[str]) -> list[ObjectInfo]:
    """Every input object: a prefix/directory means every non-hidden object under it.

    Names (or folders) starting with ``_`` or ``.`` under a prefix are skipped (``_SUCCESS``,
    ``.crc``...). Zero-byte objects (folder markers, empty files) are skipped. An object URI ending in
    ``#row_groups=<start>:<stop>`` (see :func:`with_row_groups`) selects those row groups only: it
    comes back as a :class:`SelectedObject`.
    """
    uris = [input_uris] if isinstance(input_uris, str) else list(input_uris)
    if not uris:
        raise InputDataError("input_uri is empty: pass an s3:// prefix or object, a local path, or a list of them")
    found: dict[str, ObjectInfo] = {}
    for uri in uris:
        if not isinstance(uri, str) or not uri:
            raise InputDataError(f"input_uri entries must be non-empty strings, got {uri!r}")
        base, row_groups = split_row_groups(uri)
        exact = None if base.endswith("/") else storage.stat(base)
        if row_groups is not None:
            if exact is None:
                raise InputDataError(
                    f"input_uri {uri!r} selects row groups of {base!r}, which is not an object: a row-group "
                    "selector applies to one Parquet object, not to a prefix"
                )
            objects: list[ObjectInfo] = [SelectedObject(**dataclasses.asdict(exact), row_groups=row_groups)]
        elif exact is not None:
            objects = [exact]
        else:
            objects = [info for info in storage.list(base) if not _is_hidden(info.uri, base)]
            if not objects:
                where = "prefix" if is_s3(base) else "path"
                raise InputDataError(
                    f"input_uri {uri!r} matched no objects: check the {where} (for a partition that may "
                    "legitimately be empty, set allow_empty_input=True)"
                )
        for info in objects:
            previous = found.setdefault(info.uri, info)
            if selection(previous) != selection(info):
                raise InputDataError(
                    f"input_uri names {info.uri} more than once with different row groups: list each object once "
                    "(with one row-group range at most)"
                )
    return [info for info in found.values() if info.size > 0]


def read_input_file(storage: Storage, info: ObjectInfo) -> InputFile:
    """Read a file's Parquet footer (a couple of ranged reads on S3)."""
    try:
        with storage.open_read(info) as fh:
            head = fh.read(4)
            if head != _PARQUET_MAGIC:
                raise InputDataError(
                    f"{info.uri} is not a Parquet file (it does not start with PAR1): remove it from the input "
                    "prefix or list the Parquet objects explicitly"
                )
            fh.seek(0)
            meta = pq.ParquetFile(fh).metadata
            schema = meta.schema.to_arrow_schema()
    except InputDataError:
        raise
    except (pa.ArrowInvalid, OSError, ValueError) as err:
        raise InputDataError(f"{info.uri} is not a readable Parquet file ({err}): replace or remove it") from err
    groups = [meta.row_group(i) for i in range(meta.num_row_groups)]
    row_groups = selection(info)
    if row_groups is not None and row_groups[1] > meta.num_row_groups:
        raise InputDataError(
            f"{info.uri} has {meta.num_row_groups} row group(s) but the input selects row groups "
            f"{row_groups[0]}:{row_groups[1]}: plan the shards again from the current input"
        )
    return InputFile(
        info=info,
        num_rows=meta.num_rows,
        row_group_rows=tuple(group.num_rows for group in groups),
        schema=schema,
        metadata=meta,
        row_group_bytes=tuple(
            sum(group.column(c).total_compressed_size for c in range(group.num_columns)) for group in groups
        ),
        row_groups=row_groups,
    )


def read_input_files(storage: Storage, infos: Sequence[ObjectInfo], *, threads: int = 8) -> list[InputFile]:
    """Read every footer, several at a time."""
    if len(infos) <= 1:
        return [read_input_file(storage, info) for info in infos]
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="smrt-footer") as pool:
        return list(pool.map(lambda info: read_input_file(storage, info), infos))


def _comparable(field_type: pa.DataType) -> pa.DataType:
    if pa.types.is_dictionary(field_type):
        return _comparable(field_type.value_type)
    if pa.types.is_large_string(field_type):
        return pa.string()
    if pa.types.is_large_binary(field_type):
        return pa.binary()
    return field_type


def check_schemas(
    files: Sequence[InputFile],
    *,
    feature_columns: Sequence[str] | None,
    passthrough_columns: Sequence[str] | None,
) -> tuple[list[str], list[str], pa.Schema]:
    """Check every file has the needed columns with one type; return (features, passthrough, schema).

    ``feature_columns`` defaults to every column not in ``passthrough_columns``. The returned schema
    holds the needed columns with the types of the first file that has rows.
    """
    if not files:
        return list(feature_columns or []), list(passthrough_columns or []), pa.schema([])
    reference = next((f for f in files if f.num_rows > 0), files[0])
    passthrough = list(passthrough_columns or [])
    if feature_columns is None:
        features = [name for name in reference.schema.names if name not in passthrough]
    else:
        features = list(feature_columns)
    if not features:
        raise InputDataError(
            f"no feature columns: {reference.uri} has columns {reference.schema.names} and all are pass-through; "
            "set feature_columns"
        )
    for dup_list, name in ((features, "feature_columns"), (passthrough, "passthrough_columns")):
        if len(set(dup_list)) != len(dup_list):
            raise InputDataError(f"{name} lists a column twice: {dup_list}")
    needed = features + [name for name in passthrough if name not in features]  # a column may be both
    fields = []
    for column in needed:
        if reference.schema.get_field_index(column) < 0:
            raise InputDataError(
                f"column {column!r} is missing from {reference.uri} (columns: {reference.schema.names}): fix "
                "feature_columns/passthrough_columns or the input"
            )
        fields.append(reference.schema.field(column))
    for file in files:
        for field in fields:
            index = file.schema.get_field_index(field.name)
            if index < 0:
                raise InputDataError(
                    f"column {field.name!r} is missing from {file.uri} but present in {reference.uri}: all input "
                    "files must share the scored columns"
                )
            other = file.schema.field(index).type
            if _comparable(other) != _comparable(field.type):
                raise InputDataError(
                    f"column {field.name!r} is {other} in {file.uri} but {field.type} in {reference.uri}: all input "
                    "files must have the same type for each scored column (rewrite the file or cast upstream)"
                )
    return features, passthrough, pa.schema(fields)


def read_windows(file: InputFile, groups: Sequence[int], budget: int | None = None) -> list[list[int]]:
    """Split consecutive row groups into windows of at most ``budget`` compressed bytes (one group at least).

    ``budget`` defaults to :data:`READ_WINDOW_BYTES`.
    """
    budget = budget or READ_WINDOW_BYTES
    windows: list[list[int]] = []
    size = 0
    for group in groups:
        group_bytes = file.row_group_bytes[group] if group < len(file.row_group_bytes) else budget
        if windows and size + group_bytes <= budget:
            windows[-1].append(group)
            size += group_bytes
        else:
            windows.append([group])
            size = group_bytes
    return windows


def iter_units(
    parquet: pq.ParquetFile,
    units: Sequence[WorkUnit],
    *,
    columns: Sequence[str],
    batch_rows: int = READ_BATCH_ROWS,
) -> Iterator[tuple[WorkUnit, pa.RecordBatch]]:
    """Yield ``(unit, rows)`` for the given units of one open file, in order, a bounded batch at a time.

    Consecutive units are read in one pass (a unit inside a large row group does not re-read the
    row group from its start); row groups of units not asked for are not read at all. Row groups are
    read a window of :data:`READ_WINDOW_BYTES` at a time (see :func:`read_windows`).
    """
    ordered = sorted(units, key=lambda unit: unit.start)
    runs: list[list[WorkUnit]] = []
    for unit in ordered:
        if runs and runs[-1][-1].end == unit.start:
            runs[-1].append(unit)
        else:
            runs.append([unit])
    for run in runs:
        run_start, run_end = run[0].start, run[-1].end
        groups: list[int] = []
        cursor = None
        first = 0
        for index, rows in enumerate(run[0].file.row_group_rows):
            if first < run_end and first + rows > run_start:
                groups.append(index)
                cursor = first if cursor is None else cursor
            first += rows
        if cursor is None:
            continue
        position = 0  # index into run
        batches = itertools.chain.from_iterable(
            parquet.iter_batches(batch_size=batch_rows, row_groups=window, columns=list(columns), use_threads=False)
            for window in read_windows(run[0].file, groups)
        )
        for batch in batches:
            batch_start, batch_end = cursor, cursor + batch.num_rows
            cursor = batch_end
            while position < len(run) and batch_end > run[position].start:
                unit = run[position]
                low = max(unit.start, batch_start)
                high = min(unit.end, batch_end)
                if high > low:
                    yield unit, batch.slice(low - batch_start, high - low)
                if unit.end <= batch_end:
                    position += 1
                else:
                    break
            if position >= len(run):
                break
