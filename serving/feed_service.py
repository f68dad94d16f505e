"""The feed service as plain functions: validation, paging and ingest, free of gRPC.

The gRPC servicer only translates messages and maps the errors raised here to status
codes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

from ranking.feed import POOL_SETTINGS, FeedSettings, build_feed_pipeline, recorded_pools
from ranking.pipeline import Explanation, FeedPipeline
from ranking.types import RankedItem, ShopperFilters
from serving.arms import Arm, Arms
from serving.logs import MODEL_LOGGER
from serving.metrics import FeedMetrics
from serving.page_token import EMPTY, PageTokenCodec
from stores.base import ApplyResult, FeedStore
from stores.events import DEFAULT_MAX_CLOCK_SKEW, MAX_CATEGORY_BYTES, MAX_ID_BYTES, MAX_SHIP_DAYS, Event, EventValidationError, id_problem, validate_batch
from training.artifact import Artifact

log = logging.getLogger("feedrank.serving")
model_log = logging.getLogger(MODEL_LOGGER)

def with_model_pools(settings: FeedSettings, manifest: Mapping, names: Collection[str]) -> FeedSettings:
    """``settings`` with the pool settings ``names`` taken from the model's manifest ("feed"),
    where it records them: a model tuned with other pools (train --params) is then served
    on the pools it was fitted and evaluated on."""
    recorded = recorded_pools(manifest.get("feed") or {})
    changes = {name: recorded[name] for name in names if name in recorded}
    return dataclasses.replace(settings, **changes) if changes else settings


def pool_settings_drift(manifest: Mapping, settings: FeedSettings) -> list[str]:
    """``name: model X, served Y`` for each POOL_SETTINGS value the model was trained with
    (its manifest's "feed") that ``settings`` serves otherwise; [] for a manifest without one."""
    trained = with_model_pools(settings, manifest, POOL_SETTINGS)
    drift = []
    for name in POOL_SETTINGS:
        model_value, served = getattr(trained, name), getattr(settings, name)
        if model_value != served:
            shown = (lambda v: ",".join(v) or "none") if isinstance(served, tuple) else str
            drift.append(f"--{name.replace('_', '-')}: model {shown(model_value)}, served {shown(served)}")
    return drift

# Model versions outside the configuration (asked for by name) kept loaded at a time.
EXTRA_VERSIONS = 2

MAX_LIMIT = 100
MAX_EXCLUDED = 1_000
MAX_CATEGORIES = 100


class InvalidRequest(ValueError):
    """A request field is invalid; ``field`` names it, ``description`` says why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.description = message


class FeedEnded(InvalidRequest):
    """The page token is as deep as the feed goes (the page-depth cap): OUT_OF_RANGE."""


@dataclass(frozen=True)
class FeedPage:
    items: list[RankedItem]
    next_page_token: str
    model_version: str
    arm: str = ""  # the A/B arm that built the page; "" when no arms are configured
    # What the request did on the way (the counts the metrics got), and, when asked
    # for, why each item is there.
    gathered_by_source: Mapping[str, int] = field(default_factory=dict)
    removed_by_filter: Mapping[str, int] = field(default_factory=dict)
    explanation: Explanation | None = None


@dataclass(frozen=True)
class UserContext:
    """What a user's feed is built from, as ids (for people looking at a feed, not the hot path).

    ``recent_likes`` are (item id, time), newest first; ``hidden_items`` the items and
    ``hidden_sellers`` the sellers the user said they are not interested in;
    ``shared_with`` (item id, friend id) shares, newest first.
    """

    user_id: str
    recent_likes: list[tuple[str, float]]
    friends: tuple[str, ...]
    follows: tuple[str, ...]
    hidden_items: list[str]
    hidden_sellers: list[str]
    shared_with: list[tuple[str, str]]


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
            raise InvalidRequest(name, f"must be a finite non-negative number, got {value}")
    if shopper.min_price is not None and shopper.max_price is not None and shopper.max_price < shopper.min_price:
        raise InvalidRequest("max_price", f"must be >= min_price ({shopper.min_price}), got {shopper.max_price}")
    if shopper.max_ship_days is not None and not 0 <= shopper.max_ship_days <= MAX_SHIP_DAYS:
        raise InvalidRequest("max_ship_days", f"must be between 0 and {MAX_SHIP_DAYS}, got {shopper.max_ship_days}")


def validate_user_id(user_id: str) -> None:
    problem = id_problem(user_id)
    if problem is not None:
        raise InvalidRequest("user_id", problem)


def validate_exclusions(exclude_item_ids: Sequence[str]) -> None:
    if len(exclude_item_ids) > MAX_EXCLUDED:
        raise InvalidRequest("exclude_item_ids", f"at most {MAX_EXCLUDED} ids, got {len(exclude_item_ids)}")
    for index, item_id in enumerate(exclude_item_ids):
        if len(item_id.encode()) > MAX_ID_BYTES:
            raise InvalidRequest(f"exclude_item_ids[{index}]", f"longer than {MAX_ID_BYTES} bytes")


@dataclass(frozen=True)
class _Route:
    """What one A/B arm serves with."""

    arm: str
    version: str
    pipeline: FeedPipeline


@dataclass(frozen=True)
class _State:
    """Everything a request reads, swapped as one reference so a request never mixes two."""

    current: Artifact  # the version models/CURRENT points at
    default: _Route  # current artifact, the server's settings: serves when no arms are configured
    arms: Arms | None
    pinned: Mapping[str, Artifact]  # artifacts of the versions the arms pin, by version
    routes: Mapping[str, _Route]  # by arm name


class FeedService:
    """Builds feeds from a store and model artifacts; swaps models and A/B arms atomically.

    Without arms every user gets the CURRENT model and ``settings``. With ``arms``, each
    user is served by the pipeline of their arm: the arm's model (a pinned version from
    ``pinned``, or CURRENT) and the arm's feed settings.

    ``max_clock_skew``: ingested times (ts, created_at) may be at most this many seconds
    ahead of the server's clock. The page-depth cap and token expiry are the ``codec``'s.
    ``load_version(version)`` loads a model version by name, for feeds asked of a
    version the configuration does not serve (comparing models); without it only the
    loaded versions can be asked for.
    """

    def __init__(
        self,
        store: FeedStore,
        artifact: Artifact,
        codec: PageTokenCodec,
        settings: FeedSettings,
        metrics: FeedMetrics | None = None,
        *,
        arms: Arms | None = None,
        pinned: Mapping[str, Artifact] = {},
        max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW,
        load_version: Callable[[str], Artifact] | None = None,
        model_pools: Collection[str] = (),
    ) -> None:
        """``model_pools``: the POOL_SETTINGS that each model serves with the values its
        manifest records, not ``settings``' (those the operator did not set)."""
        self.store = store
        self.model_pools = tuple(model_pools)
        self.load_version = load_version
        self._extra: OrderedDict[str, _Route] = OrderedDict()  # most recently used last
        self.codec = codec
        self.max_clock_skew = max_clock_skew
        self.settings = settings
        self.metrics = metrics or FeedMetrics()
        self._lock = threading.Lock()  # serialises writers; readers take self._state once
        self._publish(self._prepare(artifact, arms, pinned))

    def _prepare(self, current: Artifact, arms: Arms | None, pinned: Mapping[str, Artifact]) -> _State:
        """Build every pipeline the configuration needs (one per distinct model and settings)."""
        built: dict[tuple[str, FeedSettings], FeedPipeline] = {}

        def route(arm: str, artifact: Artifact, settings: FeedSettings) -> _Route:
            key = (artifact.version, settings)
            if key not in built:
                built[key] = build_feed_pipeline(self.store, artifact.model, artifact.ranker, settings)
                drift = pool_settings_drift(artifact.manifest, settings)
                if drift:  # flags (or an arm's [arm.feed]) that set other pools than the model's
                    model_log.warning("model %s%s was trained and evaluated on other candidate pools than it is served with (%s): "
                                "%s win over the model's own; drop them to serve it as evaluated",
                                artifact.version, f" (arm {arm})" if arm else "", "; ".join(drift),
                                "the flags set here and the arm's [arm.feed]" if arm else "the flags set here")  # fmt: skip
            return _Route(arm, artifact.version, built[key])

        routes = {}
        for arm in arms.arms if arms is not None else ():
            if arm.model is not None and arm.model not in pinned:
                raise ValueError(f"arm {arm.name!r}: model version {arm.model!r} is not loaded")
            artifact = pinned[arm.model] if arm.model is not None else current
            routes[arm.name] = route(arm.name, artifact, self.settings_for(artifact, arm))
        used = {arm.model for arm in arms.arms} if arms is not None else set()
        return _State(current, route("", current, self.settings_for(current)), arms if routes else None,
                      {v: a for v, a in pinned.items() if v in used}, routes)

    def settings_for(self, artifact: Artifact, arm: Arm | None = None) -> FeedSettings:
        """The settings ``artifact`` is served with: the server's (in ``arm``, with its
        [arm.feed]), with the model's own pools where neither the operator
        (``model_pools``) nor the arm set them."""
        if arm is None:
            return with_model_pools(self.settings, artifact.manifest, self.model_pools)
        return with_model_pools(arm.settings, artifact.manifest, [name for name in self.model_pools if name not in arm.feed_keys])

    def _publish(self, state: _State) -> None:
        self._state = state
        self.metrics.set_model(state.current.version)
        self.metrics.set_arm_models({name: r.version for name, r in state.routes.items()})

    @property
    def _pipeline(self) -> FeedPipeline:
        """The pipeline of users outside any arm (the CURRENT model, the server's settings)."""
        return self._state.default.pipeline

    @property
    def current_artifact(self) -> Artifact:
        return self._state.current

    @property
    def model_version(self) -> str:
        """The version models/CURRENT pointed at when last loaded."""
        return self._state.current.version

    @property
    def arms(self) -> Arms | None:
        return self._state.arms

    @property
    def pinned(self) -> Mapping[str, Artifact]:
        return self._state.pinned

    def arm_of(self, user_id: str) -> str:
        """The name of ``user_id``'s arm; "" when no arms are configured."""
        return self.served_by(user_id)[1]

    def served_by(self, user_id: str) -> tuple[str, str]:
        """The model version and the A/B arm ("" when none) that build ``user_id``'s feed."""
        route = self._route(user_id, None, None)
        return route.version, route.arm

    def configure(self, current: Artifact, arms: Arms | None, pinned: Mapping[str, Artifact]) -> None:
        """Serve ``current`` as CURRENT and ``arms`` (their pinned versions in ``pinned``), atomically.

        Raises (and keeps serving the old configuration) when a pipeline cannot be built.
        """
        with self._lock:
            self._publish(self._prepare(current, arms, pinned))

    def swap_artifact(self, artifact: Artifact) -> None:
        """A new CURRENT model: the default and every arm that follows CURRENT switch to it."""
        with self._lock:
            state = self._state
            self._publish(self._prepare(artifact, state.arms, state.pinned))

    def get_feed(
        self,
        user_id: str,
        limit: int,
        page_token: str,
        exclude_item_ids: Sequence[str],
        now: float,
        shopper: ShopperFilters = ShopperFilters(),
        *,
        explain: bool = False,
        arm: str | None = None,
        version: str | None = None,
    ) -> FeedPage:
        """One page of ``user_id``'s feed, narrowed by ``shopper``.

        Raises InvalidRequest for a bad field (including a page token that is malformed,
        expired, signed with an unknown key, tampered with, or another user's), FeedEnded
        for a token past the page-depth cap, and StoreUnavailable when the store is down.
        The feed ends (no next token) after ``codec.max_served`` items.

        For people comparing models: ``arm`` builds the page as that A/B arm would,
        ``version`` with that model version and the server's settings (instead of the
        user's own arm); ``explain`` adds the page's Explanation.
        """
        validate_user_id(user_id)
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidRequest("limit", f"must be between 1 and {MAX_LIMIT}, got {limit}")
        validate_exclusions(exclude_item_ids)
        validate_shopper_filters(shopper)
        served = EMPTY
        if page_token:
            try:
                served = self.codec.decode(user_id, page_token, now)
            except ValueError as error:
                raise InvalidRequest("page_token", str(error).removeprefix("page_token ")) from error
        max_served = self.codec.max_served
        if len(served) >= max_served:
            raise FeedEnded("page_token", f"the feed ends after {max_served} items; start again from the first page")
        limit = min(limit, max_served - len(served))
        route = self._route(user_id, arm, version)
        result = route.pipeline.run(user_id, limit, now, exclude_item_ids, served.array(), shopper, explain)
        self.metrics.observe_feed(result.gathered_by_source, result.removed_by_filter)
        served = served.plus_hashes(result.item_hashes.tolist())
        more = bool(result.has_more and result.items) and len(served) < max_served
        return FeedPage(
            result.items, self.codec.encode(user_id, served, now) if more else "", route.version, route.arm,
            result.gathered_by_source, result.removed_by_filter, result.explanation,
        )

    def _route(self, user_id: str, arm: str | None, version: str | None) -> _Route:
        state = self._state
        if arm is not None and version is not None:
            raise InvalidRequest("version", "ask for an arm or a model version, not both")
        if arm is not None:
            if arm not in state.routes:
                known = ", ".join(sorted(state.routes)) or "none are configured"
                raise InvalidRequest("arm", f"no A/B arm {arm!r} (arms: {known})")
            return state.routes[arm]
        if version is not None:
            return self._version_route(state, version)
        route = state.default
        if state.arms is not None:
            assigned = state.arms.assign(user_id)
            route = state.routes[assigned.name] if assigned is not None else route
        return route

    def _version_route(self, state: _State, version: str) -> _Route:
        """A route serving ``version`` with the server's settings (loaded on demand, a few kept)."""
        if version == state.current.version:
            return state.default
        with self._lock:
            route = self._extra.get(version)
            if route is None:
                artifact = state.pinned.get(version)
                if artifact is None:
                    artifact = self._load(version)
                route = _Route("", version, build_feed_pipeline(self.store, artifact.model, artifact.ranker, self.settings_for(artifact)))
                self._extra[version] = route
                while len(self._extra) > EXTRA_VERSIONS:
                    self._extra.popitem(last=False)
            self._extra.move_to_end(version)
            return route

    def _load(self, version: str) -> Artifact:
        if self.load_version is None:
            raise InvalidRequest("version", f"model version {version!r} is not loaded")
        try:
            return self.load_version(version)
        except (OSError, ValueError) as error:
            raise InvalidRequest("version", f"cannot load model version {version!r}: {error}") from error

    def user_context(self, user_id: str, max_likes: int = 50) -> UserContext:
        """``user_id``'s likes, friends, follows, hides and shares, by id (one store read)."""
        validate_user_id(user_id)
        store = self.store
        user = store.read_user(user_id)
        likes = user.recent_likes[:max_likes]
        return UserContext(
            user_id,
            list(zip(store.items.ids(likes.tolist()), user.recent_like_times[:max_likes].tolist())),
            user.friends,
            user.follows,
            store.items.ids(user.hidden_items.tolist()),
            [store.sellers.id(code) for code in user.hidden_sellers.tolist()],
            list(zip(store.items.ids(user.shared.items.tolist()), user.shared.sharers)),
        )

    def ingest(self, events: Sequence[Event], now: float | None = None, min_replicas: int = 0) -> ApplyResult:
        """Validate the whole batch, then apply it atomically; raises EventValidationError first.

        ``now`` (default: the clock) bounds the events' times (``max_clock_skew``);
        ``min_replicas``: see FeedStore.apply.
        """
        now = time.time() if now is None else now
        try:
            validate_batch(events, now, self.max_clock_skew)
        except EventValidationError as error:
            # A retry of an applied event changes nothing, whatever it carries now: its
            # server-stamped ts moved, so a vacation's `until` may be past it. It is a
            # duplicate, not an invalid event. The store is asked only when a batch fails.
            if error.index is None:
                raise
            applied = self.store.applied_event_ids([event.event_id for event in events])
            if events[error.index].event_id not in applied:
                raise
            validate_batch(events, now, self.max_clock_skew, applied)
        result = self.store.apply(events, min_replicas=min_replicas) if min_replicas else self.store.apply(events)
        self.metrics.observe_ingest(result.applied, result.duplicates)
        return result
