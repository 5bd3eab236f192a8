"""One JSON request per row from a request template, and one field picked out of each JSON response.

For endpoints that take one structured request per record, such as LLM containers
(``{"inputs": "<prompt>", "parameters": {...}}`` → ``[{"generated_text": "..."}]``):

:class:`RequestTemplateEncoder`
    The template is a JSON-compatible dict. Every string in it (at any depth; keys are left as they
    are) may hold ``{column}`` placeholders, filled from the row:

    - a string that is exactly one placeholder (``"{max_tokens}"``) is replaced by the value itself,
      keeping its JSON type (number, boolean, null, list, object, string);
    - placeholders inside a longer string (``"Summarise: {text}"``) are formatted as text: strings as
      they are, null as an empty string, anything else as its JSON text; a format spec applies to the
      value (``"{score:.2f}"``). ``{{`` and ``}}`` are literal braces.

    Values are converted as for ``application/json`` requests (timestamps, dates and times as ISO
    text, decimals as numbers). A template makes exactly one request per row, so the scoring job sends
    requests of one row (``max_rows_per_request=1``).
:class:`ResponseFieldDecoder`
    ``response_field`` is a dotted path into the JSON response (``"generated_text"``,
    ``"choices.0.message.content"``). An integer segment indexes a list; a name applied to a list
    applies to each of its items, so ``[{"generated_text": "..."}]`` with ``"generated_text"`` gives
    that text. The values so collected from a list are the per-row items; a single value is the
    prediction of a one-row request, or (for several rows) must be a list with one item per row.

Neither ever puts a cell or response value in an error message. This module imports neither Airflow
nor boto3.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa

from airflow_provider_smrt.exceptions import InputDataError, ParameterValidationError, ResponseDecodeError
from airflow_provider_smrt.scoring.codecs.arrow import prepare, python_values
from airflow_provider_smrt.scoring.codecs.base import JSON, JSONLINES, media_type
from airflow_provider_smrt.scoring.codecs.json_values import GENERAL_OPTS, json_default, json_text

__all__ = ["RequestTemplateEncoder", "ResponseFieldDecoder", "template_columns"]


@dataclass(frozen=True)
class _Value:
    """A string that is exactly one placeholder: the row's value, with its JSON type."""

    column: str


@dataclass(frozen=True)
class _Text:
    """A string with placeholders inside text: (literal, column or None, format spec) pieces."""

    pieces: tuple[tuple[str, str | None, str], ...]


def _compile_string(value: str, path: str) -> str | _Value | _Text:
    try:
        parsed = list(string.Formatter().parse(value))
    except ValueError as err:
        raise ParameterValidationError(
            f"request_template string at {path} is not a valid template ({err}); write literal braces as '{{{{' "
            "and '}}}}'"
        ) from err
    if all(field is None for _, field, _, _ in parsed):
        return "".join(literal for literal, _, _, _ in parsed)  # only literals (and escaped braces)
    pieces: list[tuple[str, str | None, str]] = []
    for literal, field, spec, conversion in parsed:
        if field is None:
            pieces.append((literal, None, ""))
            continue
        if field == "":
            raise ParameterValidationError(
                f"request_template string at {path} has an empty placeholder '{{}}': name a column, e.g. '{{prompt}}'"
            )
        if conversion:
            raise ParameterValidationError(
                f"request_template placeholder {{{field}!{conversion}}} at {path}: conversions ('!r', '!s') are not "
                "supported; use a format spec ('{column:.2f}') or none"
            )
        if spec and ("{" in spec or "}" in spec):
            raise ParameterValidationError(
                f"request_template placeholder {{{field}:...}} at {path}: nested placeholders in a format spec are "
                "not supported"
            )
        pieces.append((literal, field, spec or ""))
    if len(pieces) == 1 and pieces[0][0] == "" and pieces[0][1] is not None and pieces[0][2] == "":
        return _Value(pieces[0][1])
    return _Text(tuple(pieces))


def _compile(node: Any, path: str) -> Any:
    if isinstance(node, str):
        return _compile_string(node, path)
    if isinstance(node, Mapping):
        compiled = {}
        for key, value in node.items():
            if not isinstance(key, str):
                raise ParameterValidationError(f"request_template keys must be strings; {path} has a {type(key)!r} key")
            compiled[key] = _compile(value, f"{path}.{key}")
        return compiled
    if isinstance(node, (list, tuple)):
        return [_compile(value, f"{path}[{i}]") for i, value in enumerate(node)]
    if node is None or isinstance(node, (bool, int, float)):
        return node
    raise ParameterValidationError(
        f"request_template value at {path} is a {type(node).__name__}; use JSON types (dict, list, str, number, "
        "bool, None)"
    )


def _columns_of(node: Any, found: dict[str, None]) -> None:
    if isinstance(node, _Value):
        found[node.column] = None
    elif isinstance(node, _Text):
        for _, column, _ in node.pieces:
            if column is not None:
                found[column] = None
    elif isinstance(node, dict):
        for value in node.values():
            _columns_of(value, found)
    elif isinstance(node, list):
        for value in node:
            _columns_of(value, found)


def template_columns(template: Mapping[str, Any]) -> list[str]:
    """The columns a request template refers to, in order of first use.

    :raises ParameterValidationError: the template is not a dict of JSON values or a placeholder is malformed.
    """
    if not isinstance(template, Mapping):
        raise ParameterValidationError(
            f"request_template must be a dict (the JSON request of one row), not {type(template).__name__}"
        )
    found: dict[str, None] = {}
    _columns_of(_compile(template, "$"), found)
    return list(found)


def _as_text(value: Any, spec: str) -> str:
    if spec:
        try:
            return format(value, spec)
        except (TypeError, ValueError) as err:
            raise InputDataError(
                f"a value of type {type(value).__name__} cannot be formatted with the spec {spec!r} "
                f"({type(err).__name__})"
            ) from err
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json_text(value)


class RequestTemplateEncoder:
    """Encodes one row into the JSON request given by a template (see the module docstring).

    :param template: the request of one row, with ``{column}`` placeholders in its strings.
    :raises ParameterValidationError: the template is invalid or refers to no column.
    """

    media = JSON

    def __init__(self, template: Mapping[str, Any]) -> None:
        self.columns = template_columns(template)
        if not self.columns:
            raise ParameterValidationError(
                "request_template has no '{column}' placeholder: every request would be the same; "
                "put e.g. '{prompt}' where the row's value goes"
            )
        self._compiled = _compile(template, "$")

    def __repr__(self) -> str:
        return f"RequestTemplateEncoder(columns={self.columns!r})"

    def check_columns(self, available: Sequence[str]) -> None:
        """Raise :class:`InputDataError` if the template refers to a column that is not sent."""
        missing = [name for name in self.columns if name not in available]
        if missing:
            raise InputDataError(
                f"request_template refers to column(s) {', '.join(missing)}, which are not among the feature "
                f"columns ({', '.join(available)}): add them to feature_columns or fix the placeholders"
            )

    def __call__(self, features: pa.Table) -> bytes:
        if features.num_rows != 1:
            raise ParameterValidationError(
                f"request_template makes one request per row, but {features.num_rows} rows were given: "
                "set max_rows_per_request=1"
            )
        self.check_columns(features.column_names)
        table = prepare(features.select(self.columns), JSON)
        row = {
            name: python_values(name, column, JSON)[0]
            for name, column in zip(table.column_names, table.columns, strict=True)
        }
        document = self._render(self._compiled, row)
        try:
            return orjson.dumps(document, default=json_default, option=GENERAL_OPTS)
        except (TypeError, orjson.JSONEncodeError) as err:
            raise InputDataError(
                f"the request cannot be encoded as JSON ({type(err).__name__}); cast nested columns to "
                "JSON-compatible types"
            ) from err

    def _render(self, node: Any, row: Mapping[str, Any]) -> Any:
        if isinstance(node, _Value):
            return row[node.column]
        if isinstance(node, _Text):
            return "".join(
                literal + ("" if column is None else _as_text(row[column], spec))
                for literal, column, spec in node.pieces
            )
        if isinstance(node, dict):
            return {key: self._render(value, row) for key, value in node.items()}
        if isinstance(node, list):
            return [self._render(value, row) for value in node]
        return node


_MISSING = object()


class ResponseFieldDecoder:
    """Picks ``response_field`` (a dotted path) out of a JSON or JSON-lines response (see the module docstring).

    Returns the per-row items (a list of ``num_rows`` values);
    :class:`~airflow_provider_smrt.scoring.codecs.PayloadCodec` turns them into prediction columns like any
    JSON items.

    :param response_field: the dotted path, e.g. ``"generated_text"`` or ``"choices.0.message.content"``.
    :param accept: the response type: ``application/json`` or ``application/jsonlines``.
    """

    def __init__(self, response_field: str, *, accept: str) -> None:
        if not isinstance(response_field, str) or not response_field.strip():
            raise ParameterValidationError("response_field must be a non-empty dotted path such as 'generated_text'")
        self.path = tuple(response_field.strip().split("."))
        if any(segment == "" for segment in self.path):
            raise ParameterValidationError(f"response_field {response_field!r} has an empty segment")
        media = media_type(accept)
        if media not in (JSON, JSONLINES):
            raise ParameterValidationError(
                f"response_field needs a JSON response (accept 'application/json' or 'application/jsonlines'), "
                f"not {accept!r}"
            )
        self.field = response_field.strip()
        self.lines = media == JSONLINES

    def __repr__(self) -> str:
        return f"ResponseFieldDecoder({self.field!r})"

    def __call__(self, body: bytes, num_rows: int) -> list[Any]:
        try:
            if self.lines:
                document: Any = [orjson.loads(line) for line in body.splitlines() if line.strip()]
            else:
                document = orjson.loads(body)
        except orjson.JSONDecodeError as err:
            raise ResponseDecodeError(
                f"the response ({len(body)} bytes) is not valid JSON (error at byte {err.pos}); response_field "
                f"{self.field!r} needs a JSON response"
            ) from err
        value, per_item = self._extract(document, 0)
        if per_item:
            return list(value)
        if num_rows == 1:
            return [value]
        if isinstance(value, list):
            return value
        raise ResponseDecodeError(
            f"response_field {self.field!r} holds one {type(value).__name__} for a request of {num_rows} rows; "
            "it must hold a list with one item per row"
        )

    def _extract(self, node: Any, depth: int) -> tuple[Any, bool]:
        """(value, whether it is a list of per-item values collected by applying a name to a list)."""
        if depth == len(self.path):
            return node, False
        segment = self.path[depth]
        if isinstance(node, list):
            if segment.lstrip("-").isdigit():
                index = int(segment)
                if not -len(node) <= index < len(node):
                    raise self._missing(depth, f"a list of {len(node)} item(s) has no index {index}")
                return self._extract(node[index], depth + 1)
            return [self._extract(item, depth)[0] for item in node], True
        if isinstance(node, dict):
            value = node.get(segment, _MISSING)
            if value is _MISSING:
                keys = ", ".join(repr(str(k)[:40]) for k in list(node)[:10])
                raise self._missing(depth, f"an object without {segment!r} (its keys: {keys})")
            return self._extract(value, depth + 1)
        raise self._missing(depth, f"a {_kind(node)}, which has no field {segment!r}")

    def _missing(self, depth: int, what: str) -> ResponseDecodeError:
        where = ".".join(self.path[:depth]) or "the response"
        return ResponseDecodeError(
            f"response_field {self.field!r}: {where} is {what}; check the model's response format"
        )


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return type(value).__name__
