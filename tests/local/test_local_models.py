"""The models of the local endpoint through boto3: the diabetes demo, sum, and forwarding to a container."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
from botocore.exceptions import ClientError


def _call(client: Any, name: str, body: bytes, content_type: str, accept: str | None = None) -> tuple[bytes, str]:
    kwargs = {"Accept": accept} if accept else {}
    response = client.invoke_endpoint(EndpointName=name, Body=body, ContentType=content_type, **kwargs)
    return response["Body"].read(), response["ContentType"]


def test_diabetes_matches_least_squares(runtime_client: Any) -> None:
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    design = np.column_stack([np.ones(len(data.data)), data.data])
    weights = np.linalg.lstsq(design, data.target, rcond=None)[0]
    rows = data.data[:25]
    expected = design[:25] @ weights
    body = "\n".join(",".join(repr(v) for v in row) for row in rows.tolist()).encode()
    out, content_type = _call(runtime_client, "smrt-demo", body, "text/csv")
    assert content_type == "text/csv"
    np.testing.assert_allclose(np.array(out.split(), dtype=float), expected, rtol=0, atol=1e-6)
    json_body = json.dumps({"instances": rows.tolist()}).encode()
    out, content_type = _call(runtime_client, "smrt-demo", json_body, "application/json")
    assert content_type == "application/json"
    np.testing.assert_allclose(json.loads(out)["predictions"], expected, rtol=0, atol=1e-6)
    # objects: the values, in the dataset's column order
    names = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
    lines = "\n".join(json.dumps(dict(zip(names, row, strict=True))) for row in rows[:3].tolist()).encode()
    out, _ = _call(runtime_client, "smrt-demo", lines, "application/jsonlines")
    np.testing.assert_allclose([json.loads(x) for x in out.splitlines()], expected[:3], rtol=0, atol=1e-6)


def test_sum_csv_with_nulls_booleans_and_quotes(runtime_client: Any, make_endpoint: Any) -> None:
    name = make_endpoint("sum", outputs=["sum", "mean", "max", "count"])
    body = b'1,,true,"2.5"\n-1,4,false,0\n'
    out, _ = _call(runtime_client, name, body, "text/csv")
    rows = [[1, 0, 1, 2.5], [-1, 4, 0, 0]]
    expected = [[sum(r), sum(r) / 4, max(r), 4] for r in rows]
    assert [[float(v) for v in line.split(",")] for line in out.decode().splitlines()] == expected


@pytest.mark.parametrize("accept", ["application/jsonlines", "application/json", "text/csv"])
def test_sum_jsonlines_and_json_inputs(runtime_client: Any, make_endpoint: Any, accept: str) -> None:
    name = make_endpoint("sum", outputs=["sum", "count"])
    rows = [[1, 2, 3], [0.5, None, True], [10, -10, 1]]
    expected = [{"sum": float(sum(v or 0 for v in r)), "count": 3.0} for r in rows]
    for content_type, body in (
        ("application/jsonlines", "\n".join(json.dumps(r) for r in rows).encode()),
        ("application/json", json.dumps({"instances": rows}).encode()),
        ("application/json", json.dumps([{"a": r[0], "b": r[1], "c": r[2]} for r in rows]).encode()),
    ):
        out, out_type = _call(runtime_client, name, body, content_type, accept)
        assert out_type == accept
        if accept == "application/jsonlines":
            got = [json.loads(line) for line in out.splitlines()]
        elif accept == "application/json":
            got = json.loads(out)["predictions"]
        else:
            got = [dict(zip(["sum", "count"], map(float, line.split(b",")), strict=True)) for line in out.splitlines()]
        assert got == expected


def test_sum_single_output_formats(runtime_client: Any) -> None:
    out, _ = _call(runtime_client, "smrt-sum", b"[1, 2]\n[3, 4]\n", "application/jsonlines")
    assert out == b"3.0\n7.0\n"
    out, _ = _call(runtime_client, "smrt-sum", b"[[1, 2], [3, 4]]", "application/json")
    assert json.loads(out) == {"predictions": [3.0, 7.0]}


def test_sum_rejects_non_numeric(runtime_client: Any, make_endpoint: Any) -> None:
    name = make_endpoint("sum")
    with pytest.raises(ClientError) as info:
        _call(runtime_client, name, b"1,abc\n", "text/csv")
    assert info.value.response["Error"]["Code"] == "ModelError"
    assert info.value.response["OriginalStatusCode"] == 400
    assert "not numeric" in info.value.response["OriginalMessage"]


@pytest.mark.parametrize(
    ("body", "content_type", "accept", "rows", "expected"),
    [
        (b"1,2\n3,4\n5,6\n", "text/csv", "text/csv", 3, b"0.0\n0.0\n0.0\n"),
        (b"1,2\n3,4", "text/csv", None, 2, b"0.0\n0.0\n"),  # no final newline
        (b'[1,"x"]\n[3,4]\n', "application/jsonlines", "application/json", 2, b'{"predictions":[0.0,0.0]}'),
        (b'{"instances": [[1], [2], [3], [4]]}', "application/json", None, 4, b'{"predictions":[0.0,0.0,0.0,0.0]}'),
    ],
)
def test_constant_answers_one_value_per_row_without_parsing(
    runtime_client: Any,
    make_endpoint: Any,
    endpoint_stats: Any,
    body: bytes,
    content_type: str,
    accept: str | None,
    rows: int,
    expected: bytes,
) -> None:
    name = make_endpoint("constant")
    out, _ = _call(runtime_client, name, body, content_type, accept)
    assert out == expected
    assert endpoint_stats(name)["rows_ok"] == rows
    with pytest.raises(ClientError) as caught:
        _call(runtime_client, name, b"", "text/csv")
    assert caught.value.response["OriginalStatusCode"] == 400


def test_large_csv_request_is_exact(runtime_client: Any) -> None:
    rng = np.random.default_rng(7)
    values = rng.normal(size=(500, 20))
    body = "\n".join(",".join(repr(v) for v in row) for row in values.tolist()).encode()
    out, _ = _call(runtime_client, "smrt-sum", body, "text/csv")
    np.testing.assert_allclose(np.array(out.split(), dtype=float), values.sum(axis=1), rtol=1e-12)


class _Container(BaseHTTPRequestHandler):
    """A minimal model container: /ping, and /invocations that doubles each number (400 on 'bad')."""

    protocol_version = "HTTP/1.1"
    seen: dict[str, str] = {}

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._reply(200 if self.path == "/ping" else 404, b"", {})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen = {k: v for k, v in self.headers.items()}
        if b"bad" in body:
            self._reply(400, b"container says no", {"Content-Type": "text/plain"})
            return
        doubled = b"\n".join(str(2 * float(x)).encode() for x in body.split())
        headers = {"Content-Type": "text/x-doubled"}
        if self.headers.get("X-Amzn-SageMaker-Custom-Attributes"):
            headers["X-Amzn-SageMaker-Custom-Attributes"] = "from-container"
        self._reply(200, doubled, headers)


@pytest.fixture
def container() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Container)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_forward_to_container(runtime_client: Any, make_endpoint: Any, container: str, endpoint_stats: Any) -> None:
    name = make_endpoint("forward", model_url=container)
    response = runtime_client.invoke_endpoint(
        EndpointName=name, Body=b"1\n2.5\n", ContentType="text/csv", Accept="text/x-doubled", CustomAttributes="abc"
    )
    assert response["Body"].read() == b"2.0\n5.0"
    assert response["ContentType"] == "text/x-doubled"
    assert response["CustomAttributes"] == "from-container"
    assert _Container.seen["X-Amzn-SageMaker-Custom-Attributes"] == "abc"
    assert _Container.seen["Accept"] == "text/x-doubled"
    with pytest.raises(ClientError) as info:
        runtime_client.invoke_endpoint(EndpointName=name, Body=b"bad", ContentType="text/csv")
    assert info.value.response["Error"]["Code"] == "ModelError"
    assert info.value.response["OriginalStatusCode"] == 400
    assert info.value.response["OriginalMessage"] == "container says no"
    assert endpoint_stats(name)["model_errors"] == 1


def test_forward_to_missing_container_is_not_ready(runtime_client: Any, make_endpoint: Any) -> None:
    from airflow_provider_smrt.local.s3server import free_port

    name = make_endpoint("forward", model_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ClientError) as info:
        runtime_client.invoke_endpoint(EndpointName=name, Body=b"1", ContentType="text/csv")
    assert info.value.response["Error"]["Code"] == "ModelNotReadyException"
