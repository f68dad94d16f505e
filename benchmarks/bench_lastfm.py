"""Last.fm 2K end to end: the served feed against published social recommenders.

  python -m benchmarks.bench_lastfm --src ../shared/data/lastfm-2k [--protocols binary,weighted] [--seeds 0,1,2,3,4] [--ablation] [--json OUT]

Protocols. "binary" is the one SocialLGN reports under: a random 80/20 split of each
user's artists, every user-artist pair a positive of weight 1 (listening counts unused),
training items masked, every artist rankable, metrics averaged over users with test
pairs. Only this one compares with the published numbers. "weighted" is the same split
with the listening counts as ALS and item-kNN weights (log2(1 + count)): information
SocialLGN never saw, reported beside it, never instead. For each seed the whole pipeline is
retrained on the 80% part: ALS and item-kNN, then the ranker, fitted on a validation
split carved out of the 80% part (never the test part), then the served feed is replayed
over the test users. Hyperparameters (LASTFM_PARAMS) were chosen on such a validation
split of seed 0's training part. Prints mean ± std over the seeds beside SocialLGN's
published numbers, the wall time and the peak memory (max RSS) of the run; --ablation
adds one row per candidate source removed and per ranker feature removed (seed 0).
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
from training.dataset import Edges
from training.experiment import evaluate_split
from training.ranker_fit import RankerFitParams
from training.splits import SplitSpec
from training.train import TrainParams

# SocialLGN (Liao et al., Information Sciences 2022), Last.fm, random 80/20 split, K=10.
SOCIALLGN = {"precision@10": 0.1972, "recall@10": 0.2026, "ndcg@10": 0.2566}

PROTOCOLS = {"binary": "binary", "weighted": "log"}
"""Protocol -> how a like's weight (the listening count) enters ALS and item-kNN; the
binary protocol also drops the counts from the dataset, so nothing can read them."""

LASTFM_PARAMS = TrainParams(
    factors=32, regularization=30.0, alpha=1.5, iterations=15, weight_transform="log",
    knn="cosine", knn_k=200, show_progress=False,
)
"""Chosen on a validation split (20% of seed 0's training part): see benchmarks/README.md."""
LASTFM_SETTINGS = FeedSettings(per_key_limit=50, neighbours=200, knn_neighbours=200)
"""Every user has at most 50 artists: read all of each friend's, not the "newest" 20 (there are no times)."""
LASTFM_RANKER = RankerFitParams(objective="pairwise", validation_fraction=0.2, max_users=2000)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def mean_std(rows: list[dict[str, float]], key: str) -> tuple[float, float]:
    values = np.array([r[key] for r in rows], dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def run_seed(
    dataset, protocol: str, seed: int, ks, settings: FeedSettings, ranker: RankerFitParams, compare_blend: bool = True
):
    params = replace(LASTFM_PARAMS, seed=seed, weight_transform=PROTOCOLS[protocol])
    if protocol == "binary":
        dataset = dataset.with_likes(Edges(dataset.likes.src, dataset.likes.dst, dataset.likes.ts))
    return evaluate_split(
        dataset, SplitSpec("user", 0.2, seed), None, ks, params, settings,
        show_progress=False, ranker_params=replace(ranker, seed=seed), compare_blend=compare_blend,
    )


def summarise(reports: dict[int, object], ks) -> dict[str, dict[str, tuple[float, float]]]:
    metrics = [f"{m}@{k}" for k in ks for m in ("precision", "recall", "ndcg")]
    seeds = list(reports)
    return {
        name: {key: mean_std([reports[s].methods[name] for s in seeds], key) for key in metrics}
        for name in reports[seeds[0]].methods
    }


def print_table(protocol: str, summary, reports, ks) -> None:
    metrics = [f"{m}@{k}" for k in ks for m in ("precision", "recall", "ndcg")]
    seeds = list(reports)
    methods = list(summary)
    width = max(len(n) for n in methods + ["SocialLGN (published)"])
    print(f"\nLast.fm 2K, {protocol} protocol, per-user 80/20 split, {len(seeds)} seeds "
          f"({', '.join(map(str, seeds))}): mean ± std")
    print(f"{'method':<{width}} " + " ".join(f"{m:>17}" for m in metrics))
    for name in methods:
        print(f"{name:<{width}} " + " ".join(f"{summary[name][m][0]:8.4f} ± {summary[name][m][1]:6.4f}" for m in metrics))
    if protocol == "binary":  # the published numbers are binary: only that table compares with them
        print(f"{'SocialLGN (published)':<{width}} " + " ".join(
            f"{SOCIALLGN[m]:8.4f}{'':9}" if m in SOCIALLGN else f"{'':>17}" for m in metrics))
    first = reports[seeds[0]]
    print(f"{first.test_users} test users, {first.test_pairs} test pairs, {first.unseen_test_items} with an artist "
          f"unseen in training (misses) [seed {seeds[0]}]")


def run_ablation(dataset, protocol: str, seed: int, ks, base) -> dict[str, dict[str, float]]:
    ablation = {"full": base}
    for source in SOURCE_NAMES:
        if source == "followed_sellers":
            continue  # Last.fm has no sellers: the source is always empty
        settings = replace(LASTFM_SETTINGS, sources=tuple(s for s in LASTFM_SETTINGS.sources if s != source))
        ablation[f"- source {source}"] = run_seed(dataset, protocol, seed, ks, settings, LASTFM_RANKER, False).methods["model"]
        print(f"- source {source}: ndcg@10 {ablation[f'- source {source}']['ndcg@10']:.4f}", flush=True)
    for feature in FEATURE_NAMES:
        ranker = replace(LASTFM_RANKER, drop_features=(feature,))
        ablation[f"- feature {feature}"] = run_seed(dataset, protocol, seed, ks, LASTFM_SETTINGS, ranker, False).methods["model"]
        print(f"- feature {feature}: ndcg@10 {ablation[f'- feature {feature}']['ndcg@10']:.4f}", flush=True)
    print(f"\nAblation, {protocol} protocol, seed {seed} (each row removes one thing; delta vs full)")
    print(f"{'variant':<34} " + " ".join(f"{m:>12}" for m in ("ndcg@10", "recall@10", "precision@10", "Δ ndcg@10")))
    for name, m in ablation.items():
        print(f"{name:<34} " + " ".join(f"{m[k]:12.4f}" for k in ("ndcg@10", "recall@10", "precision@10"))
              + f" {m['ndcg@10'] - base['ndcg@10']:+12.4f}")
    return ablation


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--src", required=True, help="folder of the HetRec 2011 Last.fm 2K files (read in place, never copied)")
    run = parser.add_argument_group("run")
    run.add_argument("--protocols", default="binary,weighted",
                     help="binary (like for like with SocialLGN) and/or weighted (listening counts as weights) "
                          "(default: %(default)s)")
    run.add_argument("--seeds", default="0,1,2,3,4", help="split seeds, comma-separated (default: %(default)s)")
    run.add_argument("--k", default="10,20", help="cut-offs (default: %(default)s)")
    run.add_argument("--ablation", action="store_true", help="also remove each source and each feature in turn (first seed)")
    out = parser.add_argument_group("output")
    out.add_argument("--json", help="write every number as JSON here")
    args = parser.parse_args(argv)
    protocols = [p for p in args.protocols.split(",") if p]
    unknown = sorted(set(protocols) - set(PROTOCOLS))
    if unknown or not protocols:
        parser.error(f"--protocols: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(PROTOCOLS)}")

    from training.lastfm import read_lastfm

    started = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",") if s]
    ks = tuple(int(k) for k in args.k.split(","))
    dataset = read_lastfm(args.src)
    payload: dict[str, object] = {"seeds": seeds, "sociallgn": SOCIALLGN, "protocols": {}}
    for protocol in protocols:
        reports = {}
        for seed in seeds:
            t = time.perf_counter()
            reports[seed] = run_seed(dataset, protocol, seed, ks, LASTFM_SETTINGS, LASTFM_RANKER)
            m = reports[seed].methods["model"]
            print(f"{protocol} seed {seed}: ndcg@10 {m['ndcg@10']:.4f} recall@10 {m['recall@10']:.4f} "
                  f"precision@10 {m['precision@10']:.4f} ({time.perf_counter() - t:.0f} s)", flush=True)
        summary = summarise(reports, ks)
        print_table(protocol, summary, reports, ks)
        ablation = run_ablation(dataset, protocol, seeds[0], ks, reports[seeds[0]].methods["model"]) if args.ablation else {}
        payload["protocols"][protocol] = {
            "summary": {n: {k: {"mean": v[0], "std": v[1]} for k, v in s.items()} for n, s in summary.items()},
            "per_seed": {s: r.as_json() for s, r in reports.items()},
            "ablation": ablation,
        }
    elapsed = time.perf_counter() - started
    print(f"time {elapsed:.0f} s for {len(protocols)} protocol(s) × {len(seeds)} seeds, "
          f"peak memory (max RSS) {peak_rss_mb():.0f} MB")
    if args.json:
        payload.update(seconds=elapsed, peak_rss_mb=peak_rss_mb())
        with open(args.json, "w") as handle:
            json.dump(payload, handle, indent=2)


if __name__ == "__main__":
    main(sys.argv[1:])
