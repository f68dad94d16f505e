"""Thin gRPC servicer: proto messages in, plain calls, proto messages out."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from protos.feed.v1 import feed_pb2, feed_pb2_grpc
from ranking.types import RankedItem, ShopperFilters
from serving.feed_service import FeedEnded, FeedPage, FeedService, InvalidRequest
from serving.logs import LineBudget, cancelled_code, expired
from serving.metrics import FeedMetrics
from serving.wire import MalformedRequest, lenient
from stores.base import NotReplicated, StoreForbidden, StoreFull, StoreUnavailable, TooFewReplicas
from stores.events import CARD_FIELDS, Event, EventKind, EventValidationError, check_batch_size

# Payload field of the Event oneof -> (kind, fields copied from the payload message).
_PAYLOADS: dict[str, EventKind] = {
    "like": EventKind.LIKE,
    "unlike": EventKind.UNLIKE,
    "follow": EventKind.FOLLOW,
    "unfollow": EventKind.UNFOLLOW,
    "friend": EventKind.FRIEND,
    "unfriend": EventKind.UNFRIEND,
    "item_upsert": EventKind.ITEM_UPSERT,
    "stock_update": EventKind.STOCK_UPDATE,
    "not_interested_item": EventKind.NOT_INTERESTED_ITEM,
    "not_interested_seller": EventKind.NOT_INTERESTED_SELLER,
    "item_update": EventKind.ITEM_UPDATE,
    "seller_vacation": EventKind.SELLER_VACATION,
    "seller_vacation_end": EventKind.SELLER_VACATION_END,
    "share": EventKind.SHARE,
    "view": EventKind.VIEW,
    "click": EventKind.CLICK,
    "add_to_cart": EventKind.ADD_TO_CART,
    "purchase": EventKind.PURCHASE,
}
_COPIED_FIELDS = ("user_id", "item_id", "seller_id", "friend_id", "stock")


def _payload_fields(payload_name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The copied fields and the card fields that ``payload_name``'s message has: looked up once,
    as ``hasattr`` on a proto message costs an exception for each field it lacks."""
    fields = feed_pb2.Event.DESCRIPTOR.fields_by_name[payload_name].message_type.fields_by_name
    return tuple(name for name in _COPIED_FIELDS if name in fields), tuple(name for name in CARD_FIELDS if name in fields)


_FIELDS_OF_PAYLOAD = {payload_name: _payload_fields(payload_name) for payload_name in _PAYLOADS}


def event_from_proto(index: int, message: feed_pb2.Event, received_at: float) -> Event:
    """Translate one proto event; a missing payload is reported with its index."""
    payload_name = message.WhichOneof("payload")
    if payload_name is None:
        raise EventValidationError(index, "payload", "one of " + ", ".join(_PAYLOADS) + " must be set")
    payload = getattr(message, payload_name)
    copied, card = _FIELDS_OF_PAYLOAD[payload_name]
    fields = {name: getattr(payload, name) for name in copied}
    # Card fields follow proto3 presence: only the ones set are named.
    fields.update({name: getattr(payload, name) for name in card if payload.HasField(name)})
    ts = message.ts or received_at
    if payload_name == "item_upsert":
        fields["created_at"] = payload.created_at or None  # unset: the store keeps an existing item's
    elif payload_name == "seller_vacation":
        fields["vacation_until"] = payload.until or math.inf
    return Event(event_id=message.event_id, kind=_PAYLOADS[payload_name], ts=ts, **fields)


def shopper_filters_from_proto(request: feed_pb2.GetFeedRequest) -> ShopperFilters:
    return ShopperFilters(
        include_categories=tuple(request.include_categories),
        exclude_categories=tuple(request.exclude_categories),
        **{name: getattr(request, name) for name in ("min_price", "max_price", "max_ship_days") if request.HasField(name)},
    )


def feed_item_to_proto(item: RankedItem) -> feed_pb2.FeedItem:
    return _add_feed_item(feed_pb2.FeedItem, item)


def _add_feed_item(add: Callable[..., feed_pb2.FeedItem], item: RankedItem) -> feed_pb2.FeedItem:
    """``item`` as a FeedItem made by ``add``: the message's constructor, or a repeated
    field's ``add``, which builds it in place (a message built apart and passed in a list
    is built, then copied; a GetFeed's items cost about a third less in place)."""
    card = item.card
    message = add(
        item_id=item.item_id,
        seller_id=item.seller_id,
        score=item.score,
        title=card.title,
        image_url=card.image_url,
        price=card.price,
        currency=card.currency,
        category=card.category,
        ship_days=card.ship_days,
        news=item.news,
    )
    # RankedItem keeps its reasons in ReasonKind order already.
    add_reason = message.reasons.add
    for reason in item.reasons:
        add_reason(kind=reason.kind.value, actor_ids=reason.actor_ids, count=reason.count)
    return message


_LOG = logging.getLogger("feedrank.serving")
# How long a client should wait before retrying after UNAVAILABLE or a full store (google.rpc.RetryInfo).
RETRY_DELAY_SECONDS = 1.0
STORE_UNAVAILABLE = "store unavailable"
STORE_FULL = "store out of memory: the batch was not acknowledged; retrying it later is safe"
STORE_FORBIDDEN = "the store refuses this server a permission it needs (an operator must grant it; until then a retry fails alike)"


class RateLimitedLog:
    """Logs ``what`` went wrong in a call, with the error, at ``level``, at most once per
    ``every_seconds`` with a count of the calls in between, so an outage (or a client
    that keeps asking for what is refused) does not flood the log. For the store's
    failures the client only reads STORE_UNAVAILABLE, STORE_FULL or STORE_FORBIDDEN with
    what was refused: the detail logged here names internal hosts.

    The count is only logged with the next report, which may come with another outage
    long after: it says how long ago the calls it counts failed."""

    def __init__(self, what: str = STORE_UNAVAILABLE, level: int = logging.WARNING, every_seconds: float = 10.0) -> None:
        self.what = what
        self.level = level
        self._lock = threading.Lock()
        self._budget = LineBudget(1, every_seconds)

    def __call__(self, method: str, error: BaseException) -> None:
        budget = self._budget
        with self._lock:
            last = budget.window_started
            if not budget.admit():
                return
            now, latest, suppressed = budget.window_started, budget.latest_suppressed, budget.take_suppressed()
        counted = (f" (and {suppressed} more failed calls since the report {now - last:.0f} s ago, "
                   f"the latest {now - latest:.0f} s ago)") if suppressed else ""
        _LOG.log(self.level, "%s: %s: %s%s", method, self.what, error, counted)


_log_outage = RateLimitedLog()
# Redis at maxmemory refusing writes: no outage that passes by itself, an operator must act.
_log_full = RateLimitedLog("store out of memory: writes are refused until Redis has room (raise maxmemory, trim the event stream)", logging.ERROR)
# Redis's ACL user not allowed a command or key: nothing passes by itself either.
_log_forbidden = RateLimitedLog("store refuses this server a permission: calls that need it fail until the Redis ACL user is granted it", logging.ERROR)
# Replicas that did not confirm a batch in time: the client is told without the hosts.
_log_not_replicated = RateLimitedLog("not replicated")
# Clients asking more replicas than are attached: their writes fail until an operator or they act.
_log_too_few_replicas = RateLimitedLog("min_replicas above the replicas attached: Ingest is refused, writing nothing")


@dataclass(frozen=True)
class Refusal:
    """Why a call failed, as the client is told over gRPC and HTTP alike: a status ``code``
    and ``message``; ``field`` and ``description`` when one request field is at fault;
    ``retry_after`` seconds when the same call may succeed later."""

    code: grpc.StatusCode
    message: str
    field: str = ""
    description: str = ""
    retry_after: float | None = None


LOADING = Refusal(grpc.StatusCode.UNAVAILABLE, "the server is still loading its model and store", retry_after=RETRY_DELAY_SECONDS)


class Refused(Exception):
    """A refusal decided elsewhere (a feed process, serving/feed_processes.py), answered as it is."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


def refusal_of(error: Exception, method: str) -> Refusal:
    """The answer to a call of ``method`` that raised ``error``; logs outages (rate-limited) and bugs."""
    if isinstance(error, Refused):
        return error.refusal
    if isinstance(error, InvalidRequest):
        code = grpc.StatusCode.OUT_OF_RANGE if isinstance(error, FeedEnded) else grpc.StatusCode.INVALID_ARGUMENT
        return Refusal(code, str(error), error.field, error.description)
    if isinstance(error, EventValidationError):
        return Refusal(grpc.StatusCode.INVALID_ARGUMENT, str(error), error.path, error.description)
    if isinstance(error, TooFewReplicas):  # nothing written
        _log_too_few_replicas(method, error)
        message = f"min_replicas: {error.for_clients}"
        if not error.retryable:
            return Refusal(grpc.StatusCode.FAILED_PRECONDITION, message, "min_replicas", error.for_clients)
        # Replicas come back by themselves (a restart, a failed primary rejoining): a producer
        # told not to retry might drop its events, so the call is retryable, and answered at once.
        return Refusal(grpc.StatusCode.UNAVAILABLE, message, "min_replicas", error.for_clients, retry_after=RETRY_DELAY_SECONDS)
    if isinstance(error, NotReplicated):  # applied on the primaries: say so, a retry is safe
        _log_not_replicated(method, error)
        return Refusal(grpc.StatusCode.UNAVAILABLE, f"not replicated: {error.for_clients}", retry_after=RETRY_DELAY_SECONDS)
    if isinstance(error, StoreForbidden):  # before StoreUnavailable, its base: no retry helps until an operator acts
        _log_forbidden(method, error)
        return Refusal(grpc.StatusCode.FAILED_PRECONDITION, f"{STORE_FORBIDDEN}: {error.refused}")
    if isinstance(error, StoreFull):  # before StoreUnavailable, its base: reads still work
        _log_full(method, error)
        return Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, STORE_FULL, retry_after=RETRY_DELAY_SECONDS)
    if isinstance(error, StoreUnavailable):
        _log_outage(method, error)
        return Refusal(grpc.StatusCode.UNAVAILABLE, STORE_UNAVAILABLE, retry_after=RETRY_DELAY_SECONDS)
    # A bug, not the client's fault: log the traceback, answer without internals.
    _LOG.error("%s failed", method, exc_info=error)
    return Refusal(grpc.StatusCode.INTERNAL, "internal error")


def refuse(context: grpc.aio.ServicerContext, refusal: Refusal) -> None:
    """Make the RPC end as ``refusal`` says once its handler returns (return None after this).

    A field at fault goes in a google.rpc.BadRequest, a retry delay in a google.rpc.RetryInfo,
    packed as a google.rpc.Status in the trailers (grpcio-status: ``rpc_status.from_call``
    reads them), after the trailers already set (the access log's x-request-id). Unlike
    ``abort``, which sends the status at once, the status leaves after the interceptors
    have counted and logged the call: a client that sees it also sees its metrics.
    """
    context.set_code(refusal.code)
    context.set_details(refusal.message)
    trailers = status_trailers(refusal)
    if trailers:
        context.set_trailing_metadata(tuple(context.trailing_metadata() or ()) + trailers)


def status_trailers(refusal: Refusal) -> tuple[tuple[str, bytes], ...]:
    """The google.rpc.Status trailer of ``refusal``'s details (none when it has none)."""
    details: list[Message] = []
    if refusal.field:
        violation = error_details_pb2.BadRequest.FieldViolation(field=refusal.field, description=refusal.description)
        details.append(error_details_pb2.BadRequest(field_violations=[violation]))
    if refusal.retry_after is not None:
        delay = duration_pb2.Duration(seconds=int(refusal.retry_after), nanos=int(refusal.retry_after % 1 * 1e9))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    if not details:
        return ()
    status = status_pb2.Status(code=refusal.code.value[0], message=refusal.message, details=[_packed(d) for d in details])
    return tuple(rpc_status.to_status(status).trailing_metadata)


def _packed(detail: Message) -> any_pb2.Any:
    holder = any_pb2.Any()
    holder.Pack(detail)
    return holder


def get_feed_response(service: FeedService, request: feed_pb2.GetFeedRequest, now: float) -> feed_pb2.GetFeedResponse:
    return page_response(feed_page(service, request, now))


def feed_page(service: FeedService, request: feed_pb2.GetFeedRequest, now: float) -> FeedPage:
    return service.get_feed(
        request.user_id, request.limit, request.page_token, list(request.exclude_item_ids), now, shopper_filters_from_proto(request),
    )


def page_response(page: FeedPage) -> feed_pb2.GetFeedResponse:
    response = feed_pb2.GetFeedResponse(next_page_token=page.next_page_token, model_version=page.model_version, arm=page.arm)
    add_item = response.items.add
    for item in page.items:
        _add_feed_item(add_item, item)
    return response


def ingest_response(service: FeedService, request: feed_pb2.IngestRequest, received_at: float) -> feed_pb2.IngestResponse:
    # Before translating: a 4 MiB request holds ~320,000 small events, 2.8 s of CPU to translate.
    check_batch_size(len(request.events))
    events = [event_from_proto(i, message, received_at) for i, message in enumerate(request.events)]
    result = service.ingest(events, now=received_at, min_replicas=request.min_replicas)
    return feed_pb2.IngestResponse(applied=result.applied, duplicates=result.duplicates)


def served_by(service: FeedService | None, request: Message | None) -> tuple[str, str]:
    """The model version and A/B arm that serve ``request``, for the access line of a call
    without a response: a GetFeed's user's own (their arm's model), else CURRENT's."""
    if service is None:
        return "", ""
    if isinstance(request, feed_pb2.GetFeedRequest):
        return service.served_by(request.user_id)
    return service.model_version, ""


def observe_call(service: FeedService, method: str, code: grpc.StatusCode, seconds: float,
                 request: Message | None, response: Message | None) -> None:
    """Count a call by final status code and time it; a GetFeed also by A/B arm, even when it fails.

    ``request`` None: refused before it was read (no arm to count it under).
    """
    arm = None
    if isinstance(request, feed_pb2.GetFeedRequest):
        arm = response.arm if response is not None else service.arm_of(request.user_id)
    service.metrics.observe_request(method, code.name, seconds, arm)


async def _run(pool: Executor | None, respond: Callable[..., Message], *args: Any) -> Message:
    if pool is None:
        answer = respond(*args)
        return await answer if inspect.isawaitable(answer) else answer
    # The copied context carries the call's request id into the thread's log records.
    call = functools.partial(contextvars.copy_context().run, respond, *args)
    return await asyncio.get_running_loop().run_in_executor(pool, call)


EXPIRED = Refusal(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before the answer was ready")  # GetFeed and Ingest alike


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline on the ``time.time()`` clock, which the feed processes share; None without one."""
    remaining = context.time_remaining()
    return None if remaining is None else time.time() + remaining


class FeedServicer(feed_pb2_grpc.FeedServiceServicer):
    """The FeedService of a grpc.aio server; answers UNAVAILABLE until ``service`` is set,
    counting those calls in ``metrics`` (the service's, once it is loaded).

    A GetFeed runs on ``feed_pool``, an Ingest on ``ingest_pool``; None runs it on the event
    loop itself. A feed from the memory store is ~1.5 ms of CPU, and on the loop it saves a
    thread hand-off per call; an Ingest may wait on a disk (the write-ahead log's fsync) or
    on replicas, which must not hold up the loop. With ``build_feed`` (an async
    ``get_feed_response`` that also takes the call's ``deadline``, on the ``time.time()``
    clock or None: ``FeedProcesses.get_feed_response``) GetFeeds are built there instead.
    """

    def __init__(self, service: FeedService | None = None, metrics: FeedMetrics | None = None, feed_pool: Executor | None = None,
                 ingest_pool: Executor | None = None,
                 build_feed: Callable[[FeedService, feed_pb2.GetFeedRequest, float, float | None],
                                      Awaitable[feed_pb2.GetFeedResponse]] | None = None) -> None:
        self.service = service
        self.metrics = metrics
        self.feed_pool = None if build_feed else feed_pool
        self.ingest_pool = ingest_pool
        self.build_feed = build_feed

    async def GetFeed(self, request: feed_pb2.GetFeedRequest, context: grpc.aio.ServicerContext) -> feed_pb2.GetFeedResponse:
        build = get_feed_response if self.build_feed is None else functools.partial(self.build_feed, deadline=_deadline(context))
        return await self._answer("GetFeed", build, self.feed_pool, request, context, late_is_expired=True)

    async def Ingest(self, request: feed_pb2.IngestRequest, context: grpc.aio.ServicerContext) -> feed_pb2.IngestResponse:
        # Applied events stay applied: a late answer is still the truth, not DEADLINE_EXCEEDED.
        return await self._answer("Ingest", ingest_response, self.ingest_pool, request, context, late_is_expired=False)

    async def _answer(self, method: str, respond: Callable[[FeedService, Any, float], Message | Awaitable[Message]],
                      pool: Executor | None, request: Message, context: grpc.aio.ServicerContext,
                      late_is_expired: bool) -> Message | None:
        """``respond(service, request, now)`` on ``pool`` (None: here, awaited if it is async), counted and timed in the
        service's metrics (``observe_call``); a failure becomes its refusal (``refusal_of``)."""
        service = self.service
        if service is None:
            if self.metrics is not None:
                self.metrics.observe_request(method, LOADING.code.name, 0.0)
            return refuse(context, LOADING)
        if isinstance(request, MalformedRequest):
            observe_call(service, method, grpc.StatusCode.INVALID_ARGUMENT, 0.0, None, None)
            return refuse(context, refusal_of(request.error, method))
        started = time.perf_counter()
        response, refusal = None, EXPIRED if expired(context) else None
        if refusal is None:
            try:
                response = await _run(pool, respond, service, request, time.time())
            except asyncio.CancelledError:  # the client went away or its deadline passed: counted, then gRPC ends the call
                observe_call(service, method, cancelled_code(context), time.perf_counter() - started, request, None)
                raise
            except Exception as error:  # noqa: BLE001 (refusal_of logs a bug with its traceback)
                refusal = refusal_of(error, method)
            if refusal is None and late_is_expired and expired(context):
                response, refusal = None, EXPIRED
        code = refusal.code if refusal is not None else grpc.StatusCode.OK
        observe_call(service, method, code, time.perf_counter() - started, request, response)
        if refusal is not None:
            return refuse(context, refusal)
        return response


# More fields than a valid request holds (serving/wire.py reads no more to name the one at
# fault, on the event loop): a GetFeedRequest has at most 1,206 (MAX_EXCLUDED exclusions,
# MAX_CATEGORIES of each kind of category, 6 more), an IngestRequest 150,001 (MAX_BATCH item
# upserts with every field: 0.3 s to read).
MAX_GET_FEED_FIELDS = 2_000
MAX_INGEST_FIELDS = 200_000


def add_feed_service(servicer: FeedServicer, server: grpc.aio.Server) -> None:
    """``feed_pb2_grpc.add_FeedServiceServicer_to_server``, with requests that do not parse
    refused as INVALID_ARGUMENT by the servicer (serving/wire.py) instead of UNKNOWN by gRPC."""
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name), request_deserializer=lenient(request, max_fields), response_serializer=response.SerializeToString,
        )
        for name, request, response, max_fields in (
            ("GetFeed", feed_pb2.GetFeedRequest, feed_pb2.GetFeedResponse, MAX_GET_FEED_FIELDS),
            ("Ingest", feed_pb2.IngestRequest, feed_pb2.IngestResponse, MAX_INGEST_FIELDS),
        )
    }
    service_name = feed_pb2.DESCRIPTOR.services_by_name["FeedService"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service_name, handlers),))
    server.add_registered_method_handlers(service_name, handlers)
