"""Interleaved A/B of the in-process feed pipeline of several checkouts: CPU time per page.

    python -m benchmarks.compare_pipeline --data DIR --models DIR [--models DIR ...] CHECKOUT[:KEY=VALUE,...] CHECKOUT[:...] ...
        [--rounds 60] [--batch 200] [--users 2000] [--seed 0] [--page 1] [--store redis://HOST:PORT/DB ...]

One worker process per checkout imports that checkout's code (PYTHONPATH), loads DIR into
a memory store and the current model version of DIR, runs every user once to warm up,
then times ``FeedPipeline.run`` (first pages, limit 20) with ``time.thread_time`` over
batches of --batch users. With ``--page N``, each user's pages 1 to N-1 are served first,
as to a user paging (each page's items excluded from the next, by that checkout), and
the N-th page is the one timed. The workers take turns, batch by batch, --rounds times, and
every worker runs the same users in the same round: on a shared machine a burst of noise
hits neighbouring batches of every checkout alike, so the per-round ratios are far
steadier than the times of runs one after another. KEY=VALUE pairs set that checkout's
FeedSettings fields (e.g. ``.:ef_search=64``).

Reported: per checkout, the median and 10th percentile of the CPU time per page; per
later checkout, the median per-round ratio to the first (with its 10th and 90th
percentiles).

With --store, every worker reads that Redis instead (it must already hold DIR's dataset:
`python -m serving load --data DIR --redis URL`; the pipeline only reads it, and a worker
whose warm-up pages all come back empty stops the run in one line), and each
turn also measures Redis's own CPU (INFO cpu) over its batch: the workers take turns, so
it is that checkout's. Reported then too: Redis's CPU per page, and the per-round ratio
of the client's and Redis's CPU together, so a change that moves work between the client
and Redis's scripts shows. Give one --store per checkout, in order, when their stores
differ (a change of the stored layout: each Redis loaded by its checkout's own
`serving load`); each worker then reads its own, and each Redis works only in its turn.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys


def parse_settings(defaults: object, pairs: list[str], unknown_ok: bool = False) -> dict[str, object]:
    """KEY=VALUE ``pairs`` as FeedSettings fields of ``defaults``'s types; ValueError naming
    the pair that is not one (a key ``defaults`` lacks is skipped with ``unknown_ok``)."""
    fields = {field.name for field in dataclasses.fields(defaults)}
    settings = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals:
            raise ValueError(f"{pair!r}: expected KEY=VALUE")
        if key not in fields:
            if unknown_ok:
                continue
            raise ValueError(f"{key}: no such FeedSettings field; choose from {', '.join(sorted(fields))}")
        kind = type(getattr(defaults, key))
        try:
            settings[key] = kind(value)
        except ValueError:
            raise ValueError(f"{pair}: expected {kind.__name__} for {key}") from None
    return settings


def _report(status: str, error: BaseException | None = None) -> None:
    """One line to the parent: ``status``, or "error" and the message as a JSON string (it may span lines)."""
    print(status if error is None else f"error {json.dumps(str(error))}", flush=True)


def _worker(args: argparse.Namespace) -> None:
    """Run in the checkout under test: only APIs every checkout has. Its first line says
    whether --settings suit this checkout's FeedSettings ("checked"), its second that the
    data, model and store are loaded ("ready"); "error MESSAGE" instead ends it."""
    import random
    import time

    import numpy as np

    from ranking.feed import FeedSettings, build_feed_pipeline

    try:
        settings = parse_settings(FeedSettings(), args.settings)
    except ValueError as error:
        _report("error", error)
        sys.exit(2)
    _report("checked")
    from serving.native_threads import limit_native_threads
    from stores.memory import MemoryStore
    from stores.redis import RedisStore
    from training.artifact import load_current
    from training.dataset import load_dataset

    limit_native_threads()  # one faiss/BLAS thread, as in the server
    try:
        dataset = load_dataset(args.data)
        artifact = load_current(args.models[0])
        store = RedisStore.from_url(args.store[0]) if args.store else MemoryStore.from_dataset(dataset)
        pipeline = build_feed_pipeline(store, artifact.model, artifact.ranker, FeedSettings(**settings))
    except Exception as error:  # whatever the checkout raises, the parent shows it in one line
        _report("error", error)
        sys.exit(2)

    def store_cpu_seconds() -> float:
        if not args.store:
            return 0.0
        info = store.client.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    users = dataset.user_ids()
    users = random.Random(args.seed).sample(users, min(args.users, len(users)))
    now = float(np.nanmax(dataset.likes.ts))
    served = False
    for user in users:
        served |= bool(pipeline.run(user, 20, now).items)
    earlier = {user: np.zeros(0, np.uint32) for user in users}  # the stable hashes of the pages before the timed one
    for _ in range(args.page - 1):
        for user in users:
            earlier[user] = np.union1d(earlier[user], pipeline.run(user, 20, now, served_hashes=earlier[user]).item_hashes)
    if not served:  # the times would be an empty page's, reported as the pipeline's
        where = (f"the Redis at {args.store[0]} looks empty or loaded from another dataset (load it with `python -m serving load "
                 f"--data {args.data} --redis URL`)" if args.store else "nothing in the store to rank")  # fmt: skip
        _report("error", RuntimeError(f"all {len(users)} first pages came back empty: {where}"))
        sys.exit(2)
    print("ready", flush=True)
    turn = 0
    for line in sys.stdin:
        batch = [users[(turn + i) % len(users)] for i in range(int(line))]
        turn += len(batch)
        started, store_started = time.thread_time(), store_cpu_seconds()
        for user in batch:
            pipeline.run(user, 20, now, served_hashes=earlier[user])
        client, store_cpu = time.thread_time() - started, store_cpu_seconds() - store_started
        print(client / len(batch) * 1e6, store_cpu / len(batch) * 1e6, flush=True)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(share * len(ordered)), len(ordered) - 1)]


def round_ratios(numerators: list[float], denominators: list[float]) -> tuple[list[float], int]:
    """Each round's ratio, leaving out the rounds with nothing to divide: a denominator of 0 or
    a figure that is NaN (every call of the round failed, with --allow-errors); and how many."""
    ratios = [b / a for a, b in zip(denominators, numerators) if a > 0 and not math.isnan(b)]
    return ratios, min(len(numerators), len(denominators)) - len(ratios)


def ratio_lines(specs: list[str], per_round: list[list[float]], what: str) -> list[str]:
    """One line per later checkout: its per-round ``what`` divided by the first's."""
    lines = []
    for spec, measured in zip(specs[1:], per_round[1:]):
        ratios, left_out = round_ratios(measured, per_round[0])
        head = f"{spec} / {specs[0]}: {what}per-round ratio "
        if not ratios:
            lines.append(f"{head}not measured: no round where both had calls answered")
            continue
        lines.append(f"{head}median {statistics.median(ratios):.3f}, p10 {percentile(ratios, 0.1):.3f}, "
                     f"p90 {percentile(ratios, 0.9):.3f}" + (f" ({left_out} round{'s' * (left_out != 1)} without answered calls left out)" if left_out else ""))  # fmt: skip
    return lines


def check_checkouts(parser: argparse.ArgumentParser, specs: list[str], package: str) -> None:
    """Exit through ``parser`` unless there are two or more CHECKOUT[:...] specs, each a tree holding ``package``."""
    if len(specs) < 2:
        parser.error("give at least two checkouts (the first is the baseline)")
    for spec in specs:
        if not os.path.isdir(os.path.join(spec.partition(":")[0], package)):
            parser.error(f"{spec}: not a feedrank checkout (no {package}/ directory)")


class WorkerFailed(RuntimeError):
    """A worker could not start (its checkout refused a setting, or could not load the data,
    model or store), or exited during the rounds (its checkout raised, the OOM killer)."""


def await_line(spec: str, worker: subprocess.Popen, expected: str) -> None:
    """WorkerFailed unless ``worker``'s next line is ``expected``."""
    line = worker.stdout.readline().strip()
    if line == expected:
        return
    if line.startswith("error "):
        raise WorkerFailed(f"{spec}: {json.loads(line.removeprefix('error '))}")
    raise WorkerFailed(f"{spec}: the worker exited with status {worker.wait()} before it was {expected}")


def take_turn(spec: str, worker: subprocess.Popen, batch: int) -> tuple[float, float]:
    """``worker`` runs ``batch`` pages: the client's and the store's CPU per page, in us;
    WorkerFailed when it has exited (before its turn, or during it)."""
    try:
        worker.stdin.write(f"{batch}\n")
        worker.stdin.flush()
        line = worker.stdout.readline()
    except BrokenPipeError:  # it exited while waiting for its turn
        line = ""
    if not line.endswith("\n"):  # nothing, or a line cut short (PYTHONUNBUFFERED writes print's parts one by one)
        raise WorkerFailed(f"{spec}: the worker exited with status {worker.wait()} during the rounds")
    client, store_cpu = (float(value) for value in line.split())
    return client, store_cpu


def one_per_checkout(given: list[str], checkouts: list[str]) -> list[str]:
    """A flag given once for every checkout, or once per checkout, as one value per checkout ([] when not given)."""
    return given * len(checkouts) if len(given) == 1 else given


def compare(args: argparse.Namespace) -> list[str]:
    from benchmarks.loadgen import stops_deferred  # here, not at the top: a worker runs this file from another checkout, lightly

    workers = []
    stores = one_per_checkout(args.store, args.checkouts) or [None] * len(args.checkouts)
    try:
        for spec, store, models in zip(args.checkouts, stores, one_per_checkout(args.models, args.checkouts)):
            checkout, _, pairs = spec.partition(":")
            settings = [pair for pair in pairs.split(",") if pair]
            command = [sys.executable, os.path.abspath(__file__), "--worker", "--data", args.data, "--models", models,
                       "--users", str(args.users), "--seed", str(args.seed), "--page", str(args.page),
                       *(["--settings", *settings] if settings else []),
                       *(["--store", store] if store else [])]  # fmt: skip
            env = {**os.environ, "PYTHONPATH": os.path.abspath(checkout)}
            with stops_deferred():
                workers.append(subprocess.Popen(command, cwd=checkout, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        for expected in ("checked", "ready"):  # every checkout's settings first: a bad one fails before the loads
            for spec, worker in zip(args.checkouts, workers):
                await_line(spec, worker, expected)
        times: list[list[float]] = [[] for _ in workers]
        store_times: list[list[float]] = [[] for _ in workers]
        for _ in range(args.rounds):
            for spec, worker, measured, store_measured in zip(args.checkouts, workers, times, store_times):
                client, store_cpu = take_turn(spec, worker, args.batch)
                measured.append(client)
                store_measured.append(store_cpu)
    except BaseException:
        for worker in workers:
            worker.kill()  # one still loading would otherwise be waited for
        raise
    finally:
        for worker in workers:
            with contextlib.suppress(BrokenPipeError):  # what a worker that exited did not read
                worker.stdin.close()
            worker.wait()
    labels = args.checkouts if len(args.models) == 1 else [f"{spec} [{models}]" for spec, models in zip(args.checkouts, args.models)]
    lines = [f"{label}: median {statistics.median(t):.0f} us, p10 {percentile(t, 0.1):.0f} us per page"
             for label, t in zip(labels, times)]  # fmt: skip
    lines += ratio_lines(labels, times, "")
    if args.store:
        lines += [f"{label}: Redis CPU median {statistics.median(t):.0f} us per page" for label, t in zip(labels, store_times)]
        both = [[a + b for a, b in zip(client, store)] for client, store in zip(times, store_times)]
        lines += ratio_lines(labels, both, "client and Redis CPU ")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare_pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("checkouts", nargs="*", metavar="CHECKOUT[:KEY=VALUE,...]", help="two or more source trees; the first is the baseline")
    parser.add_argument("--data", required=True, help="dataset directory")
    parser.add_argument("--models", action="append", required=True, metavar="DIR",
                        help="model directory (its current version is served); once for every checkout, or once per "
                             "checkout in order, to compare two models' serving cost (the same checkout may be given twice)")
    parser.add_argument("--rounds", type=int, default=60, help="turns of every worker (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=200, help="pages per turn (default: %(default)s)")
    parser.add_argument("--users", type=int, default=2000, help="users sampled, the same in every checkout (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the user sample (default: %(default)s)")
    parser.add_argument("--page", type=int, default=1, help="which page of each user's feed to time, the earlier ones served "
                                                            "first (default: %(default)s)")  # fmt: skip
    parser.add_argument("--store", action="append", default=[], metavar="URL",
                        help="redis://HOST:PORT/DB already holding DIR's dataset; once for every checkout, or once per checkout "
                             "in order (default: a memory store in each worker)")  # fmt: skip
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--settings", nargs="*", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args)
        return
    check_checkouts(parser, args.checkouts, "ranking")
    for flag, given in (("--models", args.models), ("--store", args.store)):
        if len(given) > 1 and len(given) != len(args.checkouts):
            parser.error(f"give {flag} once, or once per checkout ({len(args.checkouts)}), not {len(given)} times")
    if min(args.rounds, args.batch, args.users, args.page) < 1:
        parser.error("--rounds, --batch, --users and --page must be at least 1")
    check_inputs(parser, args)
    # Each worker runs in its checkout's directory: paths relative to the caller's would be read from there.
    args.data, args.models = os.path.abspath(args.data), [os.path.abspath(models) for models in args.models]
    try:
        print("\n".join(compare(args)))
    except WorkerFailed as error:
        parser.error(str(error))


def check_inputs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit through ``parser`` on what every worker would fail on, before any starts: --data,
    --models, each --store, and settings this checkout's FeedSettings refuses (a key it
    lacks is left to the workers: another checkout may have it)."""
    from benchmarks.loadgen import check_store
    from ranking.feed import FeedSettings
    from training.artifact import current_version

    if not any(os.path.exists(os.path.join(args.data, name)) for name in ("likes.csv", "likes.parquet")):
        what = "no such directory" if not os.path.isdir(args.data) else "no likes.csv there"
        parser.error(f"--data {args.data}: {what} (not a dataset directory)")
    for models in dict.fromkeys(args.models):
        try:
            current_version(models)
        except FileNotFoundError as error:
            parser.error(f"--models {models}: {error}")
    for spec in args.checkouts:
        try:
            parse_settings(FeedSettings(), [pair for pair in spec.partition(":")[2].split(",") if pair], unknown_ok=True)
        except ValueError as error:
            parser.error(f"{spec}: {error}")
    for url in dict.fromkeys(args.store):
        check_store(parser, "--store", url)


if __name__ == "__main__":
    main()
