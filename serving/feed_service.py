"""The feed service as plain functions: validation, paging and ingest, free of gRPC.

The gRPC servicer only translates messages and maps the errors raised here to status
codes.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from ranking.feed import FeedSettings, build_feed_pipeline
from ranking.pipeline import FeedPipeline
from ranking.types import RankedItem, ShopperFilters
from serving.metrics import FeedMetrics
from serving.page_token import EMPTY, MAX_SERVED, PageTokenCodec
from stores.base import ApplyResult, FeedStore
from stores.events import MAX_CATEGORY_BYTES, MAX_ID_BYTES, MAX_SHIP_DAYS, Event, validate_batch
from training.artifact import Artifact

MAX_LIMIT = 100
MAX_EXCLUDED = 1_000
MAX_CATEGORIES = 100


class InvalidRequest(ValueError):
    """A request field is invalid; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class FeedPage:
    items: list[RankedItem]
    next_page_token: str
    model_version: str


def validate_shopper_filters(shopper: ShopperFilters) -> None:
    for name in ("include_categories", "exclude_categories"):
        values = getattr(shopper, name)
        if len(values) > MAX_CATEGORIES:
            raise InvalidRequest(name, f"at most {MAX_CATEGORIES} categories, got {len(values)}")
        for value in values:
            if not value or len(value.encode()) > MAX_CATEGORY_BYTES:
                raise InvalidRequest(name, f"each category must be 1 to {MAX_CATEGORY_BYTES} bytes")
    for name in ("min_price", "max_price"):
        value = getattr(shopper, name)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise InvalidRequest(name, f"must be a non-negative number, got {value}")
    if shopper.min_price is not None and shopper.max_price is not None and shopper.max_price < shopper.min_price:
        raise InvalidRequest("max_price", f"must be >= min_price ({shopper.min_price}), got {shopper.max_price}")
    if shopper.max_ship_days is not None and not 0 <= shopper.max_ship_days <= MAX_SHIP_DAYS:
        raise InvalidRequest("max_ship_days", f"must be between 0 and {MAX_SHIP_DAYS}, got {shopper.max_ship_days}")


def validate_user_id(user_id: str) -> None:
    if not user_id:
        raise InvalidRequest("user_id", "must not be empty")
    if len(user_id.encode()) > MAX_ID_BYTES:
        raise InvalidRequest("user_id", f"longer than {MAX_ID_BYTES} bytes")


class FeedService:
    """Builds feeds from a store and the current model artifact; swaps models atomically."""

    def __init__(
        self,
        store: FeedStore,
        artifact: Artifact,
        codec: PageTokenCodec,
        settings: FeedSettings,
        metrics: FeedMetrics | None = None,
    ) -> None:
        self.store = store
        self.codec = codec
        self.settings = settings
        self.metrics = metrics or FeedMetrics()
        self._lock = threading.Lock()
        self._artifact = artifact
        self._pipeline = self._build(artifact)
        self.metrics.set_model(artifact.version)

    def _build(self, artifact: Artifact) -> FeedPipeline:
        return build_feed_pipeline(self.store, artifact.model, artifact.ranker, self.settings)

    @property
    def model_version(self) -> str:
        return self._artifact.version

    def swap_artifact(self, artifact: Artifact) -> None:
        pipeline = self._build(artifact)
        with self._lock:
            self._artifact, self._pipeline = artifact, pipeline
        self.metrics.set_model(artifact.version)

    def get_feed(
        self,
        user_id: str,
        limit: int,
        page_token: str,
        exclude_item_ids: Sequence[str],
        now: float,
        shopper: ShopperFilters = ShopperFilters(),
    ) -> FeedPage:
        """One page of ``user_id``'s feed, narrowed by ``shopper``.

        Raises InvalidRequest for a bad field (including a page token that is malformed,
        tampered with, or another user's) and StoreUnavailable when the store is down.
        """
        validate_user_id(user_id)
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidRequest("limit", f"must be between 1 and {MAX_LIMIT}, got {limit}")
        if len(exclude_item_ids) > MAX_EXCLUDED:
            raise InvalidRequest("exclude_item_ids", f"at most {MAX_EXCLUDED} ids, got {len(exclude_item_ids)}")
        validate_shopper_filters(shopper)
        served = EMPTY
        if page_token:
            try:
                served = self.codec.decode(user_id, page_token)
            except ValueError as error:
                raise InvalidRequest("page_token", str(error).removeprefix("page_token ")) from error
        with self._lock:
            pipeline, version = self._pipeline, self._artifact.version
        result = pipeline.run(user_id, limit, now, exclude_item_ids, served.array(), shopper)
        self.metrics.observe_feed(result.gathered_by_source, result.removed_by_filter)
        served = served.plus(c.item_id for c in result.items)
        more = bool(result.has_more and result.items) and len(served) < MAX_SERVED
        return FeedPage(result.items, self.codec.encode(user_id, served) if more else "", version)

    def ingest(self, events: Sequence[Event]) -> ApplyResult:
        """Validate the whole batch, then apply it atomically; raises EventValidationError first."""
        validate_batch(events)
        result = self.store.apply(events)
        self.metrics.observe_ingest(result.applied, result.duplicates)
        return result
