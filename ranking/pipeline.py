"""The pipeline executor: the only place with control flow between components."""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ranking import batch as bits
from ranking.batch import CandidateBatch, SourceCandidates
from ranking.components import CandidateSource, FeedQuery, Filter, Scorer, Selection, Selector
from ranking.features import FEATURE_NAMES
from ranking.model_items import ModelItems
from ranking.store import FeedStateReader, ItemColumns, SharedItems, UserState
from ranking.types import MAX_REASON_ACTORS, RankedItem, Reason, ReasonKind, ShopperFilters
from ranking.vocab import count_and_newest, sorted_positions, stable_hash

DUPLICATE = "duplicate"
"""The name under which rows merged into another row of the same item are counted as removed."""


@dataclass(frozen=True)
class PipelineConfig:
    """A feed pipeline, declared as data.

    ``id_filters`` need only item codes and run before hydration, so the store is asked
    about fewer items; ``item_filters`` read the hydrated item columns. Within each
    list, order the cheapest first.

    ``max_follows_read`` / ``max_friends_read`` cap the fan-out of one request: the
    activity of at most that many followed sellers and friends is read (0: all); see
    ``select_fanout`` for which.

    ``fallback_sources`` run only when ``sources`` gathered fewer than
    ``fallback_below(served + limit)`` candidates, or when the page selected from what they
    gathered came out short (the selector's caps hold back many items of few sellers): a
    user the other sources know little about (cold start) still gets a full page, and the
    others' feeds are not diluted.
    """

    sources: Sequence[CandidateSource]
    id_filters: Sequence[Filter]
    item_filters: Sequence[Filter]
    scorer: Scorer
    selector: Selector
    per_key_limit: int = 20
    trending_limit: int = 100
    max_follows_read: int = 0
    max_friends_read: int = 0
    fallback_sources: Sequence[CandidateSource] = ()


# A request whose filtered pool cannot fill its page asks for pools this many times deeper,
# up to this depth (the default page-depth cap).
POOL_GROWTH = 4
MAX_POOL_DEPTH = 1_000


# Deep pages read at most this many more listings and likes, over all followed sellers and
# friends, than the first page: the rows a page at MAX_POOL_DEPTH adds to each growing pool.
MAX_ACTIVITY_GROWTH = 2 * MAX_POOL_DEPTH


def per_key_read(per_key_limit: int, keys: int, past_first_page: int) -> int:
    """The newest listings per followed seller and likes per friend a page reads.

    The first page reads ``per_key_limit``; a deeper one, ``past_first_page`` deeper (the
    items served since, or pools deepened past the filters), reads that many more, so its
    unserved listings of any one seller are still ``per_key_limit`` however many of them
    earlier pages served; over all ``keys``, at most MAX_ACTIVITY_GROWTH more.
    """
    return per_key_limit + min(past_first_page, MAX_ACTIVITY_GROWTH // max(keys, 1))


def filtered_out(result: FeedResult) -> int:
    """The candidates the filters removed (a duplicate merged into another is not one)."""
    return sum(result.removed_by_filter.values()) - result.removed_by_filter[DUPLICATE]


def fallback_below(depth: int) -> int:
    """Fewer candidates than this from the main sources call in the fallback sources: twice
    the items served so far and on this page, the margin every pool keeps for the filters."""
    return 2 * depth


@dataclass
class Explanation:
    """Why a page is what it is (``FeedPipeline.run(explain=True)``; off the hot path).

    ``features`` and ``contributions`` have one row per page item, in page order:
    the feature values (columns ranking.features.FEATURE_NAMES) and the score split
    into the terms ``terms`` names (each row sums to the item's score).
    ``removed`` lists, per filter, the ids of the items it removed (at most
    ``MAX_EXPLAINED_REMOVALS`` each; the counts are the result's ``removed_by_filter``).
    ``sources`` names, per page item, the candidate sources that proposed it.
    """

    feature_names: tuple[str, ...]
    features: np.ndarray
    terms: tuple[str, ...]
    contributions: np.ndarray
    sources: list[tuple[str, ...]]
    removed: dict[str, list[str]]


MAX_EXPLAINED_REMOVALS = 200


@dataclass
class FeedResult:
    """One page, best first, plus what happened on the way (for metrics and debugging).

    ``has_more`` is true when ranked candidates remain after this page; ``fallback_gathered``
    when the fallback sources ran for it; ``explanation`` is set when the page was asked
    for with ``explain=True``. ``item_hashes`` are the
    ``ranking.vocab.stable_hash`` of the items' ids, in page order (what page tokens keep).
    """

    items: list[RankedItem]
    has_more: bool
    item_hashes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))
    gathered_by_source: Counter[str] = field(default_factory=Counter)
    fallback_gathered: bool = False
    removed_by_filter: Counter[str] = field(default_factory=Counter)
    explanation: Explanation | None = None
    # Item codes each filter removed, by filter name: collected only when explaining.
    removed_codes: dict[str, list[np.ndarray]] | None = field(default=None, repr=False)


@dataclass
class CandidatePool:
    """Every candidate that survived the filters, before scoring and selection.

    ``features`` has one row per batch row (same order), columns
    ranking.features.FEATURE_NAMES: exactly what the scorer ranks when serving. The
    trainer fits the ranker on it.
    """

    query: FeedQuery
    batch: CandidateBatch
    features: np.ndarray
    result: FeedResult
    store: FeedStateReader

    def item_ids(self) -> list[str]:
        """The id of each row's item, in row order (for labels and debugging, not the hot path)."""
        return self.store.items.ids(self.batch.codes.tolist())

    def seller_ids(self) -> list[str]:
        """The id of each row's seller ("" for none), in row order."""
        return ["" if s < 0 else self.store.sellers.id(s) for s in self.batch.items.seller.tolist()]


class _PageRequest(NamedTuple):
    """What ``FeedPipeline.run`` or ``pool`` was asked, in ``_candidates``'s order."""

    user_id: str
    limit: int
    now: float
    exclude_ids: Sequence[str]
    served_hashes: np.ndarray | None
    shopper: ShopperFilters
    explain: bool


class _Ranked(NamedTuple):
    """A batch's rows scored, their ids' stable hashes, their rank order, the page selected
    from them, and the rows' features when asked for (``pool``; None for ``run``)."""

    scores: np.ndarray
    hashes: np.ndarray
    order: np.ndarray
    selection: Selection
    features: np.ndarray | None


class FeedPipeline:
    """Runs a PipelineConfig against a store and an (optional) embedding model's items.

    Reads the store in exactly four batched calls: user, activity, hydration and, for
    the page's items only, their cards; a user who follows more sellers than the fan-out
    cap costs a fifth, small one (the recent likes' sellers, which choose whose listings
    to read). A page the filters or the caps left short reads again (deeper pools, or
    with the fallback sources).
    """

    def __init__(self, config: PipelineConfig, store: FeedStateReader, model_items: ModelItems | None) -> None:
        self.config = config
        self.store = store
        self.model_items = model_items

    def run(
        self,
        user_id: str,
        limit: int,
        now: float,
        exclude_ids: Sequence[str] = (),
        served_hashes: np.ndarray | None = None,
        shopper: ShopperFilters = ShopperFilters(),
        explain: bool = False,
    ) -> FeedResult:
        """One page of the feed, best first, without the excluded and already served items.

        ``served_hashes`` are ``ranking.vocab.stable_hash`` values of the items served
        on earlier pages (sorted uint32); ``shopper`` narrows the feed. ``explain`` also
        fills ``FeedResult.explanation`` (the same page, at a few times the cost).
        """
        request = _PageRequest(user_id, limit, now, exclude_ids, served_hashes, shopper, explain)
        query, batch, result, (scores, hashes, ranked, (page, news), _) = self._page_pool(request)
        result.items = self._page_items(query, batch, page, scores, news)
        result.item_hashes = hashes[page]
        result.has_more = len(ranked) > len(page)
        if explain:
            result.explanation = self._explain(query, batch, page, result)
        return result

    def _page_pool(
        self, request: _PageRequest, with_features: bool = False
    ) -> tuple[FeedQuery, CandidateBatch, FeedResult, _Ranked]:
        """The filtered candidates a page is selected from (``_filled_pool``, gathered again
        with the fallback sources when the page came out short), and ``_selected`` of them."""
        query, batch, result = self._filled_pool(request)
        selected = self._selected(query, batch, with_features)
        if len(selected.selection.rows) < request.limit and not result.fallback_gathered and self.config.fallback_sources:
            # The main sources' count promised a page the selector could not fill: it counts
            # rows before duplicates merge and before the per-seller cap (a new user who
            # follows one big shop gathered 50 listings, of which a page holds two).
            query, batch, result = self._filled_pool(request, with_fallback=True)
            selected = self._selected(query, batch, with_features)
        return query, batch, result, selected

    def _filled_pool(self, request: _PageRequest, with_fallback: bool = False) -> tuple[FeedQuery, CandidateBatch, FeedResult]:
        """The filtered candidates of a page, from pools deep enough to fill it when they can."""
        query, batch, result = self._candidates(*request, with_fallback=with_fallback)
        # The pools are sized for an unfiltered page, and the filters may remove most of
        # them: a shopper's narrow filter, or stock once the trending items sold out, would
        # end the feed after the few items left in the first pools. Deeper pools, until the
        # filtered pool fills the page and tells whether more follows, or the depth
        # reaches the cap. (A pool the filters took nothing from was not cut short by them.)
        deepest = max(query.depth, MAX_POOL_DEPTH)
        while len(batch) <= request.limit and (request.shopper.active or filtered_out(result)) and query.depth < deepest:
            depth = min(query.depth * POOL_GROWTH, deepest)
            query, batch, result = self._candidates(*request, depth, with_fallback=with_fallback)
        return query, batch, result

    def _selected(self, query: FeedQuery, batch: CandidateBatch, with_features: bool = False) -> _Ranked:
        """The scores, id hashes and rank order of the batch's rows, the page selected from
        them, and ``with_features`` their features, computed once for the scores too."""
        if with_features:
            scores, features = self.config.scorer.scores_and_features(query, batch)
        else:
            scores, features = self.config.scorer.score(query, batch), None
        # Ties break on the id's stable hash, so the same state gives the same feed and
        # pages in every process, whatever codes its vocabulary handed out.
        hashes = self.store.items.hashes(batch.codes)
        ranked = np.lexsort((batch.codes, hashes, -scores))
        return _Ranked(scores, hashes, ranked, self.config.selector.select(query, batch, ranked), features)

    def _explain(self, query: FeedQuery, batch: CandidateBatch, page: np.ndarray, result: FeedResult) -> Explanation:
        scorer = self.config.scorer
        features_of = getattr(scorer, "features", None)
        contributions_of = getattr(scorer, "contributions", None)
        if features_of is None or contributions_of is None:
            raise TypeError(f"scorer {scorer.name!r} cannot explain its scores (features(), contributions())")
        page_batch = batch.take(page)
        terms, contributions = contributions_of(query, page_batch)
        removed = {
            name: self.store.items.ids(np.concatenate(parts)[:MAX_EXPLAINED_REMOVALS].tolist())
            for name, parts in (result.removed_codes or {}).items()
        }
        return Explanation(
            FEATURE_NAMES, features_of(query, page_batch), terms, contributions,
            [bits.source_names(int(mask)) for mask in page_batch.sources.tolist()], removed,
        )

    def pool(
        self,
        user_id: str,
        limit: int,
        now: float,
        exclude_ids: Sequence[str] = (),
        served_hashes: np.ndarray | None = None,
    ) -> CandidatePool:
        """The filtered candidates ``run`` selects its page from, with their feature matrix.

        The same pool as ``run``'s for the same arguments (deeper pools, the fallback
        sources for a short page), so it is scored and selected to know whether the page
        came out short; the scorer must expose ``scores_and_features(query, batch)``
        (LinearScorer and FatigueScorer do), which computes the features once for both.
        """
        if getattr(self.config.scorer, "scores_and_features", None) is None:
            raise TypeError(f"scorer {self.config.scorer.name!r} does not expose scores_and_features()")
        request = _PageRequest(user_id, limit, now, exclude_ids, served_hashes, ShopperFilters(), False)
        query, batch, result, ranked = self._page_pool(request, with_features=True)
        return CandidatePool(query, batch, ranked.features, result, self.store)

    def _candidates(
        self,
        user_id: str,
        limit: int,
        now: float,
        exclude_ids: Sequence[str],
        served_hashes: np.ndarray | None,
        shopper: ShopperFilters = ShopperFilters(),
        explain: bool = False,
        pool_depth: int = 0,
        with_fallback: bool = False,
    ) -> tuple[FeedQuery, CandidateBatch, FeedResult]:
        config, store = self.config, self.store
        served = np.zeros(0, np.uint32) if served_hashes is None else served_hashes
        user = friends_shares_only(store.read_user(user_id))
        all_follows = user.follows
        recent: ItemColumns | None = None
        liked_sellers: list[str] = []
        if _over(user.follows, config.max_follows_read):
            # Which followed sellers the user likes needs the recent likes' sellers now.
            recent = store.hydrate(user_id, user.recent_likes)
            liked_sellers = store.sellers.ids(recent.seller[recent.exists & (recent.seller >= 0)].tolist())
        if recent is not None or _over(user.friends, config.max_friends_read):
            follows, friends = select_fanout(user, liked_sellers, config.max_follows_read, config.max_friends_read, now)
            user = dataclasses.replace(user, follows=follows, friends=friends)
        # Every pool grows with depth so later pages still have candidates: trending and
        # neighbours to 2 x depth, a followed seller's listings and a friend's likes by per_key_read.
        depth = max(len(served) + limit, pool_depth)
        per_key = per_key_read(config.per_key_limit, len(user.follows) + len(user.friends), depth - limit)
        activity = store.read_activity(user.follows, user.friends, per_key, max(config.trending_limit, 2 * depth))
        query = FeedQuery(
            user, limit, now, activity, served_hashes=served, hidden_sellers=_known(user.hidden_sellers), shopper=shopper,
            pool_depth=pool_depth,
        )
        model_items = self.model_items
        if model_items is not None:
            recent_rows = model_items.rows(user.recent_likes)
            query.user_vector = model_items.model.user_vector_from_rows(user_id, recent_rows)
            knn = model_items.model.item_knn
            if knn is not None and len(recent_rows):
                query.item_scores = knn.user_scores_rows(recent_rows)

        result = FeedResult([], False, removed_codes={} if explain else None)
        parts = self._gather(config.sources, query, result)
        if with_fallback or sum(map(len, parts)) < fallback_below(depth):
            parts += self._gather(config.fallback_sources, query, result)
            result.fallback_gathered = True
        else:
            result.gathered_by_source.update(dict.fromkeys((source.name for source in config.fallback_sources), 0))
        batch = CandidateBatch.merged(parts)
        result.removed_by_filter[DUPLICATE] += sum(map(len, parts)) - len(batch)
        # Ids become codes only now: a networked store's vocabulary learns ids as its
        # replies bring them, so an id first met in this request has a code only by now.
        query.exclude_codes = _known(store.items.codes(list(exclude_ids)))
        batch = self._filter(query, config.id_filters, batch, result)

        # The recent likes ride along in the same hydration call: their sellers give the
        # user's seller affinity without another store read.
        n = len(batch)
        if recent is None:
            hydrated = store.hydrate(user_id, np.concatenate([batch.codes, user.recent_likes]))
            batch.items = hydrated.take(slice(0, n))
            recent = hydrated.take(slice(n, None))
        else:
            batch.items = store.hydrate(user_id, batch.codes)
        with_seller = recent.exists & (recent.seller >= 0)
        query.seller_likes, query.seller_like_counts, query.seller_last_like = count_and_newest(
            recent.seller[with_seller], user.recent_like_times[with_seller]
        )
        with_category = recent.exists & (recent.category >= 0)
        query.category_likes, query.category_like_counts, _ = count_and_newest(
            recent.category[with_category], user.recent_like_times[with_category]
        )
        query.followed_sellers = _known(store.sellers.codes(all_follows))
        query.followed_count = len(all_follows)
        query.own_seller = store.sellers.code(user_id)
        # Category ids become codes only now, for the same reason as the exclusions.
        query.include_categories = store.categories.codes(list(shopper.include_categories))
        query.exclude_categories = store.categories.codes(list(shopper.exclude_categories))
        batch = self._filter(query, config.item_filters, batch, result)
        return query, batch, result

    @staticmethod
    def _gather(sources: Sequence[CandidateSource], query: FeedQuery, result: FeedResult) -> list[SourceCandidates]:
        parts = []
        for source in sources:
            part = source.gather(query)
            result.gathered_by_source[source.name] += len(part)
            parts.append(part)
        return parts

    @staticmethod
    def _filter(query: FeedQuery, filters: Sequence[Filter], batch: CandidateBatch, result: FeedResult) -> CandidateBatch:
        """Apply the filters in order; each is charged only with rows no earlier filter removed."""
        if not filters:
            return batch
        keeps = np.stack([feed_filter.keep(query, batch) for feed_filter in filters])
        alive = keeps.all(axis=0)
        dead = ~alive
        # A removed row is charged to the first filter that rejects it.
        charged = np.argmin(keeps[:, dead], axis=0)
        removed_counts = np.bincount(charged, minlength=len(filters)).tolist()
        for index, (feed_filter, removed) in enumerate(zip(filters, removed_counts)):
            result.removed_by_filter[feed_filter.name] += removed
            if result.removed_codes is not None and removed:
                result.removed_codes.setdefault(feed_filter.name, []).append(batch.codes[dead][charged == index])
        return batch.take(alive) if len(charged) else batch

    def _page_items(
        self, query: FeedQuery, batch: CandidateBatch, rows: np.ndarray, scores: np.ndarray, news: np.ndarray
    ) -> list[RankedItem]:
        """The only Python objects of a feed: one per item on the page, with its reasons."""
        store = self.store
        codes = batch.codes[rows]
        sellers = batch.items.seller[rows]
        sources = batch.sources[rows]
        likers = self._likers(query, codes[(sources & bits.FRIEND_LIKE) != 0])
        sharers = self._sharers(query, codes[(sources & bits.FRIEND_SHARE) != 0])
        cards = store.read_cards(codes)
        page: list[RankedItem] = []
        for item_id, code, seller, source_bits, score, card, is_news in zip(
            store.items.ids(codes.tolist()), codes.tolist(), sellers.tolist(), sources.tolist(), scores[rows].tolist(), cards,
            news.tolist(),
        ):  # fmt: skip
            seller_id = store.sellers.id(seller) if seller >= 0 else ""
            reasons = []
            if source_bits & bits.FOLLOWED_SELLER:
                reasons.append(Reason(ReasonKind.FOLLOWED_SELLER, [seller_id]))
            if source_bits & bits.FRIEND_LIKE:
                friends = [friend for _, friend in sorted(likers[code])]
                reasons.append(Reason(ReasonKind.FRIENDS_LIKED, friends[:MAX_REASON_ACTORS], len(friends)))
            if source_bits & bits.SIMILAR:
                reasons.append(Reason(ReasonKind.SIMILAR_TO_LIKES))
            if source_bits & bits.TRENDING:
                reasons.append(Reason(ReasonKind.TRENDING))
            if source_bits & bits.FRIEND_SHARE:
                reasons.append(Reason(ReasonKind.FRIEND_SHARED, sharers[code][:MAX_REASON_ACTORS], len(sharers[code])))
            page.append(RankedItem(item_id, seller_id, float(score), reasons, card, is_news))
        return page

    @staticmethod
    def _likers(query: FeedQuery, codes: np.ndarray) -> dict[int, list[tuple[float, str]]]:
        """(-time, friend id) of each friend's like of each of ``codes``: newest first once sorted."""
        likes = query.activity.friend_likes
        likers: dict[int, list[tuple[float, str]]] = {code: [] for code in codes.tolist()}
        if likers:
            at = np.flatnonzero(sorted_positions(np.sort(codes), likes.items)[0])
            friends = query.user.friends
            for code, at_time, owner in zip(likes.items[at].tolist(), likes.times[at].tolist(), likes.owners[at].tolist()):
                likers[code].append((-at_time, friends[owner]))
        return likers


    @staticmethod
    def _sharers(query: FeedQuery, codes: np.ndarray) -> dict[int, list[str]]:
        """The friends who shared each of ``codes`` with the user, newest share first."""
        shared = query.user.shared  # newest first already
        sharers: dict[int, list[str]] = {code: [] for code in codes.tolist()}
        for code, sharer in zip(shared.items.tolist(), shared.sharers):
            if code in sharers and sharer not in sharers[code]:
                sharers[code].append(sharer)
        return sharers


def _known(codes: np.ndarray) -> np.ndarray:
    return codes[codes >= 0]


def _over(ids: Sequence[str], cap: int) -> bool:
    return cap > 0 and len(ids) > cap


def friends_shares_only(user: UserState) -> UserState:
    """``user`` with the shares of current friends only. A share names its recipient, but
    the sharer may never have been a friend, or no longer be one (an unfriend leaves the
    stored shares alone): neither may reach the feed as a friend's share."""
    shared = user.shared
    if not len(shared):
        return user
    friends = set(user.friends)
    kept = np.fromiter((sharer in friends for sharer in shared.sharers), bool, len(shared))
    if kept.all():
        return user
    sharers = tuple(itertools.compress(shared.sharers, kept))
    return dataclasses.replace(user, shared=SharedItems(shared.items[kept], shared.times[kept], sharers))


def select_fanout(
    user: UserState, liked_sellers: Sequence[str], max_follows: int, max_friends: int, now: float = 0.0
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The followed sellers and friends whose activity one request reads: at most
    ``max_follows`` and ``max_friends`` of them (0: all), sorted, as UserState keeps them.

    The stores keep follows and friendships without a time, so recency is that of the
    user's own interactions. First the strongest, most recent affinity:

    * sellers: those whose items the user liked most recently (``liked_sellers``, the
      sellers of the recent likes, newest like first), then sellers who are also friends;
    * friends: those who shared items with the user, newest share first, then friends
      whose shop the user follows.

    The remaining places go to a run of the others (in id order, wrapping around) that
    starts at an offset drawn from a stable hash of the user and the day of ``now``: the
    same all day in every process (pages stay consistent), a different run each day (so
    over days every friend's and seller's activity gets read), favouring no id range
    across users, and O(cap) per request rather than a hash per friend.
    """
    day = int(now // 86_400) if now == now and abs(now) < 1e18 else 0
    salt = f"{user.user_id}\0{day}"
    follows = _capped(salt, user.follows, [*liked_sellers, *user.friends], max_follows)
    friends = _capped(salt, user.friends, [*user.shared.sharers, *user.follows], max_friends)
    return follows, friends


def _capped(salt: str, ids: tuple[str, ...], preferred: Iterable[str], cap: int) -> tuple[str, ...]:
    """At most ``cap`` of the sorted ``ids``: the ``preferred`` ones first (in order), then a run from a salted offset."""
    if not _over(ids, cap):
        return ids
    members = set(ids)
    chosen = list(dict.fromkeys(p for p in preferred if p in members))[:cap]
    taken = set(chosen)
    start = stable_hash(salt) % len(ids)
    for offset in range(len(ids)):
        if len(chosen) >= cap:
            break
        candidate = ids[(start + offset) % len(ids)]
        if candidate not in taken:
            chosen.append(candidate)
    return tuple(sorted(chosen))
