"""Opaque, signed page tokens.

A token carries the items already served (4-byte hashes), bound to one user by an
HMAC. The next page is the top of the same ranked feed without those items, so pages
never repeat and still see state that changed between pages.

Layout (version 2), URL-safe base64 without padding::

    MAC (16 bytes) | version (1) | key id (4) | issued at (uint32 Unix seconds) | hashes (4 each)

The MAC is HMAC-SHA256 over the user id and everything after the MAC, truncated. The key
id is a fingerprint of the signing secret (the first 4 bytes of its SHA-256, which gives
nothing away about it), so a token signed with a key this server does not hold is told
apart from one that was altered or belongs to another user. A token is accepted when it
is signed with the current secret or one of the ``previous`` secrets (a rotation, in
three deployments so that servers of two steps side by side accept each other's tokens:
the new secret as a previous one, then as the current one with the old one as previous,
then alone once the old one's tokens have expired; README, "Page tokens"), and is at most
``ttl_seconds`` old.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ranking.vocab import stable_hash

_VERSION = 2
_MAC_BYTES = 16
_TOKEN_CHARACTERS = re.compile(r"[A-Za-z0-9_-]*")
_HEADER = struct.Struct("<B4sI")  # version, key id, issued at
# A feed this deep ends: the token would grow past ~27 KB.
MAX_SERVED = 5_000
DEFAULT_TOKEN_TTL_SECONDS = 3_600.0
# Items a feed serves before it ends (the page-depth cap): deeper pages cost more (their
# candidate pools grow with the items already served) and tokens grow by 4 bytes per item.
DEFAULT_MAX_SERVED = 1_000
# Tokens signed a little in the future (another server's clock) are still accepted.
_CLOCK_SKEW_SECONDS = 300.0


MIN_SECRET_BYTES = 16

class PageTokenError(ValueError):
    """The token is malformed, expired, signed with an unknown key, tampered with, or
    belongs to another user."""


item_hash = stable_hash


def max_token_chars(max_served: int) -> int:
    """Length of the longest token a codec with ``max_served`` issues (one page past it)."""
    raw = _MAC_BYTES + _HEADER.size + 4 * max_served
    return -(-raw * 4 // 3)


MAX_TOKEN_CHARS = max_token_chars(MAX_SERVED + 100)
"""The longest token a codec of any ``max_served`` issues (served items stop at max_served plus
a page): a longer one is refused unread. A token of a server with a deeper cap (a rolling
restart that lowers it) is read, and past this one's cap is OUT_OF_RANGE."""


@dataclass(frozen=True)
class ServedItems:
    """Set-like view of served item ids, by hash; a hash collision only hides an item."""

    hashes: frozenset[int]

    def __contains__(self, item_id: object) -> bool:
        return isinstance(item_id, str) and item_hash(item_id) in self.hashes

    def __len__(self) -> int:
        return len(self.hashes)

    def array(self) -> np.ndarray:
        """The hashes as a sorted uint32 array (what the pipeline masks candidates with)."""
        return np.array(sorted(self.hashes), dtype=np.uint32)

    def plus(self, item_ids: Iterable[str]) -> ServedItems:
        return self.plus_hashes(item_hash(i) for i in item_ids)

    def plus_hashes(self, hashes: Iterable[int]) -> ServedItems:
        """These items too, by their ``item_hash`` (a pipeline's page has them at hand)."""
        return ServedItems(self.hashes.union(hashes))


EMPTY = ServedItems(frozenset())


def key_id(secret: bytes) -> bytes:
    """The public fingerprint of a signing secret carried in each token."""
    return hashlib.sha256(b"feedrank page token key\0" + secret).digest()[:4]


class PageTokenCodec:
    """Signs and checks page tokens.

    ``secret`` signs new tokens; tokens signed with any of ``previous`` are still
    accepted (key rotation). A token older than ``ttl_seconds`` is rejected (0: never
    expires). ``max_served`` is the page-depth cap: the feed ends after that many items
    (at most MAX_SERVED).
    """

    def __init__(
        self,
        secret: bytes,
        previous: Sequence[bytes] = (),
        ttl_seconds: float = DEFAULT_TOKEN_TTL_SECONDS,
        max_served: int = DEFAULT_MAX_SERVED,
    ) -> None:
        for key in (secret, *previous):
            if len(key) < MIN_SECRET_BYTES:
                raise ValueError(f"page token secrets must be at least {MIN_SECRET_BYTES} bytes")
        if ttl_seconds < 0:
            raise ValueError("page token TTL must be >= 0 (0: tokens never expire)")
        if not 1 <= max_served <= MAX_SERVED:
            raise ValueError(f"max_served must be between 1 and {MAX_SERVED}")
        self._secret = secret
        self._key_id = key_id(secret)
        self._keys = {key_id(key): key for key in reversed((secret, *previous))}  # the current one wins a clash
        self.ttl_seconds = ttl_seconds
        self.max_served = max_served

    @staticmethod
    def _mac(secret: bytes, user_id: str, body: bytes) -> bytes:
        message = user_id.encode() + b"\0" + body
        return hmac.new(secret, message, hashlib.sha256).digest()[:_MAC_BYTES]

    def encode(self, user_id: str, served: ServedItems, now: float | None = None) -> str:
        issued = int(time.time() if now is None else now)
        hashes = np.array(sorted(served.hashes), dtype="<u4").tobytes()
        body = _HEADER.pack(_VERSION, self._key_id, max(0, min(issued, 0xFFFFFFFF))) + hashes
        return base64.urlsafe_b64encode(self._mac(self._secret, user_id, body) + body).decode().rstrip("=")

    def decode(self, user_id: str, token: str, now: float | None = None) -> ServedItems:
        """The served items of a token from ``encode``; raises PageTokenError otherwise."""
        if len(token) > MAX_TOKEN_CHARS:
            raise PageTokenError(f"page_token is longer than any token a server issues ({MAX_TOKEN_CHARS} characters)")
        try:
            # Issued tokens are unpadded URL-safe base64: one spelling per token, anything else is refused.
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)) if _TOKEN_CHARACTERS.fullmatch(token) else b""
        except (ValueError, TypeError) as error:
            raise PageTokenError("page_token is not a token this server issued") from error
        mac, body = raw[:_MAC_BYTES], raw[_MAC_BYTES:]
        # The decoder ignores the unused bits of the last character: a token altered there
        # decodes alike, so only the one spelling that encodes back to it is accepted.
        if len(mac) < _MAC_BYTES or not body or base64.urlsafe_b64encode(raw).decode().rstrip("=") != token:
            raise PageTokenError("page_token is not a token this server issued")
        if body[0] != _VERSION:
            raise PageTokenError("page_token has an unsupported version; start again from the first page")
        if len(body) < _HEADER.size or (len(body) - _HEADER.size) % 4:
            raise PageTokenError("page_token is not a token this server issued")
        _, kid, issued = _HEADER.unpack_from(body)
        secret = self._keys.get(kid)
        if secret is None:
            raise PageTokenError(
                "page_token was signed by another server or key (servers that share tokens need the same "
                "FEEDRANK_TOKEN_SECRET); start again from the first page"
            )
        if not hmac.compare_digest(mac, self._mac(secret, user_id, body)):
            raise PageTokenError("page_token was tampered with or belongs to another user")
        # Tokens carry whole seconds: the clock is cut the same way, or a token would expire
        # up to a second early (and one with a TTL under a second almost at once).
        now = int(time.time() if now is None else now)
        if self.ttl_seconds and issued > now + _CLOCK_SKEW_SECONDS:
            raise PageTokenError(
                f"page_token was issued {issued - now} s in the future, more than the {_CLOCK_SKEW_SECONDS:g} s of clock "
                "skew allowed between servers (is this server's clock behind?); start again from the first page"
            )
        if self.ttl_seconds and issued < now - self.ttl_seconds:
            raise PageTokenError(f"page_token has expired (tokens last {self.ttl_seconds:g} s); start again from the first page")
        return ServedItems(frozenset(np.frombuffer(body[_HEADER.size :], dtype="<u4").tolist()))
