"""Imports whose home moved between Airflow 3.0 and the newest 3.x; one place for the fallbacks.

The newest location is tried first (and is what type checkers see); the old one serves Airflow 3.0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow.sdk.configuration import conf
    from airflow.sdk.exceptions import AirflowFailException, AirflowSensorTimeout
    from airflow.sdk.log import mask_secret
else:
    try:
        from airflow.sdk.configuration import conf
    except ImportError:  # Airflow < 3.1
        from airflow.configuration import conf

    try:
        from airflow.sdk.exceptions import AirflowSensorTimeout
    except ImportError:  # Airflow < 3.1: the task runner catches the core class
        from airflow.exceptions import AirflowSensorTimeout

    try:
        from airflow.sdk.exceptions import AirflowFailException
    except ImportError:  # Airflow < 3.1: the task runner catches the core class
        from airflow.exceptions import AirflowFailException

    try:
        from airflow.sdk.log import mask_secret
    except ImportError:  # Airflow < 3.1
        from airflow.sdk.execution_time.secrets_masker import mask_secret

__all__ = ["AirflowFailException", "AirflowSensorTimeout", "conf", "mask_secret"]
