"""The orjson options and the fallback for values orjson does not write itself, shared by encoders and decoders."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson

__all__ = ["GENERAL_OPTS", "NUMPY_OPTS", "json_default", "json_text"]

#: Options of the numeric fast path: a 2-D numpy array of numbers.
NUMPY_OPTS = orjson.OPT_SERIALIZE_NUMPY
#: Options of everything else (maps may have non-string keys).
GENERAL_OPTS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def json_default(value: Any) -> Any:
    """orjson fallback for values nested inside lists/structs/maps."""
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"{type(value).__name__} values cannot be sent as JSON")


def json_text(value: Any) -> str:
    return orjson.dumps(value, default=json_default, option=GENERAL_OPTS).decode("utf-8")
