"""Decoding and encoding of the local models' payloads (no server)."""

from __future__ import annotations

import numpy as np
import pytest

from airflow_provider_smrt.local import tabular
from airflow_provider_smrt.local.models import DiabetesModel, ModelFailure, SumModel


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"1,2,3\n4,5,6\n", [[1, 2, 3], [4, 5, 6]]),
        (b"1,2\r\n3,4\r\n", [[1, 2], [3, 4]]),
        (b'1,"2",,true\n3,4,5,false\n', [[1, 2, np.nan, 1], [3, 4, 5, 0]]),
        (b".5,1e3\n-0,7.\n", [[0.5, 1000], [0, 7]]),
    ],
)
def test_decode_csv(body: bytes, expected: list[list[float]]) -> None:
    np.testing.assert_array_equal(tabular.decode(body, tabular.CSV), np.array(expected, dtype=float))


@pytest.mark.parametrize("body", [b"1,2\n3\n4,5,6\n", b"1,abc\n", b""])
def test_decode_csv_rejects(body: bytes) -> None:
    with pytest.raises(tabular.PayloadError):
        tabular.decode(body, tabular.CSV)


def test_decode_json_variants() -> None:
    expected = np.array([[1, np.nan, 1], [2, 3, 0]])
    for content_type, body in (
        (tabular.JSONLINES, b'[1, null, true]\n\n{"a": 2, "b": "3", "c": false}\n'),
        (tabular.JSON, b'{"instances": [[1, null, true], [2, 3, false]]}'),
        (tabular.JSON, b'[[1, null, true], {"x": 2, "y": 3, "z": false}]'),
    ):
        np.testing.assert_array_equal(tabular.decode(body, content_type), expected)


def test_media_type() -> None:
    assert tabular.media_type("text/csv; charset=utf-8", default="x") == "text/csv"
    assert tabular.media_type("*/*", default="application/json") == "application/json"
    assert tabular.media_type(None, default="text/csv") == "text/csv"


def test_encode_formats() -> None:
    values = np.array([[1.5, 2.0], [3.0, 4.0]])
    assert tabular.encode(values, ["sum", "mean"], tabular.CSV) == b"1.5,2.0\n3.0,4.0\n"
    assert tabular.encode(values[:, :1], ["sum"], tabular.JSONLINES) == b"1.5\n3.0\n"
    assert tabular.encode(values, ["sum", "mean"], tabular.JSON) == (
        b'{"predictions":[{"sum":1.5,"mean":2.0},{"sum":3.0,"mean":4.0}]}'
    )


def test_sum_model_outputs_and_validation() -> None:
    model = SumModel(outputs=["max", "count", "mean"])
    prediction = model.predict(b"1,,5\n-2,-3,-1\n", "text/csv", "text/csv")
    assert prediction.body == b"5.0,3.0,2.0\n-1.0,3.0,-2.0\n"
    assert prediction.rows == 2
    with pytest.raises(ValueError, match="outputs"):
        SumModel(outputs=["median"])
    with pytest.raises(ModelFailure) as info:
        model.predict(b"1\n", "text/csv", "image/png")
    assert info.value.status == 406


def test_diabetes_model_feature_count() -> None:
    with pytest.raises(ModelFailure) as info:
        DiabetesModel().predict(b"1,2,3,4,5,6,7,8,9\n", "text/csv", None)
    assert info.value.status == 400
    assert "expected 10" in info.value.message and "got 9" in info.value.message
