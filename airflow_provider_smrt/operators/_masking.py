"""Keep sensitive template fields (CustomAttributes) out of logs and of the UI's rendered fields."""

from __future__ import annotations

from typing import Any, ClassVar


class MaskSensitiveFieldsMixin:
    """After templates are rendered, register the sensitive fields' values with Airflow's secrets masker.

    Airflow redacts registered values from task logs and from the rendered template fields it sends
    to the API server (shown in the UI), so a templated CustomAttributes value never appears there.
    """

    sensitive_fields: ClassVar[tuple[str, ...]] = ("custom_attributes",)

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        super().render_template_fields(context, jinja_env)  # type: ignore[misc]
        mask_values(getattr(self, name, None) for name in self.sensitive_fields)


def mask_values(values: Any) -> None:
    from airflow_provider_smrt._compat import mask_secret

    for value in values:
        if isinstance(value, str) and value:
            mask_secret(value)
