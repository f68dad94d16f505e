"""Offline evaluation: replay the serving pipeline on a held-out split, beside baselines.

The "model" row is the feed the server would return (same sources, filters, ranker and
seller cap), built in process over a memory store loaded with the training part; its
ranker is fitted on a validation split carved out of the training part (never on the
test part), exactly as ``python -m training train`` fits the one it publishes. The
"blend" row is the same feed under the hand-set blend. Every method sees the same
eligibility rules: in stock, not already liked, not the user's own.

The "diversity caps" block (``evaluate_cap_grid``, issue 9) replays that same feed (same
model, ranker, split and users) under a few other seller and category caps per page.
"""

from __future__ import annotations

import io
import itertools
import math
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from tqdm import tqdm

from embeddings.knn import EASE_MAX_ITEMS, ItemKNN, train_item_knn
from embeddings.model import EmbeddingModel
from ranking.feed import FeedSettings, build_feed_pipeline
from ranking.ranker import LinearRanker
from ranking.store import VIEW_WINDOW_SECONDS
from stores.memory import MemoryStore, replay_engagements
from training.dataset import Dataset, Edges
from training.metrics import (
    PairedDifference,
    catalogue_coverage,
    mean_distinct_sellers,
    mean_metrics,
    paired_difference,
    per_user_metrics,
    ranking_metrics,
)
from training.splits import evaluation_time

Recommender = Callable[[str, int], list[str]]


@dataclass
class FeedReplay:
    """What replaying the "model" row's feed under other settings needs (``evaluate_cap_grid``)."""

    train: Dataset
    model: EmbeddingModel | None
    ranker: LinearRanker
    now: float
    settings: FeedSettings
    relevant: dict[str, set[str]]  # the (sampled) test users' test items
    pages: dict[str, list[str]]  # the "model" row's pages, under ``settings``
    seconds: float = 0.0  # the "model" row's replay time


def _finite_or_none(bound: float) -> float | None:
    """A bound for JSON, which has no infinity: None where there is no bound (one user)."""
    return bound if math.isfinite(bound) else None


@dataclass
class EvaluationReport:
    """Metrics per method ("model" first), keyed like "ndcg@10"."""

    ks: tuple[int, ...]
    methods: dict[str, dict[str, float]] = field(default_factory=dict)
    test_part: str = ""  # what was held out: the split, and why when it is the default
    test_users: int = 0
    test_users_total: int = 0  # before sampling down to ``max_users``
    test_pairs: int = 0
    unseen_test_items: int = 0  # test rows whose item never appears in the training data
    unshowable_test_pairs: int = 0  # test rows of a listed item that no feed shows their user (Eligibility)
    cold_test_users: int = 0  # test users without a training like: their feeds are cold starts
    recommendable_items: int = 0  # coverage's denominator: items some test user may be shown (Eligibility)
    catalogue_items: int = 0  # items listed at the evaluation time, showable or not
    # The model's NDCG@K minus each other method's, paired over the same users (per K).
    paired: dict[str, dict[str, PairedDifference]] = field(default_factory=dict)
    ranker: dict | None = None  # the served ranker's manifest entry, when one was fitted
    # One row per cap setting (evaluate_cap_grid): the caps and the metrics of the feed under them.
    cap_grid: list[dict] = field(default_factory=list)
    cap_grid_seconds: float = 0.0
    cap_grid_skipped: str = ""  # why the cap grid asked for was not replayed
    # Baselines not reported, and why (no follows, no friendships, a catalogue too large for
    # EASE, nothing recommended to any test user): a row of zeros would read as a measurement.
    baselines_left_out: dict[str, str] = field(default_factory=dict)
    sellers_skipped: str = ""  # why sellers@K was not measured (no item has a seller: it would be 0 for all)
    # Kept by evaluate() so the cap grid can be added later; holds the training data and
    # the model: set it to None to release them.
    replay: FeedReplay | None = field(default=None, repr=False, compare=False)

    def as_json(self) -> dict:
        methods = dict(self.methods)
        model = methods.pop("model", {})
        return {
            "model": model,
            "baselines": methods,
            **({"baselines_left_out": dict(self.baselines_left_out)} if self.baselines_left_out else {}),
            **({"sellers_not_measured": self.sellers_skipped} if self.sellers_skipped else {}),
            "coverage": model.get(f"coverage@{max(self.ks)}", 0.0),
            **({"test_part": self.test_part} if self.test_part else {}),
            "test_users": self.test_users,
            "test_users_total": self.test_users_total,
            "test_pairs": self.test_pairs,
            "unseen_test_items": self.unseen_test_items,
            "unshowable_test_pairs": self.unshowable_test_pairs,
            "cold_test_users": self.cold_test_users,
            "recommendable_items": self.recommendable_items,
            "catalogue_items": self.catalogue_items,
            **({"ranker": self.ranker} if self.ranker else {}),
            **({"paired": {
                method: {metric: {"difference": d.difference, "ci95": [_finite_or_none(d.low), _finite_or_none(d.high)], "p_value": d.p_value, "users": d.users}
                         for metric, d in differences.items()}
                for method, differences in self.paired.items()
            }} if self.paired else {}),
            **({"cap_grid": self.cap_grid} if self.cap_grid else {}),
        }

    def table(self) -> str:
        columns = [f"{m}@{k}" for k in self.ks for m in ("precision", "recall", "ndcg")]
        columns += [f"coverage@{max(self.ks)}", *([] if self.sellers_skipped else [f"sellers@{max(self.ks)}"])]
        width = max([len("method"), *(len(name) for name in self.methods)])
        cells = [[f"{metrics.get(c, math.nan):.4f}" for c in columns] for metrics in self.methods.values()]
        head, *rows = _aligned(columns, cells, min_width=12)
        lines = [f"{'method':<{width}} {head}", *(f"{name:<{width}} {row}" for name, row in zip(self.methods, rows))]
        if self.baselines_left_out:
            lines.append(self.left_out_line())
        lines.append(self.summary_line())
        lines.append(f"coverage@{max(self.ks)}: the share of the {self.recommendable_items} items some test user may be "
                     f"shown (of {self.catalogue_items} listed) that are in some test user's top {max(self.ks)}")
        if self.sellers_skipped:
            lines.append(f"sellers@{max(self.ks)}: not measured ({self.sellers_skipped})")
        if self.test_part:
            lines.append(f"test part: {self.test_part}")
        if self.paired:
            lines += ["", *self.paired_table()]
        if self.cap_grid:
            lines += ["", *self.cap_grid_table()]
        if self.cap_grid_skipped:
            lines += ["", f"diversity caps: not replayed ({self.cap_grid_skipped})"]
        return "\n".join(lines)

    def left_out_line(self) -> str:
        """The baselines not in the table, each with why: one line."""
        return "baselines left out: " + "; ".join(
            f"{name} ({reason})" for name, reason in self.baselines_left_out.items())

    def summary_line(self) -> str:
        """What the metrics were measured on: the test users and pairs, and the misses no method can avoid."""
        def counted(n: int, noun: str) -> str:
            return f"{n} {noun}{'' if n == 1 else 's'}"

        return (
            counted(self.test_users, "test user")
            + (f" (a seeded sample of {self.test_users_total})" if self.test_users_total > self.test_users else "")
            + f", {counted(self.test_pairs, 'test pair')}, "
            f"{counted(self.unseen_test_items, 'test pair')} with an item unseen in training (counted as misses)"
            + (f", {counted(self.cold_test_users, 'test user')} without a training like (cold starts)" if self.cold_test_users else "")
            + (f", {counted(self.unshowable_test_pairs, 'test pair')} no feed can show their user (an item out of stock, "
               "kept out of the feed or of a seller away, or the user's own, already liked or hidden by them: misses "
               "for every method)" if self.unshowable_test_pairs else "")
        )

    def paired_table(self) -> list[str]:
        """The served feed's NDCG@K minus each other method's, with a 95 % interval: whether a
        difference in the table above is more than the sample of users it was measured on."""
        metrics = [f"ndcg@{k}" for k in self.ks]
        users = next(iter(next(iter(self.paired.values())).values())).users
        width = max([len("method"), *(len(name) for name in self.paired)])

        def cell(d) -> str:
            p_value = "p < 0.001" if d.p_value < 0.001 else f"p = {d.p_value:.3f}"
            return f"{d.difference:+.4f} [{d.low:+.4f}, {d.high:+.4f}] {p_value}"

        head, *rows = _aligned(metrics, [[cell(differences[m]) for m in metrics] for differences in self.paired.values()])
        return [
            f"model minus each method, paired over the same {users} users (difference [95 % interval], p of a paired t-test)",
            f"{'method':<{width}} {head}",
            *(f"{name:<{width}} {row}" for name, row in zip(self.paired, rows)),
        ]

    def cap_grid_table(self) -> list[str]:
        """The "diversity caps" block: one line per cap setting, the configured one marked *."""
        depth = max(self.ks)
        columns = [f"{m}@{k}" for k in self.ks for m in ("precision", "ndcg")]
        # A data set without sellers (or categories) has no such column: it would be 0 in every row.
        columns += [c for c in (f"items@{depth}", f"categories@{depth}", f"sellers@{depth}") if c in self.cap_grid[0]]
        head, *cells = _aligned(columns, [[f"{row.get(c, math.nan):.4f}" for c in columns] for row in self.cap_grid], min_width=13)
        lines = [
            f"diversity caps (the model row's feed replayed with other caps per page of {depth}; same model, "
            "ranker and users)",
            f"{'seller cap':>10} {'category cap':>12} {head}",
        ]
        for row, metrics in zip(self.cap_grid, cells):
            seller = "off" if row["max_per_seller"] >= depth else str(row["max_per_seller"])
            category = "off" if row["max_per_category"] == 0 else str(row["max_per_category"])
            mark = "*" if row["configured"] else " "
            lines.append(f"{seller + mark:>10} {category:>12} {metrics}")
        lines.append(
            f"* as configured; seller cap off = {depth} (a whole page: never binds; 0 is not a valid seller cap), "
            f"category cap off = 0; items@{depth} is the mean page length (a cap can leave a page short), "
            "categories and sellers the distinct ones per page (items without one not counted); "
            f"{len(self.cap_grid)} settings in {self.cap_grid_seconds:.1f} s"
            + (f" (the model row's replay: {self.replay.seconds:.1f} s)" if self.replay else "")
        )
        return lines


def _aligned(headers: list[str], rows: list[list[str]], min_width: int = 0) -> list[str]:
    """The header line and each row's line of the report's tables: every column right-aligned
    to its widest cell, header included (``min_width`` at least), one space between columns."""
    widths = [max(min_width, len(header), *(len(row[i]) for row in rows)) for i, header in enumerate(headers)]
    return [" ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in (headers, *rows)]


class Eligibility:
    """The filters of the served feed that every baseline obeys too, at ``now``: in stock,
    feed-eligible, seller not on vacation, not liked or hidden by the user, not the
    user's own, seller not hidden by the user, and (with ``hide_after``) not resting after
    that many views without engagement. A baseline that could recommend what no feed
    shows would be measured on other terms than the feed it is compared with."""

    def __init__(self, train: Dataset, now: float, hide_after: int | None = None) -> None:
        items, sellers = train.items, train.sellers
        self.item_ids = list(items.item_id)
        self.row = {item_id: i for i, item_id in enumerate(self.item_ids)}
        self.seller_of = dict(zip(items.item_id, items.seller_id))
        away = {seller for seller, until in zip(sellers.seller_id, sellers.vacation_until.tolist()) if until > now}
        present = np.fromiter((seller not in away for seller in items.seller_id), bool, len(items.seller_id))
        servable = (items.stock > 0) & items.feed_eligible & present
        self.servable = dict(zip(items.item_id, servable.tolist()))
        self.excluded: dict[str, set[str]] = defaultdict(set)  # liked or hidden
        for user_id, item_id in itertools.chain(zip(train.likes.src, train.likes.dst),
                                                zip(train.hidden_items.src, train.hidden_items.dst)):
            self.excluded[user_id].add(item_id)
        if hide_after is not None:
            for user_id, item_ids in resting_items(train, now, hide_after).items():
                self.excluded[user_id].update(item_ids)
        self.hidden_sellers: dict[str, set[str]] = defaultdict(set)
        for user_id, seller_id in zip(train.hidden_sellers.src, train.hidden_sellers.dst):
            self.hidden_sellers[user_id].add(seller_id)

    def ok(self, user_id: str, item_id: str) -> bool:
        return (
            self.servable.get(item_id, False)
            and item_id not in self.excluded.get(user_id, ())
            and self.seller_of.get(item_id) != user_id
            and self.seller_of.get(item_id) not in self.hidden_sellers.get(user_id, ())
        )

    def recommendable_count(self, user_ids: Iterable[str]) -> int:
        """How many items some user of ``user_ids`` may be shown (``ok``): coverage's
        denominator, the catalogue the methods could have covered."""
        users = set(user_ids)
        items_of: dict[str, set[str]] = defaultdict(set)
        for item_id, servable in self.servable.items():
            if servable:
                items_of[self.seller_of[item_id]].add(item_id)
        servable_items = set().union(*items_of.values())
        barred_for: Counter[str] = Counter()  # of the users, how many may not be shown the item
        for user_id in users:
            own_or_hidden_sellers = (user_id, *self.hidden_sellers.get(user_id, ()))
            barred_for.update((self.excluded.get(user_id, set()) & servable_items)
                              .union(*(items_of.get(seller, ()) for seller in own_or_hidden_sellers)))
        return len(servable_items) - sum(count == len(users) for count in barred_for.values()) if users else 0

    def top(self, user_id: str, ranked: Iterable[str], k: int) -> list[str]:
        out: list[str] = []
        for item_id in ranked:
            if self.ok(user_id, item_id):
                out.append(item_id)
                if len(out) == k:
                    break
        return out


def resting_items(train: Dataset, now: float, hide_after: int) -> dict[str, list[str]]:
    """Each user's items out of the feed at ``now`` for fatigue (``SeenTooOftenFilter``):
    ``hide_after`` views or more since the user last engaged with the item, the last one
    within VIEW_WINDOW_SECONDS, as the memory store's replay of ``train``'s engagements
    leaves them."""
    codes: dict[str, int] = {}
    _, seen = replay_engagements(train, {}, lambda item_id: codes.setdefault(item_id, len(codes)))
    return {
        user_id: [item_id for count, last, item_id in views.views.values()
                  if count >= hide_after and now - last <= VIEW_WINDOW_SECONDS]
        for user_id, views in seen.items()
    }


def popularity_baseline(train: Dataset, eligible: Eligibility) -> Recommender:
    counts: dict[str, int] = defaultdict(int)
    for item_id in train.likes.dst:
        counts[item_id] += 1
    order = sorted(counts, key=lambda i: (-counts[i], i))
    return lambda user_id, k: eligible.top(user_id, order, k)


def followed_sellers_baseline(train: Dataset, eligible: Eligibility) -> Recommender:
    """Newest items of the sellers the user follows."""
    listings: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for item_id, seller_id, created in zip(train.items.item_id, train.items.seller_id, train.items.created_at.tolist()):
        listings[seller_id].append((-created if not math.isnan(created) else 0.0, item_id))
    follows: dict[str, list[str]] = defaultdict(list)
    for user_id, seller_id in zip(train.follows.src, train.follows.dst):
        follows[user_id].append(seller_id)

    def recommend(user_id: str, k: int) -> list[str]:
        merged = sorted(pair for seller in follows.get(user_id, ()) for pair in listings.get(seller, ()))
        return eligible.top(user_id, (item_id for _, item_id in merged), k)

    return recommend


def friends_likes_baseline(train: Dataset, eligible: Eligibility) -> Recommender:
    """Items liked by the most friends; ties go to the most recent like."""
    friends: dict[str, set[str]] = defaultdict(set)
    for a, b in zip(train.friends.src, train.friends.dst):
        friends[a].add(b)
        friends[b].add(a)
    likes_of: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for user_id, item_id, ts in zip(train.likes.src, train.likes.dst, np.nan_to_num(train.likes.ts).tolist()):
        likes_of[user_id].append((item_id, ts))

    def recommend(user_id: str, k: int) -> list[str]:
        votes: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
        for friend in friends.get(user_id, ()):
            for item_id, ts in likes_of.get(friend, ()):
                vote = votes[item_id]
                vote[0] += 1
                vote[1] = max(vote[1], ts)
        order = sorted(votes, key=lambda i: (-votes[i][0], -votes[i][1], i))
        return eligible.top(user_id, order, k)

    return recommend


def als_baseline(model: EmbeddingModel, train: Dataset, eligible: Eligibility) -> Recommender:
    """Pure embedding retrieval: the index's neighbours of the user vector."""
    recent: dict[str, list[str]] = defaultdict(list)
    for user_id, item_id in zip(train.likes.src, train.likes.dst):
        recent[user_id].append(item_id)

    def recommend(user_id: str, k: int) -> list[str]:
        vector = model.user_vector(user_id, recent.get(user_id, []))
        if vector is None:
            return []
        depth = k + len(eligible.excluded.get(user_id, ())) + 50
        item_ids, _ = model.neighbours(vector, depth)
        return eligible.top(user_id, item_ids, k)

    return recommend


def item_knn_baseline(model: EmbeddingModel, train: Dataset, eligible: Eligibility) -> Recommender:
    """Pure item-kNN: items ranked by summed similarity to all of the user's training likes."""
    return item_to_item_recommender(model.item_knn, train, eligible)


EASE_BASELINE_K = 1_000
"""Neighbours kept per item by the EASE baseline: enough that truncation barely matters."""
EASE_BASELINE_L2 = 200.0
"""The EASE baseline's penalty: the paper's Last.fm-sized optimum is in the hundreds. The
feed's own EASE uses embeddings.knn.DEFAULT_EASE_L2, chosen on validation."""


def ease_baseline(train: Dataset, eligible: Eligibility, l2: float = EASE_BASELINE_L2) -> Recommender | None:
    """EASE alone on binary likes (Steck 2019), the strong linear baseline of the literature;
    None when the catalogue is too large for it (EASE_MAX_ITEMS items with support)."""
    from embeddings.als import build_interactions

    interactions = build_interactions(train, follow_weight=0.0, weight_transform="binary", engagement_weights={})  # baselines: likes only
    try:
        model = train_item_knn(interactions.item_matrix, interactions.item_ids, "ease", k=EASE_BASELINE_K, l2=l2)
    except ValueError:
        return None
    return item_to_item_recommender(model, train, eligible)


def baselines_without_data(train: Dataset) -> dict[str, str]:
    """The baselines of ``baseline_recommenders`` whose input ``train`` lacks, and why: each
    would recommend nothing to anyone (Last.fm has no follows; generated data without a
    friend graph has no friendships)."""
    out = {}
    if not len(train.follows):
        out["followed_sellers"] = "no follows in the training data"
    if not len(train.friends):
        out["friends_likes"] = "no friendships in the training data"
    return out



def item_to_item_recommender(knn: ItemKNN, train: Dataset, eligible: Eligibility) -> Recommender:
    liked: dict[str, list[str]] = defaultdict(list)
    for user_id, item_id in zip(train.likes.src, train.likes.dst):
        liked[user_id].append(item_id)

    def recommend(user_id: str, k: int) -> list[str]:
        scores = knn.user_scores(liked.get(user_id, []))
        item_ids, _ = knn.top(scores, k + len(liked.get(user_id, ())) + 50)
        return eligible.top(user_id, item_ids, k)

    return recommend


def pipeline_recommender(
    train: Dataset,
    model: EmbeddingModel | None,
    ranker: LinearRanker,
    now: float,
    settings: FeedSettings,
    show_progress: bool = False,
    store: MemoryStore | None = None,
) -> Recommender:
    """The served feed, replayed in process over a memory store of the training data
    (``store``: one already loaded with it, to share between replays)."""
    if store is None:
        store = MemoryStore.from_dataset(train, progress=show_progress)
    pipeline = build_feed_pipeline(store, model, ranker, settings)
    return lambda user_id, k: [c.item_id for c in pipeline.run(user_id, k, now).items]


def evaluate(
    train: Dataset,
    test: Edges,
    model: EmbeddingModel | None,
    ranker: LinearRanker,
    ks: Sequence[int] = (10, 20),
    settings: FeedSettings = FeedSettings(),
    now: float | None = None,
    extra_methods: dict[str, Recommender] | None = None,
    show_progress: bool = True,
    max_users: int = 0,
    cap_grid: bool = False,
    baselines: bool = True,
) -> EvaluationReport:
    """Evaluate the served feed and (with ``baselines``) the baselines on ``test`` (user -> item pairs).

    With ``max_users`` > 0, metrics average over a seeded sample of that many test users
    (the replay costs milliseconds per user: this bounds it on large datasets). With
    ``cap_grid``, the report also has the "diversity caps" block (``evaluate_cap_grid``,
    which can also be called on the report later).
    """
    ks = tuple(sorted(set(ks)))
    depth = max(ks)
    relevant: dict[str, set[str]] = defaultdict(set)
    for user_id, item_id in zip(test.src, test.dst):
        relevant[user_id].add(item_id)
    total_users = len(relevant)
    if 0 < max_users < total_users:
        sample = np.random.default_rng(0).choice(sorted(relevant), size=max_users, replace=False)
        relevant = defaultdict(set, {user_id: relevant[user_id] for user_id in sample.tolist()})
    now = evaluation_time(train) if now is None else now
    eligible = Eligibility(train, now, settings.fatigue_hide_views)
    trained_items = set(train.likes.dst)
    report = EvaluationReport(
        ks, test_users=len(relevant), test_users_total=total_users, test_pairs=sum(len(v) for v in relevant.values())
    )
    report.unseen_test_items = sum(1 for items in relevant.values() for i in items if i not in trained_items)
    report.cold_test_users = len(relevant.keys() - set(train.likes.src))
    report.unshowable_test_pairs = sum(1 for user_id, items in relevant.items() for i in items
                                       if i in eligible.servable and not eligible.ok(user_id, i))

    methods: dict[str, Recommender] = {"model": pipeline_recommender(train, model, ranker, now, settings, show_progress)}
    if baselines:
        found, report.baselines_left_out = baseline_recommenders(train, model, eligible)
        methods.update(found)
    methods.update(extra_methods or {})
    users = sorted(relevant)
    if not any(train.items.seller_id):
        report.sellers_skipped = "no item has a seller"
    report.recommendable_items, report.catalogue_items = eligible.recommendable_count(users), len(eligible.item_ids)
    per_user: dict[str, dict[str, np.ndarray]] = {}
    for name, recommend in methods.items():
        progress = tqdm(users, desc=f"evaluate {name}", unit="user", disable=not show_progress, leave=False)
        started = time.perf_counter()
        recommended = {user_id: recommend(user_id, depth) for user_id in progress}
        if name == "model":
            report.replay = FeedReplay(
                train, model, ranker, now, settings, relevant, recommended, time.perf_counter() - started
            )
        if name not in ("model", *(extra_methods or {})) and users and not any(recommended.values()):
            # A baseline whose data holds nothing for these users: its zeros would measure nothing.
            report.baselines_left_out[name] = f"it recommends nothing to any of the {len(users)} test users"
            continue
        per_user[name] = per_user_metrics(recommended, relevant, ks)
        metrics = mean_metrics(per_user[name])
        metrics[f"coverage@{depth}"] = catalogue_coverage(recommended, report.recommendable_items, depth)
        if not report.sellers_skipped:
            metrics[f"sellers@{depth}"] = mean_distinct_sellers(recommended, eligible.seller_of, depth)
        report.methods[name] = metrics
    if report.test_users:
        report.paired = {
            name: {f"ndcg@{k}": paired_difference(per_user["model"][f"ndcg@{k}"], metrics[f"ndcg@{k}"]) for k in ks}
            for name, metrics in per_user.items() if name != "model"
        }
    if cap_grid:
        evaluate_cap_grid(report, show_progress)
    return report


def baseline_recommenders(
    train: Dataset, model: EmbeddingModel | None, eligible: Eligibility
) -> tuple[dict[str, Recommender], dict[str, str]]:
    """Every baseline that applies: popularity, followed sellers (with follows), friends'
    likes (with friendships), and with a model ALS alone and its item-kNN alone, and EASE
    alone where the catalogue allows; and the baselines left out, each with why."""
    left_out = baselines_without_data(train)
    methods: dict[str, Recommender] = {"popularity": popularity_baseline(train, eligible)}
    if "followed_sellers" not in left_out:
        methods["followed_sellers"] = followed_sellers_baseline(train, eligible)
    if "friends_likes" not in left_out:
        methods["friends_likes"] = friends_likes_baseline(train, eligible)
    if model is not None:
        methods["als"] = als_baseline(model, train, eligible)
        if model.item_knn is not None:
            methods["item_knn"] = item_knn_baseline(model, train, eligible)
        else:
            left_out["item_knn"] = "no item-to-item model was trained (--knn none)"
    ease = ease_baseline(train, eligible)
    if ease is not None:
        methods["ease"] = ease
    else:
        left_out["ease"] = f"more than EASE_MAX_ITEMS={EASE_MAX_ITEMS:,} items with support: too large for EASE"
    return methods, left_out


def cap_grid_settings(settings: FeedSettings, depth: int) -> list[FeedSettings]:
    """The configured caps first, then the category cap off, 1 and 2 at the configured seller
    cap, then the seller cap at 1 and off (``depth``: never binds on a page of ``depth``)
    without a category cap, and off with a category cap of 1; settings that select the same
    pages are listed once (6 settings under the defaults, at most 7)."""
    configured = (settings.max_per_seller, settings.max_per_category)
    grid = [configured, *((settings.max_per_seller, c) for c in (0, 1, 2)), (1, 0), (depth, 0), (depth, 1)]
    out: list[FeedSettings] = []
    seen: set[tuple[int, int]] = set()
    for seller, category in grid:
        # A cap of a whole page or more never binds: such settings give the same pages.
        key = (min(seller, depth), 0 if category >= depth else category)
        if key not in seen:
            seen.add(key)
            out.append(replace(settings, max_per_seller=seller, max_per_category=category))
    return out


def evaluate_cap_grid(report: EvaluationReport, show_progress: bool = False) -> list[dict]:
    """Fill ``report.cap_grid``: the "model" row's feed under each of ``cap_grid_settings``.

    Only the page caps change: same model, ranker, replay time, users and cut-offs as the
    main table (the configured setting reuses the "model" row's pages). Each row has the
    caps, whether they are the configured ones, precision, recall and NDCG at each k, the
    mean page length (a cap leaves a page short when too few candidates pass it), and the
    mean number of distinct categories and of distinct sellers per page of max(ks) items,
    over every test user as the other metrics (an empty page counts 0; items without a
    category, or a seller, are not counted; on data where no item has one, the rows have no
    categories@k, or sellers@k).
    """
    replay = report.replay
    if replay is None:
        raise ValueError("the report kept no replay of the feed (made by evaluate()): cannot add the cap grid")
    started = time.perf_counter()
    depth = max(report.ks)
    items = replay.train.items
    if not any(items.seller_id) and not any(items.category):
        # Every setting would give the model row's pages again (Last.fm: 6 equal rows, 116 s).
        report.cap_grid_skipped = "no item has a seller or a category, so no cap can change a page"
        return []
    category_of = dict(zip(items.item_id, items.category))
    seller_of = dict(zip(items.item_id, items.seller_id))
    users = sorted(replay.relevant)
    store: MemoryStore | None = None
    rows: list[dict] = []
    for settings in cap_grid_settings(replay.settings, depth):
        configured = settings == replay.settings
        if configured:
            pages = replay.pages
        else:
            if store is None:  # loaded once, shared by the replays: they only read it
                store = MemoryStore.from_dataset(replay.train, progress=show_progress)
            recommend = pipeline_recommender(replay.train, replay.model, replay.ranker, replay.now, settings, store=store)
            label = f"caps seller {settings.max_per_seller} category {settings.max_per_category}"
            progress = tqdm(users, desc=label, unit="user", disable=not show_progress, leave=False)
            pages = {user_id: recommend(user_id, depth) for user_id in progress}
        row: dict = {
            "max_per_seller": settings.max_per_seller,
            "max_per_category": settings.max_per_category,
            "configured": configured,
        }
        row.update(ranking_metrics(pages, replay.relevant, report.ks))
        row[f"items@{depth}"] = float(np.mean([len(page[:depth]) for page in pages.values()])) if pages else 0.0
        # mean_distinct_sellers counts the distinct non-empty values of any item -> key map.
        if any(items.category):
            row[f"categories@{depth}"] = mean_distinct_sellers(pages, category_of, depth)
        if any(items.seller_id):
            row[f"sellers@{depth}"] = mean_distinct_sellers(pages, seller_of, depth)
        rows.append(row)
    report.cap_grid = rows
    report.cap_grid_seconds = time.perf_counter() - started
    return rows


# -- command line ------------------------------------------------------------------------


def write_test_file(path: str, test: Edges) -> None:
    """``test``'s pairs as the CSV ``read_test_file`` reads (header user_id,item_id)."""
    import csv

    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "item_id"])
        writer.writerows(zip(test.src, test.dst))


def read_test_file(path: str, warnings: list[str] | None = None) -> Edges:
    """A CSV of user_id,item_id test pairs (header row), read as a dataset file is
    (training.dataset.read_id_pairs: columns by name, others ignored with a warning, ids
    stripped); bad rows name line and column, and a file without pairs is an error."""
    from training.dataset import DatasetError, read_id_pairs

    pairs = read_id_pairs(path, ("user_id", "item_id"), warnings)
    if not len(pairs):
        raise DatasetError(os.path.basename(path), 0, "<file>", "no test pairs (nothing after the header row)")
    return pairs


CHART_METRICS = ("precision", "recall", "ndcg")
# Fixed so the same metrics give the same SVG bytes (matplotlib salts its SVG ids randomly otherwise).
_SVG_HASH_SALT = "feedrank-evaluation-chart"
# Per output format, the metadata entries that would otherwise stamp the file with the current time.
_UNDATED = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}


def plot_report(report: EvaluationReport, path: str) -> None:
    """A grouped bar chart of every metric per method, written to ``path`` (format from its
    extension, PNG when it has none; needs the `plot` extra: matplotlib)."""
    extension = os.path.splitext(path)[1].lstrip(".").lower()
    chart = plot_metrics(report.as_json(), extension or "png")
    with open(path, "wb") as handle:
        handle.write(chart)


def plot_metrics(metrics: dict, fmt: str = "svg") -> bytes:
    """The grouped bar chart of a manifest's "metrics" entry (``EvaluationReport.as_json()``):
    precision, recall and ndcg at each cut-off present, one bar per method ("model" first,
    then the baselines). Returns the file's bytes in ``fmt``; the same metrics give the same bytes.

    ValueError when matplotlib is missing (the `plot` extra) or nothing in ``metrics`` can be plotted.
    """
    mpl = _matplotlib()
    methods = chart_methods(metrics)
    columns = [f"{m}@{k}" for k in chart_cutoffs(methods) for m in CHART_METRICS]
    if not columns:
        raise ValueError("no precision/recall/ndcg@k values in the metrics to plot")
    test_users = metrics.get("test_users")
    title = "feed vs baselines" + (f" ({test_users} test users)" if test_users else "")
    # fonttype "none": labels stay <text> elements (searchable, small) instead of glyph paths.
    with mpl.rc_context({"svg.hashsalt": _SVG_HASH_SALT, "svg.fonttype": "none"}):
        figure = mpl.figure.Figure(figsize=(max(8, 1.4 * len(columns)), 4.5), layout="tight")
        _draw_bars(figure.subplots(), methods, columns, title)
        buffer = io.BytesIO()
        figure.savefig(buffer, format=fmt, dpi=120, metadata=_UNDATED.get(fmt))
    return buffer.getvalue()


def chart_methods(metrics: dict) -> dict[str, dict[str, float]]:
    """Method name -> its metrics, "model" first, then the baselines; methods without metrics left out."""
    methods = {"model": metrics.get("model") or {}, **(metrics.get("baselines") or {})}
    return {name: values for name, values in methods.items() if values}


def chart_cutoffs(methods: dict[str, dict[str, float]]) -> list[int]:
    """The cut-offs k with a precision, recall or ndcg@k value in any method, ascending."""
    cutoffs: set[int] = set()
    for values in methods.values():
        for key in values:
            name, _, k = key.partition("@")
            if name in CHART_METRICS and k.isdigit():
                cutoffs.add(int(k))
    return sorted(cutoffs)


def _draw_bars(axes, methods: dict[str, dict[str, float]], columns: list[str], title: str) -> None:
    width = 0.8 / len(methods)
    x = np.arange(len(columns))
    for i, (method, values) in enumerate(methods.items()):
        axes.bar(x + i * width, [values.get(c, 0.0) for c in columns], width, label=method)
    axes.set_xticks(x + width * (len(methods) - 1) / 2, columns)
    axes.set_ylabel("score")
    axes.set_title(title)
    axes.legend(fontsize="small")


def _matplotlib():
    # matplotlib.figure.Figure, not pyplot: renders headless (Agg for PNG) without touching
    # pyplot's global backend or figure list, so the trainer can call it from any thread.
    try:
        import matplotlib
        import matplotlib.figure
    except ImportError as error:
        raise ValueError("plotting needs matplotlib: pip install 'feedrank[plot]'") from error
    return matplotlib
