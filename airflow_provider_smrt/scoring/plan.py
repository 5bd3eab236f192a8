"""The plan of a scoring run: inputs, columns, units and part names, and what a rerun finds done.

:func:`plan_scoring` reads the inputs' footers and the output's listing; the resulting
:class:`ScoringPlan` says which units are already done (``if_exists="resume"``), which parts of
earlier runs become stale, and which error parts are rewritten.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import orjson
import pyarrow as pa

from airflow_provider_smrt.exceptions import InputDataError, OutputError
from airflow_provider_smrt.s3 import ObjectInfo, basename, error_code, is_s3_client_error, join_uri
from airflow_provider_smrt.scoring.checkpoints import UnitCheckpoint, resolve_checkpoints
from airflow_provider_smrt.scoring.codecs import check_features_encodable
from airflow_provider_smrt.scoring.codecs.templates import RequestTemplateEncoder, template_columns
from airflow_provider_smrt.scoring.config import ScoringConfig
from airflow_provider_smrt.scoring.dataset import (
    InputFile,
    WorkUnit,
    check_schemas,
    plan_units,
    read_input_files,
    resolve_inputs,
)
from airflow_provider_smrt.scoring.sink import (
    ExistingPart,
    OutputState,
    config_hash,
    fingerprint,
    parse_part_name,
    part_name,
)
from airflow_provider_smrt.scoring.storage import Storage

__all__ = ["ScoringPlan", "plan_scoring"]

#: ``_manifest.json`` and the mapped tasks' ``_manifest-<map index>.json``.
_MANIFEST = re.compile(r"^_manifest(-\d+)?\.json$")


@dataclass(frozen=True)
class ScoringPlan:
    """What one run scores and where it writes it."""

    #: The input files, in order, with their Parquet footers.
    files: list[InputFile]
    #: Feature columns (sent to the endpoint), in request order.
    features: list[str]
    #: Pass-through columns (copied to the output).
    passthrough: list[str]
    passthrough_schema: pa.Schema
    #: The hash of everything that changes the parts' content (part names carry it).
    config_hash: str
    #: Every unit of every input, in input order.
    units: list[WorkUnit]
    #: The part name of each unit.
    names: dict[WorkUnit, str]
    #: Units whose part is already committed (resumed, not scored again).
    done: dict[WorkUnit, ExistingPart]
    #: Parts of these inputs that this plan does not write again: deleted after the run.
    stale: list[ExistingPart]
    #: Parts replaced in place (``if_exists="overwrite"``).
    replaced: int
    #: Part names whose existing error part is rewritten (or removed if the unit now has no errors).
    error_rewrites: set[str]
    #: Error parts without a data part that this plan does not write again: deleted after the run.
    stale_errors: list[str]
    #: Units not done that an earlier run checkpointed: their first rows are not scored again.
    checkpoints: dict[WorkUnit, UnitCheckpoint] = field(default_factory=dict)
    #: Checkpoint objects of these inputs that this plan does not resume from: deleted before the run.
    stale_checkpoints: list[str] = field(default_factory=list)
    #: Parts this task's previous manifest lists for inputs that are gone (and no other manifest of the
    #: output lists): deleted after the run.
    gone: list[ExistingPart] = field(default_factory=list)
    #: Every data part under the output before the run, this plan's finished ones first (e.g. to read
    #: the prediction schema when this run scores no row).
    existing: list[ExistingPart] = field(default_factory=list)

    @property
    def todo(self) -> list[WorkUnit]:
        """The units to score, in input order."""
        return [unit for unit in self.units if unit not in self.done]

    @property
    def rows_total(self) -> int:
        return sum(unit.num_rows for unit in self.units)

    @property
    def resumed_rows(self) -> int:
        """Rows of the units already done and of the checkpoints resumed from."""
        return sum(unit.num_rows for unit in self.done) + self.checkpointed_rows

    @property
    def checkpointed_rows(self) -> int:
        """Rows of the checkpoints resumed from (scored or failed)."""
        return sum(checkpoint.rows for checkpoint in self.checkpoints.values())


def check_locations(config: ScoringConfig) -> None:
    """Refuse an output inside an input (or the other way round)."""
    out = config.output_uri.rstrip("/") + "/"
    for uri in config.input_uris:
        base = uri.rstrip("/") + "/"
        if out.startswith(base) or base.startswith(out):
            raise OutputError(
                f"output_uri {config.output_uri!r} and input_uri {uri!r} overlap: write predictions to a "
                "location outside the input (and the input outside the output)"
            )


def plan_scoring(config: ScoringConfig, storage: Storage) -> ScoringPlan:
    """Plan a run of a validated ``config``: read the inputs' footers and what the output holds."""
    check_locations(config)
    try:
        infos = resolve_inputs(storage, config.input_uris)
    except InputDataError:
        if not config.allow_empty_input:
            raise
        infos = []
    files = read_input_files(storage, infos)
    feature_columns = config.feature_columns
    if feature_columns is None and config.request_template is not None:
        feature_columns = template_columns(config.request_template)  # send only what the template uses
    features, passthrough, schema = check_schemas(
        files, feature_columns=feature_columns, passthrough_columns=config.passthrough_columns
    )
    if files and config.encoder is None:  # a user encoder knows its own types
        check_features_encodable(pa.schema([schema.field(name) for name in features]), config.content_type)
    if config.request_template is not None:
        RequestTemplateEncoder(config.request_template).check_columns(features)
    chash = config_hash(config.hash_input(features, passthrough))
    units = [unit for file in files for unit in plan_units(file)]
    names = {unit: part_name(unit, fingerprint(unit.file, chash)) for unit in units}

    state = _load_output_state(storage, config.output_uri)
    if config.if_exists == "fail" and not state.is_empty:
        raise OutputError(
            f"output_uri {config.output_uri!r} is not empty and if_exists='fail': choose an empty location, "
            "or set if_exists='resume' (skip finished work) or 'overwrite'"
        )
    slugs = {file.slug for file in files}
    # A file's row-group selection (a shard) owns only the parts starting in its rows: the parts of
    # the file's other shards, which may be written at the same time, are neither stale nor orphans.
    by_slug = {file.slug: file for file in files}
    mine = [part for part in state.parts_of(slugs) if by_slug[part.slug].owns(part.start)]
    done: dict[WorkUnit, ExistingPart] = {}
    if config.if_exists == "resume":
        by_name = {part.name: part for part in mine}
        done = {unit: by_name[names[unit]] for unit in units if names[unit] in by_name}
    # Parts of these inputs that this plan does not write again (another input version, configuration
    # or unit plan) are stale: deleted once the run has committed its own. A part of the same name is
    # replaced in place by the new commit (S3 and rename are atomic), so a failed run keeps the old one.
    current = set(names.values())
    stale = [part for part in mine if part.name not in current]
    replaced = [part for part in mine if part.name in current and config.if_exists == "overwrite"]
    orphans = [  # error parts whose data part was never committed
        uri for uri in state.orphan_errors_of(slugs) if _owned_part(by_slug, basename(uri))
    ]
    orphan_names = {basename(uri) for uri in orphans}
    # Units about to be written whose name already has an error part: removed if they now have no errors.
    error_rewrites = {name for name in current if name in orphan_names}
    error_rewrites |= {part.name for part in replaced if part.error_uri}
    # Checkpoints: only of units scored again from where an earlier run left them (resume); every other
    # checkpoint of these inputs is stale (committed unit, another input version or configuration).
    resumable = {names[unit]: unit for unit in units if unit not in done} if config.if_exists == "resume" else {}
    checkpoints, stale_checkpoints = resolve_checkpoints(storage, state.checkpoints_of(slugs), resumable)
    passthrough_schema = pa.schema([schema.field(name) for name in passthrough]) if files else pa.schema([])
    gone = _gone_parts(storage, config, state, inputs={file.uri for file in files}, current=current)
    return ScoringPlan(
        files=files,
        features=features,
        passthrough=passthrough,
        passthrough_schema=passthrough_schema,
        config_hash=chash,
        units=units,
        names=names,
        done=done,
        stale=stale,
        replaced=len(replaced),
        error_rewrites=error_rewrites,
        stale_errors=[uri for uri in orphans if basename(uri) not in current],
        checkpoints=checkpoints,
        stale_checkpoints=stale_checkpoints,
        gone=gone,
        existing=list(done.values()) + [part for part in state.parts.values() if part not in done.values()],
    )


def _gone_parts(
    storage: Storage, config: ScoringConfig, state: OutputState, *, inputs: set[str], current: set[str]
) -> list[ExistingPart]:
    """Parts this task's previous manifest lists for inputs no longer among its inputs.

    Only this task's own manifest (``config.manifest_name``) decides, so mapped tasks sharing an output
    never delete each other's parts; a part that another manifest of the output lists is kept too.
    """
    own = join_uri(config.output_uri, config.manifest_name)
    manifests = [info for info in state.others if _MANIFEST.match(basename(info.uri))]
    previous = next((info for info in state.others if info.uri == own), None)
    if previous is None:
        return []
    named = {str(part.get("name")) for part in _manifest_parts(storage, previous) if part.get("input") not in inputs}
    named -= current
    if not named:
        return []
    for other in manifests:
        if other.uri != own:
            named -= {str(part.get("name")) for part in _manifest_parts(storage, other)}
    return [state.parts[name] for name in sorted(named) if name in state.parts]


def _manifest_parts(storage: Storage, info: ObjectInfo) -> list[dict[str, object]]:
    """The ``parts`` of a manifest (none if it cannot be read: it is rewritten at the end of the run)."""
    try:
        parts = orjson.loads(storage.read_bytes(info.uri)).get("parts")
    except (OSError, ValueError, AttributeError):
        return []
    return [part for part in parts if isinstance(part, dict)] if isinstance(parts, list) else []


def _load_output_state(storage: Storage, output_uri: str) -> OutputState:
    try:
        return OutputState.load(storage, output_uri)
    except Exception as err:
        if not is_s3_client_error(err):
            raise
        code = error_code(err) or type(err).__name__
        raise OutputError(
            f"cannot list output_uri {output_uri!r} ({code}): check that the bucket exists and that the "
            "connection's identity may s3:ListBucket on it"
        ) from err


def _owned_part(files_by_slug: dict[str, InputFile], name: str) -> bool:
    """Whether the part (or error part) called ``name`` belongs to one of these inputs' selections."""
    parsed = parse_part_name(name)
    return parsed is not None and parsed[0] in files_by_slug and files_by_slug[parsed[0]].owns(parsed[1])
