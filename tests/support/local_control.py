"""Helpers for the local stack's control API (``/_local/``), shared by the tests and the benchmarks.

Every function takes the runtime endpoint URL (``SMRT_RUNTIME_ENDPOINT_URL``) first.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any


class ControlError(RuntimeError):
    """The control API answered with an error."""


def control_request(runtime_url: str, method: str, path: str, body: Any = None, *, timeout: float = 30.0) -> Any:
    """Call ``/_local/{path}`` with a JSON body; return the decoded JSON answer."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"{runtime_url.rstrip('/')}/_local/{path.lstrip('/')}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        raise ControlError(f"{method} /_local/{path}: {err.code} {err.read().decode(errors='replace')}") from err


def new_endpoint_name(prefix: str = "t") -> str:
    """A unique endpoint name such as ``t-1a2b3c4d``."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def put_endpoint(
    runtime_url: str,
    name: str | None = None,
    *,
    model: str = "sum",
    faults: dict[str, Any] | None = None,
    outputs: list[str] | None = None,
    variants: dict[str, float] | None = None,
    max_payload_bytes: int | None = None,
    **extra: Any,
) -> str:
    """Create (or replace, with fresh stats) an endpoint; return its name (a new unique one if none given)."""
    name = name or new_endpoint_name()
    spec: dict[str, Any] = {"model": model, **extra}
    for key, value in (
        ("faults", faults),
        ("outputs", outputs),
        ("variants", variants),
        ("max_payload_bytes", max_payload_bytes),
    ):
        if value is not None:
            spec[key] = value
    control_request(runtime_url, "PUT", f"endpoints/{name}", spec)
    return name


def patch_faults(runtime_url: str, name: str, faults: dict[str, Any]) -> dict[str, Any]:
    """Merge ``faults`` into the endpoint's fault settings; return all of them."""
    return control_request(runtime_url, "PATCH", f"endpoints/{name}/faults", faults)


def endpoint_stats(runtime_url: str, name: str) -> dict[str, Any]:
    """The endpoint's counters."""
    return control_request(runtime_url, "GET", f"endpoints/{name}/stats")


def wait_for_stats(
    runtime_url: str, name: str, condition: Callable[[dict[str, Any]], bool], *, timeout: float = 120.0
) -> dict[str, Any]:
    """Poll the endpoint's counters until ``condition`` holds; return them. ``timeout`` is generous: it only
    ends a test whose product is broken, never a slow machine's."""
    deadline = time.monotonic() + timeout
    while True:
        stats = endpoint_stats(runtime_url, name)
        if condition(stats):
            return stats
        assert time.monotonic() < deadline, f"the endpoint's stats never met the condition: {stats}"
        time.sleep(0.02)


def wait_until_idle(runtime_url: str, name: str, *, quiet: float = 0.6) -> dict[str, Any]:
    """The endpoint's counters once no real-time request is in flight (``in_flight`` 0) and none arrived
    for ``quiet`` seconds (a killed client's last bytes may still be on their way to the server)."""
    last = wait_for_stats(runtime_url, name, lambda s: s["in_flight"] == 0)
    while True:
        time.sleep(quiet)
        now = wait_for_stats(runtime_url, name, lambda s: s["in_flight"] == 0)
        if now["requests"] == last["requests"] and now["rows_ok"] == last["rows_ok"]:
            return now
        last = now


def release_hold_when(
    runtime_url: str, name: str, condition: Callable[[dict[str, Any]], bool], *, timeout: float = 600.0
) -> threading.Thread:
    """In a daemon thread: wait until the endpoint's counters meet ``condition``, then clear its
    ``hold_after_requests`` fault (after ``timeout`` too, so a broken run ends and its test fails on what it
    asserts). Returns the thread, started."""

    def release() -> None:
        try:
            wait_for_stats(runtime_url, name, condition, timeout=timeout)
        except AssertionError:
            pass
        finally:
            patch_faults(runtime_url, name, {"hold_after_requests": None})

    thread = threading.Thread(target=release, name=f"release-{name}", daemon=True)
    thread.start()
    return thread


def reset_stats(runtime_url: str, name: str) -> dict[str, Any]:
    """Zero the endpoint's counters."""
    return control_request(runtime_url, "DELETE", f"endpoints/{name}/stats")


def delete_endpoint(runtime_url: str, name: str) -> None:
    """Remove an endpoint."""
    control_request(runtime_url, "DELETE", f"endpoints/{name}")


def health(runtime_url: str) -> dict[str, Any]:
    """``GET /_local/health``."""
    return control_request(runtime_url, "GET", "health")
