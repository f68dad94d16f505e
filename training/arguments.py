"""Command-line flags shared by `python -m training` commands, and the params they build."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import replace

from embeddings import als
from embeddings.knn import EASE_AUTO_MAX_ITEMS, KNN_KINDS
from ranking.features import FEATURE_NAMES
from ranking.feed import SOURCE_NAMES, FeedSettings, parse_source_names
from training.flag_types import bounded, input_path, jvm_size, spark_master
from training.ranker_fit import OBJECTIVES, RankerFitParams
from training.params import ENGAGEMENT_WEIGHT_FIELDS
from training.splits import SPLIT_KINDS, SplitSpec, time_split_problem
from training.train import TrainParams


def split_text(*words: str) -> Callable[[str], str]:
    """An argparse type for a split flag: one of ``words`` (auto, none) or a SplitSpec,
    checked at parsing and returned as written."""

    def parse(text: str) -> str:
        if text not in words:
            try:
                SplitSpec.parse(text)
            except ValueError as error:
                raise argparse.ArgumentTypeError(str(error)) from None
        return text

    return parse


def check_time_split(dataset, spec: SplitSpec | None, flag: str) -> None:
    """ValueError naming ``flag`` when ``spec`` is a time split that cannot hold out the latest
    likes of ``dataset`` (some like has no time, or ties at the split time take most of them):
    checked once the data is loaded, before any training."""
    if spec is None or spec.kind != "time":
        return
    problem = time_split_problem(dataset, spec.fraction)
    if problem:
        raise ValueError(f"{flag} {spec}: {problem}; use {flag} user:{spec.fraction:g} or random:{spec.fraction:g}")


def check_validation_kind(dataset, kind: str | None, fraction: float, flag: str) -> None:
    """ValueError naming ``flag`` when ``kind`` asks for a time validation split that cannot
    hold out the latest ``fraction`` of ``dataset``'s likes (``check_time_split``'s reasons)."""
    if kind != "time":
        return
    problem = time_split_problem(dataset, fraction)
    if problem:
        raise ValueError(f"{flag} time: {problem}; use {flag} user or random")


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """Hyperparameter flags, shared by ``train`` and ``evaluate``."""
    d = TrainParams()
    group = parser.add_argument_group("model")
    group.add_argument("--factors", type=bounded(int, 1), default=d.factors, help=f"latent dimensions (default: {d.factors})")
    group.add_argument("--regularization", type=bounded(float, 0), default=d.regularization,
                       help=f"ALS L2 regularization (default: {d.regularization})")
    group.add_argument("--alpha", type=bounded(float, above=0), default=d.alpha,
                       help=f"ALS confidence of a positive, c = alpha * weight (default: {d.alpha})")
    group.add_argument("--iterations", type=bounded(int, 1), default=d.iterations, help=f"ALS sweeps (default: {d.iterations})")
    group.add_argument("--als-bags", type=bounded(int, 1), default=d.als_bags, metavar="N",
                       help="fit N ALS models from different seeds and serve their average (factors side by side): "
                            "on Last.fm 5 raised validation NDCG@10 by 1.0 %%, for N times the ALS time and N times "
                            f"wider vectors and index (default: {d.als_bags})")
    group.add_argument("--follow-weight", type=bounded(float, 0), default=d.follow_weight,
                       help=f"weight of a follow relative to a like; 0 ignores follows (default: {d.follow_weight})")
    for kind, name in ENGAGEMENT_WEIGHT_FIELDS.items():
        group.add_argument(f"--{kind.replace('_', '-')}-weight", dest=name, type=bounded(float, 0), default=getattr(d, name), metavar="W",
                           help=f"weight of an engagements.csv row of kind '{kind}' relative to a like; 0 ignores "
                                "them (default: %(default)s)")
    group.add_argument("--weight-transform", choices=als.WEIGHT_TRANSFORMS, default=d.weight_transform,
                       help="how a like's weight column (e.g. a listening count) enters ALS and item-kNN: "
                            "log = log2(1 + w), raw, binary (default: %(default)s)")
    group.add_argument("--recency-half-life-days", type=bounded(float, 0), default=d.recency_half_life_days, metavar="DAYS",
                       help="a like's ALS confidence halves with every DAYS before the newest like (timed likes "
                            "only); 0 weighs old and new alike (default: %(default)s)")
    group.add_argument("--knn", choices=KNN_KINDS, default=d.knn,
                       help="item-to-item model for the item_knn source and feature: auto is EASE up to "
                            f"{EASE_AUTO_MAX_ITEMS:,} items liked by 2+ users and cosine above; none trains none "
                            "(default: %(default)s)")
    group.add_argument("--knn-k", type=bounded(int, 1), default=d.knn_k, help=f"neighbours kept per item by item-kNN (default: {d.knn_k})")
    group.add_argument("--ease-l2", type=bounded(float, above=0), default=d.ease_l2,
                       help=f"L2 penalty of EASE, with --knn ease or auto (default: {d.ease_l2})")
    group.add_argument("--index", choices=("auto", "flat", "hnsw-mips", "ivfpq-ip"), default=d.index,
                       help="item index: auto is exact below 20k items, hnsw-mips up to 100k, IVF + fast-scan PQ + exact refine "
                            "above, probing the fewest lists whose recall@100 on 200 users reaches 0.95 (default: auto)")
    group.add_argument("--ef-search", type=bounded(int, 1), default=d.ef_search,
                       help=f"HNSW search beam width stored with the index, for hnsw-* kinds (default: {d.ef_search}; "
                            "the server's --ef-search overrides it per request)")
    group.add_argument("--precompute-neighbours-up-to", type=bounded(int, 0), default=d.precompute_neighbours_up_to,
                       metavar="USERS",
                       help="with at most USERS users, search each trained user's first-page embedding neighbours "
                            "now and keep them in the model, so a server reads them instead of searching the index "
                            "(8 bytes per neighbour: 1.2 KB a user at 150); 0 never (default: %(default)s)")
    group.add_argument("--warm-iterations", type=bounded(int, 0), default=d.warm_iterations,
                       help="ALS sweeps over all the data, starting from the ranker's fit-part model "
                            f"(default: {d.warm_iterations}; without a fitted ranker, --iterations from scratch)")
    group.add_argument("--seed", type=bounded(int, 0), default=d.seed,
                       help="seed of ALS (bag N of --als-bags starts from a seed derived from it) and of the ranker's fit: "
                            "its validation split when per user or random, its sample of --ranker-users and of pairs. "
                            "Not of a test split: evaluate's --split and train's --eval-split take their own :SEED "
                            f"(0 when left out), so runs with other --seed values test on the same likes (default: {d.seed})")
    group.add_argument("--no-progress", action="store_true", help="no progress bars or step timings")
    add_params_file_argument(group)
    add_ranker_arguments(parser)



def add_ranker_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the learned ranker's fit (training.ranker_fit)."""
    d = RankerFitParams()
    group = parser.add_argument_group("ranker")
    group.add_argument("--ranker", choices=(*OBJECTIVES, "blend"), default=d.objective,
                       help="ranker objective fitted on the serving pipeline's candidates, or blend for the "
                            "hand-set weights (default: %(default)s)")
    group.add_argument("--ranker-l2", type=bounded(float, 0), default=d.l2, help="L2 penalty of the ranker fit (default: %(default)s)")
    group.add_argument("--ranker-validation", type=bounded(float, above=0, below=1), default=d.validation_fraction,
                       help="share of the training likes held out as ranker labels (default: %(default)s)")
    group.add_argument("--ranker-validation-split", choices=("auto", *SPLIT_KINDS), default="auto",
                       help="shape of that held-out share: time (the latest likes), user (a share of each user's "
                            "likes) or random (a share of all likes). auto: the evaluation's --split; with --test, "
                            "and in train, time when every like has a time, else user. Give a --test file's shape "
                            "(e.g. random for a published split of all pairs), so that the ranker is chosen as it "
                            "will be judged (default: %(default)s)")
    group.add_argument("--ranker-users", type=bounded(int, 1), default=d.max_users,
                       help="validation users whose candidate pools are collected (default: %(default)s)")
    group.add_argument("--drop-features", type=parse_feature_names, default=",".join(d.drop_features), metavar="NAMES",
                       help="comma-separated features the ranker holds at weight 0 (tune chooses which time "
                            f"features to use); names: {', '.join(FEATURE_NAMES)} (default: none)")



def ranker_params_from_args(args: argparse.Namespace):
    return RankerFitParams(
        objective=args.ranker,
        l2=args.ranker_l2,
        validation_fraction=args.ranker_validation,
        validation_kind=None if args.ranker_validation_split == "auto" else args.ranker_validation_split,
        max_users=args.ranker_users,
        seed=args.seed,
        drop_features=args.drop_features,
    )


def parse_feature_names(text: str) -> tuple[str, ...]:
    """``--drop-features``: comma-separated names of ranking.features.FEATURE_NAMES."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in FEATURE_NAMES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown features {unknown}; choose from {', '.join(FEATURE_NAMES)}")
    return names



# TrainParams fields no flag sets: the unit the other weights are relative to, the HNSW build
# parameters, and show_progress (--no-progress).
_UNFLAGGED_TRAIN_FIELDS = ("like_weight", "hnsw_m", "ef_construction", "show_progress")
TRAIN_FLAG_FIELDS = tuple(name for name in TrainParams.__dataclass_fields__ if name not in _UNFLAGGED_TRAIN_FIELDS)
"""The TrainParams fields set by the flag of the same name (--factors sets factors)."""


def params_from_args(args: argparse.Namespace) -> TrainParams:
    return TrainParams(**{name: getattr(args, name) for name in TRAIN_FLAG_FIELDS}, show_progress=not args.no_progress)


def parse_ks(text: str) -> tuple[int, ...]:
    """The argparse type of --k: sorted distinct cut-offs; a bad one is a usage error (status 2)."""
    try:
        ks = tuple(sorted({int(k) for k in text.split(",") if k.strip()}))
    except ValueError:
        ks = ()
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return ks



DEFAULT_EVAL_USERS = 10_000



def add_eval_users_argument(parser) -> None:
    parser.add_argument(
        "--eval-users", type=bounded(int, 0), default=DEFAULT_EVAL_USERS,
        help="average over a seeded sample of this many test users; 0 = all (default: %(default)s)",
    )


def add_feed_arguments(parser: argparse.ArgumentParser) -> None:
    """The feed settings the ranker is fitted and the feed replayed under (as served)."""
    feed = parser.add_argument_group("feed (as served)")
    d = FeedSettings()
    feed.add_argument("--max-per-seller", type=bounded(int, 1), default=d.max_per_seller,
                      help="seller cap per page, as served (default: %(default)s)")
    feed.add_argument("--max-per-category", type=bounded(int, 0), default=d.max_per_category,
                      help="category cap per page, as served; 0 = none (default: %(default)s)")
    feed.add_argument("--per-key-limit", type=bounded(int, 1), default=d.per_key_limit,
                      help="newest listings per followed seller and likes per friend a first page gathers (a deeper page gathers more: ranking.pipeline.per_key_read) (default: %(default)s)")
    feed.add_argument("--trending-limit", type=bounded(int, 0), default=d.trending_limit,
                      help="trending items gathered for a first page (default: %(default)s)")
    feed.add_argument("--neighbours", type=bounded(int, 0), default=d.neighbours,
                      help="embedding neighbours gathered per feed (default: %(default)s)")
    feed.add_argument("--knn-neighbours", type=bounded(int, 0), default=d.knn_neighbours,
                      help="item-kNN candidates gathered per feed (default: %(default)s)")
    feed.add_argument("--sources", default=",".join(d.sources), type=candidate_sources,
                      help="comma-separated candidate sources of the served feed, for ablations (default: %(default)s)")
    feed.add_argument("--fallback-sources", type=source_names, metavar="LIST",
                      help="of those, the ones that run only when the others gathered fewer than 2 x (served + limit) "
                           "candidates or a short page (the cold-start fallback); 'none': every source always runs (default: "
                           f"{','.join(d.fallback_sources)}, when among --sources)")


FEED_FLAG_FIELDS = ("max_per_seller", "max_per_category", "per_key_limit", "trending_limit", "neighbours",
                    "knn_neighbours", "sources", "fallback_sources")
"""The FeedSettings fields set by the flag of the same name."""


def settings_from_args(args: argparse.Namespace) -> FeedSettings:
    """The feed settings of the flags; ValueError when --fallback-sources names one that is no source
    (it would never run). Without the flag, the default fallback applies to those among the sources."""
    values = {name: getattr(args, name) for name in FEED_FLAG_FIELDS}
    if values["fallback_sources"] is None:
        values["fallback_sources"] = FeedSettings().fallback_sources
    else:
        stray = [name for name in values["fallback_sources"] if name not in values["sources"]]
        if stray:
            raise ValueError(f"--fallback-sources: {', '.join(stray)} is not among --sources "
                             f"({', '.join(values['sources'])}): a fallback source is one of the sources")
    return replace(FeedSettings(), **values)


def source_names(text: str) -> tuple[str, ...]:
    """An argparse type: comma-separated candidate source names; "none" or nothing is none."""
    try:
        return parse_source_names(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def candidate_sources(text: str) -> tuple[str, ...]:
    """``--sources``: at least one source name, or every feed would be empty."""
    names = source_names(text)
    if not names:
        raise argparse.ArgumentTypeError(f"no source: every feed would be empty; choose from {', '.join(SOURCE_NAMES)}")
    return names


def add_params_file_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--params", metavar="FILE", type=input_path,
        help="JSON written by `python -m training tune`: its model and feed values become the defaults of the "
             "flags above (a flag given on the command line still wins)",
    )


PARAMS_FILE_SECTIONS = {"train": TRAIN_FLAG_FIELDS, "feed": FEED_FLAG_FIELDS, "ranker": ("drop_features",)}
"""The sections of a params file whose values set flags, and the flags (by dest) each may set."""
PARAMS_FILE_REPORT_SECTIONS = ("validation", "confirmation", "trials", "seconds")
"""What else training.tune writes into the file: its report, for people, ignored here."""


def params_file_defaults(path: str) -> dict[str, object]:
    """The flag values of a params file ({"train": {...}, "feed": {...}, "ranker": {...}}, as
    training.tune writes it), by dest, each converted and checked by its flag's own type and
    choices as if given on the command line; ValueError names the file and the key (or the
    line and column) and what is wrong."""
    payload = _read_params_file(path)
    unknown = [key for key in payload if key not in (*PARAMS_FILE_SECTIONS, *PARAMS_FILE_REPORT_SECTIONS)]
    if unknown:
        raise ValueError(f"--params {path}: unknown section {unknown[0]!r}; the flags' values go in "
                         f"{', '.join(PARAMS_FILE_SECTIONS)}")
    flags = _params_file_flags()
    defaults: dict[str, object] = {}
    for section, fields in PARAMS_FILE_SECTIONS.items():
        values = payload.get(section, {})
        if not isinstance(values, dict):
            raise ValueError(f"--params {path}: {section}: expected an object of flag values, got {_json_kind(values)}")
        for key, value in values.items():
            if key not in fields:
                raise ValueError(f"--params {path}: {section}.{key}: no flag sets it; choose from {', '.join(fields)}")
            if isinstance(value, list) and not all(isinstance(item, str) for item in value):
                raise ValueError(f"--params {path}: {section}.{key}: expected a list of names (strings), got {json.dumps(value)}")
            try:
                parsed = flags.parse_args([f"--{key.replace('_', '-')}={_flag_text(value)}"])
            except argparse.ArgumentError as error:
                raise ValueError(f"--params {path}: {section}.{key}: {error.message}") from None
            defaults[key] = getattr(parsed, key)
    return defaults


def _read_params_file(path: str) -> dict:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise ValueError(f"--params {path}: {error.strerror}") from None
    try:
        payload = json.loads(data.decode("utf-8"), object_pairs_hook=_without_repeated_keys)
    except _RepeatedKey as error:
        raise ValueError(f"--params {path}: key {error.args[0]!r} is given twice in one object (JSON keeps only the last)") from None
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - data.rfind(b"\n", 0, error.start)
        raise ValueError(f"--params {path}: line {line} column {column}: not UTF-8") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"--params {path}: line {error.lineno} column {error.colno}: {error.msg}") from None
    if not isinstance(payload, dict):
        raise ValueError(f"--params {path}: expected a JSON object of sections ({', '.join(PARAMS_FILE_SECTIONS)}), "
                         f"got {_json_kind(payload)}")
    return payload


class _RepeatedKey(ValueError):
    pass


def _without_repeated_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object as a dict, refusing a key given twice: the first value would be lost unseen."""
    seen: dict[str, object] = {}
    for key, value in pairs:
        if key in seen:
            raise _RepeatedKey(key)
        seen[key] = value
    return seen


def _params_file_flags() -> argparse.ArgumentParser:
    """The flags a params file may set, on their own: a value is parsed as the command line's would be."""
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    add_feed_arguments(parser)
    add_training_arguments(parser)
    return parser


def _flag_text(value: object) -> str:
    """A JSON value as a flag's text: strings as they are, lists (of strings) comma-joined, the rest as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return ",".join(value)
    return json.dumps(value)


def _json_kind(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


ENGINES = ("implicit", "spark")


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """``--engine`` and the Spark session's flags (training.spark_engine)."""
    from training.spark_engine import SparkSettings

    d = SparkSettings()
    group = parser.add_argument_group("engine")
    group.add_argument("--engine", choices=ENGINES, default="implicit",
                       help="implicit: one process (implicit ALS); spark: the interaction matrix, ALS and item-kNN "
                            "on Apache Spark (needs the spark extra and Java 17); the same artifact either way "
                            "(default: %(default)s)")
    group.add_argument("--spark-master", type=spark_master, default=d.master, metavar="URL",
                       help="Spark master: local[N], spark://HOST:PORT, yarn, k8s://... (default: %(default)s)")
    group.add_argument("--spark-driver-memory", type=jvm_size, default=d.driver_memory, metavar="SIZE",
                       help="driver JVM heap; in local mode the executors live in it too (default: %(default)s)")
    group.add_argument("--spark-executor-memory", type=jvm_size, default=d.executor_memory, metavar="SIZE",
                       help="heap per executor on a cluster (default: %(default)s)")
    group.add_argument("--spark-partitions", type=bounded(int, 0), default=d.partitions, metavar="N",
                       help="shuffle partitions and ALS user/item blocks; 0 = the session's cores "
                            "(default: %(default)s)")
    group.add_argument("--spark-checkpoint-dir", default=d.checkpoint_dir, metavar="DIR",
                       help="where ALS cuts its lineage every 10 iterations; on a cluster a shared path "
                            "(hdfs://, s3a://) (default: a temporary directory for local masters, else "
                            "feedrank-spark-checkpoints on the cluster's default filesystem)")
    group.add_argument("--spark-knn-max-user-items", type=bounded(int, 0), default=d.knn_max_user_items, metavar="N",
                       help="item-kNN on Spark: only each user's N heaviest items form co-occurring pairs (a user "
                            "costs N^2 pairs); 0 = all (default: %(default)s)")
    group.add_argument("--spark-conf", action="append", type=_spark_conf, default=[], metavar="KEY=VALUE",
                       help="any other Spark setting, e.g. spark.executor.instances=50; repeatable; wins over the "
                            "flags above")


def _spark_conf(text: str) -> tuple[str, str]:
    from training.spark_engine import parse_spark_conf

    try:
        return parse_spark_conf(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def spark_settings_from_args(args: argparse.Namespace):
    """The training.spark_engine.SparkSettings of ``--spark-*``; ValueError when they are
    given without ``--engine spark`` (they would be silently ignored)."""
    from training.spark_engine import SparkSettings, refuse_bags

    settings = SparkSettings(
        master=args.spark_master,
        driver_memory=args.spark_driver_memory,
        executor_memory=args.spark_executor_memory,
        partitions=args.spark_partitions,
        checkpoint_dir=args.spark_checkpoint_dir,
        conf=tuple(args.spark_conf),
        knn_max_user_items=args.spark_knn_max_user_items,
    )
    if args.engine != "spark" and replace(settings, app_name=SparkSettings().app_name) != SparkSettings():
        raise ValueError("the --spark-* flags apply to --engine spark only")
    if args.engine == "spark":
        refuse_bags(getattr(args, "als_bags", 1))
    return settings
