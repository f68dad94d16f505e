"""Feed quality against candidate-pool size, on a validation split: how small can pools be?

    python -m benchmarks.bench_pools --data /tmp/g20 --split time:0.2
    python -m benchmarks.bench_pools --data /tmp/lastfm --split random:0.2:0 --factors 32 \\
        --regularization 30 --alpha 1.5 --knn-k 200 --ranker-validation 0.2 --ranker-users 2000 \\
        --base per_key_limit=50

The test part of ``--split`` is set aside and never read. The validation split is carved
out of the training part with the same shape as the test (the latest likes for a time
split, random ones for a random split, a share of each user's likes for a per-user one:
``training.splits.validation_split``), and so is the ranker's own; the model and the ranker are trained once on the rest, then the served pipeline is replayed with one
knob changed at a time (embedding neighbours, item-kNN neighbours, trending items,
listings or likes read per followed seller or friend, the HNSW search breadth) and
scored with NDCG@10/@20 over a seeded sample of validation users. Per knob, the smallest value whose NDCG@10 is within
``--tolerance`` (1 %) of that knob's best is marked as chosen.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from dataclasses import asdict, replace

import numpy as np

from ranking.feed import FeedSettings, build_feed_pipeline
from stores.memory import MemoryStore
from training.arguments import (
    add_training_arguments,
    check_time_split,
    params_from_args,
    ranker_params_from_args,
    split_text,
)
from training.dataset import Dataset, DatasetError, Edges, load_dataset
from training.flag_types import bounded, output_file
from training.metrics import ranking_metrics
from training.ranker_fit import fit_ranker
from training.splits import SplitSpec, split_for_evaluation, validation_split
from training.train import train

KNOBS: dict[str, tuple[int, ...]] = {
    "neighbours": (25, 50, 100, 200),
    "knn_neighbours": (25, 50, 100, 200),
    "trending_limit": (20, 50, 100),
    "per_key_limit": (5, 10, 20),
    "ef_search": (32, 64, 128),  # hnsw-* indexes only; 0 (the model's own) is not swept
}


def parse_base(items: list[str]) -> dict[str, int]:
    base = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in KNOBS or not value.isdigit():
            raise SystemExit(f"--base: expected KNOB=INT with KNOB in {sorted(KNOBS)}, got {item!r}")
        base[name] = int(value)
    return base


def validation_parts(dataset: Dataset, split: SplitSpec, fraction: float, seed: int) -> tuple[Dataset, Edges, float]:
    """(fit part, validation likes, now): the test part of ``split`` set aside, and the
    validation carved out of the rest in the test's shape (a random test, a random validation)."""
    train_part, _, _ = split_for_evaluation(dataset, split)
    return validation_split(train_part, fraction, seed, kind=split.kind)


def sweep(args: argparse.Namespace, dataset: Dataset) -> dict:
    started = time.perf_counter()
    split = SplitSpec.parse(args.split)
    fit_part, valid, now = validation_parts(dataset, split, args.validation, args.seed)
    params = params_from_args(args)
    base = replace(FeedSettings(), **parse_base(args.base))
    # The ranker's own validation, carved out of the fit part, takes the same shape too.
    ranker_params = replace(ranker_params_from_args(args), validation_kind=split.kind)
    ranker, _, warm = fit_ranker(fit_part, params, base, ranker_params)
    model, _ = train(fit_part, params, initial=warm)
    relevant: dict[str, set[str]] = defaultdict(set)
    for user_id, item_id in zip(valid.src, valid.dst):
        relevant[user_id].add(item_id)
    users = sorted(relevant)
    if 0 < args.users < len(users):
        users = sorted(np.random.default_rng(args.seed).choice(users, args.users, replace=False).tolist())
    store = MemoryStore.from_dataset(fit_part)

    def quality(settings: FeedSettings) -> dict[str, float]:
        pipeline = build_feed_pipeline(store, model, ranker, settings)
        recommended = {u: [i.item_id for i in pipeline.run(u, 20, now).items] for u in users}
        return ranking_metrics(recommended, {u: relevant[u] for u in users}, (10, 20))

    rows = []
    knobs = {name: KNOBS[name] for name in args.knobs or KNOBS}
    for knob, values in knobs.items():
        for value in sorted({*values, getattr(base, knob)} - {0}):
            metrics = quality(replace(base, **{knob: value}))
            rows.append({"knob": knob, "value": value, **{k: round(v, 5) for k, v in metrics.items()}})
            print(f"{knob:<16} {value:>5}  ndcg@10 {metrics['ndcg@10']:.4f}  ndcg@20 {metrics['ndcg@20']:.4f}", flush=True)
    chosen = {}
    for knob in knobs:
        knob_rows = [r for r in rows if r["knob"] == knob]
        best = max(r["ndcg@10"] for r in knob_rows)
        chosen[knob] = min(r["value"] for r in knob_rows if r["ndcg@10"] >= (1 - args.tolerance) * best)
    combined = quality(replace(base, **chosen))
    return {
        "data": args.data,
        "split": args.split,
        "validation_users": len(users),
        "base": asdict(base),
        "rows": rows,
        "chosen": chosen,
        "chosen_ndcg@10": round(combined["ndcg@10"], 5),
        "base_ndcg@10": round(quality(base)["ndcg@10"], 5),
        "seconds": round(time.perf_counter() - started, 1),
    }


def format_table(report: dict) -> str:
    lines = [f"{'knob':<16} {'value':>6} {'NDCG@10':>8} {'NDCG@20':>8}"]
    for r in report["rows"]:
        mark = "  <- chosen" if report["chosen"][r["knob"]] == r["value"] else ""
        lines.append(f"{r['knob']:<16} {r['value']:>6} {r['ndcg@10']:>8.4f} {r['ndcg@20']:>8.4f}{mark}")
    lines.append(
        f"validation users {report['validation_users']}; all chosen together: NDCG@10 {report['chosen_ndcg@10']:.4f} "
        f"(base {report['base_ndcg@10']:.4f})"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_pools", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="dataset directory")
    parser.add_argument("--split", required=True, type=split_text(), help="the TEST protocol: time:FRACTION, random:FRACTION[:SEED] or user:FRACTION[:SEED]; its test part is never read")
    parser.add_argument("--validation", type=bounded(float, above=0, below=1), default=0.2, help="share of the training part held out for validation (default: %(default)s)")
    parser.add_argument("--users", type=bounded(int, 0), default=2000, help="validation users sampled, 0 = all (default: %(default)s)")
    parser.add_argument("--tolerance", type=bounded(float, 0, below=1), default=0.01, help="a value is good enough within this share of the knob's best NDCG@10 (default: %(default)s)")
    parser.add_argument("--base", action="append", default=[], metavar="KNOB=INT", help="start from this value of a knob instead of the serving default")
    parser.add_argument("--knobs", type=lambda text: text.split(","), help=f"sweep only these knobs, comma-separated (default: all of {', '.join(KNOBS)})")
    parser.add_argument("--json", type=output_file, help="write the report as JSON here")
    add_training_arguments(parser)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.knobs or ()) - set(KNOBS))
    if unknown:
        parser.error(f"--knobs: unknown {', '.join(unknown)}; choose from {', '.join(KNOBS)}")
    started = time.perf_counter()
    try:
        dataset = load_dataset(args.data)
        check_time_split(dataset, SplitSpec.parse(args.split), "--split")
    except DatasetError as error:
        parser.error(f"--data {args.data}: {error}")
    except ValueError as error:  # a time split of likes it cannot order
        parser.error(str(error))
    report = sweep(args, dataset)
    report["seconds"] = round(time.perf_counter() - started, 1)  # the load included, as before
    print(format_table(report))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
