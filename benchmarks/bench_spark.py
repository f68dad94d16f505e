"""The Spark engine beside the implicit engine: parity of the served feed, and scale.

  python -m benchmarks.bench_spark parity --data DIR [--split user:0.2:0] [--seeds 0] [--spark-master local[2]]
  python -m benchmarks.bench_spark scale --users 20000 --items 50000 [--sellers 2000] [--spark-master local[2]]

parity: for each seed, the whole evaluate protocol (training.experiment.evaluate_split:
train part, ranker fitted on a validation split of it, served feed replayed on the test
part) once with the implicit engine and once on Spark (SparkEngine.evaluate_split), with
the same data, split and hyperparameters (the training flags of `python -m training
evaluate`). Prints NDCG@10 of the served feed and of ALS alone per engine, and the
relative difference of the means; exits 1 when the served feed's differs by more than
--tolerance (default 2%).

scale: generates the dataset (once, into --workdir), then runs `python -m training
train`'s train_and_publish once per engine, each in a child process of its own, with no
evaluation (--eval-split none) and the default ranker fit (1,000 pool users). Reports
wall time, the Python process's peak RSS and, for Spark, the JVM's peak RSS (VmHWM of
the java process: the driver, and in local mode the executors, which run inside it; the
heap grows towards --spark-driver-memory before the JVM collects, so it says what was
allowed as much as what was needed).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _engine_flags(parser: argparse.ArgumentParser) -> None:
    from training.flag_types import bounded, jvm_size, spark_master

    parser.add_argument("--spark-master", type=spark_master, default="local[2]", help="Spark master (default: %(default)s)")
    parser.add_argument("--spark-driver-memory", type=jvm_size, default="4g", help="driver JVM heap (default: %(default)s)")
    parser.add_argument("--spark-partitions", type=bounded(int, 0), default=0, help="0 = the session's cores (default: %(default)s)")


def _spark_settings(args):
    from training.spark_engine import SparkSettings

    return SparkSettings(
        master=args.spark_master, driver_memory=args.spark_driver_memory, partitions=args.spark_partitions,
        conf=(("spark.ui.enabled", "false"),),
    )


# ---- parity -------------------------------------------------------------------------------

def parity(args) -> int:
    from dataclasses import replace

    from training.arguments import params_from_args, ranker_params_from_args, settings_from_args
    from training.dataset import load_dataset
    from training.experiment import evaluate_split
    from training.spark_engine import spark_engine
    from training.splits import SplitSpec, default_split

    dataset = load_dataset(args.data)
    split = SplitSpec.parse(args.split) if args.split else default_split(dataset)
    params = replace(params_from_args(args), show_progress=False)
    settings = settings_from_args(args)
    seeds = args.seeds
    rows: dict[str, list[dict[str, float]]] = {"implicit": [], "spark": []}
    print(f"parity on {args.data}: split {split}, {len(dataset.likes)} likes, seeds {seeds}", flush=True)
    with spark_engine(_spark_settings(args)) as engine:
        for seed in seeds:
            seeded = replace(params, seed=seed)
            ranker_params = replace(ranker_params_from_args(args), seed=seed)
            for name in ("implicit", "spark"):
                started = time.perf_counter()
                if name == "implicit":
                    report = evaluate_split(
                        dataset, split, None, (10,), seeded, settings, show_progress=False,
                        ranker_params=ranker_params, compare_blend=False, max_users=args.eval_users,
                    )
                else:
                    report = engine.evaluate_split(
                        dataset, split, None, (10,), seeded, settings, show_progress=False,
                        ranker_params=ranker_params, compare_blend=False, max_users=args.eval_users,
                    )
                result = report.as_json()
                row = {
                    "seed": seed,
                    "ndcg@10": result["model"]["ndcg@10"],
                    "als_ndcg@10": result["baselines"].get("als", {}).get("ndcg@10", float("nan")),
                    "seconds": round(time.perf_counter() - started, 1),
                }
                rows[name].append(row)
                print(f"  seed {seed} {name:<8} NDCG@10 served {row['ndcg@10']:.4f}  ALS alone {row['als_ndcg@10']:.4f}  "
                      f"({row['seconds']:.0f} s)", flush=True)
    summary = {}
    for name, values in rows.items():
        summary[name] = {
            key: float(np.mean([r[key] for r in values])) for key in ("ndcg@10", "als_ndcg@10", "seconds")
        }
    served = summary["spark"]["ndcg@10"] / summary["implicit"]["ndcg@10"] - 1.0
    alone = summary["spark"]["als_ndcg@10"] / summary["implicit"]["als_ndcg@10"] - 1.0
    print(f"{'engine':<10} {'served NDCG@10':>15} {'ALS alone':>10} {'seconds':>8}")
    for name, values in summary.items():
        print(f"{name:<10} {values['ndcg@10']:>15.4f} {values['als_ndcg@10']:>10.4f} {values['seconds']:>8.0f}")
    ok = abs(served) <= args.tolerance
    print(f"spark vs implicit: served feed {served:+.2%}, ALS alone {alone:+.2%} "
          f"({'within' if ok else 'OUTSIDE'} ±{args.tolerance:.0%})")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"rows": rows, "summary": summary, "served_difference": served, "als_difference": alone}, handle, indent=2)
    return 0 if ok else 1


# ---- scale --------------------------------------------------------------------------------

def run_one(args) -> int:
    """Child process: train and publish with one engine; the last stdout line is a JSON record."""
    from training.params import TrainParams
    from training.ranker_fit import RankerFitParams
    from training.train import train_and_publish

    started = time.perf_counter()
    params = TrainParams(show_progress=False)  # step timings come from the manifest
    record: dict[str, object] = {"engine": args.engine}
    if args.engine == "spark":
        from training.spark_engine import spark_engine

        with spark_engine(_spark_settings(args), verbose=False) as engine:
            version = train_and_publish(args.data, args.out, params, ranker_params=RankerFitParams(), engine=engine)
            record["jvm_peak_rss_mb"] = round((engine.jvm_peak_rss_bytes() or 0) / 2**20, 1)
    else:
        version = train_and_publish(args.data, args.out, params, ranker_params=RankerFitParams())
    record["seconds"] = round(time.perf_counter() - started, 1)
    record["python_peak_rss_mb"] = round(peak_rss_mb(), 1)
    with open(os.path.join(version, "manifest.json")) as handle:
        manifest = json.load(handle)
    record["timings"] = manifest["timings"]
    record["data"] = {k: manifest["data"][k] for k in ("users", "items", "sellers", "interactions", "index_kind")}
    record["validation_ndcg@10"] = manifest["ranker"].get("fit", {}).get("validation_ndcg@10")
    print(json.dumps(record), flush=True)
    return 0


def scale(args) -> int:
    from training.dataset import write_dataset
    from training.generate import generate

    name = f"u{args.users}-i{args.items}-s{args.sellers}-seed{args.seed}"
    data_dir = os.path.join(args.workdir, name, "data")
    if not os.path.exists(os.path.join(data_dir, "likes.csv")):
        started = time.perf_counter()
        dataset = generate(users=args.users, sellers=args.sellers, items=args.items, seed=args.seed,
                           engagements=not args.no_engagements)
        write_dataset(dataset, data_dir)
        print(f"generated {data_dir} in {time.perf_counter() - started:.0f} s", flush=True)
    records = []
    for engine in args.engines:
        out = os.path.join(args.workdir, name, f"models-{engine}")
        command = [sys.executable, "-m", "benchmarks.bench_spark", "run-one", "--engine", engine, "--data", data_dir,
                   "--out", out, "--spark-master", args.spark_master, "--spark-driver-memory", args.spark_driver_memory,
                   "--spark-partitions", str(args.spark_partitions)]
        print("$", " ".join(command), flush=True)
        try:
            finished = subprocess.run(command, stdout=subprocess.PIPE, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            print(f"{engine}: not finished within {args.timeout} s", flush=True)
            records.append({"engine": engine, "timeout": args.timeout})
            continue
        lines = finished.stdout.strip().splitlines()
        print("\n".join(lines[:-1]), flush=True)
        if finished.returncode != 0 or not lines:
            print(f"{engine}: failed with status {finished.returncode}", flush=True)
            records.append({"engine": engine, "status": finished.returncode})
            continue
        records.append(json.loads(lines[-1]))
    print(f"\n{'engine':<9} {'wall s':>7} {'python peak MB':>15} {'JVM peak RSS MB':>16}  steps (s)")
    for r in records:
        if "seconds" not in r:
            print(f"{r['engine']:<9} {'-':>7}  {r}")
            continue
        steps = ", ".join(f"{k} {v:.0f}" for k, v in r["timings"].items())
        print(f"{r['engine']:<9} {r['seconds']:>7.0f} {r['python_peak_rss_mb']:>15.0f} {r.get('jvm_peak_rss_mb', 0):>16.0f}  {steps}")
    if records and "data" in records[0]:
        print(f"data: {records[0]['data']}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(records, handle, indent=2)
    return 0


def main(argv: list[str] | None = None) -> int:
    from training.arguments import ENGINES, add_eval_users_argument, add_feed_arguments, add_training_arguments, split_text
    from training.flag_types import bounded, names_among, output_file, whole_numbers
    from training.generate import check_sellers

    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_spark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("parity", help="served NDCG@10, implicit vs Spark, on one split")
    p.add_argument("--data", required=True, help="the dataset directory (as `python -m training evaluate --data`)")
    p.add_argument("--split", type=split_text(), help="as `python -m training evaluate --split` (default: its default)")
    p.add_argument("--seeds", type=whole_numbers(0), default="0", help="comma-separated ALS/ranker seeds (default: %(default)s)")
    p.add_argument("--tolerance", type=bounded(float, 0), default=0.02, help="allowed relative difference (default: %(default)s)")
    p.add_argument("--json", type=output_file, help="write rows and summary here")
    _engine_flags(p)
    add_eval_users_argument(p)
    add_feed_arguments(p)
    add_training_arguments(p)
    p.set_defaults(run=parity)

    s = commands.add_parser("scale", help="wall time and peak memory of both engines on a generated dataset")
    s.add_argument("--users", type=bounded(int, 2), default=20_000, help="generated users (default: %(default)s)")
    s.add_argument("--items", type=bounded(int, 1), default=50_000, help="generated items (default: %(default)s)")
    s.add_argument("--sellers", type=bounded(int, 1), default=2_000, help="generated sellers, chosen among the users (<= --users) (default: %(default)s)")
    s.add_argument("--seed", type=bounded(int, 0), default=1, help="generator seed (default: %(default)s)")
    s.add_argument("--no-engagements", action="store_true", help="generate likes, follows and friends only")
    s.add_argument("--engines", type=names_among(ENGINES, "engine"), default="implicit,spark",
                   help=f"comma-separated engines to train with, in this order: {', '.join(ENGINES)} (default: %(default)s)")
    s.add_argument("--workdir", default="/tmp/bench-spark", help="where the dataset (generated once per size and seed, reused) and each engine's models go (default: %(default)s)")
    s.add_argument("--timeout", type=bounded(float, above=0), default=3600.0, help="seconds per engine (default: %(default)s)")
    s.add_argument("--json", type=output_file, help="write the records here")
    _engine_flags(s)
    s.set_defaults(run=scale)

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["run-one"]:  # scale's child process: known only when asked for, so no message offers it
        r = commands.add_parser("run-one")
        r.add_argument("--engine", choices=ENGINES, required=True)
        r.add_argument("--data", required=True)
        r.add_argument("--out", required=True)
        _engine_flags(r)
        r.set_defaults(run=run_one)

    args = parser.parse_args(argv)
    if args.command == "scale":
        try:
            check_sellers(args.users, args.sellers)
        except ValueError as error:
            s.error(str(error))
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
