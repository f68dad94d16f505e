"""Opaque, signed page tokens.

A token carries the items already served (4-byte hashes), bound to one user by an
HMAC. The next page is the top of the same ranked feed without those items, so pages
never repeat and still see state that changed between pages.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ranking.vocab import stable_hash

_VERSION = 1
_MAC_BYTES = 16
# A feed this deep ends: the token would grow past ~27 KB.
MAX_SERVED = 5_000


class PageTokenError(ValueError):
    """The token is malformed, tampered with, or belongs to another user."""


item_hash = stable_hash


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
        return ServedItems(self.hashes | {item_hash(i) for i in item_ids})


EMPTY = ServedItems(frozenset())


class PageTokenCodec:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("page token secret must be at least 16 bytes")
        self._secret = secret

    def _mac(self, user_id: str, body: bytes) -> bytes:
        message = user_id.encode() + b"\0" + body
        return hmac.new(self._secret, message, hashlib.sha256).digest()[:_MAC_BYTES]

    def encode(self, user_id: str, served: ServedItems) -> str:
        hashes = np.array(sorted(served.hashes), dtype="<u4").tobytes()
        body = struct.pack("<B", _VERSION) + hashes
        return base64.urlsafe_b64encode(self._mac(user_id, body) + body).decode().rstrip("=")

    def decode(self, user_id: str, token: str) -> ServedItems:
        """The served items of a token from ``encode``; raises PageTokenError otherwise."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (ValueError, TypeError) as error:
            raise PageTokenError("page_token is not a token this server issued") from error
        mac, body = raw[:_MAC_BYTES], raw[_MAC_BYTES:]
        if len(mac) < _MAC_BYTES or not body or (len(body) - 1) % 4:
            raise PageTokenError("page_token is not a token this server issued")
        if not hmac.compare_digest(mac, self._mac(user_id, body)):
            raise PageTokenError("page_token was tampered with or belongs to another user")
        if body[0] != _VERSION:
            raise PageTokenError("page_token has an unsupported version")
        return ServedItems(frozenset(np.frombuffer(body[1:], dtype="<u4").tolist()))
