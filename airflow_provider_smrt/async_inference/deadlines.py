"""How long an async invocation may take: the service's RequestTTLSeconds + InvocationTimeoutSeconds.

Airflow-free.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

#: RequestTTLSeconds when the request did not set it (the service default).
DEFAULT_REQUEST_TTL_SECONDS = 21_600
#: InvocationTimeoutSeconds when the request did not set it (the service default).
DEFAULT_INVOCATION_TIMEOUT_SECONDS = 900


class _HasDeadline(Protocol):
    @property
    def deadline_seconds(self) -> int: ...


def service_deadline_seconds(request_ttl_seconds: int | None, invocation_timeout_seconds: int | None) -> int:
    """RequestTTLSeconds + InvocationTimeoutSeconds (service defaults where None)."""
    return (request_ttl_seconds or DEFAULT_REQUEST_TTL_SECONDS) + (
        invocation_timeout_seconds or DEFAULT_INVOCATION_TIMEOUT_SECONDS
    )


def default_timeout_seconds(invocations: Iterable[_HasDeadline], *, margin: float = 60.0) -> float:
    """How long to wait for ``invocations`` at most: the largest TTL + invocation timeout, plus a margin."""
    deadlines = [inv.deadline_seconds for inv in invocations]
    base = max(deadlines) if deadlines else DEFAULT_REQUEST_TTL_SECONDS + DEFAULT_INVOCATION_TIMEOUT_SECONDS
    return float(base) + margin
