"""The commerce feed over real gRPC: seller vacations, the curated catalogue and item cards.

Run here on the memory store and re-run on Redis and a Redis Cluster by
test_redis_grpc_feed.py.
"""

from __future__ import annotations

import math
import time
from collections import Counter

import grpc
import pytest

from protos.feed.v1 import feed_pb2
from ranking.feed import FeedSettings
from tests.feed_world import all_pages, running_server
# The same world, server and event builder as the core gRPC tests; pytest injects the
# imported fixtures by name, which pyflakes reads as redefinitions.
from tests.test_grpc_feed import event, server, stub, world  # noqa: F401
# ruff: noqa: F811


def _feed(stub, user: str, pages: int = 3) -> list[feed_pb2.FeedItem]:
    return [item for page in all_pages(stub, user, 20, pages) for item in page.items]


def _served_sellers(stub, users) -> Counter[str]:
    return Counter(item.seller_id for user in users for item in _feed(stub, user))


def test_no_item_of_a_seller_on_vacation_is_served_on_any_page_until_it_ends(world, stub):
    users = world.dataset.user_ids()
    away_in_data = set(world.dataset.sellers.seller_id)  # from the dataset's sellers.csv
    served = _served_sellers(stub, users)
    assert not away_in_data & set(served)

    # The most served seller goes away until further notice: gone from every user's feed.
    seller = served.most_common(1)[0][0]
    stub.Ingest(feed_pb2.IngestRequest(events=[event(seller_vacation=feed_pb2.SellerVacation(seller_id=seller))]), timeout=10)
    assert not ({seller} | away_in_data) & set(_served_sellers(stub, users))

    # Ending vacations brings those sellers back; any other stays away.
    returning = {seller, *sorted(away_in_data)[:1]}
    stub.Ingest(feed_pb2.IngestRequest(events=[
        event(seller_vacation_end=feed_pb2.SellerVacationEnd(seller_id=s)) for s in sorted(returning)
    ]), timeout=10)  # fmt: skip
    after = _served_sellers(stub, users)
    assert after[seller] > 0
    assert not (away_in_data - returning) & set(after)


def test_a_timed_vacation_ends_by_itself(world, stub):
    users = world.dataset.user_ids()[:60]
    seller = _served_sellers(stub, users).most_common(1)[0][0]
    readers = [user for user in users if seller in {i.seller_id for i in _feed(stub, user, pages=1)}][:10]
    until = time.time() + 5.0
    vacation = feed_pb2.IngestRequest(events=[event(seller_vacation=feed_pb2.SellerVacation(seller_id=seller, until=until))])
    stub.Ingest(vacation, timeout=10)
    assert all(seller not in {i.seller_id for i in _feed(stub, user, pages=1)} for user in readers)
    assert time.time() < until, "the check took longer than the vacation: lengthen it"
    time.sleep(until - time.time() + 0.2)
    assert any(seller in {i.seller_id for i in _feed(stub, user, pages=1)} for user in readers)

    # Its reply lost, the client retries after the vacation ended. The retry's server-stamped
    # ts is past its `until` now, which a new event may not be; an applied one is a
    # duplicate, as the proto promises (it was INVALID_ARGUMENT, and refused its whole batch).
    retried = stub.Ingest(vacation, timeout=10)
    assert (retried.applied, retried.duplicates) == (0, 1)
    assert any(seller in {i.seller_id for i in _feed(stub, user, pages=1)} for user in readers)
    late = feed_pb2.IngestRequest(events=[event(seller_vacation=feed_pb2.SellerVacation(seller_id=seller, until=until))])
    with pytest.raises(grpc.RpcError) as refused:  # the same content under a new id is still refused
        stub.Ingest(late, timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and refused.value.details().startswith("events[0].until")


def test_no_ineligible_item_is_ever_served(world, stub):
    users = world.dataset.user_ids()
    items = world.dataset.items
    ineligible = {i for i, ok in zip(items.item_id, items.feed_eligible.tolist()) if not ok}
    assert ineligible
    served = Counter(item.item_id for user in users for item in _feed(stub, user))
    assert not ineligible & set(served)

    # The seller takes the 30 most served items off the feed, then puts 10 back.
    hidden = [item for item, _ in served.most_common(30)]
    stub.Ingest(feed_pb2.IngestRequest(events=[
        event(item_update=feed_pb2.ItemUpdate(item_id=item, feed_eligible=False)) for item in hidden
    ]), timeout=10)  # fmt: skip
    again = Counter(item.item_id for user in users for item in _feed(stub, user))
    assert not (ineligible | set(hidden)) & set(again)
    stub.Ingest(feed_pb2.IngestRequest(events=[
        event(item_update=feed_pb2.ItemUpdate(item_id=item, feed_eligible=True)) for item in hidden[:10]
    ]), timeout=10)  # fmt: skip
    back = Counter(item.item_id for user in users for item in _feed(stub, user))
    assert set(hidden[:10]) & set(back)
    assert not set(hidden[10:]) & set(back)


def test_feed_items_carry_their_card_and_partial_updates_keep_the_rest(world, stub):
    items = world.dataset.items
    row = {item_id: i for i, item_id in enumerate(items.item_id)}
    user = world.dataset.user_ids()[0]
    page = _feed(stub, user, pages=1)
    assert page
    for item in page:
        i = row[item.item_id]
        assert (item.title, item.image_url, item.currency, item.category) == (
            items.title[i], items.image_url[i], items.currency[i], items.category[i]
        )
        assert item.price == pytest.approx(items.price[i]) and item.ship_days == int(items.ship_days[i])

    target = page[0]
    stub.Ingest(feed_pb2.IngestRequest(events=[event(item_update=feed_pb2.ItemUpdate(item_id=target.item_id, price=1.5))]), timeout=10)
    # An upsert that names no card field (a catalogue sync) keeps the card too.
    stub.Ingest(feed_pb2.IngestRequest(events=[event(item_upsert=feed_pb2.ItemUpsert(
        item_id=target.item_id, seller_id=target.seller_id, stock=7,
    ))]), timeout=10)  # fmt: skip
    updated = next(item for item in _feed(stub, user, pages=1) if item.item_id == target.item_id)
    assert updated.price == 1.5
    assert (updated.title, updated.image_url, updated.currency, updated.category, updated.ship_days) == (
        target.title, target.image_url, target.currency, target.category, target.ship_days
    )
    # A named empty string clears a field; an item without a price has none in the feed.
    stub.Ingest(feed_pb2.IngestRequest(events=[event(item_update=feed_pb2.ItemUpdate(item_id=target.item_id, title=""))]), timeout=10)
    cleared = next(item for item in _feed(stub, user, pages=1) if item.item_id == target.item_id)
    assert cleared.title == "" and cleared.price == 1.5 and cleared.image_url == target.image_url


def test_a_new_item_is_served_with_its_card(world, stub):
    follow = (world.dataset.follows.src[0], world.dataset.follows.dst[0])
    user, seller = follow
    stub.Ingest(feed_pb2.IngestRequest(events=[event(item_upsert=feed_pb2.ItemUpsert(
        item_id="card-new", seller_id=seller, stock=3, price=12.0, currency="EUR", title="Blue vase",
        image_url="https://img.example.com/items/card-new.jpg", category="home", ship_days=2,
    ))]), timeout=10)  # fmt: skip
    if seller in set(world.dataset.sellers.seller_id):
        pytest.skip("the followed seller is on vacation in this world")
    item = next(item for item in _feed(stub, user, pages=1) if item.item_id == "card-new")
    assert (item.title, item.price, item.currency, item.ship_days, item.category) == ("Blue vase", 12.0, "EUR", 2, "home")
    assert not math.isnan(item.score)


def test_a_catalogue_sync_without_created_at_lists_no_old_item_anew(world, stub):
    # Upserting every item again (as a catalogue sync does) changes nothing a follower sees:
    # an item listed anew would be promoted to the top of the next page as news.
    dataset, items = world.dataset, world.dataset.items
    user, seller = dataset.follows.src[0], dataset.follows.dst[0]
    if seller in set(dataset.sellers.seller_id):
        pytest.skip("the followed seller is on vacation in this world")
    first = {item.item_id for item in stub.GetFeed(feed_pb2.GetFeedRequest(user_id=user, limit=10), timeout=10).items}
    synced = [i for i, owner in enumerate(items.seller_id) if owner == seller and items.stock[i] > 0
              and items.feed_eligible[i] and items.item_id[i] not in first]  # fmt: skip
    assert synced, "the followed seller has no other item in stock"
    stub.Ingest(feed_pb2.IngestRequest(events=[
        event(item_upsert=feed_pb2.ItemUpsert(item_id=items.item_id[i], seller_id=seller, stock=int(items.stock[i]))) for i in synced
    ]), timeout=10)
    top = [item.item_id for item in stub.GetFeed(feed_pb2.GetFeedRequest(user_id=user, limit=10), timeout=10).items[:3]]
    assert not set(top) & {items.item_id[i] for i in synced}


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"item_update": feed_pb2.ItemUpdate(item_id="i000001", currency="euro")}, "currency"),
        ({"item_update": feed_pb2.ItemUpdate(item_id="i000001", ship_days=400)}, "ship_days"),
        ({"item_update": feed_pb2.ItemUpdate(item_id="i000001", price=-1.0)}, "price"),
        ({"item_update": feed_pb2.ItemUpdate(item_id="i000001", image_url="ftp://x/y.jpg")}, "image_url"),
        ({"item_update": feed_pb2.ItemUpdate(item_id="i000001")}, "item_update"),
        ({"item_update": feed_pb2.ItemUpdate(item_id="no-such-item", title="x")}, "item_id"),
        ({"seller_vacation": feed_pb2.SellerVacation(seller_id="u00001", until=1.0)}, "until"),
        ({"seller_vacation": feed_pb2.SellerVacation(until=0.0)}, "seller_id"),
    ],
)
def test_bad_commerce_events_are_invalid_argument_naming_the_field(stub, payload, field):
    with pytest.raises(grpc.RpcError) as error:
        stub.Ingest(feed_pb2.IngestRequest(events=[event(**payload)]), timeout=10)
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert f"events[0].{field}" in error.value.details()


def test_a_vacation_forever_is_told_to_send_0(stub):
    """A 'forever' end, 9999-12-31, was answered "milliseconds? times are Unix seconds"."""
    forever = feed_pb2.SellerVacation(seller_id="u00001", until=253_402_214_400.0)
    with pytest.raises(grpc.RpcError) as error:
        stub.Ingest(feed_pb2.IngestRequest(events=[event(seller_vacation=forever)]), timeout=10)
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith("events[0].until: is in the future: 253402214400.0 is after the latest accepted time ")
    assert error.value.details().endswith(" (a vacation ends at most a year ahead; 0 means until further notice)")


def _pages(stub, user: str, pages: int = 2, **filters) -> list[feed_pb2.FeedItem]:
    return [item for page in all_pages(stub, user, 20, pages, **filters) for item in page.items]


def test_shopper_filters_hold_on_every_page(world, stub):
    items = world.dataset.items
    category = Counter(items.category).most_common(1)[0][0]
    users = world.dataset.user_ids()[:40]
    requests = {
        "include": ({"include_categories": [category]}, lambda item: item.category == category),
        "exclude": ({"exclude_categories": [category]}, lambda item: item.category != category),
        "price": ({"min_price": 10.0, "max_price": 30.0}, lambda item: item.HasField("price") and 10.0 <= item.price <= 30.0),
        "fast": ({"max_ship_days": 1}, lambda item: item.HasField("ship_days") and item.ship_days <= 1),
    }
    for name, (filters, holds) in requests.items():
        served = [item for user in users for item in _pages(stub, user, **filters)]
        assert served, f"{name}: nothing served, the check is empty"
        assert all(holds(item) for item in served), name
    # Unfiltered feeds do serve items the filters remove, so each filter did remove something.
    unfiltered = [item for user in users for item in _pages(stub, user)]
    assert not all(item.category == category for item in unfiltered)
    assert not all(item.ship_days <= 1 for item in unfiltered)


@pytest.mark.parametrize(
    ("filters", "field"),
    [
        ({"min_price": -1.0}, "min_price"),
        ({"min_price": float("inf")}, "min_price"),
        ({"min_price": 20.0, "max_price": 10.0}, "max_price"),
        ({"max_ship_days": 400}, "max_ship_days"),
        ({"max_ship_days": -1}, "max_ship_days"),
        ({"include_categories": [""]}, "include_categories"),
        ({"exclude_categories": [f"c{i}" for i in range(101)]}, "exclude_categories"),
    ],
)
def test_bad_shopper_filters_are_invalid_argument_naming_the_field(stub, filters, field):
    with pytest.raises(grpc.RpcError) as error:
        stub.GetFeed(feed_pb2.GetFeedRequest(user_id="u00001", limit=10, **filters), timeout=10)
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith(f"{field}:")


def test_the_category_cap_holds_on_every_page(world, server):
    # A second server with a category cap, on the fixture's store (Redis: the same state).
    with running_server(world, store_url=server[0].config.store_url, feed=FeedSettings(max_per_category=3)) as (_, stub):
        for user in world.dataset.user_ids()[:60]:
            for page in all_pages(stub, user, 12, 3):
                per_category = Counter(item.category for item in page.items if item.category)
                assert max(per_category.values(), default=0) <= 3, (user, per_category)
                assert max(Counter(item.seller_id for item in page.items).values(), default=0) <= 2


def _servable_items(world, user: str) -> list[str]:
    """Items the user's feed may show: in stock, eligible, of a seller at work, not liked, not their own."""
    data = world.dataset
    away = set(data.sellers.seller_id)
    liked = {item for u, item in zip(data.likes.src, data.likes.dst) if u == user}
    items = data.items
    return [
        item
        for item, seller, stock, ok in zip(items.item_id, items.seller_id, items.stock.tolist(), items.feed_eligible.tolist())
        if stock > 0 and ok and seller not in away and seller != user and item not in liked
    ]


def _friends(world) -> dict[str, set[str]]:
    friends: dict[str, set[str]] = {}
    for a, b in zip(world.dataset.friends.src, world.dataset.friends.dst):
        friends.setdefault(a, set()).add(b)
        friends.setdefault(b, set()).add(a)
    return friends


def _reason(item: feed_pb2.FeedItem, kind: int) -> feed_pb2.Reason | None:
    return next((r for r in item.reasons if r.kind == kind), None)


def test_a_share_reaches_the_friends_next_feed_with_its_reason(world, stub):
    friends = _friends(world)
    sharer = next(u for u in sorted(friends) if len(friends[u]) >= 2)
    named, *others = sorted(friends[sharer])
    first_page = {i.item_id for i in _feed(stub, named, pages=1)}
    item = next(i for i in _servable_items(world, named) if i not in first_page and i in _servable_items(world, others[0]))
    stub.Ingest(feed_pb2.IngestRequest(events=[
        event(ts=time.time(), share=feed_pb2.Share(user_id=sharer, item_id=item, friend_id=named)),
    ]), timeout=10)  # fmt: skip
    top = {i.item_id: i for i in _feed(stub, named, pages=1)}
    assert item in top, "a friend's fresh share is on top of the very next page"
    reason = _reason(top[item], feed_pb2.REASON_KIND_FRIEND_SHARED)
    assert list(reason.actor_ids) == [sharer] and reason.count == 1
    # Shared with one friend: the sharer's other friends do not hear of it.
    assert all(
        _reason(i, feed_pb2.REASON_KIND_FRIEND_SHARED) is None for other in others for i in _feed(stub, other, pages=1) if i.item_id == item
    )

    # Shared with no one in particular: every friend of the sharer gets it.
    stub.Ingest(feed_pb2.IngestRequest(events=[event(ts=time.time(), share=feed_pb2.Share(user_id=sharer, item_id=item))]), timeout=10)
    got = {i.item_id: i for i in _feed(stub, others[0], pages=1)}
    assert item in got and list(_reason(got[item], feed_pb2.REASON_KIND_FRIEND_SHARED).actor_ids) == [sharer]


def test_only_a_current_friends_share_reaches_the_feed_as_one(world, stub):
    friends = _friends(world)
    user = next(u for u in sorted(friends) if friends[u])
    stranger = next(u for u in world.dataset.user_ids() if u != user and u not in friends[user])
    first_page = {i.item_id for i in _feed(stub, user, pages=1)}
    item = next(i for i in _servable_items(world, user) if i not in first_page)

    def shared_by() -> list[str] | None:
        for feed_item in _feed(stub, user, pages=1):
            reason = _reason(feed_item, feed_pb2.REASON_KIND_FRIEND_SHARED) if feed_item.item_id == item else None
            if reason is not None:
                return list(reason.actor_ids)
        return None

    def ingest(**payload) -> None:
        stub.Ingest(feed_pb2.IngestRequest(events=[event(ts=time.time(), **payload)]), timeout=10)

    ingest(share=feed_pb2.Share(user_id=stranger, item_id=item, friend_id=user))
    assert shared_by() is None, "someone who is not a friend cannot put an item on top as a friend's share"
    ingest(friend=feed_pb2.UserFriend(user_id=user, friend_id=stranger))
    assert shared_by() == [stranger], "once friends, the share is a friend's"
    ingest(unfriend=feed_pb2.UserFriend(user_id=stranger, friend_id=user))
    assert shared_by() is None, "an unfriend takes the ex-friend's shares out of the feed"


def test_fatigue_sinks_an_item_seen_over_and_over_then_hides_it(world, server):
    # A sink small enough that the item stays on the first page, so its score can be read;
    # a second server on the fixture's store (Redis: the same state; memory: the same data).
    settings = FeedSettings(fatigue_sink=0.05)
    with running_server(world, store_url=server[0].config.store_url, feed=settings) as (_, stub):
        user = world.dataset.user_ids()[5]
        item = max(_feed(stub, user, pages=1), key=lambda i: i.score)
        before = item.score

        def view(times: int) -> None:
            stub.Ingest(feed_pb2.IngestRequest(events=[
                event(ts=time.time(), view=feed_pb2.UserItem(user_id=user, item_id=item.item_id)) for _ in range(times)
            ]), timeout=10)  # fmt: skip

        def score() -> float | None:
            return next((i.score for i in _feed(stub, user, pages=3) if i.item_id == item.item_id), None)

        view(settings.fatigue_free_views)
        assert score() == pytest.approx(before, abs=5e-3)  # the free views cost nothing
        view(2)
        assert score() == pytest.approx(before - 2 * settings.fatigue_sink, abs=5e-3)
        view(settings.fatigue_hide_views - settings.fatigue_free_views - 3)
        assert score() == pytest.approx(before - 3 * settings.fatigue_sink, abs=5e-3)
        view(1)
        assert score() is None  # seen too often: it rests out of the feed
        # Engaging with it ends the fatigue.
        stub.Ingest(feed_pb2.IngestRequest(events=[event(click=feed_pb2.UserItem(user_id=user, item_id=item.item_id))]), timeout=10)
        assert score() == pytest.approx(before, abs=5e-3)
