"""Unit tests of ``scoring/compare.py``: joining one request's per-target results (``merge_targets``), the
agreement counters (``CompareStats``) and folding what an earlier run stored (``fold_stored``). No Airflow."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_smrt.exceptions import InvocationError, ModelInputError, OutputError
from airflow_provider_smrt.scoring.compare import (
    CompareStats,
    TargetSchemas,
    fold_stored,
    merge_targets,
    split_schema,
)
from airflow_provider_smrt.scoring.sink import ERROR_FIELDS
from airflow_provider_smrt.scoring.storage import Storage
from airflow_provider_smrt.scoring.tasks import Piece

NAMES = ("prod", "shadow")
FLOAT = pa.schema([pa.field("prediction", pa.float64())])
LABEL = pa.schema([pa.field("label", pa.string()), pa.field("score", pa.int64())])


def _err() -> InvocationError:
    return ModelInputError("the model rejected the row", code="ModelError", endpoint_name="e")


def _floats(values: list[float]) -> pa.Table:
    return pa.table({"prediction": pa.array(values, pa.float64())})


def _labels(labels: list[str], scores: list[int]) -> pa.Table:
    return pa.table({"label": pa.array(labels, pa.string()), "score": pa.array(scores, pa.int64())})


# -- merge_targets -----------------------------------------------------------------------------------------


def test_merge_joins_each_targets_columns_suffixed_in_row_order() -> None:
    prod = ([Piece(0, _floats([1.0, 2.0, 3.0, 4.0]), "blue")], [])
    shadow = ([Piece(0, _labels(["a", "b", "c", "d"], [1, 2, 3, 4]), "green")], [])
    pieces, errors, learned = merge_targets(
        num_rows=4, names=NAMES, results=[prod, shadow], schemas={}, variant_column="variant"
    )
    assert errors == []
    assert learned == {"prod": FLOAT, "shadow": LABEL}
    assert len(pieces) == 1 and pieces[0].offset == 0 and pieces[0].variant is None
    table = pieces[0].predictions
    assert table.column_names == [
        "prediction__prod",
        "variant__prod",
        "label__shadow",
        "score__shadow",
        "variant__shadow",
    ]
    assert table.to_pydict() == {
        "prediction__prod": [1.0, 2.0, 3.0, 4.0],
        "variant__prod": ["blue"] * 4,
        "label__shadow": ["a", "b", "c", "d"],
        "score__shadow": [1, 2, 3, 4],
        "variant__shadow": ["green"] * 4,
    }


def test_merge_one_target_failing_some_rows_leaves_nulls_and_tags_its_errors() -> None:
    """Shadow bisected: rows 1 and 3 failed there, answered pieces around them."""
    err = _err()
    prod = ([Piece(0, _floats([1.0, 2.0, 3.0, 4.0]), None)], [])
    shadow = (
        [Piece(0, _labels(["a"], [1]), None), Piece(2, _labels(["c"], [3]), None)],
        [(1, 1, err), (3, 1, err)],
    )
    pieces, errors, _ = merge_targets(num_rows=4, names=NAMES, results=[prod, shadow], schemas={})
    assert errors == [(1, 1, err, "shadow"), (3, 1, err, "shadow")]
    assert len(pieces) == 1  # prod answered every row: one run
    assert pieces[0].predictions.to_pydict() == {
        "prediction__prod": [1.0, 2.0, 3.0, 4.0],
        "label__shadow": ["a", None, "c", None],
        "score__shadow": [1, None, 3, None],
    }


def test_merge_target_failing_a_whole_request_takes_its_schema_from_earlier_requests() -> None:
    """Its null columns are its own columns (as an earlier request showed them), not another target's."""
    prod = ([Piece(0, _floats([1.0, 2.0]), None)], [])
    shadow: tuple[list[Piece], list[tuple[int, int, InvocationError]]] = ([], [(0, 2, _err())])
    pieces, errors, learned = merge_targets(
        num_rows=2, names=NAMES, results=[prod, shadow], schemas={"prod": FLOAT, "shadow": LABEL}
    )
    assert learned == {"prod": FLOAT}
    assert [(offset, count, target) for offset, count, _, target in errors] == [(0, 2, "shadow")]
    table = pieces[0].predictions
    assert table.schema == pa.schema(
        [
            pa.field("prediction__prod", pa.float64()),
            pa.field("label__shadow", pa.string()),
            pa.field("score__shadow", pa.int64()),
        ]
    )
    assert table.column("label__shadow").null_count == 2


def test_merge_target_failing_the_first_request_it_ever_saw_without_a_known_schema() -> None:
    """Nothing shows its columns yet: they are another target's columns, all null (cast later if need be)."""
    prod = ([Piece(0, _floats([1.0, 2.0]), None)], [])
    shadow: tuple[list[Piece], list[tuple[int, int, InvocationError]]] = ([], [(0, 2, _err())])
    pieces, _, learned = merge_targets(num_rows=2, names=NAMES, results=[prod, shadow], schemas={})
    assert "shadow" not in learned  # not learned: a later answer fixes its schema
    assert pieces[0].predictions.to_pydict() == {"prediction__prod": [1.0, 2.0], "prediction__shadow": [None, None]}


def test_merge_rows_every_target_failed_are_left_out_of_the_pieces() -> None:
    err = _err()
    prod = ([Piece(0, _floats([1.0]), None), Piece(3, _floats([4.0]), None)], [(1, 2, err)])
    shadow = ([Piece(0, _floats([10.0]), None), Piece(2, _floats([30.0, 40.0]), None)], [(1, 1, err)])
    pieces, errors, _ = merge_targets(num_rows=4, names=NAMES, results=[prod, shadow], schemas={})
    assert [(offset, count, target) for offset, count, _, target in errors] == [(1, 2, "prod"), (1, 1, "shadow")]
    assert [(piece.offset, piece.predictions.to_pydict()) for piece in pieces] == [
        (0, {"prediction__prod": [1.0], "prediction__shadow": [10.0]}),
        (2, {"prediction__prod": [None, 4.0], "prediction__shadow": [30.0, 40.0]}),
    ]


def test_merge_request_every_target_failed_writes_only_errors() -> None:
    err = _err()
    failed: tuple[list[Piece], list[tuple[int, int, InvocationError]]] = ([], [(0, 3, err)])
    pieces, errors, learned = merge_targets(
        num_rows=3, names=NAMES, results=[failed, failed], schemas={"prod": FLOAT, "shadow": FLOAT}
    )
    assert pieces == [] and learned == {}
    assert [target for *_, target in errors] == ["prod", "shadow"]


# -- TargetSchemas: the columns of a target's null rows ----------------------------------------------------


def test_split_schema_gives_each_target_its_columns() -> None:
    schema = pa.schema(
        [
            pa.field("id", pa.int64()),
            pa.field("prediction__prod", pa.float64()),
            pa.field("variant__prod", pa.string()),
            pa.field("label__a__b", pa.string()),
            pa.field("score__b", pa.int64()),
        ]
    )
    assert split_schema(schema, ["prod", "b", "a__b"], variant_column="variant") == {
        "prod": FLOAT,
        "a__b": pa.schema([pa.field("label", pa.string())]),
        "b": pa.schema([pa.field("score", pa.int64())]),
    }


def test_target_schemas_on_resume_come_from_the_existing_output() -> None:
    reads: list[int] = []

    def existing() -> pa.Schema:
        reads.append(1)
        return pa.schema(
            [pa.field("id", pa.int64()), pa.field("prediction__prod", pa.float64())]
            + [pa.field(f"{f.name}__shadow", f.type) for f in LABEL]
        )

    schemas = TargetSchemas(NAMES, existing=existing)
    assert schemas.known() == {"prod": FLOAT, "shadow": LABEL}
    schemas.known()
    assert reads == [1]  # read once


def test_a_guess_its_first_answer_confirms_is_kept() -> None:
    schemas = TargetSchemas(NAMES)
    schemas.learn({}, {"prod": FLOAT})  # shadow failed the whole request: its nulls took prod's columns
    schemas.learn(schemas.known(), {"prod": FLOAT, "shadow": FLOAT})
    assert schemas.known() == {"prod": FLOAT, "shadow": FLOAT}


def test_a_guess_its_first_answer_contradicts_fails_the_run_naming_the_target() -> None:
    schemas = TargetSchemas(NAMES)
    schemas.learn({}, {"prod": FLOAT})
    with pytest.raises(OutputError, match=r"target 'shadow' .* columns of target 'prod' \(prediction: double\)"):
        schemas.learn(schemas.known(), {"shadow": LABEL})


def test_no_guess_when_the_schema_was_known() -> None:
    schemas = TargetSchemas(NAMES)
    schemas.learn({}, {"prod": FLOAT, "shadow": LABEL})
    schemas.learn(schemas.known(), {"prod": FLOAT})  # shadow failed a request: its own columns were used
    schemas.learn(schemas.known(), {"prod": FLOAT, "shadow": LABEL})
    assert schemas.known() == {"prod": FLOAT, "shadow": LABEL}


# -- CompareStats ------------------------------------------------------------------------------------------


def test_numeric_agreement_mean_and_max_abs_diff_over_rows_both_answered() -> None:
    stats = CompareStats(names=NAMES)
    stats.fold(pa.table({"prediction__prod": [1.0, 2.0, 3.0], "prediction__shadow": [1.5, 2.0, None]}))
    stats.fold(pa.table({"prediction__prod": [None, 10.0], "prediction__shadow": [7.0, 7.0]}))
    stats.count_failed(["shadow"])
    summary = stats.summary(rows_in=5, calls={"prod": {"http_calls": 2, "latency_p50_ms": 3.0}})
    assert summary["prod"] == {
        "rows_scored": 5,
        "rows_failed": 0,
        "http_calls": 2,
        "latency_p50_ms": 3.0,
        "latency_p95_ms": None,
    }
    shadow = summary["shadow"]
    assert shadow["rows_scored"] == 4 and shadow["rows_failed"] == 1 and shadow["http_calls"] == 0
    assert shadow["agreement_with"] == "prod"
    assert shadow["agreement"] == {
        "prediction": {"rows": 3, "mean_abs_diff": pytest.approx((0.5 + 0.0 + 3.0) / 3), "max_abs_diff": 3.0}
    }


def test_integer_and_float_columns_compare_as_numbers() -> None:
    stats = CompareStats(names=NAMES)
    stats.fold(pa.table({"n__prod": pa.array([1, 5], pa.int32()), "n__shadow": pa.array([1.25, 2.0], pa.float64())}))
    assert stats.summary(rows_in=2, calls={})["shadow"]["agreement"]["n"] == {
        "rows": 2,
        "mean_abs_diff": pytest.approx(1.625),
        "max_abs_diff": 3.0,
    }


def test_non_numeric_agreement_is_the_equal_share() -> None:
    stats = CompareStats(names=NAMES)
    stats.fold(pa.table({"label__prod": ["a", "b", "c", None], "label__shadow": ["a", "x", "c", "d"]}))
    stats.fold(pa.table({"label__prod": ["z"], "label__shadow": ["y"]}))
    agreement = stats.summary(rows_in=5, calls={})["shadow"]["agreement"]
    assert agreement == {"label": {"rows": 4, "equal_share": 0.5}}


def test_three_targets_each_compared_with_the_first_variant_column_excluded() -> None:
    stats = CompareStats(names=("a", "b", "c"), variant_column="variant")
    stats.fold(
        pa.table(
            {
                "id": [1, 2],  # not a target's column
                "p__a": [1.0, 2.0],
                "variant__a": ["x", "x"],
                "p__b": [1.0, 4.0],
                "variant__b": ["y", "y"],
                "p__c": [0.0, 2.0],
                "variant__c": ["x", "z"],
            }
        )
    )
    summary = stats.summary(rows_in=2, calls={})
    assert "agreement" not in summary["a"]
    assert summary["b"]["agreement"] == {"p": {"rows": 2, "mean_abs_diff": 1.0, "max_abs_diff": 2.0}}
    assert summary["c"]["agreement"] == {"p": {"rows": 2, "mean_abs_diff": 0.5, "max_abs_diff": 1.0}}


def test_no_rows_both_answered_gives_no_figures() -> None:
    stats = CompareStats(names=NAMES)
    stats.fold(pa.table({"prediction__prod": [1.0, None], "prediction__shadow": [None, 2.0]}))
    stats.add_failed("prod", 1)
    stats.add_failed("shadow", 1)
    summary = stats.summary(rows_in=2, calls={})
    assert summary["shadow"]["agreement"] == {}
    assert summary["prod"]["rows_scored"] == summary["shadow"]["rows_scored"] == 1


# -- fold_stored -------------------------------------------------------------------------------------------


def _error_table(rows: list[tuple[int, str | None]]) -> pa.Table:
    """``_errors/`` rows: the pass-through ``id`` and every error field (``input_row``, ``target`` set)."""
    columns: dict[str, pa.Array] = {"id": pa.array([row for row, _ in rows], pa.int64())}
    for field in ERROR_FIELDS:
        if field.name == "input_row":
            values: list[object] = [row for row, _ in rows]
        elif field.name == "target":
            values = [target for _, target in rows]
        else:
            values = [None] * len(rows)
        columns[field.name] = pa.array(values, type=field.type)
    return pa.table(columns)


def test_fold_stored_counts_a_part_and_its_errors(tmp_path: Path) -> None:
    data = pa.table(
        {
            "id": pa.array([0, 1, 2, 3], pa.int64()),
            "prediction__prod": [1.0, 2.0, 3.0, 4.0],
            "prediction__shadow": [1.0, None, 5.0, None],
        }
    )
    data_uri, error_uri = str(tmp_path / "part.parquet"), str(tmp_path / "errors.parquet")
    pq.write_table(data, data_uri, row_group_size=2)  # read a row group at a time
    # rows 1 and 3 failed at shadow, row 5 at both (so it is in no data row)
    pq.write_table(_error_table([(1, "shadow"), (3, "shadow"), (5, "prod"), (5, "shadow")]), error_uri)
    stats = CompareStats(names=NAMES)
    failed = fold_stored(stats, Storage(), data_uri=data_uri, error_uri=error_uri, passthrough=["id"])
    assert failed == 3  # distinct rows any target failed
    summary = stats.summary(rows_in=6, calls={})
    assert (summary["prod"]["rows_failed"], summary["shadow"]["rows_failed"]) == (1, 3)
    assert summary["shadow"]["agreement"] == {"prediction": {"rows": 2, "mean_abs_diff": 1.0, "max_abs_diff": 2.0}}


def test_fold_stored_without_errors_and_without_prediction_columns(tmp_path: Path) -> None:
    stats = CompareStats(names=NAMES)
    data_uri = str(tmp_path / "part.parquet")
    pq.write_table(pa.table({"id": pa.array([], pa.int64())}), data_uri)  # every row failed everywhere
    error_uri = str(tmp_path / "errors.parquet")
    pq.write_table(_error_table([(0, "prod"), (0, "shadow")]), error_uri)
    assert fold_stored(stats, Storage(), data_uri=data_uri, error_uri=error_uri, passthrough=["id"]) == 1
    assert fold_stored(stats, Storage(), data_uri=data_uri, error_uri=None, passthrough=["id"]) == 0
    assert stats.summary(rows_in=1, calls={})["shadow"] == {
        "rows_scored": 0,
        "rows_failed": 1,
        "http_calls": 0,
        "latency_p50_ms": None,
        "latency_p95_ms": None,
        "agreement_with": "prod",
        "agreement": {},
    }
