"""ANN benchmark: exact IndexFlatIP against HNSW (on raw inner product or over the
MIPS->L2 reduction) and IVF with 4-bit fast-scan PQ plus an exact refine, on ALS-like item
factors whose norms vary. Comma-separated build and search parameters are swept.

    python -m benchmarks.bench_ann                     # 200k items, real ALS factors
    python -m benchmarks.bench_ann --items 50000 --data lognormal --json ann.json
    python -m benchmarks.bench_ann --items 1000000 --hnsw-m 16,32,48 --pq-m 16,32   # the 1M sweep
    python -m benchmarks.bench_ann --data model --models DIR --kinds ivfpq-ip --nlist 1024 --nprobe 48 --k-factor 32

With ``--data model`` the vectors are a published model's own: its item factors, and a
seeded sample of its user factors as the queries (the index a trainer chooses depends on
its factors: benchmarks/README.md, "ANN").

Recall@K is measured against exact search over the same vectors; ms/query is wall time
of search (including the exact rescoring MipsIndex does), after a warm-up pass, best of
``--repeat`` passes, with queries sent ``--batch`` at a time (1 = serving's pattern).
Exact search is timed on the first ``--exact-queries`` queries (it costs ~30 ms each at
1M items); speedup is exact's ms/query over the row's, both from the same run.
Design target: hnsw-mips recall@100 >= 0.95 at >= 10x the speed of exact.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np
import scipy.sparse as sp

from benchmarks.loadgen import check_models
from embeddings import als
from embeddings.index import KINDS, build_index, top_k_overlap
from training.flag_types import output_file


@dataclass
class Result:
    kind: str
    build: str  # build parameters, e.g. "M=32" or "IVF4096,PQ32x4fs"
    search: str  # search parameters, e.g. "ef=256" or "np=32,kf=8"
    build_s: float
    index_mb: float  # serialized faiss index (graph or codes plus refine vectors)
    recalls: dict[str, float]
    ms_per_query: float
    speedup: float


def synthetic_interactions(
    n_users: int, n_items: int, likes_per_user: float, topics: int = 200, seed: int = 0
) -> sp.csr_matrix:
    """A user x item like matrix with topical tastes and long-tailed item popularity.

    Each user has 1-3 topics and draws ~lognormal(likes_per_user) likes, 80% within
    their topics and 20% from the whole catalogue, items weighted by a lognormal
    popularity. Vectorised: one draw per like, no per-user loop.
    """
    rng = np.random.default_rng(seed)
    item_topic = rng.integers(0, topics, n_items)
    popularity = rng.lognormal(0.0, 1.5, n_items)
    order = np.argsort(item_topic, kind="stable")
    sorted_topic = item_topic[order]
    starts = np.searchsorted(sorted_topic, np.arange(topics + 1))
    cum = np.cumsum(popularity[order])
    cum_before = np.concatenate([[0.0], cum])

    n_likes_per_user = np.maximum(1, rng.lognormal(np.log(likes_per_user) - 0.32, 0.8, n_users).astype(np.int64))
    users = np.repeat(np.arange(n_users), n_likes_per_user)
    n = len(users)
    user_topics = rng.integers(0, topics, (n_users, 3))
    user_n_topics = rng.integers(1, 4, n_users)
    pick = (rng.random(n) * user_n_topics[users]).astype(np.int64)
    topic = user_topics[users, pick]
    lo, hi = cum_before[starts[topic]], cum_before[starts[topic + 1]]
    in_topic = order[np.minimum(np.searchsorted(cum, lo + rng.random(n) * (hi - lo), side="right"), n_items - 1)]
    anywhere = order[np.minimum(np.searchsorted(cum, rng.random(n) * cum[-1], side="right"), n_items - 1)]
    items = np.where(rng.random(n) < 0.8, in_topic, anywhere)
    m = sp.csr_matrix((np.ones(n, np.float32), (users, items)), shape=(n_users, n_items))
    m.data[:] = 1.0  # duplicates collapse to one like
    return m


def als_factors(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """Item factors and query (user) factors from implicit ALS on synthetic likes.

    Cached as two .npy files under ``--cache-dir`` keyed by every parameter that shapes
    them, so a sweep at 1M items trains ALS once (about 4 minutes on 2 cores).
    """
    key = (f"als_u{args.users}_i{args.items}_l{args.likes_per_user:g}_d{args.dim}"
           f"_it{args.als_iterations}_r{args.regularization:g}_a{args.alpha:g}_s{args.seed}_q{args.queries}")
    items_path = os.path.join(args.cache_dir, key + "_items.npy") if args.cache_dir else ""
    queries_path = items_path.replace("_items.npy", "_queries.npy")
    if items_path and os.path.exists(items_path) and os.path.exists(queries_path):
        print(f"# cached factors {items_path}", file=sys.stderr)
        return np.load(items_path), np.load(queries_path)

    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    m = synthetic_interactions(args.users, args.items, args.likes_per_user, seed=args.seed)
    liked = int(np.count_nonzero(np.diff(m.tocsc().indptr)))
    print(f"# ALS on {m.shape[0]} users x {m.shape[1]} items, {m.nnz} likes, "
          f"{liked} items liked ({liked / m.shape[1]:.1%})", file=sys.stderr)
    with threadpool_limits(limits=1, user_api="blas"):
        model = AlternatingLeastSquares(
            factors=args.dim, regularization=args.regularization, alpha=args.alpha, iterations=args.als_iterations,
            random_state=args.seed,
        )
        model.fit(m, show_progress=False)
    rng = np.random.default_rng(args.seed + 1)
    queries = model.user_factors[rng.choice(m.shape[0], args.queries, replace=False)]
    items = np.ascontiguousarray(model.item_factors, np.float32)
    queries = np.ascontiguousarray(queries, np.float32)
    if items_path:
        os.makedirs(args.cache_dir, exist_ok=True)
        np.save(items_path, items)
        np.save(queries_path, queries)
    return items, queries


def model_factors(models_dir: str, n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The item factors of the model ``models_dir/CURRENT`` names, and ``n_queries`` of its
    user factors drawn with ``seed`` (users without factors, all zeros, left out)."""
    from training.artifact import FACTORS, current_version

    with np.load(os.path.join(models_dir, current_version(models_dir), FACTORS)) as factors:
        items, users = factors["item_factors"], factors["user_factors"]
    trained = np.flatnonzero(np.any(users != 0, axis=1))
    if len(trained) < n_queries:
        raise SystemExit(f"--queries {n_queries}: the model in {models_dir} has {len(trained)} users with factors")
    picked = np.sort(np.random.default_rng(seed + 1).choice(trained, n_queries, replace=False))
    return np.ascontiguousarray(items, np.float32), np.ascontiguousarray(users[picked], np.float32)


def lognormal_factors(
    n_items: int, n_queries: int, dim: int, seed: int = 0, clusters: int = 100, norm_sigma: float = 0.7
) -> tuple[np.ndarray, np.ndarray]:
    """Clustered directions with lognormal norms (no ALS needed); queries mix 1-3 clusters."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    c = rng.integers(0, clusters, n_items)
    # Noise of norm ~0.7 around unit centres: clusters that overlap, as ALS topics do.
    directions = centres[c] + 0.7 * rng.standard_normal((n_items, dim)) / np.sqrt(dim)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    items = directions * rng.lognormal(0.0, norm_sigma, n_items)[:, None]
    q_centres = rng.integers(0, clusters, (n_queries, 3))
    weights = rng.random((n_queries, 3)) * (rng.random((n_queries, 3)) < 0.6)
    weights[:, 0] = 1.0
    queries = np.einsum("qc,qcd->qd", weights, centres[q_centres]) + 0.4 * rng.standard_normal((n_queries, dim)) / np.sqrt(dim)
    return items.astype(np.float32), queries.astype(np.float32)


def time_search(index, queries: np.ndarray, k: int, batch: int, repeat: int) -> tuple[float, np.ndarray]:
    """Best-of-``repeat`` ms/query after one warm-up pass; also the result rows."""
    def one_pass() -> np.ndarray:
        out = []
        for start in range(0, len(queries), batch):
            out.append(index.search(queries[start : start + batch], k)[1])
        return np.vstack(out)

    rows = one_pass()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        one_pass()
        best = min(best, time.perf_counter() - t)
    return best * 1e3 / len(queries), rows


def recall(truth: np.ndarray, found: np.ndarray, at: int) -> float:
    return top_k_overlap(truth[:, :at], found[:, :at])


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def int_list(minimum: int) -> Callable[[str], str]:
    """An argparse type: comma-separated integers of at least ``minimum``, checked before
    any work (ALS takes minutes) and returned as written."""

    def parse(text: str) -> str:
        try:
            values = _ints(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
        if not values or min(values) < minimum:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers >= {minimum}, got {text!r}")
        return text

    return parse


def kind_list(text: str) -> str:
    """An argparse type: comma-separated index kinds of embeddings.index, returned as written."""
    unknown = [kind for kind in text.split(",") if kind not in KINDS]
    if unknown or not text:
        raise argparse.ArgumentTypeError(f"unknown kind {', '.join(unknown) or repr(text)}; choose from {', '.join(KINDS)}")
    return text


def sweep(items: np.ndarray, queries: np.ndarray, truth: np.ndarray, exact_ms: float,
          args: argparse.Namespace) -> list[Result]:
    """Build each configured index once, then time every search setting on it."""
    ats = sorted({1, 10, args.k})
    results = []
    for kind in [k for k in args.kinds.split(",") if k != "flat"]:
        if kind.startswith("hnsw"):
            builds = [({"hnsw_m": m, "ef_construction": args.ef_construction}, f"M={m}") for m in _ints(args.hnsw_m)]
            searches = [({"ef_search": ef}, f"ef={ef}") for ef in _ints(args.ef_search)]
        else:
            builds = [({"nlist": nl, "pq_m": m}, f"IVF{nl or 'auto'},PQ{m}x4fs") for nl in _ints(args.nlist)
                      for m in _ints(args.pq_m)]
            searches = [({"nprobe": npr, "k_factor": kf}, f"np={npr},kf={kf}") for npr in _ints(args.nprobe)
                        for kf in _ints(args.k_factor)]
        for build_kw, build_name in builds:
            faiss.omp_set_num_threads(args.build_threads)
            t = time.perf_counter()
            built = build_index(items, kind, **build_kw)
            build_s = time.perf_counter() - t
            faiss.omp_set_num_threads(args.threads)
            if "nlist" in built.params:
                build_name = build_name.replace("IVFauto", f"IVF{built.params['nlist']}")
            index_mb = len(faiss.serialize_index(built.index)) / 2**20
            print(f"# built {kind} {build_name} in {build_s:.1f}s, {index_mb:.0f} MB", file=sys.stderr)
            for search_kw, search_name in searches:
                built.params.update(search_kw)
                ms, rows = time_search(built, queries, args.k, args.batch, args.repeat)
                recalls = {f"R@{a}": recall(truth, rows, a) for a in ats}
                results.append(Result(kind, build_name, search_name, round(build_s, 2), round(index_mb, 1),
                                      recalls, ms, exact_ms / ms))
                print(f"#   {search_name} R@{args.k}={recalls[f'R@{args.k}']:.4f} {ms:.3f} ms", file=sys.stderr)
            del built
    return results


def format_table(results: list[Result]) -> str:
    """The fixed-width results table (also used to render a saved ``--json`` run)."""
    ats = list(results[0].recalls)
    lines = [f"{'index':<10} {'build':<17} {'search':<11} {'build s':>7} {'MB':>5} "
             + " ".join(f"{a:>6}" for a in ats) + f" {'ms/query':>8} {'speedup':>7}"]
    for r in results:
        lines.append(f"{r.kind:<10} {r.build:<17} {r.search:<11} {r.build_s:>7.1f} {r.index_mb:>5.0f} "
                     + " ".join(f"{r.recalls[a]:>6.4f}" for a in ats)
                     + f" {r.ms_per_query:>8.3f} {r.speedup:>6.1f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_ann", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--data", choices=("als", "lognormal", "model"), default="als",
                      help="als: implicit ALS factors trained on synthetic power-law likes; "
                           "lognormal: clustered directions with lognormal norms; "
                           "model: the factors of --models (default: als)")
    data.add_argument("--models", metavar="DIR", help="with --data model: a models directory; its CURRENT version's factors")
    data.add_argument("--items", type=int, default=200_000, help="catalogue size (default: 200000)")
    data.add_argument("--users", type=int, default=0, help="ALS users (default: same as --items)")
    data.add_argument("--likes-per-user", type=float, default=30.0,
                      help="mean likes per ALS user (default: 30; at 1M users x 1M items 93%% of items are liked)")
    data.add_argument("--als-iterations", type=int, default=10, help="ALS sweeps (default: 10)")
    data.add_argument("--dim", type=int, default=64, help="factor dimensions (default: 64)")
    data.add_argument("--regularization", type=float, default=als.DEFAULT_REGULARIZATION,
                      help="ALS regularization (default: the trainer's, %(default)s; 0.05 before 2026-12-07)")
    data.add_argument("--alpha", type=float, default=als.DEFAULT_ALPHA, help="ALS alpha (default: the trainer's, %(default)s)")
    data.add_argument("--queries", type=int, default=1000, help="number of queries (default: 1000)")
    data.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    data.add_argument("--cache-dir", default="/tmp/feedrank-bench-ann",
                      help="where ALS factors are cached as .npy ('' disables; default: /tmp/feedrank-bench-ann)")
    index = parser.add_argument_group("index (comma-separated values are swept)")
    index.add_argument("--kinds", type=kind_list, default="flat,hnsw-mips,ivfpq-ip",
                       help=f"index kinds, of {', '.join(KINDS)} (default: flat,hnsw-mips,ivfpq-ip)")
    index.add_argument("--hnsw-m", type=int_list(2), default="32", help="HNSW M values (default: 32)")
    index.add_argument("--ef-construction", type=int, default=200, help="HNSW efConstruction (default: 200)")
    index.add_argument("--ef-search", type=int_list(1), default="128,256,512", help="HNSW efSearch values (default: 128,256,512)")
    index.add_argument("--nlist", type=int_list(0), default="0", help="IVF list counts; 0 is embeddings.index.default_nlist (default: 0)")
    index.add_argument("--pq-m", type=int_list(1), default="16", help="fast-scan PQ sub-quantizers, 4 bits each (default: 16)")
    index.add_argument("--nprobe", type=int_list(1), default="64,96", help="IVF lists probed at k=100 (default: 64,96)")
    index.add_argument("--k-factor", type=int_list(1), default="16", help="refine candidates per result (default: 16)")
    run = parser.add_argument_group("run")
    run.add_argument("-k", type=int, default=100, help="neighbours per query; recall is reported at 1, 10 and k (default: 100)")
    run.add_argument("--batch", type=int, default=1, help="queries per search call (default: 1, as in serving)")
    run.add_argument("--repeat", type=int, default=3, help="timed passes after the warm-up; best is kept (default: 3)")
    run.add_argument("--exact-queries", type=int, default=200,
                     help="queries timed one by one on exact search (truth is computed for all; default: 200)")
    run.add_argument("--threads", type=int, default=1, help="faiss OpenMP threads when searching (default: 1)")
    run.add_argument("--build-threads", type=int, default=1, help="faiss OpenMP threads when building (default: 1)")
    run.add_argument("--json", type=output_file, nargs="?", const="-", metavar="FILE",
                     help="also write the results here as JSON; --json alone prints them as JSON instead of the table")
    args = parser.parse_args(argv)
    if (args.data == "model") != bool(args.models):
        parser.error("--models goes with --data model, and --data model needs it")
    if args.models:
        check_models(parser, "--models", args.models)
    args.users = args.users or args.items

    t = time.perf_counter()
    if args.data == "als":
        items, queries = als_factors(args)
    elif args.data == "model":
        items, queries = model_factors(args.models, args.queries, args.seed)
        args.items, args.dim = items.shape
    else:
        items, queries = lognormal_factors(args.items, args.queries, args.dim, args.seed)
    norms = np.linalg.norm(items, axis=1)
    print(f"# data {args.data}: {items.shape} in {time.perf_counter() - t:.1f}s; item norm "
          f"p1/p50/p99/max = {np.percentile(norms, [1, 50, 99]).round(3).tolist()}/{norms.max():.3f}; "
          f"{int((norms <= 1e-6 * norms.max()).sum())} zero", file=sys.stderr)

    faiss.omp_set_num_threads(args.threads)
    ats = sorted({1, 10, args.k})
    exact = build_index(items, "flat")
    truth = exact.search(queries, args.k)[1]  # batched: the timing below is one by one
    exact_ms, _ = time_search(exact, queries[: args.exact_queries], args.k, args.batch, args.repeat)
    del exact
    results = [Result("flat", "-", "-", 0.0, round(items.nbytes / 2**20, 1), {f"R@{a}": 1.0 for a in ats},
                      exact_ms, 1.0)]
    results += sweep(items, queries, truth, exact_ms, args)

    if args.json:
        report = json.dumps({"args": vars(args), "load_avg": os.getloadavg(), "results": [asdict(r) for r in results]},
                            indent=2)
        if args.json == "-":
            print(report)
            return 0
        Path(args.json).write_text(report + "\n")
    print(f"{args.items} items x {args.dim} dims, {len(queries)} queries, k={args.k}, batch={args.batch}, "
          f"threads={args.threads} (build {args.build_threads}), data={args.data}, "
          f"load avg {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
