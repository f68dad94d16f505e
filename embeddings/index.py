"""Maximum-inner-product search over ALS item factors, on faiss.

The standard reduction of MIPS to nearest-neighbour search (Bachrach et al., 2014,
"Speeding up the Xbox recommender system using a Euclidean transformation for
inner-product spaces") appends one coordinate to each item, ``sqrt(M^2 - |x|^2)`` with
``M`` the largest norm, and 0 to each query. Then ``|q' - x'|^2 = |q|^2 + M^2 - 2 q.x``,
so L2 order over the augmented vectors is exactly inner-product order over the
originals, and HNSW's metric assumptions hold.

Measured (benchmarks/bench_ann.py, real implicit ALS factors of synthetic power-law
likes, k=100, one query per call, one thread; benchmarks/README.md has the tables):

* 200k items: hnsw-ip collapses (recall@100 0.09 at efSearch 512: a few long vectors
  become hubs every greedy walk ends in) while hnsw-mips reaches 0.96, but only at 4x
  exact's speed. HNSW on raw inner product is not always bad -- on narrowly spread
  norms or small catalogues it can match the reduction (cf. Morozov & Babenko, NeurIPS
  2018) -- but it fails without warning.
* 1M items (934k liked; norms median 0.026, max 5.96; exact 14.3 ms/query): ivfpq-ip
  (IVF2048, PQ16x4fs, nprobe 96, k_factor 16) reaches recall@100 0.962 at 0.78-0.91 ms,
  12.7-18x exact in two runs on a shared machine, built in 18-59 s on 2 threads. On the
  default ALS's factors since 2026-12-07 (32 dims, regularization 80) that setting reaches
  only 0.80; IVF1024, nprobe 192, k_factor 32 reaches 0.967 at 13.6x exact, the defaults
  now. The same IVF-PQ over the L2 reduction
  (ivfpq-mips) fails: the extra coordinate, close to M for nearly every item, dominates
  each L2 distance, 4-bit codes and fast-scan's 8-bit lookup tables round away the
  inner products under it, and recall@100 even falls as more lists are probed (0.86 at
  nprobe 32, 0.53 at 64). IVF with METRIC_INNER_PRODUCT trains spherical k-means, probes
  the lists whose centroid has the largest inner product with the query, and quantizes
  the raw factors, so its error scales with |q| |x - x'| and not with M.

* 1M items of the default ALS's factors on a quiet VM (exact 4.4-5.6 ms/query: 32 dims scan
  fast): the IVF1024 default above reaches 0.969 at only 5.8x exact, and no IVF setting
  swept reached 0.95 at 10x. hnsw-mips collapses there (recall@100 0.10-0.20), but hnsw-ip
  with M=48 (efConstruction 200, built in 98 s on 2 threads) reaches 0.966 at efSearch 128
  in 0.285 ms, 15.3x exact. On the trainer's own 1M factors (the generator's 1M likes, 30
  sweeps) the same hnsw-ip reached only 0.778, while ivfpq-ip at nprobe 192 reached 0.997:
  which index suits is a property of the factors, not of the catalogue size (2026-12-07).

So from AUTO_ANN_THRESHOLD (100k) items "auto" builds ivfpq-ip and sets its nprobe and
k_factor by measurement: the cheapest rung (``_auto_rungs``: AUTO_NPROBE_LADDER up to
``nprobe``, first with AUTO_CHEAP_K_FACTOR candidates per result, then with ``k_factor``)
whose recall@AUTO_CHECK_K against exact search on up to AUTO_CHECK_QUERIES sample queries
(the trainer's user factors) reaches AUTO_MIN_RECALL, with a warning when none does. The recall goes into the index's
params (``auto_recall``), so the manifest says what was checked. Below that HNSW over the
reduction holds up (norms spread less in small catalogues): from AUTO_HNSW_THRESHOLD (20k)
items "auto" builds hnsw-mips, and exact flat below it.

Kinds:
  flat        exact IndexFlatIP; best below AUTO_HNSW_THRESHOLD items.
  hnsw-mips   IndexHNSWFlat (L2) on the augmented vectors.
  hnsw-ip     IndexHNSWFlat with METRIC_INNER_PRODUCT on raw factors. Exists only so the
              benchmark can show where it fails (and where it does not).
  ivfpq-ip    faiss "IVF{nlist},PQ{pq_m}x4fs,RFlat" with METRIC_INNER_PRODUCT on raw
              factors: inverted lists, 4-bit fast-scan PQ codes, then the k_factor * k
              best candidates rescored exactly (the refine index keeps the float
              vectors, which is also what load() reads them back from).
  ivfpq-mips  the same on the augmented vectors (L2). Exists only so the benchmark can
              show where it fails.
  auto        flat below AUTO_HNSW_THRESHOLD items, hnsw-mips up to AUTO_ANN_THRESHOLD,
              ivfpq-ip from there, its nprobe set by a recall check.

Large k (pages deep in a feed ask for thousands): HNSW searches with efSearch >= k; IVF
kinds probe more lists as k grows, by the square root of k / IVF_REFERENCE_K, and rescore
a refine pool of about the same size as at IVF_REFERENCE_K (k_factor shrinks with k, down
to IVF_MIN_K_FACTOR). They search exactly (faiss.knn over the factors, zero-factor items
included) once the lists reach IVF_EXACT_FRACTION of them.

Items whose factor is (numerically) zero, which is what ALS gives an item nobody liked in
the training data, are kept out of approximate indexes. In HNSW graphs thousands of
identical points fill each other's neighbour lists and disconnect the graph (on
synthetic power-law data with half the catalogue cold, recall@100 dropped from 0.93 to
0.78 at the same efSearch); IVF kinds keep them out for the same semantics. Their inner
product is 0 with every query, so they can only matter when fewer than k items
score above 0; they are then missing from approximate results, never from "flat" (nor
from an IVF kind's exact search for large k).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np
from tqdm import tqdm

log = logging.getLogger(f"feedrank.{__name__}")

AUTO_ANN_THRESHOLD = 100_000
"""Catalogue size from which "auto" picks an approximate index over exact search.
Measured with ivfpq-ip (default lists, PQ32x4fs, nprobe 32-96, k_factor 16), one
thread, k=100: at 50k items it is slower than exact (0.7-0.9x: its fixed cost per call,
a few tenths of a millisecond, is about exact's whole cost), at 200k 4.6x faster
(recall@100 0.96-0.98), at 1M 18x. 100k sits between the two measurements."""
AUTO_HNSW_THRESHOLD = 20_000
"""Catalogue size from which "auto" picks hnsw-mips over exact search, below
AUTO_ANN_THRESHOLD. Measured on the generator's ALS factors (16 dims), one thread, k=25
(a first page's neighbours), M=32, efSearch 128: 10k items 0.7x exact's speed (recall@25
0.994), 20k 1.5x (0.988), 30k 1.8x (0.982), 50k 2.7x (0.973); a GetFeed at 50k items
spends about 0.13 ms less in the search (benchmarks/README.md, "ANN")."""
AUTO_LARGE_KIND = "ivfpq-ip"
"""What "auto" builds at or above AUTO_ANN_THRESHOLD items."""
AUTO_NPROBE_LADDER = (24, 32, 48, 64, 96, 128)
"""The nprobes "auto" tries, cheapest first, below the ``nprobe`` it was given (IVF_NPROBE by
default), which ends the ladder."""
AUTO_MIN_RECALL = 0.96
"""The recall@AUTO_CHECK_K on the sample queries that sets "auto"'s nprobe: 0.01 above the
0.95 that serving aims for, because 200 users are a sample. At 0.95, the 1M retrain's check
chose nprobe 48 at 0.957 and other users measured 0.951-0.967; at 0.96 it chooses 64 (0.971
on its check and on 300 other users, 10 % more time per search; benchmarks/README.md, "ANN")."""
AUTO_CHEAP_K_FACTOR = 16
"""The refine step's candidates per result that "auto" tries first, with up to
AUTO_CHEAP_MAX_NPROBE lists: at 1M items, the refine pool costs more than the lists, so those
rungs are all cheaper than any with 32 per result. On the trainer's 1M factors, nprobe 64
gave recall@100 0.968 / 0.970 with 16 and 0.969 / 0.971 with 32, at 14.1x / 15.9x exact
against 9.0x / 10.6x (two samples of 300 users); on the trainer's 200k factors (IVF512,
nprobe 24, auto's choice) 0.977 with both, in 0.355 against 0.550 ms. On bench_ann's
factors 16 loses 0.02 at every nprobe (IVF_K_FACTOR), and the check then goes on to 32."""
AUTO_CHEAP_MAX_NPROBE = 96
"""The most lists tried with AUTO_CHEAP_K_FACTOR: 96 lists with 16 per result (about 0.33 ms
at 1M items) still cost less than the cheapest rung with 32 (24 lists, about 0.37 ms)."""
AUTO_CHECK_K = 100
AUTO_CHECK_QUERIES = 200
"""Sample queries of the recall check: exact search costs a few ms each at 1M items."""
ZERO_NORM_RTOL = 1e-6
"""Items with norm below this fraction of the largest norm stay out of approximate indexes."""
IVF_TRAIN_POINTS_PER_LIST = 64
"""k-means sample per inverted list when training IVF kinds: 131k points for 2048 lists.
faiss's default, 256, would train on 4x the points (k-means time grows with the
sample); the recall cost of the smaller sample was not measured."""
IVF_PQ_M = 16
"""4-bit fast-scan PQ sub-quantizers (8 bytes per item at 64 dims): PQ32 gains < 0.01
recall@100 at 1M items once the refine step reranks 16 candidates per result, and scans
slower."""
IVF_NPROBE = 192
"""Lists probed for k <= IVF_REFERENCE_K, and the most "auto" tries (it takes the cheapest
of its rungs that reaches AUTO_MIN_RECALL on sample users: nprobe 64 with k_factor 16 on the
trainer's 1M factors). 192 of 1024 at 1M items give recall@100 0.967 on bench_ann's ALS factors (32 dims,
regularization 80), 13.6x exact under load. On 2026-11-23's
factors (64 dims, regularization 0.05) 96 of 2048 gave 0.96; on the new ones they give
0.80 (benchmarks/README.md, "ANN")."""
IVF_K_FACTOR = 32
"""Candidates per result that the refine step rescores exactly (k_factor * k in all).
4-bit codes misorder the top of the list: at 1M items, 1024 lists and 192 probed, recall@100
is 0.948 with 16 and 0.967 with 32 (1.69 and 1.99 ms a query)."""
IVF_REFERENCE_K = 100
"""The k that ``nprobe`` and ``k_factor`` are tuned for. A search for k above it probes
nprobe * sqrt(k / IVF_REFERENCE_K) lists and rescores k_factor * IVF_REFERENCE_K
candidates (at least IVF_MIN_K_FACTOR * k). Measured on the 1M trainer's factors (1024
lists, nprobe 64, k_factor 32, one thread; benchmarks/README.md, "ANN"): recall@k 0.976 at
k = 100, and with this rule 0.985 at k = 300 (0.57 ms), 0.982 at k = 1000 (0.86 ms) and
0.984 at k = 2000 (1.53 ms), where exact search takes 4.0-4.5 ms. The refine pool, not the
lists, set the cost: probing nprobe * k / IVF_REFERENCE_K lists with k_factor * k candidates,
the rule before, took 1.25 ms at k = 300 for recall 0.995 and searched exactly from k = 800."""
IVF_MIN_K_FACTOR = 4
"""The fewest candidates per result the refine step rescores at large k. At k = 1000 on
the 1M factors, 8 per result gave recall 0.989 in 1.24 ms and 4 gave 0.982 in 0.86 ms."""
IVF_EXACT_FRACTION = 0.5
"""IVF kinds search exactly once a large k probes this fraction of the lists: about what
the exact scan costs (with 64 of 1024 lists probed, from k = 6400)."""
KINDS = ("flat", "hnsw-mips", "hnsw-ip", "ivfpq-mips", "ivfpq-ip")
HNSW_KINDS = ("hnsw-mips", "hnsw-ip")
IVF_KINDS = ("ivfpq-mips", "ivfpq-ip")
SIDECAR_SUFFIX = ".json"


def _as_matrix(x: np.ndarray, dim: int | None = None) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        raise ValueError(f"expected a float32 matrix with {dim} columns, got shape {x.shape}")
    return x


def _augment_items(items: np.ndarray, max_norm: float) -> np.ndarray:
    sq = np.einsum("ij,ij->i", items.astype(np.float64), items.astype(np.float64))
    extra = np.sqrt(np.maximum(max_norm * max_norm - sq, 0.0)).astype(np.float32)
    return np.ascontiguousarray(np.hstack([items, extra[:, None]]))


def _augment_queries(queries: np.ndarray) -> np.ndarray:
    augmented = np.zeros((len(queries), queries.shape[1] + 1), np.float32)
    augmented[:, :-1] = queries
    return augmented


@functools.lru_cache(maxsize=64)
def _hnsw_params(ef_search: int) -> faiss.SearchParametersHNSW:
    """Search parameters per efSearch: searches only read them, so threads share one object."""
    return faiss.SearchParametersHNSW(efSearch=ef_search)


def _pq_layout(d: int, pq_m: int) -> np.ndarray:
    """Column j of a d-dim vector goes to position layout[j] of a pq_m * ceil(d / pq_m) one.

    Round robin over the pq_m sub-quantizer blocks, so that when pq_m does not divide d
    (65 columns after the MIPS augmentation) the zero padding is spread one column per
    block instead of filling whole blocks no code bit would ever describe.
    """
    dsub = -(-d // pq_m)
    cols = np.arange(d)
    return (cols % pq_m) * dsub + cols // pq_m


def _to_code_space(x: np.ndarray, layout: np.ndarray, d_code: int) -> np.ndarray:
    out = np.zeros((len(x), d_code), np.float32)
    out[:, layout] = x
    return out


@dataclass
class MipsIndex:
    """A faiss index answering top-k by inner product with the original item factors.

    ``vectors`` are the original (non-augmented) item factors, used to return exact
    inner products whatever the index kind.
    """

    kind: str
    index: faiss.Index
    vectors: np.ndarray  # float32 [n, dim], original factors
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def ntotal(self) -> int:
        """Number of items (rows of ``vectors``), including any kept out of an approximate index."""
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def search(self, queries: np.ndarray, k: int, ef_search: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items per query by inner product, best first.

        ``queries`` is float32 ``[q, dim]`` (a single vector is accepted as ``[dim]``).
        Returns ``(scores float32 [q, k], rows int64 [q, k])``; scores are exact inner
        products with the original factors. Rows missing (k above the catalogue size, or
        an approximate index that found fewer) are -1 with score -inf. ``ef_search``
        overrides the search breadth of hnsw-* kinds (0: the index's own ``ef_search``).
        """
        queries = _as_matrix(queries, self.dim)
        nq = len(queries)
        if k <= 0 or self.index.ntotal == 0:
            return np.full((nq, max(k, 0)), -np.inf, np.float32), np.full((nq, max(k, 0)), -1, np.int64)
        k_eff = min(k, int(self.index.ntotal))
        nprobe, k_factor = self._ivf_breadth(k_eff)
        if self.kind == "flat":
            scores, rows = self.index.search(queries, k_eff)
        elif self._scans_every_list(nprobe):
            # Deep pages: scanning this many lists costs about what exact search does.
            k_eff = min(k, self.ntotal)
            scores, rows = faiss.knn(queries, self.vectors, k_eff, metric=faiss.METRIC_INNER_PRODUCT)
        else:
            x = _augment_queries(queries) if self.kind.endswith("-mips") else queries
            # Search parameters go per call, so that concurrent searches never race on a
            # shared setting.
            if self.kind in HNSW_KINDS:
                # efSearch below k cannot return k good results.
                search_params = _hnsw_params(max(ef_search or int(self.params["ef_search"]), k_eff))
            else:
                x = _to_code_space(x, _pq_layout(x.shape[1], int(self.params["pq_m"])), int(self.index.d))
                ivf_params = faiss.SearchParametersIVF(nprobe=nprobe)
                search_params = faiss.IndexRefineSearchParameters(k_factor=k_factor, base_index_params=ivf_params)
            _, rows = self.index.search(x, k_eff, params=search_params)
            # The refine step of IVF kinds ranks by exact distance in the code space
            # (L2 of the augmented vectors for ivfpq-mips); scores are the inner products.
            scores = self._exact_scores(queries, rows)
            order = np.argsort(-scores, axis=1, kind="stable")
            each_query = np.arange(nq)[:, None]
            rows, scores = rows[each_query, order], scores[each_query, order]
        scores = scores.astype(np.float32, copy=False)
        rows = rows.astype(np.int64, copy=False)
        scores[rows < 0] = -np.inf
        if k_eff < k:
            scores = np.hstack([scores, np.full((nq, k - k_eff), -np.inf, np.float32)])
            rows = np.hstack([rows, np.full((nq, k - k_eff), -1, np.int64)])
        return scores, rows

    def _ivf_breadth(self, k: int) -> tuple[int, float]:
        """(lists probed, candidates rescored per result) of an IVF kind for ``k`` results
        ((0, 0.0) for other kinds). Recall at a fixed nprobe falls only slowly with k, because
        the refine pool grows with k; a pool much above k_factor * IVF_REFERENCE_K costs time
        and finds no more (IVF_REFERENCE_K)."""
        if self.kind not in IVF_KINDS:
            return 0, 0.0
        nprobe, k_factor = int(self.params["nprobe"]), float(self.params["k_factor"])
        if k <= IVF_REFERENCE_K:
            return nprobe, k_factor
        scale = k / IVF_REFERENCE_K
        lists = min(int(self.params["nlist"]), math.ceil(nprobe * math.sqrt(scale)))
        return lists, max(min(k_factor, IVF_MIN_K_FACTOR), k_factor / scale)

    def searches_exactly(self, k: int) -> bool:
        """Whether a search for ``k`` results scans every item (flat, or an IVF kind whose
        scaled nprobe reaches IVF_EXACT_FRACTION of its lists). Exact search scores a batch of
        queries with other kernels than a single query, which round differently in the last bits."""
        return self.kind == "flat" or self._scans_every_list(self._ivf_breadth(min(k, int(self.index.ntotal)))[0])

    def _scans_every_list(self, nprobe: int) -> bool:
        return bool(nprobe) and nprobe >= IVF_EXACT_FRACTION * int(self.params["nlist"])

    def _exact_scores(self, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
        gathered = self.vectors[np.maximum(rows, 0)]  # [q, k, dim]
        scores = (gathered @ queries[:, :, None])[..., 0]
        scores[rows < 0] = -np.inf
        return scores

    def save(self, path: str) -> None:
        """Write the faiss index to ``path`` and its kind and parameters to ``path + '.json'``."""
        faiss.write_index(self.index, path)
        sidecar = {"kind": self.kind, "n_items": self.ntotal, "dim": self.dim, "params": self.params}
        with open(path + SIDECAR_SUFFIX, "w", encoding="utf-8") as f:
            json.dump(sidecar, f, indent=2, sort_keys=True)

    @classmethod
    def load(cls, path: str) -> MipsIndex:
        """Read an index written by :meth:`save`. Raises FileNotFoundError if either file is missing."""
        sidecar_path = path + SIDECAR_SUFFIX
        for p in (path, sidecar_path):
            if not os.path.exists(p):
                raise FileNotFoundError(f"MIPS index file missing: {p}")
        with open(sidecar_path, encoding="utf-8") as f:
            sidecar = json.load(f)
        kind = sidecar["kind"]
        if kind not in KINDS:
            raise ValueError(f"{sidecar_path}: unknown index kind {kind!r}")
        index = faiss.read_index(path)
        n, dim = int(sidecar["n_items"]), int(sidecar["dim"])
        if kind == "flat":
            vectors = index.reconstruct_n(0, index.ntotal) if index.ntotal else np.zeros((0, dim), np.float32)
        else:
            # Approximate indexes sit in an IndexIDMap whose ids are item rows; rows left
            # out (zero factors) are zero vectors. IVF kinds keep exact vectors in the
            # refine index, in the code-space layout.
            inner = faiss.downcast_index(index.index)
            if kind in IVF_KINDS:
                inner = faiss.downcast_index(faiss.downcast_index(inner).refine_index)
            ids = faiss.vector_to_array(index.id_map).astype(np.int64)
            vectors = np.zeros((n, dim), np.float32)
            if len(ids):
                stored = inner.reconstruct_n(0, inner.ntotal)
                if kind in IVF_KINDS:
                    d_in = dim + 1 if kind == "ivfpq-mips" else dim
                    stored = stored[:, _pq_layout(d_in, int(sidecar["params"]["pq_m"]))]
                vectors[ids] = stored[:, :dim]
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (n, dim):
            raise ValueError(f"{path}: index holds shape {vectors.shape}, sidecar says {(n, dim)}")
        return cls(kind, index, vectors, dict(sidecar["params"]))


def default_nlist(n: int) -> int:
    """Inverted lists for ``n`` items: the power of two nearest sqrt(n) (1024 at 1M), at
    least 1, and small enough that every list gets 39 training points (faiss's floor).

    At 1M items of the default ALS's factors, 1024 lists reach a given recall@100 faster
    than 2048 (0.948 at 1.69 ms against 1.92 ms) and train in under half the time; on
    2026-11-23's factors 2048 had beaten 4096 the same way.
    """
    if n <= 0:
        return 1
    nlist = 2 ** int(round(np.log2(max(np.sqrt(n), 1.0))))
    return int(max(1, min(nlist, n // 39 if n >= 39 else 1)))


def build_index(
    item_factors: np.ndarray,
    kind: str = "auto",
    hnsw_m: int = 32,
    ef_construction: int = 200,
    ef_search: int = 64,
    nlist: int = 0,
    pq_m: int = IVF_PQ_M,
    nprobe: int = IVF_NPROBE,
    k_factor: int = IVF_K_FACTOR,
    show_progress: bool = False,
    check_queries: np.ndarray | None = None,
) -> MipsIndex:
    """Index ``item_factors`` (float32 ``[n, dim]``; row i is item row i) for MIPS.

    ``kind`` is "auto" or one of KINDS (see the module docstring). HNSW parameters
    (``hnsw_m``, ``ef_construction``, ``ef_search``) apply to hnsw-* kinds; IVF ones to
    ivfpq-* kinds: ``nlist`` inverted lists (0: :func:`default_nlist`), ``pq_m`` 4-bit
    fast-scan PQ sub-quantizers, and the search defaults ``nprobe`` (for k up to
    IVF_REFERENCE_K) and ``k_factor`` (candidates rescored exactly per result).
    ``show_progress`` draws a tqdm bar while items are added (the slow part of HNSW at a
    million items). ``check_queries`` (float32 ``[q, dim]``, e.g. user factors) are what
    "auto" samples for the recall check that sets its nprobe at or above AUTO_ANN_THRESHOLD
    items; without them it samples the items themselves.
    """
    vectors = _as_matrix(item_factors)
    n, dim = vectors.shape
    if kind == "auto" and n >= AUTO_ANN_THRESHOLD:
        return _checked_large_index(
            vectors, check_queries, show_progress, {"nlist": nlist, "pq_m": pq_m, "nprobe": nprobe, "k_factor": k_factor},
        )
    if kind == "auto":
        kind = auto_kind(n)
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}; expected auto or one of {KINDS}")

    params: dict[str, Any] = {}
    if kind == "flat":
        index: faiss.Index = faiss.IndexFlatIP(dim)
        index.add(vectors)
        return MipsIndex(kind, index, vectors, params)

    rows, max_norm = _nonzero_rows(vectors)
    mips = kind.endswith("-mips")
    data = _augment_items(vectors[rows], max_norm) if mips else np.ascontiguousarray(vectors[rows])
    if kind in HNSW_KINDS:
        params = {"hnsw_m": hnsw_m, "ef_construction": ef_construction, "ef_search": ef_search}
        hnsw = faiss.IndexHNSWFlat(data.shape[1], hnsw_m, faiss.METRIC_L2 if mips else faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = ef_construction
        hnsw.hnsw.efSearch = ef_search
        index = faiss.IndexIDMap(hnsw)
    else:
        if pq_m < 1 or nprobe < 1 or k_factor < 1:
            raise ValueError(f"pq_m, nprobe and k_factor must be positive, got {pq_m}, {nprobe}, {k_factor}")
        nlist = nlist or default_nlist(len(rows))
        params = {"nlist": nlist, "pq_m": pq_m, "nprobe": nprobe, "k_factor": k_factor}
        layout = _pq_layout(data.shape[1], pq_m)
        d_code = pq_m * (-(-data.shape[1] // pq_m))
        data = _to_code_space(data, layout, d_code)
        metric = faiss.METRIC_L2 if mips else faiss.METRIC_INNER_PRODUCT
        index = faiss.IndexIDMap(faiss.index_factory(d_code, f"IVF{nlist},PQ{pq_m}x4fs,RFlat", metric))
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.max_points_per_centroid = IVF_TRAIN_POINTS_PER_LIST
        ivf.nprobe = nprobe
        if len(rows):
            # 4-bit PQ trains 16 centroids per sub-quantizer and faiss refuses fewer
            # training points than centroids; a tiny catalogue trains on jittered
            # repeats (identical centroids give fast-scan a zero-width lookup table
            # and no results at all).
            train = data
            if len(data) < 16:
                jitter = np.random.default_rng(0).standard_normal((16, d_code)).astype(np.float32)
                train = np.resize(data, (16, d_code)) + 1e-3 * max_norm * jitter
            index.train(train)
    if mips:
        params["max_norm"] = max_norm
    chunk = 20_000
    with tqdm(total=len(rows), desc=f"index {kind}", unit="item", disable=not show_progress) as progress:
        for start in range(0, len(rows), chunk):
            index.add_with_ids(data[start : start + chunk], rows[start : start + chunk])
            progress.update(min(chunk, len(rows) - start))
    return MipsIndex(kind, index, vectors, params)


def auto_kind(n: int) -> str:
    """The kind "auto" builds for a catalogue of ``n`` items."""
    if n < AUTO_HNSW_THRESHOLD:
        return "flat"
    return "hnsw-mips" if n < AUTO_ANN_THRESHOLD else AUTO_LARGE_KIND


def _checked_large_index(
    vectors: np.ndarray, queries: np.ndarray | None, show_progress: bool, ivf_params: dict[str, int],
) -> MipsIndex:
    """AUTO_LARGE_KIND with the cheapest search (``_auto_rungs``) whose recall on sample
    queries reaches AUTO_MIN_RECALL."""
    sample = _check_sample(vectors, queries)
    index = build_index(vectors, AUTO_LARGE_KIND, show_progress=show_progress, **ivf_params)
    truth = exact_top(index, sample, AUTO_CHECK_K)
    for nprobe, k_factor in _auto_rungs(int(ivf_params["nprobe"]), int(ivf_params["k_factor"])):
        index.params.update(nprobe=nprobe, k_factor=k_factor)
        recall = recall_at(index, sample, AUTO_CHECK_K, truth)
        if recall >= AUTO_MIN_RECALL:
            break
    else:
        log.warning("index: %s reached recall@%d %.3f < %.2f on %d sample queries at nprobe %d, the most tried",
                    AUTO_LARGE_KIND, AUTO_CHECK_K, recall, AUTO_MIN_RECALL, len(sample), nprobe)
    index.params["auto_recall"] = round(recall, 4)
    return index


def _auto_rungs(nprobe: int, k_factor: int) -> list[tuple[int, int]]:
    """The (nprobe, k_factor) searches "auto" checks, cheapest first: AUTO_NPROBE_LADDER below
    ``nprobe``, then ``nprobe``; with AUTO_CHEAP_K_FACTOR up to AUTO_CHEAP_MAX_NPROBE lists
    first, then with ``k_factor``."""
    lists = [p for p in AUTO_NPROBE_LADDER if p < nprobe] + [nprobe]
    cheap = [(p, AUTO_CHEAP_K_FACTOR) for p in lists if p <= AUTO_CHEAP_MAX_NPROBE] if AUTO_CHEAP_K_FACTOR < k_factor else []
    return cheap + [(p, k_factor) for p in lists]


def _nonzero_rows(x: np.ndarray) -> tuple[np.ndarray, float]:
    """(int64 rows of ``x`` whose norm is above ZERO_NORM_RTOL of the largest, the largest norm)."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    max_norm = float(norms.max()) if len(norms) else 0.0
    return np.flatnonzero(norms > ZERO_NORM_RTOL * max_norm).astype(np.int64), max_norm


def _check_sample(vectors: np.ndarray, queries: np.ndarray | None) -> np.ndarray:
    """Up to AUTO_CHECK_QUERIES non-zero rows of ``queries`` (or of ``vectors``), seeded."""
    pool = vectors if queries is None else _as_matrix(queries, vectors.shape[1])
    rows, _ = _nonzero_rows(pool)
    if len(rows) > AUTO_CHECK_QUERIES:
        rows = np.sort(np.random.default_rng(0).choice(rows, AUTO_CHECK_QUERIES, replace=False))
    return np.ascontiguousarray(pool[rows])


def exact_top(index: MipsIndex, queries: np.ndarray, k: int) -> np.ndarray:
    """Rows of each query's exact top ``k`` by inner product over ``index``'s factors."""
    return faiss.knn(queries, index.vectors, min(k, index.ntotal), metric=faiss.METRIC_INNER_PRODUCT)[1]


def recall_at(index: MipsIndex, queries: np.ndarray, k: int, truth: np.ndarray | None = None) -> float:
    """Mean share of each query's exact top ``k`` by inner product that ``index`` returns
    (1.0 without queries); ``truth`` is ``exact_top``'s answer when already computed."""
    if len(queries) == 0:
        return 1.0
    k = min(k, index.ntotal)
    truth = exact_top(index, queries, k) if truth is None else truth
    return top_k_overlap(truth, index.search(queries, k)[1])


def top_k_overlap(truth: np.ndarray, found: np.ndarray) -> float:
    """Mean share of each row of ``truth`` (exact top-k rows per query) that the same row of
    ``found`` holds; -1 (no result) never counts."""
    k = truth.shape[1]
    return float(np.mean([len(np.intersect1d(t, f[f >= 0])) for t, f in zip(truth, found)])) / k if k else 1.0
