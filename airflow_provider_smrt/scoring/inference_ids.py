"""Deterministic InferenceIds: the same request of the same input gets the same id on every run.

An id is ``{prefix}{unit}-{first row}-{rows}``: the prefix the user chose, a 12-character digest of the
work unit (the input file and its row range), the request's first row within the file and its row
count. A request that bisection splits gets the ids of its halves, so every single-row request that
lands in ``_errors/`` has an id of its own.
"""

from __future__ import annotations

import hashlib

from airflow_provider_smrt.exceptions import ParameterValidationError
from airflow_provider_smrt.invocation import MAX_INFERENCE_ID_CHARS, validate_inference_id
from airflow_provider_smrt.scoring.dataset import WorkUnit

__all__ = ["MAX_PREFIX_CHARS", "inference_id", "validate_inference_id_prefix"]

#: The id after the prefix is at most 12 + 1 + 10 + 1 + 7 characters (rows below 10**10, requests below 10**7 rows).
MAX_PREFIX_CHARS = MAX_INFERENCE_ID_CHARS - 31


def validate_inference_id_prefix(prefix: str | None) -> None:
    """Raise :class:`~airflow_provider_smrt.exceptions.ParameterValidationError` for a prefix that cannot start ids."""
    if prefix is None:
        return
    if not isinstance(prefix, str) or not 1 <= len(prefix) <= MAX_PREFIX_CHARS:
        raise ParameterValidationError(
            f"inference_id_prefix={prefix!r} must be 1 to {MAX_PREFIX_CHARS} characters: the InferenceId takes "
            f"at most {MAX_INFERENCE_ID_CHARS} and the unit and request position take the rest"
        )
    try:
        validate_inference_id(prefix)
    except ParameterValidationError as err:
        raise ParameterValidationError(
            f"inference_id_prefix={prefix!r} is invalid: use printable ASCII characters, the first not a space"
        ) from err


def _unit_digest(unit: WorkUnit) -> str:
    return hashlib.sha256(unit.key.encode()).hexdigest()[:12]


def inference_id(prefix: str, unit: WorkUnit, offset: int, count: int) -> str:
    """The InferenceId of the request of rows ``[offset, offset + count)`` of ``unit`` (offset within the unit)."""
    return f"{prefix}{_unit_digest(unit)}-{unit.start + offset}-{count}"
