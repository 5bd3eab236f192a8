"""The one builder of a :class:`~airflow_provider_smrt.scoring.job.ScoringConfig` from a scoring operator.

Both Parquet scoring operators (real-time :mod:`~airflow_provider_smrt.operators.batch_score` and
through async inference :mod:`~airflow_provider_smrt.operators.async_batch_score`) name their
parameters as the configuration's fields; :func:`scoring_config` reads every field the operator has
from the attribute of the same name, so the keyword list exists once (in ``ScoringConfig``).
:func:`check_at_parse_time` runs the same validation in the constructor, so a broken DAG fails to import.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from airflow_provider_smrt.scoring.codecs import get_codec
from airflow_provider_smrt.scoring.job import ScoringConfig, manifest_name_for

#: Fields the builder sets itself (never read from the operator).
_SET_BY_BUILDER = frozenset({"manifest_name", "invoke_params", "payload_limit"})
#: The fields read from the operator's attributes of the same name.
OPERATOR_FIELDS = tuple(f.name for f in dataclasses.fields(ScoringConfig) if f.init and f.name not in _SET_BY_BUILDER)


def scoring_config(
    operator: object, *, map_index: int | None, invoke_params: dict[str, Any], **overrides: Any
) -> ScoringConfig:
    """The configuration of ``operator``'s run (after templating).

    :param operator: an operator whose attributes are named as :data:`OPERATOR_FIELDS` (those it lacks
        keep ``ScoringConfig``'s defaults).
    :param map_index: the mapped task's index (its own manifest), or None.
    :param invoke_params: the invocation parameters hashed into the configuration (never logged).
    :param overrides: fields whose value differs from the attribute (e.g. ``payload_limit``).
    """
    values = {name: getattr(operator, name) for name in OPERATOR_FIELDS if hasattr(operator, name)}
    values.update(manifest_name=manifest_name_for(map_index), invoke_params=invoke_params, **overrides)
    return ScoringConfig(**values)


def _templated(value: Any) -> bool:
    return isinstance(value, str) and "{{" in value


def check_at_parse_time(operator: object, **overrides: Any) -> None:
    """Validate ``operator``'s parameters as :func:`scoring_config` would, in the constructor (DAG parse time).

    :meth:`ScoringConfig.validate` checks the non-templated parameters (``concurrency``, ``max_error_ratio``,
    ``if_exists``, ``max_payload_bytes``...); the content types (templated) are checked through the codec
    selection when they hold no ``{{``, and only without a custom encoder/decoder (whose modules are imported
    on the worker, not at parse time).

    :raises ParameterValidationError: naming the bad parameter.
    """
    config = scoring_config(operator, map_index=None, invoke_params={}, **overrides)
    config.validate()
    types = (config.content_type, config.accept)
    if config.encoder is None and config.decoder is None and not any(_templated(value) for value in types):
        get_codec(
            content_type=config.content_type,
            accept=config.accept,
            prediction_columns=config.prediction_columns,
            request_template=config.request_template,
            response_field=config.response_field,
        )
