"""The models a local endpoint can host: ``diabetes`` (the demo), ``sum``, ``constant``, ``llm`` and ``forward``.

Every model has ``predict(body, content_type, accept, ...) -> Prediction`` and raises
:class:`ModelFailure` (the status and message a model container would answer) when it cannot.
"""

from __future__ import annotations

import http.client
import importlib.util
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np
import orjson

from airflow_provider_smrt.local import tabular

#: The diabetes dataset's feature columns, in order.
DIABETES_FEATURES = ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")
SUM_OUTPUTS = ("sum", "mean", "max", "count")


class ModelFailure(Exception):
    """The model answered with a 4xx/5xx (surfaces as a ModelError with ``OriginalStatusCode``)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Prediction:
    """A model's answer: the body, its content type, the rows predicted (0 if unknown), echoed attributes."""

    body: bytes
    content_type: str
    rows: int
    custom_attributes: str | None = None


#: Called with the decoded feature matrix before the model computes (fault injection: poison rows).
Inspector = Callable[[np.ndarray], None]


class Model(Protocol):
    """What an endpoint calls."""

    def predict(
        self,
        body: bytes,
        content_type: str | None,
        accept: str | None,
        *,
        headers: dict[str, str] | None = None,
        inspect: Inspector | None = None,
    ) -> Prediction:
        """Predict; raise :class:`ModelFailure` on a model-side error."""
        ...


def _tabular_types(content_type: str | None, accept: str | None) -> tuple[str, str]:
    """The request's and the response's media types for the tabular models (the response's defaults to
    the request's); an unsupported one is a PayloadError with the container's 415 or 406."""
    ctype = tabular.media_type(content_type, default=tabular.CSV)
    out_type = tabular.media_type(accept, default=ctype)
    if ctype not in tabular.SUPPORTED:
        raise tabular.PayloadError(f"unsupported content type {ctype!r}", status=415)
    if out_type not in tabular.SUPPORTED:
        raise tabular.PayloadError(f"unsupported accept {out_type!r}", status=406)
    return ctype, out_type


class TabularModel:
    """Base of the built-in models: decode rows, compute a rows x outputs matrix, encode per Accept."""

    output_names: tuple[str, ...] = ("prediction",)

    def compute(self, features: np.ndarray) -> np.ndarray:
        """Return a rows x len(output_names) matrix."""
        raise NotImplementedError

    def predict(
        self,
        body: bytes,
        content_type: str | None,
        accept: str | None,
        *,
        headers: dict[str, str] | None = None,
        inspect: Inspector | None = None,
    ) -> Prediction:
        """Decode, inspect, compute and encode; payload problems become 4xx model failures."""
        try:
            ctype, out_type = _tabular_types(content_type, accept)
            features = tabular.decode(body, ctype)
            if inspect is not None:
                inspect(features)
            values = self.compute(features)
            encoded = tabular.encode(values, self.output_names, out_type)
        except tabular.PayloadError as err:
            raise ModelFailure(err.status, str(err)) from err
        custom = (headers or {}).get("X-Amzn-SageMaker-Custom-Attributes")
        return Prediction(body=encoded, content_type=out_type, rows=int(features.shape[0]), custom_attributes=custom)


@lru_cache(maxsize=1)
def diabetes_dataset() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled diabetes data, exactly as ``load_diabetes()`` returns it (scaled), and the target.

    Read from the files shipped inside the scikit-learn package (no download) without importing scikit-learn,
    whose import costs seconds at start-up.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise RuntimeError("the diabetes demo needs scikit-learn (pip install 'airflow-provider-smrt[local]')")
    data_dir = Path(spec.origin).parent / "datasets" / "data"
    raw = np.loadtxt(data_dir / "diabetes_data_raw.csv.gz")
    target = np.loadtxt(data_dir / "diabetes_target.csv.gz")
    scaled = (raw - raw.mean(axis=0)) / raw.std(axis=0)
    scaled /= np.sqrt(scaled.shape[0])
    return scaled, target


@lru_cache(maxsize=1)
def diabetes_coefficients() -> tuple[np.ndarray, float]:
    """Fit ordinary least squares (with intercept) on the diabetes data; returns (coefficients, intercept)."""
    data, target = diabetes_dataset()
    design = np.column_stack([np.ones(len(data)), data])
    solution, *_ = np.linalg.lstsq(design, target, rcond=None)
    return solution[1:].copy(), float(solution[0])


class DiabetesModel(TabularModel):
    """The demo: a linear regression on the diabetes dataset's 10 features (age, sex, bmi, bp, s1..s6)."""

    output_names = ("prediction",)

    def __init__(self) -> None:
        self.coef, self.intercept = diabetes_coefficients()

    def compute(self, features: np.ndarray) -> np.ndarray:
        """Predict disease progression; exactly 10 non-null features per row."""
        expected = len(DIABETES_FEATURES)
        if features.shape[1] != expected:
            raise tabular.PayloadError(
                f"expected {expected} features ({', '.join(DIABETES_FEATURES)}), got {features.shape[1]}"
            )
        missing = np.isnan(features).any(axis=1)
        if missing.any():
            raise tabular.PayloadError(f"{int(missing.sum())} rows have a missing feature value")
        predictions: np.ndarray = (features @ self.coef + self.intercept).reshape(-1, 1)
        return predictions


class SumModel(TabularModel):
    """Any number of numeric features; outputs per row among sum, mean, max, count (nulls count as 0)."""

    def __init__(self, *, outputs: Sequence[str] = ("sum",)) -> None:
        unknown = [name for name in outputs if name not in SUM_OUTPUTS]
        if not outputs or unknown:
            raise ValueError(f"outputs must be a non-empty list of {', '.join(SUM_OUTPUTS)}; got {list(outputs)}")
        self.output_names = tuple(outputs)

    def compute(self, features: np.ndarray) -> np.ndarray:
        """One column per output, in the order asked."""
        filled = np.nan_to_num(features, nan=0.0)
        width = features.shape[1]
        columns = {
            "sum": lambda: filled.sum(axis=1),
            "mean": lambda: filled.mean(axis=1) if width else np.zeros(len(filled)),
            "max": lambda: filled.max(axis=1) if width else np.zeros(len(filled)),
            "count": lambda: np.full(len(filled), float(width)),
        }
        return np.column_stack([columns[name]() for name in self.output_names])


class ConstantModel:
    """One constant prediction per row, without parsing the features: for benchmarks of the client.

    A real endpoint's CPU is not on the client's machine; on the local stack it is. This model counts
    the rows of a ``text/csv`` or ``application/jsonlines`` body by its lines (``application/json``:
    the length of ``instances``) and answers ``value`` for each, so the server's CPU per request is
    little more than its HTTP handling. Nothing is validated: use ``sum`` to check what is sent.
    """

    def __init__(self, *, value: float = 0.0) -> None:
        self.value = value

    def predict(
        self,
        body: bytes,
        content_type: str | None,
        accept: str | None,
        *,
        headers: dict[str, str] | None = None,
        inspect: Inspector | None = None,
    ) -> Prediction:
        """Count the rows and answer the constant for each (``inspect`` does not apply: nothing is parsed)."""
        try:
            ctype, out_type = _tabular_types(content_type, accept)
            if ctype == tabular.JSON:
                doc = tabular._loads(body)
                rows = len(doc.get("instances", ()) if isinstance(doc, dict) else doc)
            else:
                rows = body.count(b"\n") + (0 if not body or body.endswith(b"\n") else 1)
            if rows == 0:
                raise tabular.PayloadError("the payload holds no rows")
            encoded = tabular.encode(np.full((rows, 1), self.value), ("prediction",), out_type)
        except tabular.PayloadError as err:
            raise ModelFailure(err.status, str(err)) from err
        custom = (headers or {}).get("X-Amzn-SageMaker-Custom-Attributes")
        return Prediction(body=encoded, content_type=out_type, rows=rows, custom_attributes=custom)


class LlmModel:
    """A stand-in for a text-generation container (Hugging Face TGI style), deterministic and cheap.

    Request: ``{"inputs": "<prompt>", "parameters": {...}}`` (``application/json``); ``inputs`` may also
    be a list of prompts. Response: ``[{"generated_text": "..."}]``, one object per prompt, where the
    text is ``"<n> words: "`` followed by the prompt's words in reverse order; ``parameters.max_new_tokens``
    keeps at most that many of those words. A malformed request is a 400 model failure.
    """

    def predict(
        self,
        body: bytes,
        content_type: str | None,
        accept: str | None,
        *,
        headers: dict[str, str] | None = None,
        inspect: Inspector | None = None,
    ) -> Prediction:
        """Generate one text per prompt; ``inspect`` (numeric poison rows) does not apply to text."""
        ctype = tabular.media_type(content_type, default=tabular.JSON)
        if ctype != tabular.JSON:
            raise ModelFailure(415, f"unsupported content type {ctype!r}; the llm model takes application/json")
        out_type = tabular.media_type(accept, default=tabular.JSON)
        if out_type != tabular.JSON:
            raise ModelFailure(406, f"unsupported accept {out_type!r}; the llm model answers application/json")
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError as err:
            raise ModelFailure(400, f"the request is not valid JSON (error at byte {err.pos})") from err
        if not isinstance(request, dict) or "inputs" not in request:
            raise ModelFailure(400, 'expected a JSON object {"inputs": "<prompt>", "parameters": {...}}')
        prompts = request["inputs"]
        prompts = [prompts] if isinstance(prompts, str) else prompts
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise ModelFailure(400, '"inputs" must be a string or a list of strings')
        parameters = request.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise ModelFailure(400, '"parameters" must be an object')
        limit = parameters.get("max_new_tokens")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ModelFailure(400, '"parameters.max_new_tokens" must be a positive integer')
        answers = [{"generated_text": generate_text(prompt, max_new_tokens=limit)} for prompt in prompts]
        custom = (headers or {}).get("X-Amzn-SageMaker-Custom-Attributes")
        return Prediction(
            body=orjson.dumps(answers), content_type=tabular.JSON, rows=len(prompts), custom_attributes=custom
        )


def generate_text(prompt: str, *, max_new_tokens: int | None = None) -> str:
    """The ``llm`` model's answer: ``"<n> words: "`` and the prompt's words reversed (at most ``max_new_tokens``)."""
    words = prompt.split()
    answer = words[::-1] if max_new_tokens is None else words[::-1][:max_new_tokens]
    return f"{len(words)} words: {' '.join(answer)}"


_FORWARDED = (
    "X-Amzn-SageMaker-Custom-Attributes",
    "X-Amzn-SageMaker-Target-Model",
    "X-Amzn-SageMaker-Inference-Id",
    "X-Amzn-SageMaker-Enable-Explanations",
)


class ForwardModel:
    """Forwards to a container implementing SageMaker's contract (``GET /ping``, ``POST /invocations``)."""

    def __init__(self, *, model_url: str, timeout: float = 60.0) -> None:
        parsed = urllib.parse.urlsplit(model_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"model_url must be http(s)://host[:port][/prefix]; got {model_url!r}")
        self.model_url = model_url.rstrip("/")
        self._parsed = parsed
        self._prefix = parsed.path.rstrip("/")
        self._timeout = timeout
        self._local = threading.local()
        self._ready_at: float | None = None
        self._last_ping = 0.0
        self._ping_lock = threading.Lock()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._parsed.scheme == "https" else http.client.HTTPConnection
            conn = cls(self._parsed.hostname or "127.0.0.1", self._parsed.port, timeout=self._timeout)
            self._local.conn = conn
        return conn

    def _request(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, bytes, dict]:
        for attempt in (1, 2):  # a pooled keep-alive connection may have been closed by the container
            conn = self._connection()
            try:
                conn.request(method, self._prefix + path, body=body, headers=headers)
                response = conn.getresponse()
                return response.status, response.read(), dict(response.getheaders())
            except (ConnectionError, http.client.HTTPException, OSError):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def ping(self) -> bool:
        """``GET /ping``; True when the container answers 200 (checked at most once a second)."""
        if self._ready_at is not None:
            return True
        with self._ping_lock:
            now = time.monotonic()
            if self._ready_at is None and now - self._last_ping >= 1.0:
                self._last_ping = now
                try:
                    status, _, _ = self._request("GET", "/ping", None, {})
                except OSError:
                    status = 0
                if status == 200:
                    self._ready_at = now
        return self._ready_at is not None

    def predict(
        self,
        body: bytes,
        content_type: str | None,
        accept: str | None,
        *,
        headers: dict[str, str] | None = None,
        inspect: Inspector | None = None,
    ) -> Prediction:
        """POST the body to ``/invocations``; a non-2xx answer is a failure with the container's status."""
        sent = {"Content-Type": content_type or "application/octet-stream", "Accept": accept or "*/*"}
        for name in _FORWARDED:
            if headers and headers.get(name):
                sent[name] = headers[name]
        try:
            status, payload, answer = self._request("POST", "/invocations", body, sent)
        except OSError as err:
            raise ModelFailure(
                502, f"the model container at {self.model_url} is unreachable: {type(err).__name__}"
            ) from err
        lowered = {k.lower(): v for k, v in answer.items()}
        if not 200 <= status < 300:
            raise ModelFailure(status, payload.decode("utf-8", "replace")[:1024])
        return Prediction(
            body=payload,
            content_type=lowered.get("content-type", accept or "application/octet-stream"),
            rows=0,
            custom_attributes=lowered.get("x-amzn-sagemaker-custom-attributes"),
        )


class CsvHeaderModel:
    """Reads the first line of a ``text/csv`` body as a header, as MLflow's scoring server does: it is
    dropped before ``model`` sees the rows, so a body sent without a header loses its first row."""

    def __init__(self, model: Model) -> None:
        self.model = model

    def predict(
        self,
        body: bytes,
        content_type: str | None,
        accept: str | None,
        *,
        headers: dict[str, str] | None = None,
        inspect: Inspector | None = None,
    ) -> Prediction:
        """Drop the header line of a CSV body, then predict with the wrapped model."""
        if tabular.media_type(content_type, default=tabular.CSV) == tabular.CSV:
            _, _, body = body.partition(b"\n")
        return self.model.predict(body, content_type, accept, headers=headers, inspect=inspect)


def build_model(*, model: str, outputs: Sequence[str] | None = None, model_url: str | None = None) -> Model:
    """Build the model named ``model`` (``diabetes``, ``sum``, ``constant``, ``llm`` or ``forward``)."""
    if model == "diabetes":
        return DiabetesModel()
    if model == "llm":
        return LlmModel()
    if model == "sum":
        return SumModel(outputs=tuple(outputs) if outputs else ("sum",))
    if model == "constant":
        return ConstantModel()
    if model == "forward":
        if not model_url:
            raise ValueError("model 'forward' needs model_url")
        return ForwardModel(model_url=model_url)
    raise ValueError(f"unknown model {model!r}; use diabetes, sum, constant, llm or forward")
