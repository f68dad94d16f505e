"""Training on Apache Spark: ``python -m training train --engine spark``.

Publishes the same artifact as the implicit engine (training.train): the same manifest,
id maps, float32 factors, faiss index, item-kNN and ranker. What runs where:

  Spark      the weighted interaction matrix (likes, follows, engagements) as a
             DataFrame of (user, column, weight); ALS (pyspark.ml, implicitPrefs=True);
             the item-kNN co-occurrence for cosine / BM25 / TF-IDF. These grow with the
             interactions (the 5B of a 100M-user shop) and are what outgrows one machine.
  driver     the dataset's validation and id maps (the artifact's ids.npz); the factors,
             collected in chunks; the faiss index, built from the collected item factors
             (10M x 64 floats = 2.6 GB: one machine builds an IVF-PQ index of it); EASE
             (a dense Gram matrix of at most EASE_MAX_ITEMS items, a driver job anyway);
             the ranker's pools: the serving pipeline replayed for ``--ranker-users``
             sampled users (1,000 by default: bounded by that flag, not by the data); the
             evaluation replay (bounded by ``--eval-users``).

Confidence. implicit 0.7 weighs an observed cell by c = alpha * w and an unobserved one
by 1 (``implicit/cpu/als.py``: ``Cui = alpha * Cui``, then c - 1 enters YtCuY). Spark's
implicit ALS weighs an observed rating r by c = 1 + alpha_spark * |r|, with preference 1
only when r > 0. So Spark gets alpha_spark = 1 and r = alpha * w - 1: the same c. A cell
with alpha * w <= 1 (a weight below 1/alpha: a heavily recency-decayed like, a view)
cannot keep its preference of 1 with c < 1 in Spark; it gets r = MIN_RATING (c = 1) and
the manifest counts such cells.

Regularization. implicit adds lambda * I to every user's and item's normal equations;
Spark (ALS-WR) adds regParam * n * I, n being that user's or item's number of ratings.
One regParam cannot match every row. It matches the mean user: regParam = lambda * users /
ratings, so a user with the mean number of ratings gets lambda, as in implicit. Matching
the total over rows and columns instead (lambda * (users + columns) / (2 * ratings)) was
harmless while lambda was 0.05. At the default 80 it put five times implicit's penalty on
Last.fm's mean user, and the served feed fell 7.5 % below implicit's (benchmarks/README.md,
"Spark engine").

Warm start. pyspark.ml's ALS cannot start from given factors, so the served model is a
second full ALS run over all the data instead of the implicit engine's fit-part model
plus ``--warm-iterations`` sweeps.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from embeddings import als
from embeddings.index import build_index
from embeddings.knn import ItemKNN, train_item_knn
from embeddings.model import EmbeddingModel
from training.dataset import Dataset
from training.params import TrainParams, engagement_weights, with_knn_resolved

JAVA_HINT = "apt-get install openjdk-17-jre-headless"
"""How to get the Java runtime Spark needs (pyspark 4.0 runs on Java 17 or 21)."""
PYSPARK_HINT = "pip install -e '.[spark]'"
MIN_RATING = 1e-6
"""Spark rating of a cell whose implicit confidence alpha * w is at most 1 (see above)."""
COLLECT_CHUNK_BYTES = 256 << 20
"""Largest bytes per collect when factors or neighbours come to the driver (a sixteenth of
the driver heap when that is less): bounds the driver's transient memory and stays under
Spark's default spark.driver.maxResultSize (1g). Each chunk is one job over the cached
result (100M users x 64 factors: 100 jobs)."""
KNN_PAIRS_PER_PARTITION = 1_000_000
"""Item-kNN: co-occurring pair rows per shuffle partition (about 40 MB of rows per task)."""
KNN_MAX_PARTITIONS = 100_000
DEFAULT_KNN_MAX_USER_ITEMS = 1000
"""Item-kNN: a user's co-occurring pairs grow with the square of their items; only each
user's heaviest this many items take part in the pairs (norms use all of them)."""


class SparkUnavailable(ValueError):
    """pyspark or Java is missing; the message says how to install it (one line)."""


def java_executable() -> str | None:
    """The ``java`` Spark would start: $JAVA_HOME/bin/java, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    if home and os.access(os.path.join(home, "bin", "java"), os.X_OK):
        return os.path.join(home, "bin", "java")
    return shutil.which("java")


def check_spark_available() -> None:
    """SparkUnavailable (one line with the install hint) when pyspark or Java is missing."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise SparkUnavailable(f"--engine spark needs pyspark: {PYSPARK_HINT}") from None
    if java_executable() is None:
        raise SparkUnavailable(f"--engine spark needs Java 17: {JAVA_HINT}")


@dataclass(frozen=True)
class SparkSettings:
    """The Spark session of a training run (flags ``--spark-*``)."""

    master: str = "local[*]"
    """local[N], spark://HOST:PORT, yarn, k8s://..."""
    driver_memory: str = "4g"
    """Driver JVM heap. In local mode the executors run in the driver JVM: this is all of it."""
    executor_memory: str = "4g"
    """Heap per executor (cluster masters only)."""
    partitions: int = 0
    """Shuffle partitions and ALS user/item blocks; 0 = the session's default parallelism (its cores)."""
    checkpoint_dir: str = ""
    """Where ALS truncates its lineage every 10 iterations (without it, 30 iterations overflow
    the JVM stack). "" = a temporary directory for local masters (in Spark's own, under
    spark.local.dir, which the JVM deletes when it exits), else
    ``feedrank-spark-checkpoints`` on the cluster's default filesystem (HDFS home on YARN)."""
    conf: tuple[tuple[str, str], ...] = ()
    """Any other Spark configuration (``--spark-conf KEY=VALUE``); wins over the above."""
    knn_max_user_items: int = DEFAULT_KNN_MAX_USER_ITEMS
    """See DEFAULT_KNN_MAX_USER_ITEMS."""
    app_name: str = "feedrank-train"


def parse_spark_conf(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` of ``--spark-conf``; ValueError otherwise."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


@dataclass
class SparkInteractions:
    """The weighted interaction matrix as a cached Spark DataFrame, with its id maps.

    ``frame`` holds (user int, col int, weight float): one row per nonzero cell, duplicates
    summed; the layout (rows, item columns then seller columns) is als.Interactions'.
    """

    frame: Any  # pyspark.sql.DataFrame
    user_ids: list[str]
    item_ids: list[str]
    seller_ids: list[str]
    nnz: int
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_columns(self) -> int:
        return len(self.item_ids) + len(self.seller_ids)

    def users_per_item(self) -> np.ndarray:
        """How many users have a cell in each item column (int64, by item column), counted in Spark."""
        from pyspark.sql import functions as F

        counts = self.frame.where((F.col("col") < self.n_items) & (F.col("weight") != 0)).groupBy("col").count().toArrow()
        per_item = np.zeros(self.n_items, dtype=np.int64)
        per_item[counts.column("col").to_numpy()] = counts.column("count").to_numpy()
        return per_item

    def to_scipy(self, items_only: bool = False) -> sp.csr_matrix:
        """The matrix on the driver as float32 CSR (tests, EASE): small matrices only."""
        from pyspark.sql import functions as F

        frame = self.frame.where(F.col("col") < self.n_items) if items_only else self.frame
        table = frame.toArrow()
        shape = (len(self.user_ids), self.n_items if items_only else self.n_columns)
        matrix = sp.csr_matrix(
            (
                table.column("weight").to_numpy().astype(np.float32),
                (table.column("user").to_numpy(), table.column("col").to_numpy()),
            ),
            shape=shape,
        )
        matrix.sort_indices()
        return matrix


def refuse_bags(bags: int) -> None:
    """The Spark engine fits one ALS model: ``--als-bags`` above 1 is refused by name."""
    if bags > 1:
        raise ValueError(f"--als-bags {bags}: the spark engine fits one ALS model; bags need --engine implicit")


class SparkEngine:
    """A Spark session and the training steps that run on it."""

    name = "spark"

    def __init__(self, spark: Any, settings: SparkSettings, partitions: int, checkpoint_dir: str) -> None:
        self.spark = spark
        self.settings = settings
        self.partitions = partitions
        self.checkpoint_dir = checkpoint_dir
        self.last_als: dict[str, Any] = {}
        self.last_knn: dict[str, Any] = {}
        try:
            heap = int(spark.sparkContext._jvm.java.lang.Runtime.getRuntime().maxMemory())
        except Exception:  # noqa: BLE001 - a remote or unusual gateway: keep the default
            heap = 16 * COLLECT_CHUNK_BYTES
        self.collect_bytes = int(min(COLLECT_CHUNK_BYTES, max(16 << 20, heap // 16)))

    # ---- the session ---------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """The manifest's "engine" entry (how the Spark run was set up and mapped)."""
        return {
            "name": self.name,
            "spark_version": self.spark.version,
            "master": self.spark.sparkContext.master,
            "partitions": self.partitions,
            "knn_max_user_items": self.settings.knn_max_user_items,
            "als": dict(self.last_als),
            "item_knn": dict(self.last_knn),
        }

    def jvm_peak_rss_bytes(self) -> int | None:
        """Peak resident memory (VmHWM) of the local JVM: driver and, in local mode, executors."""
        try:
            pid = self.spark.sparkContext._gateway.proc.pid
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except (AttributeError, OSError, ValueError):
            return None
        return None

    @contextlib.contextmanager
    def _shuffle_partitions(self, n: int) -> Iterator[None]:
        """spark.sql.shuffle.partitions = ``n`` for the queries run inside (AQE may coalesce them)."""
        key = "spark.sql.shuffle.partitions"
        before = self.spark.conf.get(key)
        self.spark.conf.set(key, str(n))
        try:
            yield
        finally:
            self.spark.conf.set(key, before)

    def _frame(self, columns: Mapping[str, np.ndarray]) -> Any:
        """A Spark DataFrame from numpy columns (shipped as Arrow)."""
        import pyarrow as pa

        return self.spark.createDataFrame(pa.table({name: pa.array(values) for name, values in columns.items()}))

    # ---- interactions ----------------------------------------------------------------

    def interactions(self, ds: Dataset, params: TrainParams, layout: SparkInteractions | None = None) -> SparkInteractions:
        """``ds``'s weighted interaction matrix, weighed in Spark exactly as
        als.build_interactions weighs it (same layout, same values up to float rounding).

        The id maps come from the driver's validated dataset in first-seen order (they are
        the artifact's ids.npz); the edges go to Spark as integer codes with their raw
        weight, time and kind, and every weight is computed there: the like transform and
        like weight, the recency decay (from the newest like, found in Spark), the follow
        weight, each engagement kind's weight; then zero cells are dropped and duplicate
        cells summed.
        """
        from pyspark.sql import functions as F

        likes, follows, engaged = ds.likes, ds.follows, ds.engagements
        n_likes, n_follows = len(likes), len(follows)
        codes = als.layout_codes(ds, layout)
        item_ids, seller_ids, user_ids = codes.item_ids, codes.seller_ids, codes.user_ids
        like_items, follow_sellers, user_codes, engaged_items = codes.like_items, codes.follow_sellers, codes.user_codes, codes.engaged_items
        n_items = len(item_ids)

        like_frame = self._frame({
            "user": user_codes[:n_likes], "col": like_items.astype(np.int32),
            "raw": np.asarray(likes.weights(), np.float64), "ts": np.asarray(likes.ts, np.float64),
        })
        transform = params.weight_transform
        if transform == "log":
            like_value = F.log2(F.lit(1.0) + F.col("raw"))
        elif transform == "raw":
            like_value = F.col("raw")
        elif transform == "binary":
            like_value = F.lit(1.0)
        else:
            raise ValueError(f"unknown weight transform {transform!r}; choose from {als.WEIGHT_TRANSFORMS}")
        like_value = like_value * F.lit(float(params.like_weight))
        if params.recency_half_life_days > 0 and n_likes:
            untimed_like = F.isnan("ts") | F.col("ts").isNull() | (F.abs("ts") == float("inf"))
            newest, untimed = like_frame.agg(F.max("ts"), F.sum(F.when(untimed_like, 1).otherwise(0))).first()
            if not untimed:
                age_days = (F.lit(float(newest)) - F.col("ts")) / F.lit(86_400.0)
                decay = F.pow(F.lit(2.0), -age_days / F.lit(float(params.recency_half_life_days)))
                like_value = like_value * F.greatest(decay, F.lit(als.MIN_RECENCY_WEIGHT))
        parts = [like_frame.select("user", "col", like_value.cast("float").alias("weight"))]
        if n_follows:
            follow_frame = self._frame({
                "user": user_codes[n_likes:n_likes + n_follows],
                "col": np.where(follow_sellers >= 0, n_items + follow_sellers, -1).astype(np.int32),
            })
            parts.append(follow_frame.select("user", "col", F.lit(float(params.follow_weight)).cast("float").alias("weight")))
        if len(engaged):
            import pyarrow as pa

            engagement_frame = self.spark.createDataFrame(pa.table({
                "user": pa.array(user_codes[n_likes + n_follows:]), "col": pa.array(engaged_items.astype(np.int32)),
                "kind": pa.array(list(engaged.kind), pa.string()),
            }))
            weights = engagement_weights(params)
            kind_weight = F.create_map(*[x for kind, w in weights.items() for x in (F.lit(kind), F.lit(float(w)))])
            parts.append(engagement_frame.select(
                "user", "col", F.coalesce(kind_weight[F.col("kind")], F.lit(0.0)).cast("float").alias("weight")
            ))
        edges = parts[0]
        for part in parts[1:]:
            edges = edges.unionByName(part)
        frame = (
            edges.where((F.col("weight") != 0) & (F.col("user") >= 0) & (F.col("col") >= 0))
            .groupBy("user", "col").agg(F.sum("weight").cast("float").alias("weight"))
            .repartition(self.partitions, "user")
            .persist(_storage_level())
        )
        nnz, rows, columns = frame.agg(F.count("*"), F.countDistinct("user"), F.countDistinct("col")).first()
        return SparkInteractions(
            frame, user_ids, item_ids, seller_ids, int(nnz), {"rows_with_data": int(rows), "columns_with_data": int(columns)}
        )

    # ---- ALS -------------------------------------------------------------------------------

    def reg_param(self, inter: SparkInteractions, regularization: float) -> float:
        """Spark's regParam giving a user with the mean number of ratings implicit's
        ``regularization`` (module doc)."""
        return float(regularization) * inter.stats["rows_with_data"] / max(inter.nnz, 1)

    def train_als(self, inter: SparkInteractions, params: TrainParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """pyspark.ml ALS (implicitPrefs) on ``inter`` with implicit's confidence (module doc).

        Returns (user factors, item factors, users with data): float32 arrays in the
        layout's order; rows and columns without data get zero factors (as cold items
        have in the implicit engine), and seller columns are trained but not returned.
        """
        refuse_bags(params.als_bags)
        from pyspark.ml.recommendation import ALS
        from pyspark.sql import functions as F

        alpha = float(params.alpha)
        clamped = int(inter.frame.where(F.col("weight") * F.lit(alpha) <= 1.0).count()) if inter.nnz else 0
        ratings = inter.frame.select(
            "user", "col", F.greatest(F.col("weight") * F.lit(alpha) - F.lit(1.0), F.lit(MIN_RATING)).alias("rating")
        )
        reg = self.reg_param(inter, params.regularization)
        self.last_als = {
            "implicitPrefs": True,
            "rank": params.factors,
            "maxIter": params.iterations,
            "alpha": 1.0,
            "rating": "alpha * weight - 1",
            "regParam": reg,
            "clamped_confidences": clamped,
        }
        if not inter.nnz:
            raise ValueError("no interactions to train ALS on")
        estimator = ALS(
            rank=params.factors,
            maxIter=params.iterations,
            regParam=reg,
            implicitPrefs=True,
            alpha=1.0,
            userCol="user",
            itemCol="col",
            ratingCol="rating",
            seed=params.seed,
            numUserBlocks=self.partitions,
            numItemBlocks=self.partitions,
            checkpointInterval=10,
            intermediateStorageLevel="MEMORY_AND_DISK",
            finalStorageLevel="MEMORY_AND_DISK",
        )
        model = estimator.fit(ratings)
        users, present = collect_factors(model.userFactors, len(inter.user_ids), params.factors, self.collect_bytes)
        items, _ = collect_factors(model.itemFactors, inter.n_items, params.factors, self.collect_bytes)
        return users, items, present

    # ---- item-kNN ------------------------------------------------------------------------

    def item_knn(self, inter: SparkInteractions, params: TrainParams, rows: np.ndarray | None = None) -> ItemKNN | None:
        """The item-kNN model of ``params.knn`` over the item columns of ``inter``.

        cosine, bm25, tfidf: implicit's weighting (embeddings.knn, implicit.nearest_neighbours)
        computed per cell in Spark, the co-occurrence sum(x_ui * x_uj) by a self-join on the
        user, and each item's top ``knn_k`` other items by a window: the same matrix as
        implicit's (ties aside) while no user has more than ``knn_max_user_items`` items.
        With ``rows`` (item columns) only those items' rows are computed, as
        ``train_item_knn(rows=)`` does: the weighting still reads every cell, the join's
        left side only the chosen items. ease: on the driver (bounded by EASE_MAX_ITEMS
        items; every row). auto: resolved on ``inter`` unless the caller resolved it on the
        whole training matrix (training.params.with_knn_resolved).
        """
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        kind, k = with_knn_resolved(params, inter).knn, params.knn_k
        if kind == "none":
            return None
        n_items = inter.n_items
        if kind == "ease":
            return train_item_knn(inter.to_scipy(items_only=True), inter.item_ids, "ease", k, show_progress=False, l2=params.ease_l2)
        x = inter.frame.where(F.col("col") < n_items).select("user", F.col("col").alias("item"), F.col("weight").cast("double").alias("w"))
        per_user = Window.partitionBy("user")
        per_item = Window.partitionBy("item")
        if kind == "cosine":
            x = x.select("user", "item", F.col("w").alias("x"))
        elif kind in ("tfidf", "bm25"):
            # implicit weighs the item x user matrix: N = rows (items), a user's document
            # frequency = the number of their items.
            idf = F.log(F.lit(float(n_items))) - F.log1p(F.count("*").over(per_user).cast("double"))
            if kind == "tfidf":
                x = x.select("user", "item", (F.sqrt("w") * idf).alias("x"))
            else:
                k1, b = 1.2, 0.75  # implicit's BM25Recommender defaults, as embeddings.knn uses it
                average = x.agg(F.sum("w")).first()[0] / max(n_items, 1)
                length_norm = F.lit(1.0 - b) + F.lit(b) * F.sum("w").over(per_item) / F.lit(float(average))
                x = x.select("user", "item", (F.col("w") * (k1 + 1.0) / (F.lit(k1) * length_norm + F.col("w")) * idf).alias("x"))
        else:
            raise ValueError(f"unknown item-kNN kind {kind!r}")
        if kind in ("cosine", "tfidf"):
            x = x.select("user", "item", (F.col("x") / F.sqrt(F.sum(F.col("x") * F.col("x")).over(per_item))).alias("x"))
        cap = self.settings.knn_max_user_items
        x = base = x.persist(_storage_level())
        most, pair_rows = x.groupBy("user").count().agg(
            F.max("count"), F.sum(F.pow(F.least(F.col("count"), F.lit(cap or 2**31 - 1)).cast("double"), 2.0))
        ).first()
        if cap > 0 and (most or 0) > cap:
            heaviest = F.row_number().over(per_user.orderBy(F.desc("x"), "item"))
            x = x.withColumn("_rank", heaviest).where(F.col("_rank") <= cap).drop("_rank").persist(_storage_level())
        # The pairs' shuffles get a partition per KNN_PAIRS_PER_PARTITION pair rows: with
        # Spark's cores-sized default one task's sort can run out of execution memory.
        shuffle = int(max(self.partitions, min(KNN_MAX_PARTITIONS, -(-(pair_rows or 0) // KNN_PAIRS_PER_PARTITION))))
        self.last_knn = {"kind": kind, "pair_rows": int(pair_rows or 0), "max_user_items": int(most or 0),
                         "shuffle_partitions": shuffle}
        left = x
        if rows is not None:
            chosen = self._frame({"item": np.unique(rows).astype(np.int32)})
            left = x.join(F.broadcast(chosen), "item")
        a, b_ = left.alias("a"), x.alias("b")
        pairs = (
            a.join(b_, F.col("a.user") == F.col("b.user"))
            .where(F.col("a.item") != F.col("b.item"))
            .groupBy(F.col("a.item").alias("item"), F.col("b.item").alias("other"))
            .agg(F.sum(F.col("a.x") * F.col("b.x")).alias("sim"))
        )
        best = F.row_number().over(Window.partitionBy("item").orderBy(F.desc("sim"), "other"))
        top = pairs.withColumn("_rank", best).where((F.col("_rank") <= k) & (F.col("sim") != 0)).drop("_rank")
        rows, cols, vals = [], [], []
        step = max(1, self.collect_bytes // (12 * max(k, 1)))  # items per chunk: k (int, int, float) rows each
        with self._shuffle_partitions(shuffle):
            top = top.persist(_storage_level())
            for start in range(0, n_items, step):
                stop = start + step
                table = top.where((F.col("item") >= start) & (F.col("item") < stop)).toArrow()
                rows.append(table.column("item").to_numpy())
                cols.append(table.column("other").to_numpy())
                vals.append(table.column("sim").to_numpy().astype(np.float32))
            top.unpersist()
        x.unpersist()
        base.unpersist()
        similarity = sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_items, n_items), dtype=np.float32
        )
        similarity.sort_indices()
        return ItemKNN(inter.item_ids, similarity)

    # ---- the trainer's steps ---------------------------------------------------------------

    def train(
        self, ds: Dataset, params: TrainParams, interactions: SparkInteractions | None = None
    ) -> tuple[EmbeddingModel, dict[str, Any]]:
        """training.train.train on Spark: the same model and info dict (no warm start: module doc)."""
        from training.train import _step

        timings: dict[str, float] = {}
        verbose = params.show_progress
        if interactions is None:
            with _step("interactions", timings, verbose):
                interactions = self.interactions(ds, params)
        with _step("als", timings, verbose):
            user_factors, item_factors, _ = self.train_als(interactions, params)
        with _step("index", timings, verbose):
            knn = self.item_knn(interactions, params)
            index = build_index(
                item_factors, params.index, hnsw_m=params.hnsw_m, ef_construction=params.ef_construction,
                ef_search=params.ef_search, show_progress=params.show_progress, check_queries=user_factors,
            )
        model = EmbeddingModel(
            interactions.user_ids, interactions.item_ids, user_factors, item_factors, index,
            regularization=params.regularization, alpha=params.alpha * params.like_weight, item_knn=knn,
        )
        info = {
            "users": len(interactions.user_ids),
            "items": len(interactions.item_ids),
            "sellers": len(interactions.seller_ids),
            "interactions": interactions.nnz,
            "index_kind": index.kind,
            "timings": timings,
        }
        return model, info

    def fit_ranker(self, ds: Dataset, params: TrainParams, settings, ranker_params, layout: SparkInteractions | None = None):
        """training.ranker_fit.fit_ranker with the fit part's ALS and item-kNN on Spark.

        The same protocol (split, pools replayed by the serving pipeline on the driver for
        ``ranker_params.max_users`` sampled users, fit, baseline check) and report; returns
        (ranker, info, None): there is no warm start on Spark.
        """
        from training.ranker_fit import PoolSample, StepClock, fit_on_pools, fit_part_model
        from training.splits import validation_split

        tp, rp = params, ranker_params
        lap = StepClock(tp.show_progress)
        layout = layout or self.interactions(ds, tp)
        tp = with_knn_resolved(tp, layout)
        fit_part, held, now = validation_split(ds, rp.validation_fraction, rp.seed, rp.validation_kind)
        fit_inter = self.interactions(fit_part, tp, layout)
        lap("split")
        users, items, active = self.train_als(fit_inter, tp)
        lap("als")
        sample = PoolSample.of(held, rp)
        knn = self.item_knn(fit_inter, tp, rows=self._liked_columns(fit_inter, sample.users))
        lap("item-knn")
        fit_inter.frame.unpersist()
        model = fit_part_model(fit_inter.user_ids, fit_inter.item_ids, users, items, active, knn, tp)
        ranker, info = fit_on_pools(fit_part, held, now, model, tp, settings, rp, lap, sample)
        return ranker, info, None

    def _liked_columns(self, inter: SparkInteractions, users: list[str]) -> np.ndarray:
        """The item columns ``users`` interacted with in ``inter``: the only item-kNN rows
        their pools read (PoolSample.liked_columns, computed in Spark)."""
        from pyspark.sql import functions as F

        from ranking.vocab import positions_in

        user_rows = positions_in(users, inter.user_ids)
        chosen = self._frame({"user": user_rows[user_rows >= 0].astype(np.int32)})
        liked = inter.frame.join(F.broadcast(chosen), "user").where(F.col("col") < inter.n_items).select("col").distinct()
        return np.sort(liked.toArrow().column("col").to_numpy()).astype(np.int64)

    def evaluate_split(self, dataset, split, test, ks, params, settings=None, show_progress=True, ranker_params=None,
                       compare_blend=True, max_users=0):
        """training.experiment.evaluate_split with the models trained on Spark (same protocol and report)."""
        from ranking.feed import FeedSettings
        from ranking.ranker import DEFAULT_RANKER
        from training.evaluate import evaluate, pipeline_recommender
        from training.experiment import evaluation_parts, test_part_description
        from training.splits import evaluation_time
        from training.train import fitted_ranker_spec

        settings = settings or FeedSettings()
        test_given = test is not None
        train_part, test, now, ranker_params = evaluation_parts(dataset, split, test, ranker_params)
        interactions = self.interactions(train_part, params)
        params = with_knn_resolved(params, interactions)
        spec, _ = fitted_ranker_spec(train_part, params, ranker_params, interactions, settings, engine=self)
        from ranking.ranker import LinearRanker

        ranker = LinearRanker.from_mapping(spec["weights"], float(spec.get("bias", 0.0)))
        model, _ = self.train(train_part, params, interactions)
        interactions.frame.unpersist()
        extra = {}
        if compare_blend and ranker_params.objective != "blend":
            replay_now = evaluation_time(train_part) if now is None else now
            extra["blend"] = pipeline_recommender(train_part, model, DEFAULT_RANKER, replay_now, settings)
        report = evaluate(
            train_part, test, model, ranker, ks, settings, now=now, extra_methods=extra, show_progress=show_progress,
            max_users=max_users,
        )
        report.ranker = spec
        report.test_part = test_part_description(dataset, split, test_given, now)
        return report

    def held_out_evaluation(self, split_text, ks, params, ranker_params=None, settings=None, max_users=0):
        """training.experiment.held_out_evaluation on Spark: an evaluate_fn for train_and_publish
        (a split without test likes publishes the model without metrics there too)."""
        from ranking.feed import FeedSettings
        from training.experiment import held_out_evaluation

        return held_out_evaluation(split_text, ks, params, ranker_params, settings or FeedSettings(), max_users,
                                   evaluate=self.evaluate_split)


def _storage_level():
    from pyspark import StorageLevel

    return StorageLevel.MEMORY_AND_DISK


def collect_factors(frame: Any, n: int, k: int, chunk_bytes: int = COLLECT_CHUNK_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """ALS factors (a DataFrame of id, features) as a float32 (n, k) array with zero rows for
    ids it lacks, and the mask of ids it has; collected about ``chunk_bytes`` at a time."""
    from pyspark.sql import functions as F

    chunk_rows = max(1, chunk_bytes // (4 * k + 8))
    out = np.zeros((n, k), dtype=np.float32)
    present = np.zeros(n, dtype=bool)
    for start in range(0, n, chunk_rows):
        table = frame.where((F.col("id") >= start) & (F.col("id") < min(start + chunk_rows, n))).toArrow()
        if not table.num_rows:
            continue
        ids = table.column("id").to_numpy()
        features = table.column("features").combine_chunks()
        out[ids] = features.flatten().to_numpy(zero_copy_only=False).reshape(len(ids), k)
        present[ids] = True
    return out, present


def java_reason(error: Exception) -> str:
    """The line of a Py4J or gateway error that says what Java refused (its exception), at most 300 characters."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    why = next((line for line in lines if "Exception:" in line), lines[0] if lines else type(error).__name__)
    return why.lstrip(": ")[:300]


class CtrlCCancelsJobs:
    """While Spark runs in the main thread: Ctrl-C cancels the running Spark jobs and raises
    KeyboardInterrupt, as Ctrl-C does without Spark (the trainer: "interrupted", status 130).

    pyspark's own SIGINT handler cancels the jobs through the main thread's Py4J connection,
    which the interrupted call is still reading: that reentrant call failed, and the run
    ended in a Py4JError traceback with status 1. Here the cancel goes through a thread (a
    connection of its own), and Py4J's log of the call the interrupt cut short (a traceback
    on the root logger) is dropped. On exit SIGINT gets back ``restore``, the handler from
    before pyspark installed its own.
    """

    JOIN_SECONDS = 10.0

    def __init__(self, context: Any, restore: Any) -> None:
        self.context = context
        self.restore = restore
        self.cancels: list[threading.Thread] = []
        self.active = threading.current_thread() is threading.main_thread()

    # Filters do not pass to child loggers: Py4J's own loggers (a connection shut down while
    # the interrupted call read it logs a BrokenPipeError raised during the KeyboardInterrupt).
    LOGGERS = ("", "py4j.clientserver", "py4j.java_gateway")

    def __enter__(self) -> CtrlCCancelsJobs:
        if self.active:
            signal.signal(signal.SIGINT, self._interrupt)
            for name in self.LOGGERS:
                logging.getLogger(name).addFilter(self._drop_interrupted_call)
        return self

    def __exit__(self, *_: Any) -> None:
        if not self.active:
            return
        for cancel in self.cancels:
            cancel.join(self.JOIN_SECONDS)
        for name in self.LOGGERS:
            logging.getLogger(name).removeFilter(self._drop_interrupted_call)
        signal.signal(signal.SIGINT, self.restore)

    def _interrupt(self, signum: int, frame: Any) -> None:
        cancel = threading.Thread(target=self._cancel_jobs, name="spark-cancel-jobs", daemon=True)
        self.cancels.append(cancel)
        cancel.start()
        raise KeyboardInterrupt

    def _cancel_jobs(self) -> None:
        with contextlib.suppress(Exception):  # best effort: the session may be stopping already
            # The tasks still dying when the session stops log Java stack traces: not news after a Ctrl-C.
            self.context.setLogLevel("OFF")
            self.context.cancelAllJobs()

    @staticmethod
    def _drop_interrupted_call(record: logging.LogRecord) -> bool:
        """False (dropped) for a record of an error the interrupt caused: a KeyboardInterrupt,
        or an error raised while one was handled."""
        error = record.exc_info[1] if record.exc_info else None
        while error is not None:
            if isinstance(error, KeyboardInterrupt):
                return False
            error = error.__cause__ or error.__context__
        return True


@contextlib.contextmanager
def spark_engine(settings: SparkSettings = SparkSettings(), verbose: bool = False,
                 progress_bars: bool = False) -> Iterator[SparkEngine]:
    """A SparkEngine on a session made from ``settings``, stopped on exit. ``verbose``: the
    session's start time; ``progress_bars``: Spark's stage bars on stderr.

    When a session is already active (a test module's, or an outer ``spark_engine``) it is
    used as it is and left running; ``settings.partitions`` and the checkpoint directory
    still apply. The checkpoints of the run are deleted on exit (delete_checkpoints).
    """
    check_spark_available()
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    owned = active is None
    sigint_before = signal.getsignal(signal.SIGINT)
    if owned:
        builder = SparkSession.builder.master(settings.master).appName(settings.app_name)
        conf = {
            "spark.driver.memory": settings.driver_memory,
            "spark.executor.memory": settings.executor_memory,
            "spark.ui.showConsoleProgress": "true" if progress_bars else "false",
        }
        conf.update(dict(settings.conf))
        for key, value in conf.items():
            builder = builder.config(key, value)
        started = time.perf_counter()
        try:
            spark = builder.getOrCreate()
        except Exception as error:  # noqa: BLE001 (Py4JJavaError, or the gateway's RuntimeError: Java's words, many lines)
            raise SparkUnavailable(f"Spark could not start (--spark-master {settings.master}): {java_reason(error)}") from None
        spark.sparkContext.setLogLevel("ERROR")
        if verbose:
            print(f"{'spark start':<14} {time.perf_counter() - started:8.2f} s  ({spark.sparkContext.master}, "
                  f"Spark {spark.version})", flush=True)
    else:
        spark = active
    context = spark.sparkContext
    partitions = settings.partitions or max(2, context.defaultParallelism)
    if owned and "spark.sql.shuffle.partitions" not in dict(settings.conf):
        # Spark's default of 200 shuffle partitions is per-task overhead on small data and
        # too few on large data: follow --spark-partitions (the cores by default) instead.
        spark.conf.set("spark.sql.shuffle.partitions", str(partitions))
    checkpoints_set = False
    try:
        if settings.checkpoint_dir:
            try:
                context.setCheckpointDir(settings.checkpoint_dir)
            except Exception as error:  # noqa: BLE001 (Py4JJavaError: Java's words and stack trace)
                raise ValueError(f"--spark-checkpoint-dir {settings.checkpoint_dir}: {java_reason(error)}") from None
            checkpoints_set = True
        elif not context.getCheckpointDir():
            if context.master.startswith("local"):
                from pyspark import SparkFiles

                # Inside the session's own temporary directory, which the JVM deletes when it
                # exits: also when this process is killed (SIGTERM, SIGKILL) and cleans up nothing.
                context.setCheckpointDir(tempfile.mkdtemp(prefix="feedrank-spark-checkpoints-", dir=SparkFiles.getRootDirectory()))
            else:
                context.setCheckpointDir("feedrank-spark-checkpoints")
            checkpoints_set = True
        with CtrlCCancelsJobs(context, sigint_before):
            yield SparkEngine(spark, settings, partitions, context.getCheckpointDir() or "")
    finally:
        if checkpoints_set:
            delete_checkpoints(context)
        if owned:
            spark.stop()


def delete_checkpoints(context: Any) -> None:
    """Delete the session's checkpoint directory: the one Spark made (named by a UUID) under
    the directory it was given, on whatever filesystem that is (local, HDFS, S3). Spark never
    deletes it, and ALS leaves factor-sized files there every 10 sweeps."""
    with contextlib.suppress(Exception):  # best effort: a JVM that is gone took local files with it
        path = context._jvm.org.apache.hadoop.fs.Path(context.getCheckpointDir())
        path.getFileSystem(context._jsc.hadoopConfiguration()).delete(path, True)
