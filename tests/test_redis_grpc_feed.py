"""The end-to-end gRPC feed tests of test_grpc_feed.py, re-run with the store in Redis:
standalone and a 3-master cluster (out-of-stock guarantee, freshness, pagination,
not-interested, retries, invalid batches...), and those of test_grpc_commerce.py
(vacations, the curated catalogue, cards, filters, the category cap, shares, fatigue).
And with feeds built by feed processes (``--feed-processes``), on Redis and on the memory
store, where each child holds a copy of the store that must follow every Ingest."""

from __future__ import annotations

import pytest

from serving.load import load_into_redis
from stores.redis import connect
from tests.feed_world import build_world, running_server
from tests.test_grpc_commerce import (  # noqa: F401 (re-collected here with the Redis server fixture)
    test_a_catalogue_sync_without_created_at_lists_no_old_item_anew,
    test_a_share_reaches_the_friends_next_feed_with_its_reason,
    test_fatigue_sinks_an_item_seen_over_and_over_then_hides_it,
    test_the_category_cap_holds_on_every_page,
    test_a_new_item_is_served_with_its_card,
    test_a_timed_vacation_ends_by_itself,
    test_feed_items_carry_their_card_and_partial_updates_keep_the_rest,
    test_no_ineligible_item_is_ever_served,
    test_no_item_of_a_seller_on_vacation_is_served_on_any_page_until_it_ends,
    test_shopper_filters_hold_on_every_page,
)
from tests.test_grpc_feed import (  # noqa: F401 (re-collected here with the Redis server fixture)
    stub,
    test_a_friends_new_like_and_a_followed_sellers_new_item_show_up_next,
    test_a_retried_batch_is_applied_once,
    test_an_invalid_batch_names_index_and_field_and_applies_nothing,
    test_excluded_and_not_interested_items_and_sellers_never_come_back,
    test_no_out_of_stock_item_is_ever_served_before_and_after_stock_updates,
    test_pages_never_repeat_and_the_seller_cap_holds,
    test_unknown_user_gets_a_cold_start_feed,
)

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A smaller world than test_grpc_feed's, so the two re-runs stay quick."""
    return build_world(tmp_path_factory.mktemp("world"), users=150, sellers=20, items=600)


@pytest.fixture(params=["redis", "redis-cluster", "redis, feed processes", "memory, feed processes"])
def server(request: pytest.FixtureRequest, world):
    """A server whose store is Redis, loaded with the world's dataset by the load command's code,
    or the memory store; in the last two kinds its GetFeeds are built by two feed processes."""
    if request.param.startswith("memory"):
        url = "memory"
    else:
        url = request.getfixturevalue("redis_cluster_url" if request.param == "redis-cluster" else "redis_url")
        client = connect(url, socket_timeout=30.0)
        try:
            load_into_redis(client, world.dataset)
        finally:
            client.close()
        # These tests are not about a frozen Redis: the default 0.5 s read timeout made a cluster's
        # GetFeed UNAVAILABLE on 2 cores at a load average of 15.
        url += "?socket_timeout=5"
    feed_processes = 2 if request.param.endswith("feed processes") else 0
    with running_server(world, store_url=url, feed_processes=feed_processes) as (feed_server, feed_stub):
        yield feed_server, feed_stub
