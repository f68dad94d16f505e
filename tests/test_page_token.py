from __future__ import annotations

import base64

import pytest

from serving.page_token import EMPTY, MAX_TOKEN_CHARS, PageTokenCodec, PageTokenError

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
        CODEC.decode("alice", base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("="))


def test_a_token_has_one_spelling():
    token = CODEC.encode("alice", EMPTY.plus(["i1", "i2"]))
    assert len(CODEC.decode("alice", token)) == 2
    for other in (token + "=", token + "==", token[:8] + "\n" + token[8:], token.replace("-", "+").replace("_", "/")):
        if other != token:
            with pytest.raises(PageTokenError, match="not a token this server issued"):
                CODEC.decode("alice", other)


@pytest.mark.parametrize("token", ["not a token!", "abc", "=", base64.urlsafe_b64encode(b"x" * 40).decode()])
def test_malformed_tokens_are_rejected(token):
    with pytest.raises(PageTokenError):
        CODEC.decode("alice", token)


def test_a_token_from_another_secret_is_rejected():
    token = PageTokenCodec(b"o" * 32).encode("alice", EMPTY.plus(["i1"]))
    with pytest.raises(PageTokenError):
        CODEC.decode("alice", token)


def test_a_token_expires_after_the_ttl():
    codec = PageTokenCodec(b"k" * 32, ttl_seconds=600)
    token = codec.encode("alice", EMPTY.plus(["i1"]), now=1_000_000.0)
    assert "i1" in codec.decode("alice", token, now=1_000_599.0)
    with pytest.raises(PageTokenError, match="expired"):
        codec.decode("alice", token, now=1_000_601.0)
    # A token from the future (beyond clock skew between servers) is not accepted either,
    # and the message says which clock to look at rather than calling it expired.
    with pytest.raises(PageTokenError, match="issued 3600 s in the future.*clock"):
        codec.decode("alice", token, now=1_000_000.0 - 3_600)
    assert "i1" in codec.decode("alice", token, now=1_000_000.0 - 300)
    # Tokens carry whole seconds: one issued late in a second lasts its full TTL, and a TTL
    # under a second is not over at once (it was, 0.05 s after issue with 0.5 s).
    late = codec.encode("alice", EMPTY.plus(["i1"]), now=1_000_000.9)
    assert "i1" in codec.decode("alice", late, now=1_000_600.5)
    short = PageTokenCodec(b"k" * 32, ttl_seconds=0.5)
    assert "i1" in short.decode("alice", short.encode("alice", EMPTY.plus(["i1"]), now=2_000_000.3), now=2_000_000.4)
    # TTL 0: never expires.
    forever = PageTokenCodec(b"k" * 32, ttl_seconds=0)
    assert len(forever.decode("alice", forever.encode("alice", EMPTY.plus(["i1"]), now=0.0), now=4e9)) == 1


def test_the_default_ttl_is_an_hour():
    token = CODEC.encode("alice", EMPTY.plus(["i1"]), now=1_000_000.0)
    CODEC.decode("alice", token, now=1_000_000.0 + 3_599)
    with pytest.raises(PageTokenError, match="expired"):
        CODEC.decode("alice", token, now=1_000_000.0 + 3_601)


def test_a_token_signed_with_a_previous_secret_works_during_the_rotation():
    old, new = b"o" * 32, b"n" * 32
    token = PageTokenCodec(old).encode("alice", EMPTY.plus(["i1", "i2"]))
    rotating = PageTokenCodec(new, previous=[old])
    assert rotating.decode("alice", token) == EMPTY.plus(["i1", "i2"])
    # New tokens are signed with the new secret: servers still on the old one alone reject them ...
    fresh = rotating.encode("alice", EMPTY.plus(["i3"]))
    with pytest.raises(PageTokenError, match="signed by another server or key"):
        PageTokenCodec(old).decode("alice", fresh)
    # ... and once the old secret is dropped, its tokens are rejected for what they are.
    with pytest.raises(PageTokenError, match="signed by another server or key"):
        PageTokenCodec(new).decode("alice", token)
    # The rotation does not weaken the user binding.
    with pytest.raises(PageTokenError, match="another user"):
        rotating.decode("bob", token)


def test_a_rolling_rotation_in_three_deployments_never_rejects_a_token_of_the_fleet():
    """The README's procedure: during each rolling restart, servers of the previous step and
    of the next serve side by side, and each accepts the tokens the other signs. Moving the
    new secret in as the signing one at once (step 1 skipped) breaks it: old servers reject
    the new servers' tokens until the restart is over."""
    old, new = b"o" * 32, b"n" * 32
    steps = [
        PageTokenCodec(old),  # before
        PageTokenCodec(old, previous=[new]),  # 1: every server accepts the new secret
        PageTokenCodec(new, previous=[old]),  # 2: the new one signs; the old one's tokens still work
        PageTokenCodec(new),  # 3: once the old one's tokens have expired (--token-ttl-seconds)
    ]
    for before, after in zip(steps, steps[1:], strict=False):
        for issuer, reader in ((before, after), (after, before)):
            assert reader.decode("alice", issuer.encode("alice", EMPTY.plus(["i1"]))) == EMPTY.plus(["i1"])
    with pytest.raises(PageTokenError, match="signed by another server or key"):  # step 1 skipped
        steps[0].decode("alice", steps[2].encode("alice", EMPTY))


def test_a_token_from_another_key_says_so_rather_than_tampered():
    token = PageTokenCodec(b"o" * 32).encode("alice", EMPTY.plus(["i1"]))
    with pytest.raises(PageTokenError) as error:
        CODEC.decode("alice", token)
    assert "signed by another server or key" in str(error.value) and "tampered" not in str(error.value)


def test_tokens_longer_than_any_issued_are_rejected_before_decoding():
    codec = PageTokenCodec(b"k" * 32, max_served=10)
    deepest = codec.encode("alice", EMPTY.plus([f"i{n}" for n in range(110)]))
    assert len(deepest) <= MAX_TOKEN_CHARS
    with pytest.raises(PageTokenError, match="longer than"):
        codec.decode("alice", "A" * (MAX_TOKEN_CHARS + 1))


@pytest.mark.parametrize("options", [dict(previous=[b"short"]), dict(ttl_seconds=-1), dict(max_served=0), dict(max_served=10**6)])
def test_bad_codec_settings_are_refused(options):
    with pytest.raises(ValueError):
        PageTokenCodec(b"k" * 32, **options)


@pytest.mark.parametrize("served", [0, 1, 3])  # 25 + 4n bytes: the last character carries 4, 2 or 4 unused bits
def test_a_token_whose_last_character_is_altered_in_its_unused_bits_is_refused(served):
    # base64 decoding ignores the bits of the last character past the data: "w" and "x"
    # decoded alike, so a token altered there was accepted (up to 16 spellings of one token).
    token = CODEC.encode("alice", EMPTY.plus([f"i{n}" for n in range(served)]))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for other in (token[:-1] + character for character in alphabet if character != token[-1]):
        with pytest.raises(PageTokenError, match="not a token this server issued|tampered"):
            CODEC.decode("alice", other)
