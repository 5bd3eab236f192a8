"""Row-group selections of one Parquet input: ``s3://bucket/key.parquet#row_groups=4:9`` scores row groups 4 to 8.

Shards (:mod:`~airflow_provider_smrt.scoring.shards`) are lists of such URIs; the dataset listing
(:mod:`~airflow_provider_smrt.scoring.dataset`) reads only the selected row groups.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from airflow_provider_smrt.exceptions import InputDataError
from airflow_provider_smrt.s3 import ObjectInfo

__all__ = ["ROW_GROUPS_SELECTOR", "SelectedObject", "selection", "split_row_groups", "with_row_groups"]

ROW_GROUPS_SELECTOR = "#row_groups="
_ROW_GROUPS = re.compile(r"^(?P<start>\d+):(?P<stop>\d+)$")


@dataclass(frozen=True)
class SelectedObject(ObjectInfo):
    """An input object of which only row groups ``row_groups = (start, stop)`` are scored."""

    row_groups: tuple[int, int] | None = None


def with_row_groups(uri: str, start: int, stop: int) -> str:
    """The input URI scoring only row groups ``[start, stop)`` of the object ``uri``."""
    return f"{uri}{ROW_GROUPS_SELECTOR}{start}:{stop}"


def split_row_groups(uri: str) -> tuple[str, tuple[int, int] | None]:
    """``"s3://b/k#row_groups=2:5"`` → ``("s3://b/k", (2, 5))``; a URI without the selector → ``(uri, None)``."""
    base, found, selector = uri.rpartition(ROW_GROUPS_SELECTOR)
    if not found:
        return uri, None
    match = _ROW_GROUPS.match(selector)
    if match is None or int(match["start"]) >= int(match["stop"]) or not base or base.endswith("/"):
        raise InputDataError(
            f"input_uri {uri!r} has a malformed row-group selector: write <object>{ROW_GROUPS_SELECTOR}<start>:<stop> "
            "(0-based row groups of one Parquet object, stop exclusive and greater than start)"
        )
    return base, (int(match["start"]), int(match["stop"]))


def selection(info: ObjectInfo) -> tuple[int, int] | None:
    """The row groups ``(start, stop)`` an input object is limited to, or None for the whole object."""
    return info.row_groups if isinstance(info, SelectedObject) else None
