"""The local stack: moto's S3 server plus a SageMaker Runtime endpoint speaking the real wire protocol.

Nothing else in :mod:`airflow_provider_smrt` imports this package; it exists so that the example
DAGs, the tests and the benchmarks run with no AWS account. Start it with ``smrt-local up`` or
``smrt-local run -- CMD``, or in Python with :class:`airflow_provider_smrt.local.stack.LocalStack`.
"""

from __future__ import annotations
