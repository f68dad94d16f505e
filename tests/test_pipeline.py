"""The ranking pipeline over a real memory store, one test per component's job."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np

from ranking.feed import FeedSettings, build_feed_pipeline
from ranking.features import FEATURE_NAMES
from ranking.pipeline import MAX_ACTIVITY_GROWTH
from ranking.ranker import LinearRanker
from ranking.types import MAX_REASON_ACTORS, ReasonKind, ShopperFilters
from ranking.vocab import stable_hash
from stores.events import Event, EventKind
from stores.memory import MemoryStore
from tests.builders import DAY, NOW, make_dataset, social_dataset


def feed_for(store, user="alice", limit=20, settings=FeedSettings(), **kwargs):
    return build_feed_pipeline(store, None, settings=settings).run(user, limit, NOW, **kwargs)


def ids(result):
    return [c.item_id for c in result.items]


def store():
    return MemoryStore.from_dataset(social_dataset(), trending_refresh_seconds=0.0)


def sold_out_i7():
    """store() with i7, which bob (alice's friend) liked, sold out."""
    s = store()
    s.apply([Event("sold-out", EventKind.STOCK_UPDATE, NOW, item_id="i7", stock=0)])
    return s


def test_out_of_stock_items_are_removed():
    result = feed_for(sold_out_i7())
    assert "i2" not in ids(result)  # a sold-out listing: not in its seller's timeline
    assert "i7" not in ids(result)  # a friend's like of a sold-out item: read, then filtered
    assert result.removed_by_filter["out_of_stock"] >= 1


def test_already_liked_items_are_removed():
    result = feed_for(store())
    assert "i8" not in ids(result)
    assert result.removed_by_filter["already_liked"] >= 1


def test_own_listings_are_removed():
    result = feed_for(store())  # bob liked alice's own a1
    assert "a1" not in ids(result)
    assert result.removed_by_filter["own_listing"] == 1


def test_duplicates_across_sources_merge_their_reasons():
    result = feed_for(store())
    i6 = next(c for c in result.items if c.item_id == "i6")
    friends = i6.reason(ReasonKind.FRIENDS_LIKED)
    assert friends is not None and sorted(friends.actor_ids) == ["bob", "carol"] and friends.count == 2
    assert i6.reason(ReasonKind.TRENDING) is not None
    assert Counter(ids(result))["i6"] == 1
    assert result.removed_by_filter["duplicate"] >= 1


def test_a_reason_names_its_newest_actors_and_counts_them_all():
    friends = [f"f{n:02d}" for n in range(MAX_REASON_ACTORS + 5)]
    dataset = make_dataset(
        [("hit", "s1", NOW - DAY, 5)],
        likes=[(friend, "hit", NOW - 60 * (n + 1)) for n, friend in enumerate(friends)],  # f00 the newest
        friends=[("alice", friend, NOW - 40 * DAY) for friend in friends],
    )
    result = feed_for(MemoryStore.from_dataset(dataset, trending_refresh_seconds=0.0))
    liked = result.items[0].reason(ReasonKind.FRIENDS_LIKED)
    assert liked.actor_ids == friends[:MAX_REASON_ACTORS] and liked.count == len(friends)


def test_followed_seller_items_carry_the_seller():
    result = feed_for(store())
    i1 = next(c for c in result.items if c.item_id == "i1")
    assert i1.reason(ReasonKind.FOLLOWED_SELLER).actor_ids == ["s1"]


def test_excluded_items_never_come_back():
    result = feed_for(store(), exclude_ids=["i1", "i6"])
    assert not {"i1", "i6"} & set(ids(result))


def test_not_interested_items_and_sellers_never_come_back():
    s = store()
    s.apply([
        Event("h1", EventKind.NOT_INTERESTED_ITEM, NOW, user_id="alice", item_id="i1"),
        Event("h2", EventKind.NOT_INTERESTED_SELLER, NOW, user_id="alice", seller_id="s2"),
    ])
    result = feed_for(s)
    assert "i1" not in ids(result)
    assert all(c.seller_id != "s2" for c in result.items)
    assert result.removed_by_filter["not_interested_item"] == 1
    assert result.removed_by_filter["not_interested_seller"] >= 1


def test_seller_cap_holds_and_overflow_stays_for_later_pages():
    # Only s1 and s2 have eligible items: with a cap of one, a page holds two items.
    result = feed_for(store(), limit=3, settings=FeedSettings(max_per_seller=1))
    assert sorted(c.seller_id for c in result.items) == ["s1", "s2"]
    assert result.has_more
    capped = feed_for(store(), limit=10, settings=FeedSettings(max_per_seller=2))
    assert max(Counter(c.seller_id for c in capped.items).values()) == 2


def test_unknown_user_gets_a_trending_cold_start_feed():
    result = feed_for(store(), user="stranger")
    assert ids(result)
    assert all(c.reasons[0].kind is ReasonKind.TRENDING for c in result.items)
    assert "i2" not in ids(result)


def test_trending_runs_only_when_the_other_sources_gather_too_few():
    # alice's friends and followed sellers give a handful of candidates: enough for a page of
    # two (fewer than 2 x 2 would call trending in), too few for a page of twenty.
    gathered = feed_for(store(), limit=20).gathered_by_source
    personal = sum(n for name, n in gathered.items() if name != "trending")
    assert 4 <= personal < 40 and gathered["trending"] > 0
    small = feed_for(store(), limit=2)
    assert small.gathered_by_source["trending"] == 0  # counted, so its metric series still appears
    assert "trending" in small.gathered_by_source
    assert not any(c.reason(ReasonKind.TRENDING) for c in small.items)
    always = feed_for(store(), limit=2, settings=FeedSettings(fallback_sources=()))
    assert always.gathered_by_source["trending"] > 0


def test_a_deeper_page_calls_the_fallback_in_when_the_pool_runs_short():
    s = store()
    pipeline = build_feed_pipeline(s, None)
    first = pipeline.run("alice", 2, NOW)
    assert first.gathered_by_source["trending"] == 0
    deeper = pipeline.run("alice", 2, NOW, served_hashes=np.sort(np.arange(40, dtype=np.uint32)))
    assert deeper.gathered_by_source["trending"] > 0


def test_a_narrow_shopper_filter_pages_through_every_match_of_the_deeper_pools():
    # 80 trending items, each of its own seller, most liked first; the 20 least liked are
    # the only ones in category "rare". A new user's first pools (trending: the top 20)
    # hold none of them, and the feed ended at once, empty.
    items = [(f"t{k:02d}", f"s{k:02d}", NOW - 10 * DAY, 5) for k in range(80)]
    likes = [(f"u{n:02d}", f"t{k:02d}", NOW - DAY) for k in range(80) for n in range(80 - k)]
    dataset = make_dataset(items, likes=likes)
    dataset = dataclasses.replace(
        dataset, items=dataclasses.replace(dataset.items, category=["rare" if k >= 60 else "common" for k in range(80)])
    )
    pipeline = build_feed_pipeline(MemoryStore.from_dataset(dataset, trending_refresh_seconds=0.0), None)
    rare = ShopperFilters(include_categories=("rare",))
    served: list[str] = []
    while True:
        page = pipeline.run("stranger", 5, NOW, served_hashes=np.sort(np.array([stable_hash(i) for i in served], np.uint32)), shopper=rare)
        served += ids(page)
        if not (page.has_more and page.items):
            break
    assert sorted(served) == [f"t{k:02d}" for k in range(60, 80)]


def trending_sold_out_pipeline():
    """80 trending items, each of its own seller, most liked first; the 60 most liked sold
    out (a flash sale): a new user's first pools (trending: the top 20) hold none in stock."""
    items = [(f"t{k:02d}", f"s{k:02d}", NOW - 10 * DAY, 0 if k < 60 else 5) for k in range(80)]
    likes = [(f"u{n:02d}", f"t{k:02d}", NOW - DAY) for k in range(80) for n in range(80 - k)]
    return build_feed_pipeline(MemoryStore.from_dataset(make_dataset(items, likes=likes), trending_refresh_seconds=0.0), None)


def test_a_cold_start_feed_pages_past_trending_items_that_sold_out():
    # The feed was empty and ended at once, until the sold-out items' likes decayed, days later.
    pipeline = trending_sold_out_pipeline()
    served: list[str] = []
    while True:
        page = pipeline.run("stranger", 5, NOW, served_hashes=np.sort(np.array([stable_hash(i) for i in served], np.uint32)))
        assert len(page.items) == 5 or not page.has_more
        served += ids(page)
        if not (page.has_more and page.items):
            break
    assert sorted(served) == [f"t{k:02d}" for k in range(60, 80)]


def one_big_shop_pipeline():
    """30 listings of the one shop newbie follows (b00..b29), 40 trending items of 40 other
    sellers (t00..t39): the listings alone are enough (2 x 10) to skip trending for a page
    of ten, and the seller cap lets two of them on it."""
    shop = [(f"b{k:02d}", "bigshop", NOW - (k + 1) * 3600, 5) for k in range(30)]
    trending = [(f"t{k:02d}", f"s{k:02d}", NOW - 10 * DAY, 5) for k in range(40)]
    likes = [(f"u{n:02d}", f"t{k:02d}", NOW - DAY) for k in range(40) for n in range(40 - k)]
    dataset = make_dataset(shop + trending, likes=likes, follows=[("newbie", "bigshop", NOW - DAY)])
    return build_feed_pipeline(MemoryStore.from_dataset(dataset, trending_refresh_seconds=0.0), None)


def test_a_new_user_who_follows_one_big_shop_gets_full_pages_and_all_of_its_listings():
    # The first page held two items.
    pipeline = one_big_shop_pipeline()
    pages: list[list[str]] = []
    has_more = True
    while has_more:
        served = np.sort(np.array([stable_hash(i) for p in pages for i in p], np.uint32))
        page = pipeline.run("newbie", 10, NOW, served_hashes=served)
        pages.append(ids(page))
        has_more = page.has_more
    served = [i for p in pages for i in p]
    assert len(pages[0]) == 10
    assert sorted(served) == [f"b{k:02d}" for k in range(30)] + [f"t{k:02d}" for k in range(40)]  # each once
    # Every page is full while other sellers' items remain; then the cap serves the shop two a page.
    trending_left = [40 - sum(i.startswith("t") for p in pages[:n] for i in p) for n in range(len(pages))]
    assert all(len(p) == 10 for p, left in zip(pages, trending_left) if left >= 8)
    assert all(sum(i.startswith("b") for i in p) <= 2 for p in pages)


def assert_the_pool_is_the_pages(pipeline, user, limit, **request):
    """The trainer's pool for a request is the one the served page was selected from:
    every served item is a row of it, gathered and filtered alike. Returns the page."""
    page = pipeline.run(user, limit, NOW, **request)
    pool = pipeline.pool(user, limit, NOW, **request)
    assert set(ids(page)) <= set(pool.item_ids())
    assert (pool.result.gathered_by_source, pool.result.removed_by_filter) == (page.gathered_by_source, page.removed_by_filter)
    return page


def test_the_trainers_pool_holds_the_items_served_from_deeper_pools():
    page = assert_the_pool_is_the_pages(trending_sold_out_pipeline(), "stranger", 5)
    assert len(page.items) == 5  # all from pools deeper than the first, whose 20 sold out


def test_the_trainers_pool_holds_the_fallback_items_of_a_page_the_seller_cap_left_short():
    page = assert_the_pool_is_the_pages(one_big_shop_pipeline(), "newbie", 10)
    assert page.fallback_gathered and sum(i.startswith("t") for i in ids(page)) == 8


def test_same_state_gives_the_same_feed():
    assert [(c.item_id, c.score) for c in feed_for(store()).items] == [(c.item_id, c.score) for c in feed_for(store()).items]


def test_a_friends_new_like_and_a_followed_sellers_new_item_show_up_next():
    s = store()
    s.apply([
        Event("n1", EventKind.ITEM_UPSERT, NOW, item_id="fresh", seller_id="s1", created_at=NOW, stock=1),
        Event("n2", EventKind.ITEM_UPSERT, NOW, item_id="gift", seller_id="s3", created_at=NOW - DAY, stock=1),
        Event("n3", EventKind.LIKE, NOW, user_id="carol", item_id="gift"),
    ])
    result = feed_for(s)
    by_id = {c.item_id: c for c in result.items}
    assert by_id["fresh"].reason(ReasonKind.FOLLOWED_SELLER).actor_ids == ["s1"]
    assert by_id["gift"].reason(ReasonKind.FRIENDS_LIKED).actor_ids == ["carol"]


def test_scores_are_sorted_best_first():
    scores = [c.score for c in feed_for(store()).items]
    assert scores == sorted(scores, reverse=True)


def test_store_is_read_in_three_calls_whatever_the_number_of_friends():
    class CountingStore:
        def __init__(self, inner):
            self.inner, self.calls = inner, 0

        def __getattr__(self, name):
            method = getattr(self.inner, name)
            if name not in ("read_user", "read_activity", "hydrate"):
                return method  # the vocabularies are local maps, not store calls

            def counted(*args, **kwargs):
                self.calls += 1
                return method(*args, **kwargs)

            return counted

    many_friends = make_dataset(
        [("x", "s", NOW, 1)], friends=[("hub", f"f{i}", NOW) for i in range(200)], follows=[("hub", f"s{i}", NOW) for i in range(50)]
    )
    counting = CountingStore(MemoryStore.from_dataset(many_friends))
    build_feed_pipeline(counting, None).run("hub", 10, NOW)
    assert counting.calls == 3


def test_fresh_graph_activity_is_promoted_to_the_top_but_capped():
    s = store()
    s.apply([
        Event(f"n{i}", EventKind.ITEM_UPSERT, NOW, item_id=f"fresh{i}", seller_id="s1", created_at=NOW - 60 * i, stock=1)
        for i in range(5)
    ])
    # A ranker that learned to ignore freshness: popularity decides, then recency.
    ranker = LinearRanker.from_mapping({"popularity": 1.0, "recency": 0.01})

    def page(settings):
        return build_feed_pipeline(s, None, ranker, settings).run("alice", 20, NOW).items

    promoted = page(FeedSettings(max_fresh=3, max_per_seller=2, fresh_window_seconds=1800))
    # Five fresh listings from a followed seller: three are promoted, and the seller cap
    # keeps two of them, the newest, on top. Those two, and only they, say they are news.
    assert [item.item_id for item in promoted[:2]] == ["fresh0", "fresh1"]
    assert sum(item.item_id.startswith("fresh") for item in promoted) == 2
    assert [item.news for item in promoted] == [True, True] + [False] * (len(promoted) - 2)
    assert promoted[1].score < max(item.score for item in promoted[2:])  # news leads out of score order
    unpromoted = page(FeedSettings(max_fresh=0))
    assert unpromoted[0].item_id == "i6"  # without promotion, the most liked item leads
    assert not any(item.news for item in unpromoted)


def test_an_explained_page_is_the_same_page_and_says_why():
    s = sold_out_i7()
    plain = feed_for(s)
    explained = feed_for(s, explain=True)
    assert [(c.item_id, c.score) for c in explained.items] == [(c.item_id, c.score) for c in plain.items]
    why = explained.explanation
    assert why is not None and plain.explanation is None
    assert why.features.shape == (len(explained.items), len(why.feature_names))
    assert why.contributions.shape == (len(explained.items), len(why.terms))
    assert np.allclose(why.contributions.sum(axis=1), [c.score for c in explained.items], atol=1e-5)
    assert "i7" in why.removed["out_of_stock"] and "i8" in why.removed["already_liked"]
    assert {name: len(removed) for name, removed in why.removed.items()} == {
        name: n for name, n in explained.removed_by_filter.items() if n and name != "duplicate"
    }
    i6 = ids(explained).index("i6")
    assert {"friend_likes", "trending"} <= set(why.sources[i6])


def page_through(pipeline, user, limit):
    """Every page of ``user``'s feed, served items excluded from the next, until it ends."""
    pages: list[list[str]] = []
    has_more = True
    while has_more:
        served = np.sort(np.array([stable_hash(i) for p in pages for i in p], np.uint32))
        page = pipeline.run(user, limit, NOW, served_hashes=served)
        pages.append(ids(page))
        has_more = page.has_more and bool(page.items)
    return pages


def big_shop_fan_pipeline():
    """The one shop fan follows lists 240 items, one an hour: 200 in stock, every sixth sold out."""
    shop = [(f"b{k:03d}", "bigshop", NOW - (k + 1) * 3600, 0 if k % 6 == 5 else 5) for k in range(240)]
    dataset = make_dataset(shop, follows=[("fan", "bigshop", NOW - DAY)])
    return build_feed_pipeline(MemoryStore.from_dataset(dataset), None, settings=FeedSettings(max_per_seller=20))


def test_a_shop_followers_feed_pages_through_every_in_stock_listing_past_the_first_pools():
    # The feed read the shop's 50 newest listings on every page and ended after them.
    served = [i for p in page_through(big_shop_fan_pipeline(), "fan", 20) for i in p]
    assert sorted(served) == [f"b{k:03d}" for k in range(240) if k % 6 != 5]  # each once, none sold out


def test_a_feed_pages_through_every_like_of_a_friend_the_store_keeps():
    # A store keeping 200 likes per user: the feed read a friend's 50 newest on every page.
    items = [(f"i{k:03d}", f"s{k:03d}", NOW - 10 * DAY, 5) for k in range(120)]
    likes = [("pal", f"i{k:03d}", NOW - (k + 1) * 3600) for k in range(120)]
    dataset = make_dataset(items, likes=likes, friends=[("fan", "pal", NOW - DAY)])
    store = MemoryStore.from_dataset(dataset, recent_likes=200)
    pipeline = build_feed_pipeline(store, None, settings=FeedSettings(sources=("friend_likes",)))
    served = [i for p in page_through(pipeline, "fan", 20) for i in p]
    assert sorted(served) == [f"i{k:03d}" for k in range(120)]


def test_a_deep_page_reads_at_most_a_bounded_number_more_listings_than_the_first():
    class ActivityRows:
        """Records how many listings each read_activity call returned."""

        def __init__(self, inner):
            self.inner, self.rows = inner, []

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def read_activity(self, *args):
            activity = self.inner.read_activity(*args)
            self.rows.append(len(activity.listings))
            return activity

    shops = [(f"b{s}-{k:03d}", f"shop{s}", NOW - (k + 1) * 60, 5) for s in range(50) for k in range(200)]
    dataset = make_dataset(shops, follows=[("fan", f"shop{s}", NOW - DAY) for s in range(50)])
    store = ActivityRows(MemoryStore.from_dataset(dataset))
    pipeline = build_feed_pipeline(store, None)
    pipeline.run("fan", 20, NOW)
    assert store.rows == [50 * 50]
    pipeline.run("fan", 20, NOW, served_hashes=np.arange(5_000, dtype=np.uint32))
    assert 50 * 50 < max(store.rows[1:]) <= 50 * 50 + MAX_ACTIVITY_GROWTH


def test_a_listing_on_a_deep_page_is_scored_as_on_the_first():
    # Deep pages read more of the shop's listings; the share of each still counts the
    # first page's 50, or the ranker would score the same listing lower the deeper it is.
    pipeline = big_shop_fan_pipeline()
    share = FEATURE_NAMES.index("followed_listing_share")
    first = pipeline.run("fan", 20, NOW, explain=True)
    served = np.sort(np.array([stable_hash(f"b{k:03d}") for k in range(100)], np.uint32))
    deep = pipeline.run("fan", 20, NOW, served_hashes=served, explain=True)
    assert ids(deep) and not set(ids(deep)) & set(ids(first))
    assert set(deep.explanation.features[:, share]) == set(first.explanation.features[:, share]) == {np.float32(1 / 50)}
