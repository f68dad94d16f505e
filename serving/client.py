"""``python -m serving feed``: ask a running server for a feed and print it readably."""

from __future__ import annotations

import argparse
import sys

import grpc

from protos.feed.v1 import feed_pb2, feed_pb2_grpc
from training.flag_types import bounded

_REASON_TEXT = {
    feed_pb2.REASON_KIND_FOLLOWED_SELLER: lambda r: f"from {r.actor_ids[0] if r.actor_ids else 'a seller'}, a seller you follow",
    feed_pb2.REASON_KIND_FRIENDS_LIKED: lambda r: f"{r.count} friend{'s' if r.count != 1 else ''} liked it ({', '.join(r.actor_ids[:3])}{', …' if len(r.actor_ids) > 3 else ''})",
    feed_pb2.REASON_KIND_SIMILAR_TO_LIKES: lambda r: "similar to items you liked",
    feed_pb2.REASON_KIND_TRENDING: lambda r: "trending",
    feed_pb2.REASON_KIND_FRIEND_SHARED: lambda r: f"shared with you by {', '.join(r.actor_ids[:3])}{', …' if len(r.actor_ids) > 3 else ''}",
}


def describe_reason(reason: feed_pb2.Reason) -> str:
    return _REASON_TEXT.get(reason.kind, lambda r: "recommended")(reason)


def describe_card(item: feed_pb2.FeedItem) -> str:
    """Title, price and dispatch time, as a card would show them."""
    parts = [repr(item.title) if item.title else "(untitled)"]
    if item.HasField("price"):
        parts.append(f"{item.price:.2f} {item.currency}".strip())
    if item.HasField("ship_days"):
        parts.append("ships today" if item.ship_days == 0 else f"ships in {item.ship_days} d")
    return "  ".join(parts)


def format_feed(user_id: str, responses: list[feed_pb2.GetFeedResponse]) -> str:
    lines = [f"Feed for {user_id} (model {responses[0].model_version if responses else '?'})"]
    rank = 0
    for page_number, response in enumerate(responses, 1):
        lines.append(f"-- page {page_number} --")
        for item in response.items:
            rank += 1
            why = "; ".join((["news"] if item.news else []) + [describe_reason(r) for r in item.reasons])
            lines.append(f"{rank:3d}. {item.item_id:<16} {describe_card(item):<46} seller {item.seller_id:<10} score {item.score:7.3f}  {why}")
    if not rank:
        lines.append("(empty feed)")
    return "\n".join(lines)


def fetch_pages(stub: feed_pb2_grpc.FeedServiceStub, user_id: str, limit: int, pages: int, timeout: float) -> list[feed_pb2.GetFeedResponse]:
    responses = []
    token = ""
    for _ in range(pages):
        response = stub.GetFeed(feed_pb2.GetFeedRequest(user_id=user_id, limit=limit, page_token=token), timeout=timeout)
        responses.append(response)
        token = response.next_page_token
        if not token:
            break
    return responses


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m serving feed", description="Print a user's feed from a running server.")
    parser.add_argument("--target", default="127.0.0.1:50051", help="server address (default: %(default)s)")
    parser.add_argument("--user", required=True, help="user id")
    parser.add_argument("--limit", type=bounded(int, 1, maximum=100), default=10, help="items per page, 1..100 (default: %(default)s)")
    parser.add_argument("--pages", type=bounded(int, 1), default=1, help="pages to fetch (default: %(default)s)")
    parser.add_argument("--timeout", type=bounded(float, above=0), default=5.0, help="per-call deadline in seconds (default: %(default)s)")
    args = parser.parse_args(argv)
    with grpc.insecure_channel(args.target) as channel:
        stub = feed_pb2_grpc.FeedServiceStub(channel)
        try:
            responses = fetch_pages(stub, args.user, args.limit, args.pages, args.timeout)
        except grpc.RpcError as error:
            sys.exit(f"GetFeed failed: {error.code().name}: {error.details()}")
    print(format_feed(args.user, responses))
