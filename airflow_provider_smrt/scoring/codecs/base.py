"""The codec protocol, the built-in content types and MIME type normalisation: what every codec module shares."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Protocol, runtime_checkable

import pyarrow as pa

__all__ = [
    "CSV",
    "JSON",
    "JSONLINES",
    "SUPPORTED_CONTENT_TYPES",
    "Codec",
    "DecoderFn",
    "EncoderFn",
    "JsonRecordFormat",
    "media_type",
]

CSV = "text/csv"
JSON = "application/json"
JSONLINES = "application/jsonlines"
#: The content types with a built-in encoder and decoder.
SUPPORTED_CONTENT_TYPES: tuple[str, ...] = (CSV, JSON, JSONLINES)

_MEDIA_ALIASES: dict[str, str] = {
    "text/csv": CSV,
    "application/csv": CSV,
    "application/json": JSON,
    "application/jsonlines": JSONLINES,
    "application/jsonl": JSONLINES,
    "application/json-lines": JSONLINES,
    "application/x-jsonlines": JSONLINES,
    "application/x-ndjson": JSONLINES,
    "application/ndjson": JSONLINES,
}

JsonRecordFormat = Literal["list", "object"]
EncoderFn = Callable[[pa.Table], bytes]
DecoderFn = Callable[[bytes, int], Any]  # returns pa.Table | pa.RecordBatch | Sequence[Any] | np.ndarray


@runtime_checkable
class Codec(Protocol):
    """Encodes feature tables into request bodies and decodes response bodies into prediction tables.

    What the scoring core needs of a codec: the request planner reads :attr:`content_type`, the
    pipeline calls :meth:`encode` and :meth:`decode`. :class:`~airflow_provider_smrt.scoring.codecs.PayloadCodec`
    is the implementation :func:`~airflow_provider_smrt.scoring.codecs.get_codec` returns.
    """

    #: The request ``Content-Type``.
    content_type: str
    #: The response type asked for (the request's ``Accept``).
    accept: str

    def encode(self, features: pa.Table) -> bytes:
        """Encode every row of ``features`` (feature columns only, in order) into one request body."""
        ...

    def decode(self, body: bytes, *, num_rows: int, content_type: str | None) -> pa.Table:
        """Decode a response body into a table of prediction columns with exactly ``num_rows`` rows.

        :param content_type: the response's ``ContentType``, if it had one.
        :raises PredictionRowCountError: the body holds a different number of predictions.
        """
        ...


def media_type(value: str | None) -> str | None:
    """Normalise a MIME type for dispatch: drop parameters, lower-case, map aliases (``application/jsonl``...)."""
    if not value:
        return None
    base = value.split(";", 1)[0].strip().lower()
    return _MEDIA_ALIASES.get(base, base)
