"""Tests of airflow_provider_smrt.scoring.batching: request planning under payload and row limits."""

from __future__ import annotations

import math
import pickle
import random
import string

import numpy as np
import pyarrow as pa
import pytest

from airflow_provider_smrt.exceptions import InputDataError, ParameterValidationError, RowTooLargeError
from airflow_provider_smrt.invocation import MAX_PAYLOAD_BYTES
from airflow_provider_smrt.scoring.batching import Request, RequestPlanner
from airflow_provider_smrt.scoring.codecs import CSV, JSON, JSONLINES, PayloadCodec, get_codec


class CountingCodec:
    """Wraps a codec and records every slice it encodes (to check the planner's counters)."""

    def __init__(self, inner: PayloadCodec) -> None:
        self.inner = inner
        self.content_type = inner.content_type
        self.accept = inner.accept
        self.calls: list[int] = []

    def encode(self, features: pa.Table) -> bytes:
        self.calls.append(features.num_rows)
        return self.inner.encode(features)

    def decode(self, body: bytes, *, num_rows: int, content_type: str | None) -> pa.Table:
        return self.inner.decode(body, num_rows=num_rows, content_type=content_type)


def random_table(rng: random.Random, rows: int) -> pa.Table:
    """Rows of uneven size: floats, a string column whose lengths vary a lot, some nulls."""
    nprng = np.random.default_rng(rng.randrange(2**32))
    lengths = [rng.choice((0, 1, 5, 20, 200)) if rng.random() < 0.9 else rng.randrange(500, 3000) for _ in range(rows)]
    text = ["".join(rng.choices(string.ascii_letters + ', "\n', k=n)) if rng.random() > 0.05 else None for n in lengths]
    return pa.table(
        {
            "row": pa.array(range(rows), pa.int64()),  # identifies the row in the bodies
            "x": nprng.normal(size=rows),
            "text": pa.array(text, pa.string()),
        }
    )


def check_requests(requests: list[Request], table: pa.Table, planner: RequestPlanner) -> None:
    """Contiguous, in order, every row exactly once, every body within the limits and equal to its slice."""
    expected_offset = 0
    for request in requests:
        assert request.offset == expected_offset
        assert request.num_rows >= 1
        assert len(request.body) <= planner.max_payload_bytes
        if planner.max_rows_per_request is not None:
            assert request.num_rows <= planner.max_rows_per_request
        assert request.body == planner.codec.encode(table.slice(request.offset, request.num_rows))
        expected_offset += request.num_rows
    assert expected_offset == table.num_rows


@pytest.mark.parametrize("content_type", [CSV, JSON, JSONLINES])
def test_random_sizes_cover_every_row_once_in_order_within_limits(content_type: str) -> None:
    rng = random.Random(20240501)
    codec = get_codec(content_type=content_type)
    for _ in range(60):
        table = random_table(rng, rng.randrange(0, 400))
        limit = rng.choice((4_000, 8_000, 20_000, 100_000, MAX_PAYLOAD_BYTES))
        max_rows = rng.choice((None, 1, 7, 50, 1000))
        planner = RequestPlanner(codec=codec, max_payload_bytes=limit, max_rows_per_request=max_rows)
        # Any single row here is < 4,000 bytes encoded, so every table must plan without error.
        requests = list(planner.split(table))
        check_requests(requests, table, planner)
        assert planner.stats.rows == table.num_rows
        assert planner.stats.requests == len(requests)


def test_csv_bodies_concatenate_to_the_whole_encoding() -> None:
    rng = random.Random(7)
    codec = get_codec()
    for _ in range(30):
        table = random_table(rng, rng.randrange(1, 300))
        planner = RequestPlanner(codec=codec, max_payload_bytes=rng.choice((5_000, 12_000, 50_000)))
        assert b"".join(r.body for r in planner.split(table)) == codec.encode(table)


def test_json_requests_decode_back_to_every_row_id_in_order() -> None:
    rng = random.Random(11)
    codec = get_codec(content_type=JSONLINES)
    table = random_table(rng, 500)
    planner = RequestPlanner(codec=codec, max_payload_bytes=10_000, max_rows_per_request=64)
    seen: list[int] = []
    for request in planner.split(table):
        decoded = get_codec(content_type=JSONLINES, prediction_columns=["row", "x", "text"]).decode(
            request.body, num_rows=request.num_rows, content_type=None
        )
        seen.extend(int(v) for v in decoded.column("row").to_pylist())
    assert seen == list(range(500))


def test_stats_count_every_encode_and_re_encode() -> None:
    rng = random.Random(3)
    counting = CountingCodec(get_codec())
    planner = RequestPlanner(codec=counting, max_payload_bytes=6_000)
    for _ in range(10):
        table = random_table(rng, 300)
        check_requests(list(planner.split(table)), table, planner)
    stats = planner.stats
    assert stats.encodes == len(counting.calls) - stats.requests  # check_requests re-encodes each request once
    assert stats.encoded_rows == sum(counting.calls[: len(counting.calls)]) - stats.rows
    assert stats.encodes == stats.requests + stats.re_encodes + stats.probes
    assert stats.wasted_rows == stats.encoded_rows - stats.rows
    assert stats.re_encodes > 0  # uneven rows overshoot sometimes ...
    assert stats.waste_ratio < 0.5  # ... but the waste stays bounded (the latest-slice estimate alone gave 1.27)
    assert stats.as_dict()["re_encodes"] == stats.re_encodes


def test_uniform_rows_need_no_re_encode_and_pack_close_to_the_limit() -> None:
    table = pa.table({f"x{j}": np.random.default_rng(j).normal(size=20_000) for j in range(20)})
    counting = CountingCodec(get_codec())
    limit = 200_000
    planner = RequestPlanner(codec=counting, max_payload_bytes=limit)
    requests = list(planner.split(table))
    check_requests(requests, table, planner)
    assert planner.stats.re_encodes == 0
    assert planner.stats.probes == 1
    total = sum(len(r.body) for r in requests)
    assert len(requests) <= math.ceil(total / (0.85 * limit)) + 1  # ~90% full, apart from the last one
    assert all(len(r.body) > 0.7 * limit for r in requests[:-1])


def test_estimate_is_remembered_across_calls() -> None:
    counting = CountingCodec(get_codec())
    planner = RequestPlanner(codec=counting, max_payload_bytes=50_000)
    table = pa.table({"x": np.arange(10_000, dtype=np.float64) / 7})
    list(planner.split(table))
    assert planner.bytes_per_row is not None
    probes, encodes = planner.stats.probes, planner.stats.encodes
    requests = list(planner.split(table))
    assert planner.stats.probes == probes == 1  # no second probe
    assert planner.stats.encodes - encodes == len(requests)  # one encode per request


def test_row_limit_alone_gives_full_requests() -> None:
    table = pa.table({"x": np.arange(1000, dtype=np.float64)})
    planner = RequestPlanner(codec=get_codec(), max_rows_per_request=100)
    requests = list(planner.split(table))
    assert [r.num_rows for r in requests] == [100] * 10
    assert [r.offset for r in requests] == list(range(0, 1000, 100))


def test_small_input_is_sent_as_its_probe_without_waste() -> None:
    planner = RequestPlanner(codec=get_codec())
    requests = list(planner.split(pa.record_batch({"x": [1.0, 2.0, 3.0]})))
    assert [(r.offset, r.num_rows, r.body) for r in requests] == [(0, 3, b"1.0\n2.0\n3.0\n")]
    assert planner.stats.encodes == 1 and planner.stats.wasted_rows == 0


def test_empty_input_yields_nothing() -> None:
    planner = RequestPlanner(codec=get_codec())
    assert list(planner.split(pa.table({"x": pa.array([], pa.float64())}))) == []
    assert planner.stats.encodes == 0


def test_every_row_its_own_request_when_each_is_near_the_limit() -> None:
    table = pa.table({"s": ["a" * 900, "b" * 950, "c" * 999, "d" * 10]})
    planner = RequestPlanner(codec=get_codec(), max_payload_bytes=1_000)
    requests = list(planner.split(table))
    check_requests(requests, table, planner)
    assert [r.num_rows for r in requests] == [1, 1, 1, 1]


@pytest.mark.parametrize("position", [0, 37, 99])
def test_a_row_over_the_limit_raises_with_its_offset(position: int) -> None:
    secret = "S3CR3T"
    text = ["short"] * 100
    text[position] = secret * 2_000  # 12,000 bytes
    table = pa.table({"n": list(range(100)), "text": text})
    planner = RequestPlanner(codec=get_codec(), max_payload_bytes=10_000)
    yielded: list[Request] = []
    with pytest.raises(RowTooLargeError) as info:
        for request in planner.split(table):
            yielded.append(request)
    err = info.value
    assert isinstance(err, InputDataError)
    assert err.row_offset == position
    assert err.limit == 10_000 and err.row_bytes > 10_000
    message = str(err)
    assert f"the row encodes to {err.row_bytes:,} bytes" in message
    assert "10,000-byte request limit" in message
    assert "SageMakerInvokeEndpointAsyncOperator" in message
    assert "raise max_payload_bytes" in message  # 12 kB would fit the service limit
    assert secret not in message
    # every row before the offending one was yielded, exactly once and in order
    assert sum(r.num_rows for r in yielded) == position
    assert [r.offset for r in yielded] == list(np.cumsum([0] + [r.num_rows for r in yielded])[:-1])
    clone = pickle.loads(pickle.dumps(err))
    assert (clone.row_offset, clone.row_bytes, str(clone)) == (position, err.row_bytes, message)


def test_a_row_over_the_service_limit_does_not_suggest_raising_the_limit() -> None:
    table = pa.table({"text": ["x" * (MAX_PAYLOAD_BYTES + 10)]})
    with pytest.raises(RowTooLargeError) as info:
        list(RequestPlanner(codec=get_codec()).split(table))
    assert "raise max_payload_bytes" not in str(info.value)
    assert info.value.row_offset == 0


@pytest.mark.parametrize("position", [0, 1, 37, 99])
def test_with_oversize_a_row_over_the_limit_is_its_own_flagged_request(position: int) -> None:
    text = ["short"] * 100
    text[position] = "x" * 12_000
    table = pa.table({"n": list(range(100)), "text": text})
    planner = RequestPlanner(codec=get_codec(), max_payload_bytes=10_000, max_rows_per_request=10, oversize=True)
    requests = list(planner.split(table))
    flagged = [r for r in requests if r.oversize]
    assert [(r.offset, r.num_rows) for r in flagged] == [(position, 1)]
    assert len(flagged[0].body) > 10_000
    assert all(len(r.body) <= 10_000 for r in requests if not r.oversize)
    covered = [i for r in requests for i in range(r.offset, r.offset + r.num_rows)]
    assert covered == list(range(100))  # every row once, in order
    assert "oversize=True" in repr(flagged[0])


def test_request_repr_hides_the_body() -> None:
    request = Request(offset=3, num_rows=2, body=b"secret,1\nsecret,2\n")
    assert repr(request) == "Request(offset=3, num_rows=2, body=<18 bytes>)"
    assert "secret" not in repr(request)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"max_payload_bytes": 0}, "between 1 and 6,291,456"),
        ({"max_payload_bytes": MAX_PAYLOAD_BYTES + 1}, "between 1 and 6,291,456"),
        ({"max_payload_bytes": 1.5}, "must be an integer"),
        ({"max_rows_per_request": 0}, "max_rows_per_request must be a positive integer"),
        ({"max_rows_per_request": True}, "max_rows_per_request must be a positive integer"),
        ({"probe_rows": 0}, "probe_rows"),
        ({"fill_ratio": 0.0}, "fill_ratio"),
    ],
)
def test_parameters_are_validated(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ParameterValidationError, match=fragment):
        RequestPlanner(codec=get_codec(), **kwargs)  # type: ignore[arg-type]
