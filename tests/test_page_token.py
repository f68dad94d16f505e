from __future__ import annotations

import base64

import pytest

from serving.page_token import EMPTY, PageTokenCodec, PageTokenError

CODEC = PageTokenCodec(b"k" * 32)


def test_round_trip_keeps_the_served_items():
    served = EMPTY.plus(["i1", "i2", "i3"])
    decoded = CODEC.decode("alice", CODEC.encode("alice", served))
    assert decoded == served
    assert "i2" in decoded and "i9" not in decoded and len(decoded) == 3


def test_a_token_of_another_user_is_rejected():
    token = CODEC.encode("alice", EMPTY.plus(["i1"]))
    with pytest.raises(PageTokenError, match="another user"):
        CODEC.decode("bob", token)


def test_a_tampered_token_is_rejected():
    raw = bytearray(base64.urlsafe_b64decode(CODEC.encode("alice", EMPTY.plus(["i1", "i2"])) + "=="))
    raw[-1] ^= 1
    with pytest.raises(PageTokenError, match="tampered"):
        CODEC.decode("alice", base64.urlsafe_b64encode(bytes(raw)).decode())


@pytest.mark.parametrize("token", ["not a token!", "abc", "=", base64.urlsafe_b64encode(b"x" * 40).decode()])
def test_malformed_tokens_are_rejected(token):
    with pytest.raises(PageTokenError):
        CODEC.decode("alice", token)


def test_a_token_from_another_secret_is_rejected():
    token = PageTokenCodec(b"o" * 32).encode("alice", EMPTY.plus(["i1"]))
    with pytest.raises(PageTokenError):
        CODEC.decode("alice", token)
