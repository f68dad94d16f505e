"""Offline evaluation: replay the serving pipeline on a held-out split, beside baselines.

The "model" row is the feed the server would return (same sources, filters, ranker and
seller cap), built in process over a memory store loaded with the training part; its
ranker is fitted on a validation split carved out of the training part (never on the
test part), exactly as ``python -m training train`` fits the one it publishes. The
"blend" row is the same feed under the hand-set blend. Every method sees the same
eligibility rules: in stock, not already liked, not the user's own.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from embeddings.model import EmbeddingModel
from ranking.feed import FeedSettings, build_feed_pipeline
from ranking.ranker import LinearRanker
from serving.stores.memory import MemoryStore
from training.dataset import Dataset, Edges
from training.metrics import catalogue_coverage, mean_distinct_sellers, ranking_metrics

Recommender = Callable[[str, int], list[str]]


@dataclass
class EvaluationReport:
    """Metrics per method ("model" first), keyed like "ndcg@10"."""

    ks: tuple[int, ...]
    methods: dict[str, dict[str, float]] = field(default_factory=dict)
    test_users: int = 0
    test_users_total: int = 0  # before sampling down to ``max_users``
    test_pairs: int = 0
    unseen_test_items: int = 0  # test rows whose item never appears in the training data
    ranker: dict | None = None  # the served ranker's manifest entry, when one was fitted

    def as_json(self) -> dict:
        methods = dict(self.methods)
        model = methods.pop("model", {})
        return {
            "model": model,
            "baselines": methods,
            "coverage": model.get(f"coverage@{max(self.ks)}", 0.0),
            "test_users": self.test_users,
            "test_users_total": self.test_users_total,
            "test_pairs": self.test_pairs,
            "unseen_test_items": self.unseen_test_items,
            **({"ranker": self.ranker} if self.ranker else {}),
        }

    def table(self) -> str:
        columns = [f"{m}@{k}" for k in self.ks for m in ("precision", "recall", "ndcg")]
        columns += [f"coverage@{max(self.ks)}", f"sellers@{max(self.ks)}"]
        width = max(len(name) for name in self.methods) if self.methods else 8
        lines = [f"{'method':<{width}} " + " ".join(f"{c:>12}" for c in columns)]
        for name, metrics in self.methods.items():
            lines.append(f"{name:<{width}} " + " ".join(f"{metrics.get(c, math.nan):12.4f}" for c in columns))
        lines.append(
            f"{self.test_users} test users"
            + (f" (a seeded sample of {self.test_users_total})" if self.test_users_total > self.test_users else "")
            + f", {self.test_pairs} test pairs, "
            f"{self.unseen_test_items} test pairs with an item unseen in training (counted as misses)"
        )
        return "\n".join(lines)


class Eligibility:
    """The filters every method obeys, vectorised: in stock, not liked, not own."""

    def __init__(self, train: Dataset) -> None:
        items = train.items
        self.item_ids = list(items.item_id)
        self.row = {item_id: i for i, item_id in enumerate(self.item_ids)}
        self.seller_of = dict(zip(items.item_id, items.seller_id))
        self.in_stock = dict(zip(items.item_id, (items.stock > 0).tolist()))
        self.liked: dict[str, set[str]] = defaultdict(set)
        for user_id, item_id in zip(train.likes.src, train.likes.dst):
            self.liked[user_id].add(item_id)

    def ok(self, user_id: str, item_id: str) -> bool:
        return (
            self.in_stock.get(item_id, False)
            and item_id not in self.liked.get(user_id, ())
            and self.seller_of.get(item_id) != user_id
        )

    def top(self, user_id: str, ranked: Iterable[str], k: int) -> list[str]:
        out: list[str] = []
        for item_id in ranked:
            if self.ok(user_id, item_id):
                out.append(item_id)
                if len(out) == k:
                    break
        return out


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
        depth = k + len(eligible.liked.get(user_id, ())) + 50
        item_ids, _ = model.neighbours(vector, depth)
        return eligible.top(user_id, item_ids, k)

    return recommend


def item_knn_baseline(model: EmbeddingModel, train: Dataset, eligible: Eligibility) -> Recommender:
    """Pure item-kNN: items ranked by summed similarity to all of the user's training likes."""
    knn = model.item_knn
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
) -> Recommender:
    """The served feed, replayed in process over a memory store of the training data."""
    pipeline = build_feed_pipeline(MemoryStore.from_dataset(train, progress=show_progress), model, ranker, settings)
    return lambda user_id, k: [c.item_id for c in pipeline.run(user_id, k, now).items]


def evaluation_time(train: Dataset) -> float:
    """"Now" for a replay: just after the last training event, so recency means what it did then."""
    times = [a[np.isfinite(a)] for a in (train.likes.ts, train.items.created_at, train.follows.ts)]
    finite = np.concatenate(times)
    return float(finite.max()) + 1.0 if finite.size else 0.0


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
) -> EvaluationReport:
    """Evaluate the served feed and the baselines on ``test`` (user -> item pairs).

    With ``max_users`` > 0, metrics average over a seeded sample of that many test users
    (the replay costs milliseconds per user: this bounds it on large datasets).
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
    eligible = Eligibility(train)
    trained_items = set(train.likes.dst)
    report = EvaluationReport(
        ks, test_users=len(relevant), test_users_total=total_users, test_pairs=sum(len(v) for v in relevant.values())
    )
    report.unseen_test_items = sum(1 for items in relevant.values() for i in items if i not in trained_items)

    methods: dict[str, Recommender] = {
        "model": pipeline_recommender(
            train, model, ranker, evaluation_time(train) if now is None else now, settings, show_progress
        ),
        "popularity": popularity_baseline(train, eligible),
        "followed_sellers": followed_sellers_baseline(train, eligible),
        "friends_likes": friends_likes_baseline(train, eligible),
    }
    if model is not None:
        methods["als"] = als_baseline(model, train, eligible)
        if model.item_knn is not None:
            methods["item_knn"] = item_knn_baseline(model, train, eligible)
    methods.update(extra_methods or {})
    users = sorted(relevant)
    for name, recommend in methods.items():
        progress = tqdm(users, desc=f"evaluate {name}", unit="user", disable=not show_progress, leave=False)
        recommended = {user_id: recommend(user_id, depth) for user_id in progress}
        metrics = ranking_metrics(recommended, relevant, ks)
        metrics[f"coverage@{depth}"] = catalogue_coverage(recommended, len(eligible.item_ids), depth)
        metrics[f"sellers@{depth}"] = mean_distinct_sellers(recommended, eligible.seller_of, depth)
        report.methods[name] = metrics
    return report


# -- command line ------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitSpec:
    """How to hold out test likes: "random" (fraction, seed) or "time" (latest fraction)."""

    kind: str
    fraction: float
    seed: int = 0

    @classmethod
    def parse(cls, text: str) -> SplitSpec:
        """Parse random:FRACTION[:SEED] or time:FRACTION; raises ValueError naming the problem."""
        parts = text.split(":")
        try:
            if parts[0] == "random" and len(parts) in (2, 3):
                return cls("random", float(parts[1]), int(parts[2]) if len(parts) == 3 else 0)
            if parts[0] == "time" and len(parts) == 2:
                return cls("time", float(parts[1]))
        except ValueError:
            pass
        raise ValueError(f"--split: expected random:FRACTION[:SEED] or time:FRACTION, got {text!r}")


def catalogue_at(dataset: Dataset, now: float) -> Dataset:
    """``dataset`` as the store held it at ``now``: items created later are not listed yet.

    A time split that left them in would let the replay (and every baseline) serve items
    that did not exist at "now", and let a ranker learn that a creation time in the future
    predicts the test likes. Items with an unknown creation time and items liked in
    ``dataset`` stay.
    """
    import dataclasses

    items = dataset.items
    keep = ~(np.asarray(items.created_at) > now)
    if keep.all():
        return dataset
    liked = set(dataset.likes.dst)
    keep |= np.fromiter((i in liked for i in items.item_id), bool, len(items))
    rows = np.flatnonzero(keep)
    idx = rows.tolist()
    kept = dataclasses.replace(
        items,
        item_id=[items.item_id[i] for i in idx],
        seller_id=[items.seller_id[i] for i in idx],
        created_at=items.created_at[rows],
        stock=items.stock[rows],
        price=items.price[rows],
        category=[items.category[i] for i in idx],
    )
    return dataclasses.replace(dataset, items=kept)


def split_for_evaluation(dataset: Dataset, spec: SplitSpec) -> tuple[Dataset, Edges, float | None]:
    """(train, test, now); ``now`` is the split time for time splits, else None (derived).

    For a time split the training part holds the catalogue as it was at the split time
    (``catalogue_at``).
    """
    from training.splits import random_split, time_split

    if spec.kind == "time":
        train, test, now = time_split(dataset, spec.fraction)
        return catalogue_at(train, now), test, now
    train, test = random_split(dataset, spec.fraction, spec.seed)
    return train, test, None


def default_split(dataset: Dataset) -> SplitSpec:
    """A time split when every like has a time (what serving faces), else a random one."""
    has_times = len(dataset.likes) > 0 and bool(np.isfinite(dataset.likes.ts).all())
    return SplitSpec("time", 0.2) if has_times else SplitSpec("random", 0.2, 0)


def read_test_file(path: str) -> Edges:
    """A CSV of user_id,item_id (header row) as test pairs; bad rows name line and column."""
    import csv

    from training.dataset import DatasetError

    name = path.rsplit("/", 1)[-1]
    src: list[str] = []
    dst: list[str] = []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["user_id", "item_id"]:
            raise DatasetError(name, 1, "user_id", "expected the header user_id,item_id")
        for row in reader:
            if not row:
                continue
            line = reader.line_num
            if len(row) != 2:
                raise DatasetError(name, line, "<row>", f"expected 2 fields, got {len(row)}")
            for column, value in zip(("user_id", "item_id"), row):
                if not value:
                    raise DatasetError(name, line, column, "must not be empty")
            src.append(row[0])
            dst.append(row[1])
    return Edges(src, dst, np.full(len(src), np.nan))


def plot_report(report: EvaluationReport, path: str) -> None:
    """A grouped bar chart of every metric per method (needs the `plot` extra: matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ValueError("--plot needs matplotlib: pip install 'feedrank[plot]'") from error
    metrics = [f"{m}@{k}" for k in report.ks for m in ("precision", "recall", "ndcg")]
    methods = list(report.methods)
    width = 0.8 / len(methods)
    figure, axes = plt.subplots(figsize=(max(8, 1.4 * len(metrics)), 4.5))
    x = np.arange(len(metrics))
    for i, method in enumerate(methods):
        axes.bar(x + i * width, [report.methods[method].get(m, 0.0) for m in metrics], width, label=method)
    axes.set_xticks(x + width * (len(methods) - 1) / 2, metrics)
    axes.set_ylabel("score")
    axes.set_title(f"feed vs baselines ({report.test_users} test users)")
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def parse_ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(sorted({int(k) for k in text.split(",") if k.strip()}))
    except ValueError:
        ks = ()
    if not ks or min(ks) < 1:
        raise ValueError(f"--k: expected comma-separated positive integers, got {text!r}")
    return ks


def evaluate_split(
    dataset: Dataset,
    split: SplitSpec | None,
    test: Edges | None,
    ks: Sequence[int],
    params,
    settings: FeedSettings = FeedSettings(),
    show_progress: bool = True,
    ranker_params=None,
    compare_blend: bool = True,
    max_users: int = 0,
) -> EvaluationReport:
    """Train on the training part with ``params`` and evaluate the served feed on the rest.

    The served ranker is fitted on a validation split of the training part
    (``ranker_params``, a RankerFitParams; objective "blend" keeps the hand-set blend).
    With ``compare_blend`` the same feed under the hand-set blend is reported as "blend".
    ``report.ranker`` holds the fitted ranker's manifest entry.
    """
    from embeddings.als import build_interactions
    from ranking.ranker import DEFAULT_RANKER
    from training.ranker_fit import RankerFitParams, fit_ranker, ranker_spec
    from training.train import train

    ranker_params = ranker_params or RankerFitParams()
    if test is not None:
        train_part, now = dataset, None
    else:
        train_part, test, now = split_for_evaluation(dataset, split or default_split(dataset))
    ranker, extra, warm = DEFAULT_RANKER, {}, None
    fit_info: dict = {"objective": "blend"}
    interactions = build_interactions(train_part, params.like_weight, params.follow_weight, params.weight_transform)
    if ranker_params.objective != "blend":
        # As the trainer publishes: the ranker's fit-part model first, the served model from it.
        ranker, fit_info, warm = fit_ranker(train_part, params, settings, ranker_params, interactions)
    model, _ = train(train_part, params, interactions, initial=warm)
    if ranker_params.objective != "blend":
        if compare_blend:
            replay_now = evaluation_time(train_part) if now is None else now
            extra["blend"] = pipeline_recommender(train_part, model, DEFAULT_RANKER, replay_now, settings)
    report = evaluate(
        train_part, test, model, ranker, ks, settings, now=now, extra_methods=extra, show_progress=show_progress,
        max_users=max_users,
    )
    report.ranker = ranker_spec(ranker, fit_info)
    return report


def held_out_evaluation(
    split_text: str,
    ks: Sequence[int],
    params,
    ranker_params=None,
    settings: FeedSettings = FeedSettings(),
    max_users: int = 0,
):
    """An evaluate_fn for train_and_publish: prints the table, returns the manifest metrics.

    No "blend" row here, to keep retraining fast: ``python -m training evaluate`` has it.
    """
    split = None if split_text == "auto" else SplitSpec.parse(split_text)

    def evaluate_fn(dataset: Dataset, _model: EmbeddingModel) -> dict:
        report = evaluate_split(
            dataset, split, None, ks, params, settings, show_progress=params.show_progress,
            ranker_params=ranker_params, compare_blend=False, max_users=max_users,
        )
        print(report.table(), flush=True)
        return report.as_json()

    return evaluate_fn


DEFAULT_EVAL_USERS = 10_000


def add_eval_users_argument(parser) -> None:
    parser.add_argument(
        "--eval-users", type=int, default=DEFAULT_EVAL_USERS,
        help="average over a seeded sample of this many test users; 0 = all (default: %(default)s)",
    )


def add_arguments(parser) -> None:
    """Flags of ``python -m training evaluate``."""
    from training.train import add_training_arguments

    parser.add_argument("--data", required=True, help="dataset directory")
    held_out = parser.add_mutually_exclusive_group()
    held_out.add_argument("--split", help="random:FRACTION[:SEED] or time:FRACTION (default: time:0.2 when every "
                                          "like has a time, else random:0.2:0)")
    held_out.add_argument("--test", help="CSV of user_id,item_id test pairs; DATA is then all training data")
    parser.add_argument("--k", default="10,20", help="cut-offs (default: %(default)s)")
    parser.add_argument("--json", help="write the metrics as JSON here")
    parser.add_argument("--plot", help="write a PNG bar chart of the metrics here (needs matplotlib)")
    add_eval_users_argument(parser)
    feed = parser.add_argument_group("feed (as served)")
    d = FeedSettings()
    feed.add_argument("--max-per-seller", type=int, default=d.max_per_seller,
                      help="seller cap per page, as served (default: %(default)s)")
    feed.add_argument("--per-key-limit", type=int, default=d.per_key_limit,
                      help="newest listings per followed seller and likes per friend gathered (default: %(default)s)")
    feed.add_argument("--trending-limit", type=int, default=d.trending_limit,
                      help="trending items gathered for a first page (default: %(default)s)")
    feed.add_argument("--neighbours", type=int, default=d.neighbours,
                      help="embedding neighbours gathered per feed (default: %(default)s)")
    feed.add_argument("--knn-neighbours", type=int, default=d.knn_neighbours,
                      help="item-kNN candidates gathered per feed (default: %(default)s)")
    feed.add_argument("--sources", default=",".join(d.sources),
                      help="comma-separated candidate sources of the served feed, for ablations (default: %(default)s)")
    feed.add_argument("--no-blend", action="store_true", help="skip the hand-set blend row (one replay less)")
    add_training_arguments(parser)


def run(args) -> None:
    """Entry point of ``python -m training evaluate``."""
    import json
    from dataclasses import replace

    from training.dataset import load_dataset
    from training.train import params_from_args, ranker_params_from_args

    ks = parse_ks(args.k)
    split = SplitSpec.parse(args.split) if args.split else None
    dataset = load_dataset(args.data)
    test = read_test_file(args.test) if args.test else None
    params = params_from_args(args)
    settings = replace(
        FeedSettings(),
        max_per_seller=args.max_per_seller,
        per_key_limit=args.per_key_limit,
        trending_limit=args.trending_limit,
        neighbours=args.neighbours,
        knn_neighbours=args.knn_neighbours,
        sources=tuple(s for s in args.sources.split(",") if s),
    )
    report = evaluate_split(
        dataset, split, test, ks, params, settings, show_progress=params.show_progress,
        ranker_params=ranker_params_from_args(args), compare_blend=not args.no_blend, max_users=args.eval_users,
    )
    print(report.table())
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report.as_json(), handle, indent=2)
    if args.plot:
        plot_report(report, args.plot)
