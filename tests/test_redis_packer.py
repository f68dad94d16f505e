"""The fast command packer writes every command byte for byte as redis-py's own does."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.connection import Connection
from redis.exceptions import DataError

from stores.redis_packer import HiredisCommandPacker, with_fast_packer

REDIS_PY = Connection()._command_packer  # the packer redis-py gives a connection of its own
ARGUMENT = st.one_of(
    st.text(), st.binary(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.binary().map(bytearray), st.binary().map(memoryview),
)  # fmt: skip


@settings(max_examples=500)
@given(st.sampled_from(["HMGET", "EVALSHA", "SCRIPT LOAD", "CONFIG SET", "GET"]), st.lists(ARGUMENT, max_size=12))
def test_packs_as_redis_py_does(command: str, arguments: list) -> None:
    assert _packed(HiredisCommandPacker(), command, *arguments) == _packed(REDIS_PY, command, *arguments)


def _packed(packer, *args) -> bytes | str:
    """The packed command, or "refused" (redis-py's DataError: some versions refuse bytearray)."""
    try:
        return b"".join(packer.pack(*args))
    except DataError:
        return "refused"


def test_refuses_what_redis_py_refuses() -> None:
    for argument in (True, None, object()):
        with pytest.raises(DataError):
            HiredisCommandPacker().pack("SET", "key", argument)


def test_only_for_the_encoding_it_writes() -> None:
    assert "command_packer" in with_fast_packer("redis://h:1/0", {})
    assert "command_packer" not in with_fast_packer("redis://h:1/0", {"encoding": "latin-1"})
    assert "command_packer" not in with_fast_packer("redis://h:1/0?encoding=latin-1", {})
    assert "command_packer" not in with_fast_packer("redis://h:1/0", {"encoding_errors": "replace"})
