"""S3 for the whole package: URIs, the one object description, and how to read an S3 error.

* URIs: :class:`S3Location` (a validated ``s3://bucket/key``), :func:`is_s3`, :func:`split_s3`,
  :func:`join_uri`, :func:`basename`.
* :class:`ObjectInfo`: what a HEAD or a listing says about one object (or a local file).
* Errors: :func:`error_code`, :func:`is_not_found` (the one "the object does not exist" test),
  :func:`is_s3_client_error` (the S3 call failed, not the caller's code) and :func:`describe_s3_error`
  (code and message for an error text, never a payload or a credential). Classifying an S3 error for
  retries is :func:`~airflow_provider_smrt.classify.classify_error` with ``s3_uri=``.

Airflow-free, and boto3 is not imported: errors are read from their ``response`` attribute.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_smrt.exceptions import ParameterValidationError

#: Error codes (and HTTP statuses) meaning "no such object".
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` → ``(bucket, key)``."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"not an s3:// URI: {uri!r}")
    return parts.netloc, parts.path.lstrip("/")


def join_uri(base: str, name: str) -> str:
    """Join a prefix/directory URI and a relative name with exactly one slash."""
    return base.rstrip("/") + "/" + name.lstrip("/")


def basename(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class S3Location:
    """An ``s3://bucket/key`` URI, split; both parts are required."""

    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Location:
        """Split an ``s3://bucket/key`` URI; anything else is a :class:`ParameterValidationError`."""
        if not isinstance(uri, str) or not is_s3(uri):
            raise ParameterValidationError(f"{uri!r} is not an s3://bucket/key URI")
        bucket, _, key = uri[len("s3://") :].partition("/")
        if not bucket or not key:
            raise ParameterValidationError(f"{uri!r} is not an s3://bucket/key URI (bucket and key are required)")
        return cls(bucket=bucket, key=key)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def directory(self) -> str:
        """The key's "directory": everything up to and including the last ``/`` ('' at the root)."""
        head, sep, _ = self.key.rpartition("/")
        return head + sep


@dataclass(frozen=True)
class ObjectInfo:
    """One object (or local file) that exists: its URI, size, identity for change detection, and age.

    :param uri: ``s3://bucket/key`` or a local path.
    :param size: bytes (0 when unknown).
    :param etag: the ETag without quotes (local files: mtime and size), for pinning reads.
    :param version_id: the S3 version, when the bucket is versioned.
    :param last_modified: when the object was written, when known.
    """

    uri: str
    size: int
    etag: str | None = None
    version_id: str | None = None
    last_modified: dt.datetime | None = None

    @classmethod
    def from_head(cls, uri: str, response: Any) -> ObjectInfo:
        """From a HeadObject (or GetObject) response."""
        return cls(
            uri=uri,
            size=int(response.get("ContentLength", 0)),
            etag=str(response.get("ETag", "")).strip('"') or None,
            version_id=response.get("VersionId"),
            last_modified=response.get("LastModified"),
        )

    @classmethod
    def from_listing(cls, bucket: str, item: Any) -> ObjectInfo:
        """From one ``Contents`` entry of a ListObjectsV2 page."""
        return cls(
            uri=f"s3://{bucket}/{item['Key']}",
            size=int(item.get("Size", 0)),
            etag=str(item.get("ETag", "")).strip('"') or None,
            last_modified=item.get("LastModified"),
        )


# -- errors ----------------------------------------------------------------------------------------


def _response(err: BaseException) -> dict[str, Any] | None:
    response = getattr(err, "response", None)
    return response if isinstance(response, dict) else None


def error_code(err: BaseException) -> str | None:
    """The service error code of a botocore ``ClientError`` (e.g. ``NoSuchBucket``), else None."""
    response = _response(err)
    if response is None:
        return None
    code = (response.get("Error") or {}).get("Code")
    return str(code) if code else None


def http_status(err: BaseException) -> int | None:
    """The HTTP status of the failed call's response, if there was one."""
    response = _response(err)
    status = ((response or {}).get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return status if isinstance(status, int) else None


def is_not_found(err: BaseException) -> bool:
    """True when ``err`` says the object does not exist (``NoSuchKey``, or a HEAD's bare 404).

    A missing *bucket* (``NoSuchBucket``) is not "not found": it is a configuration error.
    """
    code = error_code(err)
    if code == "NoSuchBucket":
        return False
    return code in _NOT_FOUND_CODES or http_status(err) == 404


def is_s3_client_error(err: BaseException) -> bool:
    """True when ``err`` comes from botocore (the S3 call itself failed), not from the caller's code."""
    return type(err).__module__.startswith("botocore")


def describe_s3_error(err: BaseException) -> str:
    """The S3 error code and message (never a payload or a credential), or the exception's type.

    Follows the cause chain when ``err`` wraps a botocore error (smart-open re-raises them).
    """
    response = _response(err)
    if response is not None:
        error = response.get("Error") or {}
        return f"{error.get('Code', 'Unknown')}: {error.get('Message', '')}".strip()
    cause = err.__cause__ or err.__context__
    if cause is not None and cause is not err and is_s3_client_error(cause):
        return describe_s3_error(cause)
    return f"{type(err).__name__}: {err}"
