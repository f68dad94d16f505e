"""What the explorer and the HTTP/JSON API share: the server's parts, auth, and errors.

gRPC status codes map to HTTP statuses as Google's APIs map them (google/rpc/code.proto,
the "HTTP Mapping" of each code); README "HTTP/JSON" lists the ones this server uses.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from flask import Response, after_this_request, current_app, jsonify, request
from google.protobuf.message import Message

from serving import logs
from serving.auth import AuthInterceptor, Token
from serving.config import DEFAULT_MAX_MESSAGE_BYTES
from serving.feed_service import FeedService
from serving.logs import TOKENLESS_REFUSALS, TokenlessLines
from serving.servicer import LOADING, Refusal, observe_call, served_by

HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
# The cookie the explorer's sign-in form sets: a browser cannot add a header to a link.
TOKEN_COOKIE = "feedrank_token"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
RETRY_INFO_TYPE = "type.googleapis.com/google.rpc.RetryInfo"
HTTP_TOKENLESS_REFUSALS = TOKENLESS_REFUSALS | {"NOT_FOUND"}
"""The codes of the HTTP API's calls refused without a valid token: gRPC's, and a path no
route takes (404, ``NOT_FOUND``; a method a path does not take is 405, ``UNIMPLEMENTED``),
refused before any token is checked. Over gRPC NOT_FOUND is only the servicer's answer to a
valid call, whose every line is written."""
MAX_LOGGED_PATH_CHARS = 256
"""The characters of a refused request's path its access line keeps: a path may be as long as
the request line's cap (``--max-message-bytes``), megabytes in each line."""


def _tokenless_lines() -> TokenlessLines:
    return TokenlessLines(codes=HTTP_TOKENLESS_REFUSALS)


@dataclass(frozen=True)
class WebContext:
    """The parts of the running server the web app reads.

    ``service()`` is None while the server is still loading; ``auth`` None when no
    tokens are configured (everything is open, as over gRPC). ``max_body_bytes``: the
    largest request body, as ``--max-message-bytes`` is the largest gRPC message.
    ``tokenless_lines`` limits the access lines of the API's calls refused without a valid
    token (``HTTP_TOKENLESS_REFUSALS``), as gRPC's are.
    """

    service: Callable[[], FeedService | None]
    auth: AuthInterceptor | None
    models_dir: str
    max_body_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    tokenless_lines: TokenlessLines = field(default_factory=_tokenless_lines)


def web_context() -> WebContext:
    return current_app.extensions["feedrank"]


class HttpError(Exception):
    """A request refused with a gRPC ``code`` (sent as its HTTP status), naming ``field`` when one is at fault.

    ``http_status`` is for a refusal only HTTP has (a body too large, a method not allowed):
    then ``code`` is the nearest gRPC code, for the error body, metrics and logs.
    """

    def __init__(self, code: grpc.StatusCode, message: str, field: str = "", description: str = "",
                 retry_after: float | None = None, http_status: int | None = None, client: str | None = None) -> None:
        super().__init__(message)
        self.client = client  # a valid token's name, refused for its scope: for the access line
        self.code = code
        self.message = message
        self.field = field
        self.description = description or message
        self.retry_after = retry_after
        self.http_status = HTTP_STATUS[code] if http_status is None else http_status


def refused(refusal: Refusal) -> HttpError:
    """The HTTP form of a refusal of the gRPC servicer's (serving/servicer.py): the same answer."""
    return HttpError(refusal.code, refusal.message, refusal.field, refusal.description, refusal.retry_after)


def error_json(error: HttpError) -> Response:
    """The JSON error body Google's HTTP APIs use: {"error": {code, status, message, details}}."""
    details: list[dict[str, Any]] = []
    if error.field:
        details.append({"@type": BAD_REQUEST_TYPE,
                        "fieldViolations": [{"field": error.field, "description": error.description}]})
    if error.retry_after is not None:
        details.append({"@type": RETRY_INFO_TYPE, "retryDelay": f"{error.retry_after:g}s"})
    body = {"error": {"code": error.http_status, "status": error.code.name, "message": error.message, "details": details}}
    response = jsonify(body)
    response.status_code = error.http_status
    if error.code == grpc.StatusCode.UNAUTHENTICATED:
        response.headers["WWW-Authenticate"] = "Bearer"  # a 401 must say which scheme it wants (RFC 9110)
    if error.retry_after is not None:
        response.headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    return response


def ready_service() -> FeedService:
    service = web_context().service()
    if service is None:
        raise refused(LOADING)
    return service


def authorize(scope: str, what: str, allow_cookie: bool = False) -> Token | None:
    """The caller's token if it grants ``scope``; raises HttpError (401/403) otherwise.

    None when auth is off. ``allow_cookie``: also read the explorer's sign-in cookie
    (pages only; the JSON API takes the header alone, so no cookie can ingest events).
    """
    auth = web_context().auth
    if auth is None:
        return None
    header = request.headers.get("Authorization")
    if not header and allow_cookie and request.cookies.get(TOKEN_COOKIE):
        header = "Bearer " + request.cookies[TOKEN_COOKIE]
    outcome = auth.check_bearer(header, scope, what)
    if isinstance(outcome, Token):
        return outcome
    raise HttpError(outcome.code, outcome.message, client=outcome.client)


def requires(scope: str, what: str, method: str, allow_cookie: bool = False) -> Callable:
    """Decorate a view: it runs only for a caller whose token grants ``scope``; a refusal is
    counted and logged as ``method``."""

    def decorate(view: Callable) -> Callable:
        @functools.wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                authorize(scope, what, allow_cookie)
            except HttpError as error:
                record_refusal(method, error.code, started, error.client)
                raise
            return view(*args, **kwargs)

        return guarded

    return decorate


# --- metrics and the access line ----------------------------------------------------------


_ACCESS_LOG = logging.getLogger(logs.ACCESS_LOGGER)


@dataclass
class HttpCall:
    """One HTTP call, filled in as it goes, for its metrics and access line (``name``: its ``method`` there)."""

    name: str
    request_id: str
    client: str | None = None
    request: Message | None = None  # set once authorized (then a GetFeed counts under its A/B arm)
    response: Message | None = None
    code: grpc.StatusCode = grpc.StatusCode.OK
    http_request: str = ""  # a call refused before it was read: its HTTP method and path


def sent_back_request_id() -> str:
    """The client's X-Request-Id (else a new one), sent back on the response as over gRPC."""
    request_id = logs.request_id_of([("x-request-id", request.headers.get("X-Request-Id"))])

    @after_this_request
    def send_back(response: Response) -> Response:
        response.headers["X-Request-Id"] = request_id
        return response

    return request_id


def record_refusal(name: str, code: grpc.StatusCode, started: float, client: str | None = None) -> None:
    """Count and log as ``name`` a request refused before it was read, started at ``started``
    (``time.perf_counter()``), its line naming its HTTP method and path."""
    call = HttpCall(name, sent_back_request_id(), client, code=code, http_request=f"{request.method} {_logged_path()}")
    record_call(call, time.perf_counter() - started)


def _logged_path() -> str:
    path = request.path
    return path if len(path) <= MAX_LOGGED_PATH_CHARS else path[:MAX_LOGGED_PATH_CHARS] + "…"


def _peer() -> str:
    """The client's address as gRPC names a peer, for the access line."""
    return logs.peer_name(request.remote_addr or "", request.environ.get("REMOTE_PORT", ""))


def record_call(call: HttpCall, seconds: float) -> None:
    context = web_context()
    service = context.service()
    if service is not None:
        observe_call(service, call.name, call.code, seconds, call.request, call.response)
    if not _ACCESS_LOG.isEnabledFor(logging.INFO):
        return
    peer = _peer()
    # A call refused before its request was read (401, 403, 503 loading, a path no route
    # takes) may have come without a token from anyone: those lines are limited as gRPC's are.
    if call.request is None and not context.tokenless_lines.admit(call.code.name, peer):
        return
    facts = {"request_id": call.request_id, "client": call.client}
    logs.write_access_line(logging.INFO, call.name, call.code.name, seconds, call.request, call.response, facts, peer,
                           lambda request: served_by(service, request), call.http_request)
