"""The one retry policy: attempts, full-jitter exponential backoff and an overall deadline.

Used by every hook call and by the scoring pipeline. botocore's own retries are switched off
(``total_max_attempts=1``) wherever this policy applies, so the two never multiply.
Airflow-free.
"""

from __future__ import annotations

import asyncio
import functools
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from airflow_provider_smrt.classify import classify_error
from airflow_provider_smrt.exceptions import InvocationError

T = TypeVar("T")

#: Turns any error of a call into a classified one.
Classify = Callable[[BaseException], InvocationError]
#: Called before each retry sleep with (classified error, attempt number that failed, delay in s).
OnRetry = Callable[[InvocationError, int, float], None]
#: Called after a failed attempt with (classified error, attempt number): True stops retrying it.
GiveUp = Callable[[InvocationError, int], bool]


@dataclass(frozen=True)
class RetryPolicy:
    """How to retry a retryable :class:`~airflow_provider_smrt.exceptions.InvocationError`.

    :param max_attempts: attempts in all, the first included (1 = no retry).
    :param base_delay: backoff base in seconds; attempt *n* sleeps ``uniform(0, base * 2**n)``.
    :param max_delay: cap of one sleep in seconds.
    :param throttle_base_delay: backoff base for throttling errors (they need longer pauses).
    :param deadline: overall seconds for all attempts; no retry starts after it.
    """

    max_attempts: int = 8
    base_delay: float = 0.1
    max_delay: float = 20.0
    throttle_base_delay: float = 0.5
    deadline: float | None = 600.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def delay(self, attempt: int, err: InvocationError, rng: random.Random | None = None) -> float:
        """Full-jitter delay before the attempt after ``attempt`` (1-based) failed with ``err``."""
        base = self.throttle_base_delay if err.throttled else self.base_delay
        ceiling = min(self.max_delay, base * (2 ** (attempt - 1)))
        return (rng or random).uniform(0.0, ceiling)

    def should_retry(self, err: InvocationError, attempt: int, started: float, delay: float) -> bool:
        if not err.retryable or attempt >= self.max_attempts:
            return False
        return self.deadline is None or time.monotonic() + delay - started < self.deadline

    def _after_failure(
        self,
        raw: Exception,
        attempt: int,
        started: float,
        *,
        classify: Classify,
        on_retry: OnRetry | None,
        cancel: threading.Event | None = None,
        give_up: GiveUp | None = None,
    ) -> tuple[InvocationError, float]:
        """The one decision after a failed attempt: classify, then raise, or return the error and the delay.

        Raises the classified error ``from`` its cause (or the raw error, already classified) when it is
        not retryable, attempts or the deadline run out, ``cancel`` is set or ``give_up(err, attempt)`` says so;
        calls ``on_retry`` otherwise. The error's ``attempts`` is set to the attempts made.
        """
        err = classify(raw)
        err.attempts = attempt
        delay = self.delay(attempt, err)
        if (
            not self.should_retry(err, attempt, started, delay)
            or (cancel is not None and cancel.is_set())
            or (give_up is not None and give_up(err, attempt))
        ):
            if err is raw:
                raise raw
            raise err from raw
        if on_retry is not None:
            on_retry(err, attempt, delay)
        return err, delay

    def call(
        self,
        fn: Callable[[], T],
        *,
        endpoint_name: str | None = None,
        classify: Classify | None = None,
        on_retry: OnRetry | None = None,
        cancel: threading.Event | None = None,
        give_up: GiveUp | None = None,
    ) -> T:
        """Run ``fn`` until it succeeds, fails with a non-retryable error, or attempts run out.

        Errors are classified by ``classify`` (default :func:`~airflow_provider_smrt.classify.classify_error`
        for ``endpoint_name``; pass ``classifier_for_s3(uri)`` for S3 calls) and raised ``from`` their cause,
        with ``attempts`` set to the attempts made. ``cancel`` cuts a backoff sleep short; ``give_up(err,
        attempt)`` returning True stops retrying before the policy would (e.g. fewer attempts for some errors).
        """
        decide = functools.partial(
            self._after_failure,
            classify=classify or _default_classify(endpoint_name),
            on_retry=on_retry,
            cancel=cancel,
            give_up=give_up,
        )
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except Exception as raw:
                err, delay = decide(raw, attempt, started)
                if cancel is None:
                    time.sleep(delay)
                elif cancel.wait(delay):
                    raise err from raw

    async def call_async(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        endpoint_name: str | None = None,
        classify: Classify | None = None,
        on_retry: OnRetry | None = None,
    ) -> T:
        """:meth:`call` for a coroutine function: the same decisions, an ``asyncio`` sleep."""
        decide = functools.partial(
            self._after_failure, classify=classify or _default_classify(endpoint_name), on_retry=on_retry
        )
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                return await fn()
            except Exception as raw:  # noqa: BLE001 - decide() raises what is not retried
                _, delay = decide(raw, attempt, started)
                await asyncio.sleep(delay)


def _default_classify(endpoint_name: str | None) -> Classify:
    return functools.partial(classify_error, endpoint_name=endpoint_name)


def classifier_for_s3(uri: str) -> Classify:
    """How to classify the errors of an S3 call on ``uri`` (``s3://bucket`` or an object): messages say S3."""
    return functools.partial(classify_error, s3_uri=uri)


#: A single attempt: for callers (the scoring pipeline) that apply the policy themselves.
NO_RETRY = RetryPolicy(max_attempts=1)
