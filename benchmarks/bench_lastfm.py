"""Last.fm 2K end to end: the served feed against published social recommenders.

  python -m benchmarks.bench_lastfm --src ../shared/data/lastfm-2k [--protocols binary,weighted]
      [--splits user,random] [--seeds 0,1,2,3,4] [--published-split DIR] [--ablation] [--json OUT]

Protocols (how a like weighs). "binary": every user-artist pair a positive of weight 1,
the listening counts dropped from the dataset so nothing can read them; what SocialLGN
and most papers report under. "weighted": log2(1 + count) as ALS and item-kNN weights,
information SocialLGN never saw, reported beside it, never instead.

Splits (how the test pairs are drawn, 80/20, training items masked, every artist
rankable, metrics averaged over users with test pairs). "user": 20 % of each user's
artists (the protocol issue 8 set its targets on). "random": 20 % of all pairs at random,
so a user holds out 1 to 22 artists: the shape of the split SocialLGN published (its
train_set.txt/test_set.txt), and so the only one its numbers compare with.
``--published-split DIR`` (their data/preprocessed/lastfm) adds that very split, once.

For each seed the whole pipeline is retrained on the 80 % part: ALS and item-kNN, then
the ranker, fitted on a validation split carved out of the 80 % part (never the test
part), then the served feed is replayed over the test users. The binary protocol runs
the code's defaults (chosen by ``python -m training tune`` on Last.fm); the weighted one
the hand-set LASTFM_PARAMS (chosen for log counts). Prints mean ± std over the seeds,
the wall time and the peak memory (max RSS); --ablation adds one row per candidate
source removed and per ranker feature removed (first split, first seed).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from dataclasses import replace

import numpy as np

from ranking.features import FEATURE_NAMES
from ranking.feed import SOURCE_NAMES, FeedSettings
from training.dataset import DatasetError, Edges
from training.experiment import evaluate_split
from training.flag_types import output_file, whole_numbers
from training.ranker_fit import RankerFitParams
from training.splits import SplitSpec
from training.train import TrainParams

# SocialLGN (Liao et al., Information Sciences 2022), Last.fm, random 80/20 split, K=10.
SOCIALLGN = {"precision@10": 0.1972, "recall@10": 0.2026, "ndcg@10": 0.2566}

LASTFM_PARAMS = TrainParams(
    factors=32, regularization=30.0, alpha=1.5, iterations=15, weight_transform="log",
    knn="cosine", knn_k=200, show_progress=False,
)
"""Chosen on a validation split (20% of seed 0's training part): see benchmarks/README.md."""
LASTFM_SETTINGS = FeedSettings(per_key_limit=50, neighbours=200, knn_neighbours=200)
"""Every user has at most 50 artists: read all of each friend's, not the "newest" 20 (there are no times)."""
LASTFM_RANKER = RankerFitParams(objective="pairwise", validation_fraction=0.2, max_users=2000)

PROTOCOLS = {
    "binary": (TrainParams(weight_transform="binary", show_progress=False), FeedSettings(), RankerFitParams()),
    "weighted": (LASTFM_PARAMS, LASTFM_SETTINGS, LASTFM_RANKER),
}
"""Protocol -> (train params, feed settings, ranker fit) it runs with."""
SPLITS = ("user", "random")
SPLIT_TITLES = {"user": "20 % of each user's artists", "random": "20 % of all pairs at random",
                "published": "SocialLGN's published split"}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def mean_std(rows: list[dict[str, float]], key: str) -> tuple[float, float]:
    values = np.array([r[key] for r in rows], dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def as_protocol(dataset, protocol: str):
    """The binary protocol drops the listening counts, so nothing downstream can read them."""
    if protocol == "binary":
        return dataset.with_likes(Edges(dataset.likes.src, dataset.likes.dst, dataset.likes.ts))
    return dataset


def run_seed(dataset, protocol: str, split: SplitSpec | None, ks, settings: FeedSettings | None = None,
             ranker: RankerFitParams | None = None, compare_blend: bool = True, test: Edges | None = None):
    """One evaluation: ``split`` cuts ``dataset``, or (None) ``dataset`` is the training part and ``test`` the test."""
    params, default_settings, default_ranker = PROTOCOLS[protocol]
    seed = split.seed if split is not None else 0
    return evaluate_split(
        as_protocol(dataset, protocol), split, test, ks, replace(params, seed=seed), settings or default_settings,
        show_progress=False, ranker_params=replace(ranker or default_ranker, seed=seed), compare_blend=compare_blend,
    )


def summarise(reports: dict[int, object], ks) -> dict[str, dict[str, tuple[float, float]]]:
    """Mean and spread over the seeds of each method every seed's report has: evaluate leaves
    out a baseline that recommends nothing to any test user, which one split may and another not."""
    metrics = [f"{m}@{k}" for k in ks for m in ("precision", "recall", "ndcg")]
    seeds = list(reports)
    return {
        name: {key: mean_std([reports[s].methods[name] for s in seeds], key) for key in metrics}
        for name in reports[seeds[0]].methods
        if all(name in reports[s].methods for s in seeds)
    }


def print_table(title: str, summary, reports, ks, compares_with_sociallgn: bool) -> None:
    metrics = [f"{m}@{k}" for k in ks for m in ("precision", "recall", "ndcg")]
    seeds = list(reports)
    methods = list(summary)
    width = max(len(n) for n in methods + ["SocialLGN (published)"])
    several = len(seeds) > 1
    print(f"\n{title}, " + (f"{len(seeds)} runs ({', '.join(map(str, seeds))}): mean ± std" if several else "one run"))
    print(f"{'method':<{width}} " + " ".join(f"{m:>17}" for m in metrics))

    def shown(mean: float, std: float) -> str:
        return f"{mean:8.4f} ± {std:6.4f}" if several else f"{mean:8.4f}{'':9}"

    for name in methods:
        print(f"{name:<{width}} " + " ".join(shown(*summary[name][m]) for m in metrics))
    if compares_with_sociallgn:
        print(f"{'SocialLGN (published)':<{width}} " + " ".join(
            f"{SOCIALLGN[m]:8.4f}{'':9}" if m in SOCIALLGN else f"{'':>17}" for m in metrics))
    first = reports[seeds[0]]
    print(f"{first.test_users} test users, {first.test_pairs} test pairs, {first.unseen_test_items} with an artist "
          f"unseen in training (misses) [{seeds[0]}]")


def ablation_variants(settings: FeedSettings, ranker: RankerFitParams) -> dict[str, tuple[FeedSettings, RankerFitParams]]:
    """One variant per candidate source removed and per ranker feature removed. A removed
    feature stays removed: the trainer would give it back when its baseline ranks the
    validation pools better, and the row would then measure the full feed again."""
    variants = {f"- source {source}": (replace(settings, sources=tuple(s for s in settings.sources if s != source)), ranker)
                for source in SOURCE_NAMES if source != "followed_sellers"}  # Last.fm has no sellers
    variants.update({f"- feature {feature}": (settings, replace(ranker, drop_features=(feature,), restore_dropped=False))
                     for feature in FEATURE_NAMES})
    return variants


def run_ablation(dataset, protocol: str, split: SplitSpec, ks, base) -> dict[str, dict[str, float]]:
    _, settings, ranker = PROTOCOLS[protocol]
    variants = ablation_variants(settings, ranker)
    ablation = {"full": base}
    for name, (variant_settings, variant_ranker) in variants.items():
        ablation[name] = run_seed(dataset, protocol, split, ks, variant_settings, variant_ranker, False).methods["model"]
        print(f"{name}: ndcg@10 {ablation[name]['ndcg@10']:.4f}", flush=True)
    print(f"\nAblation, {protocol} protocol, split {split} (each row removes one thing; delta vs full)")
    print(f"{'variant':<34} " + " ".join(f"{m:>12}" for m in ("ndcg@10", "recall@10", "precision@10", "Δ ndcg@10")))
    for name, m in ablation.items():
        print(f"{name:<34} " + " ".join(f"{m[k]:12.4f}" for k in ("ndcg@10", "recall@10", "precision@10"))
              + f" {m['ndcg@10'] - base['ndcg@10']:+12.4f}")
    return ablation


def _choices(parser: argparse.ArgumentParser, flag: str, text: str, known) -> list[str]:
    chosen = [c for c in text.split(",") if c]
    unknown = sorted(set(chosen) - set(known))
    if unknown or not chosen:
        parser.error(f"{flag}: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(known)}")
    return chosen


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_lastfm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--src", required=True, help="folder of the HetRec 2011 Last.fm 2K files (read in place, never copied)")
    data.add_argument("--published-split", metavar="DIR",
                      help="also evaluate the binary protocol on SocialLGN's published split: DIR is their "
                           "data/preprocessed/lastfm (train_set.txt, test_set.txt, userReindex.json, itemReindex.json)")
    run = parser.add_argument_group("run")
    run.add_argument("--protocols", default="binary,weighted",
                     help="binary (like for like with SocialLGN) and/or weighted (listening counts as weights) "
                          "(default: %(default)s)")
    run.add_argument("--splits", default="user,random",
                     help="user (20%% of each user's artists) and/or random (20%% of all pairs, the shape of "
                          "SocialLGN's published split) (default: %(default)s)")
    run.add_argument("--seeds", default="0,1,2,3,4", type=whole_numbers(0), help="split seeds, comma-separated (default: %(default)s)")
    run.add_argument("--k", default="10,20", type=whole_numbers(1),
                     help="cut-offs; 10 (SocialLGN's) is always among them (default: %(default)s)")
    run.add_argument("--ablation", action="store_true", help="also remove each source and each feature in turn (first split and seed)")
    out = parser.add_argument_group("output")
    out.add_argument("--json", type=output_file, help="write every number as JSON here")
    args = parser.parse_args(argv)
    protocols = _choices(parser, "--protocols", args.protocols, PROTOCOLS)
    splits = _choices(parser, "--splits", args.splits, SPLITS)

    from training.lastfm import read_lastfm, split_as_published

    started = time.perf_counter()
    seeds, ks = args.seeds, tuple(sorted({10, *args.k}))  # 10: SocialLGN's cut-off, and the per-seed lines'
    try:
        dataset = read_lastfm(args.src)
    except DatasetError as error:
        parser.error(f"--src {args.src}: {error}")
    try:
        published = split_as_published(dataset, args.published_split) if args.published_split else None
    except DatasetError as error:
        parser.error(f"--published-split {args.published_split}: {error}")
    payload: dict[str, object] = {"seeds": seeds, "sociallgn": SOCIALLGN, "protocols": {}}
    for protocol in protocols:
        results: dict[str, object] = {}
        for kind in splits:
            reports = {}
            for seed in seeds:
                t = time.perf_counter()
                reports[seed] = run_seed(dataset, protocol, SplitSpec(kind, 0.2, seed), ks)
                m = reports[seed].methods["model"]
                print(f"{protocol} {kind}:0.2:{seed}: ndcg@10 {m['ndcg@10']:.4f} recall@10 {m['recall@10']:.4f} "
                      f"precision@10 {m['precision@10']:.4f} ({time.perf_counter() - t:.0f} s)", flush=True)
            results[kind] = reports
        if published is not None and protocol == "binary":
            results["published"] = {"SocialLGN's split": run_seed(published[0], protocol, None, ks, test=published[1])}
        payload["protocols"][protocol] = {}
        for kind, reports in results.items():
            summary = summarise(reports, ks)
            print_table(f"Last.fm 2K, {protocol} protocol, {SPLIT_TITLES[kind]}", summary, reports, ks,
                        compares_with_sociallgn=protocol == "binary" and kind in ("random", "published"))
            ablation = {}
            if args.ablation and kind == splits[0]:
                ablation = run_ablation(dataset, protocol, SplitSpec(kind, 0.2, seeds[0]), ks, reports[seeds[0]].methods["model"])
            payload["protocols"][protocol][kind] = {
                "summary": {n: {k: {"mean": v[0], "std": v[1]} for k, v in s.items()} for n, s in summary.items()},
                "per_seed": {s: r.as_json() for s, r in reports.items()},
                "ablation": ablation,
            }
    elapsed = time.perf_counter() - started
    print(f"time {elapsed:.0f} s for {len(protocols)} protocol(s) × {len(splits)} split kind(s) × {len(seeds)} seeds, "
          f"peak memory (max RSS) {peak_rss_mb():.0f} MB")
    if args.json:
        payload.update(seconds=elapsed, peak_rss_mb=peak_rss_mb())
        with open(args.json, "w") as handle:
            json.dump(payload, handle, indent=2)


if __name__ == "__main__":
    main(sys.argv[1:])
