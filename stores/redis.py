"""The Redis online store: standalone Redis or a Redis Cluster, through redis-py.

Reads. Each FeedStateReader method is one pipeline, so a feed costs four round trips on
standalone Redis whatever the number of friends or followed sellers. On standalone Redis
each process also keeps what its feeds read of items, cards, listings, recent likes and
trending (``read_cache``, stores/redis_cache.py): the user's read brings that copy up to
date from a change log that every write script appends to, and a feed whose reads it
holds (the user's liked and views hashes included) costs that one round trip. On a cluster a
pipeline is split by node and the parts are written before any is read, so each method
is one parallel round trip per node it touches (at most the number of primaries); the
items of hydration and of a page's cards are read by one script call per node holding
them, in turn (``_on_item_nodes``).

Writes. ``apply`` runs Lua, so a batch is validated (duplicate ids, unknown items, the
degree caps ``max_friends`` / ``max_follows``) before anything is written. Writes use
their own connections (``write_client``) with a longer socket timeout that fits a full
batch, so a long write is neither reported as failed by the read timeout nor holds a
connection a feed waits for:
  * standalone: one script call applies the whole batch, appends every new event to the
    ``{log}:events`` stream and marks its id done, atomically. A batch larger than
    ``write_chunk`` events (a share to all of a user's friends counting once per friend,
    an unlike more for a user of many likes: ``_write_weights``) is validated whole by a
    read-only script, then applied by
    one such script per chunk, so no script blocks Redis (and concurrent feeds) for
    long; the guarantee is then all-or-retry, as on a cluster (``_apply_chunked``), and
    no chunk boundary splits one item's or seller's state changes (``chunk_bounds``);
  * cluster: keys are hash-tagged per entity so state spreads over the nodes, and one
    script may only touch one slot. The batch is validated by a read, logged to the
    stream as "pending" (one script in the ``{log}`` slot), applied by per-slot scripts
    in two dependent stages (user and item first; then like counts, trending and seller
    listings, which depend on what the first stage found) and then marked "done". Each
    per-slot part records its result under the event id, so re-running a part is a
    no-op that returns the first result. The guarantee is all-or-retry: nothing is
    written unless the whole batch is valid, the ack comes only after every part
    succeeded, and a retry of an unacknowledged batch converges to the state a single
    successful apply gives. Two batches applied concurrently may interleave per entity.
    A batch that writes to a slot without its data marker (``Keys.data_marker``: its
    primary came back empty) is refused as unavailable (``_check_slots_hold_data``), as a
    standalone Redis without its change log's epoch is.

Failures. Read sockets have short timeouts and a connection error is retried once at
most, so a dead or frozen Redis raises StoreUnavailable within about ``socket_timeout``
on a read (``write_timeout`` on a write).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple, NoReturn
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.client import NEVER_DECODE
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import (
    AskError,
    ClusterError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    RedisClusterException,
    RedisClusterUnreachableError,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
)
from redis.retry import Retry

from ranking.store import (
    _MAX_EXPONENT,
    _TRENDING_TAU,
    SEEN_BOUND,
    SHARED_BOUND,
    TRENDING_EPOCH,
    TRENDING_RESIDUE,
    VIEW_WINDOW_SECONDS,
    Activity,
    ItemColumns,
    SharedItems,
    Timelines,
    UserState,
)
from ranking.types import ItemCard
from ranking.vocab import Vocabulary
from stores.base import LONGEST_DEDUPE_TTL, ApplyResult, NotReplicated, StoreForbidden, StoreFull, StoreUnavailable, TooFewReplicas
from stores.events import (
    DEFAULT_MAX_FOLLOWS,
    DEFAULT_MAX_FRIENDS,
    ENGAGEMENTS,
    ITEM_REFERENCES,
    Event,
    EventKind,
    EventValidationError,
    check_degrees,
    check_references,
    chunk_bounds,
    degree_error,
    first_error,
    graph_edges,
    visibility_key,
)
from stores.joined_floats import joined_floats
from stores.joined_floats import warm_up as compile_number_parser
from stores.memory import DEFAULT_RECENT_LIKES
from stores.packed_frames import PACKED_NUMBERS, Frames, distinct_positions, split_frames, split_values
from stores.packed_frames import warm_up as compile_frame_splitter
from stores.redis_cache import CHANGE_LOG_CAP, DEFAULT_CACHED_KEYS, TIMELINE_ROWS, ReadCache, read_ahead
from stores.redis_keys import DEFAULT_PREFIX, Keys
from stores.redis_packer import with_fast_packer

log = logging.getLogger("feedrank.store")

DEFAULT_LISTINGS = 1_000  # newest listings (in-stock items) a feed reads per seller
# Each seller's set keeps this many times ``listings`` of its newest in-stock items: when
# some of those a feed reads sell out, the older ones kept move up into reach (a set of
# exactly ``listings`` would have trimmed them when newer ones were listed, and emptied
# as those sold). A set stays bounded: at the default, 2,000 entries, about 200 KB with
# 12-byte item ids (MEMORY USAGE, Redis 7), against 100 KB at 1,000.
LISTINGS_HEADROOM = 2
DEFAULT_DEDUPE_TTL = 30 * 86_400  # seconds an applied event id is remembered; 0 = forever
DEFAULT_STREAM_MAXLEN = 0  # approximate cap of the event stream; 0 = unbounded
DEFAULT_SOCKET_TIMEOUT = 0.5  # seconds; bounds every read while Redis is frozen
DEFAULT_CONNECT_TIMEOUT = 0.5
# Events per apply script: a larger batch is validated whole, then applied in chunks of
# this many, so no single script blocks Redis (and the reads of concurrent feeds) for
# long. A full batch (MAX_BATCH events) in one script was a command of 685-1,049 ms: past
# the read timeout, it was reported UNAVAILABLE although applied (chunked: 43-71 ms at most;
# benchmarks/README.md, "Operations").
DEFAULT_WRITE_CHUNK = 500
# An unlike reads every like of its user to refill their recent likes: about 0.8 us a like
# against 0.15 ms for a like's writes (2026-12-06), so some 180 likes read cost one event's
# work; counted at 100, with room to spare, in a chunk's weight (RedisStore._write_weights).
UNLIKE_READS_PER_EVENT = 100
DEFAULT_WAIT_TIMEOUT_MS = 1_000  # how long Ingest with min_replicas waits for replicas (Redis WAIT)
# A feed reads the user's liked and views hashes whole when one HSCAN call returns them
# (Redis returns a small hash whole; a larger one in parts of about this many entries),
# and else asks for its candidates only.
USER_HASH_SCAN = 512
# Entries per HSCAN call when a process copies every item's packed values (warm_copy):
# each call holds Redis a millisecond or two, not the tens a whole 1M-item hash would.
WARM_SCAN_COUNT = 5_000
# Past this many items a copy made at start would delay it too long (about 5.5 s per
# million items per process on 2 cores); feeds then fill the copy as they read.
WARM_MAX_ITEMS = 2_000_000
# Items per call when a process copies cards at start (warm_cards): each call's script
# reads this many items' card fields, about a millisecond of Redis's time.
WARM_CARDS_BATCH = 1_000
# Timelines per call when a process copies them at start (warm_timelines): each call of
# the feeds' activity script reads this many sorted sets, 20-30 ms of Redis's time at 20k
# users. Plain pipelined ZRANGEs cost Redis half as much and the client twice as much: no
# less CPU in all on the same cores.
WARM_TIMELINES_BATCH = 500
# Writes have their own connections and timeout: each of their round trips is one chunk
# (or the validation of a batch, read-only), far below it; a frozen Redis still fails
# an ingest well within a client's usual deadline.
DEFAULT_WRITE_TIMEOUT = 1.0
# Beyond WAIT's own timeout, how long the writer waits for its reply (a round trip).
WAIT_REPLY_MARGIN = 0.5
# How often ``ping`` (the server's health monitor, once a second) reads the eviction policy
# again, as an operator may change it with CONFIG SET on a running Redis: INFO memory once
# a minute per primary, on the monitor's thread, never on a feed's path.
EVICTION_RECHECK_SECONDS = 60.0
# Times rebuild_listings rebuilds a seller whose items an ingest changed while it did.
REBUILD_ATTEMPTS = 5


def listings_kept(listings: int) -> int:
    """The in-stock listings kept per seller for ``listings`` read (``LISTINGS_HEADROOM``)."""
    return LISTINGS_HEADROOM * listings


# Options of ours that may ride in the store URL's query string, next to redis-py's own
# (socket_timeout, socket_connect_timeout, ...).
def _flag(value: str) -> bool:
    """A URL option's yes or no."""
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be 1 or 0 (true/false, yes/no, on/off)")


_OWN_OPTIONS = {
    "recent_likes": int, "listings": int, "dedupe_ttl": int, "stream_maxlen": int, "prefix": str,
    "write_timeout": float, "write_chunk": int, "max_friends": int, "max_follows": int, "wait_timeout_ms": int,
    "read_cache": _flag, "read_cache_entries": int,
}  # fmt: skip
# Query options handed to redis-py: those it parses (URL_QUERY_ARGUMENT_PARSERS: checked
# here, so a bad value fails at start, not in a connection), and the connections' string
# options. redis-py passes any other name on to the connection class, which fails at the
# first connection (in a feed process, or as a traceback): refused here by name instead.
_REDIS_PY_OPTIONS = {
    *redis.connection.URL_QUERY_ARGUMENT_PARSERS,
    "client_name", "username", "password", "ssl_keyfile", "ssl_certfile", "ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_path",
    "ssl_password", "ssl_ciphers",
}  # fmt: skip


# Event.to_record() field order: the Lua scripts read records positionally.
RECORD_FIELDS = ("event_id", "kind", "ts", "user_id", "item_id", "seller_id", "friend_id", "created_at", "stock", "card", "vacation_until")
# The item hash fields a page's cards read (hydration reads _LUA_PACK's packed value).
_CARD_FIELDS = ("seller", "stock", "title", "image_url", "price", "currency", "category", "ship_days")
_TRANSIENT_REPLIES = ("BUSY", "LOADING", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "READONLY", "NOREPLICAS", "MISCONF")

# The change log after sequence number ``last`` (stores/redis_cache.py): {seq, epoch,
# tags}, tags false when the log cannot tell them (the reader is more than ``bound`` tags
# behind, or the log began again): the reader then starts afresh.
_LUA_CHANGES_SINCE = r"""
local function changes_since(seq_key, epoch_key, log_key, last, bound)
  local seq_text = redis.call('GET', seq_key) or '0'
  local seq = tonumber(seq_text)
  local tags = false
  if last >= 0 and seq >= last and seq - last <= bound then
    tags = {}
    if seq > last then
      tags = redis.call('LRANGE', log_key, last - seq, -1)
      if #tags ~= seq - last then tags = false end
    end
  end
  return {seq_text, redis.call('GET', epoch_key) or '', tags}
end
"""
# The change log alone, for a process whose copy must be in step before a feed reads.
_LUA_CHANGES = _LUA_CHANGES_SINCE + r"""
return changes_since(KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[1]), """ + str(CHANGE_LOG_CAP) + r""")
"""
# A writer's copy is brought up to date by its writes only while this close behind; a
# process that only writes would otherwise read every other writer's tags.
WRITER_CHANGES_BOUND = 1_000

# Every write of an item keeps its hydration fields (PACKED_FIELDS) packed in one value:
# on standalone Redis in one hash of every item (``Keys.packed_items``), so a feed reads
# its candidates with one HMGET instead of an HMGET of eight fields per candidate
# (per-element work inside the old hydrate script was its cost: benchmarks/README.md,
# "Redis: packed item values"); on a cluster, which cannot keep one hash for items of every
# slot, in the item's own hash (field PACKED_FIELD), which its feeds read with one script
# per node (RedisStore._on_item_nodes). Never both: each write would be paid twice. Layout: the numbers
# "created_at,stock,like_count,eligible,price,ship_days,trending" (eligible 1/0, a missing
# price or ship time "nan"), "|", the seller's length in bytes, ":", the seller, then the
# category; pack_item is the same in Python. On standalone Redis "trending" is the item's
# score in the trending set, which every like and unlike refreshes with the like count:
# hydration then needs no ZMSCORE, whose score formatting was a third of the old hydrate
# script's time (benchmarks/README.md, "2026-12-03 (midday)"); a cluster keeps the set in another
# slot than the item, so there it is 0 and a feed reads the set. An item written before
# this layout existed has no packed value under PACKED_FIELD or in Keys.packed_items:
# read_packed packs its fields on the fly (standalone: _LUA_UNPACKED_ITEMS).
PACKED_FIELD = "packed7"
_LUA_PACK = r"""
local PACKED_FIELDS = {'seller', 'created_at', 'stock', 'like_count', 'feed_eligible', 'price', 'ship_days', 'category'}
local PACKED_ITEMS = false  -- the hash of every item's packed value: standalone scripts set it
local TRENDING_IN_PACK = false  -- the trending set whose scores join packed values: standalone scripts set it
local function pack(v, trend)
  local eligible, seller = '1', v[1] or ''
  if v[5] == '0' then eligible = '0' end
  return (v[2] or '0') .. ',' .. (v[3] or '0') .. ',' .. (v[4] or '0') .. ',' .. eligible .. ',' .. (v[6] or 'nan') .. ','
         .. (v[7] or 'nan') .. ',' .. trend .. '|' .. #seller .. ':' .. seller .. (v[8] or '')
end
local function trend_of(item)
  if TRENDING_IN_PACK then return redis.call('ZSCORE', TRENDING_IN_PACK, item) or '0' end
  return '0'
end
local function pack_fields(k, item)  -- the item's packed value from its fields; nil: no such item
  local v = redis.call('HMGET', k, unpack(PACKED_FIELDS))
  if not (v[1] or v[3]) then return nil end
  return pack(v, trend_of(item))
end
local function read_packed(k, item) return redis.call('HGET', k, '""" + PACKED_FIELD + r"""') or pack_fields(k, item) end
-- A packed value framed for a reply: its length in bytes, ":", the value; "0:" for none.
local function frame(p)
  if p then return #p .. ':' .. p end
  return '0:'
end
-- The change log (stores/redis_cache.py): a tag per thing a script changed, logged once
-- at its end. CHANGES is its keys' prefix; standalone write scripts set it.
local CHANGES = false
local changed, noted = {}, {}
local function note_change(tag)
  if CHANGES and not noted[tag] then
    noted[tag] = true
    changed[#changed + 1] = tag
  end
end
local function log_changes()
  if not CHANGES then return end
  local epoch, log = CHANGES .. 'epoch', CHANGES .. 'log'
  if redis.call('EXISTS', epoch) == 0 then  -- also with no change: it marks a Redis that holds data
    local now = redis.call('TIME')
    redis.call('SET', epoch, now[1] .. '.' .. now[2])
  end
  if #changed == 0 then return end
  for j = 1, #changed, 1000 do redis.call('RPUSH', log, unpack(changed, j, math.min(j + 999, #changed))) end
  redis.call('INCRBY', CHANGES .. 'seq', #changed)
  redis.call('LTRIM', log, -""" + str(CHANGE_LOG_CAP) + r""", -1)
end
local function keep_packed(k, item, p)
  if PACKED_ITEMS then redis.call('HSET', PACKED_ITEMS, item, p) else redis.call('HSET', k, '""" + PACKED_FIELD + r"""', p) end
  note_change('i:' .. item)
end
local function repack(k, item)
  local p = pack_fields(k, item)
  if p then keep_packed(k, item, p) end
end
"""

# Shared by both apply scripts: constants from ARGV and one function per per-slot
# operation. Scores and times stay strings end to end: Lua would print numbers with 14
# significant digits and lose the sub-second part of a Unix time.
_LUA_PRELUDE = _LUA_PACK + r"""
local P = ARGV[1]
local RB = tonumber(ARGV[2])
local LB = tonumber(ARGV[3])  -- in-stock listings kept per seller (listings_kept)
local TTL = tonumber(ARGV[4])
local TAU = tonumber(ARGV[5])
local EPOCH = tonumber(ARGV[6])
local MAXEXP = tonumber(ARGV[7])
local MAXLEN = tonumber(ARGV[8])
local SEEN = tonumber(ARGV[9])
local SHARED = tonumber(ARGV[10])
local WINDOW = tonumber(ARGV[11])
local MAXFRIENDS = tonumber(ARGV[12])
local MAXFOLLOWS = tonumber(ARGV[13])
local LAST = tonumber(ARGV[14])  -- the writer's copy's place in the change log (-1: none yet); -2: it keeps no copy
local EXPECT_DATA = ARGV[15] == '1'  -- the writer has seen this Redis hold data: refuse to write into an empty one
local BASE = 15
local FIELDS = {'event_id','kind','ts','user_id','item_id','seller_id','friend_id','created_at','stock','card','vacation_until'}
local NF = #FIELDS

local function ukey(u, what) return P .. '{u:' .. u .. '}:' .. what end
local function ikey(i) return P .. '{i:' .. i .. '}' end
local function skey(s) return P .. '{s:' .. s .. '}:listings' end
local function vkey(s) return P .. '{s:' .. s .. '}:listing_versions' end
local TRENDING = P .. '{trending}'
local VACATIONS = P .. '{vacations}'
local VACATIONS_VERSION = P .. '{vacations}:version'
local STREAM = P .. '{log}:events'
local function status_key(eid) return P .. 'd:{log}:' .. eid end
-- A cluster applies an item's listing change in two scripts, its slot's then its seller's,
-- so two batches' changes of one item may reach its seller in either order: each change
-- the item's slot decides gets the item's next listing version, and its seller's slot
-- applies only one newer than the last it applied. Standalone lists in the same script.
local LISTING_VERSIONS = false  -- the cluster's per-slot script sets it
local function listing_version(k)
  if not LISTING_VERSIONS then return '' end
  return tostring(redis.call('HINCRBY', k, 'listing_v', 1))
end
-- In the seller's slot: whether version v (''; none: always) is the newest of the item's
-- listing changes, remembered if so.
local function listing_is_newest(seller, item, v)
  if not v or v == '' then return true end
  local k = vkey(seller)
  local last = redis.call('HGET', k, item)
  if last and tonumber(last) >= tonumber(v) then return false end
  redis.call('HSET', k, item, v)
  return true
end

local function set_with_ttl(key, value)
  if TTL > 0 then redis.call('SET', key, value, 'EX', TTL) else redis.call('SET', key, value) end
end

-- ranking.store.trending_weight, with the same double arithmetic
local function weight(ts)
  local x = (tonumber(ts) - EPOCH) / TAU
  if x > MAXEXP then x = MAXEXP end
  if x < -MAXEXP then x = -MAXEXP end
  return string.format('%.17g', math.exp(x))
end

-- After an unlike removed one of the recent likes, bring back the newest older like.
local function refill(u)
  local liked, recent = ukey(u, 'liked'), ukey(u, 'likes')
  local all = redis.call('HGETALL', liked)
  local best_item, best_ts, best_raw
  for j = 1, #all, 2 do
    local item, raw = all[j], all[j + 1]
    local ts = tonumber(raw)
    if (best_item == nil or ts > best_ts or (ts == best_ts and item < best_item))
        and not redis.call('ZSCORE', recent, item) then
      best_item, best_ts, best_raw = item, ts, raw
    end
  end
  if best_item then redis.call('ZADD', recent, '-' .. best_raw, best_item) end
end

-- Any engagement but a view ends the item's fatigue.
local function clear_seen(u, item)
  note_change('h:' .. u)
  redis.call('HDEL', ukey(u, 'views'), item)
  redis.call('ZREM', ukey(u, 'seen'), item)
end

local OPS = {}
-- user slot
OPS.like = function(u, item, ts)
  clear_seen(u, item)  -- also notes the user's liked hash changing
  if redis.call('HSETNX', ukey(u, 'liked'), item, ts) == 0 then return '0' end
  local recent = ukey(u, 'likes')
  redis.call('ZADD', recent, '-' .. ts, item)
  redis.call('ZREMRANGEBYRANK', recent, RB, -1)
  note_change('u:' .. u)
  return '1'
end
OPS.unlike = function(u, item)
  local liked = ukey(u, 'liked')
  local ts = redis.call('HGET', liked, item)
  if not ts then return '' end
  redis.call('HDEL', liked, item)
  note_change('h:' .. u)
  local recent = ukey(u, 'likes')
  if redis.call('ZREM', recent, item) == 1 then
    note_change('u:' .. u)
    if redis.call('HLEN', liked) > redis.call('ZCARD', recent) then refill(u) end
  end
  return ts
end
-- The user's own sets, which their feeds' copy of the user keeps under 'p:' (with the
-- recent likes, whose 'u:' tag drops it too).
local function user_set(u, what, command, member)
  redis.call(command, ukey(u, what), member)
  note_change('p:' .. u)
  return '1'
end
OPS.follow = function(u, s) return user_set(u, 'follows', 'SADD', s) end
OPS.unfollow = function(u, s) return user_set(u, 'follows', 'SREM', s) end
OPS.friend = function(u, f) return user_set(u, 'friends', 'SADD', f) end
OPS.unfriend = function(u, f) return user_set(u, 'friends', 'SREM', f) end
OPS.hide_item = function(u, item) return user_set(u, 'hidden_items', 'SADD', item) end
OPS.hide_seller = function(u, s) return user_set(u, 'hidden_sellers', 'SADD', s) end
-- A view more than WINDOW after the item's last one starts a new count; past SEEN items
-- the one viewed longest ago is forgotten.
OPS.view = function(u, item, ts)
  local seen, views = ukey(u, 'seen'), ukey(u, 'views')
  local last = redis.call('ZSCORE', seen, item)
  local count = tonumber(string.match(redis.call('HGET', views, item) or '0', '^[^,]*'))
  if not last or tonumber(ts) - tonumber(last) > WINDOW then count = 0 end
  if not last or tonumber(ts) > tonumber(last) then
    redis.call('ZADD', seen, ts, item)
    last = ts
  end
  redis.call('HSET', views, item, (count + 1) .. ',' .. last)
  note_change('h:' .. u)
  local over = redis.call('ZCARD', seen) - SEEN
  if over > 0 then
    local gone = redis.call('ZPOPMIN', seen, over)
    for j = 1, #gone, 2 do redis.call('HDEL', views, gone[j]) end
  end
  return '1'
end
-- A share, click, cart or purchase; a share returns the JSON list of its recipients.
OPS.engage = function(u, item, ts, kind, friend)
  clear_seen(u, item)
  local field = cjson.encode({kind, item, friend})
  local engaged = ukey(u, 'engaged')
  local old = redis.call('HGET', engaged, field)
  if not old or tonumber(old) < tonumber(ts) then redis.call('HSET', engaged, field, ts) end
  if kind ~= 'share' then return '1' end
  if friend ~= '' then return cjson.encode({friend}) end
  local friends = redis.call('SMEMBERS', ukey(u, 'friends'))
  if #friends == 0 then return '[]' end
  return cjson.encode(friends)
end
OPS.receive_share = function(r, sharer, item, ts)
  local k = ukey(r, 'shared')
  redis.call('ZADD', k, 'LT', '-' .. ts, cjson.encode({item, sharer}))
  redis.call('ZREMRANGEBYRANK', k, SHARED, -1)
  note_change('p:' .. r)
  return '1'
end
-- item slot; a card is the JSON object of the fields an event names (Event.card)
local function set_card(k, card)
  if card == '' then return end
  for name, value in pairs(cjson.decode(card)) do redis.call('HSET', k, name, value) end
end
-- the item's old seller ('' for a new item) and its listing time: created, or when that
-- is '' (not given) the existing item's, else the event's ts
local function upsert(item, seller, created, stock, card, ts)
  local k = ikey(item)
  local old = redis.call('HGET', k, 'seller')
  if created == '' then created = redis.call('HGET', k, 'created_at') or ts end
  redis.call('HSET', k, 'seller', seller, 'created_at', created, 'stock', stock)
  redis.call('HSETNX', k, 'like_count', '0')
  set_card(k, card)
  repack(k, item)
  return old or '', created
end
OPS.upsert = function(item, seller, created, stock, card, ts)
  local old, listed = upsert(item, seller, created, stock, card, ts)
  return cjson.encode({old, listed, listing_version(ikey(item))})
end
OPS.update = function(item, card)
  local k = ikey(item)
  set_card(k, card)
  repack(k, item)
  return '1'
end
-- A seller's listings are its in-stock items: '1' when the item's listing stays as it
-- was, else the JSON list (seller, listing time, listing version) for its seller's slot
-- to list it again (back in stock) or unlist it (sold out).
-- One read of the item's fields gives both its old stock and what its repack needs.
OPS.stock = function(item, stock)
  local k = ikey(item)
  local v = redis.call('HMGET', k, unpack(PACKED_FIELDS))
  local was_in_stock = tonumber(v[3] or '0') > 0
  redis.call('HSET', k, 'stock', stock)
  v[3] = stock
  keep_packed(k, item, pack(v, trend_of(item)))
  if was_in_stock == (tonumber(stock) > 0) or not v[1] or v[1] == '' then return '1' end
  return cjson.encode({v[1], v[2] or '0', listing_version(k)})
end
OPS.count = function(item, delta)
  local k = ikey(item)
  if redis.call('EXISTS', k) == 0 then return '1' end
  if redis.call('HINCRBY', k, 'like_count', delta) < 0 then redis.call('HSET', k, 'like_count', '0') end
  repack(k, item)
  return '1'
end
-- seller slot
OPS.list = function(seller, item, created, version)
  if not listing_is_newest(seller, item, version) then return '1' end
  local k = skey(seller)
  redis.call('ZADD', k, string.format('%.17g', -tonumber(created)), item)  -- a time before 1970 is negative
  redis.call('ZREMRANGEBYRANK', k, LB, -1)
  note_change('s:' .. seller)
  return '1'
end
OPS.unlist = function(seller, item, version)
  if not listing_is_newest(seller, item, version) then return '1' end
  if redis.call('ZREM', skey(seller), item) == 1 then note_change('s:' .. seller) end
  return '1'
end
-- vacations slot
OPS.vacation = function(seller, ends)
  redis.call('HSET', VACATIONS, seller, ends)
  redis.call('INCR', VACATIONS_VERSION)
  note_change('v')
  return '1'
end
OPS.vacation_end = function(seller)
  if redis.call('HDEL', VACATIONS, seller) == 1 then
    redis.call('INCR', VACATIONS_VERSION)
    note_change('v')
  end
  return '1'
end
-- trending slot
-- An unlike leaves 0 where at most TRENDING_RESIDUE of the like's weight is left: the rounding error
-- of the sum (ranking.store.untrended, the same double arithmetic).
OPS.trend = function(item, ts, sign)
  local w = weight(ts)
  local score = redis.call('ZINCRBY', TRENDING, sign .. w, item)
  if sign == '-' and tonumber(score) <= tonumber(w) * """ + repr(TRENDING_RESIDUE) + r""" then
    redis.call('ZADD', TRENDING, '0', item)
  end
  note_change('t')
  return '1'
end

local function log_event(o, status)
  local rec = {}
  for j = 1, NF do rec[#rec + 1] = FIELDS[j]; rec[#rec + 1] = ARGV[o + j] end
  if MAXLEN > 0 then
    redis.call('XADD', STREAM, 'MAXLEN', '~', MAXLEN, '*', unpack(rec))
  else
    redis.call('XADD', STREAM, '*', unpack(rec))
  end
  set_with_ttl(status_key(ARGV[o + 1]), status)
end
"""

# Standalone validation of a batch, read-only: duplicates, unknown items and the degree
# caps (MAXFRIENDS, MAXFOLLOWS; 0 = not checked), the batch's own graph edits replayed
# over the stored sets. ARGV after the constants: records, NF fields each. Leaves
# ``fresh`` (offsets of the events to apply) and ``dups``, or returns the error.
_LUA_VALIDATE = (
    "local REFERENCES = {" + "".join(f"['{kind.value}'] = true, " for kind in ITEM_REFERENCES) + "}\n"
    + r"""
if EXPECT_DATA and redis.call('EXISTS', P .. '""" + Keys("").changes + r"""epoch') == 0 then return {'no_data'} end
local n = (#ARGV - BASE) / NF
local fresh, seen, upserted, dups = {}, {}, {}, 0
local CHECK_DEGREES = MAXFRIENDS > 0 or MAXFOLLOWS > 0
local degree, member = {}, {}
local function present(key, m)
  local t = member[key]
  if not t then t = {}; member[key] = t end
  if t[m] == nil then t[m] = redis.call('SISMEMBER', key, m) == 1 end
  return t[m]
end
local function count(key)
  if degree[key] == nil then degree[key] = redis.call('SCARD', key) end
  return degree[key]
end
local function full(key, m, bound) return bound > 0 and not present(key, m) and count(key) >= bound end
local function set_edge(key, m, on)
  if present(key, m) ~= on then
    member[key][m] = on
    if on then degree[key] = count(key) + 1 else degree[key] = count(key) - 1 end
  end
end
for e = 0, n - 1 do
  local o = BASE + e * NF
  local eid, kind, item = ARGV[o + 1], ARGV[o + 2], ARGV[o + 5]
  if seen[eid] or redis.call('EXISTS', status_key(eid)) == 1 then
    dups = dups + 1
  else
    seen[eid] = true
    fresh[#fresh + 1] = o
    if kind == 'item_upsert' then
      upserted[item] = true
    elseif REFERENCES[kind] and not upserted[item]
        and redis.call('EXISTS', ikey(item)) == 0 then
      return {'unknown_item', e}
    elseif CHECK_DEGREES and (kind == 'follow' or kind == 'unfollow') then
      local u, key, seller = ARGV[o + 4], ukey(ARGV[o + 4], 'follows'), ARGV[o + 6]
      if kind == 'follow' and full(key, seller, MAXFOLLOWS) then return {'degree', e, 'user_id', 'follows', u} end
      set_edge(key, seller, kind == 'follow')
    elseif CHECK_DEGREES and (kind == 'friend' or kind == 'unfriend') then
      local u, f = ARGV[o + 4], ARGV[o + 7]
      local a, b = ukey(u, 'friends'), ukey(f, 'friends')
      if kind == 'friend' then
        if full(a, f, MAXFRIENDS) then return {'degree', e, 'user_id', 'friends', u} end
        if full(b, u, MAXFRIENDS) then return {'degree', e, 'friend_id', 'friends', f} end
      end
      set_edge(a, f, kind == 'friend')
      set_edge(b, u, kind == 'friend')
    end
  end
end
"""
)

# Standalone: validate the batch and report, without writing anything.
_LUA_VALIDATE_BATCH = _LUA_PRELUDE + _LUA_VALIDATE + "return {'ok', #fresh, dups}\n"

# Standalone: the whole batch, atomically: validated, then applied.
_LUA_APPLY_BATCH = (
    _LUA_PRELUDE
    + _LUA_VALIDATE
    + "local ENGAGE = {" + "".join(f"['{kind.value}'] = true, " for kind in (EventKind.CLICK, EventKind.ADD_TO_CART, EventKind.PURCHASE)) + "}\n"
    + r"""
PACKED_ITEMS = P .. '""" + Keys("").packed_items + r"""'
TRENDING_IN_PACK = TRENDING
CHANGES = P .. '""" + Keys("").changes + r"""'
""" + _LUA_CHANGES_SINCE + r"""
for _, o in ipairs(fresh) do
  local kind, ts, u, item, seller, friend = ARGV[o + 2], ARGV[o + 3], ARGV[o + 4], ARGV[o + 5], ARGV[o + 6], ARGV[o + 7]
  -- The trending score first: the like count's repack packs it.
  if kind == 'like' then
    if OPS.like(u, item, ts) == '1' then OPS.trend(item, ts, ''); OPS.count(item, 1) end
  elseif kind == 'unlike' then
    local liked_ts = OPS.unlike(u, item)
    if liked_ts ~= '' then OPS.trend(item, liked_ts, '-'); OPS.count(item, -1) end
  elseif kind == 'follow' then OPS.follow(u, seller)
  elseif kind == 'unfollow' then OPS.unfollow(u, seller)
  elseif kind == 'friend' then OPS.friend(u, friend); OPS.friend(friend, u)
  elseif kind == 'unfriend' then OPS.unfriend(u, friend); OPS.unfriend(friend, u)
  elseif kind == 'item_upsert' then
    local old, created = upsert(item, seller, ARGV[o + 8], ARGV[o + 9], ARGV[o + 10], ts)
    if old ~= '' and old ~= seller then OPS.unlist(old, item) end
    if tonumber(ARGV[o + 9]) > 0 then OPS.list(seller, item, created) else OPS.unlist(seller, item) end
  elseif kind == 'stock_update' then
    local listing = OPS.stock(item, ARGV[o + 9])
    if listing ~= '1' then
      local pair = cjson.decode(listing)
      if tonumber(ARGV[o + 9]) > 0 then OPS.list(pair[1], item, pair[2]) else OPS.unlist(pair[1], item) end
    end
  elseif kind == 'not_interested_item' then OPS.hide_item(u, item)
  elseif kind == 'not_interested_seller' then OPS.hide_seller(u, seller)
  elseif kind == 'item_update' then OPS.update(item, ARGV[o + 10])
  elseif kind == 'seller_vacation' then OPS.vacation(seller, ARGV[o + 11])
  elseif kind == 'seller_vacation_end' then OPS.vacation_end(seller)
  elseif kind == 'view' then OPS.view(u, item, ts)
  elseif kind == 'share' then
    for _, r in ipairs(cjson.decode(OPS.engage(u, item, ts, kind, friend))) do OPS.receive_share(r, u, item, ts) end
  elseif ENGAGE[kind] then OPS.engage(u, item, ts, kind, '')
  end
  log_event(o, 'done')
end
log_changes()
if LAST < -1 then return {'ok', #fresh, dups} end
return {'ok', #fresh, dups, changes_since(CHANGES .. 'seq', CHANGES .. 'epoch', CHANGES .. 'log', LAST, """ + str(WRITER_CHANGES_BOUND) + r""")}
"""
)

# Cluster, {log} slot: log the records not logged yet and mark them pending. KEYS[2]:
# the slot's data marker (Keys.data_marker), missing when its primary came back empty.
_LUA_LOG_PENDING = _LUA_PRELUDE + r"""
if EXPECT_DATA and redis.call('EXISTS', KEYS[2]) == 0 then return {'no_data'} end
local n = (#ARGV - BASE) / NF
local logged = 0
for e = 0, n - 1 do
  local o = BASE + e * NF
  if redis.call('EXISTS', status_key(ARGV[o + 1])) == 0 then
    log_event(o, 'pending')
    logged = logged + 1
  end
end
return logged
"""

# Cluster, one entity's slot: run its operations in order, each at most once per event.
# ARGV after the constants: the slot's dedupe prefix, then OP_WIDTH fields per operation:
# part id (event id '#' part), operation name, up to six arguments. The last of KEYS is the
# slot's data marker (Keys.data_marker), missing when its primary came back empty.
OP_WIDTH = 8
_LUA_SLOT_OPS = _LUA_PRELUDE + r"""
if EXPECT_DATA and redis.call('EXISTS', KEYS[#KEYS]) == 0 then return {'no_data'} end
LISTING_VERSIONS = true
local DP = ARGV[BASE + 1]
local W = 8
local n = (#ARGV - BASE - 1) / W
local out = {}
for e = 0, n - 1 do
  local o = BASE + 1 + e * W
  local dk = DP .. ARGV[o + 1]
  local done = redis.call('GET', dk)
  if done then
    out[#out + 1] = done
  else
    local r = OPS[ARGV[o + 2]](ARGV[o + 3], ARGV[o + 4], ARGV[o + 5], ARGV[o + 6], ARGV[o + 7], ARGV[o + 8])
    set_with_ttl(dk, r)
    out[#out + 1] = r
  end
end
return out
"""


# Standalone cards of a page in one command: ARGV the key prefix then the item ids; one
# flat reply of the _CARD_FIELDS of each item in turn (false for a missing field), then
# the change log's sequence number the reply is at (KEYS[1]; stores/redis_cache.py).
_LUA_CARDS = r"""
local P, out = ARGV[1], {}
for j = 2, #ARGV do
  local v = redis.call('HMGET', P .. '{i:' .. ARGV[j] .. '}', 'seller', 'stock', 'title', 'image_url', 'price', 'currency',
                      'category', 'ship_days')
  for f = 1, 8 do out[#out + 1] = v[f] end
end
if #KEYS > 0 then out[#out + 1] = redis.call('GET', KEYS[1]) or '0' end
return out
"""

# Cluster: the packed values of items one node holds, in one command (ARGV the key
# prefix then the item ids), framed and joined (stores/packed_frames.py). See
# RedisStore._on_item_nodes.
_LUA_PACKED_ITEMS = _LUA_PACK + r"""
local P, frames = ARGV[1], {}
for j = 2, #ARGV do frames[j - 1] = frame(read_packed(P .. '{i:' .. ARGV[j] .. '}', ARGV[j])) end
return table.concat(frames)
"""

# Standalone: the packed values of items the hash of every item's packed values lacks,
# each item's own or packed from its fields with its trending score (KEYS[1], the
# trending set): a missing item, or one written before packed values existed. ARGV the
# key prefix then the item ids; one reply per item, nil for none.
_LUA_UNPACKED_ITEMS = _LUA_PACK + r"""
TRENDING_IN_PACK = KEYS[1]
local P, out = ARGV[1], {}
for j = 2, #ARGV do out[j - 1] = read_packed(P .. '{i:' .. ARGV[j] .. '}', ARGV[j]) or false end
return out
"""

# Items' packed values rebuilt from their fields, each atomically with the writes that
# repack it (RedisStore.repack_items): ARGV the key prefix then item ids; per item, its
# seller when it is in stock (its listing's), else false. "repack" is standalone's (the
# hash of every item, trending scores packed), "repack_node" a cluster node's (each
# item's own field), run on the node holding the items.
_LUA_REPACK_BODY = r"""
local P, sellers = ARGV[1], {}
for j = 2, #ARGV do
  local item = ARGV[j]
  local k = P .. '{i:' .. item .. '}'
  local v = redis.call('HMGET', k, unpack(PACKED_FIELDS))
  sellers[j - 1] = false
  if v[1] or v[3] then
    keep_packed(k, item, pack(v, trend_of(item)))
    if v[1] and v[1] ~= '' and tonumber(v[3] or '0') > 0 then sellers[j - 1] = v[1] end
  end
end
log_changes()
return sellers
"""
_LUA_REPACK = (
    _LUA_PACK
    + "PACKED_ITEMS = ARGV[1] .. '" + Keys("").packed_items + "'\nTRENDING_IN_PACK = ARGV[1] .. '" + Keys("").trending + "'\n"
    + "CHANGES = ARGV[1] .. '" + Keys("").changes + "'\n"
    + _LUA_REPACK_BODY
)
_LUA_REPACK_NODE = _LUA_PACK + _LUA_REPACK_BODY

# Where items belong in their sellers' listings (RedisStore.rebuild_listings): ARGV the
# key prefix then item ids; per item its seller and listing time when it is in stock,
# else false, false. On a cluster, run on the node holding the items.
_LUA_LISTINGS_OF = r"""
local P, out = ARGV[1], {}
for j = 2, #ARGV do
  local v = redis.call('HMGET', P .. '{i:' .. ARGV[j] .. '}', 'seller', 'created_at', 'stock')
  if v[1] and v[1] ~= '' and tonumber(v[3] or '0') > 0 then
    out[#out + 1] = v[1]
    out[#out + 1] = v[2] or '0'
  else
    out[#out + 1] = false
    out[#out + 1] = false
  end
end
return out
"""

# One seller's listings set (KEYS[1]) brought to what RedisStore.rebuild_listings chose,
# atomically: ARGV the key prefix, the bound kept (listings_kept), the seller, the number
# of items to remove, those items, then (item, listing time) pairs to add. Removes and
# adds only: an item another write listed meanwhile stays. {removed (trimmed ones too), added}. "relist"
# is standalone's (its change log tells feeds' copies), "relist_node" a cluster's.
_LUA_RELIST_BODY = r"""
local k, LB, seller, n = KEYS[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local removed, added = 0, 0
for j = 5, 4 + n, 1000 do removed = removed + redis.call('ZREM', k, unpack(ARGV, j, math.min(j + 999, 4 + n))) end
for j = 5 + n, #ARGV, 2000 do
  local scored = {}
  for m = j, math.min(j + 1999, #ARGV), 2 do
    scored[#scored + 1] = string.format('%.17g', -tonumber(ARGV[m + 1]))  -- as OPS.list
    scored[#scored + 1] = ARGV[m]
  end
  added = added + redis.call('ZADD', k, unpack(scored))
end
removed = removed + redis.call('ZREMRANGEBYRANK', k, LB, -1)
if removed + added > 0 then note_change('s:' .. seller) end
log_changes()
return {removed, added}
"""
_LUA_RELIST = _LUA_PACK + "CHANGES = ARGV[1] .. '" + Keys("").changes + "'\n" + _LUA_RELIST_BODY
_LUA_RELIST_NODE = _LUA_PACK + _LUA_RELIST_BODY

# A user's state in one command: KEYS are the user's recent-likes set, follows, friends,
# hidden items, hidden sellers and shared-with-me set (one hash tag, so one slot on a
# cluster too); ARGV the recent-likes and shared bounds. Scores come back as joined strings.
# On standalone Redis also the change log since this process's copy last read it (ARGV[3]
# on: the copy's sequence number, the hashes' HSCAN count, and when the copy holds the
# user, their id and the log's epoch), and the user's state only when the copy needs it.
_LUA_USER = r"""
local function newest(key, bound)
  local got = redis.call('ZRANGE', key, 0, bound - 1, 'WITHSCORES')
  local members, scores = {}, {}
  for m = 1, #got, 2 do
    members[#members + 1] = got[m]
    scores[#scores + 1] = got[m + 1]
  end
  return members, table.concat(scores, ',')
end
""" + _LUA_CHANGES_SINCE + r"""
-- Standalone: the change log since ARGV[3] (KEYS[7..9]: seq, epoch, log). When the
-- process's copy holds the user (ARGV[5], the user's id; ARGV[6], the epoch of the log
-- it follows) and no tag since names them, the user's part of the reply is eight zeros:
-- the copy stands.
local log = false
if #KEYS > 6 then log = changes_since(KEYS[7], KEYS[8], KEYS[9], tonumber(ARGV[3]), """ + str(CHANGE_LOG_CAP) + r""") end
local reply = false
if ARGV[6] and log and log[3] and log[2] == ARGV[6] then
  local own, likes_tag = 'p:' .. ARGV[5], 'u:' .. ARGV[5]
  reply = {0, 0, 0, 0, 0, 0, 0, 0}
  for _, tag in ipairs(log[3]) do
    if tag == own or tag == likes_tag then reply = false break end
  end
end
if not reply then
  local likes, like_scores = newest(KEYS[1], tonumber(ARGV[1]))
  local shared, shared_scores = newest(KEYS[6], tonumber(ARGV[2]))
  reply = {likes, like_scores, redis.call('SMEMBERS', KEYS[2]), redis.call('SMEMBERS', KEYS[3]),
           redis.call('SMEMBERS', KEYS[4]), redis.call('SMEMBERS', KEYS[5]), shared, shared_scores}
end
if log then reply[9] = log end
-- When the copy lacks them, the user's liked and views hashes (KEYS[10], KEYS[11]), by
-- one HSCAN call each of ARGV[4] entries, for hydration to find kept.
if #KEYS > 9 then
  reply[10] = redis.call('HSCAN', KEYS[10], 0, 'COUNT', ARGV[4])
  reply[11] = redis.call('HSCAN', KEYS[11], 0, 'COUNT', ARGV[4])
end
return reply
"""

# Standalone activity in one command: KEYS are the sellers' listing sets, the friends'
# recent-likes sets, the trending set, then the change log's sequence number; ARGV the
# number of sellers and the three limits. One reply instead of one per key: list lengths
# and scores come back as joined strings, members as one flat list, then the sequence
# number the reply is at (stores/redis_cache.py).
_LUA_ACTIVITY = r"""
local sellers, listing_limit, like_limit, trending_limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local lengths, members, scores = {}, {}, {}
for j = 1, #KEYS - 2 do
  local limit = like_limit
  if j <= sellers then limit = listing_limit end
  local got = {}
  if limit > 0 then got = redis.call('ZRANGE', KEYS[j], 0, limit - 1, 'WITHSCORES') end
  lengths[j] = #got / 2
  for m = 1, #got, 2 do
    members[#members + 1] = got[m]
    scores[#scores + 1] = got[m + 1]
  end
end
local trending = {}
if trending_limit > 0 then
  trending = redis.call('ZREVRANGEBYSCORE', KEYS[#KEYS - 1], '+inf', '(0', 'LIMIT', 0, trending_limit)
end
return {table.concat(lengths, ','), members, table.concat(scores, ','), trending, redis.call('GET', KEYS[#KEYS]) or '0'}
"""

# Whether the script's ACL user may run each command ARGV holds (its word count, then its
# words), asked with redis.acl_check_cmd (Redis 7+), which runs none of them: per command
# refused, {its name, its key (or '')}; false on a Redis before 7, which cannot tell. (It
# does not say whether the command or the key was refused, and a command asked without its
# arguments is refused by some, SET among them, whatever the ACL.)
_LUA_ACL_CHECK = r"""
if not redis.acl_check_cmd then return false end
local refused, at = {}, 1
while at <= #ARGV do
  local n = tonumber(ARGV[at])
  local command = {unpack(ARGV, at + 1, at + n)}
  if not redis.acl_check_cmd(unpack(command)) then refused[#refused + 1] = {command[1], command[2] or ''} end
  at = at + n + 1
end
return refused
"""


# The largest double below 2**63: an int64 stock near its maximum (a client's "unlimited")
# reads back from its text as 2**63, which a cast to int64 wraps to a negative count.
_MAX_COUNT = float(np.nextafter(2.0**63, 0))


def _counts(column: np.ndarray) -> np.ndarray:
    """A packed column of counts (stock, likes), read as doubles, as int64."""
    return np.minimum(column, _MAX_COUNT).astype(np.int64)


def _negated_times(scores_text: str) -> np.ndarray:
    """Times from a joined string of sorted-set scores (negated times)."""
    return -joined_floats(scores_text)


def pack_item(fields: Mapping[str, str | None], trending: float = 0.0) -> str:
    """The packed value of an item hash with these fields and this trending score (0 on a
    cluster); _LUA_PACK's pack."""
    seller = fields.get("seller") or ""
    numbers = (
        fields.get("created_at") or "0", fields.get("stock") or "0", fields.get("like_count") or "0",
        "0" if fields.get("feed_eligible") == "0" else "1", fields.get("price") or "nan", fields.get("ship_days") or "nan",
        repr(float(trending)),
    )  # fmt: skip
    return f"{','.join(numbers)}|{len(seller.encode())}:{seller}{fields.get('category') or ''}"


def _rows_of(ordered: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``codes`` found in the sorted ``ordered``, and where each was found."""
    if not len(ordered):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    at = np.minimum(np.searchsorted(ordered, codes), len(ordered) - 1)
    rows = np.flatnonzero(ordered[at] == codes)
    return rows, at[rows]


def _gathered(parts: Sequence[tuple[np.ndarray, Frames]], n: int) -> Frames:
    """One Frames of ``n`` items from each cluster node's, at those rows."""
    exists, numbers = np.zeros(n, bool), np.empty((n, PACKED_NUMBERS))
    seller_ids, category_ids = [""] * n, [""] * n
    for rows, part in parts:
        exists[rows], numbers[rows] = part.exists, part.numbers
        for row, seller_at, category_at in zip(rows.tolist(), part.seller_of.tolist(), part.category_of.tolist()):
            seller_ids[row], category_ids[row] = part.sellers[seller_at], part.categories[category_at]
    return Frames(exists, numbers, *distinct_positions(seller_ids), *distinct_positions(category_ids))


def _newest_listings(seller: str, items: Iterable[str], read: Mapping[str, tuple[str, str] | None], bound: int) -> dict[str, str]:
    """Item -> listing time of the newest ``bound`` of ``items`` that ``read`` found in
    stock under ``seller``, in a listings set's order (newest first, ties by id)."""
    listed = [(float(found[1]), item) for item in items if (found := read[item]) is not None and found[0] == seller]
    listed.sort(key=lambda pair: (-pair[0], pair[1]))
    return {item: read[item][1] for _, item in listed[:bound]}


class Relisted(NamedTuple):
    """What RedisStore.rebuild_listings did: sellers whose set it changed, listings it
    removed (sold out, gone or past the bound) and added, and the sellers whose items were
    still changing at its last attempt."""

    changed: int
    removed: int
    added: int
    unsettled: list[str]


def warm_summary(items: int, cards: int, timelines: int | None) -> str:
    """What ``RedisStore.warm`` copied, for its log line."""
    if timelines is None:
        return f"{items} items' columns and {cards} cards (no timelines: more than the copy holds)"
    return f"{items} items' columns, {cards} cards and {timelines} timelines"


def _server_run_id(connection: Any) -> str | None:
    """The run_id of the Redis server process ``connection`` reached (INFO server), or
    None when it does not tell (INFO refused by an ACL or renamed)."""
    try:
        connection.send_command("INFO", "server")
        info = connection.read_response()
    except ResponseError:
        return None
    text = info.decode() if isinstance(info, bytes) else str(info)
    found = re.search(r"^run_id:(\w+)", text, re.MULTILINE)
    return found.group(1) if found else None


# What redis-py says when a redis-cluster:// seed answers CLUSTER SLOTS with an error, and
# why that is so for good, not an outage: the node is a standalone Redis, or the ACL user
# may not run CLUSTER SLOTS (redis-py reports a NOPERM the same way).
NOT_A_CLUSTER = "Cluster mode is not enabled on this node"
NOT_A_CLUSTER_CAUSES = "a standalone Redis (use redis://), or a user not allowed +cluster|slots and +cluster|info"


def _node_name(client: redis.Redis) -> str:
    """HOST:PORT (or the socket's path) of a standalone client, for messages."""
    kwargs = client.connection_pool.connection_kwargs
    return kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"


def replicas_attached(client: Any) -> dict[str, int]:
    """HOST:PORT -> replicas attached (INFO replication's connected_slaves: syncing ones
    too) of each primary of a cluster, or of a standalone Redis; without the primaries
    whose count cannot be read (an ACL without +info, a node down)."""
    attached = {}
    try:
        primaries = primary_clients(client)
    except (RedisError, RedisClusterException, OSError):
        return attached
    for name, node in primaries:
        try:
            attached[name] = int(node.info("replication")["connected_slaves"])
        except (RedisError, RedisClusterException, OSError, KeyError, ValueError):
            continue
    return attached


def primary_clients(client: Any) -> list[tuple[str, redis.Redis]]:
    """(HOST:PORT, a client of that node) of each primary of a cluster, or of a standalone Redis."""
    if is_cluster_client(client):
        return [(node.name, client.get_redis_connection(node)) for node in client.get_primaries()]
    return [(_node_name(client), client)]


def _slot_ranges(slots: Sequence[int]) -> str:
    """``slots`` (ascending) as ranges: "0-4095, 8192-8200"."""
    ranges: list[list[int]] = []
    for slot in slots:
        if ranges and ranges[-1][1] == slot - 1:
            ranges[-1][1] = slot
        else:
            ranges.append([slot, slot])
    return ", ".join(f"{first}-{last}" if first != last else str(first) for first, last in ranges) or "none"


def mark_every_slot(client: Any, keys: Keys) -> None:
    """Set the data marker of each hash slot of a cluster (``Keys.data_marker``): the store's
    write scripts then refuse to write into a slot whose primary came back without its data.
    One pipeline per primary, sent to it directly: redis-py's cluster pipeline, which routes
    each command, took 200-300 ms for the 16,384 SETs. A slot that moved meanwhile (a
    reshard) is set through the cluster client, which follows it."""
    by_node: dict[str | None, list[int]] = defaultdict(list)
    for slot in range(REDIS_CLUSTER_HASH_SLOTS):
        holders = client.nodes_manager.slots_cache.get(slot)
        by_node[holders[0].name if holders else None].append(slot)
    unset = by_node.pop(None, [])
    for name, slots in by_node.items():
        pipe = client.get_redis_connection(client.get_node(node_name=name)).pipeline(transaction=False)
        for slot in slots:
            pipe.set(keys.data_marker(slot), "1")
        unset += [slot for slot, reply in zip(slots, pipe.execute(raise_on_error=False)) if isinstance(reply, Exception)]
    for slot in unset:
        client.set(keys.data_marker(slot), "1")


def access_probes(keys: Keys, cluster: bool) -> list[list[str]]:
    """A call of each command the store's scripts and pipelines run, on a key of each kind
    it runs it on, and a write of each kind of key it writes: what ``access_refusals`` asks
    Redis whether the ACL user may run. The ids are "*": a key refused reads as the pattern
    to grant."""
    u = i = s = e = "*"
    probes = [
        ["EXISTS", keys.item(i)], ["HGET", keys.item(i), "seller"], ["HMGET", keys.item(i), "seller", "stock"],
        ["HSET", keys.item(i), "stock", "0"], ["HSETNX", keys.item(i), "created_at", "0"],
        ["HINCRBY", keys.item(i), "like_count", "1"], ["HDEL", keys.item(i), "title"],
        ["HSETNX", keys.liked(u), i, "0"], ["HGETALL", keys.liked(u)], ["HLEN", keys.liked(u)], ["HDEL", keys.liked(u), i],
        ["HSCAN", keys.views(u), "0"], ["HSET", keys.views(u), i, "1"], ["HSET", keys.engaged(u), i, "0"],
        ["ZADD", keys.recent_likes(u), "0", i], ["ZREMRANGEBYRANK", keys.recent_likes(u), "0", "-1"],
        ["ZRANGE", keys.recent_likes(u), "0", "-1", "WITHSCORES"], ["ZADD", keys.shared(u), "0", i],
        ["ZADD", keys.seen(u), "0", i], ["ZREM", keys.seen(u), i], ["ZPOPMIN", keys.seen(u), "1"], ["ZCARD", keys.seen(u)],
        ["ZSCORE", keys.seen(u), i], ["SADD", keys.follows(u), s], ["SREM", keys.follows(u), s], ["SCARD", keys.follows(u)],
        ["SADD", keys.friends(u), u], ["SISMEMBER", keys.friends(u), u], ["SMEMBERS", keys.friends(u)],
        ["SADD", keys.hidden_items(u), i], ["SADD", keys.hidden_sellers(u), s], ["ZADD", keys.listings(s), "0", i],
        ["ZINCRBY", keys.trending, "1", i], ["ZREVRANGEBYSCORE", keys.trending, "+inf", "(0"],
        ["HSET", keys.vacations, s, "inf"], ["INCR", keys.vacations_version], ["GET", keys.vacations_version],
        ["XADD", keys.events, "*", "event_id", e], ["SET", keys.event_status(e), "done", "EX", "1"], ["TIME"],
    ]  # fmt: skip
    if cluster:
        return [*probes, ["SET", keys.part_prefix(Keys.user_tag(u)) + e, "1", "EX", "1"], ["HSET", keys.listing_versions(s), i, "1"],
                ["EXISTS", keys.data_marker(0)], ["SET", keys.data_marker(0), "1"]]  # fmt: skip
    seq, epoch, log = keys.change_log_keys()
    return [*probes, ["HSET", keys.packed_items, i, "0"], ["INCRBY", seq, "1"], ["SET", epoch, "0"],
            ["RPUSH", log, "t"], ["LTRIM", log, "0", "-1"], ["LRANGE", log, "0", "-1"]]  # fmt: skip


def _acl_refusal(refused: list[list[str]]) -> str:
    """_LUA_ACL_CHECK's reply, in words: each command refused, and the keys it was refused on."""
    keys_of: dict[str, list[str]] = defaultdict(list)
    for command, key in refused:
        keys_of[command].append(key)
    return "the ACL user may not run " + "; ".join(
        f"{command} on {', '.join(keys)}" if any(keys) else command for command, keys in keys_of.items()
    )


def refusals_by_node(refusals: Mapping[str, str]) -> str:
    """``acl_refusals`` in one line."""
    return "; ".join(f"Redis {name}: {refused}" for name, refused in refusals.items())


def acl_refusals(client: Any, probes: Sequence[Sequence[str]], ask: Callable[[Any, list[str]], Any] | None = None) -> dict[str, str]:
    """What the ACL user may not run of ``probes`` (calls whose ids are "*", as
    ``access_probes``), by primary (HOST:PORT) asked, running none of them; empty when it
    may run them all, or when Redis (before 7, without redis.acl_check_cmd) cannot tell.
    ``ask(node, words)`` runs _LUA_ACL_CHECK on a node; by default an EVAL of its source."""
    words = [word for probe in probes for word in (str(len(probe)), *probe)]
    refusals = {}
    for name, node in primary_clients(client):
        refused = node.eval(_LUA_ACL_CHECK, 0, *words) if ask is None else ask(node, words)
        if refused:
            refusals[name] = _acl_refusal(refused)
    return refusals


def eviction_warning(client: Any) -> str | None:
    """Why Redis may drop feed state, naming each primary whose ``maxmemory-policy`` is not
    noeviction or that does not tell it; None when every primary says noeviction.

    Reads ``INFO memory``, which managed services allow where CONFIG is disabled: under
    any other policy a Redis at ``maxmemory`` evicts keys (volatile-* ones too: the event
    ids kept for idempotency expire), so an out-of-stock item can come back and a retried
    event be applied twice. RedisError (an outage) is the caller's to handle.
    """
    evicting, untold = [], []
    for name, node in primary_clients(client):
        try:
            policy = node.info("memory").get("maxmemory_policy")
        except ResponseError as error:  # an ACL without +info
            untold.append(f"{name} ({' '.join(str(error).split())})")
            continue
        if policy != "noeviction":
            evicting.append(f"{name} has maxmemory-policy {policy}")
    problems = []
    if evicting:
        problems.append(f"Redis {', '.join(evicting)}: at maxmemory it evicts feed state (stock, likes, the event ids kept "
                        "for idempotency), so a sold-out item can come back and a retried event be applied twice; "
                        "set maxmemory-policy noeviction")  # fmt: skip
    if untold:
        problems.append(f"could not read the maxmemory-policy of Redis {', '.join(untold)}: make sure it is noeviction, "
                        "and grant the server +info")  # fmt: skip
    return "; ".join(problems) or None


def _card(fields: dict[str, str | None]) -> ItemCard:
    if fields["seller"] is None and fields["stock"] is None:  # no such item
        return ItemCard()
    price, ship_days = fields["price"], fields["ship_days"]
    return ItemCard(
        title=fields["title"] or "",
        image_url=fields["image_url"] or "",
        price=float(price) if price else None,
        currency=fields["currency"] or "",
        category=fields["category"] or "",
        ship_days=int(ship_days) if ship_days else None,
    )


# A script's command refused by a cluster that is down or failing over: Redis reports it
# without the CLUSTERDOWN code (seen in tests/test_replication.py's failover run).
# A script's key whose slot moved while a failover spreads (the client's map is older than
# the node's): the next call, on a refreshed map, reaches the new owner.
_TRANSIENT_SCRIPT_REPLIES = ("while the cluster is down", "Script attempted to access a non local key")


def _warn_if_empty(connection: Any) -> None:
    """Log when a Redis this process was using comes back as a new process holding no key
    (restarted without persistence, flushed, or failed over to an empty replica): it answers,
    so health is SERVING, but every feed is empty until the data is loaded again."""
    connection.send_command("DBSIZE")
    if int(connection.read_response()) == 0:
        log.error("Redis at %s:%s is a new process that holds no data (restarted without its data, or flushed?): "
                  "feeds are empty until it is loaded again (python -m serving load)",
                  connection.host, connection.port)


def _warn_when_restarted_empty() -> Callable[[Any], None]:
    """A cluster client's connect hook: ``_warn_if_empty`` when a node (HOST:PORT) it
    connected to before is another Redis server process now (its INFO run_id), as
    ``RedisStore._forget_on_reconnect`` does for a standalone Redis."""
    lock, run_ids = threading.Lock(), {}

    def on_connect(connection: Any) -> None:
        run_id = _server_run_id(connection)
        with lock:
            before = run_ids.get((connection.host, connection.port))
            run_ids[(connection.host, connection.port)] = run_id
        if before is not None and run_id is not None and run_id != before:
            _warn_if_empty(connection)

    return on_connect


# Times the WAIT client's slot map is read again before a confirmation counts as lost: a
# failover reaches the nodes one by one.
WAIT_MAP_REFRESHES = 4
# How long an Ingest with min_replicas trusts the replicas it last read attached to each
# primary (INFO replication): a steady stream of them pays that round trip once a second.
REPLICAS_RECHECK_SECONDS = 1.0

# Places in the write scripts' constants (ARGV[14] and ARGV[15]) that each call sets.
_LAST_ARG, _EXPECT_DATA_ARG = 13, 14


def is_outage(error: BaseException) -> bool:
    """Whether a redis-py error says Redis cannot serve now, but may soon: refused, timed
    out, cluster down, loading, busy in a script, its primary down..."""
    if isinstance(error, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, ClusterError)):
        return True
    if not isinstance(error, ResponseError):
        return False
    message = str(error)
    return message.startswith(_TRANSIENT_REPLIES) or any(reply in message for reply in _TRANSIENT_SCRIPT_REPLIES)


# A script's command refused by the ACL: Redis 7.0 says so without the NOPERM code and
# without naming the command; 7.2 and later begin "ACL failure in script".
_ACL_SCRIPT_REPLIES = ("The user executing the script can't", "ACL failure in script")


def is_acl_refusal(error: BaseException) -> bool:
    """Whether a redis-py error is Redis's ACL refusing a command or a key, outside a script or in one."""
    return isinstance(error, NoPermissionError) or (
        isinstance(error, ResponseError) and any(reply in str(error) for reply in _ACL_SCRIPT_REPLIES))


@contextmanager
def unavailable_on_redis_errors() -> Iterator[None]:
    """Turn a Redis outage (refused, timed out, cluster down, loading...) into StoreUnavailable,
    a write Redis refused at ``maxmemory`` (OOM) into StoreFull, and a command or key the
    ACL user may not use into StoreForbidden."""
    try:
        yield
    except OutOfMemoryError as error:
        raise StoreFull(f"{type(error).__name__}: {error}") from error
    except RedisError as error:
        if is_outage(error):
            raise StoreUnavailable(f"{type(error).__name__}: {error}") from error
        if is_acl_refusal(error):
            raise StoreForbidden(" ".join(str(error).split())) from error
        raise
    except RedisClusterException as error:
        # Raised e.g. when no startup node answers, or none serves every slot (the store URL's
        # node removed from the cluster); programming errors stay errors.
        if isinstance(error, SlotNotCoveredError) or any(words in str(error).lower() for words in ("connect", "reachable", "not covered")):
            raise StoreUnavailable(f"{type(error).__name__}: {error}") from error
        raise


class LazyCluster:
    """A Redis Cluster client made on first use, and made again on the next use while it
    cannot be: redis-py connects to the nodes when the client is made, and a server must
    start while its cluster is down (health NOT_SERVING until the store answers).

    ``peers``: the other clients of the same cluster. A client is made from the nodes the
    peers made before it have found too, not from the URL's nodes alone: those may have
    died since (their replicas serving their slots), and a client made from them alone
    would fail for as long as they stay down."""

    def __init__(self, make: Callable[[list[ClusterNode]], RedisCluster], peers: Sequence[LazyCluster] = ()) -> None:
        self._make = make
        self._client: RedisCluster | None = None
        self._lock = threading.Lock()
        self._peers = list(peers)
        for peer in peers:
            peer._peers.append(self)

    def __getattr__(self, name: str) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._make([node for peer in self._peers for node in peer.known_nodes()])
        return getattr(self._client, name)

    def known_nodes(self) -> list[ClusterNode]:
        """The nodes this client found at its last refresh of the slot map (none before it is made)."""
        if self._client is None:
            return []
        return [ClusterNode(node.host, node.port) for node in list(self._client.nodes_manager.startup_nodes.values())]

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


# Times a cluster's keys are scanned again when its slots moved meanwhile (a reshard).
SCAN_ATTEMPTS = 5


def _slot_layout(client: Any) -> list[tuple[str, str, list[int]]]:
    """(primary, its config epoch, the slots it serves) of each primary, read afresh; every
    slot a reshard moves changes it."""
    client.nodes_manager.initialize()
    owned: dict[str, list[int]] = defaultdict(list)
    for slot, holders in sorted(client.nodes_manager.slots_cache.items()):
        if holders:
            owned[holders[0].name].append(slot)
    return [(node.name, client.get_redis_connection(node).cluster("info").get("cluster_my_epoch"), owned[node.name])
            for node in sorted(client.get_primaries(), key=lambda node: node.name)]  # fmt: skip


def scan_keys(client: Any, pattern: str, count: int = 1_000) -> Iterator[str]:
    """Every key matching ``pattern`` (SCAN, ``count`` per step), on each primary of a cluster.

    A cluster is scanned node by node, and a slot a reshard moves from a node not scanned
    yet to one scanned hides its keys: the slots' layout is read before and after, and
    the scan run again when it changed (StoreUnavailable after SCAN_ATTEMPTS). So a
    cluster's keys are gathered before the first is yielded, each once."""
    if not is_cluster_client(client):
        yield from client.scan_iter(match=pattern, count=count)
        return
    for _ in range(SCAN_ATTEMPTS):
        layout = _slot_layout(client)
        keys = dict.fromkeys(key for node in client.get_primaries() for key in client.get_redis_connection(node).scan_iter(match=pattern, count=count))
        if _slot_layout(client) == layout:
            yield from keys
            return
    raise SlotsMoving(f"the cluster's slots moved while its keys were scanned, {SCAN_ATTEMPTS} times (a reshard?): "
                      "try again once it is done")  # fmt: skip


class SlotsMoving(StoreUnavailable):
    """A cluster's slots kept moving while its keys were scanned (a reshard): it answers, but a
    scan of every key cannot finish until the slots stay put."""


class DataLost(StoreUnavailable):
    """Redis answers, but (a primary of) it came back without its data: RedisStore._refuse_without_data."""


def is_cluster_client(client: Any) -> bool:
    return isinstance(client, (RedisCluster, LazyCluster))


def connect(url: str, peers: Sequence[LazyCluster] = (), **kwargs: Any) -> redis.Redis | RedisCluster:
    """A redis-py client for a redis://, rediss://, unix:// or redis-cluster:// URL.

    ``kwargs`` are redis-py options; options in the URL's query string win over them.
    A connection error is retried once, immediately (a pooled connection may be stale
    after a Redis restart); timeouts are not retried. ValueError for a URL check_url refuses.
    ``peers``: other clients of the same cluster, for a cluster client (see LazyCluster).
    """
    check_url(url)
    if url.startswith("redis-cluster://"):
        kwargs.setdefault("retry", Retry(NoBackoff(), 1))
        first_node_url, nodes = cluster_nodes(url)
        node_url = "redis://" + first_node_url.removeprefix("redis-cluster://")
        seeds = [(host, int(port)) for host, _, port in (node.rpartition(":") for node in nodes[1:])]

        def make(known: list[ClusterNode]) -> RedisCluster:
            startup_nodes = [*(ClusterNode(host, port) for host, port in seeds), *known]
            try:
                return RedisCluster.from_url(node_url, startup_nodes=startup_nodes, decode_responses=True, **kwargs)
            except RedisClusterUnreachableError as error:
                raise RedisClusterUnreachableError(_no_url_node_answers(nodes, len(known), error)) from error

        return LazyCluster(make, peers)
    kwargs.setdefault("retry", Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)))
    return redis.Redis.from_url(url, decode_responses=True, **with_fast_packer(url, kwargs))


def _no_url_node_answers(nodes: Sequence[str], found_before: int, error: RedisClusterUnreachableError) -> str:
    """What to say when no node a cluster client starts from answers: redis-py names only the
    last it tried, and a URL naming one node that is down keeps a process from a cluster that
    serves until that node is back."""
    found = f", nor the {found_before} nodes found before," if found_before else ""
    message = f"none of the nodes of the redis-cluster:// URL{found} answers ({', '.join(nodes)}: {error.__cause__ or error})"
    if len(nodes) == 1:
        message += ("; while it is down a process cannot find the cluster, even one that serves: name several nodes "
                    "in the URL: redis-cluster://HOST:PORT,HOST:PORT,...")
    return message


URL_SCHEMES = ("redis://", "rediss://", "unix://", "redis-cluster://")
_DB_INDEX = re.compile(r"[0-9]+")


def password_end(after_scheme: str) -> int:
    """The index of the "@" that ends a store URL's user and password in ``after_scheme``
    (the URL after its "://"), -1 when it has none. A password may hold "/", "?" or "#"
    unencoded (base64's "/"), so this is the last "@" not inside a query option's value."""
    for at in reversed([index for index, char in enumerate(after_scheme) if char == "@"]):
        option_start = max(after_scheme.rfind("?", 0, at), after_scheme.rfind("&", 0, at))
        if option_start < 0 or "=" not in after_scheme[option_start:at]:
            return at
    return -1


def check_url(url: str) -> None:
    """ValueError unless ``url`` has a scheme ``connect`` takes and, if it names a DB (its
    path, or a ``db`` query option), a non-negative integer one: redis-py ignores a path
    that is not a number and would use DB 0."""
    if not url.startswith(URL_SCHEMES):
        raise ValueError(f"the scheme must be one of {', '.join(URL_SCHEMES)}")
    if url.startswith("redis-cluster://"):
        url, nodes = cluster_nodes(url)
        if len(nodes) > 1:
            for node in nodes:
                _check_cluster_node(node)
    parts = urlsplit(url)
    if not url.startswith("unix://") and password_end(url.partition("://")[2]) >= len(parts.netloc):
        # The password ran past what URL parsing takes for the host: echoing the path, the query
        # or the port it then reads would show the password's end.
        raise ValueError("an '@' after the host: a '/', '?' or '#' in the password must be percent-encoded (%2F, %3F, %23)")
    dbs = [value for name, value in parse_qsl(parts.query, keep_blank_values=True) if name == "db"]
    if not url.startswith("unix://") and parts.path not in ("", "/"):
        dbs.append(unquote(parts.path.removeprefix("/")))
    for db in dbs:
        if not _DB_INDEX.fullmatch(db):
            raise ValueError(f"the DB must be a non-negative integer, got {db!r}")
    if not url.startswith("unix://"):
        try:
            parts.port  # noqa: B018 (parsing it is the check)
        except ValueError:
            raise ValueError(f"the port must be a whole number from 0 to 65535, got {parts.netloc.rpartition(':')[2]!r}") from None


def cluster_nodes(url: str) -> tuple[str, list[str]]:
    """A redis-cluster:// URL naming its first node only, and the nodes it names
    (redis-cluster://HOST:PORT,HOST:PORT,...: several, so that a client can be made while
    one of them is down)."""
    scheme, _, rest = url.partition("://")
    start = password_end(rest) + 1
    end = min((i for i in (rest.find(char, start) for char in "/?#") if i >= 0), default=len(rest))
    nodes = rest[start:end].split(",")
    return f"{scheme}://{rest[:start]}{nodes[0]}{rest[end:]}", nodes


def _check_cluster_node(node: str) -> None:
    host, colon, port = node.rpartition(":")
    if not (host and colon and port.isdigit() and int(port) <= 65535):
        raise ValueError(f"each node of a redis-cluster:// URL naming several must be HOST:PORT, got {node!r}")


def split_url(url: str) -> tuple[str, dict[str, Any]]:
    """The URL without our own query options, and those options parsed; ValueError naming
    the option whose value is not of its kind, or for a URL check_url refuses."""
    check_url(url)
    own = {}
    for name, value in parse_qsl(url.partition("?")[2], keep_blank_values=True):
        parse = _OWN_OPTIONS.get(name) or redis.connection.URL_QUERY_ARGUMENT_PARSERS.get(name)
        if parse is None and name not in _REDIS_PY_OPTIONS:
            raise ValueError(f"unknown store URL option {name!r}; ours: {', '.join(_OWN_OPTIONS)}; "
                             f"redis-py's: {', '.join(sorted(_REDIS_PY_OPTIONS))}")  # fmt: skip
        try:
            parsed = parse(value) if parse is not None else value
        except ValueError as error:
            raise ValueError(f"store URL option {name}={value!r}: {error}") from None
        if name in _OWN_OPTIONS:
            own[name] = parsed
    return _without_options(url, *_OWN_OPTIONS), own


def _without_options(url: str, *names: str) -> str:
    """``url`` without the query options ``names`` (the rest of it untouched: urlunsplit
    would turn unix:///path into unix:/path)."""
    base, _, query = url.partition("?")
    kept = [(n, v) for n, v in parse_qsl(query, keep_blank_values=True) if n not in names]
    return f"{base}?{urlencode(kept)}" if kept else base


class _ItemPlacement:
    """Cluster: the hash slot of each item (by item code) and the primary holding each slot,
    as arrays, so grouping a feed's candidates by node costs no Python per item (redis-py's
    keyslot and slot lookup took about 10 µs an item). Replaced, never resized in place:
    request threads read them without a lock."""

    SLOTS = 16384

    def __init__(self, keys: Keys) -> None:
        self._keys = keys
        self._slot_of = np.zeros(0, np.int16)  # by item code; -1: not computed yet
        self._map: tuple[Any, np.ndarray, list[Any]] = (None, np.zeros(0, np.int16), [])

    def slots(self, codes: np.ndarray, ids: Sequence[str]) -> np.ndarray:
        """The slot of each item (``ids`` and their ``codes``), computed once per item."""
        table = self._slot_of
        if len(codes) and codes.max() >= len(table):
            grown = np.full(max(int(codes.max()) + 1, 2 * len(table), 1024), -1, np.int16)
            grown[: len(table)] = table
            table = self._slot_of = grown
        slots = table[codes]
        for row in np.flatnonzero(slots < 0).tolist():  # the item's keys are hash-tagged {i:ID}
            slots[row] = table[codes[row]] = self._keys.tag_slot(Keys.item_tag(ids[row]))
        return slots

    def owners(self, manager: Any) -> tuple[np.ndarray, list[Any]]:
        """(index into the node list per slot, -1 where none; the primaries) for ``manager``'s
        current slot map; recomputed when redis-py replaces the map (its initialize())."""
        cache, owner, nodes = self._map
        if cache is not manager.slots_cache:
            cache = manager.slots_cache
            names = sorted({holders[0].name for holders in cache.values() if holders})
            index = {name: at for at, name in enumerate(names)}
            owner = np.full(self.SLOTS, -1, np.int16)
            for slot, holders in cache.items():
                if holders:
                    owner[slot] = index[holders[0].name]
            nodes = [manager.get_node(node_name=name) for name in names]
            self._map = (cache, owner, nodes)
        return owner, nodes


class RedisStore:
    """FeedStore over Redis; see the module docstring for the read and write design.

    ``recent_likes`` bounds each user's recent-likes sorted set (as the memory store's
    ``recent_likes``); ``listings`` bounds what ``read_activity`` returns per seller;
    each seller's listings sorted set keeps ``listings_kept(listings)`` (twice as many) of
    its in-stock items, newest first, so older ones move up as newer ones sell out (a
    sold-out item leaves the set and comes back when restocked: sold-out listings never
    take an in-stock one's place).

    ``read_cache`` (standalone only): keep the items, cards and timelines feeds read in
    this process, brought up to date at each feed's first read (stores/redis_cache.py).

    ``write_client`` (default: ``client``) runs ``apply``: its own connection pool, with
    a socket timeout that fits a full batch, so a long write neither times out as a read
    would nor holds a connection a feed is waiting for. ``write_chunk``: see
    DEFAULT_WRITE_CHUNK. ``max_friends`` / ``max_follows``: degree caps checked at
    ingest (0: none; on a cluster two concurrent batches may together pass a cap, as
    their parts interleave).
    """

    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        recent_likes: int = DEFAULT_RECENT_LIKES,
        listings: int = DEFAULT_LISTINGS,
        dedupe_ttl: int = DEFAULT_DEDUPE_TTL,
        stream_maxlen: int = DEFAULT_STREAM_MAXLEN,
        prefix: str = DEFAULT_PREFIX,
        write_client: redis.Redis | RedisCluster | None = None,
        wait_client: redis.Redis | RedisCluster | None = None,
        write_chunk: int = DEFAULT_WRITE_CHUNK,
        wait_timeout_ms: int = DEFAULT_WAIT_TIMEOUT_MS,
        max_friends: int = DEFAULT_MAX_FRIENDS,
        max_follows: int = DEFAULT_MAX_FOLLOWS,
        read_cache: bool = True,
        read_cache_entries: int = DEFAULT_CACHED_KEYS,
    ) -> None:
        if recent_likes < 1 or listings < 1:
            raise ValueError("recent_likes and listings must be >= 1")
        if read_cache_entries < 1:
            raise ValueError(f"read_cache_entries must be >= 1, got {read_cache_entries} (read_cache=0 turns the copy off)")
        if write_chunk < 1:
            raise ValueError("write_chunk must be >= 1")
        if not 0 <= dedupe_ttl <= LONGEST_DEDUPE_TTL:
            raise ValueError(f"dedupe_ttl must be from 0 (forever) to {LONGEST_DEDUPE_TTL} seconds, got {dedupe_ttl}")
        self.client = client
        self.write_client = client if write_client is None else write_client
        self.wait_client = self.write_client if wait_client is None else wait_client  # Ingest's WAIT for replicas
        self.write_chunk = write_chunk
        self.wait_timeout_ms = wait_timeout_ms
        self.max_friends = max_friends
        self.max_follows = max_follows
        self.is_cluster = is_cluster_client(client)
        self.ping_failure = ""  # why the last ping() said no, for the server's log
        self._eviction: str | None = None  # what the last read of the eviction policy found (read_eviction_policy)
        self._eviction_read_at = -float("inf")
        self._replicas_attached: tuple[float, dict[str, int]] = (-float("inf"), {})  # (read at, replicas_attached)
        self.keys = Keys(prefix)
        self._placement = _ItemPlacement(self.keys)
        self.recent_likes_bound = recent_likes
        self.listings_bound = listings
        self._consts = [
            prefix, str(recent_likes), str(listings_kept(listings)), str(dedupe_ttl),
            repr(_TRENDING_TAU), repr(TRENDING_EPOCH), repr(_MAX_EXPONENT), str(stream_maxlen),
            str(SEEN_BOUND), str(SHARED_BOUND), repr(VIEW_WINDOW_SECONDS), str(max_friends), str(max_follows), "-2", "0",
        ]  # fmt: skip
        # The chunks of a batch validated whole skip the degree caps (0, 0).
        self._chunk_consts = [*self._consts[:-4], "0", "0", "-2", "0"]
        # Set once this process has seen Redis hold data (a write, or a warm copy; on a
        # cluster, a slot's data marker): from then on a write script that finds no change
        # log epoch (Redis came back empty: restarted without its data, or flushed), or on a
        # cluster no data marker in its slot, refuses, writing nothing, until a load brings one.
        self._holds_data = False
        # HOST:PORT -> the state of its data, of each node refused since a write found its data: logged once, not per Ingest.
        self._refused_nodes: dict[str, str] = {}
        self._sources = {"batch": _LUA_APPLY_BATCH, "validate": _LUA_VALIDATE_BATCH, "log": _LUA_LOG_PENDING, "slot": _LUA_SLOT_OPS, "cards": _LUA_CARDS, "packed": _LUA_PACKED_ITEMS, "unpacked": _LUA_UNPACKED_ITEMS,
                         "activity": _LUA_ACTIVITY, "user": _LUA_USER, "changes": _LUA_CHANGES, "repack": _LUA_REPACK, "repack_node": _LUA_REPACK_NODE,
                         "listings_of": _LUA_LISTINGS_OF, "relist": _LUA_RELIST, "relist_node": _LUA_RELIST_NODE, "acl": _LUA_ACL_CHECK}
        self._shas: dict[str, str] = {}
        # Codes are local to this process: each server process maps the ids it meets.
        self.items = Vocabulary()
        self.sellers = Vocabulary()
        self.categories = Vocabulary()
        # (version, seller -> end, [the ends by seller code, as far as known]): _vacations, _away
        self._vacation_copy: tuple[str | None, dict[str, float], list[np.ndarray]] = (None, {}, [np.zeros(0)])
        # Standalone only: a cluster's write scripts run per slot and keep no change log.
        self._cache = ReadCache(self.items.code, read_cache_entries) if read_cache and not self.is_cluster else None
        if self._cache is not None:
            self._forget_on_reconnect(client, self._cache)
        # The copy's generation the last warm began in (None: this process never warms),
        # and the thread copying it again after the copy was dropped (_rewarm_if_dropped).
        self._warmed_generation: int | None = None
        self._rewarm_lock = threading.Lock()
        self._rewarm_thread: threading.Thread | None = None
        compile_number_parser()  # neither on the first feed
        compile_frame_splitter()

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any] = {}, **kwargs: Any) -> RedisStore:
        """Connect lazily; ``kwargs`` are redis-py options (query options in the URL win).

        Our own options may be given in the query string too: recent_likes, listings,
        dedupe_ttl (seconds, 0 = forever), stream_maxlen (0 = unbounded), prefix,
        write_timeout (the writes' socket timeout, seconds; at least the reads'; Ingest's WAIT
        for replicas has connections of its own, whose timeout covers wait_timeout_ms),
        write_chunk, max_friends and max_follows (0 = no cap), wait_timeout_ms, read_cache
        (0 = read everything from Redis at every feed), read_cache_entries (the copy's bound
        on timelines, users' state and hashes and cards together). ``options`` are our own
        options too, for those the query does not set.
        """
        url, own = split_url(url)
        own = {**options, **own}
        kwargs.setdefault("socket_timeout", DEFAULT_SOCKET_TIMEOUT)
        kwargs.setdefault("socket_connect_timeout", DEFAULT_CONNECT_TIMEOUT)
        read_timeout = dict(parse_qsl(urlsplit(url).query)).get("socket_timeout", kwargs["socket_timeout"])
        write_timeout = max(own.pop("write_timeout", DEFAULT_WRITE_TIMEOUT), float(read_timeout or 0))
        # WAIT holds its connection up to wait_timeout_ms before it answers: on the writes'
        # connections a timeout below that would report an outage for a batch that was applied.
        wait_timeout = max(write_timeout, int(own.get("wait_timeout_ms", DEFAULT_WAIT_TIMEOUT_MS)) / 1000 + WAIT_REPLY_MARGIN)
        with unavailable_on_redis_errors():
            client = connect(url, **({**kwargs, "redis_connect_func": _warn_when_restarted_empty()} if url.startswith("redis-cluster://") else kwargs))
            writer = connect(_without_options(url, "socket_timeout"), [client], **{**kwargs, "socket_timeout": write_timeout})
            waiter = connect(_without_options(url, "socket_timeout"), [client, writer], **{**kwargs, "socket_timeout": wait_timeout})
            return cls(client, write_client=writer, wait_client=waiter, **own)

    # -- reads -------------------------------------------------------------------------

    def _pipeline(self) -> Any:
        return self.client.pipeline(transaction=False) if not self.is_cluster else self.client.pipeline()

    def _write_pipeline(self) -> Any:
        client = self.write_client
        return client.pipeline(transaction=False) if not self.is_cluster else client.pipeline()

    @staticmethod
    def _forget_on_reconnect(client: redis.Redis, cache: ReadCache) -> None:
        """Drop ``cache`` whenever ``client`` connects to another Redis server process than
        the one it last connected to (its INFO run_id; every time, for a server that does
        not tell): a Redis that restarted or failed over may have lost writes this process
        saw, and its log may have started again at a number this process has passed. A new
        connection to the same process (another thread's, or after a dropped connection)
        has lost nothing, and keeps the copy."""
        kwargs = client.connection_pool.connection_kwargs
        connect_next = kwargs.get("redis_connect_func")
        lock, last_run_id = threading.Lock(), [None]

        def on_connect(connection: Any) -> None:
            if connect_next is None:
                connection.on_connect()
            else:
                connect_next(connection)
            run_id = _server_run_id(connection)
            with lock:
                if run_id is None or run_id != last_run_id[0]:
                    cache.clear()
                    if last_run_id[0] is not None and run_id is not None:
                        _warn_if_empty(connection)
                last_run_id[0] = run_id

        kwargs["redis_connect_func"] = on_connect

    def warm(self, client: Any = None) -> tuple[int | None, int, int | None]:
        """``warm_copy``, then ``warm_cards`` and ``warm_timelines`` when it copied items:
        (items, cards, timelines) copied.

        After it, a feed that finds the copy dropped (a restart, a failover or a bulk
        load) starts the same copy again in the background (``_rewarm_if_dropped``), on
        the write connections, beside the feeds' own.
        """
        copied = self.warm_copy(client=client)
        if not copied:
            return copied, 0, 0
        return copied, self.warm_cards(client=client), self.warm_timelines(client=client)

    def warm_copy(self, count: int = WARM_SCAN_COUNT, max_items: int = WARM_MAX_ITEMS, client: Any = None) -> int | None:
        """Copy every item's packed columns into this process's copy before its first
        feed, HSCANning the hash of packed values ``count`` entries a call; the number of
        items copied (0 without a copy: on a cluster, or with read_cache=0), or None when
        Redis holds more than ``max_items`` items: then nothing is copied, and feeds fill
        the copy as they read.

        Without it each item costs the first feeds that meet it a read from Redis, and at
        a million items a process meets most of them only after minutes of traffic
        (benchmarks/README.md, "2026-12-05: a process's copy filled at start"). Each call
        is one fill, at least as new as the log's sequence number read just before it.
        """
        cache = self._cache
        if cache is None:
            return 0
        client = self.client if client is None else client
        k, copied = self.keys, 0
        with unavailable_on_redis_errors():
            seq, epoch, tags = self._eval_keys("changes", k.change_log_keys(), [cache.seq], client)
            self._holds_data = self._holds_data or bool(epoch)
            cache.sync(int(seq), epoch, tags)  # a fill is kept only by a copy in step with the log
            if client.hlen(k.packed_items) > max_items:
                return None
            self._warmed_generation = cache.generation
            cursor = 0
            while True:
                pipe = client.pipeline(transaction=False)
                pipe.execute_command("GET", k.change_seq)
                pipe.execute_command("HSCAN", k.packed_items, cursor, "COUNT", count, **{NEVER_DECODE: True})
                generation = cache.generation
                seq, (cursor, entries) = pipe.execute()
                if entries:
                    codes = self.items.codes([item.decode() for item in entries], add=True).astype(np.int64)
                    exists, numbers, seller, category = self._item_columns(split_values(list(entries.values())))
                    fill = cache.begin_fill(int(seq or 0), generation)
                    cache.keep_items(fill, codes[exists], numbers[exists], seller[exists], category[exists])
                    copied += int(exists.sum())
                if not cursor:
                    return copied

    def warm_cards(self, limit: int | None = None, batch: int = WARM_CARDS_BATCH, client: Any = None) -> int:
        """Copy the cards of the ``limit`` most liked items on sale whose columns the copy
        holds (``warm_copy`` first), ``batch`` items a call; the number copied. The default
        limit is half the copy's entry bound, so that feeds' reads keep room beside them.

        Without it a page whose cards the copy lacks costs its feed one more round trip to
        Redis, which at start is nearly every page (benchmarks/README.md, "2026-12-05
        (later): cards copied at start"). The most liked first, because pages favour
        them; the least liked of them are kept first, so the bound drops those first.
        """
        cache = self._cache
        if cache is None:
            return 0
        codes = cache.most_liked_on_sale(cache.capacity // 2 if limit is None else limit)
        for start in range(0, len(codes), batch):
            self._read_cards(codes[start : start + batch], client)
        return len(codes)

    def warm_timelines(self, batch: int = WARM_TIMELINES_BATCH, client: Any = None) -> int | None:
        """Copy the newest ``TIMELINE_ROWS`` listings of every seller and recent likes of every
        user (what the copy keeps of each), when they fit in the copy beside what it holds
        with a quarter of its bound left for feeds' reads; the number of timelines copied, or
        None when there are more than fit (then none: feeds fill the copy as they read).

        A feed reads the timelines of up to 50 followed sellers and 100 friends, and a young
        process reads most of them from Redis: with a 2 s warm-up, 20k users' feeds cost
        Redis 0.54-0.70 ms of CPU each, and 0.27-0.32 ms with the timelines copied at start,
        which took 1.7-1.9 s for one process (benchmarks/README.md, "2026-12-05 (session 42)"). Each
        call is a fill at least as new as the log's sequence number it read.
        """
        cache = self._cache
        if cache is None:
            return 0
        client = self.client if client is None else client
        with unavailable_on_redis_errors():
            owners = self._timeline_owners(client, cache.capacity - cache.kept - cache.capacity // 4)
            if owners is None:
                return None
            sellers, likers = owners
            for tags, bound, of_sellers in ((sellers, self.listings_bound, True), (likers, self.recent_likes_bound, False)):
                limit = min(TIMELINE_ROWS, bound)
                for start in range(0, len(tags), batch):
                    part, generation = tags[start : start + batch], cache.generation
                    timelines, _, seq = self._read_timelines(part, len(part) if of_sellers else 0, limit, limit, 0, client)
                    fill = cache.begin_fill(seq, generation)
                    cache.keep_timelines(fill, {tag: (limit, *timeline) for tag, timeline in zip(part, timelines)})
        return len(sellers) + len(likers)

    def _timeline_owners(self, client: Any, room: int) -> tuple[list[str], list[str]] | None:
        """The tags of every seller's listings and every user's recent likes, by one SCAN of
        their keys; None as soon as there are more than ``room``."""
        k = self.keys
        sellers: list[str] = []
        likers: list[str] = []
        for key in scan_keys(client, k.timelines_pattern, count=WARM_SCAN_COUNT):
            if key == k.recent_likes(user := k.user_id_of(key, "likes")):
                likers.append(k.user_tag(user))
            elif key == k.listings(seller := k.seller_id_of(key, "listings")):
                sellers.append(k.seller_tag(seller))
            else:
                continue
            if len(sellers) + len(likers) > room:
                return None
        return sorted(sellers), sorted(likers)

    def _rewarm_if_dropped(self, cache: ReadCache) -> None:
        """Copy again in the background, once per drop, when the copy a warm filled was dropped."""
        if self._warmed_generation is None or cache.generation == self._warmed_generation:
            return
        with self._rewarm_lock:
            if self._rewarm_thread is not None and self._rewarm_thread.is_alive():
                return  # it records the generation it fills; a drop during it is seen after it
            self._warmed_generation = cache.generation
            self._rewarm_thread = threading.Thread(target=self._rewarm, name="feedrank-rewarm", daemon=True)
            self._rewarm_thread.start()

    def _rewarm(self) -> None:
        started = time.perf_counter()
        try:
            copied, cards, timelines = self.warm(self.write_client)
        except StoreUnavailable as error:
            log.warning("could not copy the items' columns, cards and timelines again after the copy was dropped (%s): feeds will read them", error)
            return
        except Exception:  # noqa: BLE001 (a bug: logged, and feeds still read Redis for what the copy lacks)
            log.exception("copying the items' columns, cards and timelines again after the copy was dropped failed")
            return
        if copied:
            log.info("the copy was dropped: copied %s again in %.1f s", warm_summary(copied, cards, timelines), time.perf_counter() - started)

    def read_user(self, user_id: str) -> UserState:
        k = self.keys
        keys = [
            k.recent_likes(user_id), k.follows(user_id), k.friends(user_id), k.hidden_items(user_id),
            k.hidden_sellers(user_id), k.shared(user_id),
        ]  # fmt: skip
        args = [self.recent_likes_bound, SHARED_BOUND]
        cache = self._cache
        hashes_tag, user_tag = f"h:{user_id}", f"p:{user_id}"
        kept_user = None
        if cache is not None:  # a feed's first read brings this process's copy up to date
            seq, epoch, kept_user, generation = cache.entry_at_seq(user_tag)
            keys += k.change_log_keys()
            args += [seq, USER_HASH_SCAN, *((user_id, epoch) if kept_user is not None else ())]
            if cache.entry(hashes_tag) is None:
                keys += [k.liked(user_id), k.views(user_id)]
        with unavailable_on_redis_errors():
            reply = self._eval_keys("user", keys, args)
            if cache is not None:
                seq_text, epoch, tags = reply[8]
                cache.sync(int(seq_text), epoch, tags)
                self._rewarm_if_dropped(cache)
                fill = cache.begin_fill(int(seq_text))  # read in the same script as the log: as new as its seq
                if len(reply) > 9:
                    scans = [(int(cursor), dict(zip(flat[::2], flat[1::2]))) for cursor, flat in reply[9:11]]
                    hashes = self._user_hashes(user_id, *scans)
                    if hashes is not None:
                        cache.keep(fill, {hashes_tag: hashes})
                if reply[0] == 0:  # no tag names the user since the copy's state of them
                    if cache.generation == generation:
                        return kept_user
                    # Dropped meanwhile (the call reconnected, to another Redis server process,
                    # which may have lost what the kept state holds): read the user afresh.
                    return self.read_user(user_id)
        user = self._user_state(user_id, *reply[:8])
        if cache is not None:
            cache.keep(fill, {user_tag: user})
        return user

    def _user_state(
        self, user_id: str, likes: list[str], scores_text: str, follows: list[str], friends: list[str],
        hidden_items: list[str], hidden_sellers: list[str], shared: list[str], shared_text: str,
    ) -> UserState:
        """The user script's reply as a UserState; its arrays read-only, since a process's
        copy hands the same state to every feed of the user."""
        shares = [json.loads(member) for member in shared]  # [item, sharer]
        arrays = [
            self.items.codes(likes, add=True), _negated_times(scores_text), self.items.codes([item for item, _ in shares], add=True),
            _negated_times(shared_text), self.items.codes(hidden_items, add=True), self.sellers.codes(hidden_sellers, add=True),
        ]  # fmt: skip
        for array in arrays:
            array.flags.writeable = False
        recent_likes, recent_like_times, shared_items, shared_times, hidden_item_codes, hidden_seller_codes = arrays
        return UserState(
            user_id=user_id,
            recent_likes=recent_likes,
            recent_like_times=recent_like_times,
            shared=SharedItems(shared_items, shared_times, tuple(s for _, s in shares)),
            follows=tuple(sorted(follows)),
            friends=tuple(sorted(friends)),
            hidden_items=hidden_item_codes,
            hidden_sellers=hidden_seller_codes,
        )

    def read_activity(
        self, seller_ids: Sequence[str], friend_ids: Sequence[str], per_key_limit: int, trending_limit: int
    ) -> Activity:
        k = self.keys
        listing_limit = min(per_key_limit, self.listings_bound)
        like_limit = min(per_key_limit, self.recent_likes_bound)
        sellers = list(seller_ids) if listing_limit > 0 else []
        friends = list(friend_ids) if like_limit > 0 else []
        trending_limit = max(trending_limit, 0)
        if not self.is_cluster:
            return self._standalone_activity(sellers, friends, listing_limit, like_limit, trending_limit)
        # A cluster spreads these keys over its nodes: one pipelined command per key.
        pipe = self._pipeline()
        for seller in sellers:
            pipe.zrange(k.listings(seller), 0, listing_limit - 1, withscores=True)
        for friend in friends:
            pipe.zrange(k.recent_likes(friend), 0, like_limit - 1, withscores=True)
        if trending_limit > 0:
            pipe.zrevrangebyscore(k.trending, "+inf", "(0", start=0, num=trending_limit)
        with unavailable_on_redis_errors():
            replies = pipe.execute() if len(pipe) else []
        return Activity(
            listings=self._timelines(replies[: len(sellers)]),
            friend_likes=self._timelines(replies[len(sellers) : len(sellers) + len(friends)]),
            trending=self.items.codes(replies[-1], add=True) if trending_limit > 0 else np.zeros(0, np.int32),
        )

    def _standalone_activity(
        self, sellers: list[str], friends: list[str], listing_limit: int, like_limit: int, trending_limit: int
    ) -> Activity:
        """The timelines this process's copy holds, and one script call for the rest."""
        tags = [f"s:{s}" for s in sellers] + [f"u:{f}" for f in friends]
        limits = [listing_limit] * len(sellers) + [like_limit] * len(friends)
        cache = self._cache
        kept = [None if cache is None else cache.timeline(tag, limit) for tag, limit in zip(tags, limits)]
        kept_trending = None if cache is None else cache.timeline("t", trending_limit)
        trending = None if kept_trending is None else kept_trending[0].copy()  # the kept array is not the caller's to change
        missing = [at for at, timeline in enumerate(kept) if timeline is None]
        if missing or trending is None:
            generation = None if cache is None else cache.generation
            # The copy keeps more listings than this page needs, for the deeper pages to come.
            listings_read = listing_limit if cache is None else read_ahead(listing_limit, self.listings_bound)
            fetched, fetched_trending, seq = self._read_timelines(
                [tags[at] for at in missing], sum(at < len(sellers) for at in missing), listings_read, like_limit,
                trending_limit if trending is None else 0,
            )  # fmt: skip
            for at, (codes, times) in zip(missing, fetched):
                kept[at] = codes[: limits[at]], times[: limits[at]]
            read_trending = trending is None
            if read_trending:
                trending = fetched_trending
            if cache is not None:
                fill = cache.begin_fill(seq, generation)
                read_limits = [listings_read if at < len(sellers) else like_limit for at in missing]
                cache.keep_timelines(fill, {tags[at]: (limit, *timeline) for at, limit, timeline in zip(missing, read_limits, fetched)})
                if read_trending:
                    cache.keep(fill, {"t": (trending_limit, trending.copy(), np.zeros(len(trending)))})
        lengths = np.fromiter((len(codes) for codes, _ in kept), np.int64, len(kept))
        codes = np.concatenate([codes for codes, _ in kept]) if kept else np.zeros(0, np.int32)
        times = np.concatenate([times for _, times in kept]) if kept else np.zeros(0)
        owners = np.repeat(np.arange(len(kept), dtype=np.int32), lengths)
        split = int(lengths[: len(sellers)].sum())
        return Activity(
            listings=Timelines(codes[:split], times[:split], owners[:split]),
            friend_likes=Timelines(codes[split:], times[split:], owners[split:] - len(sellers)),
            trending=trending,
        )

    def _read_timelines(
        self, tags: Sequence[str], sellers: int, listing_limit: int, like_limit: int, trending_limit: int, client: Any = None
    ) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray, int]:
        """Standalone, one command: the newest (codes, times) of each list ``tags`` names
        (the first ``sellers`` listings, then recent likes), the trending items, and the
        change log's sequence number they are at."""
        k = self.keys
        keys = [k.listings(tag[2:]) if at < sellers else k.recent_likes(tag[2:]) for at, tag in enumerate(tags)]
        keys += [k.trending, k.change_seq]
        with unavailable_on_redis_errors():
            lengths_text, members, scores_text, trending, seq = self._eval_keys(
                "activity", keys, [sellers, listing_limit, like_limit, trending_limit], client
            )
        lengths = np.array(lengths_text.split(","), dtype=np.int64) if lengths_text else np.zeros(0, np.int64)
        codes, times = self.items.codes(members, add=True), _negated_times(scores_text)
        ends = np.cumsum(lengths).tolist()
        starts = [0, *ends[:-1]]
        timelines = [(codes[start:end], times[start:end]) for start, end in zip(starts, ends)]
        return timelines, self.items.codes(trending, add=True), int(seq)

    def _timelines(self, replies: Sequence[list[tuple[str, float]]]) -> Timelines:
        """Newest-first sorted-set replies (member, -time), the i-th owned by key i."""
        lengths = [len(reply) for reply in replies]
        pairs = [pair for reply in replies for pair in reply]
        return Timelines(
            self.items.codes([member for member, _ in pairs], add=True),
            -np.array([score for _, score in pairs], dtype=np.float64),
            np.repeat(np.arange(len(replies), dtype=np.int32), lengths),
        )

    def hydrate(self, user_id: str, item_codes: np.ndarray) -> ItemColumns:
        codes = np.asarray(item_codes, dtype=np.int64)
        n = len(codes)
        if not n:
            return ItemColumns.empty()
        k = self.keys
        with unavailable_on_redis_errors():
            if self.is_cluster:
                ids = self.items.ids(codes.tolist())
                parts = [(rows, split_frames(text, len(rows))) for rows, text in self._on_item_nodes("packed", codes, ids)]
                frames = _gathered(parts, n)
                pipe = self._pipeline()
                pipe.hmget(k.liked(user_id), ids)
                pipe.zmscore(k.trending, ids)
                pipe.get(k.vacations_version)
                pipe.hmget(k.views(user_id), ids)
                pipe.zmscore(k.seen(user_id), ids)
                liked, trending, vacations_version, view_counts, last_views = pipe.execute()
                liked_flags = np.fromiter((ts is not None for ts in liked), bool, n)
                views = np.array([(v or "0").partition(",")[0] for v in view_counts], dtype=np.int64)
                viewed_at = np.array([v or 0.0 for v in last_views], dtype=np.float64)
                exists, numbers, seller, category = self._item_columns(frames)
                numbers[:, 6] = [v or 0.0 for v in trending]  # the packed layout's trending column
                away = self._away(self._vacations(vacations_version or ""), seller)
            else:
                exists, numbers, seller, category, liked_flags, views, viewed_at, away = self._hydrate_standalone(user_id, codes)
        return ItemColumns(
            exists=exists,
            seller=seller,
            created_at=numbers[:, 0].copy(),
            stock=_counts(numbers[:, 1]),
            like_count=_counts(numbers[:, 2]),
            liked=liked_flags,
            trending=numbers[:, 6].copy(),
            eligible=numbers[:, 3] != 0,
            seller_away_until=away,
            price=numbers[:, 4].copy(),
            ship_days=numbers[:, 5].copy(),
            category=category,
            views=views,
            viewed_at=viewed_at,
        )

    def _item_columns(self, frames: Frames) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(exists, numbers, seller codes, category codes) of packed values split into ``frames``."""
        seller = self._codes_or_none(self.sellers, frames.sellers)[frames.seller_of]
        category = self._codes_or_none(self.categories, frames.categories)[frames.category_of]
        return frames.exists, frames.numbers, seller, category

    def _hydrate_standalone(
        self, user_id: str, codes: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Standalone hydration, (exists, numbers, seller codes, category codes, liked,
        views, viewed_at, seller_away_until), in at most one round trip of plain commands:
        what this process's copy lacks of the items' packed values, the user's liked and
        views hashes and the vacations hash (without a copy: the vacations' version, which
        tells when to refresh this process's copy of the hash: ``_vacations``).

        Plain commands rather than one script: a script spent four times Redis's CPU on
        the same reads, moving the item ids into Lua and back. The user's two hashes are
        read whole (one HSCAN call each) rather than at every candidate: a few dozen
        entries instead of a few hundred ids sent and a few hundred nils back
        (benchmarks/README.md, "2026-12-04 (later)"). A hash too large for one call, an item
        missing from the hash of packed values, or a view count written before its time
        joined it costs a second round trip (the last two: an older layout, which
        ``serving repack`` and the next view rewrite).
        """
        k, cache, n = self.keys, self._cache, len(codes)
        if cache is None:
            known, numbers = np.zeros(n, bool), np.empty((n, PACKED_NUMBERS))
            seller, category = np.empty(n, np.int32), np.empty(n, np.int32)
            hashes = vacations = None
        else:
            known, numbers, seller, category = cache.items(codes)
            hashes, vacations = cache.entry(f"h:{user_id}"), cache.entry("v")
        missing = np.flatnonzero(~known)
        fetch = self.items.ids(codes[missing].tolist())
        pipe = self.client.pipeline(transaction=False)
        if cache is not None and (fetch or hashes is None or vacations is None):
            pipe.execute_command("GET", k.change_seq)  # before the values: they are at least this new
        if fetch:
            pipe.execute_command("HMGET", k.packed_items, *fetch, **{NEVER_DECODE: True})
        if hashes is None:
            pipe.execute_command("HSCAN", k.liked(user_id), 0, "COUNT", USER_HASH_SCAN)
            pipe.execute_command("HSCAN", k.views(user_id), 0, "COUNT", USER_HASH_SCAN)
        if cache is None:
            pipe.get(k.vacations_version)
        elif vacations is None:
            pipe.hgetall(k.vacations)
        asked = len(pipe)
        generation = None if cache is None else cache.generation
        replies = iter(pipe.execute() if asked else [])
        fill = cache.begin_fill(int(next(replies) or 0), generation) if cache is not None and asked else None
        exists = known  # a copy: the cache's gather or a new array
        if fetch:
            packed = next(replies)
            unpacked = [at for at, value in enumerate(packed) if value is None]
            if unpacked:
                found = self._eval_keys("unpacked", [k.trending], [k.prefix, *(fetch[at] for at in unpacked)])
                for at, value in zip(unpacked, found):
                    packed[at] = value.encode() if value is not None else None
            fetched = self._item_columns(split_values(packed))
            for column, values in zip((exists, numbers, seller, category), fetched):
                column[missing] = values
            if fill is not None:
                present = fetched[0]
                cache.keep_items(fill, codes[missing[present]], *(values[present] for values in fetched[1:]))
        if hashes is None:
            liked_scan, views_scan = next(replies), next(replies)
            hashes = self._user_hashes(user_id, liked_scan, views_scan)
            if fill is not None and hashes is not None:
                cache.keep(fill, {f"h:{user_id}": hashes})
        if cache is None:
            vacations = self._vacations(next(replies) or "")
        elif vacations is None:
            vacations = ({seller_id: float(end) for seller_id, end in next(replies).items()}, [np.zeros(0)])
            cache.keep(fill, {"v": vacations})
        away = self._away(vacations, seller)
        if hashes is None:  # a hash too large for one call: HMGET the candidates
            return exists, numbers, seller, category, *self._user_rows_by_hmget(user_id, codes), away
        liked_codes, view_codes, view_counts, view_times = hashes
        liked = _rows_of(liked_codes, codes)[0]
        rows, at = _rows_of(view_codes, codes)
        views, viewed_at = np.zeros(n, np.int64), np.zeros(n)
        views[rows], viewed_at[rows] = view_counts[at], view_times[at]
        liked_flags = np.zeros(n, bool)
        liked_flags[liked] = True
        return exists, numbers, seller, category, liked_flags, views, viewed_at, away

    def _user_hashes(
        self, user_id: str, liked_scan: tuple[int, dict[str, str]], views_scan: tuple[int, dict[str, str]]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        """The user's liked items, and viewed items with their counts and last views, by
        code (each sorted by code), from HSCAN's first calls; None when a hash was too
        large for one call."""
        if liked_scan[0] or views_scan[0]:
            return None
        liked_codes = np.sort(self.items.codes(list(liked_scan[1]), add=True).astype(np.int64))
        viewed = views_scan[1]
        if not viewed:
            return liked_codes, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
        view_codes = self.items.codes(list(viewed), add=True).astype(np.int64)
        counts, times = self._view_counts_and_times(user_id, list(viewed), list(viewed.values()))
        order = np.argsort(view_codes, kind="stable")
        return liked_codes, view_codes[order], counts[order], times[order]

    def _view_counts_and_times(self, user_id: str, items: list[str], values: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The user's views of ``items`` and the last one's time, from their views-hash
        ``values`` ("COUNT,TIME"); a bare COUNT, written before times joined it, takes its
        time from the seen set (one ZMSCORE for all of them)."""
        counts_only = [at for at, value in enumerate(values) if "," not in value]
        if counts_only:
            values = list(values)
            times = self.client.zmscore(self.keys.seen(user_id), [items[at] for at in counts_only])
            for at, seen_at in zip(counts_only, times):
                values[at] += f",{seen_at or 0!r}"
        viewing = joined_floats(",".join(values)).reshape(-1, 2)
        return viewing[:, 0].astype(np.int64), viewing[:, 1].copy()

    def _user_rows_by_hmget(self, user_id: str, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(liked, views, viewed_at) of ``codes``, read at each candidate (a user whose
        hashes one HSCAN call could not read whole)."""
        k, n = self.keys, len(codes)
        ids = self.items.ids(codes.tolist())
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(k.liked(user_id), ids)
        pipe.hmget(k.views(user_id), ids)
        liked, viewed = pipe.execute()
        views, viewed_at = np.zeros(n, np.int64), np.zeros(n)
        rows = [at for at, value in enumerate(viewed) if value is not None]
        if rows:
            views[rows], viewed_at[rows] = self._view_counts_and_times(user_id, [ids[at] for at in rows], [viewed[at] for at in rows])
        return np.fromiter((ts is not None for ts in liked), bool, n), views, viewed_at

    def _on_item_nodes(self, name: str, item_codes: np.ndarray, ids: Sequence[str]) -> list[tuple[np.ndarray, Any]]:
        """Cluster: script ``name`` (ARGV the key prefix then item ids) run once on each
        primary over the items it holds; (rows of ``ids``, reply) per node.

        One command per node instead of one per item: redis-py spends about 25 µs of client
        CPU on each pipelined command, 10 ms for a feed's candidates. A script without a
        shebang may read keys of several slots as long as its node holds them; when the
        slots moved since the client last looked, the slot map is refreshed and the call
        retried once. A node that still refuses is moving one of those slots away (a
        reshard): its items are read one by one, each where it is now (``_on_item_moving``).
        """
        manager = self.client.nodes_manager
        codes = np.asarray(item_codes, dtype=np.int64)
        for attempt in (1, 2):
            owner, nodes = self._placement.owners(manager)
            node_of = owner[self._placement.slots(codes, ids)]
            if (node_of < 0).any():
                raise SlotNotCoveredError("a slot of the feed's items is not covered by the cluster")
            replies = []
            try:
                for node in np.unique(node_of).tolist():
                    rows = np.flatnonzero(node_of == node)
                    args = [self.keys.prefix, *(ids[row] for row in rows.tolist())]
                    try:
                        replies.append((rows, self._eval_keys(name, [], args, nodes[node].redis_connection)))
                    except ResponseError as error:
                        if attempt == 1 or "non local key" not in str(error):
                            raise
                        replies.extend((rows[at : at + 1], self._on_item_moving(name, ids[row], nodes[node].redis_connection))
                                       for at, row in enumerate(rows.tolist()))  # fmt: skip
                return replies
            except ResponseError as error:
                if attempt == 2 or "non local key" not in str(error):
                    raise
                manager.initialize()
        raise AssertionError("unreachable")

    def _on_item_moving(self, name: str, item_id: str, node: redis.Redis) -> Any:
        """Script ``name`` over one item, on ``node`` (its slot's owner) when it holds the
        item's keys, else on the node its slot is migrating to: ``node`` answers a command for
        a key it no longer holds with ASK and that node's address, and the node importing
        the slot serves a command after ASKING (redis-py does this for single-key commands,
        not for a script that names its keys in ARGV)."""
        args = [self.keys.prefix, item_id]
        try:
            return self._eval_keys(name, [], args, node)
        except ResponseError as error:
            if "non local key" not in str(error):
                raise
        try:
            node.exists(self.keys.item(item_id))
            importer = None  # it holds the item's keys again: the slot moved back meanwhile
        except AskError as moved:
            importer = self.client.get_node(moved.host, moved.port)  # None: a node the client does not know yet
        if importer is None:
            raise StoreUnavailable(f"the slot of item {item_id} moved while it was read; retrying is safe")
        pipe = self.client.get_redis_connection(importer).pipeline(transaction=False)
        pipe.execute_command("ASKING")
        pipe.execute_command("EVAL", self._sources[name], 0, *args)  # once per moving item: no SCRIPT LOAD on the importer
        return pipe.execute()[1]

    @staticmethod
    def _codes_or_none(vocabulary: Vocabulary, ids: Sequence[str]) -> np.ndarray:
        """Codes of ``ids`` (learning new ones), -1 for an empty id."""
        codes = vocabulary.codes(ids, add=True)
        codes[np.fromiter((not i for i in ids), bool, len(ids))] = -1
        return codes

    def _vacations(self, version: str) -> tuple[dict[str, float], list[np.ndarray]]:
        """Seller -> end of their vacation, as of the vacations' ``version`` or later, and
        a holder of those ends by seller code (``_away``).

        Every change of the vacations hash increments its version, read in the same
        round trip as the feed's items: this process keeps a copy and reads the whole hash
        again (one HGETALL) only when the version moved. A per-seller lookup inside Redis
        would need each packed value split there.
        """
        copy = self._vacation_copy
        if version != copy[0]:
            fresh = self.client.hgetall(self.keys.vacations)
            copy = self._vacation_copy = (version, {seller: float(end) for seller, end in fresh.items()}, [np.zeros(0)])
        return copy[1], copy[2]

    def _away(self, vacations: tuple[dict[str, float], list[np.ndarray]], seller: np.ndarray) -> np.ndarray:
        """The end of the vacation of each seller code (-1: none), 0 for none, from
        ``vacations`` (``_vacations``): the ends by code are looked up once per seller."""
        until, holder = vacations
        if not until:
            return np.zeros(len(seller))
        ends = holder[0]
        if len(ends) < len(self.sellers):  # sellers met since: look theirs up once
            more = [until.get(self.sellers.id(code), 0.0) for code in range(len(ends), len(self.sellers))]
            ends = holder[0] = np.concatenate([ends, more])
        return np.where(seller >= 0, ends[np.maximum(seller, 0)], 0.0)

    def read_cards(self, item_codes: np.ndarray) -> list[ItemCard]:
        return self._read_cards(item_codes)

    def _read_cards(self, item_codes: np.ndarray, client: Any = None) -> list[ItemCard]:
        codes = np.asarray(item_codes).tolist()
        if not codes:
            return []
        cache = self._cache
        cards = [None] * len(codes) if cache is None else cache.cards(codes)
        missing = [at for at, card in enumerate(cards) if card is None]
        if not missing:
            return cards
        missing_codes = [codes[at] for at in missing]
        ids = self.items.ids(missing_codes)
        width = len(_CARD_FIELDS)
        generation = None if cache is None else cache.generation
        with unavailable_on_redis_errors():
            if self.is_cluster:
                flat = [None] * (len(ids) * width)
                for rows, reply in self._on_item_nodes("cards", np.asarray(missing_codes), ids):
                    for at, row in enumerate(rows.tolist()):
                        flat[row * width : (row + 1) * width] = reply[at * width : (at + 1) * width]
            else:
                *flat, seq = self._eval_keys("cards", [self.keys.change_seq], [self.keys.prefix, *ids], client)
        fetched = {codes[at]: _card(dict(zip(_CARD_FIELDS, flat[j * width : (j + 1) * width]))) for j, at in enumerate(missing)}
        if cache is not None:
            cache.keep(cache.begin_fill(int(seq), generation), fetched)
        return [card if card is not None else fetched[code] for card, code in zip(cards, codes)]

    # -- writes ------------------------------------------------------------------------

    def item_id_batches(self, batch: int = 1_000) -> Iterator[list[str]]:
        """Every stored item's id, ``batch`` at a time (SCAN: items written meanwhile may
        or may not be seen)."""
        k = self.keys
        ids: list[str] = []
        for key in scan_keys(self.client, k.item_pattern, batch):
            ids.append(k.item_id_of(key))
            if len(ids) == batch:
                yield ids
                ids = []
        if ids:
            yield ids

    def repack_items(self, item_ids: Sequence[str]) -> list[str | None]:
        """Rebuild these items' packed values from their fields (a Redis written by an
        older layout); each item atomically, as its writes do. Per item, its seller when
        it is in stock (whose listings hold it: ``rebuild_listings``), else None."""
        with unavailable_on_redis_errors():
            return self._on_items("repack_node" if self.is_cluster else "repack", list(item_ids), 1)

    def check_every_primary_holds_data(self) -> None:
        """Cluster: DataLost (``_refuse_without_data``) when a primary lacks its data
        marker while another holds its own: it came back empty, and its items would read
        as missing."""
        if not self.is_cluster:
            return
        with unavailable_on_redis_errors():
            marked = self._primaries_marked()
            lost = [node for node, present in marked.items() if not present]
            if lost and len(lost) < len(marked):
                self._refuse_without_data(lost[0])

    def listed_seller_ids(self, batch: int = 1_000) -> Iterator[str]:
        """Every seller with a listings set (SCAN, ``batch`` keys per step)."""
        k = self.keys
        for key in scan_keys(self.client, k.listings_pattern, batch):
            yield k.seller_id_of(key, "listings")

    def rebuild_listings(self, candidates: Mapping[str, Sequence[str]], batch: int = 1_000) -> Relisted:
        """Make each seller's listings set in ``candidates`` what ingests keep it: its newest
        ``listings_kept`` in-stock items (a Redis written before the sets held in-stock items
        only). ``candidates``: seller -> the items found in stock under it (``repack_items``);
        the items its set holds are read too. Items are read ``batch`` per script call.

        Each set changes atomically, by one script that removes and adds the items chosen
        from their fields read just before (on a cluster the items live on other nodes
        than their seller's set, so no one script can read both). An ingest that changes
        one of those items in between lists or unlists it before that script runs, which
        would undo it: so the items removed or added are read again after, and a seller
        with one whose listing changed meanwhile is rebuilt again, up to REBUILD_ATTEMPTS
        times (an item changed twice meanwhile is as read, so the set is right). Items
        not removed or added are left to the ingests' own writes."""
        changed: set[str] = set()
        removed = added = 0
        left = dict(candidates)
        with unavailable_on_redis_errors():
            for _ in range(REBUILD_ATTEMPTS):
                if not left:
                    break
                changes, read = self._listing_changes(left, batch)
                gone, new = self._relist(changes)
                changed.update(changes)
                removed, added = removed + gone, added + new
                touched = {seller: [*drop, *(item for item, _ in add)] for seller, (drop, add) in changes.items()}
                distinct = list(dict.fromkeys(item for items in touched.values() for item in items))
                now = dict(zip(distinct, self._listings_of(distinct, batch)))
                left = {seller: [*left[seller], *items] for seller, items in touched.items() if any(now[item] != read[item] for item in items)}
        return Relisted(len(changed), removed, added, list(left))

    def _listing_changes(
        self, candidates: Mapping[str, Sequence[str]], batch: int
    ) -> tuple[dict[str, tuple[list[str], list[tuple[str, str]]]], dict[str, tuple[str, str] | None]]:
        """Per seller whose set is not its newest in-stock items: (items to remove, (item,
        listing time) to add); and the listing read of each item looked at."""
        sellers = list(candidates)
        pipe = self._write_pipeline()
        for seller in sellers:
            pipe.zrange(self.keys.listings(seller), 0, -1)
        listed = dict(zip(sellers, pipe.execute()))
        ids = list(dict.fromkeys(item for seller in sellers for item in (*listed[seller], *candidates[seller])))
        read = dict(zip(ids, self._listings_of(ids, batch)))
        bound = listings_kept(self.listings_bound)
        changes = {}
        for seller in sellers:
            kept = _newest_listings(seller, {*listed[seller], *candidates[seller]}, read, bound)
            held = set(listed[seller])
            drop = [item for item in listed[seller] if item not in kept]
            add = [(item, created) for item, created in kept.items() if item not in held]
            if drop or add:
                changes[seller] = (drop, add)
        return changes, read

    def _listings_of(self, item_ids: list[str], batch: int) -> list[tuple[str, str] | None]:
        """Per item, (its seller, its listing time) when it is in stock, else None."""
        found: list[tuple[str, str] | None] = []
        for start in range(0, len(item_ids), batch):
            flat = self._on_items("listings_of", item_ids[start : start + batch], 2)
            found.extend(None if seller is None else (seller, created) for seller, created in zip(flat[::2], flat[1::2]))
        return found

    def _relist(self, changes: Mapping[str, tuple[list[str], list[tuple[str, str]]]]) -> tuple[int, int]:
        """Remove and add the items ``changes`` names, one script per seller, pipelined;
        (removed, added)."""
        if not changes:
            return 0, 0
        name = "relist_node" if self.is_cluster else "relist"
        bound = str(listings_kept(self.listings_bound))
        for attempt in (0, 1):
            # The second time, after a NoScriptError, the script itself (see _eval_keys).
            script = ("EVALSHA", self._sha(name, self.write_client)) if attempt == 0 else ("EVAL", self._sources[name])
            pipe = self._write_pipeline()
            for seller, (drop, add) in changes.items():
                args = [self.keys.prefix, bound, seller, len(drop), *drop, *(value for pair in add for value in pair)]
                pipe.execute_command(*script, 1, self.keys.listings(seller), *args)
            try:
                replies = pipe.execute()
                break
            except NoScriptError:
                self._shas.clear()
        return sum(gone for gone, _ in replies), sum(new for _, new in replies)

    def _on_items(self, name: str, item_ids: list[str], width: int) -> list[Any]:
        """Script ``name`` (ARGV the key prefix then item ids, ``width`` reply values per
        item) over ``item_ids`` on the primaries: one call on a standalone Redis, one per
        node holding some on a cluster (``_on_item_nodes``); the values in ``item_ids``' order."""
        if not self.is_cluster:
            return self._eval_keys(name, [], [self.keys.prefix, *item_ids], self.write_client)
        flat: list[Any] = [None] * (len(item_ids) * width)
        for rows, reply in self._on_item_nodes(name, self.items.codes(item_ids, add=True), item_ids):
            for at, row in enumerate(rows.tolist()):
                flat[row * width : (row + 1) * width] = reply[at * width : (at + 1) * width]
        return flat

    def applied_event_ids(self, event_ids: Sequence[str]) -> set[str]:
        """Those marked "done" (a "pending" one is applied again in part when retried, and is checked as new)."""
        ids = list(dict.fromkeys(event_ids))
        with unavailable_on_redis_errors():
            pipe = self._write_pipeline()  # the primary: a replica may not have the mark yet
            for event_id in ids:
                pipe.get(self.keys.event_status(event_id))
            return {event_id for event_id, status in zip(ids, pipe.execute()) if status == "done"}

    def apply(self, events: Sequence[Event], min_replicas: int = 0) -> ApplyResult:
        """Apply a validated batch; see FeedStore.apply and the module docstring.

        Raises EventValidationError, before writing anything, for a like or stock update
        of an item that neither exists nor is upserted earlier in the batch, and for a
        graph edit past ``max_friends`` / ``max_follows``. With ``min_replicas``, returns
        once that many replicas of every primary written to hold the batch (NotReplicated
        when fewer confirm within ``wait_timeout_ms``); raises TooFewReplicas, before
        writing anything, when a primary it would wait on has fewer attached
        (``_check_replicas_attached``; on a cluster, once its validation read tells which).
        """
        if not events:
            return ApplyResult(applied=0, duplicates=0)
        if min_replicas < 0:
            raise EventValidationError(None, "min_replicas", "must be >= 0")
        if min_replicas and not self.is_cluster:
            self._check_replicas_attached(min_replicas)
        with self._naming_acl_refusals(), unavailable_on_redis_errors():
            if self.is_cluster:
                result, tags = self._apply_partitioned(events, min_replicas)
            else:
                weights = self._write_weights(events)
                chunked = sum(weights) > self.write_chunk
                result, tags = self._apply_chunked(events, weights) if chunked else self._apply_atomic(events), ["log"]
            if min_replicas:
                # Also for a batch whose events were all applied before: a retry after "not
                # replicated" was acknowledged with no replica holding it (and a failover then
                # lost it). On a cluster their earlier writes may be on any primary.
                self._wait_for_replicas(None if self.is_cluster and result.duplicates else tags, min_replicas)
            return result

    def _check_replicas_attached(self, min_replicas: int, primaries: Iterable[str | int] | None = None) -> None:
        """TooFewReplicas when one of ``primaries`` (None: every primary; standalone, the
        one server) has fewer than ``min_replicas`` replicas attached: its WAIT could never
        be met, and each retry would write the batch and wait ``wait_timeout_ms`` again.
        Read at most every REPLICAS_RECHECK_SECONDS; a primary whose count cannot be read
        is let through, and its WAIT decides as before."""
        read_at, attached = self._replicas_attached
        if time.monotonic() - read_at >= REPLICAS_RECHECK_SECONDS:
            attached = replicas_attached(self.wait_client)
            self._replicas_attached = (time.monotonic(), attached)
        checked = attached if primaries is None else [name for name in primaries if name in attached]
        short = sorted((attached[name], name) for name in checked if attached[name] < min_replicas)
        if short:
            count, name = short[0]
            replicas = f"{count} replica{'' if count == 1 else 's'} attached"
            raise TooFewReplicas(f"{min_replicas} asked, but the primary {name} has {replicas}",
                                 f"{min_replicas} asked, but a primary of the store has {replicas}")

    def _wait_for_replicas(self, tags: Sequence[str] | None, min_replicas: int) -> None:
        """Redis WAIT on each primary that holds one of ``tags`` (None: every primary).

        WAIT covers the writes of its own connection, and a pooled write may have used
        another: each primary gets a marker write and the WAIT on one connection. Its
        replication stream is ordered, so once replicas hold the marker they hold every
        write that finished before it, the batch's included. On a cluster the WAIT client's
        slot map is read again and the wait tried again, up to WAIT_MAP_REFRESHES times, when
        it names a node that moved or went away (after a failover it answered MOVED, INTERNAL,
        until a restart).
        """
        attempts = WAIT_MAP_REFRESHES + 1 if self.is_cluster else 1
        for attempt in range(attempts):
            try:
                return self._wait_on(self._wait_targets(tags), min_replicas)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, ResponseError, ClusterError) as error:
                if attempt + 1 == attempts:
                    # The batch is applied: only the confirmation was lost, and a retry is safe.
                    lost = "applied, but the replicas' confirmation did not arrive"
                    raise NotReplicated(f"{lost} ({error}); retrying is safe", f"{lost}; retrying is safe") from error
                # A failover moves a primary's whole slot range: read the map again (a MOVED
                # reply names one slot's owner only), after the nodes have had a moment to agree.
                time.sleep(0.05 * attempt)
                self.wait_client.nodes_manager.initialize()

    def _wait_targets(self, tags: Sequence[str] | None) -> list[tuple[Any, str]]:
        """(connection, marker key) per primary to WAIT on."""
        if not self.is_cluster:
            return [(self.wait_client, f"{self.keys.prefix}{{{tags[0] if tags else 'log'}}}:replicated")]
        if tags is None:  # a key of each primary's own: one whose slot it serves
            nodes = self.wait_client.get_primaries()
            slots = self.wait_client.nodes_manager.slots_cache
            keys = {}
            for tag in (f"r{n}" for n in range(4096)):
                key = f"{self.keys.prefix}{{{tag}}}:replicated"
                owner = slots[key_slot(key.encode())][0].name
                keys.setdefault(owner, key)
                if len(keys) == len(nodes):
                    break
            return [(self.wait_client.get_redis_connection(node), keys[node.name]) for node in nodes if node.name in keys]
        targets: dict[str, tuple[Any, str]] = {}
        for tag in tags:
            key = f"{self.keys.prefix}{{{tag}}}:replicated"
            node = self.wait_client.get_node_from_key(key)
            targets.setdefault(node.name, (self.wait_client.get_redis_connection(node), key))
        return list(targets.values())

    def _wait_on(self, targets: list[tuple[Any, str]], min_replicas: int) -> None:
        for client, key in targets:
            pipe = client.pipeline(transaction=False)
            pipe.set(key, "1", px=60_000)
            pipe.execute_command("WAIT", min_replicas, self.wait_timeout_ms)
            acked = int(pipe.execute()[1])
            if acked < min_replicas:
                raise NotReplicated(
                    f"applied, but {acked} of {min_replicas} replicas confirmed within {self.wait_timeout_ms} ms; retrying is safe"
                )

    def _sha(self, name: str, client: Any = None) -> str:
        sha = self._shas.get(name)
        if sha is None:  # the local, not the dict: another thread's NOSCRIPT may clear it meanwhile
            # On a cluster SCRIPT LOAD goes to every primary; standalone, to the client
            # the script runs on.
            loaded = (self.client if client is None or self.is_cluster else client).script_load(self._sources[name])
            sha = loaded if isinstance(loaded, str) else next(iter(loaded.values()))
            self._shas[name] = sha
        return sha

    def _eval(self, name: str, key: str, args: Sequence[str]) -> Any:
        return self._eval_keys(name, [key], args)

    def _eval_keys(self, name: str, keys: Sequence[str], args: Sequence[str], client: Any = None) -> Any:
        client = self.client if client is None else client
        try:
            return client.evalsha(self._sha(name, client), len(keys), *keys, *args)
        except NoScriptError:
            # The server restarted or failed over. EVAL sends the script itself to the node
            # that runs it: SCRIPT LOAD follows the client's slot map, which after a failover
            # may still name the old primary (and a replica does not pass scripts on), so
            # the next EVALSHA failed the same way for ever.
            self._shas.clear()
            return client.eval(self._sources[name], len(keys), *keys, *args)

    def _write(self, name: str, records: Sequence[str], consts: Sequence[str] | None = None) -> Any:
        """Run script ``name`` over flat event ``records`` (``_flat_records``) on the write
        connections. A batch brings this process's copy up to date with what it wrote
        (its reply's fourth part) while the copy is at most WRITER_CHANGES_BOUND tags behind,
        so a read right after sees it without a feed's sync."""
        consts = list(self._consts if consts is None else consts)
        cache = self._cache
        if name == "batch" and cache is not None:
            last = cache.seq
            consts[_LAST_ARG] = str(last)
        consts[_EXPECT_DATA_ARG] = "1" if self._holds_data else "0"
        keys = [self.keys.events, self.keys.data_marker_beside(self.keys.events)] if name == "log" else [self.keys.events]
        reply = self._eval_keys(name, keys, [*consts, *records], self.write_client)
        node = self._node_of(self.keys.events)
        if reply == ["no_data"]:
            self._refuse_without_data(node)
        self._refused_nodes.pop(node, None)
        if name == "log":  # the cluster's log script: a count
            return reply
        if name == "batch" and reply[0] == "ok":
            self._holds_data = True
            if cache is not None and len(reply) > 3:
                self._sync_written(cache, last, int(reply[3][0]), reply[3][1], reply[3][2])
        return reply

    @staticmethod
    def _sync_written(cache: ReadCache, last: int, seq: int, epoch: str, tags: list[str] | None) -> None:
        """Bring the writer's ``cache`` from ``last`` to ``seq`` with a batch's reply. Its tags
        left out only because the copy is more than WRITER_CHANGES_BOUND behind the same log,
        the copy stays as it is: the next feed's sync reads the log further back. Dropping
        it cost every Ingest of some 300 likes (by as many users) or more the whole copy."""
        if tags is None and epoch == cache.epoch and 0 <= last <= seq:
            return
        cache.sync(seq, epoch, tags)

    def _node_of(self, key: str) -> str:
        """HOST:PORT of the primary holding ``key``, for messages."""
        if self.is_cluster:
            return self.write_client.get_node_from_key(key).name
        return _node_name(self.write_client)

    def _refuse_without_data(self, found_on: str) -> NoReturn:
        """Raise StoreUnavailable: a write script (or, on a cluster, a slot's data marker) found
        Redis ``found_on`` without its data. The message names it and, on a cluster, every other
        primary without its first slot's marker, each with the state of its data, so the
        operator of a large cluster need not search; logged when ``found_on`` is newly refused."""
        newly_refused = found_on not in self._refused_nodes
        if newly_refused:
            # Looked up once per node refused, not per Ingest: reading every primary's marker
            # made each refused Ingest of a producer retrying 0.27 -> 3.6 ms.
            lost = self._primaries_without_data(found_on) if self.is_cluster else [found_on]
            self._refused_nodes = {node: self._refused_nodes.get(node) or self._data_state(node) for node in lost}
        refused = self._refused_nodes.copy()  # another Ingest's thread may drop a node meanwhile
        described = ", ".join(f"{node} ({state})" for node, state in refused.items())
        # A cluster's other primaries still hold their markers: a restarted server refuses too.
        or_restart = "" if self.is_cluster else ", or this server restarts"
        message = (f"Redis lost its data at {described} (restarted without it, or flushed); Ingest is refused, writing "
                   f"nothing, until it is loaded again: python -m serving load --data DIR --redis URL{or_restart}")  # fmt: skip
        if newly_refused:
            log.error("%s", message)
        raise DataLost(message)

    def _primaries_without_data(self, found_on: str) -> list[str]:
        """``found_on`` and each primary without its first slot's data marker, in slot order."""
        marked = self._primaries_marked()
        lost = {node for node, present in marked.items() if not present} | {found_on}
        order = list(marked)
        return sorted(lost, key=lambda node: order.index(node) if node in marked else -1)

    def _data_state(self, node: str) -> str:
        """What of ``node``'s data is left, for the refusal: on a cluster its slots and how many
        of their data markers it holds (one pipeline sent to it), else the missing epoch."""
        if not self.is_cluster:
            return "no change-log epoch"
        slots = [slot for slot, holders in sorted(self.write_client.nodes_manager.slots_cache.items())
                 if holders and holders[0].name == node]
        pipe = self.write_client.get_redis_connection(self.write_client.get_node(node_name=node)).pipeline(transaction=False)
        for slot in slots:
            pipe.exists(self.keys.data_marker(slot))
        left = sum(reply == 1 for reply in pipe.execute(raise_on_error=False))
        return f"slots {_slot_ranges(slots)}: {left} of {len(slots)} data markers left"

    @staticmethod
    def _flat_records(events: Sequence[Event]) -> list[str]:
        flat: list[str] = []
        for event in events:
            record = event.to_record()
            flat.extend(record[name] for name in RECORD_FIELDS)
        return flat

    def _raise_invalid(self, reply: list[Any], events: Sequence[Event], offset: int = 0) -> None:
        """Raise the EventValidationError a validating script replied, if any."""
        if reply[0] == "unknown_item":
            index = offset + int(reply[1])
            raise EventValidationError(index, "item_id", f"unknown item {events[index].item_id!r}")
        if reply[0] == "degree":
            _, index, field, what, user_id = reply
            bound = self.max_friends if what == "friends" else self.max_follows
            raise degree_error(offset + int(index), field, what, user_id, bound)

    def _apply_atomic(self, events: Sequence[Event]) -> ApplyResult:
        reply = self._write("batch", self._flat_records(events))
        self._raise_invalid(reply, events)
        return ApplyResult(applied=int(reply[1]), duplicates=int(reply[2]))

    def _write_weights(self, events: Sequence[Event]) -> list[int]:
        """Each event's share of an apply script's work, 1 for most. A share to all of a
        user's friends weighs 1 + the friends it reaches (their number now, plus the
        friendships the batch itself may add), each of whom it writes to: a user at the
        1,000-friend cap sharing 80 items made one script of 80,000 writes, over a second.
        An unlike weighs 1 + the user's likes / UNLIKE_READS_PER_EVENT, as it reads them
        all to refill the recent likes (``refill``): 400 by a user with 4,000 likes, too."""
        sharers = list(dict.fromkeys(e.user_id for e in events if e.kind is EventKind.SHARE and not e.friend_id))
        unlikers = list(dict.fromkeys(e.user_id for e in events if e.kind is EventKind.UNLIKE))
        if not sharers and not unlikers:
            return [1] * len(events)
        pipe = self._write_pipeline()
        for user_id in sharers:
            pipe.scard(self.keys.friends(user_id))
        for user_id in unlikers:
            pipe.hlen(self.keys.liked(user_id))
        replies = pipe.execute()
        friends = dict(zip(sharers, replies))
        likes = dict(zip(unlikers, replies[len(sharers) :]))
        for event in events:
            if event.kind is EventKind.FRIEND:
                for user_id in (event.user_id, event.friend_id):
                    if user_id in friends:
                        friends[user_id] += 1

        def weight(event: Event) -> int:
            if event.kind is EventKind.SHARE and not event.friend_id:
                return 1 + friends[event.user_id]
            if event.kind is EventKind.UNLIKE:
                return 1 + likes[event.user_id] // UNLIKE_READS_PER_EVENT
            return 1

        return [weight(event) for event in events]

    def _apply_chunked(self, events: Sequence[Event], weights: Sequence[int]) -> ApplyResult:
        """A batch of more than ``write_chunk`` ``weights``: validated whole by one read-only script,
        then applied by one atomic script per chunk, so Redis serves other clients (the
        reads of feeds) between chunks. Nothing is written unless the whole batch is
        valid; the ack comes after the last chunk. A failure in between leaves the first
        chunks applied and marked done (they are not acknowledged): a retry of the batch
        skips them as duplicates and converges to the state one atomic apply gives.
        The degree caps are checked by the validation (a concurrent batch may slip past
        them in between). A concurrent feed may see part of the batch while it is applied,
        but no item's or seller's state half-changed (``chunk_bounds``)."""
        records = self._flat_records(events)
        self._raise_invalid(self._write("validate", records), events)
        applied = duplicates = 0
        width = len(RECORD_FIELDS)
        for start, end in chunk_bounds([visibility_key(e) for e in events], self.write_chunk, weights):
            reply = self._write("batch", records[start * width : end * width], self._chunk_consts)
            self._raise_invalid(reply, events, start)  # only if the store changed under the batch
            applied, duplicates = applied + int(reply[1]), duplicates + int(reply[2])
        return ApplyResult(applied=applied, duplicates=duplicates)

    def _apply_partitioned(self, events: Sequence[Event], min_replicas: int) -> tuple[ApplyResult, list[str]]:
        """The cluster's apply; also the hash tags it wrote to (for ``_wait_for_replicas``).
        With ``min_replicas``, refuses before writing when a primary it will wait on has
        fewer replicas attached."""
        k = self.keys
        event_ids = list(dict.fromkeys(e.event_id for e in events))
        referenced = list(dict.fromkeys(e.item_id for e in events if e.kind in ITEM_REFERENCES))
        edges = list(dict.fromkeys(edge for e in events for edge in graph_edges(e)))
        owners = list(dict.fromkeys(edge[:2] for edge in edges))
        unlikers = list(dict.fromkeys(e.user_id for e in events if e.kind is EventKind.UNLIKE))
        marker_of = self._marker_per_primary(_written_tags(events))
        markers = list(marker_of.values())
        pipe = self._write_pipeline()
        for marker in markers:
            pipe.exists(marker)
        for event_id in event_ids:
            pipe.get(k.event_status(event_id))
        for item_id in referenced:
            pipe.exists(k.item(item_id))
        for what, user_id in owners:
            pipe.scard(k.user(user_id, what))
        for what, user_id, other in edges:
            pipe.sismember(k.user(user_id, what), other)
        for user_id in unlikers:
            pipe.hlen(k.liked(user_id))
        replies = iter(pipe.execute())
        self._check_slots_hold_data({marker: bool(next(replies)) for marker in markers})
        status = {event_id: next(replies) for event_id in event_ids}
        exists = {item_id: next(replies) for item_id in referenced}
        degrees = {owner: int(next(replies)) for owner in owners}
        present = {edge: bool(next(replies)) for edge in edges}
        likes = {user_id: int(next(replies)) for user_id in unlikers}

        fresh: list[int] = []
        seen: set[str] = set()
        for index, event in enumerate(events):
            if event.event_id in seen or status[event.event_id] == "done":
                continue
            seen.add(event.event_id)
            fresh.append(index)
        if min_replicas:
            # A batch with duplicates waits on every primary (see apply): check them all,
            # as its WAIT would fail on one short of replicas, a second later.
            self._check_replicas_attached(min_replicas, marker_of.keys() if len(fresh) == len(events) else None)

        first_error(
            lambda: check_references(events, fresh, lambda item: bool(exists[item])),
            lambda: check_degrees(
                events, fresh, lambda what, user: degrees[(what, user)], lambda *edge: present[edge], self.max_friends, self.max_follows
            ),
        )
        if not fresh:
            return ApplyResult(applied=0, duplicates=len(events)), []
        batch = [events[i] for i in fresh]

        # Intent first: once logged, a crash before "done" leaves the ids pending and a
        # retry re-applies the missing parts.
        unlogged = [e for e in batch if status[e.event_id] is None]
        for start in range(0, len(unlogged), self.write_chunk):
            self._write("log", self._flat_records(unlogged[start : start + self.write_chunk]))
        stage_one = _stage_one(batch)
        # An unlike reads all its user's likes (refill): weighed as in _write_weights.
        first = self._run_slot_ops(
            stage_one, (lambda op: 1 + likes[op[2]] // UNLIKE_READS_PER_EVENT if op[1] == "unlike" else 1) if unlikers else None
        )
        stage_two = _stage_two(batch, first)
        self._run_slot_ops(stage_two)
        pipe = self._write_pipeline()
        ttl = int(self._consts[3])
        for event in batch:
            pipe.set(k.event_status(event.event_id), "done", ex=ttl or None, get=True)
        # A sender racing this one with the same events read them pending too, and ran the
        # same parts (no-ops the second time): whoever marks an event done first applied it,
        # the others count it a duplicate (each reported it applied).
        done_before = sum(previous == "done" for previous in pipe.execute())
        return (ApplyResult(applied=len(fresh) - done_before, duplicates=len(events) - len(fresh) + done_before),
                ["log", *stage_one, *stage_two])  # fmt: skip

    def _check_slots_hold_data(self, found: dict[str, bool]) -> None:
        """Refuse a batch, before anything is written, when a slot it writes to lacks its data
        marker (``found``: marker -> present) and this process has seen the cluster hold
        data, or another primary holds its markers. On a cluster that never held data (never
        loaded, never written to), mark every slot, as a load would, and go on."""
        for marker, present in found.items():
            if present:
                self._holds_data = True
                self._refused_nodes.pop(self._node_of(marker), None)
        missing = [marker for marker, present in found.items() if not present]
        if not missing:
            return
        self._holds_data = self._holds_data or any(self._primaries_marked().values())
        if self._holds_data:
            self._refuse_without_data(self._node_of(missing[0]))
        mark_every_slot(self.write_client, self.keys)
        self._holds_data = True

    def _marker_per_primary(self, tags: set[str]) -> dict[str | int, str]:
        """For each primary holding one of ``tags``' slots (its HOST:PORT, or the slot when
        the slot map names no holder), the data marker of one of them: a primary that came
        back empty lost them all, and one marker read per primary keeps an Ingest's cost
        flat (one per slot cost a 500-event batch 15%: 82 -> 96 ms)."""
        slots_cache = self.write_client.nodes_manager.slots_cache
        slot_of_node: dict[str | int, int] = {}
        for tag in tags:
            slot = self.keys.tag_slot(tag)
            holders = slots_cache.get(slot)
            slot_of_node.setdefault(holders[0].name if holders else slot, slot)
        return {node: self.keys.data_marker(slot) for node, slot in slot_of_node.items()}

    def _primaries_marked(self) -> dict[str, bool]:
        """Whether each primary (HOST:PORT, in slot order) holds the data marker of the first
        slot the client maps to it."""
        first_slot: dict[str, int] = {}
        for slot, holders in sorted(self.write_client.nodes_manager.slots_cache.items()):
            if holders:
                first_slot.setdefault(holders[0].name, slot)
        pipe = self._write_pipeline()
        for slot in first_slot.values():
            pipe.exists(self.keys.data_marker(slot))
        return {node: bool(found) for node, found in zip(first_slot, pipe.execute())}

    def _run_slot_ops(self, ops: dict[str, list[list[str]]], weight: Callable[[list[str]], int] | None = None) -> dict[tuple[str, str], str]:
        """Run each tag's operations with one per-slot script call per chunk, calls pipelined;
        ``weight``: each operation's share of a call's work (default 1).

        Returns each operation's result by (tag, part id).
        """
        if not ops:
            return {}
        # One script call per chunk of a tag's operations, so none blocks its node long.
        calls: list[tuple[str, list[list[str]], int]] = []
        for tag, tag_ops in ops.items():
            weights = [1] * len(tag_ops) if weight is None else [weight(op) for op in tag_ops]
            for start, end in chunk_bounds([_op_visibility_key(op) for op in tag_ops], self.write_chunk, weights):
                calls.append((tag, tag_ops[start:end], sum(weights[start:end])))
        results: dict[tuple[str, str], str] = {}
        for round_calls in self._rounds(calls, weight is not None):
            results.update(self._run_calls(round_calls))
        return results

    def _rounds(self, calls: list[tuple[str, list[list[str]], int]], weighed: bool) -> list[list[tuple[str, list[list[str]]]]]:
        """``calls`` in pipelines to send one after the other: all in one, unless ``weighed``,
        then each of at most ``write_chunk`` weight but a single call. Redis runs the calls a
        pipeline brings in one read back to back, serving no one else: a pipeline of 31
        calls of 13 unlikes each (30 ms) held a node past a feed's read timeout."""
        if not weighed:
            return [[(tag, part) for tag, part, _ in calls]]
        rounds: list[list[tuple[str, list[list[str]]]]] = []
        held = self.write_chunk
        for tag, part, call_weight in calls:
            if held + call_weight > self.write_chunk:
                rounds.append([])
                held = 0
            rounds[-1].append((tag, part))
            held += call_weight
        return rounds

    def _run_calls(self, calls: list[tuple[str, list[list[str]]]]) -> dict[tuple[str, str], str]:
        """Run ``calls`` (tag, operations) as per-slot scripts in one pipeline; each operation's result."""
        consts = list(self._consts)
        consts[_EXPECT_DATA_ARG] = "1" if self._holds_data else "0"
        markers = [self.keys.data_marker(self.keys.tag_slot(tag)) for tag, _ in calls]
        for attempt in (0, 1):
            # The second time, after a NoScriptError, the script itself (see _eval_keys);
            # parts already run are no-ops the second time.
            script = ("EVALSHA", self._sha("slot")) if attempt == 0 else ("EVAL", self._sources["slot"])
            pipe = self._write_pipeline()
            for (tag, part), marker in zip(calls, markers):
                args = [*consts, self.keys.part_prefix(tag)]
                for op in part:
                    args.extend(op + [""] * (OP_WIDTH - len(op)))
                # Every key the call may touch, the parts' dedupe keys too: while a reshard
                # moves the slot, Redis then runs it only on a node holding all of them and
                # answers TRYAGAIN meanwhile. With one key (absent on the source) it ran on
                # the importing node, wrote keys the source still held there (their
                # MIGRATE then failed BUSYKEY and stopped the reshard) and read the
                # source's dedupe marks as absent.
                keys = [*self.keys.tag_keys(tag), *(self.keys.part_prefix(tag) + op[0] for op in part), marker]
                # ClusterPipeline blocks .evalsha(); the raw command is routed by its keys.
                pipe.execute_command(*script, len(keys), *keys, *args)
            try:
                replies = pipe.execute()
                break
            except NoScriptError:
                self._shas.clear()
        # A primary lost its data after _check_slots_hold_data read its marker: the parts
        # run elsewhere are applied, and a retry once it is loaded runs the rest.
        for marker, reply in zip(markers, replies):
            if reply == ["no_data"]:
                self._refuse_without_data(self._node_of(marker))
        return {(tag, op[0]): result for (tag, part), reply in zip(calls, replies) for op, result in zip(part, reply)}

    @contextmanager
    def _naming_acl_refusals(self) -> Iterator[None]:
        """A StoreForbidden raised inside, with what the ACL user may not run (``access_refusals``):
        Redis's reply to a script's command refused does not name it."""
        try:
            yield
        except StoreForbidden as error:
            with unavailable_on_redis_errors():
                refusals = self.access_refusals()
            if not refusals:  # a Redis before 7, or the ACL changed back meanwhile: Redis's own words
                raise
            raise StoreForbidden(f"{error}: {refusals_by_node(refusals)}", "; ".join(dict.fromkeys(refusals.values()))) from error

    def check_access(self) -> None:
        """Run, writing nothing, what every feed needs first: load each script (SCRIPT LOAD;
        on a cluster, on every primary) and read the change log through one (EVALSHA).
        Raises what redis-py raises: NoPermissionError, a ResponseError, when the ACL user
        may not run scripts or read the keys. Writes are not tried, but asked about
        (``access_refusals``): StoreForbidden naming what the user may not run."""
        for name in self._sources:
            self._sha(name)
        refusals = self.access_refusals()  # first: a script of no keys, it names a key refused
        if refusals:
            raise StoreForbidden(f"{refusals_by_node(refusals)}, which feeds and Ingest run")
        self._eval_keys("changes", self.keys.change_log_keys(), ["0"])

    def access_refusals(self) -> dict[str, str]:
        """What the ACL user may not run of what feeds and Ingest run (``access_probes``), by
        primary (HOST:PORT) asked; empty when it may run it all, or when Redis (before 7,
        without redis.acl_check_cmd) cannot tell."""
        return acl_refusals(self.client, access_probes(self.keys, self.is_cluster), lambda node, words: self._eval_keys("acl", [], words, node))

    # -- health ------------------------------------------------------------------------

    def ping(self) -> bool:
        """Whether the store can serve feeds: Redis answers, and a cluster covers every slot.

        A cluster's node answers PING while a slot has no primary (a primary down with no
        replica to take over, or one failing over): feeds fail then, so ask its state too.
        And its state stays ok for cluster-node-timeout (15 s by default) after a primary
        died, while every feed reading that primary's items fails: each primary is asked.
        """
        try:
            if self.is_cluster:
                self.ping_failure = self._cluster_failure()
            else:
                self.ping_failure = "" if self.client.ping() else "PING was not answered"
            if not self.ping_failure:
                self._recheck_eviction()
        except (RedisError, RedisClusterException, OSError) as error:
            self.ping_failure = f"{type(error).__name__}: {' '.join(str(error).split())}"
        return not self.ping_failure

    def _cluster_failure(self) -> str:
        """What of the cluster cannot serve feeds, "" when nothing: each primary of the slot
        map is asked its cluster_state (CLUSTER INFO), and named when it does not answer.

        Not one node (redis-py's default node): the node the client started from may have
        left the cluster since (its slots moved away, then `redis-cli --cluster del-node`),
        and answered cluster_state:fail for good while every feed was served. The map is read
        again before a failure counts: a primary replaced by its replica in a failover, or
        removed, is then no longer in it (no feed comes to refresh it while health says
        NOT_SERVING)."""
        failures = self._primary_failures()
        if failures:
            self.client.nodes_manager.initialize()
            failures = self._primary_failures()
        return "; ".join(dict.fromkeys(failures))

    def _primary_failures(self) -> list[str]:
        """Each primary of the client's slot map that does not answer, or not cluster_state:ok."""
        failures = []
        for node in self.client.get_primaries():
            try:
                state = self.client.get_redis_connection(node).cluster("info").get("cluster_state")
            except (RedisError, OSError) as error:
                failures.append(f"primary {node.name}: {type(error).__name__}: {' '.join(str(error).split())}")
            else:
                if state != "ok":
                    failures.append(f"cluster_state:{state}")
        return failures

    def read_eviction_policy(self) -> str | None:
        """``eviction_warning`` of this store's Redis, remembered: ``ping`` logs a later one that differs."""
        self._eviction = eviction_warning(self.client)
        self._eviction_read_at = time.monotonic()
        return self._eviction

    def _recheck_eviction(self) -> None:
        """Read the eviction policy again when the last read is EVICTION_RECHECK_SECONDS old;
        log a warning that differs from the last one (a CONFIG SET on a running Redis, a
        primary restarted with another config, or a first read after a start while Redis was
        down), and that every primary says noeviction when it does again."""
        if time.monotonic() - self._eviction_read_at < EVICTION_RECHECK_SECONDS:
            return
        before = self._eviction
        try:
            warning = self.read_eviction_policy()
        except (RedisError, RedisClusterException, OSError):
            # Not the health of feeds (a cluster's list of primaries may name one just
            # failed over): read it again a minute on.
            self._eviction_read_at = time.monotonic()
            return
        if warning and warning != before:
            log.warning("%s", warning)
        elif before and not warning:
            log.info("every primary of Redis has maxmemory-policy noeviction again")

    def close(self) -> None:
        for client in {id(c): c for c in (self.client, self.write_client, self.wait_client)}.values():
            client.close()


def _written_tags(events: Sequence[Event]) -> set[str]:
    """The hash tags of the slots a batch writes to, as far as its events tell: the log's,
    each named user's, item's and seller's, trending's for a like and the vacations' for a
    vacation. Not an upsert's former seller nor a share's recipients, which the first stage finds."""
    tags = {"log"}
    for event in events:
        tags.update(Keys.user_tag(user) for user in (event.user_id, event.friend_id) if user)
        if event.item_id:
            tags.add(Keys.item_tag(event.item_id))
        if event.seller_id:
            tags.add(Keys.seller_tag(event.seller_id))
        if event.kind in (EventKind.LIKE, EventKind.UNLIKE):
            tags.add(Keys.TRENDING_TAG)
        elif event.kind in (EventKind.SELLER_VACATION, EventKind.SELLER_VACATION_END):
            tags.add(Keys.VACATIONS_TAG)
    return tags


# -- the cluster's two stages ---------------------------------------------------------
# An operation is [part id, op name, args...]; the part id is unique per event and slot.


def _stage_one(batch: Sequence[Event]) -> dict[str, list[list[str]]]:
    """Operations that read or write only one user's or one item's state."""
    ops: dict[str, list[list[str]]] = defaultdict(list)
    user = Keys.user_tag
    for event in batch:
        e, kind, ts = event.event_id, event.kind, event.to_record()["ts"]
        if kind is EventKind.LIKE:
            ops[user(event.user_id)].append([f"{e}#like", "like", event.user_id, event.item_id, ts])
        elif kind is EventKind.UNLIKE:
            ops[user(event.user_id)].append([f"{e}#unlike", "unlike", event.user_id, event.item_id])
        elif kind in (EventKind.FOLLOW, EventKind.UNFOLLOW):
            ops[user(event.user_id)].append([f"{e}#{kind.value}", kind.value, event.user_id, event.seller_id])
        elif kind in (EventKind.FRIEND, EventKind.UNFRIEND):
            ops[user(event.user_id)].append([f"{e}#{kind.value}", kind.value, event.user_id, event.friend_id])
            ops[user(event.friend_id)].append([f"{e}#{kind.value}", kind.value, event.friend_id, event.user_id])
        elif kind is EventKind.NOT_INTERESTED_ITEM:
            ops[user(event.user_id)].append([f"{e}#hide_item", "hide_item", event.user_id, event.item_id])
        elif kind is EventKind.NOT_INTERESTED_SELLER:
            ops[user(event.user_id)].append([f"{e}#hide_seller", "hide_seller", event.user_id, event.seller_id])
        elif kind is EventKind.ITEM_UPSERT:
            r = event.to_record()
            ops[Keys.item_tag(event.item_id)].append(
                [f"{e}#upsert", "upsert", event.item_id, event.seller_id, r["created_at"], r["stock"], r["card"], ts]
            )
        elif kind is EventKind.ITEM_UPDATE:
            ops[Keys.item_tag(event.item_id)].append([f"{e}#update", "update", event.item_id, event.to_record()["card"]])
        elif kind is EventKind.SELLER_VACATION:
            ops[Keys.VACATIONS_TAG].append([f"{e}#vacation", "vacation", event.seller_id, event.to_record()["vacation_until"]])
        elif kind is EventKind.SELLER_VACATION_END:
            ops[Keys.VACATIONS_TAG].append([f"{e}#vacation_end", "vacation_end", event.seller_id])
        elif kind is EventKind.STOCK_UPDATE:
            ops[Keys.item_tag(event.item_id)].append([f"{e}#stock", "stock", event.item_id, str(event.stock)])
        elif kind is EventKind.VIEW:
            ops[user(event.user_id)].append([f"{e}#view", "view", event.user_id, event.item_id, ts])
        elif kind in ENGAGEMENTS:
            ops[user(event.user_id)].append([f"{e}#engage", "engage", event.user_id, event.item_id, ts, kind.value, event.friend_id])
    return ops


def _stage_two(batch: Sequence[Event], first: dict[tuple[str, str], str]) -> dict[str, list[list[str]]]:
    """Like counts, trending, listings (of in-stock items) and shares' recipients: what the
    first stage found decides them."""
    ops: dict[str, list[list[str]]] = defaultdict(list)
    trending = Keys.TRENDING_TAG
    for event in batch:
        e, kind = event.event_id, event.kind
        if kind is EventKind.LIKE and first[(Keys.user_tag(event.user_id), f"{e}#like")] == "1":
            ops[Keys.item_tag(event.item_id)].append([f"{e}#count", "count", event.item_id, "1"])
            ops[trending].append([f"{e}#trend", "trend", event.item_id, event.to_record()["ts"], ""])
        elif kind is EventKind.UNLIKE:
            liked_ts = first[(Keys.user_tag(event.user_id), f"{e}#unlike")]
            if liked_ts:
                ops[Keys.item_tag(event.item_id)].append([f"{e}#count", "count", event.item_id, "-1"])
                ops[trending].append([f"{e}#trend", "trend", event.item_id, liked_ts, "-"])
        elif kind is EventKind.ITEM_UPSERT:
            old, created, version = _upserted(first[(Keys.item_tag(event.item_id), f"{e}#upsert")], event)
            if old and old != event.seller_id:
                ops[Keys.seller_tag(old)].append([f"{e}#unlist", "unlist", old, event.item_id, version])
            if event.stock > 0:
                ops[Keys.seller_tag(event.seller_id)].append([f"{e}#list", "list", event.seller_id, event.item_id, created, version])
            else:  # a seller's listings are its in-stock items
                ops[Keys.seller_tag(event.seller_id)].append([f"{e}#unlist", "unlist", event.seller_id, event.item_id, version])
        elif kind is EventKind.STOCK_UPDATE:
            # '1' (the listing stays), or (seller, listing time, listing version) when the item
            # sold out or came back; no version from a part run before versions (kept for a retry)
            listing = first[(Keys.item_tag(event.item_id), f"{e}#stock")]
            if listing.startswith("["):
                seller, created, version = [*json.loads(listing), ""][:3]
                if event.stock > 0:
                    ops[Keys.seller_tag(seller)].append([f"{e}#list", "list", seller, event.item_id, created, version])
                else:
                    ops[Keys.seller_tag(seller)].append([f"{e}#unlist", "unlist", seller, event.item_id, version])
        elif kind is EventKind.SHARE:
            ts = event.to_record()["ts"]
            for recipient in json.loads(first[(Keys.user_tag(event.user_id), f"{e}#engage")]) or ():
                ops[Keys.user_tag(recipient)].append([f"{e}#shared", "receive_share", recipient, event.user_id, event.item_id, ts])
    return ops


def _op_visibility_key(op: list[str]) -> tuple[str, str] | None:
    """A slot operation's ``visibility_key``: the item or the seller whose state it changes."""
    if op[1] in ("upsert", "update", "stock"):
        return ("item", op[2])
    if op[1] in ("vacation", "vacation_end"):
        return ("seller", op[2])
    return None


def _upserted(result: str, event: Event) -> tuple[str, str, str]:
    """(old seller, listing time, listing version) from an upsert's first stage: a JSON
    list; from a part run before listing versions were kept (its result kept for a retry)
    a pair, version ""; before listing times, the old seller alone, the event naming the time."""
    if result.startswith("["):
        old, created, version = [*json.loads(result), ""][:3]
        return old, created, version
    record = event.to_record()
    return result, record["created_at"] or record["ts"], ""


__all__ = ["RedisStore", "connect", "split_url", "unavailable_on_redis_errors", "RECORD_FIELDS"]
