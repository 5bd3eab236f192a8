"""The service's constraints on request headers, read from botocore's ``sagemaker-runtime`` model.

Each header member of an operation's input shape brings its ``min``/``max`` length (integers: range) and
``pattern``; a request breaking one gets the service's ``400 ValidationError`` ("1 validation error
detected: Value 'x' at 'inferenceId' failed to satisfy constraint: ..."). Values of ``sensitive``
members (CustomAttributes) are never echoed.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from typing import Any

from airflow_provider_smrt.local.wire import ServiceError

#: botocore operation name of each invocation kind of the endpoint server.
OPERATIONS = {"sync": "InvokeEndpoint", "async": "InvokeEndpointAsync", "stream": "InvokeEndpointWithResponseStream"}

# The model's patterns are Java regular expressions, matched against the whole value.
_JAVA_TO_PYTHON = (("\\p{ASCII}", "\\x00-\\x7f"), ("\\p{Print}", "\\x20-\\x7e"), ("\\z", "\\Z"))


@dataclass(frozen=True)
class HeaderRule:
    """The constraints of one header member."""

    member: str
    header: str
    type_name: str
    min: int | None
    max: int | None
    pattern: str | None
    sensitive: bool

    @functools.cached_property
    def regex(self) -> re.Pattern[str] | None:
        """The pattern, translated for Python's ``re``."""
        if self.pattern is None:
            return None
        text = self.pattern
        for java, python in _JAVA_TO_PYTHON:
            text = text.replace(java, python)
        # "\p{ASCII}*" outside a class: wrap the translated range in one
        text = re.sub(r"(?<!\[)\\x00-\\x7f", r"[\\x00-\\x7f]", text)
        text = re.sub(r"(?<!\[)\\x20-\\x7e", r"[\\x20-\\x7e]", text)
        return re.compile(text, re.DOTALL)

    def problem(self, value: str) -> str | None:
        """The constraint ``value`` breaks, in the service's words, or ``None``."""
        if self.type_name == "integer":
            try:
                number = int(value)
            except ValueError:
                return "Member must be an integer"
            if self.min is not None and number < self.min:
                return f"Member must have value greater than or equal to {self.min}"
            if self.max is not None and number > self.max:
                return f"Member must have value less than or equal to {self.max}"
            return None
        if self.max is not None and len(value) > self.max:
            return f"Member must have length less than or equal to {self.max}"
        if self.min is not None and len(value) < self.min:
            return f"Member must have length greater than or equal to {self.min}"
        regex = self.regex
        if regex is not None and regex.fullmatch(value) is None:
            return f"Member must satisfy regular expression pattern: {self.pattern}"
        return None


def header_rules(operation: str) -> tuple[HeaderRule, ...]:
    """The header members of ``operation``'s input with their constraints.

    Read from botocore's model once for every operation of :data:`OPERATIONS`, under a lock: the
    connection threads of a first burst of requests would otherwise each load the model at the same time.
    """
    with _RULES_LOCK:
        return _all_header_rules()[operation]


_RULES_LOCK = threading.Lock()


@functools.cache
def _all_header_rules() -> dict[str, tuple[HeaderRule, ...]]:
    import botocore.session

    model = botocore.session.get_session().get_service_model("sagemaker-runtime")
    return {operation: _header_rules(model.operation_model(operation)) for operation in OPERATIONS.values()}


def _header_rules(operation_model: Any) -> tuple[HeaderRule, ...]:
    rules = []
    for member, shape in operation_model.input_shape.members.items():
        if shape.serialization.get("location") != "header":
            continue
        meta = shape.metadata
        rules.append(
            HeaderRule(
                member=member,
                header=shape.serialization["name"],
                type_name=shape.type_name,
                min=meta.get("min"),
                max=meta.get("max"),
                pattern=meta.get("pattern"),
                sensitive=bool(meta.get("sensitive")),
            )
        )
    return tuple(rules)


def _camel(member: str) -> str:
    return member[:1].lower() + member[1:]


def check_headers(kind: str, headers: Message, *, extra: Callable[[str, str], str | None] | None = None) -> None:
    """Raise the service's ValidationError listing every header of ``kind``'s operation that breaks a rule.

    :param extra: a further check ``(member, value) -> problem or None`` for rules the model cannot state.
    """
    problems = []
    present: dict[str, str] = {}
    for name, text in headers.items():
        present.setdefault(name.lower(), text)  # the first of a repeated header, as Message.get
    for rule in header_rules(OPERATIONS[kind]):
        value = present.get(rule.header.lower())
        if value is None:
            continue
        problem = rule.problem(value) or (extra(rule.member, value) if extra else None)
        if problem is None:
            continue
        shown = f"Value at '{_camel(rule.member)}'" if rule.sensitive else f"Value '{value}' at '{_camel(rule.member)}'"
        problems.append(f"{shown} failed to satisfy constraint: {problem}")
    if problems:
        count = len(problems)
        raise ServiceError(
            "ValidationError",
            f"{count} validation error{'s' if count > 1 else ''} detected: " + "; ".join(problems),
        )
