"""A redis-py command packer that hands a command's arguments to hiredis in one call.

redis-py's own hiredis packer first encodes every argument in Python (a type check and
``str.encode`` each): 223 µs of a feed's hydration call with 430 item ids, where
``hiredis.pack_command`` alone takes 37 µs for the same bytes (benchmarks/README.md,
"2026-12-04 (later)"). hiredis accepts str (as UTF-8), bytes, int, float (as ``repr``) and
memoryview, and writes them exactly as redis-py's encoder does; anything else (bool,
bytearray, another type) and the commands redis-py splits at a space ("SCRIPT LOAD") go
to redis-py's pure-Python packer, which packs them to the same bytes or refuses them as
redis-py always did.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

try:  # redis-py's own packers, and hiredis's pack_command, are recent: without them redis-py packs as it always did
    from hiredis import pack_command
    from redis._parsers.encoders import Encoder
    from redis.connection import PythonRespSerializer
except ImportError:  # pragma: no cover (the pinned versions have them)
    pack_command = None

_ENCODING = "utf-8"  # redis-py's default, and the only one the fast path writes


class HiredisCommandPacker:
    """``command_packer`` for a redis-py connection whose encoding is UTF-8."""

    def __init__(self) -> None:
        self._redis_py = PythonRespSerializer(6000, Encoder(_ENCODING, "strict", decode_responses=False).encode)

    def pack(self, *args: Any) -> list[bytes]:
        command = args[0]
        if isinstance(command, str) and " " not in command:
            try:
                return [pack_command(args)]
            except TypeError:
                pass
        return self._redis_py.pack(*args)


def with_fast_packer(url: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """redis-py options ``kwargs`` for ``url`` with the fast packer, unless they or the
    URL's query (which redis-py lets win) choose another encoding or packer."""
    if pack_command is None:
        return kwargs
    options = {**kwargs, **dict(parse_qsl(urlsplit(url).query))}
    encoding = str(options.get("encoding", _ENCODING)).lower().replace("_", "-")
    if encoding not in ("utf-8", "utf8") or options.get("encoding_errors", "strict") != "strict":
        return kwargs
    return {"command_packer": HiredisCommandPacker(), **kwargs}
