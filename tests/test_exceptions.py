"""The error hierarchy: every error class of the package answers ``.retryable``."""

from __future__ import annotations

import inspect
import pickle

import pytest

from airflow_provider_smrt import exceptions
from airflow_provider_smrt.exceptions import (
    ModelServerError,
    RetryableInvocationError,
    RetryableStreamError,
    SmrtError,
)

ERROR_CLASSES = sorted(
    (cls for _, cls in inspect.getmembers(exceptions, inspect.isclass) if issubclass(cls, SmrtError)),
    key=lambda cls: cls.__name__,
)
RETRYABLE_BASES = (RetryableInvocationError, ModelServerError, RetryableStreamError)


def test_the_module_defines_the_whole_hierarchy() -> None:
    names = {cls.__name__ for cls in ERROR_CLASSES}
    # The codec, planner and async inference errors live here too.
    assert {"ResponseDecodeError", "PredictionRowCountError", "RowTooLargeError", "AsyncInferenceFailedError"} <= names
    assert all(cls.__module__ == exceptions.__name__ for cls in ERROR_CLASSES)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_every_error_answers_retryable(cls: type[SmrtError]) -> None:
    assert isinstance(cls.retryable, bool)
    assert cls.retryable is issubclass(cls, RETRYABLE_BASES)


def test_keyword_only_errors_survive_pickling() -> None:
    err = exceptions.RowTooLargeError(
        row_offset=3, row_bytes=7_000_000, limit=5_000_000, content_type="text/csv", service_limit=6_291_456
    )
    copy = pickle.loads(pickle.dumps(err))
    assert str(copy) == str(err) and copy.service_limit == 6_291_456 and "up to" not in str(copy)
    count = pickle.loads(pickle.dumps(exceptions.PredictionRowCountError(expected=4, got=2)))
    assert str(count) == "expected 4 predictions, got 2" and not count.retryable
