"""The hook's lean transport against the local endpoint, beside the botocore client path it must match."""

from __future__ import annotations

import datetime
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import botocore.auth
import pytest
from botocore.config import Config
from botocore.credentials import RefreshableCredentials
from botocore.exceptions import ClientError

from airflow_provider_smrt.exceptions import (
    ConfigurationError,
    InvocationError,
    ModelInputError,
    ModelNotReadyError,
    ModelServerError,
    ParameterValidationError,
    PayloadTooLargeError,
    ServiceError,
    ThrottlingError,
    TransportError,
)
from airflow_provider_smrt.hooks.sagemaker_runtime import SageMakerRuntimeHook
from airflow_provider_smrt.hooks.transport import LeanTransport, why_not_lean
from airflow_provider_smrt.invocation import InvokeEndpointResult

TRANSPORTS = ["auto", "botocore"]
CHOSEN = "SageMaker Runtime transport:"


def make_hook(transport: str = "auto", aws_conn_id: str = "aws_default", **kwargs: Any) -> SageMakerRuntimeHook:
    return SageMakerRuntimeHook(aws_conn_id=aws_conn_id, read_timeout=2, transport=transport, **kwargs)  # type: ignore[arg-type]


def chosen_paths(capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The hook's "which transport" log lines so far (Airflow's task logging writes them to stdout)."""
    lines = [line[line.index(CHOSEN) :] for line in capsys.readouterr().out.splitlines() if CHOSEN in line]
    return [line.split(" [airflow")[0].strip() for line in lines]


def without_request_id(err: InvocationError) -> str:
    return str(err).replace(err.request_id or "-", "<id>")


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """An HTTP server that records each request (path and headers) and answers like a model: 200 ``ok``."""
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen.append({"path": self.path, "headers": dict(self.headers.items()), "body": body})
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()


def connection_to(monkeypatch: pytest.MonkeyPatch, local_stack: Any, conn_id: str, endpoint_url: str) -> str:
    """The stack's Airflow AWS connection with ``service_config`` sending SageMaker Runtime to ``endpoint_url``."""
    conn = json.loads(local_stack.airflow_conn)
    conn["extra"]["service_config"]["sagemaker-runtime"] = {"endpoint_url": endpoint_url}
    conn["extra"]["region_name"] = "eu-west-3"
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
    return conn_id


# -- the same answers on both paths ---------------------------------------------------------------


def test_lean_path_returns_what_the_botocore_path_returns(
    make_endpoint: Any, endpoint_stats: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint = make_endpoint("sum", variants={"blue": 1.0, "green": 1.0}, outputs=["sum", "mean"])
    body = b"".join(f"{i},{2 * i}\n".encode() for i in range(500))
    results: dict[str, InvokeEndpointResult] = {}
    for transport in TRANSPORTS:
        invoke = make_hook(transport).make_invoker(
            endpoint,
            content_type="text/csv",
            accept="application/jsonlines",
            custom_attributes="trace=abc",
            target_variant="green",
        )
        results[transport] = invoke(body)
    lean, classic = results["auto"], results["botocore"]
    assert lean.body == classic.body and lean.body.count(b"\n") == 500
    assert (lean.content_type, lean.invoked_production_variant, lean.custom_attributes) == (
        "application/jsonlines",
        "green",
        "trace=abc",
    )
    assert (lean.content_type, lean.invoked_production_variant, lean.custom_attributes) == (
        classic.content_type,
        classic.invoked_production_variant,
        classic.custom_attributes,
    )
    assert endpoint_stats(endpoint)["invocations_ok"] == 2
    paths = chosen_paths(capsys)
    assert paths[0].startswith(f"{CHOSEN} lean") and paths[1] == f'{CHOSEN} botocore client (transport="botocore")'


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_each_call_sends_its_own_inference_id_signed(transport: str, make_endpoint: Any, endpoint_stats: Any) -> None:
    """The local endpoint checks the SigV4 signature, so a header added after signing would be refused."""
    endpoint = make_endpoint("sum")
    invoke = make_hook(transport).make_invoker(endpoint, content_type="text/csv")
    assert invoke(b"1,2\n", inference_id="run-1-a").body == b"3.0\n"
    assert invoke(b"1,2\n").body == b"3.0\n"  # no id: none sent
    assert invoke(b"1,2\n", inference_id="run-1-b").body == b"3.0\n"
    stats = endpoint_stats(endpoint)
    assert stats["inference_ids"] == ["run-1-a", "run-1-b"] and stats["invocations_ok"] == 3
    with pytest.raises(ParameterValidationError, match="inference_id"):
        invoke(b"1,2\n", inference_id=" leading space")
    assert endpoint_stats(endpoint)["requests"] == 3  # refused before sending


def test_lean_path_sends_the_headers_and_path_botocore_sends(
    recorder: tuple[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch, local_stack: Any
) -> None:
    url, seen = recorder
    conn_id = connection_to(monkeypatch, local_stack, "recorded_aws", url)
    params = {
        "content_type": "text/csv",
        "accept": "text/csv",
        "custom_attributes": "c=1",
        "target_model": "m.tar.gz",
        "target_variant": "v1",
        "target_container_hostname": "h1",
        "inference_id": "id-1",
        "enable_explanations": "`true`",
        "inference_component_name": "ic",
        "session_id": "s-1",
    }
    name = "name-with-dashes-9"
    for transport in TRANSPORTS:
        assert make_hook(transport, conn_id).make_invoker(name, **params)(b"1,2\n").body == b"ok"
    lean, classic = seen
    assert lean["path"] == classic["path"] == f"/endpoints/{name}/invocations"
    assert lean["body"] == classic["body"] == b"1,2\n"
    varying = {"Authorization", "X-Amz-Date", "amz-sdk-invocation-id", "User-Agent"}
    assert {k: v for k, v in lean["headers"].items() if k not in varying} == {
        k: v for k, v in classic["headers"].items() if k not in varying
    }
    assert lean["headers"]["X-Amzn-SageMaker-Inference-Component"] == "ic"
    for request in seen:  # service_config's endpoint, the connection's region, SageMaker's signing name
        assert "/eu-west-3/sagemaker/aws4_request" in request["headers"]["Authorization"]


def test_lean_signature_is_botocores(monkeypatch: pytest.MonkeyPatch, make_endpoint: Any) -> None:
    """Same time, same invocation id: the lean path's Authorization is the one botocore's client sends."""
    endpoint = make_endpoint("sum")
    instant = datetime.datetime(2026, 12, 1, 12, 30, 45)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **k: instant)
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID(int=42))
    client = make_hook().conn
    sent: list[Any] = []
    client.meta.events.register(
        "before-send.sagemaker-runtime.InvokeEndpoint", lambda request, **_: sent.append(request)
    )
    body = b"1,2\n3,4\n"
    client.invoke_endpoint(EndpointName=endpoint, Body=body, ContentType="text/csv", CustomAttributes="a=b c")
    (botocore_request,) = sent
    transport = LeanTransport(client)
    call = transport.prepare(
        "InvokeEndpoint", {"EndpointName": endpoint, "ContentType": "text/csv", "CustomAttributes": "a=b c"}
    )
    lean_request = transport.signed_request(call, body)
    assert lean_request.url == botocore_request.url
    botocore_headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in botocore_request.headers.items()}
    assert lean_request.headers["X-Amz-Date"] == botocore_headers["X-Amz-Date"] == "20261201T123045Z"
    assert lean_request.headers["Authorization"] == botocore_headers["Authorization"]
    assert lean_request.headers["amz-sdk-invocation-id"] == botocore_headers["amz-sdk-invocation-id"]
    assert "x-amzn-sagemaker-custom-attributes" in lean_request.headers["Authorization"]


def test_the_body_is_hashed_once_per_signed_request(monkeypatch: pytest.MonkeyPatch, make_endpoint: Any) -> None:
    """SigV4 signs the payload's SHA-256: one hash of the body per request, the signer's own."""
    hashed: list[int] = []
    real_sha256 = botocore.auth.sha256

    def counting_sha256(data: bytes = b"") -> Any:
        hashed.append(len(data))
        return real_sha256(data)

    monkeypatch.setattr(botocore.auth, "sha256", counting_sha256)
    client = make_hook().conn
    transport = LeanTransport(client)
    call = transport.prepare("InvokeEndpoint", {"EndpointName": make_endpoint("sum"), "ContentType": "text/csv"})
    body = b"1,2\n" * 1000
    for _ in range(3):
        assert transport.send(call, body)["Body"].count(b"\n") == 1000
    assert hashed.count(len(body)) == 3  # the other hashes are the canonical requests' (short strings)


# -- errors classified the same on both paths -----------------------------------------------------


def _error(transport: str, endpoint: str, body: bytes = b"1,2\n") -> InvocationError:
    invoke = make_hook(transport).make_invoker(endpoint, content_type="text/csv")
    with pytest.raises(InvocationError) as info:
        invoke(body)
    return info.value


@pytest.mark.parametrize(
    ("faults", "cls"),
    [
        ({"throttle_rate": 1.0}, ThrottlingError),
        ({"error_5xx_rate": 1.0, "error_5xx_code": "ServiceUnavailable"}, ServiceError),
        ({"error_5xx_rate": 1.0, "error_5xx_code": "InternalDependencyException"}, ServiceError),
        ({"model_not_ready_seconds": 600}, ModelNotReadyError),
        ({"poison_value": 2}, ModelInputError),
        ({"reset_rate": 1.0}, TransportError),
    ],
)
def test_errors_are_classified_the_same_on_both_paths(make_endpoint: Any, faults: dict, cls: type) -> None:
    endpoint = make_endpoint("sum", faults=faults)
    lean, classic = (_error(transport, endpoint) for transport in TRANSPORTS)
    assert type(lean) is type(classic) is cls
    for attribute in ("code", "retryable", "throttled", "http_status", "endpoint_name"):
        assert getattr(lean, attribute) == getattr(classic, attribute), attribute
    assert without_request_id(lean) == without_request_id(classic)
    assert type(lean.__cause__).__name__ == type(classic.__cause__).__name__  # each client has its own classes
    if isinstance(lean.__cause__, ClientError):
        assert isinstance(classic.__cause__, ClientError)
        assert lean.__cause__.response["Error"] == classic.__cause__.response["Error"]
    if cls is ModelInputError:
        assert lean.original_status_code == classic.original_status_code == 400  # type: ignore[attr-defined]
        assert lean.log_stream_arn == classic.log_stream_arn  # type: ignore[attr-defined]


def test_model_server_validation_and_timeout_errors_match(make_endpoint: Any, failing_container: str) -> None:
    cases = [
        (make_endpoint("forward", model_url=failing_container), b"1,2\n", ModelServerError),
        ("no-such-endpoint", b"1,2\n", ConfigurationError),
        (make_endpoint("sum", max_payload_bytes=1_000), b"1,2\n" * 500, PayloadTooLargeError),
        (make_endpoint("sum", faults={"stall_rate": 1.0, "stall_seconds": 60}), b"1,2\n", TransportError),
    ]
    for endpoint, body, cls in cases:
        lean, classic = (_error(transport, endpoint, body) for transport in TRANSPORTS)
        assert type(lean) is type(classic) is cls
        assert (lean.code, lean.http_status, lean.retryable) == (classic.code, classic.http_status, classic.retryable)
        assert without_request_id(lean) == without_request_id(classic)
    assert lean.code == "ReadTimeoutError"  # the stall, past the hook's read timeout


# -- credentials, endpoint and the choice of path -------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_refreshable_credentials_are_refreshed_and_the_new_key_used(
    transport: str, recorder: tuple[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch, local_stack: Any
) -> None:
    url, seen = recorder
    conn_id = connection_to(monkeypatch, local_stack, "refreshing_aws", url)
    refreshes: list[str] = []

    def refresh() -> dict[str, str]:
        key = f"ASIAREFRESH{len(refreshes):04d}"
        refreshes.append(key)
        # Expires within botocore's mandatory refresh window: every use refreshes, as expiring credentials do.
        expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=5)
        return {"access_key": key, "secret_key": "s", "token": f"token-{key}", "expiry_time": expiry.isoformat()}

    credentials = RefreshableCredentials.create_from_metadata(refresh(), refresh_using=refresh, method="test")

    class Hook(SageMakerRuntimeHook):
        def get_client_type(self, *args: Any, **kwargs: Any) -> Any:
            client = super().get_client_type(*args, **kwargs)
            client._request_signer._credentials = credentials  # what an assume-role session gives its clients
            return client

    invoke = Hook(aws_conn_id=conn_id, transport=transport).make_invoker("e", content_type="text/csv")  # type: ignore[arg-type]
    for _ in range(3):
        invoke(b"1\n")
    assert len(refreshes) >= 4  # the first, then at least one per request
    keys = [request["headers"]["Authorization"].split("Credential=")[1].split("/")[0] for request in seen]
    tokens = [request["headers"]["X-Amz-Security-Token"] for request in seen]
    assert len(set(keys)) == 3 and set(keys) <= set(refreshes[1:])
    assert tokens == [f"token-{key}" for key in keys]


def test_service_config_endpoint_is_where_the_lean_path_sends(
    recorder: tuple[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch, local_stack: Any, endpoint_stats: Any
) -> None:
    url, seen = recorder
    conn_id = connection_to(monkeypatch, local_stack, "elsewhere_aws", url)
    hook = make_hook("auto", conn_id)
    assert hook.make_invoker("e")(b"x").body == b"ok"
    assert len(seen) == 1 and seen[0]["path"] == "/endpoints/e/invocations"


def test_a_proxy_or_an_extra_event_handler_keeps_the_botocore_path(
    local_stack: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    hook = make_hook(config=Config(proxies={"http": "http://127.0.0.1:9"}))
    hook.make_invoker("e", content_type="text/csv")
    assert chosen_paths(capsys) == [f"{CHOSEN} botocore client (a proxy is configured)"]

    client = make_hook().conn
    assert why_not_lean(client) is None
    client.meta.events.register("before-send.sagemaker-runtime", lambda **_: None)
    reason = why_not_lean(client)
    assert reason is not None and reason.startswith("event handlers registered on the client")


def test_transport_botocore_forces_the_client_path(
    make_endpoint: Any, endpoint_stats: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint = make_endpoint("sum")
    hook = make_hook("botocore")
    sent: list[Any] = []
    invoke = hook.make_invoker(endpoint, content_type="text/csv")
    assert hook.lean_transport(hook.conn) is None
    hook.conn.meta.events.register("before-send.sagemaker-runtime", lambda request, **_: sent.append(request))
    hook.invoke_endpoint_async(endpoint, input_location="s3://smrt-local/in.csv")
    assert len(sent) == 1  # the async call went through the botocore client
    assert float(invoke(b"1,2\n").body) == 3.0
    assert all(message.endswith('(transport="botocore")') for message in chosen_paths(capsys))
    with pytest.raises(ValueError, match="transport='fast'"):
        make_hook("fast")


def test_async_invocation_on_the_lean_path(
    make_endpoint: Any, s3_client: Any, s3_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint = make_endpoint("sum")
    bucket, key = s3_prefix[5:].split("/", 1)
    s3_client.put_object(Bucket=bucket, Key=key + "in.csv", Body=b"1,2\n")
    results = [
        make_hook(transport).invoke_endpoint_async(
            endpoint, input_location=f"{s3_prefix}in.csv", content_type="text/csv", inference_id=f"inf-{transport}"
        )
        for transport in TRANSPORTS
    ]
    assert chosen_paths(capsys)[0].startswith(f"{CHOSEN} lean")
    assert [r.inference_id for r in results] == ["inf-auto", "inf-botocore"]
    assert all(r.output_location.startswith("s3://") for r in results)
    with pytest.raises(ConfigurationError, match="Accept"):
        make_hook("auto").invoke_endpoint_async(endpoint, input_location=f"{s3_prefix}in.csv", accept=5)  # type: ignore[arg-type]
