"""A fault-injecting HTTP proxy that sits between the operator and a local server (moto or the endpoint).

It forwards every request unchanged and records it; on demand it

- fails S3 writes (PutObject, UploadPart, CreateMultipartUpload, CompleteMultipartUpload) after ``N`` of them
  with ``403 AccessDenied``, as a bucket policy that starts denying writes would;
- stalls the first S3 write (PUT) whose path matches a pattern until released, then drops it (answers
  ``503 SlowDown`` without forwarding it), so a test can kill the writer while that write is in flight;
- shortens the lifetime of credentials issued by STS ``AssumeRole`` (it rewrites ``Expiration`` in the
  response) and then rejects, as AWS does, every request signed with an access key past its expiry
  (``ExpiredToken`` for S3, ``ExpiredTokenException`` for JSON services).
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_CREDENTIAL = re.compile(r"Credential=([A-Z0-9]+)/")
_EXPIRATION = re.compile(rb"<Expiration>[^<]*</Expiration>")
_ACCESS_KEY = re.compile(rb"<AccessKeyId>([^<]+)</AccessKeyId>")
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


@dataclass(frozen=True)
class Recorded:
    """One request seen by the proxy."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    access_key: str | None
    status: int
    at: float
    body_size: int


@dataclass
class ProxyState:
    """What the proxy does; change the attributes while it runs (guarded by ``lock``)."""

    fail_writes_after: int | None = None
    #: stall the next PUT whose path matches (then forget the pattern); ``stalled`` is set meanwhile
    stall_write_matching: re.Pattern[str] | None = None
    stalled: threading.Event = field(default_factory=threading.Event)
    stalled_path: str | None = None
    release: threading.Event = field(default_factory=threading.Event)
    writes: int = 0
    writes_denied: int = 0
    credential_lifetime: float | None = None
    issued: dict[str, float] = field(default_factory=dict)  # access key -> expiry (epoch seconds)
    assume_role_calls: int = 0
    expired_rejections: int = 0
    records: list[Recorded] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def is_s3_write(method: str, query: dict[str, list[str]]) -> bool:
    """PutObject / UploadPart (PUT), CreateMultipartUpload (POST ?uploads), CompleteMultipartUpload (POST ?uploadId)."""
    return method == "PUT" or (method == "POST" and ("uploads" in query or "uploadId" in query))


class FaultProxy:
    """A reverse proxy to ``target`` (``http://host:port``) on a free loopback port.

    :param target: the server to forward to.
    :param error_style: ``s3`` (XML errors) or ``json`` (``x-amzn-ErrorType`` + JSON body).
    """

    def __init__(self, target: str, *, error_style: str = "s3") -> None:
        parsed = urllib.parse.urlsplit(target)
        self.target_host = parsed.hostname or "127.0.0.1"
        self.target_port = parsed.port or 80
        self.error_style = error_style
        self.state = ProxyState()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                proxy._handle(self)

            do_PUT = do_POST = do_HEAD = do_DELETE = do_GET

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.handle_error = lambda request, address: None  # type: ignore[method-assign]
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- request handling ------------------------------------------------------------------------

    def _read_body(self, handler: BaseHTTPRequestHandler) -> bytes:
        if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(handler.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(handler.rfile.read(size))
                handler.rfile.readline()
            return b"".join(chunks)
        length = int(handler.headers.get("Content-Length") or 0)
        return handler.rfile.read(length) if length else b""

    def _error(self, handler: BaseHTTPRequestHandler, status: int, code: str, message: str) -> None:
        if self.error_style == "s3":
            body = (
                f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message>'
                "<RequestId>proxy</RequestId></Error>"
            ).encode()
            headers = {"Content-Type": "application/xml"}
        else:
            body = json.dumps({"message": message}).encode()
            headers = {"Content-Type": "application/json", "x-amzn-ErrorType": f"{code}:http://internal.amazon.com/"}
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(0 if handler.command == "HEAD" else len(body)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = self._read_body(handler)
        split = urllib.parse.urlsplit(handler.path)
        query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
        headers = {name: value for name, value in handler.headers.items()}
        match = _CREDENTIAL.search(handler.headers.get("Authorization", ""))
        access_key = match.group(1) if match else None
        is_assume_role = handler.command == "POST" and b"Action=AssumeRole" in body
        state = self.state
        status = 0
        try:
            with state.lock:
                stall = state.stall_write_matching
                if stall is not None and handler.command == "PUT" and stall.search(split.path):
                    state.stall_write_matching = None
                    state.stalled_path = split.path
                else:
                    stall = None
            if stall is not None:
                state.stalled.set()
                state.release.wait(timeout=300)
                status = 503
                self._error(handler, 503, "SlowDown", "Please reduce your request rate.")
                return
            with state.lock:
                expiry = state.issued.get(access_key or "")
                if expiry is not None and time.time() > expiry and not is_assume_role:
                    state.expired_rejections += 1
                    status = 400
                elif is_s3_write(handler.command, query) and self.error_style == "s3":
                    state.writes += 1
                    if state.fail_writes_after is not None and state.writes > state.fail_writes_after:
                        state.writes_denied += 1
                        status = 403
            if status == 400:
                if self.error_style == "s3":
                    self._error(handler, 400, "ExpiredToken", "The provided token has expired.")
                else:
                    self._error(
                        handler, 403, "ExpiredTokenException", "The security token included in the request is expired"
                    )
                return
            if status == 403:
                self._error(handler, 403, "AccessDenied", "Access Denied")
                return
            status = self._forward(handler, body, is_assume_role)
        finally:
            with state.lock:
                state.records.append(
                    Recorded(
                        method=handler.command,
                        path=split.path,
                        query=query,
                        headers=headers,
                        access_key=access_key,
                        status=status,
                        at=time.time(),
                        body_size=len(body),
                    )
                )

    def _forward(self, handler: BaseHTTPRequestHandler, body: bytes, is_assume_role: bool) -> int:
        conn = http.client.HTTPConnection(self.target_host, self.target_port, timeout=120)
        try:
            out_headers = {k: v for k, v in handler.headers.items() if k.lower() not in _HOP_HEADERS}
            out_headers["Content-Length"] = str(len(body))
            conn.request(handler.command, handler.path, body=body, headers=out_headers)
            response = conn.getresponse()
            data = response.read()
            if is_assume_role and response.status == 200:
                data = self._shorten_credentials(data)
            handler.send_response(response.status)
            for name, value in response.getheaders():
                if name.lower() in _HOP_HEADERS or name.lower() == "content-length":
                    continue
                handler.send_header(name, value)
            length = response.getheader("Content-Length") if handler.command == "HEAD" else str(len(data))
            handler.send_header("Content-Length", length or "0")
            handler.end_headers()
            if handler.command != "HEAD":
                handler.wfile.write(data)
            return response.status
        finally:
            conn.close()

    def _shorten_credentials(self, data: bytes) -> bytes:
        state = self.state
        with state.lock:
            state.assume_role_calls += 1
            lifetime = state.credential_lifetime
            key = _ACCESS_KEY.search(data)
            if lifetime is None or key is None:
                return data
            expiry = time.time() + lifetime
            state.issued[key.group(1).decode()] = expiry
        stamp = datetime.fromtimestamp(expiry, tz=timezone.utc) + timedelta(0)
        text = stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode()
        return _EXPIRATION.sub(b"<Expiration>" + text + b"</Expiration>", data)
