"""The FeedStore contract, run against every store implementation."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from ranking.store import TRENDING_HALF_LIFE, recent_like_count
from ranking.types import ItemCard
from stores.events import Event, EventKind, EventValidationError
from stores import memory
from stores.memory import MemoryStore
from tests import store_views as views
from tests.builders import DAY, NOW, make_dataset, social_dataset
from training.dataset import Edges, Sellers


def ev(event_id: str, kind: EventKind, ts: float = NOW, **fields) -> Event:
    return Event(event_id=event_id, kind=kind, ts=ts, **fields)


def test_unknown_user_gets_an_empty_context(store_factory):
    store = store_factory(social_dataset())
    context = views.read_user(store, "nobody")
    assert context.user_id == "nobody" and context.is_empty
    assert not context.hidden_items and not context.hidden_sellers


def test_read_user_returns_follows_friends_and_newest_likes_first(store_factory):
    store = store_factory(social_dataset())
    alice = views.read_user(store, "alice")
    assert alice.follows == {"s1"}
    assert alice.friends == {"bob", "carol"}
    assert views.read_user(store, "carol").friends == {"alice"}  # friendship is undirected
    assert [item for item, _ in views.read_user(store, "bob").recent_likes] == ["i6", "i7", "a1"]


def test_a_datasets_hides_are_loaded_as_ingested_ones_are(store_factory):
    """A dataset's not_interested tables (what an export writes) hide as the events did."""
    dataset = dataclasses.replace(
        social_dataset(),
        hidden_items=Edges(["alice", "alice"], ["i2", "i6"], np.full(2, np.nan)),
        hidden_sellers=Edges(["bob"], ["s1"], np.full(1, np.nan)),
    )
    store = store_factory(dataset)
    alice, bob = views.read_user(store, "alice"), views.read_user(store, "bob")
    assert (alice.hidden_items, alice.hidden_sellers) == ({"i2", "i6"}, frozenset())
    assert (bob.hidden_items, bob.hidden_sellers) == (frozenset(), {"s1"})


def test_read_activity_is_newest_first_and_bounded(store_factory):
    store = store_factory(social_dataset())
    activity = views.read_activity(store, ["s1", "nobody"], ["bob", "carol"], per_key_limit=2, trending_limit=3)
    assert [item for item, _ in activity.listings_by_seller["s1"]] == ["i1", "i3"]  # i2, sold out, is not listed
    assert activity.listings_by_seller["nobody"] == []
    assert [item for item, _ in activity.likes_by_friend["bob"]] == ["i6", "i7"]
    assert [item for item, _ in activity.likes_by_friend["carol"]] == ["i6"]
    assert activity.trending[0] == "i6" and len(activity.trending) == 3


def test_trending_prefers_recent_likes(store_factory):
    # x has two likes from 30 days ago; y has one like from today: decay ranks y first.
    dataset = make_dataset(
        [("x", "s", NOW - 60 * DAY, 1), ("y", "s", NOW - 60 * DAY, 1)],
        likes=[("u1", "x", NOW - 30 * DAY), ("u2", "x", NOW - 30 * DAY), ("u3", "y", NOW)],
    )
    store = store_factory(dataset)
    assert views.read_activity(store, [], [], 10, 10).trending == ["y", "x"]


def test_hydrate_gives_each_items_decayed_like_count(store_factory):
    # Two likes one half-life ago count one like now; an item without likes counts none.
    dataset = make_dataset(
        [("x", "s", NOW - 60 * DAY, 1), ("y", "s", NOW - 60 * DAY, 1), ("z", "s", NOW - 60 * DAY, 1)],
        likes=[("u1", "x", NOW - TRENDING_HALF_LIFE), ("u2", "x", NOW - TRENDING_HALF_LIFE), ("u3", "y", NOW)],
    )
    store = store_factory(dataset)
    columns = store.hydrate("u1", store.items.codes(["x", "y", "z"], add=True))
    assert recent_like_count(columns.trending, NOW) == pytest.approx([1.0, 1.0, 0.0])
    store.apply([ev("later", EventKind.LIKE, NOW, user_id="u4", item_id="z")])
    assert recent_like_count(store.hydrate("u1", store.items.codes(["z"], add=True)).trending, NOW) == pytest.approx([1.0])
    # Every like and unlike reaches the next hydration (Redis packs the score with the item).
    store.apply([ev("more", EventKind.LIKE, NOW, user_id="u4", item_id="x"), ev("undo", EventKind.UNLIKE, NOW, user_id="u4", item_id="z")])
    columns = store.hydrate("u1", store.items.codes(["x", "y", "z"], add=True))
    assert recent_like_count(columns.trending, NOW) == pytest.approx([2.0, 1.0, 0.0])
    store.apply([ev("stock", EventKind.STOCK_UPDATE, NOW, item_id="x", stock=5)])  # a repack keeps the score
    assert recent_like_count(store.hydrate("u1", store.items.codes(["x"], add=True)).trending, NOW) == pytest.approx([2.0])


def test_hydrate_returns_state_of_known_items_and_liked_flags(store_factory):
    store = store_factory(social_dataset())
    hydration = views.hydrate(store, "alice", ["i2", "i8", "missing"])
    assert set(hydration.items) == {"i2", "i8"}
    assert hydration.items["i2"].stock == 0 and hydration.items["i2"].seller_id == "s1"
    assert hydration.items["i8"].like_count == 2
    assert hydration.items["i8"].created_at == pytest.approx(NOW - 7 * DAY)
    assert hydration.liked == {"i8"}


def test_like_and_unlike_update_counts_and_activity(store_factory):
    store = store_factory(social_dataset())
    result = store.apply([ev("e1", EventKind.LIKE, NOW + 5, user_id="carol", item_id="i1")])
    assert (result.applied, result.duplicates) == (1, 0)
    assert views.hydrate(store, "carol", ["i1"]).items["i1"].like_count == 1
    assert views.hydrate(store, "carol", ["i1"]).liked == {"i1"}
    assert views.read_activity(store, [], ["carol"], 5, 0).likes_by_friend["carol"][0] == ("i1", NOW + 5)
    store.apply([ev("e2", EventKind.UNLIKE, user_id="carol", item_id="i1")])
    assert views.hydrate(store, "carol", ["i1"]).items["i1"].like_count == 0
    assert views.hydrate(store, "carol", ["i1"]).liked == frozenset()


def test_an_item_whose_likes_were_all_undone_is_not_trending(store_factory):
    # A trending score is a float sum of its likes' weights: these three likes taken away
    # again left x a positive rounding error (about 3e-16 of a like now), and x, liked by
    # no one, was still trending (a third of such unlikes do; on a fresh catalogue it led
    # every cold-start feed's trending fallback, with a TRENDING reason).
    dataset = make_dataset([("x", "s", NOW - DAY, 1), ("y", "s", NOW - 60 * DAY, 1)], likes=[("u0", "y", NOW - 30 * DAY)])
    store = store_factory(dataset)
    times = [NOW - hours * 3600 for hours in (1, 2, 3)]
    store.apply([ev(f"like{n}", EventKind.LIKE, ts, user_id=f"u{n + 1}", item_id="x") for n, ts in enumerate(times)])
    assert views.read_activity(store, [], [], 10, 10).trending == ["x", "y"]
    store.apply([ev(f"unlike{n}", EventKind.UNLIKE, NOW, user_id=f"u{n + 1}", item_id="x") for n in range(len(times))])
    assert views.read_activity(store, [], [], 10, 10).trending == ["y"]
    assert views.hydrate(store, "u0", ["x"]).items["x"].like_count == 0
    assert store.hydrate("u0", store.items.codes(["x"], add=True)).trending.tolist() == [0.0]
    # A like again makes it trending as any first like does.
    store.apply([ev("again", EventKind.LIKE, NOW, user_id="u1", item_id="x")])
    assert views.read_activity(store, [], [], 10, 10).trending == ["x", "y"]
    assert recent_like_count(store.hydrate("u0", store.items.codes(["x"], add=True)).trending, NOW) == pytest.approx([1.0])


def test_a_retried_event_id_changes_nothing(store_factory):
    store = store_factory(social_dataset())
    like = ev("same-id", EventKind.LIKE, user_id="carol", item_id="i1")
    store.apply([like])
    result = store.apply([like])
    assert (result.applied, result.duplicates) == (0, 1)
    assert views.hydrate(store, "carol", ["i1"]).items["i1"].like_count == 1


def test_applied_event_ids_are_those_the_store_applied(store_factory):
    store = store_factory(social_dataset())
    store.apply([ev("e1", EventKind.LIKE, user_id="carol", item_id="i1"), ev("e2", EventKind.FOLLOW, user_id="carol", seller_id="s2")])
    assert store.applied_event_ids(["e2", "e9", "e1", "e1"]) == {"e1", "e2"}
    assert store.applied_event_ids([]) == set()


def test_follow_friend_and_their_reversals(store_factory):
    store = store_factory(social_dataset())
    store.apply([
        ev("f1", EventKind.FOLLOW, user_id="dave", seller_id="s2"),
        ev("f2", EventKind.FRIEND, user_id="dave", friend_id="erin"),
    ])
    assert views.read_user(store, "dave").follows == {"s2"}
    assert views.read_user(store, "erin").friends == {"dave"}
    store.apply([
        ev("f3", EventKind.UNFOLLOW, user_id="dave", seller_id="s2"),
        ev("f4", EventKind.UNFRIEND, user_id="erin", friend_id="dave"),
    ])
    assert views.read_user(store, "dave").follows == frozenset()
    assert views.read_user(store, "dave").friends == frozenset()


def test_item_upsert_lists_the_item_and_stock_updates_apply(store_factory):
    store = store_factory(social_dataset())
    store.apply([ev("n1", EventKind.ITEM_UPSERT, item_id="new", seller_id="s2", created_at=NOW + 10, stock=3)])
    assert views.read_activity(store, ["s2"], [], 1, 0).listings_by_seller["s2"] == [("new", NOW + 10)]
    store.apply([ev("n2", EventKind.STOCK_UPDATE, item_id="new", stock=0)])
    item = views.hydrate(store, "alice", ["new"]).items["new"]
    assert (item.stock, item.in_stock, item.seller_id) == (0, False, "s2")


def test_events_apply_in_arrival_order_whatever_their_ts(store_factory):
    # README, "The API": ts says when something happened, not which of two events wins.
    store = store_factory(social_dataset())
    store.apply([ev("o1", EventKind.LIKE, NOW, user_id="carol", item_id="i7"),
                 ev("o2", EventKind.UNLIKE, NOW - 3600, user_id="carol", item_id="i7")])  # fmt: skip
    store.apply([ev("o3", EventKind.ITEM_UPSERT, NOW, item_id="late", seller_id="s2", stock=0)])
    store.apply([ev("o4", EventKind.STOCK_UPDATE, NOW - 3600, item_id="late", stock=4)])
    seen = views.hydrate(store, "carol", ["i7", "late"])
    assert "i7" not in seen.liked and seen.items["late"].stock == 4


def test_the_largest_stock_the_api_takes_is_in_stock(store_factory):
    # IngestRequest's stock is an int64: a client may send its largest value for "unlimited".
    # Redis keeps it as text and a feed reads it back as a double, which rounds to 2**63.
    largest = 2**63 - 1
    store = store_factory(social_dataset())
    store.apply([ev("big1", EventKind.ITEM_UPSERT, item_id="endless", seller_id="s2", stock=largest),
                 ev("big2", EventKind.STOCK_UPDATE, item_id="i7", stock=largest)])  # fmt: skip
    items = views.hydrate(store, "alice", ["endless", "i7"]).items
    assert [(items[i].in_stock, items[i].stock > 2**62) for i in ("endless", "i7")] == [(True, True)] * 2


def test_an_upsert_without_created_at_keeps_an_existing_items_listing_time(store_factory):
    # A catalogue sync that upserts every item to change its price must not list old items anew.
    store = store_factory(social_dataset())
    listed = {seller: dict(views.read_activity(store, [seller], [], 10, 0).listings_by_seller[seller]) for seller in ("s1", "s2")}
    store.apply([
        ev("p1", EventKind.ITEM_UPSERT, NOW + 50, item_id="i2", seller_id="s1", stock=5, price=3.5),
        ev("p2", EventKind.ITEM_UPSERT, NOW + 60, item_id="brand-new", seller_id="s1", stock=1),
        ev("p3", EventKind.ITEM_UPSERT, NOW + 70, item_id="i7", seller_id="s1", stock=2),  # moved to s1
    ])
    s1 = views.read_activity(store, ["s1"], [], 10, 0).listings_by_seller["s1"]
    assert s1[0] == ("brand-new", NOW + 60)  # a new item is listed at its event's time
    assert "i2" not in listed["s1"]  # sold out: not listed until p1 brought it back in stock
    assert dict(s1)["i2"] == NOW - DAY and dict(s1)["i7"] == listed["s2"]["i7"]
    assert "i7" not in dict(views.read_activity(store, ["s2"], [], 10, 0).listings_by_seller["s2"])
    items = views.hydrate(store, "alice", ["i2", "i7", "brand-new"]).items
    assert (items["i2"].created_at, items["i2"].stock, items["i2"].price) == (NOW - DAY, 5, 3.5)
    assert (items["i7"].created_at, items["i7"].seller_id) == (listed["s2"]["i7"], "s1")
    assert items["brand-new"].created_at == NOW + 60
    store.apply([ev("p4", EventKind.ITEM_UPSERT, NOW + 80, item_id="i2", seller_id="s1", created_at=NOW + 80, stock=5)])
    assert views.read_activity(store, ["s1"], [], 1, 0).listings_by_seller["s1"] == [("i2", NOW + 80)]  # a time given relists it


def test_not_interested_hides_items_and_sellers(store_factory):
    store = store_factory(social_dataset())
    store.apply([
        ev("h1", EventKind.NOT_INTERESTED_ITEM, user_id="alice", item_id="i6"),
        ev("h2", EventKind.NOT_INTERESTED_SELLER, user_id="alice", seller_id="s2"),
    ])
    alice = views.read_user(store, "alice")
    assert alice.hidden_items == {"i6"} and alice.hidden_sellers == {"s2"}


def test_a_batch_with_an_unknown_item_changes_nothing(store_factory):
    store = store_factory(social_dataset())
    batch = [
        ev("ok", EventKind.FOLLOW, user_id="dave", seller_id="s1"),
        ev("bad", EventKind.STOCK_UPDATE, item_id="no-such-item", stock=1),
    ]
    with pytest.raises(EventValidationError) as error:
        store.apply(batch)
    assert (error.value.index, error.value.field) == (1, "item_id")
    assert views.read_user(store, "dave").follows == frozenset()
    # The rejected batch's ids were not consumed: a corrected retry applies.
    assert store.apply(batch[:1]).applied == 1


def test_an_item_upserted_earlier_in_the_batch_can_be_liked(store_factory):
    store = store_factory(social_dataset())
    result = store.apply([
        ev("u1", EventKind.ITEM_UPSERT, item_id="fresh", seller_id="s1", created_at=NOW, stock=2),
        ev("u2", EventKind.LIKE, user_id="bob", item_id="fresh"),
    ])
    assert result.applied == 2
    assert views.hydrate(store, "bob", ["fresh"]).items["fresh"].like_count == 1


def test_without_timestamps_trending_is_ordered_by_like_count(store_factory):
    nan = float("nan")
    dataset = make_dataset(
        [("x", "", nan, 1), ("y", "", nan, 1), ("z", "", nan, 1)],
        likes=[("u1", "y", nan), ("u2", "y", nan), ("u3", "y", nan), ("u1", "x", nan), ("u2", "x", nan), ("u3", "z", nan)],
    )
    store = store_factory(dataset)
    assert views.read_activity(store, [], [], 10, 10).trending == ["y", "x", "z"]


def _card_dataset():
    dataset = social_dataset()
    items = dataset.items
    n = len(items)
    with_cards = dataclasses.replace(
        items,
        price=np.array([9.5] + [np.nan] * (n - 1)),
        category=["shoes"] + [""] * (n - 1),
        title=["Red shoes"] + [""] * (n - 1),
        image_url=["https://img.example.com/i1.jpg"] + [""] * (n - 1),
        currency=["EUR"] + [""] * (n - 1),
        ship_days=np.array([2.0] + [np.nan] * (n - 1)),
        feed_eligible=np.array([True, True, False] + [True] * (n - 3)),
    )
    sellers = Sellers(["s1", "s2"], np.array([np.inf, NOW + DAY]))
    return dataclasses.replace(dataset, items=with_cards, sellers=sellers)


def test_cards_eligibility_and_vacations_load_from_the_dataset(store_factory):
    store = store_factory(_card_dataset())
    codes = store.items.codes(["i1", "i3", "i6", "missing"], add=True)
    assert store.read_cards(codes) == [
        ItemCard("Red shoes", "https://img.example.com/i1.jpg", 9.5, "EUR", "shoes", 2), ItemCard(), ItemCard(), ItemCard(),
    ]
    columns = store.hydrate("alice", codes)
    assert columns.eligible[:3].tolist() == [True, False, True]
    assert columns.seller_away_until[:3].tolist() == [np.inf, np.inf, NOW + DAY]
    assert columns.price[0] == 9.5 and np.isnan(columns.price[1])
    assert columns.ship_days[0] == 2.0 and np.isnan(columns.ship_days[2])
    assert store.categories.id(int(columns.category[0])) == "shoes" and columns.category[1] == -1


def test_hydration_keeps_ids_and_categories_with_separators_and_non_ascii_text(store_factory):
    """Redis packs an item's hydrated fields into one value: no id or text may break it."""
    store = store_factory(social_dataset())
    odd = [("o1", "s|1:é,", "a|b:c,ü"), ("o2", "1:x", "|"), ("o3", "ß" * 40, ":" * 3)]
    store.apply([ev(f"odd{n}", EventKind.ITEM_UPSERT, item_id=item, seller_id=seller, created_at=NOW + 0.25, stock=n + 1,
                    price=9.99, ship_days=n, category=category)
                 for n, (item, seller, category) in enumerate(odd)])  # fmt: skip
    store.apply([ev("liked", EventKind.LIKE, user_id="alice", item_id="o2")])
    hydration = views.hydrate(store, "alice", ["o1", "missing", "o2", "o3"])
    assert {item: (v.seller_id, v.category, v.created_at, v.stock, v.like_count, v.price, v.ship_days)
            for item, v in hydration.items.items()} == {
        item: (seller, category, NOW + 0.25, n + 1, int(item == "o2"), 9.99, float(n))
        for n, (item, seller, category) in enumerate(odd)
    }  # fmt: skip


def test_ids_with_hash_tag_braces_are_ingested_as_any_other(store_factory):
    """Keys are hash-tagged ``{u:ID}``, ``{i:ID}``, ``{s:ID}``: an id with a brace moves the
    tag Redis hashes, and a cluster's write scripts must still name keys of one slot."""
    dataset = make_dataset(
        [("i}x{", "s}{", NOW - DAY, 2), ("{i}", "{s}", NOW - DAY, 1)],
        likes=[("u}{", "{i}", NOW - 60)],
        friends=[("u}{", "{u}", NOW - DAY)],
    )
    store = store_factory(dataset)
    result = store.apply([
        ev("e{1}", EventKind.LIKE, NOW - 50, user_id="{u}", item_id="i}x{"),
        ev("e}2{", EventKind.ITEM_UPSERT, NOW - 40, item_id="n}{", seller_id="{s}", created_at=NOW - 40, stock=3),
        ev("{e3}", EventKind.STOCK_UPDATE, NOW - 30, item_id="{i}", stock=0),
        ev("e4", EventKind.SHARE, NOW - 20, user_id="u}{", item_id="n}{"),
        ev("e5", EventKind.FOLLOW, NOW - 10, user_id="u}{", seller_id="s}{"),
    ])  # fmt: skip
    assert (result.applied, result.duplicates) == (5, 0)
    assert views.read_user(store, "{u}").shared == (("n}{", "u}{", NOW - 20),)
    assert views.read_user(store, "u}{").follows == {"s}{"}
    items = views.hydrate(store, "{u}", ["i}x{", "{i}", "n}{"])
    assert {item: (view.seller_id, view.stock, view.like_count) for item, view in items.items.items()} == {
        "i}x{": ("s}{", 2, 1), "{i}": ("{s}", 0, 1), "n}{": ("{s}", 3, 0),
    }  # fmt: skip
    assert items.liked == {"i}x{"}
    assert views.read_activity(store, ["{s}"], [], 5, 0).listings_by_seller["{s}"] == [("n}{", NOW - 40)]


def test_hydration_gives_each_item_its_own_seller_category_and_vacation(store_factory):
    """Items share sellers and categories (Redis sends each distinct one once): every
    item, in any order and between missing ones, still gets its own."""
    store = store_factory(social_dataset())
    sellers, categories = ["r0", "r1", "r2"], ["home", "", "toys", "home"]
    store.apply([ev(f"r{n}", EventKind.ITEM_UPSERT, item_id=f"r{n}", seller_id=sellers[n % 3], created_at=NOW, stock=1,
                    category=categories[n % 4]) for n in range(12)])  # fmt: skip
    store.apply([ev("away", EventKind.SELLER_VACATION, seller_id="r1", vacation_until=NOW + DAY)])
    order = ["r7", "missing", "r0", "r11", "r4", "gone", "r9", "r2", "r5"]
    hydration = views.hydrate(store, "alice", order)
    assert {item: (v.seller_id, v.category, v.seller_away_until) for item, v in hydration.items.items()} == {
        item: (sellers[n % 3], categories[n % 4], NOW + DAY if n % 3 == 1 else 0.0)
        for item in order if item.startswith("r") for n in [int(item[1:])]
    }


def test_item_events_change_only_the_card_fields_they_name(store_factory):
    store = store_factory(social_dataset())
    assert store.read_cards(store.items.codes(["n1"], add=True)) == [ItemCard()]  # read before it exists
    store.apply([ev("new", EventKind.ITEM_UPSERT, seller_id="s9", item_id="n1", created_at=NOW, stock=2,
                    title="Lamp", price=30.0, currency="EUR", ship_days=3, category="home")])  # fmt: skip
    card = lambda: store.read_cards(store.items.codes(["n1"], add=True))[0]  # noqa: E731
    assert card() == ItemCard("Lamp", "", 30.0, "EUR", "home", 3)
    store.apply([ev("price", EventKind.ITEM_UPDATE, item_id="n1", price=25.0, image_url="https://img.example.com/n1.png")])
    assert card() == ItemCard("Lamp", "https://img.example.com/n1.png", 25.0, "EUR", "home", 3)
    store.apply([ev("relist", EventKind.ITEM_UPSERT, seller_id="s9", item_id="n1", created_at=NOW, stock=0)])
    assert card() == ItemCard("Lamp", "https://img.example.com/n1.png", 25.0, "EUR", "home", 3)
    store.apply([ev("clear", EventKind.ITEM_UPDATE, item_id="n1", title="", category="")])
    assert card() == ItemCard("", "https://img.example.com/n1.png", 25.0, "EUR", "", 3)
    assert store.hydrate("alice", store.items.codes(["n1"], add=True)).category.tolist() == [-1]


def test_feed_eligibility_follows_item_events(store_factory):
    store = store_factory(social_dataset())
    code = store.items.codes(["i1"], add=True)
    assert store.hydrate("alice", code).eligible.tolist() == [True]
    store.apply([ev("off", EventKind.ITEM_UPDATE, item_id="i1", feed_eligible=False)])
    assert store.hydrate("alice", code).eligible.tolist() == [False]
    store.apply([ev("stock", EventKind.ITEM_UPSERT, seller_id="s1", item_id="i1", created_at=NOW, stock=1)])
    assert store.hydrate("alice", code).eligible.tolist() == [False]  # not named: kept
    store.apply([ev("on", EventKind.ITEM_UPSERT, seller_id="s1", item_id="i1", created_at=NOW, stock=1, feed_eligible=True)])
    assert store.hydrate("alice", code).eligible.tolist() == [True]


def test_vacations_start_and_end_by_event(store_factory):
    store = store_factory(social_dataset())
    codes = store.items.codes(["i1", "i6"], add=True)
    assert store.hydrate("alice", codes).seller_away_until.tolist() == [0.0, 0.0]
    store.apply([
        ev("away1", EventKind.SELLER_VACATION, seller_id="s1", vacation_until=math.inf),
        ev("away2", EventKind.SELLER_VACATION, seller_id="s2", vacation_until=NOW + 3 * DAY),
    ])  # fmt: skip
    assert store.hydrate("alice", codes).seller_away_until.tolist() == [math.inf, NOW + 3 * DAY]
    store.apply([ev("back", EventKind.SELLER_VACATION_END, seller_id="s1")])
    assert store.hydrate("alice", codes).seller_away_until.tolist() == [0.0, NOW + 3 * DAY]


def test_an_update_of_an_unknown_item_changes_nothing(store_factory):
    store = store_factory(social_dataset())
    with pytest.raises(EventValidationError, match=r"events\[1\]\.item_id"):
        store.apply([ev("ok", EventKind.ITEM_UPDATE, item_id="i1", title="kept?"), ev("bad", EventKind.ITEM_UPDATE, item_id="nope", title="x")])
    assert store.read_cards(store.items.codes(["i1"], add=True))[0].title == ""


# -- engagement beyond likes: shares, views (fatigue), clicks, carts, purchases ----------


def test_a_share_reaches_the_named_friend_or_every_friend(store_factory):
    store = store_factory(social_dataset())
    store.apply([
        ev("s1", EventKind.SHARE, NOW - 60, user_id="bob", item_id="i3", friend_id="alice"),
        ev("s2", EventKind.SHARE, NOW - 30, user_id="alice", item_id="i7"),  # to bob and carol
    ])  # fmt: skip
    assert views.read_user(store, "alice").shared == (("i3", "bob", NOW - 60),)
    assert views.read_user(store, "bob").shared == (("i7", "alice", NOW - 30),)
    assert views.read_user(store, "carol").shared == (("i7", "alice", NOW - 30),)
    assert views.read_user(store, "dave").shared == ()
    # Shared again, later: one entry, at the newest share; an older repeat changes nothing.
    store.apply([
        ev("s3", EventKind.SHARE, NOW - 10, user_id="bob", item_id="i3", friend_id="alice"),
        ev("s4", EventKind.SHARE, NOW - 100, user_id="bob", item_id="i3", friend_id="alice"),
        ev("s5", EventKind.SHARE, NOW - 20, user_id="carol", item_id="i3"),  # carol's only friend is alice
    ])  # fmt: skip
    assert views.read_user(store, "alice").shared == (("i3", "bob", NOW - 10), ("i3", "carol", NOW - 20))


def test_shares_with_a_user_are_bounded_newest_first(store_factory):
    from ranking.store import SHARED_BOUND

    store = store_factory(social_dataset())
    store.apply([
        ev(f"s{n}", EventKind.SHARE, NOW - n, user_id="bob", item_id=f"i{1 + n % 8}", friend_id=f"f{n}")
        for n in range(SHARED_BOUND + 5)
    ])  # fmt: skip
    assert all(len(views.read_user(store, f"f{n}").shared) == 1 for n in range(SHARED_BOUND + 5))
    store.apply([ev(f"t{n}", EventKind.SHARE, NOW - n, user_id=f"u{n}", item_id="i1", friend_id="erin") for n in range(SHARED_BOUND + 5)])
    shared = views.read_user(store, "erin").shared
    assert [sharer for _, sharer, _ in shared] == [f"u{n}" for n in range(SHARED_BOUND)]


def _seen(store, user: str, items=("i1", "i3", "i6")):
    return views.hydrate(store, user, list(items)).seen


def test_views_count_until_the_user_engages(store_factory):
    store = store_factory(social_dataset())
    store.apply([ev(f"v{n}", EventKind.VIEW, NOW + n, user_id="alice", item_id="i1") for n in range(3)])
    store.apply([ev("v-other", EventKind.VIEW, NOW, user_id="alice", item_id="i3")])
    assert _seen(store, "alice") == {"i1": (3, NOW + 2), "i3": (1, NOW)}
    assert _seen(store, "bob") == {}  # views are the viewer's own
    for kind in (EventKind.CLICK, EventKind.ADD_TO_CART, EventKind.PURCHASE, EventKind.SHARE, EventKind.LIKE):
        store.apply([ev(f"again-{kind.value}", EventKind.VIEW, NOW + 5, user_id="alice", item_id="i3")])
        assert _seen(store, "alice")["i3"][0] >= 1
        store.apply([ev(f"engage-{kind.value}", kind, NOW + 6, user_id="alice", item_id="i3")])
        assert "i3" not in _seen(store, "alice"), kind
    assert _seen(store, "alice") == {"i1": (3, NOW + 2)}


def test_a_view_older_than_the_last_counts_and_keeps_the_last_time(store_factory):
    store = store_factory(social_dataset())
    store.apply([ev("new", EventKind.VIEW, NOW + 50, user_id="alice", item_id="i1")])
    store.apply([ev("old", EventKind.VIEW, NOW + 10, user_id="alice", item_id="i1")])
    assert _seen(store, "alice") == {"i1": (2, NOW + 50)}


def test_views_far_apart_start_a_new_count(store_factory):
    from ranking.store import VIEW_WINDOW_SECONDS

    store = store_factory(social_dataset())
    store.apply([ev(f"v{n}", EventKind.VIEW, NOW + n, user_id="alice", item_id="i1") for n in range(4)])
    later = NOW + 3 + VIEW_WINDOW_SECONDS + 1
    store.apply([ev("late", EventKind.VIEW, later, user_id="alice", item_id="i1")])
    assert _seen(store, "alice") == {"i1": (1, later)}


def test_each_user_keeps_the_newest_viewed_items_only(store_factory):
    from ranking.store import SEEN_BOUND

    items = [(f"n{k}", "s9", NOW - DAY, 1) for k in range(SEEN_BOUND + 3)]
    store = store_factory(make_dataset(items))
    store.apply([ev(f"v{k}", EventKind.VIEW, NOW + k, user_id="alice", item_id=f"n{k}") for k in range(SEEN_BOUND + 3)])
    seen = views.hydrate(store, "alice", [item for item, *_ in items]).seen
    assert len(seen) == SEEN_BOUND
    assert "n0" not in seen and "n2" not in seen and f"n{SEEN_BOUND + 2}" in seen


def test_an_engagement_with_an_unknown_item_changes_nothing(store_factory):
    store = store_factory(social_dataset())
    with pytest.raises(EventValidationError, match=r"events\[1\]\.item_id"):
        store.apply([
            ev("ok", EventKind.SHARE, user_id="bob", item_id="i1", friend_id="alice"),
            ev("bad", EventKind.VIEW, user_id="alice", item_id="nope"),
        ])  # fmt: skip
    assert views.read_user(store, "alice").shared == ()


def test_shares_and_views_load_from_the_dataset(store_factory):
    from training.dataset import Engagements

    rows = [  # (user, item, kind, ts, friend)
        ("bob", "i3", "share", NOW - 50, "alice"),
        ("alice", "i7", "share", NOW - 40, ""),
        ("alice", "i1", "view", NOW - 30, ""),
        ("alice", "i1", "view", NOW - 20, ""),
        ("alice", "i6", "view", NOW - 20, ""),
        ("alice", "i6", "click", NOW - 10, ""),
        ("bob", "i1", "purchase", NOW - 5, ""),
    ]
    engagements = Engagements(
        [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], np.array([r[3] for r in rows], float), [r[4] for r in rows]
    )
    store = store_factory(dataclasses.replace(social_dataset(), engagements=engagements))
    assert views.read_user(store, "alice").shared == (("i3", "bob", NOW - 50),)
    assert views.read_user(store, "carol").shared == (("i7", "alice", NOW - 40),)
    assert _seen(store, "alice") == {"i1": (2, NOW - 20)}


def test_a_loaded_share_and_the_same_share_ingested_are_one_entry_whatever_the_ids_characters(store_factory):
    # Redis keeps a share as a JSON member [item, sharer]: the load must write the bytes the
    # scripts' cjson writes (it escapes "/" and DEL), or the same share is two members.
    from training.dataset import Engagements

    odd = "a\x7fb/c"
    dataset = make_dataset([(odd, "s1", NOW - DAY, 3), ("i1", "s1", NOW - DAY, 3)],
                           likes=[("alice", "i1", NOW - DAY)], friends=[("alice", "bob", NOW - DAY)])  # fmt: skip
    shares = Engagements(["bob"], [odd], ["share"], np.array([NOW - 50]), ["alice"])
    store = store_factory(dataclasses.replace(dataset, engagements=shares))
    store.apply([ev("again", EventKind.SHARE, NOW - 10, user_id="bob", item_id=odd, friend_id="alice")])
    assert views.read_user(store, "alice").shared == ((odd, "bob", NOW - 10),)


def test_cards_stay_right_past_the_memory_stores_card_cache_bound(monkeypatch):
    monkeypatch.setattr(memory, "CARD_CACHE_BOUND", 2)
    store = MemoryStore.from_dataset(social_dataset())
    codes = store.items.codes(["i1", "i2", "i3"], add=True)
    first = store.read_cards(codes)
    store.apply([ev("retitle", EventKind.ITEM_UPDATE, item_id="i2", title="Renamed")])
    again = store.read_cards(codes)
    assert again[0] == first[0] and again[2] == first[2] and again[1].title == "Renamed"


def test_the_followed_seller_share_counts_every_seller_the_user_follows(store_factory):
    # 1 / the sellers the user follows: three here, though s2 has never listed anything and
    # s3 only went on vacation. It counted the followed sellers the store's vocabulary held
    # a code for: s1 and s3 in memory (the vacation gave s3 one), s1 alone in a Redis
    # process that had not yet read anything naming s3, so a feed's scores depended on
    # what the process had served before.
    from ranking.feed import build_feed_pipeline
    from ranking.features import FEATURE_NAMES

    dataset = make_dataset([("i1", "s1", NOW - DAY, 1)], follows=[("u", s, NOW - DAY) for s in ("s1", "s2", "s3")])
    store = store_factory(dataset)
    store.apply([ev("away", EventKind.SELLER_VACATION, NOW - 60, seller_id="s3", vacation_until=NOW - 30)])
    pool = build_feed_pipeline(store, None).pool("u", 10, NOW)
    features = dict(zip(pool.item_ids(), pool.features))["i1"]
    assert features[FEATURE_NAMES.index("followed_seller_share")] == pytest.approx(1 / 3)
    assert features[FEATURE_NAMES.index("followed_listing_share")] == pytest.approx(1 / 3)


def test_every_store_gives_the_pipeline_the_same_candidates_and_features(store_factory):
    # The ranker is fitted on features replayed from the memory store and serves them from
    # any store: the activity, user state and hydration behind them (the fan-out counts of
    # listings and likes read included) must agree.
    from ranking.feed import build_feed_pipeline
    from training.generate import generate

    dataset = generate(users=150, sellers=15, items=400, seed=3)
    now = float(np.nanmax(dataset.likes.ts)) + 60.0
    reference = build_feed_pipeline(MemoryStore.from_dataset(dataset, trending_refresh_seconds=0.0), None)
    tested = build_feed_pipeline(store_factory(dataset), None)
    for user_id in sorted(set(dataset.likes.src))[:30]:
        expected, got = reference.pool(user_id, 20, now), tested.pool(user_id, 20, now)
        assert sorted(got.item_ids()) == sorted(expected.item_ids()), user_id
        rows = dict(zip(expected.item_ids(), expected.features))
        for item_id, features in zip(got.item_ids(), got.features):
            np.testing.assert_allclose(features, rows[item_id], rtol=1e-5, atol=1e-6, err_msg=f"{user_id} {item_id}")


def test_sold_out_listings_leave_room_for_a_sellers_older_in_stock_ones(store_factory):
    # Redis keeps a bounded number of a seller's listings (``listings``: 4 here). It kept the
    # newest, sold out or not, so a shop's newer sold-out listings (loaded, or ingested sold
    # out) hid its older in-stock ones from every feed on Redis, while the memory store, which
    # keeps every listing, still served them. A restocked item comes back.
    in_stock = [(f"old{k}", "shop", NOW - (30 + k) * DAY, 3) for k in range(3)]
    sold_out = [(f"sold{k}", "shop", NOW - (10 + k) * DAY, 0) for k in range(6)]
    store = store_factory(make_dataset(in_stock + sold_out, follows=[("fan", "shop", NOW - 60 * DAY)]), listings=4)
    store.apply([ev(f"gone{k}", EventKind.ITEM_UPSERT, NOW - DAY, item_id=f"gone{k}", seller_id="shop",
                    created_at=NOW - (5 + k) * DAY, stock=0) for k in range(5)])  # fmt: skip
    assert sorted(views.served_to(store, "fan")) == ["old0", "old1", "old2"]
    store.apply([ev("back", EventKind.STOCK_UPDATE, item_id="sold5", stock=2), ev("out", EventKind.STOCK_UPDATE, item_id="old1", stock=0)])
    assert sorted(views.served_to(store, "fan")) == ["old0", "old2", "sold5"]


def test_listings_that_sell_out_bring_their_sellers_older_in_stock_ones_back_in_reach(store_factory):
    # Listed in stock, then sold out: on Redis (listings=4) the four new listings took the
    # seller's set and trimmed the older in-stock ones; once the four sold out the set was
    # empty, and no feed reached the three in-stock items the memory store still served.
    old = [(f"old{k}", "shop", NOW - (30 + k) * DAY, 3) for k in range(3)]
    store = store_factory(make_dataset(old, follows=[("fan", "shop", NOW - 60 * DAY)]), listings=4)
    new = [f"new{k}" for k in range(4)]
    store.apply([ev(f"list-{item}", EventKind.ITEM_UPSERT, NOW - DAY, item_id=item, seller_id="shop",
                    created_at=NOW - (5 + k) * DAY, stock=1) for k, item in enumerate(new)])  # fmt: skip
    assert set(new) <= set(views.served_to(store, "fan"))  # (Redis reaches the newest 4, memory all 7)
    store.apply([ev(f"sell-{item}", EventKind.STOCK_UPDATE, item_id=item, stock=0) for item in new])
    assert sorted(views.served_to(store, "fan")) == ["old0", "old1", "old2"]
