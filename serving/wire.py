"""Request bytes that protobuf cannot parse, answered as INVALID_ARGUMENT naming the field.

gRPC parses a request before any handler runs; a parse error there would end the call as
UNKNOWN with protobuf's own words ("String field had bad UTF-8", no field named). The
service's handlers are registered with ``lenient`` deserializers instead: bytes that do not
parse become a ``MalformedRequest``, which the servicer refuses like any invalid field.
``locate`` walks the wire format to name the field at fault (``events[2].event_id``).
``add_lenient`` registers other services (health, reflection) so, refusing such bytes itself.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

from serving.feed_service import InvalidRequest

MAX_DEPTH = 100  # protobuf's own recursion limit
MAX_FIELD_NUMBER = 2**29 - 1
MAX_FIELDS_OF_OTHER_SERVICES = 100
"""The fields ``locate`` reads in a request of health or reflection (a few at most) before it
gives up naming the one at fault: it runs on the event loop, and those services need no
token. Reading 2 million unknown fields before a service name that is not UTF-8 (a 4 MiB
health Check) held every call of the server for 7.6 s."""


class MalformedRequest:
    """Stands in for a request whose bytes do not parse; ``error`` names the field at fault."""

    def __init__(self, error: InvalidRequest) -> None:
        self.error = error


def lenient(message_type: type[Message], max_fields: int) -> Callable[[bytes], Message | MalformedRequest]:
    """A request deserializer that answers bytes protobuf refuses with a ``MalformedRequest``,
    naming the field at fault if it is among the first ``max_fields`` (those of a valid request)."""

    def parse(data: bytes) -> Message | MalformedRequest:
        try:
            return message_type.FromString(data)
        except DecodeError as error:
            field, reason = locate(data, message_type.DESCRIPTOR, max_fields) or ("", f"{error}")
            return MalformedRequest(InvalidRequest(field or "request", f"not a valid {message_type.DESCRIPTOR.name}: {reason}"))

    return parse


Handlers = dict[str, grpc.RpcMethodHandler]


def add_lenient(add_to_server: Callable[[Any, Any], None], servicer: Any, server: grpc.aio.Server) -> dict[str, Handlers]:
    """Register ``servicer`` on ``server`` as the generated ``add_to_server(servicer, server)``
    would, but with ``lenient`` deserializers: a request that does not parse is refused with
    INVALID_ARGUMENT naming the field, where gRPC answered UNKNOWN and logged the DecodeError
    with its traceback as an error, once per such call. Returns the handlers by service."""
    registrar = _Registrar()
    add_to_server(servicer, registrar)
    services = {}
    for service, handlers in registrar.services.items():
        services[service] = {name: _lenient_handler(handler) for name, handler in handlers.items()}
        register(server, service, services[service])
    return services


def register(server: grpc.aio.Server, service: str, handlers: Handlers) -> None:
    """Serve ``handlers`` (by method name) as ``service``."""
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)


class _Registrar:
    """Stands in for a server to collect what a generated ``add_*Servicer_to_server`` registers."""

    def __init__(self) -> None:
        self.services: dict[str, Handlers] = {}

    def add_generic_rpc_handlers(self, _: Any) -> None:
        """The same handlers come again through ``add_registered_method_handlers``."""

    def add_registered_method_handlers(self, service: str, handlers: Handlers) -> None:
        self.services[service] = handlers


def _lenient_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    message_type = handler.request_deserializer.__self__  # generated code passes Message.FromString
    deserializer = lenient(message_type, MAX_FIELDS_OF_OTHER_SERVICES)
    if handler.request_streaming:
        kind = "stream_stream" if handler.response_streaming else "stream_unary"
        return handler._replace(request_deserializer=deserializer, **{kind: _refusing_in_stream(getattr(handler, kind))})
    kind = "unary_stream" if handler.response_streaming else "unary_unary"
    return handler._replace(request_deserializer=deserializer, **{kind: _refusing(getattr(handler, kind))})


def _refusing(behavior: Callable) -> Callable:
    """``behavior`` (a coroutine) of a unary request, refusing a ``MalformedRequest``."""

    async def refusing(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, MalformedRequest):
            return _refuse(context, request.error)
        return await behavior(request, context)

    return refusing


def _refusing_in_stream(behavior: Callable) -> Callable:
    """``behavior`` (an async generator) of a request stream, ending the call at its first ``MalformedRequest``."""

    async def refusing(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> None:
        try:
            async for response in behavior(_parsed(requests), context):
                await context.write(response)
        except InvalidRequest as error:
            _refuse(context, error)

    return refusing


async def _parsed(requests: AsyncIterator[Any]) -> AsyncIterator[Message]:
    async for request in requests:
        if isinstance(request, MalformedRequest):
            raise request.error
        yield request


def _refuse(context: grpc.aio.ServicerContext, error: InvalidRequest) -> None:
    context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
    context.set_details(str(error))


class _TooManyFields(Exception):
    """More fields were read than a valid request holds, without finding the fault."""


def locate(data: bytes, descriptor: Descriptor, max_fields: int) -> tuple[str, str] | None:
    """(field path, what is wrong) for the first fault in ``data`` read as ``descriptor``; None
    when none is found within its first ``max_fields`` fields (nested ones included)."""
    fields_read = itertools.count(1)
    try:
        return _locate(data, descriptor, "", 0, lambda: next(fields_read) > max_fields)
    except _TooManyFields:
        return None


def _locate(data: bytes, descriptor: Descriptor, prefix: str, depth: int, too_many: Callable[[], bool]) -> tuple[str, str] | None:
    if depth > MAX_DEPTH:
        return prefix, "nested too deeply"
    occurrences: Counter[int] = Counter()
    position = 0
    while position < len(data):
        if too_many():
            raise _TooManyFields
        key, position, why = _tag(data, position)
        if key is None:
            return prefix, why
        number, wire_type = key >> 3, key & 7
        field = descriptor.fields_by_number.get(number)
        path = _path(prefix, field, number, occurrences[number])
        occurrences[number] += 1
        if number == 0:  # protobuf lets it pass inside a group only
            why = "0 is not a field number"
        if why is not None:
            return path, why
        if wire_type == 2:
            length, position = _varint(data, position)
            if length is None or position + length > len(data):
                return path, "cut short: its length runs past the end of the message"
            chunk, position = data[position:position + length], position + length
            fault = _check_chunk(chunk, field, path, depth, too_many)
            if fault is not None:
                return fault
        else:
            # Any other wire type, a group (proto2) included, is kept as an unknown field if well formed.
            why, position = _skip(data, position, number, wire_type, depth, too_many)
            if why is not None:
                return path, why
    return None


def _skip(data: bytes, position: int, number: int, wire_type: int, depth: int,
          too_many: Callable[[], bool]) -> tuple[str | None, int]:
    """(what is wrong or None, the position after it) of the value of field ``number`` at ``position``."""
    if wire_type == 0:
        value, position = _varint(data, position)
        return ("cut short inside a number" if value is None else None), position
    if wire_type in (1, 5):
        position += 8 if wire_type == 1 else 4
        return ("cut short inside a number" if position > len(data) else None), position
    if wire_type == 2:
        length, position = _varint(data, position)
        if length is None or position + length > len(data):
            return "cut short: its length runs past the end of the message", position
        return None, position + length
    if wire_type == 3:
        return _skip_group(data, position, number, depth + 1, too_many)
    if wire_type == 4:
        return "ends a group that did not start", position
    return f"wire type {wire_type} is not one protobuf 3 writes", position


def _skip_group(data: bytes, position: int, number: int, depth: int, too_many: Callable[[], bool]) -> tuple[str | None, int]:
    if depth > MAX_DEPTH:
        return "nested too deeply", position
    while position < len(data):
        if too_many():
            raise _TooManyFields
        key, position, why = _tag(data, position)
        if why is not None:
            return why, position
        if key & 7 == 4:
            return (None if key >> 3 == number else f"the group ends with field {key >> 3}'s end"), position
        why, position = _skip(data, position, key >> 3, key & 7, depth, too_many)
        if why is not None:
            return why, position
    return "cut short: the group has no end", position


def _check_chunk(chunk: bytes, field: FieldDescriptor | None, path: str, depth: int,
                 too_many: Callable[[], bool]) -> tuple[str, str] | None:
    if field is None:
        return None  # an unknown field: kept as bytes, never read
    if field.type == FieldDescriptor.TYPE_STRING:
        try:
            chunk.decode("utf-8")
        except UnicodeDecodeError as error:
            return path, f"not UTF-8 (byte {error.start})"
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        return _locate(chunk, field.message_type, path, depth + 1, too_many)
    return None


def _tag(data: bytes, position: int) -> tuple[int | None, int, str | None]:
    """(the key, or None if it cannot be read; the position after it; what is wrong with it or None)."""
    start = position
    key, position = _varint(data, position)
    if key is None:
        return None, position, "cut short inside a field's tag"
    if position - start > 5:
        return None, position, "a field's tag takes more than 5 bytes"
    if key >> 3 > MAX_FIELD_NUMBER:
        return key, position, f"field numbers end at {MAX_FIELD_NUMBER}"
    return key, position, None


def _path(prefix: str, field: FieldDescriptor | None, number: int, index: int) -> str:
    name = field.name if field is not None else f"field {number}"
    if field is not None and field.is_repeated:
        name = f"{name}[{index}]"
    return f"{prefix}.{name}" if prefix else name


def _varint(data: bytes, position: int) -> tuple[int | None, int]:
    value, shift = 0, 0
    while position < len(data) and shift < 70:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
    return None, position
