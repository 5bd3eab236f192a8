"""The one rule for task retries: a package error whose ``.retryable`` is False fails the task for good.

Airflow retries a failed task ``retries`` times. A configuration error, bad input data, a missing
endpoint or an exceeded error budget fails the same way on every try, so those raise Airflow's
:class:`AirflowFailException` (the package error kept as its cause); transient invocation errors
(``.retryable`` True), a cancelled run (``on_kill``) and errors from outside the package are left to Airflow's retries.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from airflow_provider_smrt._compat import AirflowFailException
from airflow_provider_smrt.exceptions import ScoringCancelledError, SmrtError

F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def failing_fast() -> Iterator[None]:
    """Turn a non-retryable :class:`~airflow_provider_smrt.exceptions.SmrtError` into ``AirflowFailException``."""
    try:
        yield
    except SmrtError as err:
        # A cancelled run (on_kill: a task timeout, a kill) may well finish on the next try.
        if err.retryable or isinstance(err, ScoringCancelledError):
            raise
        raise AirflowFailException(f"{type(err).__name__}: {err} (not retried: a retry cannot fix this)") from err


def fails_fast(method: F) -> F:
    """Decorate ``execute`` (or ``execute_complete``) with :func:`failing_fast`."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with failing_fast():
            return method(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
