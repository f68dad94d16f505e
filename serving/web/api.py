"""The HTTP/JSON API: GetFeed and Ingest as JSON over HTTP, beside gRPC.

    GET  /v1/users/{user_id}/feed?page_size=&page_token=...   -> GetFeedResponse (page_size: 20 when not given)
    POST /v1/events:ingest      (body: an IngestRequest)        -> IngestResponse

Messages are the proto's canonical JSON mapping (google.protobuf.json_format): lowerCamelCase
names on output, either those or the proto field names on input. A call goes through the
servicer's translation, error mapping and metrics (serving/servicer.py), so both protocols
give the same answer to the same request; README "HTTP/JSON" documents the details.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

import grpc
from flask import Blueprint, Response, after_this_request, jsonify, request
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from werkzeug.exceptions import RequestEntityTooLarge

from protos.feed.v1 import feed_pb2
from serving import logs
from serving.auth import FEED_SERVICE, METHOD_SCOPES
from serving.feed_service import FeedService
from serving.servicer import (
    get_feed_response,
    ingest_response,
    observe_call,
    refusal_of,
)
from serving.web.common import HttpError, authorize, ready_service, refused, web_context

api = Blueprint("api", __name__)

JSON = "application/json"
# GetFeedRequest.limit goes by Google's name for a page length (AIP-158) in the query string.
PAGE_SIZE_NAMES = ("page_size", "pageSize")
# AIP-158 makes page_size optional; gRPC has no default (limit 0 is refused), so this is
# the feed explorer's page length (serving/web/explorer.py DEFAULT_PAGE_SIZE).
DEFAULT_PAGE_SIZE = 20
_EXPECTED = {FieldDescriptor.CPPTYPE_INT32: "a 32-bit integer", FieldDescriptor.CPPTYPE_DOUBLE: "a number"}
_RAW_FEED_PATH = re.compile(r"/v1/users/(.*)/feed$")
# How json_format's ParseError text names the field (when it does): "... at IngestRequest.events[1].ts",
# 'has no field named "x"', or only "Failed to parse events field: ..." prefixes.
_PARSE_UNKNOWN_FIELD = re.compile(r'has no field named "([^"]+)"')
_PARSE_FIELD = re.compile(r"Failed to parse (\w+) field: ")


@dataclass(frozen=True)
class _Method:
    """An RPC of FeedService served over HTTP, with the servicer's translation ``respond``."""

    rpc: str
    respond: Callable[[FeedService, Message, float], Message]

    @property
    def name(self) -> str:
        """The name in metrics and logs, apart from the RPC's."""
        return "http." + self.rpc

    @property
    def scope(self) -> str:
        return METHOD_SCOPES[f"/{FEED_SERVICE}/{self.rpc}"]


GET_FEED = _Method("GetFeed", get_feed_response)
INGEST = _Method("Ingest", ingest_response)


@api.get("/v1/users/<path:user_id>/feed")
@api.get("/v1/users//feed", defaults={"user_id": ""}, merge_slashes=False)  # refused as over gRPC, not a 404
def get_feed(user_id: str) -> Response:
    return _serve(GET_FEED, feed_pb2.GetFeedRequest(user_id=_exact_user_id(user_id)), _read_query)


@api.post("/v1/events:ingest")
def ingest() -> Response:
    return _serve(INGEST, feed_pb2.IngestRequest(), _read_body)


@dataclass
class _Call:
    """One HTTP call, filled in as it goes, for its metrics and access line."""

    method: _Method
    request_id: str
    client: str | None = None
    request: Message | None = None  # set once authorized (then a GetFeed counts under its A/B arm)
    response: Message | None = None
    code: grpc.StatusCode = grpc.StatusCode.OK


def _serve(method: _Method, message: Message, read: Callable[[Message], None]) -> Response:
    """Answer with ``message`` filled in by ``read``; every failure becomes an HttpError."""
    call = _Call(method, _request_id())
    started = time.perf_counter()
    try:
        return _answer(call, message, read)
    except Exception as error:  # noqa: BLE001 (refusal_of logs a bug with its traceback)
        http_error = error if isinstance(error, HttpError) else refused(refusal_of(error, method.name))
        call.code = http_error.code
        raise http_error from None
    finally:
        _record(call, time.perf_counter() - started)


def _answer(call: _Call, message: Message, read: Callable[[Message], None]) -> Response:
    token = authorize(call.method.scope, call.method.rpc)
    call.client = token.name if token is not None else None
    service = ready_service()
    call.request = message
    read(message)
    call.response = call.method.respond(service, message, time.time())
    return jsonify(json_format.MessageToDict(call.response))


def _request_id() -> str:
    """The client's X-Request-Id (else a new one), sent back on the response as over gRPC."""
    request_id = logs.request_id_of([("x-request-id", request.headers.get("X-Request-Id"))])

    @after_this_request
    def send_back(response: Response) -> Response:
        response.headers["X-Request-Id"] = request_id
        return response

    return request_id


def _bad_field(field: str, description: str) -> HttpError:
    return HttpError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {description}", field, description)


class _HttpOnlyError(HttpError):
    """A refusal only HTTP has (a body too large, not JSON), with an HTTP status of its own;
    ``code`` is the nearest gRPC code, for the error body, metrics and logs."""

    def __init__(self, http_status: int, code: grpc.StatusCode, message: str) -> None:
        super().__init__(code, message)
        self._http_status = http_status

    @property
    def http_status(self) -> int:
        return self._http_status


# --- GET: the query string ---------------------------------------------------------------


def _query_fields() -> dict[str, FieldDescriptor]:
    """GetFeedRequest's fields by the query parameters that set them (user_id is in the path)."""
    fields = {}
    for field in feed_pb2.GetFeedRequest.DESCRIPTOR.fields:
        if field.name != "user_id":
            names = PAGE_SIZE_NAMES if field.name == "limit" else (field.name, field.json_name)
            fields.update(dict.fromkeys(names, field))
    return fields


_QUERY_FIELDS = _query_fields()


def _read_query(message: Message) -> None:
    """Set the fields of ``message`` the query parameters name; each at most once."""
    seen: set[str] = set()
    for name, values in request.args.lists():
        field = _QUERY_FIELDS.get(name)
        if field is None:
            known = ", ".join(n for n in _QUERY_FIELDS if n.islower())  # the proto names (lowerCamelCase works too)
            raise _bad_field(name, f"unknown query parameter (known: {known})")
        if field.name in seen or (len(values) > 1 and not field.is_repeated):
            raise _bad_field(name, "given more than once")
        seen.add(field.name)
        try:
            json_format.ParseDict({field.name: values if field.is_repeated else values[0]}, message)
        except json_format.ParseError:
            raise _bad_field(name, f"must be {_EXPECTED[field.cpp_type]}, got {values[0]!r}") from None
    if "limit" not in seen:
        message.limit = DEFAULT_PAGE_SIZE


def _exact_user_id(routed: str) -> str:
    """The user id of the path as the client percent-encoded it.

    Cheroot leaves an encoded slash (%2F) encoded in PATH_INFO but decodes %25 to "%", so
    "%2F" there is either; the raw request target (REQUEST_URI, when the server passes it)
    is not ambiguous. WSGI hands it over as Latin-1 text of the bytes.
    """
    raw = request.environ.get("REQUEST_URI")
    match = _RAW_FEED_PATH.search(raw.split("?", 1)[0]) if raw else None
    if match is None:
        return routed
    return unquote_to_bytes(match.group(1).encode("latin-1")).decode("utf-8", "replace")


# --- POST: the JSON body -----------------------------------------------------------------


def _read_body(message: Message) -> None:
    """Parse the JSON body into ``message``."""
    if request.mimetype != JSON:
        raise _HttpOnlyError(415, grpc.StatusCode.INVALID_ARGUMENT,
                             f"the body must be JSON, sent with 'Content-Type: {JSON}' (got {request.content_type or 'none'!r})")
    try:
        text = _body().decode("utf-8")
    except UnicodeDecodeError:
        raise HttpError(grpc.StatusCode.INVALID_ARGUMENT, "the body is not UTF-8") from None
    if not text.lstrip().startswith("{"):
        raise HttpError(grpc.StatusCode.INVALID_ARGUMENT, f"the body must be a JSON object: an {message.DESCRIPTOR.name}")
    try:
        json_format.Parse(text, message)
    except json_format.ParseError as error:
        raise _not_parsed(str(error), message.DESCRIPTOR.name) from None


def _body() -> bytes:
    """The request body; 413 when it is larger than gRPC would take a message (read no further)."""
    limit = web_context().max_body_bytes
    request.max_content_length = limit
    try:
        return request.get_data(cache=False)
    except RequestEntityTooLarge:
        raise _HttpOnlyError(413, grpc.StatusCode.RESOURCE_EXHAUSTED, f"the body is larger than {limit} bytes") from None


def _not_parsed(description: str, root: str) -> HttpError:
    """A 400 for a json_format ParseError of a ``root`` message, naming the field when it can."""
    field = _parse_error_field(description, root)
    return HttpError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {description}" if field else description, field, description)


def _parse_error_field(text: str, root: str) -> str:
    """The field a json_format ParseError about a ``root`` message is about, as precisely as
    its text names it ("" if not at all)."""
    locations = re.findall(rf' at "?{re.escape(root)}\.?([\w.\[\]]*)', text)  # the last: a value may hold " at "
    unknown = _PARSE_UNKNOWN_FIELD.search(text)
    path = [locations[-1].rstrip(".")] if locations else []
    path += [unknown.group(1)] if unknown else []
    return ".".join(p for p in path if p) or ".".join(_PARSE_FIELD.findall(text))


# --- metrics and the access line ----------------------------------------------------------


def _served_version() -> str:
    service = web_context().service()
    return service.model_version if service is not None else ""


_ACCESS = logs.AccessLog(_served_version)


def _peer() -> str:
    """The client's address as gRPC names a peer, for the access line."""
    host, port = request.remote_addr or "", request.environ.get("REMOTE_PORT", "")
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


def _record(call: _Call, seconds: float) -> None:
    service = web_context().service()
    if service is not None:
        observe_call(service, call.method.name, call.code, seconds, call.request, call.response)
    if _ACCESS.log.isEnabledFor(logging.INFO):
        facts = {"request_id": call.request_id, "client": call.client}
        _ACCESS.write(logging.INFO, call.method.name, call.code.name, seconds, call.response, facts, _peer())
