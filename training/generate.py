"""Synthetic social-commerce data with the structure the feed sources rely on.

The generative story, step by step (all vectorised numpy, one seeded Generator):

1. Users fall into taste communities of uneven size, each with a latent centre; a user's
   latent taste vector is its community centre plus noise.
2. Sellers are a random subset of users. Their popularity is Pareto distributed and
   drives both how many items they list and how many followers they get.
3. Items belong to a seller and (mostly) to the seller's community, which is written as
   the ``category`` column. ``created_at`` is uniform over ``days`` before ``end_time``;
   about 5% are out of stock.
4. Friendships: a heavy-tailed degree per user, partners chosen preferentially by
   degree, mostly inside the user's community (homophily).
5. Follows: users follow sellers preferentially by popularity, mostly in-community.
6. Likes, first pass: some likes go to items of followed sellers, the rest to items
   picked by taste (community + latent affinity among a few candidates). Item choice is
   weighted by quality and recency, so newer items collect more likes; every like
   happens after the item was created.
7. Likes, second pass (social influence): a share of each user's likes copies a random
   like of a random friend, shortly after the friend's.
8. Cards and seller state, from a second Generator so that steps 1-7 stay what they
   were: a title from the category, an image URL, a price in EUR, ship days around the
   seller's usual dispatch time; a few items the seller keeps out of the feed, and a
   few sellers on vacation at ``end_time`` (half until further notice).
9. Engagement beyond likes, from a third Generator (likes and cards stay what they
   were). Shares follow friendship and taste: half of the likes copied from a friend in
   step 7 were prompted by that friend sharing the item with the user, between the
   friend's like and the user's; and a few likes are shared with all the liker's
   friends. Views: every like is preceded by a view, and each user also sees as many
   items picked by taste that they never like. Clicks precede most likes and a few of
   the other views; some likes go on to the cart and half of those to a purchase.

Same arguments, same seed -> byte-identical files.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from stores.events import MAX_UNIX_SECONDS
from training.dataset import (
    ENGAGEMENTS_FILE, FOLLOWS, FRIENDS, ITEMS, LIKES, MIN_UNIX_SECONDS, SELLERS, CsvColumns, Dataset, Edges,
    Engagements, Items, Sellers, edges_csv, engagements_csv, items_csv, sellers_csv, write_csv_tables,
)
from training.flag_types import bounded, output_directory

#: 2026-01-01T00:00:00Z, the default end of the simulated period.
DEFAULT_END_TIME = 1_767_225_600.0
#: Dimension of the latent taste vectors of users and items.
LATENT_DIM = 16
#: Share of friendships (initiated edges) that stay inside the initiator's community.
IN_COMMUNITY_FRIENDS = 0.8
#: Share of follows that go to a seller of the follower's own community.
IN_COMMUNITY_FOLLOWS = 0.7
#: Share of taste-driven likes that look inside the user's own community.
IN_COMMUNITY_TASTE = 0.75
#: Share of items that list under a community other than their seller's.
OFF_COMMUNITY_ITEMS = 0.1
#: Share of items that are out of stock.
OUT_OF_STOCK = 0.05
#: Share of a user's likes that go to items of sellers the user follows (if any).
FOLLOW_LIKES = 0.25
#: Share of a user's likes copied from friends' likes (if the user has friends).
SOCIAL_LIKES = 0.15
#: Pareto shape of seller popularity; lower is more skewed (1.16 is the "80/20" shape).
SELLER_PARETO_SHAPE = 1.2
#: Share of items their seller keeps out of the feed (feed_eligible 0).
INELIGIBLE_ITEMS = 0.03
#: Share of sellers on vacation at the end of the simulated period.
SELLERS_ON_VACATION = 0.02
_TITLE_WORDS = ("Vintage", "Handmade", "Classic", "Organic", "Minimal", "Retro", "Cozy", "Bold")
_TITLE_NOUNS = ("mug", "scarf", "lamp", "tote bag", "candle", "print", "necklace", "sneakers", "notebook", "planter")
#: Mean friend degree and mean number of followed sellers (both lognormal, heavy-tailed).
MEAN_FRIENDS = 8.0
MEAN_FOLLOWS = 5.0
#: Item recency weight exp(-age / (RECENCY_SCALE * period)).
RECENCY_SCALE = 1.0 / 3.0
#: Taste likes pick the best of this many popularity-sampled candidates (softmax).
TASTE_CANDIDATES = 8
#: Inverse temperature of that softmax over latent affinity (cosine in [-1, 1]).
TASTE_SHARPNESS = 4.0
#: Mean delay in seconds between a friend's like and the copied like.
SOCIAL_DELAY = 2 * 86400.0
#: Share of the likes copied from a friend that the friend's share prompted.
SHARE_PROMPTED_LIKES = 0.5
#: Share of likes the liker shares with all their friends.
SHARED_LIKES = 0.05
#: Share of likes with a click first, and of the unliked views with a click.
CLICKED_LIKES, CLICKED_VIEWS = 0.6, 0.08
#: Share of likes that go to the cart, and of carts that are bought.
CARTED_LIKES, BOUGHT_CARTS = 0.25, 0.5

_DAY = 86400.0
#: Engagement kinds, in sorted order: sorting kind codes sorts the rows as their names would.
_KIND_NAMES = np.array(["add_to_cart", "click", "purchase", "share", "view"], dtype=object)
_ADD_TO_CART, _CLICK, _PURCHASE, _SHARE, _VIEW = range(len(_KIND_NAMES))
_TITLES = np.array([f"{word} {noun}" for word in _TITLE_WORDS for noun in _TITLE_NOUNS], dtype=object)


def default_communities(users: int) -> int:
    """The community count used when none is given: grows like users ** (1/3)."""
    return int(min(64, max(2, round(users ** (1.0 / 3.0) / 2.0))))


def generate(
    users: int,
    sellers: int,
    items: int,
    likes_per_user: float = 20.0,
    communities: int | None = None,
    seed: int = 0,
    end_time: float = DEFAULT_END_TIME,
    days: int = 90,
    progress: bool = False,
    engagements: bool = True,
) -> Dataset:
    """A synthetic dataset (see the module docstring for the structure): that of
    :func:`generate_arrays`, with string ids."""
    return generate_arrays(users, sellers, items, likes_per_user, communities, seed, end_time, days, progress,
                           engagements).dataset()


def generate_arrays(
    users: int,
    sellers: int,
    items: int,
    likes_per_user: float = 20.0,
    communities: int | None = None,
    seed: int = 0,
    end_time: float = DEFAULT_END_TIME,
    days: int = 90,
    progress: bool = False,
    engagements: bool = True,
) -> GeneratedArrays:
    """A synthetic dataset (see the module docstring for the structure).

    Ids are ``u00042`` for users (sellers are users) and ``i000123`` for items; all
    times are integer Unix seconds within ``days`` before ``end_time`` (friendships and
    follows may be older). Likes are deduplicated, sorted by (ts, user, item) and never
    of the user's own listings, so the realised mean per user is slightly below
    ``likes_per_user``.

    Raises:
        ValueError: on sizes that cannot make a dataset (users < 2, sellers not in
            [1, users], items < 1, likes_per_user <= 0, days < 1, communities < 1).
    """
    if users < 2:
        raise ValueError(f"users must be >= 2, got {users}")
    if not 1 <= sellers <= users:
        raise ValueError(f"sellers must be in [1, users={users}], got {sellers}")
    if items < 1:
        raise ValueError(f"items must be >= 1, got {items}")
    if not likes_per_user > 0:
        raise ValueError(f"likes_per_user must be > 0, got {likes_per_user}")
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    n_comm = default_communities(users) if communities is None else int(communities)
    if n_comm < 1:
        raise ValueError(f"communities must be >= 1, got {communities}")

    rng = np.random.default_rng(seed)
    end = float(math.floor(end_time))
    span = float(days) * _DAY
    bar = tqdm(total=7, desc="generate", unit="step", disable=not progress, leave=False)

    # 1. communities and tastes
    comm_p = 1.0 / np.sqrt(np.arange(1, n_comm + 1))
    comm_p /= comm_p.sum()
    user_comm = rng.choice(n_comm, size=users, p=comm_p)
    centres = rng.standard_normal((n_comm, LATENT_DIM)).astype(np.float32)
    user_vec = _unit(centres[user_comm] + 0.8 * _normal(rng, users))
    bar.update()

    # 2-3. sellers and items
    seller_user = np.sort(rng.choice(users, size=sellers, replace=False))
    seller_comm = user_comm[seller_user]
    seller_pop = rng.pareto(SELLER_PARETO_SHAPE, size=sellers) + 1.0
    share = seller_pop / seller_pop.sum()
    if items >= sellers:
        listed = 1 + rng.multinomial(items - sellers, share)
    else:
        listed = rng.multinomial(items, share)
    item_seller = rng.permutation(np.repeat(np.arange(sellers), listed))
    item_comm = np.where(
        rng.random(items) < OFF_COMMUNITY_ITEMS,
        rng.choice(n_comm, size=items, p=comm_p),
        seller_comm[item_seller],
    )
    item_vec = _unit(centres[item_comm] + 0.8 * _normal(rng, items))
    # Leave the last hour free so every item can still be liked after it was created.
    created = end - span + np.floor(rng.random(items) * max(span - 3600.0, 1.0))
    stock = np.where(rng.random(items) < OUT_OF_STOCK, 0, rng.integers(1, 51, size=items))
    price = np.round(rng.lognormal(3.0, 0.8, size=items), 2)
    quality = rng.lognormal(0.0, 0.75, size=items)
    recency = np.exp(-(end - created) / (RECENCY_SCALE * span))
    item_w = quality * recency * seller_pop[item_seller] ** 0.25
    bar.update()

    # 4. friendships: each user initiates ~deg/2 edges, partners preferential by degree
    deg = _heavy_counts(rng, users, MEAN_FRIENDS, cap=users - 1)
    fa = np.repeat(np.arange(users), rng.poisson(deg / 2.0))
    fb = _homophilous_pick(rng, user_comm[fa], user_comm, deg.astype(np.float64), n_comm,
                           IN_COMMUNITY_FRIENDS)
    lo, hi = np.minimum(fa, fb), np.maximum(fa, fb)
    pair = np.unique((lo * users + hi)[lo != hi])
    fr_src, fr_dst = pair // users, pair % users
    fr_ts = end - np.floor(rng.random(len(pair)) * 4 * span)
    bar.update()

    # 5. follows: preferential by seller popularity, mostly in-community
    fol_n = _heavy_counts(rng, users, MEAN_FOLLOWS, cap=sellers, minimum=0)
    fo_user = np.repeat(np.arange(users), fol_n)
    fo_seller = _homophilous_pick(rng, user_comm[fo_user], seller_comm, seller_pop, n_comm,
                                  IN_COMMUNITY_FOLLOWS)
    key = np.unique((fo_user * sellers + fo_seller)[seller_user[fo_seller] != fo_user])
    fo_user, fo_seller = key // sellers, key % sellers
    fo_ts = end - np.floor(rng.random(len(key)) * 2 * span)
    bar.update()

    # 6. first-pass likes: followed sellers' items, else taste
    n_likes = _heavy_counts(rng, users, likes_per_user, cap=items, minimum=1, sigma=0.8)
    friend_ptr, friend_of = _adjacency(np.concatenate([fr_src, fr_dst]),
                                       np.concatenate([fr_dst, fr_src]), users)
    follow_ptr, followed = _adjacency(fo_user, fo_seller, users)
    n_friends = np.diff(friend_ptr)
    n_follows = np.diff(follow_ptr)
    n_social = np.where(n_friends > 0,
                        np.minimum(rng.binomial(n_likes, SOCIAL_LIKES), n_likes - 1), 0)
    base_user = np.repeat(np.arange(users), n_likes - n_social)
    base_item = np.full(len(base_user), -1, dtype=np.int64)

    via_follow = (rng.random(len(base_user)) < FOLLOW_LIKES) & (n_follows[base_user] > 0)
    u = base_user[via_follow]
    pick = follow_ptr[u] + (rng.random(len(u)) * n_follows[u]).astype(np.int64)
    base_item[via_follow] = _pick_in_groups(rng, followed[pick], item_seller, item_w, sellers)

    todo = np.flatnonzero(base_item < 0)
    base_item[todo] = _taste_pick(rng, base_user[todo], user_comm, user_vec, item_comm,
                                  item_vec, item_w, comm_p, n_comm)
    age_room = end - created[base_item] - 1.0
    # Squared uniform: most likes come soon after listing, a tail comes later.
    base_ts = created[base_item] + 1.0 + np.floor(age_room * rng.random(len(base_item)) ** 2)
    # A few hundred MB each at 1M users: freed before the steps that need as much again.
    del via_follow, u, pick, todo, age_room
    bar.update()

    # 7. second pass: copy a random friend's random first-pass like, a little later
    base_ptr = np.concatenate([[0], np.cumsum(n_likes - n_social)])
    soc_user = np.repeat(np.arange(users), n_social)
    friend = friend_of[friend_ptr[soc_user]
                       + (rng.random(len(soc_user)) * n_friends[soc_user]).astype(np.int64)]
    n_base = base_ptr[friend + 1] - base_ptr[friend]
    src_like = base_ptr[friend] + (rng.random(len(soc_user)) * n_base).astype(np.int64)
    soc_item = base_item[src_like]
    delay = rng.exponential(SOCIAL_DELAY, size=len(soc_user))
    soc_ts = np.minimum(base_ts[src_like] + 1.0 + np.floor(delay), end)
    prompted = (soc_user, friend, soc_item, base_ts[src_like], soc_ts)

    like_user = np.concatenate([base_user, soc_user])
    like_item = np.concatenate([base_item, soc_item])
    like_ts = np.concatenate([base_ts, soc_ts])
    del base_user, base_item, base_ts, base_ptr, n_base, src_like, delay, friend_of, followed
    own = seller_user[item_seller[like_item]] == like_user
    like_user, like_item, like_ts = _latest_likes_in_order(like_user[~own], like_item[~own], like_ts[~own], items)
    bar.update()

    # 9. engagement beyond likes
    engaged = _sorted_engagements(_engagements(
        np.random.default_rng([seed, 9]), (like_user, like_item, like_ts), prompted, n_friends, end, created,
        lambda users_: _taste_pick(np.random.default_rng([seed, 10]), users_, user_comm, user_vec, item_comm, item_vec, item_w, comm_p, n_comm),
        seller_user[item_seller],
    )) if engagements else tuple(np.zeros(0, dtype) for dtype in (np.int64, np.int64, np.uint8, np.float64, np.int64))  # fmt: skip
    bar.update()
    bar.close()

    card_rng = np.random.default_rng([seed, 8])
    word = card_rng.integers(len(_TITLE_WORDS), size=items)
    title = word * len(_TITLE_NOUNS) + (item_comm + card_rng.integers(0, 2, size=items)) % len(_TITLE_NOUNS)
    usual_ship_days = card_rng.integers(0, 8, size=sellers)
    ship_days = np.clip(usual_ship_days[item_seller] + card_rng.integers(-1, 2, size=items), 0, 14)
    away = np.flatnonzero(card_rng.random(sellers) < SELLERS_ON_VACATION)
    until = np.where(card_rng.random(len(away)) < 0.5, np.inf, end + np.floor(card_rng.uniform(1, 14, len(away))) * 86_400.0)
    return GeneratedArrays(
        users=users, items=items, communities=n_comm,
        item_seller=seller_user[item_seller], created=created.astype(np.float64), stock=stock.astype(np.int64),
        price=price.astype(np.float64), category=item_comm, title=title, ship_days=ship_days.astype(np.float64),
        feed_eligible=card_rng.random(items) >= INELIGIBLE_ITEMS,
        vacation_seller=seller_user[away], vacation_until=until.astype(np.float64),
        likes=(like_user, like_item, like_ts.astype(np.float64)),
        follows=(fo_user, seller_user[fo_seller], fo_ts.astype(np.float64)),
        friends=(fr_src, fr_dst, fr_ts.astype(np.float64)),
        engagements=(engaged[0], engaged[1], engaged[2], engaged[3].astype(np.float64), engaged[4]),
    )  # fmt: skip


@dataclass(frozen=True)
class GeneratedArrays:
    """A generated dataset as integer codes, before any id is a string: user ``u`` is
    ``u{u:05d}``, item ``i`` is ``i{i:06d}`` and community ``c`` is category ``c{c:02d}``
    (wider when there are more). Times, prices and ship days are float64.

    ``dataset()`` is the in-memory :class:`Dataset`; ``write()`` writes the same files as
    ``write_dataset(dataset())`` a part at a time, never holding all rows as strings.
    """

    users: int
    items: int
    communities: int
    item_seller: np.ndarray  # the user who sells each item
    created: np.ndarray
    stock: np.ndarray
    price: np.ndarray
    category: np.ndarray  # community of each item
    title: np.ndarray  # index into _TITLES
    ship_days: np.ndarray
    feed_eligible: np.ndarray  # bool
    vacation_seller: np.ndarray  # users on vacation
    vacation_until: np.ndarray
    likes: tuple[np.ndarray, np.ndarray, np.ndarray]  # (user, item, ts)
    follows: tuple[np.ndarray, np.ndarray, np.ndarray]  # (user, seller's user, ts)
    friends: tuple[np.ndarray, np.ndarray, np.ndarray]  # (user, friend, ts), user < friend
    engagements: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # (user, item, kind, ts, friend or -1)

    def dataset(self) -> Dataset:
        return Dataset(
            items=self._items(0, self.items),
            sellers=self._sellers(),
            likes=self._edges(LIKES, 0, self._edge_count(LIKES)),
            follows=self._edges(FOLLOWS, 0, self._edge_count(FOLLOWS)),
            friends=self._edges(FRIENDS, 0, self._edge_count(FRIENDS)),
            engagements=self._engagements(0, len(self.engagements[0])),
        )

    def write(self, path: str, progress: bool = False, part_rows: int = 1 << 20) -> None:
        """Write the CSV files ``write_dataset(self.dataset(), path)`` writes, ``part_rows``
        rows at a time; ``progress``: a bar of the rows written."""
        tables: dict[str, Iterable[CsvColumns]] = {ITEMS: self._item_parts(part_rows)}
        for name in (LIKES, FOLLOWS, FRIENDS):
            tables[name] = self._edge_parts(name, part_rows)
        if len(self.engagements[0]):
            tables[ENGAGEMENTS_FILE] = self._engagement_parts(part_rows)
        if len(self.vacation_seller):
            tables[SELLERS] = [sellers_csv(self._sellers())]
        rows = self.items + sum(map(self._edge_count, (LIKES, FOLLOWS, FRIENDS))) + len(self.engagements[0])
        with tqdm(total=rows + len(self.vacation_seller), desc="write", unit="row", unit_scale=True,
                  disable=not progress, leave=False) as bar:
            write_csv_tables(path, tables, bar.update)

    def _item_parts(self, part_rows: int) -> Iterator[CsvColumns]:
        # write_dataset leaves out a card column holding only defaults; only feed_eligible
        # can here (every item has a title, an image, a currency and ship days).
        cards = ("title", "image_url", "currency", "ship_days", *(["feed_eligible"] if not self.feed_eligible.all() else []))
        for start, stop in _parts(self.items, part_rows):
            yield items_csv(self._items(start, stop), cards)

    def _edge_parts(self, name: str, part_rows: int) -> Iterator[CsvColumns]:
        for start, stop in _parts(self._edge_count(name), part_rows):
            yield edges_csv(name, self._edges(name, start, stop))

    def _engagement_parts(self, part_rows: int) -> Iterator[CsvColumns]:
        for start, stop in _parts(len(self.engagements[0]), part_rows):
            yield engagements_csv(self._engagements(start, stop))

    @functools.cached_property
    def _user_ids(self) -> np.ndarray:
        # One more id, "", for the code -1 (an engagement's friend when there is none).
        return np.append(_ids("u", self.users, 5), "")

    @functools.cached_property
    def _item_ids(self) -> np.ndarray:
        return _ids("i", self.items, 6)

    @functools.cached_property
    def _category_ids(self) -> np.ndarray:
        return _ids("c", self.communities, 2)

    def _items(self, start: int, stop: int) -> Items:
        rows = slice(start, stop)
        item_id = self._item_ids[rows].tolist()
        return Items(
            item_id=item_id,
            seller_id=self._user_ids[self.item_seller[rows]].tolist(),
            created_at=self.created[rows],
            stock=self.stock[rows],
            price=self.price[rows],
            category=self._category_ids[self.category[rows]].tolist(),
            title=_TITLES[self.title[rows]].tolist(),
            image_url=[f"https://img.example.com/items/{i}.jpg" for i in item_id],
            currency=["EUR"] * len(item_id),
            ship_days=self.ship_days[rows],
            feed_eligible=self.feed_eligible[rows],
        )

    def _sellers(self) -> Sellers:
        return Sellers(self._user_ids[self.vacation_seller].tolist(), self.vacation_until)

    def _edge_columns(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return {LIKES: self.likes, FOLLOWS: self.follows, FRIENDS: self.friends}[name]

    def _edge_count(self, name: str) -> int:
        return len(self._edge_columns(name)[0])

    def _edges(self, name: str, start: int, stop: int) -> Edges:
        src, dst, ts = self._edge_columns(name)
        dst_ids = self._item_ids if name == LIKES else self._user_ids
        return Edges(self._user_ids[src[start:stop]].tolist(), dst_ids[dst[start:stop]].tolist(), ts[start:stop])

    def _engagements(self, start: int, stop: int) -> Engagements:
        user, item, kind, ts, friend = (column[start:stop] for column in self.engagements)
        return Engagements(self._user_ids[user].tolist(), self._item_ids[item].tolist(), _KIND_NAMES[kind].tolist(),
                           ts, self._user_ids[friend].tolist())  # fmt: skip


def _parts(rows: int, part_rows: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of consecutive parts of ``rows`` rows, at least one (empty when rows is 0)."""
    for start in range(0, max(rows, 1), part_rows):
        yield start, min(start + part_rows, rows)


def _latest_likes_in_order(
    like_user: np.ndarray, like_item: np.ndarray, like_ts: np.ndarray, items: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The latest like of each (user, item), sorted by (ts, user, item)."""
    key = like_user * items + like_item
    order = np.lexsort((-like_ts, key))
    first = np.ones(len(order), dtype=bool)
    first[1:] = key[order][1:] != key[order][:-1]
    keep = order[first]
    like_user, like_item, like_ts = like_user[keep], like_item[keep], like_ts[keep]
    order = np.lexsort((like_item, like_user, like_ts))
    return like_user[order], like_item[order], like_ts[order]


def _engagements(
    rng: np.random.Generator,
    likes: tuple[np.ndarray, np.ndarray, np.ndarray],
    prompted: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    n_friends: np.ndarray,
    end: float,
    created: np.ndarray,
    taste_pick,
    item_owner: np.ndarray,
) -> tuple[list[np.ndarray], ...]:
    """Step 9: the (user, item, kind, ts, friend or -1) columns, each a list of parts."""
    like_user, like_item, like_ts = likes
    code = _code_dtype(max(len(n_friends), len(created)))
    parts: tuple[list[np.ndarray], ...] = ([], [], [], [], [])  # user, item, kind, ts, friend

    def add(kind: int, users: np.ndarray, items: np.ndarray, ts: np.ndarray, friends: np.ndarray | None = None) -> None:
        ts = np.clip(np.floor(ts), created[items] + 1.0, end)
        friends = np.full(len(users), -1, code) if friends is None else friends
        row = (users.astype(code), items.astype(code), np.full(len(users), kind, dtype=np.uint8), ts, friends.astype(code))
        for column, values in zip(parts, row):
            column.append(values)

    recipient, sharer, item, sharer_like, recipient_like = prompted
    chosen = (rng.random(len(recipient)) < SHARE_PROMPTED_LIKES) & (item_owner[item] != recipient)
    when = sharer_like + (recipient_like - sharer_like) * rng.random(len(recipient))
    add(_SHARE, sharer[chosen], item[chosen], when[chosen], recipient[chosen])
    to_all = (rng.random(len(like_user)) < SHARED_LIKES) & (n_friends[like_user] > 0)
    add(_SHARE, like_user[to_all], like_item[to_all], like_ts[to_all] + rng.exponential(_DAY, int(to_all.sum())))

    add(_VIEW, like_user, like_item, like_ts - rng.random(len(like_user)) * _DAY)
    clicked = rng.random(len(like_user)) < CLICKED_LIKES
    add(_CLICK, like_user[clicked], like_item[clicked], like_ts[clicked] - 1.0)
    carted = rng.random(len(like_user)) < CARTED_LIKES
    cart_ts = like_ts[carted] + rng.exponential(_DAY, int(carted.sum()))
    add(_ADD_TO_CART, like_user[carted], like_item[carted], cart_ts)
    bought = rng.random(len(cart_ts)) < BOUGHT_CARTS
    add(_PURCHASE, like_user[carted][bought], like_item[carted][bought], cart_ts[bought] + rng.exponential(_DAY, int(bought.sum())))

    seen_user = like_user.copy()
    seen_item = taste_pick(seen_user)
    liked = np.sort(like_user * len(created) + like_item)
    unliked = ~_contains(liked, seen_user * len(created) + seen_item) & (item_owner[seen_item] != seen_user)
    seen_user, seen_item = seen_user[unliked], seen_item[unliked]
    seen_ts = created[seen_item] + (end - created[seen_item]) * rng.random(len(seen_user))
    add(_VIEW, seen_user, seen_item, seen_ts)
    clicked = rng.random(len(seen_user)) < CLICKED_VIEWS
    add(_CLICK, seen_user[clicked], seen_item[clicked], seen_ts[clicked] + 1.0)
    return parts


def _sorted_engagements(parts: tuple[list[np.ndarray], ...]) -> tuple[np.ndarray, ...]:
    """The engagement columns joined and sorted by (ts, user, item, kind), a column at a
    time: each column's parts, then its unsorted copy, freed as the next copy is made."""
    columns = []
    for column in parts:
        columns.append(np.concatenate(column))
        column.clear()
    users, items, kinds, ts, _ = columns
    order = np.lexsort((kinds, items, users, ts))
    del users, items, kinds, ts
    for i, column in enumerate(columns):
        columns[i] = column[order]
    return tuple(columns)


# --------------------------------------------------------------------------- helpers


def _code_dtype(n: int) -> type[np.signedinteger]:
    """The integer type for codes 0..n-1 and -1: int32 (half of int64's memory) when they fit."""
    return np.int32 if n <= np.iinfo(np.int32).max else np.int64


def _contains(sorted_values: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Whether each query is among ``sorted_values``."""
    at = np.minimum(np.searchsorted(sorted_values, queries), max(len(sorted_values) - 1, 0))
    return sorted_values[at] == queries if len(sorted_values) else np.zeros(len(queries), dtype=bool)


def _ids(prefix: str, n: int, width: int) -> np.ndarray:
    """Object array of zero-padded ids; ids sort in index order as strings."""
    w = max(width, len(str(n - 1)))
    return np.array([f"{prefix}{i:0{w}d}" for i in range(n)], dtype=object)


def _normal(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.standard_normal((n, LATENT_DIM), dtype=np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _heavy_counts(
    rng: np.random.Generator, n: int, mean: float, cap: int, minimum: int = 1, sigma: float = 1.0
) -> np.ndarray:
    """Lognormal counts with the given mean (before rounding and clipping)."""
    raw = rng.lognormal(math.log(mean) - sigma**2 / 2.0, sigma, size=n)
    return np.clip(np.round(raw), minimum, cap).astype(np.int64)


def _adjacency(src: np.ndarray, dst: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR (indptr, neighbours) of edges src -> dst over n sources."""
    order = np.argsort(src, kind="stable")
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=ptr[1:])
    return ptr, dst[order]


def _pick_in_groups(
    rng: np.random.Generator,
    query_group: np.ndarray,
    member_group: np.ndarray,
    weights: np.ndarray,
    n_groups: int,
) -> np.ndarray:
    """For each query, a member index of the same group drawn with probability
    proportional to ``weights``; -1 where the group has no weight."""
    return _group_sampler(member_group, weights, n_groups)(rng, query_group)


def _group_sampler(
    member_group: np.ndarray, weights: np.ndarray, n_groups: int, chunk: int = 1 << 20
) -> Callable[[np.random.Generator, np.ndarray], np.ndarray]:
    """``_pick_in_groups`` with its tables built once, for drawing in several calls.

    It draws ``chunk`` queries at a time (bounded memory: a dozen temporaries per query);
    one uniform per query in order, so the draws are those of all queries at once.
    """
    order = np.argsort(member_group, kind="stable")
    cw = np.cumsum(weights[order], dtype=np.float64)
    bounds = np.searchsorted(member_group[order], np.arange(n_groups + 1))
    total = np.concatenate([[0.0], cw])
    group_lo, group_hi = total[bounds[:-1]], total[bounds[1:]]

    def draw(rng: np.random.Generator, query_group: np.ndarray) -> np.ndarray:
        out = np.empty(len(query_group), dtype=np.int64)
        for s in range(0, len(query_group), chunk):
            q = query_group[s:s + chunk]
            lo, hi = group_lo[q], group_hi[q]
            r = lo + rng.random(len(q)) * (hi - lo)
            idx = np.searchsorted(cw, r, side="right")
            # Rounding can push r onto a group edge; clamp into the group.
            idx = np.clip(idx, bounds[:-1][q], bounds[1:][q] - 1)
            picked = order[np.clip(idx, 0, len(order) - 1)] if len(order) else np.zeros_like(idx)
            out[s:s + chunk] = np.where(hi > lo, picked, -1)
        return out

    return draw


def _homophilous_pick(
    rng: np.random.Generator,
    query_comm: np.ndarray,
    member_comm: np.ndarray,
    weights: np.ndarray,
    n_comm: int,
    in_share: float,
) -> np.ndarray:
    """Members drawn proportional to weights: from the query's community with
    probability ``in_share`` (when it has any), otherwise from everyone."""
    n = len(query_comm)
    out = np.full(n, -1, dtype=np.int64)
    inside = rng.random(n) < in_share
    out[inside] = _pick_in_groups(rng, query_comm[inside], member_comm, weights, n_comm)
    rest = np.flatnonzero(out < 0)
    out[rest] = _pick_in_groups(
        rng, np.zeros(len(rest), dtype=np.int64), np.zeros(len(member_comm), dtype=np.int64),
        weights, 1,
    )
    return out


def _taste_pick(
    rng: np.random.Generator,
    users: np.ndarray,
    user_comm: np.ndarray,
    user_vec: np.ndarray,
    item_comm: np.ndarray,
    item_vec: np.ndarray,
    item_w: np.ndarray,
    comm_p: np.ndarray,
    n_comm: int,
    chunk: int = 1 << 17,
) -> np.ndarray:
    """Taste-driven items: a community (mostly the user's own), TASTE_CANDIDATES
    candidates in it by popularity x recency, then a softmax over latent affinity."""
    n = len(users)
    comm = np.where(rng.random(n) < IN_COMMUNITY_TASTE, user_comm[users],
                    rng.choice(n_comm, size=n, p=comm_p))
    k = TASTE_CANDIDATES
    draw = _group_sampler(item_comm, item_w, n_comm)
    cand = np.empty((n, k), dtype=_code_dtype(len(item_comm)))
    for s in range(0, n, chunk):  # users in order, k candidates each: the draws of all at once
        cand[s:s + chunk] = draw(rng, np.repeat(comm[s:s + chunk], k)).reshape(-1, k)
    missing = cand < 0  # a community without items: fall back to the whole catalogue
    if missing.any():
        cand[missing] = _pick_in_groups(
            rng, np.zeros(int(missing.sum()), dtype=np.int64),
            np.zeros(len(item_comm), dtype=np.int64), item_w, 1,
        )
    out = np.empty(n, dtype=np.int64)
    for s in range(0, n, chunk):  # bounded memory: chunk x k x LATENT_DIM floats
        c = cand[s:s + chunk]
        aff = np.einsum("nkd,nd->nk", item_vec[c], user_vec[users[s:s + chunk]])
        gumbel = rng.gumbel(size=(len(c), k)).astype(np.float32)  # in order: as if drawn for all at once
        best = np.argmax(TASTE_SHARPNESS * aff + gumbel, axis=1)
        out[s:s + chunk] = c[np.arange(len(c)), best]
    return out


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``generate`` flags to ``parser``."""
    g = parser.add_argument_group("output")
    g.add_argument("--out", required=True, type=output_directory, metavar="DIR",
                   help="dataset directory to write: items, likes, follows and friends.csv, engagements.csv (unless "
                        "--no-engagements) and sellers.csv (when a seller is on vacation; none may be among a few hundred sellers)")
    g = parser.add_argument_group("size")
    g.add_argument("--users", type=bounded(int, 2), required=True, metavar="N", help="number of users")
    g.add_argument("--sellers", type=bounded(int, 1), required=True, metavar="N",
                   help="number of sellers, chosen among the users (<= --users)")
    g.add_argument("--items", type=bounded(int, 1), required=True, metavar="N", help="number of items")
    g.add_argument("--likes-per-user", type=bounded(float, above=0), default=20.0, metavar="F",
                   help="mean likes per user before deduplication (default: %(default)s)")
    g.add_argument("--communities", type=bounded(int, 1), default=None, metavar="C",
                   help="taste communities (default: about users^(1/3)/2, in [2, 64])")
    g.add_argument("--no-engagements", dest="engagements", action="store_false",
                   help="write no engagements.csv (shares, views, clicks, carts, purchases: about 3 rows "
                        "per like); the scale benchmarks were measured without them")
    g = parser.add_argument_group("time and randomness")
    g.add_argument("--seed", type=bounded(int, 0), default=0,
                   help="random seed; same seed gives byte-identical files (default: 0)")
    g.add_argument("--end-time", type=bounded(float, MIN_UNIX_SECONDS, maximum=MAX_UNIX_SECONDS), default=DEFAULT_END_TIME, metavar="UNIX",
                   help="end of the simulated period, Unix seconds (default: 2026-01-01Z)")
    g.add_argument("--days", type=bounded(int, 1), default=90, metavar="D",
                   help="items are listed within this many days before --end-time "
                        "(default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (there is none either when stderr is not a terminal)")


def check_sellers(users: int, sellers: int) -> None:
    """ValueError when --sellers is above --users (sellers are chosen among the users), which
    neither flag's type can see alone; for every command line that generates."""
    if sellers > users:
        raise ValueError(f"--sellers: must be <= --users ({users}), got {sellers}")


def run(args: argparse.Namespace) -> int:
    """Generate with the parsed flags, write to ``args.out`` and print a one-line summary."""
    check_sellers(args.users, args.sellers)
    if args.end_time - args.days * 86_400 < MIN_UNIX_SECONDS:  # the loader refuses times before 1900
        raise ValueError(f"--days: {args.days} days before --end-time {args.end_time:g} reach before 1900")
    start = time.perf_counter()
    progress = sys.stderr.isatty() and not args.no_progress
    data = generate_arrays(
        users=args.users, sellers=args.sellers, items=args.items,
        likes_per_user=args.likes_per_user, communities=args.communities, seed=args.seed,
        end_time=args.end_time, days=args.days, progress=progress, engagements=args.engagements,
    )
    data.write(args.out, progress=progress)
    out_of_stock = int((data.stock == 0).sum())
    print(
        f"wrote {args.out}: {args.users} users, {args.sellers} sellers ({len(data.vacation_seller)} on vacation), "
        f"{data.items} items ({out_of_stock} out of stock, {int((~data.feed_eligible).sum())} kept out of the feed), "
        f"{len(data.likes[0])} likes, {len(data.follows[0])} follows, "
        f"{len(data.friends[0])} friendships, {len(data.engagements[0])} engagements in {time.perf_counter() - start:.1f}s"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.generate --out DIR --users N --sellers N --items N ...``"""
    parser = argparse.ArgumentParser(prog="python -m training generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
