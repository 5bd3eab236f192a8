"""The lean transport: InvokeEndpoint and InvokeEndpointAsync signed and sent without botocore's per-call machinery.

A botocore client spends most of an InvokeEndpoint call's CPU in its per-call machinery (events,
endpoint rules, user agent, retry bookkeeping, parameter handling), all of it holding the GIL;
signing and HTTP are the smaller part. :class:`LeanTransport` keeps only those, taken from the
client the hook already builds, so nothing is written by hand:

- the request is serialized by botocore's REST-JSON serializer from the service model (for
  ``make_invoker`` once, for the parameters every call shares; only the body changes per call);
- it is signed by botocore's :class:`~botocore.auth.SigV4Auth` with the client's credentials,
  frozen per request (refreshable credentials, such as assume-role or expiring session ones,
  refresh as they do for the client), the client's signing name and region;
- it is sent through the urllib3 connection pool of the client's own HTTP session (botocore's
  urllib3 session: its pool size, timeouts, socket options, TLS context and ``verify``), to the
  client's resolved endpoint URL (``service_config``, FIPS, custom endpoints); a transport failure
  raises the botocore exception that session raises for it;
- a response is parsed by botocore's REST-JSON parser with the operation's output shape, and an
  error response raises the client's own modeled :class:`~botocore.exceptions.ClientError`, so the
  classifier sees exactly what it sees from the client.

:func:`lean_transport_for` returns ``None`` with the reason when the client has a setting this path
does not take over (a proxy, a client certificate, a signature version other than SigV4, an event
handler registered beyond botocore's own, no credentials); the hook then uses the botocore client.
"""

from __future__ import annotations

import functools
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from botocore import exceptions as bce
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, HeadersDict, create_request_object, prepare_request_dict
from botocore.config import Config
from botocore.parsers import create_parser
from botocore.serialize import create_serializer
from botocore.utils import get_environ_proxies, lowercase_dict
from botocore.validate import validate_parameters
from urllib3 import exceptions as urllib3_exceptions
from urllib3.util.retry import Retry

from airflow_provider_smrt.exceptions import ParameterValidationError

#: The events a botocore client emits for one call; a handler registered on one of them that a plain
#: client of the same service does not have is a customisation the lean path would skip.
_CALL_EVENTS = (
    "provide-client-params",
    "before-parameter-build",
    "before-endpoint-resolution",
    "before-call",
    "request-created",
    "choose-signer",
    "before-sign",
    "sign",
    "before-send",
    "response-received",
    "needs-retry",
    "after-call",
    "after-call-error",
)

#: The operations this transport sends.
LEAN_OPERATIONS = ("InvokeEndpoint", "InvokeEndpointAsync")

#: One attempt, as botocore's session asks urllib3 (``Retry(False)``); urllib3 derives a new one on each
#: increment, so one instance serves every call.
_NO_RETRIES = Retry(False)
_HEADERS_TO_SIGN = "smrt_headers_to_sign"


class _Request(AWSRequest):
    """botocore's :class:`~botocore.awsrequest.AWSRequest` with a bytes body, read as given.

    ``AWSRequest.body`` prepares the whole request (URL, headers, body) on every read to return the
    body; for bytes that is the bytes themselves (``None`` when empty), which this returns directly.
    """

    @property
    def body(self) -> bytes | None:
        return self.data or None


class _SigV4Auth(SigV4Auth):
    """botocore's SigV4 signer, selecting the headers to sign once per request.

    ``add_auth`` selects them twice (for the canonical request, then for the Authorization header's
    SignedHeaders), from the same headers; the second selection is the first one's result.
    """

    def headers_to_sign(self, request: Any) -> Any:
        selected = request.context.get(_HEADERS_TO_SIGN)
        if selected is None:
            selected = request.context[_HEADERS_TO_SIGN] = super().headers_to_sign(request)
        return selected


def _handler_key(handler: Any) -> tuple[str, str]:
    func = getattr(handler, "func", handler)  # functools.partial
    func = getattr(func, "__func__", func)  # bound method
    if not hasattr(func, "__qualname__"):
        func = type(func)  # a callable object (botocore's legacy RetryHandler)
    return getattr(func, "__module__", ""), func.__qualname__


def _registered_handlers(client: Any, operation_name: str) -> set[tuple[str, str]]:
    """The (module, qualified name) of every handler ``client`` runs for one call of ``operation_name``."""
    service_id = client.meta.service_model.service_id.hyphenize()
    emitter = client.meta.events._emitter  # botocore's HierarchicalEmitter: no public way to list handlers
    keys: set[tuple[str, str]] = set()
    for event in _CALL_EVENTS:
        for handler in emitter._handlers.prefix_search(f"{event}.{service_id}.{operation_name}"):
            keys.add(_handler_key(handler))
    return keys


@functools.cache
def _plain_client_handlers(service_name: str, region_name: str, retry_mode: str, operation_name: str) -> frozenset:
    """The handlers of a plain botocore client of the service, with the same retry mode: botocore's own."""
    import botocore.session

    client = botocore.session.Session().create_client(
        service_name,
        region_name=region_name,
        aws_access_key_id="plain",
        aws_secret_access_key="plain",
        config=Config(retries={"mode": retry_mode, "total_max_attempts": 1}),
    )
    return frozenset(_registered_handlers(client, operation_name))


def why_not_lean(client: Any) -> str | None:
    """Why ``client``'s calls cannot take the lean path, or ``None`` when they can."""
    config = client.meta.config
    signer = getattr(client, "_request_signer", None)
    if signer is None or getattr(signer, "_credentials", None) is None:
        return "no credentials on the client"
    if signer.signature_version != "v4" or config.signature_version not in (None, "v4"):
        return f"signature version {signer.signature_version!r} (the lean path signs SigV4 only)"
    if config.proxies or get_environ_proxies(client.meta.endpoint_url):
        return "a proxy is configured"
    if config.client_cert is not None:
        return "a client certificate is configured"
    retry_mode = (config.retries or {}).get("mode", "legacy")
    for operation_name in LEAN_OPERATIONS:
        extra = _registered_handlers(client, operation_name) - _plain_client_handlers(
            client.meta.service_model.service_name, client.meta.region_name, retry_mode, operation_name
        )
        if extra:
            names = ", ".join(sorted(f"{module}.{name}" for module, name in extra))
            return f"event handlers registered on the client ({names})"
    return None


@dataclass(frozen=True)
class PreparedCall:
    """One operation's request serialized once: everything but the body (and the signature) is fixed."""

    operation_model: Any
    method: str
    url: str
    path: str
    headers: tuple[tuple[str, str], ...]
    #: The output's (member, lower-case header name) pairs for a blob payload and string headers, else None.
    header_members: tuple[tuple[str, str], ...] | None
    payload_member: str | None


class LeanTransport:
    """Sends InvokeEndpoint/InvokeEndpointAsync requests with ``client``'s credentials, endpoint and HTTP session.

    Build it with :func:`lean_transport_for`, which checks that the client has nothing this path
    would skip. Thread-safe: the HTTP session's pool is shared, everything else is per call.
    """

    def __init__(self, client: Any) -> None:
        meta = client.meta
        signer = client._request_signer  # botocore's RequestSigner: the client's own credentials object
        self._credentials = signer._credentials
        self._signing_name: str = signer.signing_name
        self._region_name: str = signer.region_name
        self._endpoint_url: str = meta.endpoint_url
        # The connection pool of the client's own HTTP session (botocore's urllib3 session), set up as the
        # session sets it up for each request: its pool size, timeouts, socket options, TLS context and verify.
        session = client._endpoint.http_session
        self._pool = session._manager.connection_from_url(self._endpoint_url)
        session._setup_ssl_cert(self._pool, self._endpoint_url, session._verify)
        self._service_model = meta.service_model
        self._exceptions = client.exceptions
        self._serializer = create_serializer(self._service_model.metadata["protocol"], include_validation=False)
        self._parser = create_parser(self._service_model.metadata["protocol"])
        creator = getattr(client, "_user_agent_creator", None)
        self._user_agent: str | None = creator.to_string() if creator is not None else None

    def validate(self, operation_name: str, params: dict[str, Any]) -> None:
        """botocore's parameter validation, as a client with ``parameter_validation`` on runs it per call.

        :raises botocore.exceptions.ParamValidationError: a parameter of the wrong type, length or range.
        """
        validate_parameters(params, self._service_model.operation_model(operation_name).input_shape)

    def prepare(self, operation_name: str, params: dict[str, Any]) -> PreparedCall:
        """Serialize ``params`` (without ``Body``) for ``operation_name`` as botocore's client does."""
        operation_model = self._service_model.operation_model(operation_name)
        request_dict = self._serializer.serialize_to_request(params, operation_model)
        prepare_request_dict(request_dict, endpoint_url=self._endpoint_url, user_agent=self._user_agent)
        request = create_request_object(request_dict)
        return PreparedCall(
            operation_model=operation_model,
            method=request.method,
            url=request.url,
            path=_path_of(request.url),
            headers=tuple((key, value) for key, value in request.headers.items()),
            **_output_layout(operation_model.output_shape),
        )

    def signed_request(
        self, call: PreparedCall, body: bytes | None, headers: Mapping[str, str] | None = None
    ) -> AWSRequest:
        """The request of ``call`` with ``body`` (and this call's own ``headers``), signed with the credentials
        as they are now."""
        request = _Request(
            method=call.method, url=call.url, headers={**dict(call.headers), **(headers or {})}, data=body or b""
        )
        _SigV4Auth(self._credentials.get_frozen_credentials(), self._signing_name, self._region_name).add_auth(request)
        # botocore's client adds these after signing (its signer is the first request-created handler): unsigned.
        request.headers["amz-sdk-invocation-id"] = str(uuid.uuid4())
        request.headers["amz-sdk-request"] = "attempt=1"  # botocore's value on a first attempt
        return request

    def send(
        self, call: PreparedCall, body: bytes | None, headers: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """Send ``call`` with ``body``; the parsed response as the client returns it (``Body`` as bytes).

        ``headers`` are this call's own (e.g. a per-request ``X-Amzn-SageMaker-Inference-Id``), added to
        the prepared ones and signed with them.

        :raises botocore.exceptions.ClientError: the client's modeled error class for an error response.
        :raises botocore.exceptions.HTTPClientError: and the other transport errors botocore's session raises.
        """
        request = self.signed_request(call, body, headers)
        try:
            response = self._pool.urlopen(
                method=call.method,
                url=call.path,
                body=body or None,
                headers=dict(request.headers.items()),
                retries=_NO_RETRIES,
                assert_same_host=False,
                preload_content=True,
                decode_content=False,
                enforce_content_length=False,
            )
        except Exception as err:
            raise _botocore_transport_error(err, call.url) from err
        operation_model = call.operation_model
        if response.status >= 300:
            response_dict = {
                "headers": HeadersDict(response.headers),
                "status_code": response.status,
                "body": response.data,
                "context": {"operation_name": operation_model.name},
            }
            error = self._parser.parse(response_dict, operation_model.output_shape)
            error_code = error.get("Error", {}).get("Code")
            error_shape = self._service_model.shape_for_error_code(error_code) if error_code else None
            if error_shape is not None:  # its modeled fields (ModelError's OriginalStatusCode...), as botocore adds
                error.update(self._parser.parse(response_dict, error_shape))
            raise self._exceptions.from_code(error_code)(error, operation_model.name)
        parsed: dict[str, Any]
        if call.header_members is not None:
            # A blob payload and string headers (InvokeEndpoint): what the parser would return, from the model's
            # header names, without its per-call dispatch.
            headers = lowercase_dict(response.headers)
            parsed = {member: headers[name] for member, name in call.header_members if name in headers}
            parsed[call.payload_member or "Body"] = response.data
            metadata = {"HTTPStatusCode": response.status, "HTTPHeaders": headers}
            if "x-amzn-requestid" in headers:
                metadata["RequestId"] = headers["x-amzn-requestid"]
            parsed["ResponseMetadata"] = metadata
        else:
            response_dict = {"headers": HeadersDict(response.headers), "status_code": response.status}
            parsed = self._parser.parse({**response_dict, "body": response.data}, operation_model.output_shape)
        parsed["ResponseMetadata"]["RetryAttempts"] = 0
        return parsed


def _output_layout(shape: Any) -> dict[str, Any]:
    """``header_members`` and ``payload_member`` of an output shape (see :class:`PreparedCall`)."""
    payload = shape.serialization.get("payload")
    members = shape.members
    headers = tuple(
        (name, member.serialization["name"].lower())
        for name, member in members.items()
        if name != payload and member.serialization.get("location") == "header" and member.type_name == "string"
    )
    simple = payload is not None and members[payload].type_name == "blob" and len(headers) == len(members) - 1
    return {"header_members": headers if simple else None, "payload_member": payload}


def _path_of(url: str) -> str:
    """The request target of ``url`` without a proxy, as botocore's session sends it."""
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _botocore_transport_error(err: Exception, url: str) -> Exception:
    """The botocore exception that botocore's urllib3 session (``URLLib3Session.send``) raises for ``err``."""
    mapped: Exception
    if isinstance(err, urllib3_exceptions.SSLError):
        mapped = bce.SSLError(endpoint_url=url, error=err)
    elif isinstance(err, (urllib3_exceptions.NewConnectionError, socket.gaierror)):
        mapped = bce.EndpointConnectionError(endpoint_url=url, error=err)
    elif isinstance(err, urllib3_exceptions.ConnectTimeoutError):
        mapped = bce.ConnectTimeoutError(endpoint_url=url, error=err)
    elif isinstance(err, urllib3_exceptions.ReadTimeoutError):
        mapped = bce.ReadTimeoutError(endpoint_url=url, error=err)
    elif isinstance(err, urllib3_exceptions.ProtocolError):
        mapped = bce.ConnectionClosedError(error=err, endpoint_url=url)
    else:
        mapped = bce.HTTPClientError(error=err)
    return mapped


#: The ``transport`` values: ``"auto"`` takes the lean path where the client allows it, ``"botocore"`` never.
Transport = Literal["auto", "botocore"]
_TRANSPORTS = ("auto", "botocore")


def check_transport(transport: str) -> None:
    """A ``transport`` value must be ``"auto"`` or ``"botocore"`` (checked when a DAG is parsed)."""
    if transport not in _TRANSPORTS:
        raise ParameterValidationError(f"transport={transport!r} is not one of {list(_TRANSPORTS)}")


def lean_transport_for(client: Any, transport: Transport = "auto") -> tuple[LeanTransport | None, str]:
    """(the lean transport, ``"lean"``) for ``client``, or (``None``, why the botocore path is kept)."""
    if transport == "botocore":
        return None, 'transport="botocore"'
    reason = why_not_lean(client)
    if reason is not None:
        return None, reason
    return LeanTransport(client), "lean"
