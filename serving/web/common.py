"""What the explorer and the HTTP/JSON API share: the server's parts, auth, and errors.

gRPC status codes map to HTTP statuses as Google's APIs map them (google/rpc/code.proto,
the "HTTP Mapping" of each code); README "HTTP/JSON" lists the ones this server uses.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from flask import Response, current_app, jsonify, request

from serving.auth import AuthInterceptor, Token
from serving.config import DEFAULT_MAX_MESSAGE_BYTES
from serving.feed_service import FeedService
from serving.logs import TOKENLESS_REFUSALS, TokenlessLines
from serving.servicer import LOADING, Refusal

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


def requires(scope: str, what: str, allow_cookie: bool = False) -> Callable:
    """Decorate a view: it runs only for a caller whose token grants ``scope``."""

    def decorate(view: Callable) -> Callable:
        @functools.wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            authorize(scope, what, allow_cookie)
            return view(*args, **kwargs)

        return guarded

    return decorate
