"""Item-to-item nearest neighbours: a sparse top-k similarity matrix over the item columns.

Built offline with implicit's item-kNN (cosine, BM25 or TF-IDF weighting of the user x
item matrix) or with EASE (Steck 2019: the closed-form linear item-item model
B = -P / diag(P), P = (XᵀX + λI)⁻¹, zero diagonal; for catalogues up to EASE_MAX_ITEMS
items with support), stored in the artifact as one ``scipy.sparse`` CSR file, and read at
request time by the item-kNN candidate source and the ``item_similarity`` feature: a
user's score for item j is the sum of sim(i, j) over the user's recent likes i.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numba
import numpy as np
import scipy.sparse as sp

from embeddings.mapped_npz import load_mapped_npz
from ranking.vocab import distinct_inverse

KNN_KINDS = ("auto", "cosine", "bm25", "tfidf", "ease", "none")
DEFAULT_KNN = "auto"
"""Similarity of the item-kNN model; "none" trains no item-kNN model. "auto" is EASE up to
EASE_AUTO_MAX_ITEMS items with support and cosine above (``resolve_knn_kind``)."""
DEFAULT_KNN_K = 100
"""Neighbours kept per item. More costs memory (k floats per item) and request time."""
DEFAULT_EASE_L2 = 50.0
"""EASE's L2 penalty λ as the feed's item-to-item model: chosen on Last.fm's validation
split among 10, 25, 50, 100 and 200 (benchmarks/README.md); EASE as a baseline keeps the
paper's value (training.evaluate.EASE_BASELINE_L2)."""
EASE_MAX_ITEMS = 20_000
"""EASE inverts a dense Gram matrix over the items with support: 20k items is 1.6 GB in
float32 and a few minutes on 2 cores; above that, use an item-kNN kind."""
EASE_AUTO_MAX_ITEMS = 10_000
"""The largest catalogue (items with support) for which "auto" picks EASE: its inverse
takes about 5 s at 8k items on 2 cores, and the time grows with the cube."""
EASE_MIN_SUPPORT = 2
"""Items liked by fewer users take no part in EASE (their weights would be noise)."""


@dataclass(frozen=True)
class Neighbourhood:
    """The similarities from a user's liked rows to all their neighbours, grouped by neighbour.

    Every weighting of the liked rows sums over the same entries, so one neighbourhood
    serves the item-kNN source and each similarity feature. Entry e is similarity
    ``values[e]`` from liked row ``distinct[source[e]]`` to neighbour ``rows[group[e]]``.
    ``inverse`` maps each valid (>= 0) liked row, in the order given, to its distinct row.
    ``table`` finds a neighbour row's group (``_group_entries``).
    """

    distinct: np.ndarray  # distinct liked rows >= 0, ascending
    valid: np.ndarray  # bool per given liked row: >= 0
    inverse: np.ndarray  # index into distinct per valid liked row
    rows: np.ndarray  # int32 distinct neighbour rows, in order of first appearance
    group: np.ndarray  # int32 index into rows per entry
    source: np.ndarray  # int32 index into distinct per entry
    values: np.ndarray  # float64 similarity per entry
    table: np.ndarray = field(repr=False)  # (capacity, 2) int64 open-addressing hash table: (row, group), row -1 when free

    def groups_of(self, rows: np.ndarray) -> np.ndarray:
        """The group of each of ``rows`` (int64), -1 where the row is no neighbour."""
        return _lookup_groups(self.table, np.asarray(rows, dtype=np.int64))

    def sums(self, weightings: np.ndarray | None = None) -> np.ndarray:
        """Summed similarity per neighbour row, shape (len(weightings), len(rows)); one row of ones without weightings.

        A weighting has one weight per given liked row; a liked row given twice counts
        its largest weight, once.
        """
        weightings = np.ones((1, len(self.valid))) if weightings is None else np.atleast_2d(np.asarray(weightings, np.float64))
        return _group_sums(self.group, self.source, self.values, self.valid, self.inverse, len(self.distinct), weightings, len(self.rows))

    def sums_at(self, weightings: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``sums(weightings)`` read at ``rows``, shape (len(rows), len(weightings)); 0 where a row has none."""
        sums = self.sums(weightings)
        return _gather_groups(sums, self.groups_of(rows))


@numba.njit(cache=True, nogil=True)
def _hash_shift(capacity):
    """For a table of ``capacity`` (a power of two, at least 2) slots, the shift of ``_first_slot``."""
    bits = 0
    while (1 << bits) < capacity:
        bits += 1
    return 32 - bits


@numba.njit(cache=True, nogil=True, inline="always")
def _first_slot(row, shift):
    """Fibonacci hashing: the top bits of row x 2^32/phi (mod 2^32)."""
    return ((row * 2654435761) & 0xFFFFFFFF) >> shift


@numba.njit(cache=True, nogil=True)
def _group_entries(indptr, indices, liked):
    """Every CSR entry of the ``liked`` rows, grouped by column without sorting.

    Returns (rows, group, source, positions, table): the distinct columns in order of
    first appearance, each entry's index into them, its liked row's index into
    ``liked`` and its position in ``indices``, and the (column, group) hash table that
    ``_lookup_groups`` reads. A table at most half full keeps probes short; the cost is
    linear in the entries, where a sort of them was the dearest step of a feed.
    """
    total = 0
    for row in liked:
        total += indptr[row + 1] - indptr[row]
    capacity = 16
    while capacity < 2 * total:
        capacity *= 2
    mask = capacity - 1
    shift = _hash_shift(capacity)
    table = np.full((capacity, 2), -1, np.int64)
    rows = np.empty(total, np.int32)
    group = np.empty(total, np.int32)
    source = np.empty(total, np.int32)
    positions = np.empty(total, np.int64)
    groups = 0
    entry = 0
    for liked_index in range(len(liked)):
        row = liked[liked_index]
        for position in range(indptr[row], indptr[row + 1]):
            column = indices[position]
            slot = _first_slot(column, shift)
            while table[slot, 0] != -1 and table[slot, 0] != column:
                slot = (slot + 1) & mask
            if table[slot, 0] == -1:
                table[slot, 0] = column
                table[slot, 1] = groups
                rows[groups] = column
                groups += 1
            group[entry] = table[slot, 1]
            source[entry] = liked_index
            positions[entry] = position
            entry += 1
    return rows[:groups], group, source, positions, table


@numba.njit(cache=True, nogil=True)
def _lookup_groups(table, rows):
    mask = len(table) - 1
    shift = _hash_shift(len(table))
    out = np.full(len(rows), -1, np.int64)
    for index in range(len(rows)):
        row = rows[index]
        if row < 0:
            continue
        slot = _first_slot(row, shift)
        while table[slot, 0] != -1:
            if table[slot, 0] == row:
                out[index] = table[slot, 1]
                break
            slot = (slot + 1) & mask
    return out


@numba.njit(cache=True, nogil=True)
def _group_sums(group, source, values, valid, inverse, distinct, weightings, groups):
    """Per weighting (a row of ``weightings``, one weight per given liked row), the sum over each group's entries."""
    weights = np.full((weightings.shape[0], distinct), -np.inf)
    valid_index = 0
    for given in range(len(valid)):
        if valid[given]:
            row = inverse[valid_index]
            valid_index += 1
            for weighting in range(weightings.shape[0]):
                weights[weighting, row] = max(weights[weighting, row], weightings[weighting, given])
    out = np.zeros((weightings.shape[0], groups))
    for entry in range(len(group)):
        for weighting in range(weightings.shape[0]):
            out[weighting, group[entry]] += weights[weighting, source[entry]] * values[entry]
    return out


@numba.njit(cache=True, nogil=True)
def _gather_groups(sums, groups):
    """``sums[:, groups].T``, with rows of 0 where a group is -1."""
    out = np.zeros((len(groups), sums.shape[0]))
    for index in range(len(groups)):
        if groups[index] >= 0:
            out[index] = sums[:, groups[index]]
    return out


@dataclass(frozen=True)
class ItemScores:
    """A user's item-kNN scores as a sparse vector: item rows (in no particular order) and their scores.

    ``item_row`` is the model's id -> row map (shared, not copied), for lookups by id.
    ``neighbourhood`` is what the scores were summed from (``ItemKNN.user_scores_rows``
    keeps it, so other weightings of the same likes cost one sum each); row ``rows[g]``
    is its group g.
    """

    rows: np.ndarray  # int32
    scores: np.ndarray  # float32, same length
    item_row: Mapping[str, int] = field(repr=False)
    neighbourhood: Neighbourhood = field(repr=False)

    def lookup_ids(self, item_ids: Sequence[str]) -> np.ndarray:
        """Score per asked id (0 for unknown ids or items with no score), same order."""
        row = self.item_row
        return self.lookup(np.fromiter((row.get(t, -1) for t in item_ids), np.int64, len(item_ids)))

    def lookup(self, rows: np.ndarray) -> np.ndarray:
        """Score per asked row (0 where the row has none), same order and length."""
        out = np.zeros(len(rows), dtype=np.float32)
        groups = self.neighbourhood.groups_of(rows)
        hit = groups >= 0
        out[hit] = self.scores[groups[hit]]
        return out


class ItemKNN:
    """Top-k item-item similarities (CSR, float32, no self-similarity) with the item id map.

    Row i of ``similarity`` holds item i's neighbours; the map is ``item_ids``, the same
    order as the embedding model's items.
    """

    def __init__(self, item_ids: Sequence[str], similarity: sp.csr_matrix) -> None:
        self.item_ids = list(item_ids)
        n = len(self.item_ids)
        if similarity.shape != (n, n):
            raise ValueError(f"similarity is {similarity.shape}, expected ({n}, {n})")
        if similarity.format != "csr" or similarity.dtype != np.float32:
            similarity = sp.csr_matrix(similarity, dtype=np.float32)
        self.similarity = similarity  # as given when it is CSR float32 already: a loaded one stays memory-mapped
        self.item_row = {t: i for i, t in enumerate(self.item_ids)}

    @property
    def nnz(self) -> int:
        return int(self.similarity.nnz)

    def rows_of(self, item_ids: Sequence[str]) -> np.ndarray:
        """int64 row per id, -1 for ids unknown to the model."""
        return np.fromiter((self.item_row.get(t, -1) for t in item_ids), np.int64, len(item_ids))

    def user_scores(self, liked_item_ids: Sequence[str]) -> ItemScores:
        """Sum of similarities to the distinct known items of ``liked_item_ids``."""
        return self.user_scores_rows(self.rows_of(liked_item_ids))

    def user_scores_rows(self, liked_rows: np.ndarray, weights: np.ndarray | None = None) -> ItemScores:
        """``user_scores`` with the liked items given as rows; rows < 0 are ignored.

        With ``weights`` (one per liked row) each similarity counts that much; a row given
        twice counts its largest weight once. Reads the CSR arrays directly: the cost
        follows the neighbours touched (recent likes x k), not the catalogue, and skips
        scipy's per-call overhead. The scores keep their ``neighbourhood``.
        """
        neighbourhood = self.neighbourhood(liked_rows)
        summed = neighbourhood.sums(None if weights is None else np.atleast_2d(weights))[0]
        return ItemScores(neighbourhood.rows, summed.astype(np.float32), self.item_row, neighbourhood)

    def neighbourhood(self, liked_rows: np.ndarray) -> Neighbourhood:
        """Every similarity from the distinct liked rows (>= 0) to their neighbours, grouped by neighbour."""
        liked_rows = np.asarray(liked_rows)
        valid = liked_rows >= 0
        distinct, inverse = distinct_inverse(liked_rows[valid])
        similarity = self.similarity
        rows, group, source, positions, table = _group_entries(similarity.indptr, similarity.indices, distinct)
        return Neighbourhood(
            distinct=distinct,
            valid=valid,
            inverse=inverse,
            rows=rows,
            group=group,
            source=source,
            values=similarity.data[positions].astype(np.float64),
            table=table,
        )

    def warm_up(self) -> None:
        """Compile the request-time kernels (or load them from numba's cache) for this
        matrix's dtypes and for the int32 item codes a feed passes, so that a server's first
        feed does not pay for it."""
        liked = np.zeros(1 if len(self.item_ids) else 0, np.int32)
        self.user_scores_rows(liked).neighbourhood.sums_at(np.ones((1, len(liked))), liked)

    def top(self, scores: ItemScores, k: int) -> tuple[list[str], np.ndarray]:
        """Up to k (item id, score) pairs with a positive score, best first (ties by row)."""
        rows, values = self.top_rows(scores, k)
        item_ids = self.item_ids
        return [item_ids[r] for r in rows.tolist()], values

    def top_rows(self, scores: ItemScores, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Up to k (int32 rows, scores) with a positive score, best first (ties by row)."""
        positive = scores.scores > 0
        rows, values = scores.rows[positive], scores.scores[positive]
        if len(rows) > k:
            # The k-th best score, then the lowest rows among those tied with it: the cut
            # does not depend on the order the rows come in.
            kth = -np.partition(-values, k - 1)[k - 1]
            above = np.flatnonzero(values > kth)
            tied = np.flatnonzero(values == kth)
            tied = tied[np.argsort(rows[tied], kind="stable")[: k - len(above)]]
            keep = np.concatenate([above, tied])
            rows, values = rows[keep], values[keep]
        order = np.lexsort((rows, -values))
        return rows[order], values[order]

    def save(self, path: str) -> None:
        """The similarity matrix as a scipy .npz (ids live with the model)."""
        sp.save_npz(path, self.similarity, compressed=False)

    @classmethod
    def load(cls, path: str, item_ids: Sequence[str]) -> ItemKNN:
        """The matrix ``save`` wrote, its arrays memory-mapped (embeddings/mapped_npz.py)."""
        arrays = load_mapped_npz(path)
        if arrays.get("format", np.array(b"")).item() != b"csr":
            return cls(item_ids, sp.load_npz(path).tocsr())
        shape = tuple(int(n) for n in arrays["shape"])
        return cls(item_ids, sp.csr_matrix((arrays["data"], arrays["indices"], arrays["indptr"]), shape=shape, copy=False))


def train_item_knn(
    user_items: sp.csr_matrix,
    item_ids: Sequence[str],
    kind: str = DEFAULT_KNN,
    k: int = DEFAULT_KNN_K,
    show_progress: bool = True,
    num_threads: int = 0,
    l2: float = DEFAULT_EASE_L2,
    rows: np.ndarray | None = None,
) -> ItemKNN:
    """Fit an item-to-item model on a user x item matrix (columns = ``item_ids``):
    implicit's item-kNN, or EASE with penalty ``l2`` when ``kind`` is "ease" (or "auto"
    resolves to it, ``resolve_knn_kind``).

    Returns an ItemKNN whose rows keep each item's ``k`` most similar other items. With
    ``rows`` (item-kNN kinds only) only those items' rows are computed, the same as
    implicit's, and the others are left empty: a model read only from known items (the
    ranker's pools read the rows of their users' likes) costs that share of a full one.
    """
    from implicit.nearest_neighbours import (
        BM25Recommender,
        CosineRecommender,
        TFIDFRecommender,
    )
    from threadpoolctl import threadpool_limits

    if user_items.shape[1] != len(item_ids):
        raise ValueError(f"{user_items.shape[1]} item columns but {len(item_ids)} item ids")
    if kind == "auto":
        kind = resolve_knn_kind(kind, ease_item_count(user_items))
    if kind == "ease":
        return ItemKNN(item_ids, ease_similarity(user_items, l2, k))
    classes = {"cosine": CosineRecommender, "bm25": BM25Recommender, "tfidf": TFIDFRecommender}
    if kind not in classes:
        raise ValueError(f"unknown item-kNN kind {kind!r}; choose from {KNN_KINDS}")
    if rows is not None:
        return ItemKNN(item_ids, _knn_rows(user_items, kind, k, rows))
    # One more neighbour than asked, because implicit keeps each item as its own neighbour.
    model = classes[kind](K=k + 1, num_threads=num_threads)
    with threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings():
        # implicit re-weights into COO itself, then warns that its own input is not CSR.
        warnings.filterwarnings("ignore", message="Method expects CSR input")
        model.fit(sp.csr_matrix(user_items, dtype=np.float32), show_progress=show_progress)
    similarity = sp.csr_matrix(model.similarity, dtype=np.float32)
    similarity.setdiag(0.0)
    similarity.eliminate_zeros()
    similarity.sort_indices()
    return ItemKNN(item_ids, similarity)


def ease_item_count(user_items: sp.spmatrix) -> int:
    """How many item columns EASE would model: those with at least EASE_MIN_SUPPORT users."""
    support = np.diff(sp.csc_matrix(user_items).indptr)
    return int(np.count_nonzero(support >= EASE_MIN_SUPPORT))


def resolve_knn_kind(kind: str, ease_items: int) -> str:
    """The kind to train for ``kind``: "auto" is EASE when at most EASE_AUTO_MAX_ITEMS items
    qualify for it (``ease_items``, see ``ease_item_count``), cosine above; any other kind is itself."""
    if kind != "auto":
        return kind
    return "ease" if ease_items <= EASE_AUTO_MAX_ITEMS else "cosine"


def _knn_rows(user_items: sp.csr_matrix, kind: str, k: int, rows: np.ndarray, chunk: int = 2048) -> sp.csr_matrix:
    """The rows ``rows`` of implicit's item-kNN similarity for ``kind``: the same weighting
    of the user x item matrix, the same k + 1 largest dot products per row with the item
    itself among them, then the item itself dropped (ties may pick other equal neighbours)."""
    from implicit.nearest_neighbours import BM25Recommender, bm25_weight, normalize, tfidf_weight

    items_users = sp.csr_matrix(user_items, dtype=np.float32).T
    if kind == "cosine":
        weighted = normalize(items_users)
    elif kind == "tfidf":
        weighted = normalize(tfidf_weight(items_users))
    else:  # bm25, with the constants train_item_knn's BM25Recommender uses
        defaults = BM25Recommender()
        weighted = bm25_weight(items_users, K1=defaults.K1, B=defaults.B)
    weighted = sp.csr_matrix(weighted, dtype=np.float32)
    users_items = weighted.T.tocsr()
    n = weighted.shape[0]
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    kept_rows, kept_columns, kept_values = [], [], []
    for start in range(0, len(rows), chunk):
        block = rows[start : start + chunk]
        product = sp.csr_matrix(weighted[block] @ users_items)
        for i, row in enumerate(block.tolist()):
            lo, hi = product.indptr[i], product.indptr[i + 1]
            columns, values = product.indices[lo:hi], product.data[lo:hi]
            if hi - lo > k + 1:
                top = np.argpartition(-values, k)[: k + 1]
                columns, values = columns[top], values[top]
            keep = (columns != row) & (values != 0)
            kept_rows.append(np.full(int(keep.sum()), row, np.int64))
            kept_columns.append(columns[keep])
            kept_values.append(values[keep])
    if not kept_rows:
        return sp.csr_matrix((n, n), dtype=np.float32)
    r, c, v = np.concatenate(kept_rows), np.concatenate(kept_columns), np.concatenate(kept_values)
    similarity = sp.csr_matrix((v.astype(np.float32), (r, c)), shape=(n, n))
    similarity.sort_indices()
    return similarity


def ease_similarity(user_items: sp.csr_matrix, l2: float = DEFAULT_EASE_L2, k: int = DEFAULT_KNN_K) -> sp.csr_matrix:
    """EASE's item-item weights B (row i: what liking item i adds to each other item's
    score), keeping each row's ``k`` weights of largest magnitude, signs included: EASE's
    negative weights (items the liked one argues against) carry as much of its ranking as
    the positive ones.

    Only items with at least EASE_MIN_SUPPORT users enter the model; the others get no
    row and no column. Raises ValueError naming EASE_MAX_ITEMS when more items qualify.
    """
    # EASE models binary data: on weighted cells (Last.fm's log listening counts) its Gram
    # matrix is ruled by heavy users and the feed fell from 0.174 to 0.148 NDCG@10 on
    # validation; binary cells give 0.174 there, and tie on the generator's likes with
    # engagements (0.0863 against 0.0857; benchmarks/README.md, session 48).
    x = sp.csc_matrix(user_items, dtype=np.float32, copy=True)
    x.data[:] = 1.0
    n = x.shape[1]
    support = np.diff(x.indptr)
    active = np.flatnonzero(support >= EASE_MIN_SUPPORT)
    if len(active) > EASE_MAX_ITEMS:
        raise ValueError(
            f"EASE over {len(active)} items (with {EASE_MIN_SUPPORT}+ users) exceeds EASE_MAX_ITEMS="
            f"{EASE_MAX_ITEMS}: the dense Gram matrix would not fit; use --knn cosine, bm25 or tfidf"
        )
    keep = min(k, len(active) - 1)
    if keep <= 0:
        return sp.csr_matrix((n, n), dtype=np.float32)
    xa = x[:, active]
    # float32 halves the memory and, on 2 cores, takes 0.4x float64's time for the
    # inverse; its error (about 6e-7 of the largest entry at 8k items) changed no
    # validation NDCG@10 in the fourth place. Co-occurrence counts are exact in float32.
    gram = (xa.T @ xa).toarray()
    gram[np.diag_indices_from(gram)] += np.float32(l2)
    weights = _spd_inverse(gram)
    del gram
    weights /= -np.diag(weights).copy()[np.newaxis, :]
    np.fill_diagonal(weights, 0.0)
    rows, columns, values = _top_by_magnitude(weights, keep)
    similarity = sp.csr_matrix((values, (active[rows], active[columns])), shape=(n, n), dtype=np.float32)
    similarity.sort_indices()
    return similarity


def _top_by_magnitude(weights: np.ndarray, keep: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's ``keep`` entries of largest magnitude, zeros dropped, as (row, column,
    value) arrays; a block of rows at a time, so the scratch is ``block`` rows, not n²."""
    rows, columns, values = [], [], []
    for start in range(0, weights.shape[0], block):
        part = weights[start : start + block]
        top = np.argpartition(-np.abs(part), keep - 1, axis=1)[:, :keep]
        kept = np.take_along_axis(part, top, axis=1)
        nonzero = kept != 0
        rows.append((start + np.nonzero(nonzero)[0]).astype(np.int64))
        columns.append(top[nonzero])
        values.append(kept[nonzero])
    return np.concatenate(rows), np.concatenate(columns), np.concatenate(values)


def _spd_inverse(matrix: np.ndarray) -> np.ndarray:
    """The inverse of a symmetric positive definite matrix (EASE's Gram matrix plus its
    penalty) through its Cholesky factor (scipy's ``assume_a="pos"``): about two thirds
    of ``np.linalg.inv``'s time, which factors it as a general matrix. A matrix that is not
    positive definite (a zero penalty over dependent items) falls back to
    ``np.linalg.inv``. ``matrix`` is left as it was.
    """
    import scipy.linalg

    try:
        return scipy.linalg.inv(matrix, assume_a="pos")
    except np.linalg.LinAlgError:
        return np.linalg.inv(matrix)
