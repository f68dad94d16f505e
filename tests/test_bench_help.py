"""Every benchmark with a ``main`` names itself as it is run, ``python -m benchmarks.NAME``,
in its usage line (argparse's default is the file name, ``bench_lastfm.py``, which does
not run)."""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import json
import os
import sys

import pytest

from tests.conftest import REPO

BENCHMARKS = REPO / "benchmarks"


def modules_with_main() -> list[str]:
    return sorted(
        path.stem for path in BENCHMARKS.glob("*.py")
        if any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in ast.parse(path.read_text()).body)
    )


def test_the_benchmarks_with_a_main_are_found():
    assert {"bench_lastfm", "bench_feed_ipc", "bench_store_copy", "loadgen"} <= set(modules_with_main())


@pytest.mark.parametrize("name", modules_with_main())
def test_the_usage_line_names_the_module_as_it_is_run(name, monkeypatch, capsys):
    module = importlib.import_module(f"benchmarks.{name}")
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / f"{name}.py"), "--help"])  # as `python -m` sets it
    with pytest.raises(SystemExit) as exit:
        module.main()
    assert exit.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m benchmarks.{name} ")


@pytest.mark.parametrize("name, argv", [
    ("bench_ann", ["--data", "lognormal", "--items", "500", "--queries", "20", "-k", "10"]),
    ("bench_failover", ["--users", "200", "--items", "500", "--seconds-before", "0.5", "--seconds-after", "3", "--node-timeout-ms", "500"]),
    ("bench_feed_latency", ["--users", "200", "--sellers", "20", "--items", "500", "--requests", "10", "--warmup", "2", "--no-cluster"]),
    ("bench_spark", ["scale", "--users", "200", "--sellers", "20", "--items", "500", "--engines", "implicit"]),
])  # fmt: skip
def test_a_json_file_that_cannot_be_written_is_refused_before_the_run(name, argv, tmp_path, capsys):
    # It was opened once the run was over (an hour for bench_spark scale): a traceback, the records lost.
    module = importlib.import_module(f"benchmarks.{name}")
    if name == "bench_spark":
        argv = [*argv, "--workdir", str(tmp_path / "work")]
    with pytest.raises(SystemExit) as exit:
        module.main([*argv, "--json", str(tmp_path / "nowhere" / "report.json")])
    assert exit.value.code == 2
    out, err = capsys.readouterr()
    assert f"argument --json: no directory {tmp_path}/nowhere to write {tmp_path}/nowhere/report.json into" in err and not out


TINY_ANN = ["--data", "lognormal", "--items", "500", "--queries", "20", "-k", "10", "--kinds", "flat,hnsw-mips",
            "--ef-search", "16", "--exact-queries", "10", "--repeat", "1"]


def test_bench_ann_json_takes_a_file_as_every_other_benchmark_s_does(tmp_path, capsys):
    """bench_ann's --json was an on/off switch printing JSON instead of the table, where every
    other benchmark's --json names the file to write."""
    from benchmarks import bench_ann

    report = tmp_path / "ann.json"
    assert bench_ann.main([*TINY_ANN, "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "hnsw-mips" in out and "R@10" in out  # the table is still printed
    saved = json.loads(report.read_text())
    assert saved["args"]["items"] == 500 and [r["kind"] for r in saved["results"]] == ["flat", "hnsw-mips"]


def test_bench_ann_json_alone_still_prints_json(capsys):
    from benchmarks import bench_ann

    assert bench_ann.main([*TINY_ANN, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["args"]["items"] == 500


def test_bench_ann_on_a_published_model_reads_its_item_factors_and_queries_with_its_user_factors(tmp_path, capsys):
    """Which index works depends on the factors (hnsw-ip reached 0.966 on synthetic ALS
    factors and 0.778 on the 1M trainer's), so the benchmark can read a model's own."""
    from benchmarks import bench_ann
    from tests.test_embeddings import two_communities
    from training.dataset import write_dataset
    from training.train import TrainParams, train_and_publish

    write_dataset(two_communities(), str(tmp_path / "data"))
    train_and_publish(str(tmp_path / "data"), str(tmp_path / "models"), TrainParams(factors=8, iterations=5, show_progress=False))
    report = tmp_path / "ann.json"
    argv = ["--data", "model", "--models", str(tmp_path / "models"), "--queries", "20", "-k", "10",
            "--kinds", "flat,hnsw-ip", "--ef-search", "16", "--exact-queries", "5", "--repeat", "1"]
    assert bench_ann.main([*argv, "--json", str(report)]) == 0
    saved = json.loads(report.read_text())
    assert (saved["args"]["items"], saved["args"]["dim"]) == (40, 8)
    assert [r["kind"] for r in saved["results"]] == ["flat", "hnsw-ip"]
    with pytest.raises(SystemExit) as refused:
        bench_ann.main([*argv, "--queries", "61"])
    assert "the model in" in str(refused.value) and "has 60 users with factors" in str(refused.value)
    with pytest.raises(SystemExit) as exit:
        bench_ann.main(["--data", "model"])
    assert exit.value.code == 2 and "--data model needs it" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit:
        bench_ann.main(["--data", "model", "--models", str(tmp_path / "data")])
    assert exit.value.code == 2 and f"--models {tmp_path / 'data'}: no published model" in capsys.readouterr().err


def parsers_of(name: str, monkeypatch) -> list[tuple[str, argparse.ArgumentParser]]:
    """The parser ``python -m benchmarks.NAME`` builds (its ``main`` stopped at ``parse_args``),
    and each of its commands' parsers."""

    class Built(BaseException):
        pass

    def stop(self, args=None, namespace=None):
        raise Built(self)

    module = importlib.import_module(f"benchmarks.{name}")
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / f"{name}.py")])
    with pytest.raises(Built) as built:
        module.main(["--help"]) if inspect.signature(module.main).parameters else module.main()
    parser = built.value.args[0]
    found = [(name, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found += [(f"{name} {command}", sub) for command, sub in action.choices.items()]
    return found


@pytest.mark.parametrize("name", modules_with_main())
def test_every_flag_of_a_benchmark_says_what_it_does_and_its_default(name, monkeypatch):
    # --help listed bench_spark scale's --workdir, bench_wait's --batches and a dozen more
    # with no word of what they set or what they default to.
    unexplained = []
    for command, parser in parsers_of(name, monkeypatch):
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            flag = "/".join(action.option_strings)
            if not action.help:
                unexplained.append(f"{command} {flag}: no help")
            elif (action.default not in (None, False, [], argparse.SUPPRESS)
                  and (action.nargs != 0 or isinstance(action, argparse.BooleanOptionalAction))  # --x/--no-x: which one holds
                  and "%(default)" not in action.help and "default" not in action.help):
                unexplained.append(f"{command} {flag}: its default {action.default!r} not in its help")
    assert not unexplained, "\n".join(unexplained)


def test_loadgen_refuses_server_pid_0_as_it_does_any_pid_that_is_no_process(tmp_path, capsys):
    # 0 was taken for the flag not given: no check, and no server CPU column, without a word.
    from benchmarks import loadgen

    (tmp_path / "likes.csv").write_text("user_id,item_id,ts\nu1,i1,1\n")
    with pytest.raises(SystemExit) as exit:
        loadgen.main(["--target", "127.0.0.1:1", "--data", str(tmp_path), "--timeout", "0.2", "--server-pid", "0"])
    assert exit.value.code == 2
    assert "error: --server-pid 0: no such process" in capsys.readouterr().err


def test_loadgen_refuses_server_pid_without_target_as_the_spawned_servers_pid_is_measured(tmp_path, capsys):
    # Without --target a server is spawned and its pid measured: a --server-pid was ignored without a word.
    from benchmarks import loadgen

    (tmp_path / "likes.csv").write_text("user_id,item_id,ts\nu1,i1,1\n")
    with pytest.raises(SystemExit) as exit:
        loadgen.main(["--models", str(tmp_path / "no-models"), "--data", str(tmp_path), "--start-timeout", "5",
                      "--server-pid", str(os.getpid())])
    assert exit.value.code == 2
    assert "error: --server-pid is for a --target server" in capsys.readouterr().err


@pytest.mark.parametrize("workers", ["1", "2"])
def test_loadgen_refuses_metrics_without_target_as_the_spawned_servers_are_read(workers, tmp_path, capsys):
    # Without --target a --metrics URL was overwritten by the spawned server's (--workers 1),
    # or scraped though it was not the spawned server's (--workers 2), without a word.
    from benchmarks import loadgen

    (tmp_path / "likes.csv").write_text("user_id,item_id,ts\nu1,i1,1\n")
    with pytest.raises(SystemExit) as exit:
        loadgen.main(["--models", str(tmp_path / "no-models"), "--data", str(tmp_path), "--start-timeout", "5",
                      "--workers", workers, "--metrics", "http://127.0.0.1:1/metrics"])
    assert exit.value.code == 2
    assert "error: --metrics is for a --target server: without --target one is spawned, and its own endpoint is read" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["parity", "--data", "d"], ["scale"], ["run-one", "--engine", "spark", "--data", "d", "--out", "m"]])
def test_bench_spark_refuses_a_negative_partition_count_as_the_trainer_does(command, monkeypatch, capsys):
    # Parsed as any int: -1 reached Spark's settings (training/arguments.py refuses it: bounded(int, 0)).
    from benchmarks import bench_spark

    for name in ("parity", "scale", "run_one"):  # a flag let through must not start an hour's run
        monkeypatch.setattr(bench_spark, name, lambda args: pytest.fail(f"ran with --spark-partitions {args.spark_partitions}"))
    for value, message in (("-1", "must be >= 0, got -1"), ("x", "expected an integer, got 'x'")):
        with pytest.raises(SystemExit) as exit:
            bench_spark.main([*command, f"--spark-partitions={value}"])
        assert exit.value.code == 2
        assert f"error: argument --spark-partitions: {message}\n" in capsys.readouterr().err


@pytest.mark.parametrize("command, flag, value, message", [
    (["scale"], "--users", "1", "must be >= 2, got 1"),
    (["scale"], "--sellers", "0", "must be >= 1, got 0"),
    (["scale"], "--items", "-5", "must be >= 1, got -5"),
    (["scale"], "--seed", "-1", "must be >= 0, got -1"),
    (["scale"], "--timeout", "0", "must be > 0, got 0"),
    (["scale"], "--timeout", "nan", "expected a finite number, got 'nan'"),
    (["parity", "--data", "d"], "--seeds", "0,x", "expected an integer, got 'x'"),
    (["parity", "--data", "d"], "--seeds", "-1", "must be >= 0, got -1"),
])  # fmt: skip
def test_bench_spark_refuses_a_count_seed_or_timeout_out_of_range_at_parsing(command, flag, value, message, monkeypatch, capsys):
    # Parsed as any int or float (--seeds: split after the dataset was loaded): the generator
    # or int() then stopped the run with a traceback, and --timeout 0 timed out every engine.
    from benchmarks import bench_spark

    for name in ("parity", "scale", "run_one"):
        monkeypatch.setattr(bench_spark, name, lambda args: pytest.fail(f"ran with {flag} {value}"))
    with pytest.raises(SystemExit) as exit:
        bench_spark.main([*command, f"{flag}={value}"])
    assert exit.value.code == 2
    assert f"error: argument {flag}: {message}\n" in capsys.readouterr().err


def test_bench_spark_scale_refuses_more_sellers_than_users_as_training_generate_does(monkeypatch, capsys):
    # Each flag was within its own bounds, so the generator's ValueError ended scale in a traceback.
    from benchmarks import bench_spark

    for name in ("parity", "scale", "run_one"):
        monkeypatch.setattr(bench_spark, name, lambda args: pytest.fail(f"ran with --sellers {args.sellers} --users {args.users}"))
    with pytest.raises(SystemExit) as exit:
        bench_spark.main(["scale", "--sellers", "50", "--users", "20"])
    assert exit.value.code == 2
    assert "scale: error: --sellers: must be <= --users (20), got 50\n" in capsys.readouterr().err


@pytest.mark.parametrize("value, message", [("-0.1", "must be >= 0, got -0.1"), ("nan", "expected a finite number, got 'nan'"),
                                            ("x", "expected a number, got 'x'")])
def test_bench_spark_parity_refuses_a_negative_or_nan_tolerance(value, message, monkeypatch, capsys):
    # Any float was taken: with a negative one or nan, no difference is within it, so every run ended
    # in status 1 ("OUTSIDE ±-10%", "OUTSIDE ±nan%") after the whole evaluation.
    from benchmarks import bench_spark

    for name in ("parity", "scale", "run_one"):
        monkeypatch.setattr(bench_spark, name, lambda args: pytest.fail(f"ran with --tolerance {args.tolerance}"))
    with pytest.raises(SystemExit) as exit:
        bench_spark.main(["parity", "--data", "d", f"--tolerance={value}"])
    assert exit.value.code == 2
    assert f"error: argument --tolerance: {message}\n" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["parity", "--data", "d"], ["scale"], ["run-one", "--engine", "spark", "--data", "d", "--out", "m"]])
def test_bench_spark_refuses_a_spark_master_or_driver_memory_the_trainer_refuses(command, monkeypatch, capsys):
    # Taken as any text: Spark refused it only once the run reached the engine (scale: in each child run).
    from benchmarks import bench_spark

    for name in ("parity", "scale", "run_one"):
        monkeypatch.setattr(bench_spark, name, lambda args: pytest.fail(f"ran with {args.spark_master} {args.spark_driver_memory}"))
    for flag, value, message in (
        ("--spark-master", "local[0]", "expected local, local[N], spark://HOST:PORT, yarn or k8s://..., got 'local[0]'"),
        ("--spark-driver-memory", "4", "expected a JVM size such as 512m or 4g, got '4'"),
    ):
        with pytest.raises(SystemExit) as exit:
            bench_spark.main([*command, f"{flag}={value}"])
        assert exit.value.code == 2
        assert f"error: argument {flag}: {message}\n" in capsys.readouterr().err


@pytest.mark.parametrize("value, message", [
    ("implicit,sprak", "unknown engine sprak; choose from implicit, spark, got 'implicit,sprak'"),
    (",", "expected comma-separated engines (implicit, spark), got ','"),
])  # fmt: skip
def test_bench_spark_scale_refuses_an_unknown_engine_naming_the_known_ones(value, message, monkeypatch, capsys):
    # Taken as any text: an unknown engine showed only as its child run failing, after the dataset was generated.
    from benchmarks import bench_spark

    for name in ("parity", "scale", "run_one"):
        monkeypatch.setattr(bench_spark, name, lambda args: pytest.fail(f"ran with --engines {args.engines}"))
    with pytest.raises(SystemExit) as exit:
        bench_spark.main(["scale", f"--engines={value}"])
    assert exit.value.code == 2
    assert f"scale: error: argument --engines: {message}\n" in capsys.readouterr().err


def test_bench_spark_scale_runs_the_engines_given_in_their_order(monkeypatch):
    from benchmarks import bench_spark

    ran = []
    monkeypatch.setattr(bench_spark, "scale", lambda args: ran.append(tuple(args.engines)) or 0)
    assert bench_spark.main(["scale", "--engines", "spark,implicit"]) == 0
    assert bench_spark.main(["scale"]) == 0
    assert ran == [("spark", "implicit"), ("implicit", "spark")]
