"""The read-ahead thread: order, source errors, and closing the source."""

from __future__ import annotations

import threading

import pytest

from airflow_provider_smrt.scoring.readahead import ReadAhead


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
