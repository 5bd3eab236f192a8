"""airflow-provider-smrt: batch scoring of Parquet datasets against Amazon SageMaker endpoints.

Kept light: Airflow's provider discovery imports this package.
"""

from __future__ import annotations

__version__ = "0.1.0"
