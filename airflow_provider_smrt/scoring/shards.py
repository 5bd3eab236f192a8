"""Split one input into balanced shards, each scored by its own task into the same output.

A shard is a list of input URIs, the value of one mapped task's ``input_uri``: whole Parquet objects,
and for an object too large for one shard, a range of its row groups
(``s3://bucket/key.parquet#row_groups=4:9``, see :func:`~airflow_provider_smrt.scoring.row_groups.with_row_groups`).
Shards are cut only at work-unit boundaries that are also row-group boundaries, so every shard
scores exactly the work units (and writes exactly the part names) a single run over the whole input
would: the union of the shards' outputs is the single run's output, and a rerun of one shard finds
its own parts and scores only what is missing. Airflow-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from airflow_provider_smrt.exceptions import InputDataError, ParameterValidationError
from airflow_provider_smrt.scoring.dataset import (
    InputFile,
    plan_units,
    read_input_files,
    resolve_inputs,
)
from airflow_provider_smrt.scoring.row_groups import with_row_groups
from airflow_provider_smrt.scoring.storage import Storage

#: The most shards one plan may hold (Airflow's default ``max_map_length`` is 1024).
MAX_SHARDS = 1024


@dataclass(frozen=True)
class _Piece:
    """Row groups ``[start, stop)`` of one file: the smallest span a shard may hold."""

    file: InputFile
    start: int
    stop: int
    rows: int


def _pieces(file: InputFile) -> list[_Piece]:
    """Cut a file at every row-group boundary that is also a work-unit boundary."""
    unit_starts = {unit.start for unit in plan_units(file)}
    pieces: list[_Piece] = []
    first_group, first_row, row = 0, 0, 0
    for group, rows in enumerate(file.row_group_rows):
        if group > first_group and row in unit_starts:
            pieces.append(_Piece(file, first_group, group, row - first_row))
            first_group, first_row = group, row
        row += rows
    if row > first_row:
        pieces.append(_Piece(file, first_group, len(file.row_group_rows), row - first_row))
    return pieces


def _uris(pieces: Sequence[_Piece]) -> list[str]:
    """One shard's input URIs: a whole file as itself, part of a file as its row-group range."""
    spans: dict[str, list[_Piece]] = {}
    for piece in pieces:
        spans.setdefault(piece.file.uri, []).append(piece)
    uris = []
    for file_pieces in spans.values():
        file = file_pieces[0].file
        start, stop = file_pieces[0].start, file_pieces[-1].stop
        whole = start == 0 and stop == len(file.row_group_rows)
        uris.append(file.uri if whole else with_row_groups(file.uri, start, stop))
    return uris


def plan_shards(
    storage: Storage,
    input_uri: str | Sequence[str],
    num_shards: int,
    *,
    allow_empty_input: bool = False,
) -> list[list[str]]:
    """Split the input into at most ``num_shards`` shards of about equal rows; each is a list of URIs.

    Files are taken in URI order and cut into consecutive shards where the running row count crosses
    each ``k * total / num_shards``, a file being split only at its row-group boundaries: shards differ
    by at most the largest such piece (one row group, or the row groups merged into one work unit).
    There are fewer shards than ``num_shards`` when the input has fewer pieces, and none for an
    empty input with ``allow_empty_input``. The plan reads only the files' footers.
    """
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or not 1 <= num_shards <= MAX_SHARDS:
        raise ParameterValidationError(f"num_shards={num_shards!r} must be an integer from 1 to {MAX_SHARDS}")
    try:
        infos = resolve_inputs(storage, input_uri)
    except InputDataError:
        if not allow_empty_input:
            raise
        return []
    files = sorted(read_input_files(storage, infos), key=lambda file: file.uri)
    pieces = [piece for file in files for piece in _pieces(file)]
    total = sum(piece.rows for piece in pieces)
    if not pieces or total == 0:
        if allow_empty_input:
            return []
        raise InputDataError(
            f"input_uri {input_uri!r} holds no rows to shard (for a partition that may legitimately be empty, "
            "set allow_empty_input=True)"
        )
    count = min(num_shards, len(pieces))
    shards: list[list[_Piece]] = [[]]
    done = 0
    for index, piece in enumerate(pieces):
        remaining_pieces = len(pieces) - index
        boundary = total * len(shards) / count  # where the current shard should end
        # Close the current shard before this piece if that lands nearer its boundary, and always when
        # every remaining shard needs a piece of its own.
        if shards[-1] and len(shards) < count:
            nearer = abs(done - boundary) <= abs(done + piece.rows - boundary)
            if nearer or remaining_pieces == count - len(shards):
                shards.append([])
        shards[-1].append(piece)
        done += piece.rows
    return [_uris(shard) for shard in shards]
