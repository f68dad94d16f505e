"""Composition root: the feed pipeline, listed once, for serving and offline replay alike."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from embeddings.model import EmbeddingModel
from ranking import features, filters, sources, vocab
from ranking.model_items import ModelItems
from ranking.pipeline import FeedPipeline, PipelineConfig
from ranking.ranker import DEFAULT_RANKER, LinearRanker
from ranking.scorers import FatigueScorer, LinearScorer
from ranking.selectors import DiversitySelector, FreshSocialFirstSelector
from ranking.store import FeedStateReader

SOURCE_NAMES = ("followed_sellers", "friend_likes", "friend_shares", "embedding_neighbours", "item_knn", "trending")


def unknown_sources(names: Iterable[str]) -> list[str]:
    """The names that are no candidate source (SOURCE_NAMES), sorted; each caller words the error."""
    return sorted(set(names) - set(SOURCE_NAMES))


def parse_source_names(text: str) -> tuple[str, ...]:
    """Comma-separated candidate source names, as flags and variables give them; "none" (or
    nothing) is no source. ValueError names the unknown ones and the choices."""
    names = tuple(name.strip() for name in text.split(",") if name.strip() not in ("", "none"))
    unknown = unknown_sources(names)
    if unknown:
        raise ValueError(f"unknown sources {', '.join(unknown)}; choose from {', '.join(SOURCE_NAMES)}")
    return names


@dataclass(frozen=True)
class FeedSettings:
    """Tunable knobs of the feed (the serving CLI exposes each as a flag)."""

    max_per_seller: int = 2  # seller-diversity cap per page
    max_per_category: int = 0  # category-diversity cap per page; 0: none
    # Pool sizes: the smallest within 1 % of the best validation NDCG@10 on the generator's
    # data (time split) and on Last.fm (random split), the larger of the two per knob
    # (benchmarks/bench_pools.py; benchmarks/README.md "Pool sizes"). Each pool is at
    # least 2 x (items served so far + limit), so deep pages still find unseen items.
    # Newest listings per followed seller / likes per friend a first page reads (Last.fm needs
    # 50; the generator 5); deeper pages read more (ranking.pipeline.per_key_read).
    per_key_limit: int = 50
    trending_limit: int = 20  # trending items to read for a first page
    # Embedding neighbours: re-measured with the ranker refitted on each pool size, as a
    # trained model is (benchmarks/README.md, 2026-12-03 night): 25 was 1.6-1.7 % below
    # the best on both generator datasets, 150 within 1 % of it; Last.fm is flat.
    neighbours: int = 150  # embedding neighbours to fetch for a first page
    ef_search: int = 0  # HNSW search breadth of the neighbour search (hnsw-* indexes); 0: the model's own
    knn_neighbours: int = 25  # item-kNN candidates (most similar to recent likes) for a first page
    sources: tuple[str, ...] = SOURCE_NAMES  # which candidate sources to use (ablations)
    # Of those, the ones that run only when the others gathered fewer than 2 x (served +
    # limit) candidates (ranking.pipeline.fallback_below) or a page the caps left short:
    # trending is the cold-start fallback. Always on, it took 2.0 % of validation NDCG@10
    # from the generator's warm users and gave Last.fm nothing (benchmarks/README.md,
    # 2026-12-03 late). (): all always run.
    fallback_sources: tuple[str, ...] = ("trending",)
    fresh_window_seconds: float = 3_600.0  # graph activity this recent is promoted to the top
    max_fresh: int = 3  # at most this many promoted items per page; 0 disables promotion
    # Seen-item fatigue (views without engagement; ranking.store.VIEW_WINDOW_SECONDS).
    fatigue_free_views: int = 2  # views an item gets before it starts to sink
    fatigue_sink: float = math.log(2)  # score (log-odds) lost per view past the free ones: halves the odds
    fatigue_hide_views: int = 6  # at this many views the item rests out of the feed until the window passes
    # Fan-out caps: the activity of at most this many followed sellers / friends is read per
    # request (ranking.pipeline.select_fanout picks which); 0 reads all. Bounds the cost of
    # one user's feed whatever their graph degree.
    max_follows_read: int = 50
    max_friends_read: int = 100


# The settings that shape the candidate pools a model's ranker is fitted on (a published
# model's manifest records them under "feed"): served otherwise, the ranker sees pools
# unlike those it learned from.
POOL_SETTINGS = ("sources", "fallback_sources", "neighbours", "knn_neighbours", "trending_limit", "per_key_limit")


def recorded_pools(feed: Mapping[str, Any]) -> dict[str, Any]:
    """The POOL_SETTINGS a model's manifest records (its "feed"), as FeedSettings values.
    ValueError naming the first one this version cannot serve: a source it does not know
    (a newer trainer's) or a value of the wrong kind."""
    defaults, pools = FeedSettings(), {}
    for name in POOL_SETTINGS:
        if name not in feed:
            continue
        value = feed[name]
        if isinstance(getattr(defaults, name), tuple):
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"feed.{name}: expected a list of source names, got {value!r}")
            unknown = unknown_sources(value)
            if unknown:
                raise ValueError(f"feed.{name}: candidate sources this server does not know: {', '.join(unknown)} "
                                 "(trained by a newer version: upgrade the servers before the trainer)")
            pools[name] = tuple(value)
        elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"feed.{name}: expected a non-negative integer, got {value!r}")
        else:
            pools[name] = value
    return pools


def build_feed_pipeline(
    store: FeedStateReader,
    model: EmbeddingModel | None,
    ranker: LinearRanker = DEFAULT_RANKER,
    settings: FeedSettings = FeedSettings(),
) -> FeedPipeline:
    unknown = unknown_sources([*settings.sources, *settings.fallback_sources])
    if unknown:
        raise ValueError(f"unknown candidate sources: {unknown}; choose from {SOURCE_NAMES}")
    items = ModelItems(model, store.items) if model is not None else None
    available = {
        "followed_sellers": sources.FollowedSellerSource(settings.per_key_limit),
        "friend_likes": sources.FriendLikesSource(settings.per_key_limit),
        "friend_shares": sources.FriendSharesSource(),
        "embedding_neighbours": sources.EmbeddingNeighbourSource(items, settings.neighbours, settings.ef_search) if items else None,
        "item_knn": (
            sources.ItemKnnSource(items, model.item_knn, settings.knn_neighbours) if items and model.item_knn else None
        ),
        "trending": sources.TrendingSource(),
    }
    used = [name for name in settings.sources if available[name] is not None]
    config = PipelineConfig(
        sources=[available[name] for name in used if name not in settings.fallback_sources],
        fallback_sources=[available[name] for name in used if name in settings.fallback_sources],
        id_filters=[
            filters.ExcludedFilter(store.items.hashes),
            filters.NotInterestedItemFilter(),
        ],
        item_filters=[
            filters.UnknownItemFilter(),
            filters.OutOfStockFilter(),
            filters.NotFeedEligibleFilter(),
            filters.SellerOnVacationFilter(),
            filters.ShopperFilter(),
            filters.SeenTooOftenFilter(settings.fatigue_hide_views),
            filters.AlreadyLikedFilter(),
            filters.OwnListingFilter(),
            filters.NotInterestedSellerFilter(),
        ],
        scorer=FatigueScorer(LinearScorer(items, ranker), settings.fatigue_free_views, settings.fatigue_sink),
        selector=FreshSocialFirstSelector(
            DiversitySelector(settings.max_per_seller, settings.max_per_category), settings.fresh_window_seconds, settings.max_fresh
        ),
        per_key_limit=settings.per_key_limit,
        trending_limit=settings.trending_limit,
        max_follows_read=settings.max_follows_read,
        max_friends_read=settings.max_friends_read,
    )
    # Compiled kernels load (or compile) now rather than on the first feed.
    features.warm_up()
    vocab.warm_up()
    if model is not None and model.item_knn is not None:
        model.item_knn.warm_up()
    return FeedPipeline(config, store, items)
