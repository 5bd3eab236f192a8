"""Unit tests of the pipeline's concurrency primitives."""

from __future__ import annotations

import threading
import time

import pytest

from airflow_provider_smrt.scoring.pipeline import AdaptiveLimiter, ReadAhead


def test_limiter_shrinks_on_throttling_and_grows_back() -> None:
    limiter = AdaptiveLimiter(limit=16, cooldown=0.0)
    for _ in range(5):
        limiter.on_throttle()
    assert limiter.limit == int(16 * 0.7**5) == 2
    assert limiter.min_seen == 2
    for _ in range(200):
        limiter.on_success()
    assert limiter.limit == 16


def test_limiter_throttle_burst_counts_once_per_cooldown() -> None:
    limiter = AdaptiveLimiter(limit=10, cooldown=60.0)
    for _ in range(10):
        limiter.on_throttle()
    assert limiter.limit == 7  # one decrease, not ten


def test_limiter_blocks_at_the_limit_and_stops_on_event() -> None:
    limiter = AdaptiveLimiter(limit=2)
    stop = threading.Event()
    assert limiter.acquire(stop) and limiter.acquire(stop)
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(limiter.acquire(stop)))
    waiter.start()
    time.sleep(0.2)
    assert not got  # blocked: two in flight
    limiter.release()
    waiter.join(timeout=5)
    assert got == [True]
    stop.set()
    assert limiter.acquire(stop) is False


def test_read_ahead_yields_in_order_and_raises_source_errors() -> None:
    stop = threading.Event()
    source = ReadAhead(iter(range(50)), stop=stop)
    assert list(source) == list(range(50))
    source.close()

    def broken():  # type: ignore[no-untyped-def]
        yield 1
        raise ValueError("bad file")

    source = ReadAhead(broken(), stop=stop)
    with pytest.raises(ValueError, match="bad file"):
        list(source)
    source.close()


def test_read_ahead_close_stops_and_closes_the_source() -> None:
    closed = threading.Event()

    def endless():  # type: ignore[no-untyped-def]
        try:
            n = 0
            while True:
                yield n
                n += 1
        finally:
            closed.set()

    source = ReadAhead(endless(), stop=threading.Event(), depth=2)
    iterator = iter(source)
    assert [next(iterator) for _ in range(3)] == [0, 1, 2]
    source.close()
    assert closed.wait(5)
