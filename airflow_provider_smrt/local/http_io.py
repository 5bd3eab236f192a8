"""Reading request bodies and writing responses on the local endpoint's HTTP connections.

Bodies are counted in bytes as they are read (Content-Length or chunked transfer encoding), so a limit
holds whatever the client declared; responses carry a request id, and streams are event-stream
frames over chunked transfer encoding.
"""

from __future__ import annotations

import socket
import struct
import uuid
from http.server import BaseHTTPRequestHandler
from typing import Any

import orjson

from airflow_provider_smrt.local import wire
from airflow_provider_smrt.local.models import Prediction
from airflow_provider_smrt.local.state import Endpoint
from airflow_provider_smrt.local.wire import ServiceError

_DRAIN_CHUNK = 1 << 20


class WireHandler(BaseHTTPRequestHandler):
    """The HTTP side of the endpoint's request handler: bodies in, responses and streams out."""

    server: Any

    def _content_length(self) -> int:
        try:
            return max(0, int(self.headers.get("Content-Length") or 0))
        except ValueError:
            return 0

    def _chunked(self) -> bool:
        return "chunked" in (self.headers.get("Transfer-Encoding") or "").lower()

    def _read_body(self, limit: int | None = None) -> tuple[bytes, int]:
        """The body and its size in bytes, counted as read (Content-Length or chunked transfer encoding).

        Past ``limit`` bytes the rest is read and counted but not kept (the body returned is then incomplete).
        """
        kept: list[bytes] = []
        size = 0

        def take(data: bytes) -> None:
            nonlocal size
            size += len(data)
            if limit is None or size <= limit:
                kept.append(data)

        if self._chunked():
            while True:
                line = self.rfile.readline()
                if not line:
                    raise ConnectionError("the client closed the connection inside a chunked body")
                chunk = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if chunk == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                while chunk > 0:
                    data = self.rfile.read(min(chunk, _DRAIN_CHUNK))
                    if not data:
                        raise ConnectionError("the client closed the connection inside a chunk")
                    take(data)
                    chunk -= len(data)
                self.rfile.readline()
        else:
            remaining = self._content_length()
            while remaining > 0:
                data = self.rfile.read(min(remaining, _DRAIN_CHUNK))
                if not data:
                    raise ConnectionError("the client closed the connection inside the body")
                take(data)
                remaining -= len(data)
        return b"".join(kept), size

    def _drain_body(self) -> None:
        self._read_body(limit=0)

    # ---------------------------------------------------------------- responses
    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_error(self, error: ServiceError) -> None:
        self._send(error.status, error.body(), error.headers())

    def _send_json(self, status: int, doc: Any) -> None:
        self._send(status, orjson.dumps(doc), {"Content-Type": "application/json"})

    def _reset(self) -> None:
        """Close the socket without answering (RST), as a broken connection does."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True

    # ---------------------------------------------------------------- invocations

    def _answer_stream(self, endpoint: Endpoint, prediction: Prediction, variant: str) -> None:
        """Event-stream framing over chunked transfer encoding; optionally break off with an exception event."""
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.amazon.eventstream")
        self.send_header("X-Amzn-SageMaker-Content-Type", prediction.content_type)
        self.send_header("x-Amzn-Invoked-Production-Variant", variant)
        if prediction.custom_attributes:
            self.send_header("X-Amzn-SageMaker-Custom-Attributes", prediction.custom_attributes)
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        data = prediction.body
        n_parts = max(1, min(endpoint.stream_parts, len(data)))
        bounds = [len(data) * i // n_parts for i in range(n_parts + 1)]
        fail_after = endpoint.faults.stream_error_after_parts if endpoint.stream_breaks() else None
        for index in range(n_parts):
            if fail_after is not None and index >= fail_after:
                break
            self._write_chunk(wire.payload_part(data[bounds[index] : bounds[index + 1]]))
        if fail_after is not None and fail_after < n_parts:
            kind = endpoint.faults.stream_error_type
            message = "The model stream broke off." if kind == "ModelStreamError" else "Internal stream failure."
            code = "ModelStreamError" if kind == "ModelStreamError" else None
            self._write_chunk(wire.stream_exception(kind, message, error_code=code))
            endpoint.stats.add("stream_errors")
        else:
            endpoint.stats.add("invocations_ok")
            endpoint.stats.add("rows_ok", prediction.rows)
        self.wfile.write(b"0\r\n\r\n")

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()
