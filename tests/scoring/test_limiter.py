"""The in-flight limiter: AIMD on throttling, blocking at the limit, stopping on the run's event."""

from __future__ import annotations

import threading
import time

from airflow_provider_smrt.scoring.limiter import AdaptiveLimiter


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
