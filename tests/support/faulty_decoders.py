"""A faulty user decoder (dotted path ``tests.support.faulty_decoders.drop_last_row``) for the bad-input suite."""

from __future__ import annotations


def drop_last_row(body: bytes, num_rows: int) -> list[float]:
    """Parse one CSV prediction per line and lose the last one, as a buggy model wrapper would."""
    values = [float(line) for line in body.decode().splitlines() if line.strip()]
    return values[:-1]
