"""The HTTP/JSON API: GetFeed and Ingest as JSON over HTTP, beside gRPC.

    GET  /v1/users/{user_id}/feed?page_size=&page_token=...   -> GetFeedResponse (page_size: 20 when not given)
    POST /v1/events:ingest      (body: an IngestRequest)        -> IngestResponse

Messages are the proto's canonical JSON mapping (google.protobuf.json_format): lowerCamelCase
names on output, either those or the proto field names on input. A call goes through the
servicer's translation, error mapping and metrics (serving/servicer.py), so both protocols
give the same answer to the same request; README "HTTP/JSON" documents the details.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, unquote_to_bytes

import grpc
from cheroot.errors import MaxSizeExceeded
from flask import Blueprint, Response, after_this_request, jsonify, request
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from werkzeug.exceptions import ClientDisconnected, HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge

from protos.feed.v1 import feed_pb2
from serving import logs
from serving.auth import FEED_SERVICE, METHOD_SCOPES
from serving.feed_service import FeedService, InvalidRequest
from serving.servicer import (
    get_feed_response,
    ingest_response,
    refusal_of,
)
from serving.web.common import (
    HttpCall,
    HttpError,
    authorize,
    error_json,
    ready_service,
    record_call,
    record_refusal,
    refused,
    sent_back_request_id,
    web_context,
)
from stores.events import check_batch_size

api = Blueprint("api", __name__)
RESPONSE_HEADERS = {
    "Cache-Control": "no-store",  # a feed is one user's, with its page token: no shared cache may keep it
    "X-Content-Type-Options": "nosniff",
}

JSON = "application/json"
# GetFeedRequest.limit goes by Google's name for a page length (AIP-158) in the query string.
PAGE_SIZE_NAMES = ("page_size", "pageSize")
# AIP-158 makes page_size optional; gRPC has no default (limit 0 is refused), so this is
# the feed explorer's page length (serving/web/explorer.py DEFAULT_PAGE_SIZE).
DEFAULT_PAGE_SIZE = 20
DISCARD_CHUNK_BYTES = 65_536  # what the 413 reads of a body at a time, to drop it
_EXPECTED = {FieldDescriptor.CPPTYPE_INT32: "a 32-bit integer", FieldDescriptor.CPPTYPE_DOUBLE: "a number"}
_RAW_FEED_PATH = re.compile(r"/v1/users/(.*)/feed$")
# How json_format's ParseError text names the field (when it does): "... at IngestRequest.events[1].ts",
# 'has no field named "x"', or only "Failed to parse events field: ..." prefixes.
_PARSE_UNKNOWN_FIELD = re.compile(r'has no field named "([^"]+)"')
_PARSE_FIELD = re.compile(r"Failed to parse (\w+) field: ")
# The content codings a body may come in (zlib's wbits for each), as gRPC takes a message
# compressed with gzip or deflate.
_CONTENT_CODINGS = {"identity": None, "gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
UNROUTED = "http." + logs.UNKNOWN_METHOD
"""The ``method`` that metrics and access lines name a request no route takes by (a 404, or a
405 for a method its path does not take): its path, chosen by the client, would make a series
each, as a gRPC call to a method the server lacks would."""


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


@api.after_request
def add_response_headers(response: Response) -> Response:
    response.headers.update(RESPONSE_HEADERS)
    return response


@api.get("/v1/users/<path:user_id>/feed")
@api.get("/v1/users//feed", defaults={"user_id": ""}, merge_slashes=False)  # refused as over gRPC, not a 404
def get_feed(user_id: str) -> Response:
    def read(message: Message) -> None:
        message.user_id = _exact_user_id(user_id)
        _read_query(message)

    return _serve(GET_FEED, feed_pb2.GetFeedRequest(), read)


@api.post("/v1/events:ingest")
def ingest() -> Response:
    return _serve(INGEST, feed_pb2.IngestRequest(), _read_body)


def _serve(method: _Method, message: Message, read: Callable[[Message], None]) -> Response:
    """Answer with ``message`` filled in by ``read``; every failure becomes an HttpError."""
    call = HttpCall(method.name, sent_back_request_id())
    started = time.perf_counter()
    try:
        return _answer(method, call, message, read)
    except Exception as error:  # noqa: BLE001 (refusal_of logs a bug with its traceback)
        http_error = error if isinstance(error, HttpError) else refused(refusal_of(error, method.name))
        call.code = http_error.code
        call.client = call.client or http_error.client
        raise http_error from None
    finally:
        record_call(call, time.perf_counter() - started)


def _answer(method: _Method, call: HttpCall, message: Message, read: Callable[[Message], None]) -> Response:
    token = authorize(method.scope, method.rpc)
    call.client = token.name if token is not None else None
    service = ready_service()
    call.request = message
    read(message)
    call.response = method.respond(service, message, time.time())
    return jsonify(json_format.MessageToDict(call.response))


def routing_error(error: NotFound | MethodNotAllowed) -> Response | HTTPException:
    """A path or method no view takes (an explorer link to an unknown model version too),
    counted and logged as ``UNROUTED`` (as gRPC does a call to a method it lacks): under the
    API's /v1/ a JSON error, elsewhere Flask's page."""
    started = time.perf_counter()
    code = grpc.StatusCode.NOT_FOUND if isinstance(error, NotFound) else grpc.StatusCode.UNIMPLEMENTED
    record_refusal(UNROUTED, code, started)
    if not request.path.startswith("/v1/"):
        return error
    response = error_json(HttpError(code, f"{request.method} {request.path}: {error.name.lower()}", http_status=error.code))
    if error.code == 405:
        response.headers["Allow"] = ", ".join(error.valid_methods or ())
    return response


def _bad_field(field: str, description: str) -> HttpError:
    return HttpError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {description}", field, description)


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
    _check_query_is_utf8()
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


def _check_query_is_utf8() -> None:
    """Refuse a parameter whose value is not UTF-8 once percent-decoded, as gRPC refuses such
    a string: Werkzeug leaves those bytes percent-encoded, so "%FF" would be read as the
    three characters "%FF", another category or item id than the client's."""
    for pair in request.query_string.split(b"&"):
        name, _, value = pair.partition(b"=")
        try:
            unquote_to_bytes(value.replace(b"+", b" ")).decode("utf-8")
        except UnicodeDecodeError as error:
            raise _bad_field(unquote(name.decode("latin-1")), f"not UTF-8 once percent-decoded (byte {error.start})") from None


def _exact_user_id(routed: str) -> str:
    """The user id of the path as the client percent-encoded it.

    Cheroot leaves an encoded slash (%2F) encoded in PATH_INFO but decodes %25 to "%", so
    "%2F" there is either; the raw request target (REQUEST_URI, when the server passes it)
    is not ambiguous. WSGI hands it over as Latin-1 text of the bytes. Bytes that are not
    UTF-8 are refused as gRPC refuses them, not read as another user's id.
    """
    raw = request.environ.get("REQUEST_URI")
    match = _RAW_FEED_PATH.search(raw.split("?", 1)[0]) if raw else None
    if match is None:
        return routed
    try:
        return unquote_to_bytes(match.group(1).encode("latin-1")).decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidRequest("user_id", f"not a valid GetFeedRequest: not UTF-8 (byte {error.start})") from None


# --- POST: the JSON body -----------------------------------------------------------------


def _read_body(message: Message) -> None:
    """Parse the JSON body (an IngestRequest) into ``message``."""
    if request.mimetype != JSON:
        raise HttpError(grpc.StatusCode.INVALID_ARGUMENT,
                        f"the body must be JSON, sent with 'Content-Type: {JSON}' (got {request.content_type or 'none'!r})", http_status=415)
    try:
        text = _body().decode("utf-8")
    except UnicodeDecodeError:
        raise HttpError(grpc.StatusCode.INVALID_ARGUMENT, "the body is not UTF-8") from None
    if not text.lstrip().startswith("{"):
        raise HttpError(grpc.StatusCode.INVALID_ARGUMENT, f"the body must be a JSON object: an {message.DESCRIPTOR.name}")
    _check_event_count(text)
    try:
        json_format.Parse(text, message)
    except json_format.ParseError as error:
        raise _not_parsed(str(error), text, type(message)) from None


def _check_event_count(text: str) -> None:
    """EventValidationError for a batch over MAX_BATCH events, before json_format reads them:
    it took 1.1 s of CPU over the 82,000 small events of a 4 MiB body (json.loads: 0.06 s).
    A body nested deeper than the JSON parser recurses is refused here too: json_format
    would raise the same RecursionError, which is no ParseError (it was a 500 "internal error")."""
    try:
        events = json.loads(text).get("events")
    except ValueError:
        return  # json_format says what is wrong
    except RecursionError:
        raise HttpError(grpc.StatusCode.INVALID_ARGUMENT, "the body is nested too deeply to be an IngestRequest") from None
    if isinstance(events, list):
        check_batch_size(len(events))


def _body() -> bytes:
    """The request body, decoded from its Content-Encoding; 413 when it is larger than gRPC
    would take a message, compressed or not (read and inflate no further)."""
    limit = web_context().max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    wbits = _content_coding_wbits()
    # A chunked body has no length to check first, and Werkzeug stops reading it at the
    # limit without saying so: read one byte past it to tell a cut body from a whole one.
    request.max_content_length = limit + 1
    try:
        body = request.get_data(cache=False)
    except RequestEntityTooLarge:
        raise _too_large(limit) from None
    except ClientDisconnected:
        raise _body_cut_short() from None
    if len(body) > limit:
        raise _too_large(limit)
    return body if wbits is None else _inflated(body, wbits, limit)


def _too_large(limit: int) -> HttpError:
    _discard_body_once_answered()
    return HttpError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"the body is larger than {limit} bytes", http_status=413)


def _body_cut_short() -> HttpError:
    """The client reset the connection, or sent nothing for cheroot's read timeout, before the
    end of its body: CANCELLED, as gRPC counts a call whose client went away, not a bug."""
    return HttpError(grpc.StatusCode.CANCELLED, "the body ended before its Content-Length: the client went away or stopped sending")


def _discard_body_once_answered() -> None:
    """Once the 413 is sent, read what is left of the body, keeping none of it. cheroot closes
    the connection after a 413; closed with the body unread, it was reset, and a client still
    sending (most send the whole body before they read) got a broken pipe instead of the
    answer. Read after the answer, so that a client that waits for it before sending the
    body has it at once. cheroot caps what there is to read (web/__init__.py, BODY_CAP_FACTOR)."""
    stream = request.environ["wsgi.input"]

    @after_this_request
    def discard_when_sent(response: Response) -> Response:
        response.call_on_close(lambda: _discard(stream))
        return response


def _discard(stream: Any) -> None:
    with contextlib.suppress(MaxSizeExceeded, OSError, ValueError):  # past the cap, a client gone or stalled, bad chunks
        while stream.read(DISCARD_CHUNK_BYTES):
            pass


def _content_coding_wbits() -> int | None:
    """zlib's wbits for the body's Content-Encoding (None: not compressed); 415 for a coding this server cannot read."""
    coding = request.headers.get("Content-Encoding", "identity").strip().lower() or "identity"
    if coding not in _CONTENT_CODINGS:
        raise HttpError(grpc.StatusCode.INVALID_ARGUMENT,
                        f"Content-Encoding {coding!r} is not supported: send gzip, deflate or identity", http_status=415)
    return _CONTENT_CODINGS[coding]


def _inflated(body: bytes, wbits: int, limit: int) -> bytes:
    """``body`` decompressed, at most ``limit`` bytes of it (a small body can inflate to gigabytes).
    A gzip body may be several members one after another (RFC 1952), as concatenating gzip
    files or streaming compressors make it: each is read, where all after the first were dropped."""
    parts, size, rest = [], 0, body
    while rest:
        decompressor = zlib.decompressobj(wbits)
        try:
            data = decompressor.decompress(rest, limit + 1 - size)
        except zlib.error as error:
            raise HttpError(grpc.StatusCode.INVALID_ARGUMENT, f"the body is not what its Content-Encoding says: {error}") from None
        size += len(data)
        if size > limit:
            raise _too_large(limit)
        if not decompressor.eof:
            raise HttpError(grpc.StatusCode.INVALID_ARGUMENT, "the body is not what its Content-Encoding says: it is cut short")
        parts.append(data)
        rest = decompressor.unused_data
    return b"".join(parts)


def _not_parsed(description: str, body: str, message_type: type[Message]) -> HttpError:
    """A 400 for a json_format ParseError of ``body`` as a ``message_type``, naming the field when it can."""
    description = re.sub(r"^(Failed to load JSON: )+", "Failed to load JSON: ", description)  # protobuf says it twice
    field = _parse_error_field(description, body, message_type)
    return HttpError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {description}" if field else description, field, description)


def _parse_error_field(text: str, body: str, message_type: type[Message]) -> str:
    """The field a json_format ParseError about ``body`` is about, as precisely as its text
    names it, else as found by parsing the body's parts ("" if not at all)."""
    locations = re.findall(rf' at "?{re.escape(message_type.DESCRIPTOR.name)}\.?([\w.\[\]]*)', text)  # the last: a value may hold " at "
    unknown = _PARSE_UNKNOWN_FIELD.search(text)
    path = [locations[-1].rstrip(".")] if locations else []
    path += [unknown.group(1)] if unknown else []
    if any(path):
        return ".".join(p for p in path if p)
    try:
        return _unparsable_part(json.loads(body), message_type) or ".".join(_PARSE_FIELD.findall(text))
    except ValueError:  # not JSON at all (protobuf's text says where)
        return ""


def _unparsable_part(value: Any, message_type: type[Message]) -> str:
    """The path (the names the body uses, list indexes) of the first field of ``value``,
    parsed JSON, that json_format cannot read as part of a ``message_type``; "" if none is."""
    if not isinstance(value, dict):
        return ""
    descriptor = message_type.DESCRIPTOR
    for key, part in value.items():
        field = descriptor.fields_by_camelcase_name.get(key) or descriptor.fields_by_name.get(key)
        if field is None:
            continue
        elements = list(enumerate(part)) if field.is_repeated and isinstance(part, list) else [(None, part)]
        for index, element in elements:
            try:
                json_format.ParseDict({key: element if index is None else [element]}, message_type())
            except json_format.ParseError:
                name = key if index is None else f"{key}[{index}]"
                inner = _unparsable_part(element, GetMessageClass(field.message_type)) if field.message_type else ""
                return f"{name}.{inner}" if inner else name
    return ""
