"""training.generate: determinism, and the structure the feed sources rely on."""

from __future__ import annotations

import hashlib
import tracemalloc
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from training.dataset import Dataset, load_dataset, write_dataset
from training.generate import DEFAULT_END_TIME, generate, generate_arrays, main

FILES = ("items.csv", "likes.csv", "follows.csv", "friends.csv")


@pytest.fixture(scope="module")
def ds() -> Dataset:
    return generate(users=3000, sellers=150, items=6000, likes_per_user=15, seed=7)


def files(path: Path) -> dict[str, bytes]:
    return {name: (path / name).read_bytes() for name in FILES}


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    for name in ("a", "b"):
        write_dataset(generate(400, 30, 800, seed=3), str(tmp_path / name))
    write_dataset(generate(400, 30, 800, seed=4), str(tmp_path / "c"))
    assert files(tmp_path / "a") == files(tmp_path / "b")
    assert all(files(tmp_path / "a")[n] != files(tmp_path / "c")[n] for n in FILES)


def test_written_files_load_back(tmp_path: Path, ds: Dataset) -> None:
    write_dataset(ds, str(tmp_path))
    back = load_dataset(str(tmp_path))
    assert back.fingerprint() == ds.fingerprint()


def test_cli_writes_and_summarises(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gen"
    argv = ["--out", str(out), "--users", "200", "--sellers", "10", "--items", "300",
            "--seed", "1", "--likes-per-user", "5", "--communities", "3", "--days", "30"]
    assert main(argv) == 0
    line = capsys.readouterr().out.strip()
    ds = load_dataset(str(out))
    assert line.startswith(f"wrote {out}: 200 users, 10 sellers (0 on vacation), 300 items (")
    assert f"{len(ds.likes)} likes" in line
    assert set(ds.items.category) <= {"c00", "c01", "c02"}
    assert ds.items.created_at.min() >= DEFAULT_END_TIME - 30 * 86400


def test_ids_and_sellers_are_users(ds: Dataset) -> None:
    assert ds.items.item_id[:2] == ["i000000", "i000001"]
    assert all(s.startswith("u") and len(s) == 6 for s in ds.items.seller_id)
    assert len(set(ds.items.seller_id)) == 150
    users = set(ds.user_ids())
    assert set(ds.items.seller_id) <= users | set(ds.follows.dst)
    assert len(set(zip(ds.likes.src, ds.likes.dst))) == len(ds.likes)


def test_stock(ds: Dataset) -> None:
    stock = ds.items.stock
    assert abs(float(np.mean(stock == 0)) - 0.05) < 0.015
    assert stock.min() == 0 and stock.max() <= 50


def test_seller_items_heavy_tailed(ds: Dataset) -> None:
    counts = np.sort(np.array(list(Counter(ds.items.seller_id).values())))[::-1]
    top = counts[: len(counts) // 10].sum() / counts.sum()
    assert top > 0.4
    followers = np.sort(np.array(list(Counter(ds.follows.dst).values())))[::-1]
    assert followers[0] > 5 * np.median(followers)


def user_communities(ds: Dataset) -> dict[str, str]:
    """A user's community estimated as the most common category of its likes."""
    category = dict(zip(ds.items.item_id, ds.items.category))
    liked: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for u, i in zip(ds.likes.src, ds.likes.dst):
        liked[u][category[i]] += 1
    return {u: c.most_common(1)[0][0] for u, c in liked.items()}


def test_friendships_mostly_within_community(ds: Dataset) -> None:
    comm = user_communities(ds)
    same = [comm[a] == comm[b] for a, b in zip(ds.friends.src, ds.friends.dst)]
    assert np.mean(same) > 0.6
    degree = np.array(list(Counter(ds.friends.src + ds.friends.dst).values()))
    assert degree.max() > 5 * np.median(degree)  # heavy-tailed
    assert all(a < b for a, b in zip(ds.friends.src, ds.friends.dst))


def test_likes_after_creation_and_within_period(ds: Dataset) -> None:
    created = dict(zip(ds.items.item_id, ds.items.created_at))
    liked_at = np.array([created[i] for i in ds.likes.dst])
    assert (ds.likes.ts > liked_at).all()
    assert ds.likes.ts.max() <= DEFAULT_END_TIME
    assert (ds.likes.ts == np.floor(ds.likes.ts)).all()


def test_newer_items_get_more_likes(ds: Dataset) -> None:
    likes = Counter(ds.likes.dst)
    counts = np.array([likes[i] for i in ds.items.item_id])
    newer = ds.items.created_at > np.median(ds.items.created_at)
    assert counts[newer].mean() > 1.5 * counts[~newer].mean()


def test_followed_sellers_are_liked_more_than_chance(ds: Dataset) -> None:
    seller = dict(zip(ds.items.item_id, ds.items.seller_id))
    listed = Counter(ds.items.seller_id)
    followed: defaultdict[str, set[str]] = defaultdict(set)
    for u, s in zip(ds.follows.src, ds.follows.dst):
        followed[u].add(s)
    hit = np.mean([seller[i] in followed[u] for u, i in zip(ds.likes.src, ds.likes.dst)])
    # Chance: the share of the catalogue listed by the user's followed sellers.
    chance = np.mean([sum(listed[s] for s in followed[u]) / len(ds.items) for u in ds.likes.src])
    assert hit > 1.5 * chance  # popular sellers list much of a small catalogue


def test_social_influence(ds: Dataset) -> None:
    """A user shares more liked items with friends than with random other users."""
    liked: defaultdict[str, set[str]] = defaultdict(set)
    for u, i in zip(ds.likes.src, ds.likes.dst):
        liked[u].add(i)
    pairs = list(zip(ds.friends.src, ds.friends.dst))
    rng = np.random.default_rng(0)
    users = sorted(liked)
    random_pairs = [(users[a], users[b]) for a, b in rng.integers(0, len(users), (len(pairs), 2))]

    def overlap(ps: list[tuple[str, str]]) -> float:
        return float(np.mean([len(liked[a] & liked[b]) for a, b in ps]))

    assert overlap(pairs) > 3 * overlap(random_pairs)


@pytest.mark.parametrize(
    "kwargs",
    [dict(users=1, sellers=1, items=1), dict(users=10, sellers=11, items=5),
     dict(users=10, sellers=0, items=5), dict(users=10, sellers=2, items=0),
     dict(users=10, sellers=2, items=5, likes_per_user=0)],
)
def test_rejects_impossible_sizes(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        generate(**kwargs)


def test_tiny_and_skewed_sizes_work() -> None:
    small = generate(users=2, sellers=2, items=1, likes_per_user=3, seed=0)
    assert len(small.items) == 1
    few_items = generate(users=50, sellers=20, items=5, communities=10, seed=1)
    assert len(few_items.items) == 5 and len(few_items.likes) > 0


def test_cards_curation_and_vacations_are_generated():
    ds = generate(users=2000, sellers=200, items=4000, seed=5)
    items = ds.items
    assert all(items.title) and all(u.startswith("https://") for u in items.image_url) and set(items.currency) == {"EUR"}
    assert np.isfinite(items.ship_days).all() and ((items.ship_days >= 0) & (items.ship_days <= 14)).all()
    assert 0.01 < (~items.feed_eligible).mean() < 0.06
    assert 0 < len(ds.sellers) < 20 and set(ds.sellers.seller_id) <= set(items.seller_id)
    assert (ds.sellers.vacation_until > 1_767_225_600.0).all()


def test_engagements_follow_likes_and_friendship():
    from collections import Counter

    ds = generate(users=600, sellers=40, items=1500, seed=4)
    e = ds.engagements
    assert set(Counter(e.kind)) == {"share", "view", "click", "add_to_cart", "purchase"}
    friends = set(zip(ds.friends.src, ds.friends.dst)) | set(zip(ds.friends.dst, ds.friends.src))
    directed = [(u, f) for u, f, k in zip(e.user_id, e.friend_id, e.kind) if k == "share" and f]
    assert directed and all(pair in friends for pair in directed)
    assert all(not f for f, k in zip(e.friend_id, e.kind) if k != "share")
    # A directed share is followed by the recipient's like of the item, most of the time.
    liked_at = {(u, i): t for u, i, t in zip(ds.likes.src, ds.likes.dst, ds.likes.ts.tolist())}
    shares = [(f, i, t) for f, i, t, k in zip(e.friend_id, e.item_id, e.ts.tolist(), e.kind) if k == "share" and f]
    assert sum((f, i) in liked_at and liked_at[(f, i)] >= t for f, i, t in shares) > 0.8 * len(shares)
    # Every like was seen first.
    first_view: dict[tuple[str, str], float] = {}
    for u, i, t, k in zip(e.user_id, e.item_id, e.ts.tolist(), e.kind):
        if k == "view":
            first_view[(u, i)] = min(t, first_view.get((u, i), t))
    assert all(first_view.get(pair, float("inf")) <= t for pair, t in liked_at.items())
    # Purchases come from the cart.
    carted = {(u, i) for u, i, k in zip(e.user_id, e.item_id, e.kind) if k == "add_to_cart"}
    assert all((u, i) in carted for u, i, k in zip(e.user_id, e.item_id, e.kind) if k == "purchase")


@pytest.mark.parametrize("flags, says", [
    (["--end-time", "1e13"], "argument --end-time: must be <= 1e+11"),
    (["--days", "50000"], "--days: 50000 days before --end-time"),
])
def test_times_the_loader_refuses_are_refused_before_writing(tmp_path: Path, capsys: pytest.CaptureFixture[str], flags, says) -> None:
    """generate wrote datasets whose times load_dataset then refused (after 5000, before 1900)."""
    from training.__main__ import main

    with pytest.raises(SystemExit) as stopped:
        main(["generate", "--out", str(tmp_path / "g"), "--users", "20", "--sellers", "2", "--items", "5", *flags])
    assert stopped.value.code != 0 and says in capsys.readouterr().err + str(stopped.value.code)
    assert not (tmp_path / "g").exists()


# sha256 of the files the CLI wrote before it wrote them a part at a time (through
# write_dataset(generate(...)), commit 20252ce): the part-wise writer must keep them.
OLD_CODE_DIGESTS = {
    ("--users", "300", "--sellers", "200", "--items", "700", "--seed", "3"): {
        "engagements.csv": "09c7b3d66ef00dc0d19078e60e2cf76d1a696152e83ce66cbdee773c99c8a7bb",
        "follows.csv": "11e5684112fad19ce127938a591b2a9a8fa1f8bad9893d94c2932df0558747ec",
        "friends.csv": "ee2e72934f3c53babdac8cb0babe1a61fcbe9c441faf8f5b30d442847dbe77fb",
        "items.csv": "a51df828c4249e8eb877f35fb49a0b09b52e15e569cdbc110dc2805691e1b494",
        "likes.csv": "4059dc51727516272ae1e811041178af8ce378c714dfc50d2f521d3adeb07a47",
        "sellers.csv": "a1a84c2c6ff002d56f61dc2ad720ef7b3fe4e6a64cc6d88e0a29fb6f31da5fb2",
    },
    ("--users", "300", "--sellers", "40", "--items", "500", "--seed", "5", "--no-engagements", "--likes-per-user", "8",
     "--communities", "4"): {
        "follows.csv": "3e1a61f1cf9fdc8bbdb1d2796c95d23044cd05915a9b51061931b95416a098f5",
        "friends.csv": "c78b203d39084314effcc2c765c14c6b96de298fbbf1ea6032b6197102cf83c5",
        "items.csv": "2aef625b54bbf939b38dfee51dba1295ed200a7834b1d29dad8a64a3886ff905",
        "likes.csv": "de68199c42efcffbfdb7a9e783be23804bbd21b64519575b2269004bc9399cdd",
        "sellers.csv": "1af1e944ac1f2cb4242b24657df15e2caf3b7aa787942dc8ca701e63cdae36fc",
    },
    # No seller on vacation (no sellers.csv) and every item eligible (no feed_eligible column).
    ("--users", "40", "--sellers", "3", "--items", "5", "--seed", "2", "--likes-per-user", "3"): {
        "engagements.csv": "e28a9b64beeeb70c544c3c21cc5cd5359316949f56a2430501dfad2ab1287f03",
        "follows.csv": "0e82037e64281dc274fdf4c509483794bc488ca4a3c6052b591eef3e4a5e6a82",
        "friends.csv": "d369e16d9242c556ae1712a124e0e8e92ba1e697489029ff6c18de68872adf59",
        "items.csv": "2c62201afa8c05a87838c222300fcb11154bcaa44fb64ed31bb69f15e7a7b70c",
        "likes.csv": "980d5c52ce7677dce0c79cf35998a5e3e8feebb2fb64d543b4dca634d8618d1d",
    },
}


def digests(path: Path) -> dict[str, str]:
    return {file.name: hashlib.sha256(file.read_bytes()).hexdigest() for file in path.iterdir()}


@pytest.mark.parametrize("flags", list(OLD_CODE_DIGESTS))
def test_cli_writes_the_bytes_it_wrote_before_writing_in_parts(tmp_path: Path, capsys: pytest.CaptureFixture[str], flags) -> None:
    assert main(["--out", str(tmp_path), "--no-progress", *flags]) == 0
    assert digests(tmp_path) == OLD_CODE_DIGESTS[flags]


def test_parts_of_any_size_write_what_write_dataset_writes(tmp_path: Path) -> None:
    data = generate_arrays(users=300, sellers=200, items=700, seed=3)
    write_dataset(data.dataset(), str(tmp_path / "whole"))
    for part_rows in (7, 1 << 20):
        data.write(str(tmp_path / str(part_rows)), part_rows=part_rows)
        assert digests(tmp_path / str(part_rows)) == digests(tmp_path / "whole")
    assert digests(tmp_path / "whole") == OLD_CODE_DIGESTS[("--users", "300", "--sellers", "200", "--items", "700", "--seed", "3")]


def test_writing_replaces_what_the_directory_held(tmp_path: Path) -> None:
    """As write_dataset: tables this dataset has none of, and Parquet copies, are removed."""
    data = generate_arrays(users=40, sellers=3, items=5, likes_per_user=3, seed=2, engagements=False)
    for stale in ("sellers.csv", "engagements.csv", "likes.parquet", "items.csv"):
        (tmp_path / stale).write_text("stale\n")
    data.write(str(tmp_path), part_rows=7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["follows.csv", "friends.csv", "items.csv", "likes.csv"]
    assert load_dataset(str(tmp_path)).fingerprint() == data.dataset().fingerprint()


def test_generating_holds_a_bounded_memory_per_like() -> None:
    """At 1M users generation was OOM-killed on a 23 GB machine; the arrays alone peaked at
    ~720 bytes per like (here; 2.1 GB at 100k users): the taste picks' temporaries for all
    likes x 8 candidates at once, a Python set of the liked pairs, every engagement column
    copied twice while sorting. Now ~330 (numpy reports its buffers to tracemalloc)."""
    tracemalloc.start()
    try:
        data = generate_arrays(users=20_000, sellers=1_000, items=20_000, likes_per_user=30, seed=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak / len(data.likes[0]) < 450
