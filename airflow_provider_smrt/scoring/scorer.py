"""Scoring one task's requests: the call with its retries, bisection of rows the model rejects, the
targets of ``compare_targets``, rows over the payload limit, decoding, and the error budget.

A :class:`RequestScorer` is shared by the pipeline's workers; each worker calls :meth:`RequestScorer.score`
for the requests of the task it holds. Airflow-free: the caller passes ``invoke(body) -> result`` callables.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol, cast

import pyarrow as pa

from airflow_provider_smrt.exceptions import (
    InvocationError,
    ModelError,
    ModelInputError,
    ModelServerError,
    PredictionCountMismatchError,
    ScoringCancelledError,
)
from airflow_provider_smrt.retry import RetryPolicy
from airflow_provider_smrt.scoring.batching import Request
from airflow_provider_smrt.scoring.codecs import Codec
from airflow_provider_smrt.scoring.compare import CompareStats, TargetErrors, TargetSchemas, merge_targets
from airflow_provider_smrt.scoring.coordinator import Coordinator
from airflow_provider_smrt.scoring.inference_ids import inference_id
from airflow_provider_smrt.scoring.limiter import AdaptiveLimiter
from airflow_provider_smrt.scoring.stats import RunStats
from airflow_provider_smrt.scoring.tasks import Piece, RowErrors, Task

__all__ = [
    "BISECT_SERVER_ERROR_ATTEMPTS",
    "IdentifyingInvoker",
    "InvokeResult",
    "Invoker",
    "RequestScorer",
    "isolates_rows",
]

log = logging.getLogger(__name__)

#: Attempts of a sub-request of a bisection that fails with a container 5xx (ModelServerError): the
#: request it was cut from already failed after the full retry policy, so a 5xx here most likely
#: means a poison row, and one retry is enough to tell a transient failure from it. Every other
#: retryable error (throttling, service 5xx, transport) keeps the full policy.
BISECT_SERVER_ERROR_ATTEMPTS = 2


def isolates_rows(err: InvocationError) -> bool:
    """True for a failure bisection can pin to rows: a ModelError, unless the container answered 429.

    The container failed on what it was sent (4xx), or crashed on it (5xx: many model servers answer
    500 for any unhandled exception); a 429 means it is overloaded, which is about load, not rows.
    Throttling, service 5xx and transport errors are about the endpoint: they fail the task once the
    retry policy gives up.
    """
    return isinstance(err, ModelError) and err.original_status_code != 429


def _give_up_bisecting(err: InvocationError, attempt: int) -> bool:
    return isinstance(err, ModelServerError) and isolates_rows(err) and attempt >= BISECT_SERVER_ERROR_ATTEMPTS


class InvokeResult(Protocol):
    """What the core needs of an InvokeEndpoint response."""

    @property
    def body(self) -> bytes: ...

    @property
    def invoked_production_variant(self) -> str | None: ...


#: ``invoke(body) -> result``: one InvokeEndpoint attempt per call.
Invoker = Callable[[bytes], InvokeResult]


class IdentifyingInvoker(Protocol):
    """An invoker that also sends the request's InferenceId (the hook's ``make_invoker`` returns one)."""

    def __call__(self, body: bytes, inference_id: str | None = None) -> InvokeResult: ...


class RequestScorer:
    """Scores the requests of tasks at the endpoint (or every ``compare_targets`` target); see
    :class:`~airflow_provider_smrt.scoring.pipeline.Pipeline` for the parameters."""

    def __init__(
        self,
        *,
        invoke: Invoker,
        codec: Codec,
        retry_policy: RetryPolicy,
        stats: RunStats,
        coordinator: Coordinator,
        limiter: AdaptiveLimiter,
        endpoint_name: str | None = None,
        variant_column: str | None = None,
        inference_id_prefix: str | None = None,
        max_failed_rows: float | None = None,
        budget_error: Callable[[int, InvocationError], BaseException] | None = None,
        fallback_schema: Callable[[], pa.Schema | None] | None = None,
        oversize_invoke: Invoker | None = None,
        targets: list[tuple[str, Invoker]] | None = None,
        compare_stats: CompareStats | None = None,
    ) -> None:
        self.invoke = invoke
        self.codec = codec
        self.retry_policy = retry_policy
        self.stats = stats
        self.coordinator = coordinator
        self.limiter = limiter
        self.endpoint_name = endpoint_name
        self.inference_id_prefix = inference_id_prefix
        self.oversize_invoke = oversize_invoke
        self.targets = targets or None
        self.compare_stats = compare_stats
        if self.targets is not None and self.compare_stats is None:
            self.compare_stats = CompareStats(
                names=tuple(name for name, _ in self.targets), variant_column=variant_column
            )
        #: Each target's prediction schema, for its null rows in requests it fails entirely.
        self._target_schemas = TargetSchemas(
            [name for name, _ in self.targets or []], existing=fallback_schema, variant_column=variant_column
        )
        self._variant_column = variant_column
        #: Rows isolated into ``_errors/`` in this run, by error class (logged as they happen).
        self._isolated: dict[str, int] = {}
        self._isolated_lock = threading.Lock()
        self.max_failed_rows = max_failed_rows
        self._budget_error = budget_error
        self._failed_lock = threading.Lock()
        self._failed_rows = stats.rows_failed  # rows failed so far, counted as they fail

    def score(self, task: Task, requests: Sequence[Request]) -> tuple[list[Piece], RowErrors, TargetErrors]:
        """Score the requests of a task: its pieces, its failed rows, and (with targets) each target's."""
        pieces: list[Piece] = []
        errors: RowErrors = []
        target_errors: TargetErrors = []
        for request in requests:
            if request.oversize:
                more_pieces, more_errors = self._score_oversize(task, request.offset, request.body)
            elif self.targets is not None:
                more_pieces, more_target_errors = self._score_targets(
                    task, request.offset, request.num_rows, request.body
                )
                pieces += more_pieces
                target_errors += more_target_errors
                continue
            else:
                more_pieces, more_errors = self._score(task, request.offset, request.num_rows, request.body)
            pieces += more_pieces
            errors += more_errors
        return pieces, errors, target_errors

    def _on_retry(self, err: InvocationError, attempt: int, delay: float) -> None:
        self.stats.add(retries=1, throttles=1 if err.throttled else 0)
        if err.throttled:
            self.limiter.on_throttle()
            log.debug("retrying after %s (attempt %d, sleeping %.2fs)", err.code, attempt, delay)
        else:  # the class and code only: a container's message may quote the payload
            log.info("retrying after %s %s (attempt %d, sleeping %.2fs)", type(err).__name__, err.code, attempt, delay)

    @property
    def isolated(self) -> dict[str, int]:
        """Rows isolated into ``_errors/`` so far, by error class."""
        with self._isolated_lock:
            return dict(self._isolated)

    def _log_isolated(self, task: Task, offset: int, err: Exception) -> None:
        """One info line per isolated row; one warning per distinct error class, with the rows so far."""
        name = type(err).__name__
        with self._isolated_lock:
            self._isolated[name] = seen = self._isolated.get(name, 0) + 1
        row = task.unit.start + task.offset + offset  # the row's number in its file
        log.info("row %d of %s isolated into _errors/ (%s)", row, task.unit.file.uri, name)
        if seen == 1:
            log.warning("rows failing with %s are isolated into _errors/ (%d row(s) so far)", name, seen)

    def _count_failed(self, rows: int, err: InvocationError) -> None:
        """Count rows that failed; past the error budget, stop the run (no request is sent after this)."""
        with self._failed_lock:
            self._failed_rows += rows
            failed = self._failed_rows
        if self.max_failed_rows is not None and failed > self.max_failed_rows:
            if self._budget_error is not None:
                self.coordinator.fail(self._budget_error(failed, err))
            else:
                self.coordinator.cancel("the error budget is spent")

    def _call(
        self, body: bytes, request_id: str | None, invoke: Invoker | None = None, target: str | None = None
    ) -> InvokeResult:
        """One HTTP call (one attempt of a request), counted with its bytes and latency (and target)."""
        invoke = invoke or self.invoke
        started = time.monotonic()
        try:
            if request_id is None:
                result = invoke(body)
            else:
                result = cast(IdentifyingInvoker, invoke)(body, inference_id=request_id)
        except BaseException:
            self.stats.record_call(
                variant=None, sent=len(body), received=0, started=started, ended=time.monotonic(), target=target
            )
            raise
        self.stats.record_call(
            variant=result.invoked_production_variant,
            sent=len(body),
            received=len(result.body),
            started=started,
            ended=time.monotonic(),
            target=target,
        )
        return result

    def _score_targets(self, task: Task, offset: int, count: int, body: bytes) -> tuple[list[Piece], TargetErrors]:
        """Score rows ``[offset, offset+count)`` of a task at every target: the merged pieces and the errors
        of each target; the error budget counts each failed row once."""
        assert self.targets is not None and self.compare_stats is not None
        results = [
            self._score(task, offset, count, body, invoke=invoke, target=name, count_failures=False)
            for name, invoke in self.targets
        ]
        schemas = self._target_schemas.known()
        pieces, errors, learned = merge_targets(
            num_rows=count,
            names=[name for name, _ in self.targets],
            results=results,
            schemas=schemas,
            variant_column=self._variant_column,
        )
        self._target_schemas.learn(schemas, learned)
        failed_rows: set[int] = set()
        for error_offset, error_count, _, _ in errors:
            failed_rows.update(range(error_offset, error_offset + error_count))
        if failed_rows:
            self._count_failed(len(failed_rows), errors[-1][2])
        return pieces, errors

    def _score_oversize(self, task: Task, offset: int, body: bytes) -> tuple[list[Piece], RowErrors]:
        """Score one row over the payload limit through ``oversize_invoke`` (no in-flight slot: another endpoint)."""
        assert self.oversize_invoke is not None  # the planner flags rows only when there is one
        self.stats.add(requests=1, rows_async=1)
        try:
            result = self.retry_policy.call(
                lambda: self.oversize_invoke(body),  # type: ignore[misc]
                endpoint_name=self.endpoint_name,
                on_retry=self._on_retry,
                cancel=self.coordinator.stop,
            )
        except ModelInputError as err:
            self._count_failed(1, err)
            return [], [(offset, 1, err)]
        return [self._decode(task, offset, 1, result)], []

    def _score(
        self,
        task: Task,
        offset: int,
        count: int,
        body: bytes,
        *,
        bisecting: bool = False,
        invoke: Invoker | None = None,
        target: str | None = None,
        count_failures: bool = True,
    ) -> tuple[list[Piece], RowErrors]:
        """Score rows ``[offset, offset+count)`` of a task; bisect if the model fails on them.

        The in-flight slot is held for the call (with its retries) only: encoding and decoding happen
        outside it. Bisection goes depth first, left half first, so single failing rows are found (and
        counted against the error budget) after the fewest requests; every request checks the stop
        event first, so a spent budget ends a bisection at once.
        """
        if self.coordinator.stop.is_set() or not self.limiter.acquire(self.coordinator.stop):
            raise ScoringCancelledError("scoring stopped")
        failed: InvocationError | None = None
        request_id = (
            None
            if self.inference_id_prefix is None
            else inference_id(self.inference_id_prefix, task.unit, task.offset + offset, count)
        )
        try:
            self.stats.add(requests=1)
            result = self.retry_policy.call(
                lambda: self._call(body, request_id, invoke, target),
                endpoint_name=self.endpoint_name,
                on_retry=self._on_retry,
                cancel=self.coordinator.stop,
                give_up=_give_up_bisecting if bisecting else None,
            )
        except ModelError as err:
            if not isolates_rows(err) or self.coordinator.stop.is_set():
                raise
            failed = err
        finally:
            self.limiter.release()
        if failed is not None:
            if count == 1:
                if count_failures:
                    self._count_failed(1, failed)
                self._log_isolated(task, offset, failed)
                return [], [(offset, 1, failed)]
            log.info(
                "%s on rows %d-%d of %s: splitting the request to isolate the failing rows",
                type(failed).__name__,
                task.unit.start + task.offset + offset,
                task.unit.start + task.offset + offset + count - 1,
                task.unit.file.uri,
            )
            self.stats.add(bisections=1)
            half = count // 2
            left_body = self.codec.encode(task.features.slice(offset, half))
            left = self._score(
                task,
                offset,
                half,
                left_body,
                bisecting=True,
                invoke=invoke,
                target=target,
                count_failures=count_failures,
            )
            right_body = self.codec.encode(task.features.slice(offset + half, count - half))
            right = self._score(
                task,
                offset + half,
                count - half,
                right_body,
                bisecting=True,
                invoke=invoke,
                target=target,
                count_failures=count_failures,
            )
            return left[0] + right[0], left[1] + right[1]
        self.limiter.on_success()
        return [self._decode(task, offset, count, result)], []

    def _decode(self, task: Task, offset: int, count: int, result: InvokeResult) -> Piece:
        """The predictions of rows ``[offset, offset+count)`` of a task from the endpoint's answer."""
        try:
            predictions = self.codec.decode(result.body, num_rows=count, content_type=None)
        except PredictionCountMismatchError as err:
            raise PredictionCountMismatchError(
                f"{task.unit.describe(task.offset + offset, count)}: {err} (endpoint {self.endpoint_name!r}); "
                "the model must return one prediction per input row: check the model's input/output format, "
                "content_type/accept and the decoder"
            ) from err
        if predictions.num_rows != count:
            raise PredictionCountMismatchError(
                f"{task.unit.describe(task.offset + offset, count)}: the endpoint returned {predictions.num_rows} "
                f"predictions for {count} rows: the model must return one prediction per input row"
            )
        return Piece(offset, predictions, result.invoked_production_variant)
