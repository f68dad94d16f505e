"""Every Redis key the feed uses, in one place.

Keys carry a hash tag per entity (``{u:ID}``, ``{i:ID}``, ``{s:ID}``), so on a Redis
Cluster each user's, item's and seller's keys live together in one slot while the
entities spread over the cluster. The per-user reads of a feed stay on one node; the
few global keys (``{trending}``, ``{vacations}``, ``{log}``) each sit in their own slot.

  user    {u:ID}:likes           zset item -> -ts, newest ``recent_likes`` likes (trimmed)
          {u:ID}:liked           hash item -> ts, every like (membership, unlike, export)
          {u:ID}:follows         set of seller ids
          {u:ID}:friends         set of user ids (both directions are stored)
          {u:ID}:hidden_items    set of item ids (not interested)
          {u:ID}:hidden_sellers  set of seller ids (not interested)
          {u:ID}:shared          zset JSON [item, sharer] -> -ts, the newest SHARED_BOUND shares
                                 friends sent the user (one per item and sharer, newest share)
          {u:ID}:seen            zset item -> time of the user's last view, newest SEEN_BOUND
          {u:ID}:views           hash item -> "COUNT,TIME": views since the user last engaged
                                 with it, and the last one's time (as in seen: one read
                                 gives a feed both; a bare COUNT, written before, is read
                                 with its time from seen)
          {u:ID}:engaged         hash JSON [kind, item, friend] -> ts: the user's shares,
                                 clicks, carts and purchases (for export and retraining)
  item    {i:ID}                 hash seller, created_at, stock, like_count, and the card
                                 fields an event named (title, image_url, price, currency,
                                 category, ship_days, feed_eligible "1"/"0"; absent: not
                                 set, eligible); stock 0 is the out-of-stock state;
                                 packed7: on a cluster, the fields a feed reads for every
                                 candidate, in one value that every write of the item
                                 refreshes (stores/redis.py, PACKED_FIELD);
                                 listing_v: on a cluster, a counter of the listing
                                 changes (sold out, back in stock, upserted) decided here
  seller  {s:ID}:listings        zset item -> -created_at of the seller's in-stock items,
                                 newest 2 x ``listings`` (trimmed; feeds read up to
                                 ``listings``): a sale to 0 removes one, a restock puts
                                 it back
          {s:ID}:listing_versions  cluster only: hash item -> the listing version (the
                                 item's listing_v) of the last listing change applied to
                                 the set, so an older one arriving late is not applied
  global  {trending}             zset item -> sum of trending_weight(ts) over its likes
          {vacations}            hash seller -> end of the vacation (Unix time, "inf")
          {vacations}:version    counter: every change of the vacations hash increments it,
                                 so a feed server's copy of the hash knows when to refresh
          {log}:events           stream: one entry per applied event (Event.to_record())
          {items}:packed7        hash item -> the item's packed value, its trending score
                                 included (standalone only: a cluster's feeds read each
                                 item's own); "{items}:packed" and the item field "packed",
                                 of the layout before, are no longer read
          {changes}:seq          counter: the tags ever added to the change log
          {changes}:epoch        when the change log began (reset: readers start afresh)
          {changes}:log          list of tags of what write scripts changed, the newest
                                 CHANGE_LOG_CAP (standalone only; stores/redis_cache.py)
  dedupe  d:{log}:EVENT_ID       "pending" / "done": the event id was logged / fully applied
          d:{TAG}:EVENT_ID#PART  cluster only: result of one part of an event in slot TAG
  marker  {N}:holds_data         cluster only, one per hash slot (N: the smallest number whose
                                 tag hashes to it): the slot holds the data (set by a load);
                                 absent, its primary came back empty and writes are refused

Sorted-set scores are negated times so that ascending rank order is "newest first,
ties by id ascending", the order the memory store uses; ZRANGE 0..n-1 reads the newest n.
Every key starts with a namespace prefix (default ``fr:``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

DEFAULT_PREFIX = "fr:"

USER_SUFFIXES = ("likes", "liked", "follows", "friends", "hidden_items", "hidden_sellers", "shared", "seen", "views", "engaged")


@dataclass(frozen=True)
class Keys:
    """Key builder for one namespace ``prefix``."""

    prefix: str = DEFAULT_PREFIX

    # -- per entity -------------------------------------------------------------------

    def user(self, user_id: str, what: str) -> str:
        """One of the user's keys; ``what`` is one of USER_SUFFIXES."""
        return f"{self.prefix}{{u:{user_id}}}:{what}"

    def recent_likes(self, user_id: str) -> str:
        return self.user(user_id, "likes")

    def liked(self, user_id: str) -> str:
        return self.user(user_id, "liked")

    def follows(self, user_id: str) -> str:
        return self.user(user_id, "follows")

    def friends(self, user_id: str) -> str:
        return self.user(user_id, "friends")

    def hidden_items(self, user_id: str) -> str:
        return self.user(user_id, "hidden_items")

    def hidden_sellers(self, user_id: str) -> str:
        return self.user(user_id, "hidden_sellers")

    def shared(self, user_id: str) -> str:
        return self.user(user_id, "shared")

    def seen(self, user_id: str) -> str:
        return self.user(user_id, "seen")

    def views(self, user_id: str) -> str:
        return self.user(user_id, "views")

    def engaged(self, user_id: str) -> str:
        return self.user(user_id, "engaged")

    def item(self, item_id: str) -> str:
        return f"{self.prefix}{{i:{item_id}}}"

    def listings(self, seller_id: str) -> str:
        return f"{self.prefix}{{s:{seller_id}}}:listings"

    def listing_versions(self, seller_id: str) -> str:
        return f"{self.prefix}{{s:{seller_id}}}:listing_versions"

    # -- global -----------------------------------------------------------------------

    @property
    def trending(self) -> str:
        return f"{self.prefix}{{trending}}"

    @property
    def vacations(self) -> str:
        return f"{self.prefix}{{vacations}}"

    @property
    def vacations_version(self) -> str:
        return f"{self.prefix}{{vacations}}:version"

    @property
    def packed_items(self) -> str:
        return f"{self.prefix}{{items}}:packed7"

    @property
    def changes(self) -> str:
        """The change log's keys' prefix: then "seq", "epoch" and "log"."""
        return f"{self.prefix}{{changes}}:"

    @property
    def change_seq(self) -> str:
        return self.changes + "seq"

    def change_log_keys(self) -> list[str]:
        """seq, epoch and log, in this order."""
        return [self.change_seq, self.changes + "epoch", self.changes + "log"]

    @property
    def events(self) -> str:
        return f"{self.prefix}{{log}}:events"

    def event_status(self, event_id: str) -> str:
        return f"{self.prefix}d:{{log}}:{event_id}"

    # -- cluster routing --------------------------------------------------------------

    @staticmethod
    def user_tag(user_id: str) -> str:
        return f"u:{user_id}"

    @staticmethod
    def item_tag(item_id: str) -> str:
        return f"i:{item_id}"

    @staticmethod
    def seller_tag(seller_id: str) -> str:
        return f"s:{seller_id}"

    TRENDING_TAG = "trending"
    VACATIONS_TAG = "vacations"

    def tag_keys(self, tag: str) -> list[str]:
        """Every key of ``tag``'s entity that a per-slot write script may read or write."""
        kind, _, entity = tag.partition(":")
        if tag == self.TRENDING_TAG:
            return [self.trending]
        if tag == self.VACATIONS_TAG:
            return [self.vacations, self.vacations_version]
        if kind == "u":
            return [self.user(entity, what) for what in USER_SUFFIXES]
        if kind == "i":
            return [self.item(entity)]
        if kind == "s":
            return [self.listings(entity), self.listing_versions(entity)]
        raise ValueError(f"not a per-slot tag: {tag!r}")

    def tag_slot(self, tag: str) -> int:
        """The hash slot of ``tag``'s keys. Redis hashes what lies between a key's first "{"
        and the next "}", so a brace in an id moves it: ``{u:a}b}:likes`` hashes "u:a", not
        the tag "u:a}b" hashed as a key of its own."""
        return key_slot(f"{self.prefix}{{{tag}}}".encode())

    def data_marker(self, slot: int) -> str:
        """The key in hash slot ``slot`` whose presence says the slot holds the data."""
        return f"{self.prefix}{{{slot_tags()[slot]}}}:holds_data"

    def data_marker_beside(self, key: str) -> str:
        """``data_marker`` of ``key``'s slot: a script may read it with ``key``."""
        return self.data_marker(key_slot(key.encode()))

    def part_prefix(self, tag: str) -> str:
        """Prefix of the per-slot dedupe keys of ``tag`` (event id and part follow)."""
        return f"{self.prefix}d:{{{tag}}}:"

    # -- export: patterns and parsing -------------------------------------------------

    @property
    def item_pattern(self) -> str:
        return f"{self.prefix}{{i:*"

    @property
    def listings_pattern(self) -> str:
        return f"{self.prefix}{{s:*}}:listings"

    @property
    def liked_pattern(self) -> str:
        return f"{self.prefix}{{u:*}}:liked"

    @property
    def follows_pattern(self) -> str:
        return f"{self.prefix}{{u:*}}:follows"

    @property
    def friends_pattern(self) -> str:
        return f"{self.prefix}{{u:*}}:friends"

    @property
    def engaged_pattern(self) -> str:
        return f"{self.prefix}{{u:*}}:engaged"

    def user_pattern(self, what: str) -> str:
        """Every user's ``what`` key (one of USER_SUFFIXES), for SCAN."""
        return f"{self.prefix}{{u:*}}:{what}"

    @property
    def timelines_pattern(self) -> str:
        """Every user's and seller's key, among them the recent likes and listings (one SCAN finds both)."""
        return f"{self.prefix}{{[us]:*"

    def item_id_of(self, key: str) -> str:
        return key[len(self.prefix) + 3 : -1]

    def user_id_of(self, key: str, what: str) -> str:
        return key[len(self.prefix) + 3 : -(len(what) + 2)]

    def seller_id_of(self, key: str, what: str) -> str:
        return self.user_id_of(key, what)  # "{s:" is as long as "{u:"


@functools.cache
def slot_tags() -> tuple[str, ...]:
    """A hash tag for each cluster hash slot: the smallest number that hashes to it (some
    110,000 numbers tried, 80 ms, once per process)."""
    tags: list[str | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
    left, number = REDIS_CLUSTER_HASH_SLOTS, 0
    while left:
        slot = key_slot(str(number).encode())
        if tags[slot] is None:
            tags[slot] = str(number)
            left -= 1
        number += 1
    return tuple(tags)
