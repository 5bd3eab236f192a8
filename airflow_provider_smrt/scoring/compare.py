"""Scoring several targets of one endpoint in one pass (``compare_targets``): shadow and A/B scoring.

Each request (one encoded body) is sent to every target, one call per target with the target's
InvokeEndpoint parameters (``target_variant``, ``target_model``, ``inference_component_name``,
``target_container_hostname``) and the same retry policy. The output holds the pass-through columns,
then each target's prediction columns suffixed ``__<name>`` (:func:`suffixed`). A row a target failed
has nulls in that target's columns and a row in ``_errors/`` whose ``target`` column names it; a row
every target failed is only in ``_errors/`` (once per target).

:func:`merge_targets` joins one request's per-target results; :class:`TargetSchemas` keeps each
target's columns for the rows it fails (its first answer, or on resume the output an earlier run wrote);
:class:`CompareStats` keeps, in bounded memory, each target's failed rows and its agreement with the
first target (mean and max absolute difference of numeric outputs, the share of equal values of the
others), folded from each written table of predictions (:meth:`CompareStats.fold`), so the rows a
resumed run reads back (:func:`fold_stored`) count too.
Airflow-free.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from airflow_provider_smrt.exceptions import InvocationError, OutputError, ParameterValidationError
from airflow_provider_smrt.s3 import ObjectInfo
from airflow_provider_smrt.scoring.sink import ERROR_ROW_COLUMN, ERROR_TARGET_COLUMN
from airflow_provider_smrt.scoring.storage import Storage
from airflow_provider_smrt.scoring.tasks import Piece, RowErrors

__all__ = [
    "TARGET_KEYS",
    "CompareStats",
    "CompareTarget",
    "TargetErrors",
    "TargetSchemas",
    "fold_stored",
    "merge_targets",
    "parse_compare_targets",
    "split_schema",
    "suffixed",
]

#: The InvokeEndpoint parameters a target sets (at least one of them).
TARGET_KEYS = ("target_variant", "target_model", "inference_component_name", "target_container_hostname")
_NAME = re.compile(r"[A-Za-z0-9_]+")
#: Rows of a task one target failed: ``(offset within the task, row count, error, target name)``.
TargetErrors = list[tuple[int, int, InvocationError, str]]


def suffixed(column: str, target: str) -> str:
    """The output name of a target's prediction column: ``prediction`` of ``shadow`` is ``prediction__shadow``."""
    return f"{column}__{target}"


@dataclass(frozen=True)
class CompareTarget:
    """One target of ``compare_targets``: its name (the column suffix) and its InvokeEndpoint parameters."""

    name: str
    params: Mapping[str, str]


def parse_compare_targets(value: object) -> tuple[CompareTarget, ...]:
    """Validate ``compare_targets`` (a list of dicts) into targets; raise naming the entry and the key.

    :raises ParameterValidationError: not a list of at least two dicts, a missing, malformed or repeated
        ``name``, an unknown key, no target key, or a value that is not a non-empty string.
    """
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise ParameterValidationError(
            f"compare_targets must be a list of dicts such as [{{'name': 'prod', 'target_variant': 'blue'}}, "
            f"{{'name': 'shadow', 'target_variant': 'green'}}]; got {type(value).__name__}"
        )
    if len(value) < 2:
        raise ParameterValidationError(
            f"compare_targets needs at least two targets to compare (got {len(value)}): to score one target, "
            "set target_variant, target_model, inference_component_name or target_container_hostname instead"
        )
    targets: list[CompareTarget] = []
    seen: set[str] = set()
    allowed = ", ".join(("name", *TARGET_KEYS))
    for index, entry in enumerate(value):
        where = f"compare_targets[{index}]"
        if not isinstance(entry, Mapping):
            raise ParameterValidationError(f"{where} must be a dict with 'name' and target keys; got {entry!r}")
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ParameterValidationError(
                f"{where}: 'name' is required and must match [A-Za-z0-9_]+ (it suffixes the prediction "
                f"columns, e.g. prediction__prod); got {name!r}"
            )
        where = f"compare_targets[{index}] ({name!r})"
        if name in seen:
            raise ParameterValidationError(f"{where}: the name {name!r} is used twice; give every target its own name")
        seen.add(name)
        unknown = sorted(str(key) for key in entry if key != "name" and key not in TARGET_KEYS)
        if unknown:
            raise ParameterValidationError(f"{where}: unknown key(s) {unknown}; the keys are {allowed}")
        params: dict[str, str] = {}
        for key in TARGET_KEYS:
            if key not in entry:
                continue
            item = entry[key]
            if not isinstance(item, str) or not item:
                raise ParameterValidationError(f"{where}: {key} must be a non-empty string; got {item!r}")
            params[key] = item
        if not params:
            raise ParameterValidationError(f"{where}: set at least one of {', '.join(TARGET_KEYS)}")
        targets.append(CompareTarget(name=name, params=params))
    return tuple(targets)


def _nulls(schema: pa.Schema, rows: int) -> pa.Table:
    return pa.table({f.name: pa.nulls(rows, type=f.type) for f in schema}, schema=schema)


def merge_targets(
    *,
    num_rows: int,
    names: Sequence[str],
    results: Sequence[tuple[list[Piece], RowErrors]],
    schemas: Mapping[str, pa.Schema],
    variant_column: str | None = None,
) -> tuple[list[Piece], TargetErrors, dict[str, pa.Schema]]:
    """Join the per-target results of one request of ``num_rows`` rows into pieces of suffixed columns.

    :param names: the targets' names, in ``compare_targets`` order.
    :param results: each target's ``(pieces, errors)`` for the request (offsets within the task).
    :param schemas: each target's prediction schema known from earlier requests (for its null rows when
        it answered none of this request's rows; else another target's schema of this request is used).
    :param variant_column: if set, each target's invoked variant goes into ``<variant_column>__<name>``.
    :returns: the pieces (runs of rows at least one target answered; their variant is None), the errors
        tagged with their target, and the schemas this request showed.
    """
    learned = {name: pieces[0].predictions.schema for name, (pieces, _) in zip(names, results, strict=True) if pieces}
    fallback = next(iter(learned.values()), None)
    errors: TargetErrors = []
    columns: list[pa.ChunkedArray] = []
    column_names: list[str] = []
    answered = [False] * num_rows
    for name, (pieces, target_errors) in zip(names, results, strict=True):
        errors += [(offset, count, err, name) for offset, count, err in target_errors]
        if not pieces and fallback is None:
            continue  # no target answered any row of this request: nothing is written but the errors
        schema = learned.get(name) or schemas.get(name) or fallback
        assert schema is not None
        for piece in pieces:
            answered[piece.offset : piece.offset + piece.predictions.num_rows] = [True] * piece.predictions.num_rows
        blocks: list[tuple[int, pa.Table, str | None]] = [(p.offset, p.predictions, p.variant) for p in pieces]
        blocks += [(offset, _nulls(schema, count), None) for offset, count, _ in target_errors]
        blocks.sort(key=lambda block: block[0])
        tables = []
        variants: list[str | None] = []
        for _, table, variant in blocks:
            tables.append(table if table.schema == schema else table.cast(schema))
            variants += [variant] * table.num_rows
        joined = pa.concat_tables(tables)
        columns += list(joined.columns)
        column_names += [suffixed(column, name) for column in joined.column_names]
        if variant_column is not None:
            columns.append(pa.chunked_array([pa.array(variants, type=pa.string())]))
            column_names.append(suffixed(variant_column, name))
    kept: list[Piece] = []
    if columns:
        table = pa.Table.from_arrays(columns, names=column_names)
        start: int | None = None
        for row in range(num_rows + 1):
            if row < num_rows and answered[row]:
                start = row if start is None else start
            elif start is not None:
                kept.append(Piece(start, table.slice(start, row - start).combine_chunks(), None))
                start = None
    return kept, errors, learned


def _columns(schema: pa.Schema) -> str:
    return ", ".join(f"{field_.name}: {field_.type}" for field_ in schema)


def split_schema(schema: pa.Schema, names: Sequence[str], *, variant_column: str | None = None) -> dict[str, pa.Schema]:
    """Each target's prediction schema (its columns without the suffix) in an output schema of suffixed
    columns; pass-through columns, the targets' variant columns and targets without a column are left out."""
    variants = {suffixed(variant_column, name) for name in names} if variant_column else set()
    fields: dict[str, list[pa.Field]] = {}
    by_length = sorted(names, key=len, reverse=True)  # "p__a__b" is of target "a__b" rather than "b"
    for field_ in schema:
        if field_.name in variants:
            continue
        for name in by_length:
            tail = "__" + name
            if field_.name.endswith(tail) and len(field_.name) > len(tail):
                fields.setdefault(name, []).append(field_.with_name(field_.name[: -len(tail)]))
                break
    return {name: pa.schema(found) for name, found in fields.items()}


class TargetSchemas:
    """Each target's prediction schema, as its first answer shows it (thread-safe), for the null rows of
    the requests it fails entirely.

    Before a target's first answer its schema is read from the output an earlier run wrote (``existing``,
    on resume), else the rows of a request it failed entirely get the first answering target's columns.
    If its first answer then shows other columns, the run fails (:class:`OutputError`) rather than write
    parts that disagree.
    """

    def __init__(
        self,
        names: Sequence[str],
        *,
        existing: Callable[[], pa.Schema | None] | None = None,
        variant_column: str | None = None,
    ) -> None:
        self.names = tuple(names)
        self._existing = existing
        self._variant_column = variant_column
        self._known: dict[str, pa.Schema] = {}
        self._guessed: dict[str, tuple[str, pa.Schema]] = {}
        self._lock = threading.Lock()

    def known(self) -> dict[str, pa.Schema]:
        """The schemas known so far (read from the existing output once, the first time one is missing)."""
        with self._lock:
            if self._existing is not None and len(self._known) < len(self.names):
                schema, self._existing = self._existing(), None
                if schema is not None:
                    for name, found in split_schema(schema, self.names, variant_column=self._variant_column).items():
                        self._known.setdefault(name, found)
            return dict(self._known)

    def learn(self, known: Mapping[str, pa.Schema], learned: Mapping[str, pa.Schema]) -> None:
        """Record one merged request: ``known`` as passed to :func:`merge_targets`, ``learned`` as it returned.

        :raises OutputError: a target's first answer shows other columns than those its null rows were
            written with before it.
        """
        first = next((name for name in self.names if name in learned), None)
        with self._lock:
            for name in self.names:
                if name in learned or name in known or first is None:
                    continue
                self._guessed.setdefault(name, (first, learned[first]))  # its nulls took first's columns
            for name, schema in learned.items():
                if name in self._known:
                    continue
                self._known[name] = schema
                guess = self._guessed.get(name)
                if guess is not None and guess[1] != schema:
                    raise OutputError(
                        f"target {name!r} of compare_targets failed every row of a request before its first answer, "
                        f"so those rows were written with the columns of target {guess[0]!r} ({_columns(guess[1])}); "
                        f"its answers have other columns ({_columns(schema)}), and the parts would disagree. Fix "
                        "what made it fail (its _errors/ rows name it), then rerun with if_exists='overwrite'"
                    )


@dataclass
class _Agreement:
    rows: int = 0
    numeric: bool = True
    sum_abs: float = 0.0
    max_abs: float = 0.0
    equal: int = 0

    def summary(self) -> dict[str, Any]:
        if self.numeric:
            return {
                "rows": self.rows,
                "mean_abs_diff": self.sum_abs / self.rows if self.rows else None,
                "max_abs_diff": self.max_abs if self.rows else None,
            }
        return {"rows": self.rows, "equal_share": self.equal / self.rows if self.rows else None}


def _numeric(type_: pa.DataType) -> bool:
    return bool(pa.types.is_integer(type_) or pa.types.is_floating(type_) or pa.types.is_decimal(type_))


@dataclass
class CompareStats:
    """Per target: rows failed, and agreement with the first target per prediction column (thread-safe).

    Memory stays bounded: a few counters per target and column, however many rows are folded.
    """

    names: tuple[str, ...]
    #: The variant column's name (excluded from agreement), or None.
    variant_column: str | None = None
    failed: dict[str, int] = field(default_factory=dict)
    agreement: dict[str, dict[str, _Agreement]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count_failed(self, targets: Iterable[str]) -> None:
        """One ``_errors/`` row per item: a row one target failed."""
        with self.lock:
            for target in targets:
                self.failed[target] = self.failed.get(target, 0) + 1

    def add_failed(self, target: str, rows: int) -> None:
        with self.lock:
            self.failed[target] = self.failed.get(target, 0) + rows

    def fold(self, predictions: pa.Table) -> None:
        """Add rows of suffixed prediction columns (other columns are ignored) to the agreement counters."""
        first, others = self.names[0], self.names[1:]
        tail = "__" + first
        skip = suffixed(self.variant_column, first) if self.variant_column else None
        for column in predictions.column_names:
            if not column.endswith(tail) or column == skip:
                continue
            base = predictions.column(column)
            plain = column[: -len(tail)]
            for other in others:
                name = suffixed(plain, other)
                if name not in predictions.column_names:
                    continue
                self._fold_pair(other, plain, base, predictions.column(name))

    def _fold_pair(self, other: str, column: str, base: pa.ChunkedArray, values: pa.ChunkedArray) -> None:
        both = pc.and_(pc.is_valid(base), pc.is_valid(values))
        base, values = pc.filter(base, both), pc.filter(values, both)
        rows = len(base)
        if rows == 0:
            return
        numeric = _numeric(base.type) and _numeric(values.type)
        if numeric:
            diff = pc.abs(pc.subtract(pc.cast(base, pa.float64()), pc.cast(values, pa.float64())))
            total = float(pc.sum(diff).as_py() or 0.0)
            largest = float(pc.max(diff).as_py() or 0.0)
            equal = 0
        else:
            total = largest = 0.0
            if base.type != values.type:
                base, values = pc.cast(base, pa.string()), pc.cast(values, pa.string())
            equal = int(pc.sum(pc.cast(pc.equal(base, values), pa.int64())).as_py() or 0)
        with self.lock:
            agreement = self.agreement.setdefault(other, {}).setdefault(column, _Agreement(numeric=numeric))
            if not numeric and agreement.numeric and agreement.rows == 0:
                agreement.numeric = False
            agreement.rows += rows
            agreement.sum_abs += total
            agreement.max_abs = max(agreement.max_abs, largest)
            agreement.equal += equal

    def summary(self, *, rows_in: int, calls: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        """Per target: rows scored and failed, its HTTP calls' latencies, and (but the first) its agreement."""
        out: dict[str, Any] = {}
        with self.lock:
            for index, name in enumerate(self.names):
                failed = self.failed.get(name, 0)
                target_calls = calls.get(name, {})
                entry: dict[str, Any] = {
                    "rows_scored": rows_in - failed,
                    "rows_failed": failed,
                    "http_calls": target_calls.get("http_calls", 0),
                    "latency_p50_ms": target_calls.get("latency_p50_ms"),
                    "latency_p95_ms": target_calls.get("latency_p95_ms"),
                }
                if index:
                    entry["agreement_with"] = self.names[0]
                    entry["agreement"] = {
                        column: value.summary() for column, value in sorted(self.agreement.get(name, {}).items())
                    }
                out[name] = entry
        return out


def fold_stored(
    stats: CompareStats, storage: Storage, *, data_uri: str, error_uri: str | None, passthrough: Sequence[str]
) -> int:
    """Fold rows an earlier run wrote (a committed part or a checkpoint segment, and its errors) into ``stats``.

    Reads the prediction columns one row group at a time (bounded memory) and the errors' ``input_row`` and
    ``target`` columns. Returns the distinct rows any target failed.
    """
    skip = set(passthrough)
    with storage.open_read(ObjectInfo(uri=data_uri, size=0)) as handle:
        parquet = pq.ParquetFile(handle)
        columns = [name for name in parquet.schema_arrow.names if name not in skip]
        if columns:
            for batch in parquet.iter_batches(columns=columns, use_threads=False):
                stats.fold(pa.Table.from_batches([batch]))
    if error_uri is None:
        return 0
    with storage.open_read(ObjectInfo(uri=error_uri, size=0)) as handle:
        errors = pq.ParquetFile(handle).read(columns=[ERROR_ROW_COLUMN, ERROR_TARGET_COLUMN], use_threads=False)
    for target in errors.column(ERROR_TARGET_COLUMN).to_pylist():
        if target is not None:
            stats.add_failed(str(target), 1)
    return len(pc.unique(errors.column(ERROR_ROW_COLUMN)))
