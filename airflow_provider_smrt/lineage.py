"""OpenLineage facets of the operators: input and output datasets with their schemas.

The operators record what they learnt while running (:class:`RunLineage`: the inputs with the
scored and pass-through columns and their Parquet types, the output with its pass-through and
prediction columns) and turn it into an ``OperatorLineage`` in ``get_openlineage_facets_on_complete``.

Dataset identities follow OpenLineage's naming (and Airflow's conversion of S3 assets): an S3 object
or prefix is namespace ``s3://BUCKET``, name the key or prefix (``/`` for a whole bucket); a local
path is namespace ``file``, name the absolute path.

The OpenLineage classes are imported only when facets are built, from the OpenLineage provider
(``apache-airflow-providers-openlineage``) and the common-compat provider; without them
:func:`to_operator_lineage` returns None and nothing else changes. This module never reads a cell
value: schemas come from Parquet footers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from airflow_provider_smrt.async_inference.results import read_records, read_results
from airflow_provider_smrt.s3 import ObjectInfo, is_s3, join_uri, split_s3

if TYPE_CHECKING:
    from airflow_provider_smrt.scoring.job import ScoringJob

log = logging.getLogger(__name__)

__all__ = [
    "LineageDataset",
    "RunLineage",
    "async_run_lineage",
    "dataset_identity",
    "scoring_run_lineage",
    "to_operator_lineage",
]


def dataset_identity(uri: str) -> tuple[str, str]:
    """(namespace, name) of an S3 object or prefix (``s3://bucket``, key) or a local path (``file``, absolute path)."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        return f"s3://{bucket}", key or "/"
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    return "file", os.path.abspath(uri) + ("/" if uri.endswith("/") and len(uri) > 1 else "")


@dataclass(frozen=True)
class LineageDataset:
    """One dataset: its URI, and its columns as (name, type) pairs (empty when unknown).

    :param row_count: rows written (outputs only), if known.
    """

    uri: str
    fields: tuple[tuple[str, str], ...] = ()
    row_count: int | None = None

    @property
    def namespace(self) -> str:
        return dataset_identity(self.uri)[0]

    @property
    def name(self) -> str:
        return dataset_identity(self.uri)[1]


@dataclass(frozen=True)
class RunLineage:
    """What one operator run read and wrote."""

    inputs: tuple[LineageDataset, ...] = ()
    outputs: tuple[LineageDataset, ...] = ()
    #: Plain JSON for XCom-free inspection and tests.
    extra: dict[str, Any] = field(default_factory=dict)


def _fields(schema: pa.Schema, names: Iterable[str]) -> tuple[tuple[str, str], ...]:
    return tuple((name, str(schema.field(name).type)) for name in names if schema.get_field_index(name) >= 0)


def scoring_run_lineage(job: ScoringJob, summary: dict[str, Any] | None = None) -> RunLineage:
    """The lineage of a finished :class:`~airflow_provider_smrt.scoring.job.ScoringJob` run.

    Inputs are the ``input_uri`` entries as given (an object, a prefix or a local path), each with the
    feature and pass-through columns and their types from the inputs' Parquet schema. The output is
    ``output_uri`` with the columns of the Parquet parts written (pass-through, then predictions),
    read from one part's footer.

    Reads the job's public :attr:`~airflow_provider_smrt.scoring.job.ScoringJob.last_plan`, ``config``
    and ``storage``.

    :param summary: the run's summary, for the output's row count.
    :raises ValueError: the job has not run.
    """
    plan = job.last_plan
    if plan is None:
        raise ValueError("the scoring job has not run: there is no lineage yet")
    config = job.config
    uris = config.input_uris
    reference = next((file for file in plan.files if file.num_rows > 0), plan.files[0] if plan.files else None)
    input_fields: tuple[tuple[str, str], ...] = ()
    if reference is not None:
        input_fields = _fields(reference.schema, [*plan.features, *plan.passthrough])
    output_fields = _output_fields(job, [plan.names[unit] for unit in plan.units])
    if not output_fields:  # nothing written: what is known before the first prediction
        output_fields = _fields(plan.passthrough_schema, plan.passthrough) + tuple(
            (name, "") for name in (config.prediction_columns or [])
        )
    rows = summary.get("rows_scored") if summary else None
    return RunLineage(
        inputs=tuple(LineageDataset(uri=uri, fields=input_fields) for uri in uris),
        outputs=(LineageDataset(uri=config.output_uri, fields=output_fields, row_count=rows),),
        extra={
            "feature_columns": list(plan.features),
            "passthrough_columns": list(plan.passthrough),
            "input_files": [file.uri for file in plan.files],
        },
    )


def _output_fields(job: ScoringJob, part_names: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """The columns of the first readable data part (its Parquet footer only)."""
    for name in part_names:
        uri = join_uri(job.config.output_uri, name)
        try:
            with job.storage.open_read(ObjectInfo(uri=uri, size=0)) as handle:
                schema = pq.ParquetFile(handle).schema_arrow
        except (OSError, pa.ArrowException) as err:
            log.debug("lineage: cannot read the schema of %s (%s)", uri, type(err).__name__)
            continue
        if len(schema):
            return _fields(schema, schema.names)
    return ()


def async_run_lineage(records: Sequence[dict[str, Any]]) -> RunLineage:
    """The lineage of async invocations: their S3 input objects and the output objects that were written.

    :param records: the operator's records (``input``, ``output_location``, optionally ``status``).
    """
    inputs = []
    outputs = []
    for record in records:
        source = record.get("input")
        if isinstance(source, str) and is_s3(source):
            inputs.append(LineageDataset(uri=source))
        output = record.get("output_location")
        if isinstance(output, str) and is_s3(output) and record.get("status") in (None, "succeeded"):
            outputs.append(LineageDataset(uri=output))
    return RunLineage(inputs=tuple(_unique(inputs)), outputs=tuple(_unique(outputs)))


def _unique(datasets: Iterable[LineageDataset]) -> list[LineageDataset]:
    seen: dict[str, LineageDataset] = {}
    for dataset in datasets:
        seen.setdefault(dataset.uri, dataset)
    return list(seen.values())


def _openlineage_classes() -> dict[str, Any] | None:
    """The OpenLineage classes, or None when the OpenLineage provider is not installed."""
    try:
        from airflow.providers.openlineage.extractors import OperatorLineage
    except ImportError:
        return None
    try:
        from airflow.providers.common.compat.openlineage.facet import (
            Dataset,
            OutputDataset,
            OutputStatisticsOutputDatasetFacet,
            SchemaDatasetFacet,
            SchemaDatasetFacetFields,
        )
    except ImportError:
        try:
            from openlineage.client.generated.base import Dataset, OutputDataset
            from openlineage.client.generated.output_statistics_output_dataset import (
                OutputStatisticsOutputDatasetFacet,
            )
            from openlineage.client.generated.schema_dataset import SchemaDatasetFacet, SchemaDatasetFacetFields
        except ImportError:
            return None
    return {
        "OperatorLineage": OperatorLineage,
        "Dataset": Dataset,
        "OutputDataset": OutputDataset,
        "OutputStatisticsOutputDatasetFacet": OutputStatisticsOutputDatasetFacet,
        "SchemaDatasetFacet": SchemaDatasetFacet,
        "SchemaDatasetFacetFields": SchemaDatasetFacetFields,
    }


def to_operator_lineage(lineage: RunLineage | None) -> Any:
    """An ``OperatorLineage`` for ``lineage`` (empty when None), or None without OpenLineage installed."""
    ol = _openlineage_classes()
    if ol is None:
        return None
    if lineage is None:
        return ol["OperatorLineage"]()

    def facets(dataset: LineageDataset) -> dict[str, Any]:
        if not dataset.fields:
            return {}
        schema_fields = [ol["SchemaDatasetFacetFields"](name=name, type=kind or None) for name, kind in dataset.fields]
        return {"schema": ol["SchemaDatasetFacet"](fields=schema_fields)}

    inputs = [ol["Dataset"](namespace=d.namespace, name=d.name, facets=facets(d)) for d in lineage.inputs]
    outputs = []
    for dataset in lineage.outputs:
        output_facets = {}
        if dataset.row_count is not None:
            output_facets["outputStatistics"] = ol["OutputStatisticsOutputDatasetFacet"](rowCount=dataset.row_count)
        outputs.append(
            ol["OutputDataset"](
                namespace=dataset.namespace, name=dataset.name, facets=facets(dataset), outputFacets=output_facets
            )
        )
    return ol["OperatorLineage"](inputs=inputs, outputs=outputs)


def async_lineage_after_wait(s3_client: Any, summary: dict[str, Any]) -> RunLineage | None:
    """The lineage of an invoke operator's run once its trigger fired (the summary it resumed with): the
    records read from the ledger; statuses polled only when some failures are not among the first ones named."""
    if not summary.get("ledger_uri") and not summary.get("invocations"):
        return None
    failed = int(summary.get("failed") or 0)
    if failed > len(summary.get("first_failures") or []):
        return async_run_lineage(read_results(s3_client, summary))
    known = {entry.get("input") for entry in summary.get("first_failures") or []}
    records = read_records(s3_client, summary)
    return async_run_lineage(
        [{**record, "status": "failed" if record["input"] in known else "succeeded"} for record in records]
    )
