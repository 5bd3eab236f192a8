"""Cut feature rows into InvokeEndpoint requests under the payload and row limits.

:class:`RequestPlanner` slices a record batch (or table) into contiguous :class:`Request` s whose
bodies are at most ``max_payload_bytes`` and whose row counts are at most ``max_rows_per_request``.
It sizes each slice from a running estimate of encoded bytes per row (learnt from a small probe,
then from every encoded slice, and kept across calls; it rises at once and falls slowly, so uneven
rows overshoot less often), aims ~10% under the limit, and when an
encoded slice is still over the limit shrinks it (at least by half) and encodes again. Encoding is
vectorised per slice: there is no Python work per row. Re-encodes are counted in
:attr:`RequestPlanner.stats` so the waste can be measured.

This module imports neither Airflow nor boto3.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa

from airflow_provider_smrt.exceptions import ParameterValidationError, RowTooLargeError
from airflow_provider_smrt.invocation import validate_max_payload_bytes
from airflow_provider_smrt.scoring.codecs import Codec

__all__ = ["PlannerStats", "Request", "RequestPlanner"]

#: Rows encoded to learn the first bytes-per-row estimate.
DEFAULT_PROBE_ROWS = 32
#: Fraction of the limit a slice is sized for (the rest absorbs row-size variation).
DEFAULT_FILL_RATIO = 0.9
#: How far the bytes-per-row estimate falls towards a smaller measurement per slice (it rises at once).
ESTIMATE_DECAY = 0.25


@dataclass(frozen=True, repr=False)
class Request:
    """One request: rows ``offset`` to ``offset + num_rows - 1`` of the batch given to :meth:`RequestPlanner.split`.

    ``body`` is sensitive (cell values): the repr shows only its size.
    """

    offset: int
    num_rows: int
    body: bytes
    #: One row over ``max_payload_bytes``, emitted (not raised) by a planner with ``oversize=True``: for
    #: an endpoint taking larger payloads (InvokeEndpointAsync).
    oversize: bool = False

    def __repr__(self) -> str:
        flag = ", oversize=True" if self.oversize else ""
        return f"Request(offset={self.offset}, num_rows={self.num_rows}, body=<{len(self.body)} bytes>{flag})"


@dataclass
class PlannerStats:
    """Counters of a :class:`RequestPlanner` (cumulative over its calls)."""

    #: Requests yielded.
    requests: int = 0
    #: Rows yielded in requests.
    rows: int = 0
    #: Bytes yielded in request bodies.
    body_bytes: int = 0
    #: Calls to the codec's ``encode`` (probes, requests and re-encodes).
    encodes: int = 0
    #: Encodes thrown away because the slice was over the limit.
    re_encodes: int = 0
    #: Encodes of the size probe that were not sent.
    probes: int = 0
    #: Rows encoded in total; ``encoded_rows - rows`` is the wasted encoding work.
    encoded_rows: int = 0

    @property
    def wasted_rows(self) -> int:
        """Rows encoded and thrown away (over-limit slices and unsent probes)."""
        return self.encoded_rows - self.rows

    @property
    def waste_ratio(self) -> float:
        """Wasted rows per row sent (0.0 when nothing was wasted)."""
        return self.wasted_rows / self.rows if self.rows else 0.0

    def as_dict(self) -> dict[str, int | float]:
        """The counters as a JSON-serialisable dict."""
        return {
            "requests": self.requests,
            "rows": self.rows,
            "body_bytes": self.body_bytes,
            "encodes": self.encodes,
            "re_encodes": self.re_encodes,
            "probes": self.probes,
            "encoded_rows": self.encoded_rows,
            "wasted_rows": self.wasted_rows,
            "waste_ratio": self.waste_ratio,
        }


class RequestPlanner:
    """Splits feature rows into request bodies under ``max_payload_bytes`` and ``max_rows_per_request``.

    Not thread-safe: use one planner per producing thread (the estimate is per planner).

    :param codec: encodes a slice of feature rows into a body.
    :param max_payload_bytes: the body limit in bytes, 1 to 6,291,456 (InvokeEndpoint's limit).
    :param max_rows_per_request: at most this many rows per request, or None for no row limit.
    :param probe_rows: rows encoded to learn the first bytes-per-row estimate.
    :param fill_ratio: fraction of ``max_payload_bytes`` a slice is sized for (0 < ratio <= 1).
    :param service_limit: the largest body the service takes (InvokeEndpoint: 6 MiB; more for async).
    :param oversize: a single row over ``max_payload_bytes`` is emitted as its own request flagged
        ``oversize`` instead of raising :class:`RowTooLargeError`.
    """

    def __init__(
        self,
        *,
        codec: Codec,
        max_payload_bytes: int = 6_291_456,
        max_rows_per_request: int | None = None,
        probe_rows: int = 32,
        fill_ratio: float = 0.9,
        service_limit: int = 6_291_456,
        oversize: bool = False,
    ) -> None:
        validate_max_payload_bytes(max_payload_bytes, limit=service_limit)
        if max_rows_per_request is not None and (
            isinstance(max_rows_per_request, bool)
            or not isinstance(max_rows_per_request, int)
            or max_rows_per_request < 1
        ):
            raise ParameterValidationError(
                f"max_rows_per_request must be a positive integer or None, not {max_rows_per_request!r}"
            )
        if isinstance(probe_rows, bool) or not isinstance(probe_rows, int) or probe_rows < 1:
            raise ParameterValidationError(f"probe_rows must be a positive integer, not {probe_rows!r}")
        if not 0.0 < fill_ratio <= 1.0:
            raise ParameterValidationError(f"fill_ratio must be in (0, 1], not {fill_ratio!r}")
        self.codec = codec
        self.max_payload_bytes = max_payload_bytes
        self.service_limit = service_limit
        self.max_rows_per_request = max_rows_per_request
        self.oversize = oversize
        self.probe_rows = probe_rows
        self.fill_ratio = fill_ratio
        self.stats = PlannerStats()
        self._bytes_per_row: float | None = None
        self._lock = threading.Lock()  # split() runs on several worker threads at once

    def __repr__(self) -> str:
        return (
            f"RequestPlanner(codec={self.codec!r}, max_payload_bytes={self.max_payload_bytes}, "
            f"max_rows_per_request={self.max_rows_per_request}, bytes_per_row={self._bytes_per_row})"
        )

    @property
    def bytes_per_row(self) -> float | None:
        """The current estimate of encoded bytes per row, or None before the first encode."""
        return self._bytes_per_row

    def slice_rows(self, features: pa.Table, offset: int) -> int:
        """How many rows from ``offset`` to put in the next request, without encoding them.

        Sized from the running bytes-per-row estimate (the first call encodes a small probe to get
        one). The request is encoded later, off the submitting thread, by :meth:`split` on the slice,
        which splits it further in the rare case the estimate was short.
        """
        remaining = features.num_rows - offset
        cap = min(remaining, self.max_rows_per_request or remaining)
        if self._bytes_per_row is None:
            probe = min(self.probe_rows, cap)
            body = self._encode(features, offset, probe)
            if len(body) > self.max_payload_bytes and probe == 1 and not self.oversize:
                raise self._too_large(offset, len(body))
            self.stats.probes += 1
        return self._target_rows(cap)

    def split(self, features: pa.Table | pa.RecordBatch) -> Iterator[Request]:
        """Yield requests covering every row of ``features`` exactly once, in order.

        Every body is at most ``max_payload_bytes`` and every request has at most
        ``max_rows_per_request`` rows. Offsets are relative to ``features``. Yields nothing for an
        empty input.

        :raises RowTooLargeError: a single row encodes to more than ``max_payload_bytes``
            (``row_offset`` says which; the requests before it have been yielded), unless the planner
            has ``oversize=True``: then that row is a request of its own flagged ``oversize``.
        """
        table = pa.Table.from_batches([features]) if isinstance(features, pa.RecordBatch) else features
        total = table.num_rows
        row_cap = self.max_rows_per_request or total
        offset = 0
        while offset < total:
            remaining = total - offset
            cap = min(remaining, row_cap)
            if self._bytes_per_row is None:
                probe = min(self.probe_rows, cap)
                body = self._encode(table, offset, probe)
                if probe == cap and len(body) <= self.max_payload_bytes:
                    yield self._emit(offset, probe, body)
                    offset += probe
                    continue
                if len(body) > self.max_payload_bytes and probe == 1:
                    if not self.oversize:
                        raise self._too_large(offset, len(body))
                    yield self._emit(offset, 1, body, oversize=True)
                    offset += 1
                    continue
                self.stats.probes += 1
            size = self._target_rows(cap)
            oversize = False
            while True:
                body = self._encode(table, offset, size)
                if len(body) <= self.max_payload_bytes:
                    break
                with self._lock:
                    self.stats.re_encodes += 1
                if size == 1:
                    if not self.oversize:
                        raise self._too_large(offset, len(body))
                    oversize = True
                    break
                size = max(1, min(size // 2, self._target_rows(cap)))
            yield self._emit(offset, size, body, oversize=oversize)
            offset += size

    # -----------------------------------------------------------------------------------------

    def _target_rows(self, cap: int) -> int:
        assert self._bytes_per_row is not None  # set by the encode before every call
        budget = self.max_payload_bytes * self.fill_ratio
        rows = math.floor(budget / self._bytes_per_row) if self._bytes_per_row > 0 else cap
        return max(1, min(cap, rows))

    def _encode(self, table: pa.Table, offset: int, num_rows: int) -> bytes:
        # A worker's task is already its request's rows: do not slice it again (docs/performance.md).
        whole = offset == 0 and num_rows == table.num_rows
        body = self.codec.encode(table if whole else table.slice(offset, num_rows))
        with self._lock:
            self.stats.encodes += 1
            self.stats.encoded_rows += num_rows
            self._update_estimate(len(body) / num_rows)
        return body

    def _update_estimate(self, measured: float) -> None:
        """Rise at once to a larger measurement; fall only part of the way towards a smaller one.

        Slices of uneven rows then overshoot the limit (and are re-encoded) less often, at the cost
        of slightly smaller requests after a run of small rows; uniform rows converge in a few slices.
        """
        previous = self._bytes_per_row
        if previous is None or measured >= previous:
            self._bytes_per_row = measured
        else:
            self._bytes_per_row = previous + ESTIMATE_DECAY * (measured - previous)

    def _emit(self, offset: int, num_rows: int, body: bytes, *, oversize: bool = False) -> Request:
        with self._lock:
            self.stats.requests += 1
            self.stats.rows += num_rows
            self.stats.body_bytes += len(body)
        return Request(offset=offset, num_rows=num_rows, body=body, oversize=oversize)

    def _too_large(self, row_offset: int, row_bytes: int) -> RowTooLargeError:
        return RowTooLargeError(
            row_offset=row_offset,
            row_bytes=row_bytes,
            limit=self.max_payload_bytes,
            content_type=self.codec.content_type,
            service_limit=self.service_limit,
        )
