"""``python -m serving feed``: ask a running server for a feed and print it readably."""

from __future__ import annotations

import argparse
import os
import sys

import grpc

from protos.feed.v1 import feed_pb2, feed_pb2_grpc
from training.flag_types import bounded, deadline_seconds

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


def _built_by(response: feed_pb2.GetFeedResponse) -> str:
    return f"model {response.model_version}" + (f", A/B arm {response.arm}" if response.arm else "")


# Said under a printed feed with news in it, whose scores are then not in order down the page.
NEWS_LEGEND = ("news: a followed seller's listing or a friend's like or share within the server's --fresh-window-seconds, "
               "shown first (up to --max-fresh a page) whatever its score")


def format_feed(user_id: str, responses: list[feed_pb2.GetFeedResponse]) -> str:
    lines = [f"Feed for {user_id} ({_built_by(responses[0]) if responses else 'model ?'})"]
    rank = 0
    for page_number, response in enumerate(responses, 1):
        lines.append(f"-- page {page_number} --")
        for item in response.items:
            rank += 1
            why = "; ".join((["news"] if item.news else []) + [describe_reason(r) for r in item.reasons])
            lines.append(f"{rank:3d}. {item.item_id:<16} {describe_card(item):<46} seller {item.seller_id:<10} score {item.score:7.3f}  {why}")
    if not rank:
        lines.append("(empty feed)")
    if any(item.news for response in responses for item in response.items):
        lines.append(NEWS_LEGEND)
    return "\n".join(lines)


def fetch_pages(stub: feed_pb2_grpc.FeedServiceStub, user_id: str, limit: int, pages: int, timeout: float,
                metadata: list[tuple[str, str]] | None = None) -> list[feed_pb2.GetFeedResponse]:
    responses = []
    token = ""
    for _ in range(pages):
        request = feed_pb2.GetFeedRequest(user_id=user_id, limit=limit, page_token=token)
        response = stub.GetFeed(request, timeout=timeout, metadata=metadata)
        responses.append(response)
        token = response.next_page_token
        if not token:
            break
    return responses


TOKEN_VARIABLE = "FEEDRANK_CLIENT_TOKEN"



def _token_hint(code: grpc.StatusCode) -> str:
    """The server's refusal speaks of headers, for any client; this command takes a flag."""
    return f" (give this command the token with --token or {TOKEN_VARIABLE})" if code == grpc.StatusCode.UNAUTHENTICATED else ""


def channel_credentials(tls_ca: str | None = None, tls: bool = False, client_cert: str | None = None,
                        client_key: str | None = None) -> grpc.ChannelCredentials | None:
    """TLS credentials when ``tls``, a CA file or a client certificate is given (the system's
    roots without a CA file), else None for plaintext; ValueError naming the flag when a file
    cannot be read or the CA file holds no certificate. For blocking and asyncio channels alike."""
    if not (tls or tls_ca or client_cert):
        return None
    if bool(client_cert) != bool(client_key):
        raise ValueError("--tls-client-cert and --tls-client-key go together")

    def read(flag: str, path: str | None) -> bytes | None:
        if path is None:
            return None
        try:
            with open(path, "rb") as file:
                return file.read()
        except OSError as error:
            raise ValueError(f"{flag} {path}: {error.strerror}") from None

    roots = read("--tls-ca", tls_ca)
    if roots is not None and b"-----BEGIN CERTIFICATE-----" not in roots:
        raise ValueError(f"--tls-ca {tls_ca}: no PEM certificate in it")
    return grpc.ssl_channel_credentials(
        root_certificates=roots, private_key=read("--tls-client-key", client_key),
        certificate_chain=read("--tls-client-cert", client_cert),
    )


def open_channel(target: str, tls_ca: str | None = None, tls: bool = False,
                 client_cert: str | None = None, client_key: str | None = None) -> grpc.Channel:
    """A blocking channel to ``target``, with ``channel_credentials`` (plaintext without)."""
    credentials = channel_credentials(tls_ca, tls, client_cert, client_key)
    return grpc.insecure_channel(target) if credentials is None else grpc.secure_channel(target, credentials)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m serving feed", description="Print a user's feed from a running server.",
        epilog=f"A server with --tokens-file wants a token with the 'read' scope: --token, or the variable "
               f"{TOKEN_VARIABLE} (which keeps it out of the process list). A server with --tls-cert wants "
               f"--tls-ca (or --tls, to trust the system's roots); with --tls-client-ca, a client certificate too.")
    parser.add_argument("--target", default="127.0.0.1:50051", help="server address (default: %(default)s)")
    parser.add_argument("--user", required=True, help="user id")
    parser.add_argument("--limit", type=bounded(int, 1, maximum=100), default=10, help="items per page, 1..100 (default: %(default)s)")
    parser.add_argument("--pages", type=bounded(int, 1), default=1, help="pages to fetch (default: %(default)s)")
    parser.add_argument("--timeout", type=deadline_seconds, default=5.0,
                        help="per-call deadline in seconds (default: %(default)s)")
    parser.add_argument("--token", default=os.environ.get(TOKEN_VARIABLE) or None,
                        help=f"bearer token sent as 'authorization: Bearer TOKEN' (env {TOKEN_VARIABLE})")
    parser.add_argument("--tls", action="store_true", help="speak TLS, trusting the system's root certificates")
    parser.add_argument("--tls-ca", metavar="FILE", help="speak TLS, trusting the CA certificates in this PEM file")
    parser.add_argument("--tls-client-cert", metavar="FILE", help="client certificate (PEM) for mutual TLS")
    parser.add_argument("--tls-client-key", metavar="FILE", help="its unencrypted private key (PEM)")
    args = parser.parse_args(argv)
    try:
        channel = open_channel(args.target, args.tls_ca, args.tls, args.tls_client_cert, args.tls_client_key)
    except ValueError as error:
        parser.error(str(error))
    metadata = [("authorization", f"Bearer {args.token}")] if args.token else None
    with channel:
        stub = feed_pb2_grpc.FeedServiceStub(channel)
        try:
            responses = fetch_pages(stub, args.user, args.limit, args.pages, args.timeout, metadata)
        except grpc.RpcError as error:
            sys.exit(f"GetFeed failed: {error.code().name}: {error.details()}" + _token_hint(error.code()))
    print(format_feed(args.user, responses))
