"""Checkpoints of the units being scored: staged segments, merged into the unit's part when it commits.

A part holds a whole work unit (up to :data:`~airflow_provider_smrt.scoring.dataset.UNIT_ROWS` rows,
the right size for readers), so a unit takes long to score with small or slow requests. While it is
scored, the in-order writer leaves durable progress every :attr:`CheckpointPolicy.every_seconds` or
every :attr:`CheckpointPolicy.every_requests` requests written, whichever comes first: one *segment*
of the rows written since the previous one. Layout under ``output_uri``::

    _checkpoints/<part name without .parquet>/seg-<first row>-<end row>.parquet     scored rows
    _checkpoints/<part name without .parquet>/errors-<first row>-<end row>.parquet  its failed rows (if any)

Rows are those of the input file (end exclusive), as in part names. Each object is written atomically;
the errors object (when there are failed rows) before its segment, so a segment always means its
whole row range is done. Segments of one unit are written in order. The folder is keyed by the part
name, which carries the input's identity (ETag, version, size) and the configuration hash, so a
changed input or configuration never reuses them. When the part commits it merges the segments
(their rows first, in order) and they are deleted; a rerun lists them, keeps the chain of segments
from the unit's first row, sends only the rows after it, and deletes every other checkpoint object
of its inputs. The folder's name starts with ``_``: nothing staged is ever visible as data.
Airflow-free.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from airflow_provider_smrt.s3 import is_s3, join_uri
from airflow_provider_smrt.scoring.dataset import WorkUnit
from airflow_provider_smrt.scoring.storage import Storage

__all__ = [
    "CHECKPOINTS_DIR",
    "DEFAULT_CHECKPOINT_EVERY_REQUESTS",
    "DEFAULT_CHECKPOINT_INTERVAL_SECONDS",
    "CheckpointObject",
    "CheckpointPolicy",
    "Segment",
    "UnitCheckpoint",
    "UnitCheckpoints",
    "checkpoint_folder",
    "delete_checkpoint_objects",
    "parse_checkpoint",
    "resolve_checkpoints",
    "skip_checkpointed",
]

CHECKPOINTS_DIR = "_checkpoints"
DEFAULT_CHECKPOINT_INTERVAL_SECONDS = 10.0
DEFAULT_CHECKPOINT_EVERY_REQUESTS = 64
_OBJECT = re.compile(r"^(?P<kind>seg|errors)-(?P<start>\d{10})-(?P<end>\d{10})\.parquet$")


@dataclass(frozen=True)
class CheckpointPolicy:
    """When the in-order writer leaves a checkpoint of a unit: after ``every_seconds`` or ``every_requests``
    requests written since the previous one, whichever comes first (None: no such trigger)."""

    every_seconds: float | None = DEFAULT_CHECKPOINT_INTERVAL_SECONDS
    every_requests: int | None = DEFAULT_CHECKPOINT_EVERY_REQUESTS

    @property
    def enabled(self) -> bool:
        return self.every_seconds is not None or self.every_requests is not None

    def due(self, *, requests: int, since: float, now: float | None = None) -> bool:
        """Whether ``requests`` written since the monotonic time ``since`` call for a checkpoint."""
        if requests <= 0:
            return False
        if self.every_requests is not None and requests >= self.every_requests:
            return True
        if self.every_seconds is not None:
            return (time.monotonic() if now is None else now) - since >= self.every_seconds
        return False


@dataclass(frozen=True)
class CheckpointObject:
    """One object under ``_checkpoints/``: ``part`` is the data part's name it belongs to."""

    part: str
    uri: str
    #: ``seg``, ``errors``, or ``None`` for anything else found in the folder (e.g. a staged local file)
    kind: str | None = None
    start: int = 0
    end: int = 0


def checkpoint_folder(output_uri: str, part_name: str) -> str:
    """``<output_uri>/_checkpoints/<part name without .parquet>``."""
    stem = part_name[: -len(".parquet")] if part_name.endswith(".parquet") else part_name
    return join_uri(join_uri(output_uri, CHECKPOINTS_DIR), stem)


def parse_checkpoint(relative: str, uri: str) -> CheckpointObject | None:
    """The checkpoint object at ``relative`` (its key under the output), or None if it is not one."""
    parts = relative.split("/")
    if len(parts) != 3 or parts[0] != CHECKPOINTS_DIR or not parts[1]:
        return None
    part = parts[1] + ".parquet"
    match = _OBJECT.match(parts[2])
    if match is None:
        return CheckpointObject(part=part, uri=uri)
    return CheckpointObject(part=part, uri=uri, kind=match["kind"], start=int(match["start"]), end=int(match["end"]))


@dataclass(frozen=True)
class Segment:
    """A segment under the output: rows ``[start, end)`` of the input file, ``failed`` of them in ``error_uri``."""

    start: int
    end: int
    uri: str
    error_uri: str | None = None
    failed: int = 0

    @property
    def rows(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class UnitCheckpoint:
    """The chain of segments a rerun resumes a unit from: contiguous, from the unit's first row."""

    unit: WorkUnit
    segments: tuple[Segment, ...]

    @property
    def end(self) -> int:
        """The first row of the unit no segment holds (absolute, like ``unit.start``)."""
        return self.segments[-1].end if self.segments else self.unit.start

    @property
    def rows(self) -> int:
        """Rows the segments hold (scored and failed)."""
        return self.end - self.unit.start

    @property
    def failed(self) -> int:
        return sum(segment.failed for segment in self.segments)


def resolve_checkpoints(
    storage: Storage, objects: Iterable[CheckpointObject], todo: Mapping[str, WorkUnit]
) -> tuple[dict[WorkUnit, UnitCheckpoint], list[str]]:
    """Split checkpoint objects into the chains to resume from and the objects to delete.

    ``todo`` maps the part name of each unit this run scores (and may resume) to its unit; every
    object of another part (a committed unit, another input version or configuration) is obsolete,
    and so is every object of a ``todo`` unit that is not in its chain. A chain never holds a unit's
    last row (the writer never checkpoints it), so a resumed unit always has rows left to score.
    Reads the footer of each chained errors object, for its row count.
    """
    by_part: dict[str, list[CheckpointObject]] = {}
    for obj in objects:
        by_part.setdefault(obj.part, []).append(obj)
    chains: dict[WorkUnit, UnitCheckpoint] = {}
    obsolete: list[str] = []
    for part, found in by_part.items():
        unit = todo.get(part)
        if unit is None:
            obsolete += [obj.uri for obj in found]
            continue
        data = {(obj.start, obj.end): obj.uri for obj in found if obj.kind == "seg"}
        errors = {(obj.start, obj.end): obj.uri for obj in found if obj.kind == "errors"}
        used: set[str] = set()
        segments: list[Segment] = []
        cursor = unit.start
        while True:
            ranges = [key for key in data if key[0] == cursor and cursor < key[1] < unit.end]
            if not ranges:
                break
            key = max(ranges, key=lambda item: item[1])
            segments.append(Segment(start=key[0], end=key[1], uri=data[key], error_uri=errors.get(key)))
            used |= {data[key], errors.get(key, data[key])}
            cursor = key[1]
        obsolete += [obj.uri for obj in found if obj.uri not in used]
        if segments:
            chains[unit] = UnitCheckpoint(unit=unit, segments=tuple(_with_error_counts(storage, segments)))
    return chains, obsolete


def _with_error_counts(storage: Storage, segments: list[Segment]) -> Iterator[Segment]:
    for segment in segments:
        if segment.error_uri is None:
            yield segment
            continue
        failed = _read_table(storage, segment.error_uri).num_rows
        yield Segment(start=segment.start, end=segment.end, uri=segment.uri, error_uri=segment.error_uri, failed=failed)


def _read_table(storage: Storage, uri: str) -> pa.Table:
    """A whole (small) checkpoint object: one GET on S3."""
    return pq.read_table(pa.BufferReader(storage.read_bytes(uri)))


def delete_checkpoint_objects(storage: Storage, uris: Sequence[str]) -> None:
    """Delete checkpoint objects: segments first, then their errors (a segment never outlives its errors);
    empty local folders go too."""
    segments = [uri for uri in uris if "/errors-" not in uri]
    errors = [uri for uri in uris if "/errors-" in uri]
    for batch in (segments, errors):
        if batch:
            storage.delete(batch)
    folders = {uri.rsplit("/", 1)[0] for uri in uris if not is_s3(uri)}
    for folder in sorted(folders):
        for path in (folder, os.path.dirname(folder)):  # the unit's folder, then _checkpoints/ itself
            with contextlib.suppress(OSError):
                os.rmdir(path)


def skip_checkpointed(
    batches: Iterable[tuple[WorkUnit, pa.RecordBatch]], resume: Mapping[WorkUnit, UnitCheckpoint]
) -> Iterator[tuple[WorkUnit, pa.RecordBatch]]:
    """Drop the rows the checkpoints already hold from ``(unit, batch)`` pairs (each unit's batches in order)."""
    if not resume:
        yield from batches
        return
    seen: dict[WorkUnit, int] = {}
    for unit, batch in batches:
        checkpoint = resume.get(unit)
        if checkpoint is None:
            yield unit, batch
            continue
        skip = checkpoint.rows
        position = seen.get(unit, 0)
        seen[unit] = position + batch.num_rows
        if position + batch.num_rows <= skip:
            continue
        yield unit, batch.slice(skip - position) if position < skip else batch


@dataclass
class UnitCheckpoints:
    """The checkpoint segments of one unit: those resumed from earlier runs, and those this run writes.

    :param folder: the unit's folder (:func:`checkpoint_folder`).
    :param resumed: the chain an earlier run left (None: the unit starts from its first row).
    """

    storage: Storage
    folder: str
    unit: WorkUnit
    resumed: UnitCheckpoint | None = None
    compression: str = "snappy"
    #: the URIs of every segment and errors object of this unit, resumed and written
    uris: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for segment in self.resumed.segments if self.resumed else ():
            self.uris += [segment.uri] + ([segment.error_uri] if segment.error_uri else [])

    @property
    def first_row(self) -> int:
        """The first row this run scores (absolute)."""
        return self.resumed.end if self.resumed else self.unit.start

    def write(self, start: int, end: int, data: pa.Table, errors: pa.Table | None) -> None:
        """Write one segment (rows ``[start, end)``): its errors first, then its scored rows."""
        name = f"{start:010d}-{end:010d}.parquet"
        if errors is not None and errors.num_rows:
            error_uri = join_uri(self.folder, f"errors-{name}")
            with self.storage.open_write(error_uri) as handle:
                pq.write_table(errors, handle, compression=self.compression)
            self.uris.append(error_uri)
        uri = join_uri(self.folder, f"seg-{name}")
        with self.storage.open_write(uri) as handle:
            pq.write_table(data, handle, compression=self.compression)
        self.uris.append(uri)

    def read_resumed(self) -> tuple[list[pa.Table], list[pa.Table]]:
        """The resumed segments' scored rows and failed rows, in row order."""
        data: list[pa.Table] = []
        errors: list[pa.Table] = []
        for segment in self.resumed.segments if self.resumed else ():
            data.append(_read_table(self.storage, segment.uri))
            if segment.error_uri:
                errors.append(_read_table(self.storage, segment.error_uri))
        return data, errors

    def delete(self) -> None:
        """Delete every segment of the unit (after its part is committed)."""
        if self.uris:
            delete_checkpoint_objects(self.storage, self.uris)
            self.uris = []
