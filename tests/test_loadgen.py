"""The load generator, run briefly against a small real server: its report must add up."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from benchmarks import loadgen
from protos.feed.v1 import feed_pb2, feed_pb2_grpc
from tests.conftest import IN_CI, REPO
from tests.feed_world import build_world, running_server
from tests.processes import alive, cmdline, running_tool

PHASES = [("empty", "closed"), ("GetFeed", "closed"), ("GetFeed", "open@50%")]
DURATION = 1.0


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("loadgen"), users=300, sellers=30, items=900)


@pytest.fixture(scope="module")
def target(world):
    with running_server(world) as (server, _):
        yield f"127.0.0.1:{server.port}"


def strict_json(text: str) -> dict:
    """``text`` parsed as JSON proper: NaN and Infinity, which json.dumps writes by default, refused."""
    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def run_loadgen(world, target, tmp_path, *extra: str) -> tuple[int, list[dict]]:
    status, report = run_loadgen_report(world, target, tmp_path, *extra)
    return status, report["phases"]


def run_loadgen_report(world, target, tmp_path, *extra: str) -> tuple[int, dict]:
    report = tmp_path / "report.json"
    argv = ["--target", target, "--data", str(world.data_dir), "--duration", str(DURATION), "--warmup", "0.2",
            "--concurrency", "4", "--json", str(report), *extra]  # fmt: skip
    status = loadgen.main(argv)
    return status, strict_json(report.read_text())


def test_every_phase_runs_and_every_call_is_counted_once(world, target, tmp_path, capsys):
    # The server runs in this process: its CPU per call includes the generator's, but is measured.
    status, report = run_loadgen_report(world, target, tmp_path, "--server-pid", str(os.getpid()))
    phases = report["phases"]

    assert status == 0
    assert [(p["rpc"], p["mode"]) for p in phases] == PHASES
    assert report["client"] == "python"
    assert report["feed_to_empty"] == round(phases[1]["qps"] / phases[0]["qps"], 3)
    assert report["target_feed_to_empty"] == loadgen.TARGET_FEED_TO_EMPTY
    assert report["target_p99_half_load_ms"] == loadgen.TARGET_P99_HALF_LOAD_MS
    assert report["feed_to_empty_met"] == (report["feed_to_empty"] >= loadgen.TARGET_FEED_TO_EMPTY)
    assert report["p99_half_load_met"] == (report["p99_half_load_ms"] <= loadgen.TARGET_P99_HALF_LOAD_MS)
    assert phases[0]["server_p99_ms"] is None, "not measured: null, not NaN"
    assert phases[0]["empty_feeds"] is None and phases[1]["empty_feeds"] == phases[2]["empty_feeds"] == 0
    for phase in phases:
        assert phase["errors"] == 0 and phase["errors_by_code"] == {}
        assert phase["calls"] == phase["successes"] + phase["errors"]
        assert phase["successes"] > 0
        assert phase["elapsed_s"] >= DURATION * 0.9
        assert phase["qps"] == pytest.approx(phase["successes"] / phase["elapsed_s"])
        assert phase["p50_ms"] <= phase["p90_ms"] <= phase["p99_ms"]
        assert 0 < phase["server_cpu_ms"] < 1e3 * DURATION * os.cpu_count()
    assert phases[2]["target_qps"] == pytest.approx(max(phases[1]["qps"] * 0.5, 1.0))
    table = capsys.readouterr().out
    assert "errors" in table.splitlines()[0]
    assert f"target >= {loadgen.TARGET_FEED_TO_EMPTY}" in table
    assert f"target <= {loadgen.TARGET_P99_HALF_LOAD_MS:g} ms" in table
    assert "server CPU per call: empty RPC" in table



def test_the_servers_own_latency_is_read_from_its_histogram_beside_the_clients(world, tmp_path, capsys):
    from serving.metrics import LATENCY_BUCKETS

    port = loadgen.free_port()
    with running_server(world, metrics_port=port) as (server, _):
        status, phases = run_loadgen(world, f"127.0.0.1:{server.port}", tmp_path, "--metrics", f"http://127.0.0.1:{port}/metrics")

    assert status == 0
    empty, *feeds = phases
    assert empty["server_p99_ms"] is None, "the histogram times feed calls only: null for the empty RPC"
    for phase in feeds:
        # Each call's time in the server's handler is part of the client's: the quantile
        # interpolated in the server's bucket lies at most at the bound above the client's,
        # and is reported at most at the client's.
        bound_above_client = min(1e3 * bound for bound in LATENCY_BUCKETS if 1e3 * bound >= phase["p99_ms"])
        assert 0 < phase["server_p50_ms"] <= phase["server_p99_ms"] <= min(bound_above_client, phase["p99_ms"])
        assert phase["server_p50_ms"] <= phase["p50_ms"]
    assert "the server's own p99 at open@50%" in capsys.readouterr().out


def test_histogram_quantiles_interpolate_inside_the_bucket_of_the_calls_between_two_scrapes():
    before = {0.001: 10.0, 0.002: 10.0, float("inf"): 10.0}
    after = {0.001: 60.0, 0.002: 110.0, float("inf"): 110.0}
    assert loadgen.histogram_quantile(0.5, before, after) == pytest.approx(1.0)
    assert loadgen.histogram_quantile(0.99, before, after) == pytest.approx(1.98)
    assert loadgen.histogram_quantile(0.5, {}, {0.001: 0.0, float("inf"): 4.0}) == pytest.approx(1.0), "past the last bound"
    assert loadgen.histogram_quantile(0.5, after, after) != loadgen.histogram_quantile(0.5, after, after), "no calls: NaN"


def test_a_server_quantile_above_the_clients_is_capped_there_and_marked():
    # 100 calls, all in the 0.1-1 s bucket: interpolation puts the p99 at 991 ms whatever the calls took.
    before, after = {0.1: 0.0, 1.0: 0.0, float("inf"): 0.0}, {0.1: 0.0, 1.0: 100.0, float("inf"): 100.0}
    assert loadgen.histogram_quantile(0.99, before, after) == pytest.approx(991.0)
    assert loadgen.capped_quantile(0.99, before, after, client_ms=460.0) == (460.0, True)
    assert loadgen.capped_quantile(0.5, before, after, client_ms=600.0) == (pytest.approx(550.0), False)
    assert loadgen.capped_quantile(0.5, after, after, client_ms=600.0)[1] is False, "no calls: NaN, not capped"

    results = table_phases(empty_s=0.001, feed_s=0.01, half_s=0.46)
    results[2].server_p50_ms, results[2].server_p99_ms, results[2].server_p99_capped = 300.0, 460.0, True
    table = loadgen.format_table(results)
    assert "<=460.00" in table.splitlines()[3]
    assert "the server's own p99 at open@50%: <= 460.0 ms (capped at the client's" in table

def go_client_binary():
    """goload, built; skips (fails under CI=true, where `make test` installs Go) when Go or grpc-go is missing."""
    from benchmarks.go_client import GoClientUnavailable, build

    try:
        return build()
    except GoClientUnavailable as error:
        if IN_CI:
            pytest.fail(f"{error}; required under CI=true", pytrace=False)
        pytest.skip(str(error))


def test_the_compiled_client_runs_every_phase_and_counts_every_call_once(world, target, tmp_path, capsys):
    go_client_binary()
    status, phases = run_loadgen(world, target, tmp_path, "--client", "go", "--channels", "3")

    assert status == 0
    assert [(p["rpc"], p["mode"]) for p in phases] == PHASES
    for phase in phases:
        assert phase["errors"] == 0 and phase["calls"] == phase["successes"] > 0
        assert phase["elapsed_s"] >= DURATION * 0.9
        assert phase["p50_ms"] <= phase["p90_ms"] <= phase["p99_ms"]
    assert phases[0]["send_lag_p99_ms"] is None and phases[1]["send_lag_p99_ms"] is None, "closed loops have no schedule"
    assert 0 <= phases[2]["send_lag_p99_ms"] <= phases[2]["p99_ms"]
    assert phases[2]["target_qps"] == pytest.approx(max(phases[1]["qps"] * 0.5, 1.0))
    # Poisson arrivals at the target rate: the count is within a few standard deviations of rate x duration.
    expected = phases[2]["target_qps"] * DURATION
    assert abs(phases[2]["calls"] - expected) <= 5 * expected**0.5 + 2
    assert "GetFeed / empty RPC throughput" in capsys.readouterr().out


def test_the_compiled_clients_failed_calls_are_counted_by_python_status_code_names(world, target, tmp_path):
    go_client_binary()
    status, phases = run_loadgen(world, target, tmp_path, "--client", "go", "--limit", "1000")  # above MAX_LIMIT

    assert status == 1
    for phase in phases[1:]:
        assert phase["errors_by_code"] == {"INVALID_ARGUMENT": phase["calls"]} and phase["calls"] > 0


def test_the_compiled_client_names_a_server_it_cannot_reach(world, tmp_path, capsys):
    go_client_binary()
    with pytest.raises(SystemExit) as stopped:
        run_loadgen(world, f"127.0.0.1:{loadgen.free_port()}", tmp_path, "--client", "go", "--timeout", "0.5")
    assert stopped.value.code == 1
    assert "goload: cannot connect to 127.0.0.1:" in capsys.readouterr().err


def test_a_missing_go_is_refused_before_the_load_with_what_to_install(world, monkeypatch, capsys):
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(SystemExit):
        loadgen.main(["--target", "127.0.0.1:1", "--data", str(world.data_dir), "--client", "go"])
    assert "make goload" in capsys.readouterr().err


def test_failed_calls_are_counted_by_status_code_and_fail_the_run(world, target, tmp_path, capsys):
    status, phases = run_loadgen(world, target, tmp_path, "--limit", "1000")  # above the server's MAX_LIMIT

    assert status == 1
    empty, closed, open_loop = phases
    assert empty["errors"] == 0 and empty["successes"] > 0
    for phase in (closed, open_loop):
        assert phase["successes"] == 0
        assert phase["errors"] == phase["calls"] > 0
        assert phase["errors_by_code"] == {"INVALID_ARGUMENT": phase["calls"]}
    assert "errors in GetFeed closed: INVALID_ARGUMENT" in capsys.readouterr().out

    assert loadgen.main(["--target", target, "--data", str(world.data_dir), "--duration", "0.3", "--warmup", "0",
                         "--limit", "1000", "--allow-errors"]) == 0  # fmt: skip


def write_reordered_likes(world, directory: Path) -> None:
    """The world's likes.csv as "ts,item_id,user_id": the loader takes its columns in any order."""
    import csv

    with open(world.data_dir / "likes.csv", newline="") as source, open(directory / "likes.csv", "w", newline="") as reordered:
        writer = csv.DictWriter(reordered, ["ts", "item_id", "user_id"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(csv.DictReader(source))


def test_the_users_and_items_are_read_by_column_name_as_the_server_reads_likes(world, tmp_path):
    # loadgen took likes.csv's first two columns as user and item, and with "ts,item_id,user_id" asked for
    # timestamps: cold-start feeds, none empty, measured as the users'.
    import argparse

    write_reordered_likes(world, tmp_path)
    users, items = loadgen.sample_users_and_items(argparse.Namespace(data=str(tmp_path), users=50, seed=0))
    assert len(users) == 50 and set(users) <= set(world.dataset.user_ids())
    assert set(items) == set(world.dataset.likes.dst)


def test_counts_that_do_not_add_up_are_refused():
    tally = loadgen.Tally(started=3, latencies=[0.001])
    tally.errors["UNAVAILABLE"] += 1

    with pytest.raises(RuntimeError, match="3 calls but 1 successes \\+ 1 errors"):
        loadgen.summarise("GetFeed", "closed", 4, 0.0, tally, 1.0)


@pytest.mark.parametrize("kind", ["sync", "aio-inline", "aio-pool"])
def test_each_bare_server_kind_serves_the_load_without_errors(world, tmp_path, kind):
    port_file = tmp_path / "port"
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.server_kind", "--models", str(world.models_dir), "--data", str(world.data_dir),
         "--port-file", str(port_file), "--kind", kind],
        stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text()):
            assert server.poll() is None and time.monotonic() < deadline, server.stderr.read() if server.poll() is not None else "timeout"
            time.sleep(0.1)
        status, phases = run_loadgen(world, f"127.0.0.1:{port_file.read_text()}", tmp_path)
        server.terminate()
        assert server.wait(timeout=30) == 0, server.stderr.read()
        assert not port_file.exists(), "a stopped server's port file names a port nobody serves"
    finally:
        server.kill()
        server.wait()
    assert status == 0 and all(p["errors"] == 0 and p["successes"] > 0 for p in phases)


def test_a_stores_cpu_is_reported_beside_the_servers(world, target, tmp_path, capsys):
    # Both run in this process here: the plumbing is what is checked, not the split.
    status, phases = run_loadgen(world, target, tmp_path, "--server-pid", str(os.getpid()), "--store-pid", str(os.getpid()))

    assert status == 0
    for phase in phases:
        assert phase["store_cpu_ms"] == pytest.approx(phase["server_cpu_ms"], rel=0.2, abs=0.05)
    table = capsys.readouterr().out
    assert "store cpu ms" in table.splitlines()[0]
    assert "server and store CPU per call: empty RPC" in table


def test_a_fixed_rate_replaces_the_share_of_saturation(world, target, tmp_path, capsys):
    status, phases = run_loadgen(world, target, tmp_path, "--rate", "25")

    assert status == 0
    assert phases[2]["mode"] == "open@25/s" and phases[2]["target_qps"] == 25
    assert phases[2]["successes"] == phases[2]["calls"] > 0
    assert all(p["store_cpu_ms"] is None for p in phases)  # null: no --store-pid
    table = capsys.readouterr().out
    assert "GetFeed p99 at open@25/s:" in table and "store cpu ms" not in table


@pytest.mark.parametrize("flag", ["--server-pid", "--store-pid"])
def test_a_pid_that_is_no_process_is_refused_by_name(world, flag, capsys):
    with pytest.raises(SystemExit):
        loadgen.main(["--target", "127.0.0.1:1", "--data", str(world.data_dir), flag, "999999999"])
    assert f"{flag} 999999999: no such process" in capsys.readouterr().err



def test_a_metrics_url_nothing_answers_is_refused_before_the_load(world, capsys):
    url = f"http://127.0.0.1:{loadgen.free_port()}/metrics"
    with pytest.raises(SystemExit):
        loadgen.main(["--target", "127.0.0.1:1", "--data", str(world.data_dir), "--metrics", url])
    assert f"--metrics {url}: cannot read the server's metrics there" in capsys.readouterr().err

def test_likes_arrive_through_ingest_beside_the_feeds_and_get_their_own_row(world, target, tmp_path, capsys):
    status, phases = run_loadgen(world, target, tmp_path, "--ingest-rate", "40", "--users", "50")

    assert status == 0
    assert [(p["rpc"], p["mode"]) for p in phases] == [*PHASES, ("Ingest", "open@40/s")]
    ingest = phases[3]
    assert ingest["errors"] == 0 and ingest["successes"] == ingest["calls"]
    assert ingest["calls"] == pytest.approx(40 * 2 * DURATION, rel=0.5)  # Poisson arrivals over both GetFeed phases
    assert ingest["elapsed_s"] >= 2 * DURATION * 0.9
    assert "Ingest" in capsys.readouterr().out



def test_an_ingest_batch_phase_reports_the_servers_ingest_capacity_in_likes(world, target, tmp_path, capsys):
    status, phases = run_loadgen(world, target, tmp_path, "--ingest-batch", "25", "--server-pid", str(os.getpid()))

    assert status == 0
    assert [(p["rpc"], p["mode"]) for p in phases] == [*PHASES, ("Ingest", "closed")]
    ingest = phases[3]
    assert ingest["errors"] == 0 and ingest["successes"] == ingest["calls"] > 0
    assert ingest["events_per_call"] == 25 and ingest["concurrency"] == 4
    assert all(phase["events_per_call"] == 1 for phase in phases[:3])
    out = capsys.readouterr().out
    assert f"Ingest capacity: {ingest['qps'] * 25:,.0f} likes/s in batches of 25 at concurrency 4 (CPU per like: server " in out


def test_the_ingest_capacity_line_divides_cpu_per_call_by_the_batch():
    ingest = loadgen.summarise("Ingest", "closed", 8, 0.0, loadgen.Tally(started=50, latencies=[0.01] * 50), 1.0, server_cpu_s=0.5)
    ingest.events_per_call = 100

    assert loadgen.ingest_capacity(ingest) == "Ingest capacity: 5,000 likes/s in batches of 100 at concurrency 8 (CPU per like: server 100.0 µs)"

def table_phases(empty_s: float, feed_s: float, half_s: float, empty_calls: int = 1000, feed_calls: int = 170) -> list[loadgen.PhaseResult]:
    """The three phases, each of calls of one latency, over one second."""
    def phase(rpc: str, mode: str, seconds: list[float]) -> loadgen.PhaseResult:
        tally = loadgen.Tally(started=len(seconds), latencies=seconds)
        return loadgen.summarise(rpc, mode, 16, 0.0, tally, 1.0)

    return [phase("empty", "closed", [empty_s] * empty_calls), phase("GetFeed", "closed", [feed_s] * feed_calls),
            phase("GetFeed", "open@50%", [half_s] * 85)]  # fmt: skip


def test_a_verdict_compares_the_figure_it_shows():
    results = table_phases(0.001, 0.01, 0.01504, empty_calls=100_000, feed_calls=19_997)  # a ratio of 0.19997
    table = loadgen.format_table(results)
    assert "0.200 (target >= 0.2: met)" in table
    assert "15.0 ms (target <= 15 ms: met)" in table


def test_a_p99_from_few_calls_says_so():
    few, enough = table_phases(0.001, 0.01, 0.01), table_phases(0.001, 0.01, 0.01)
    enough[2] = loadgen.summarise("GetFeed", "open@50%", 0, 0.0, loadgen.Tally(started=1000, latencies=[0.01] * 1000), 1.0)
    assert "the p99 at open@50% rests on 85 calls: below 1,000 it is set by fewer than ten" in loadgen.format_table(few)
    assert "rests on" not in loadgen.format_table(enough)


def test_a_server_on_redis_is_held_to_the_redis_targets():
    results = table_phases(0.001, 0.01, 0.018)
    on_redis, on_memory = loadgen.format_table(results, on_redis=True), loadgen.format_table(results)
    assert "0.170 (target >= 0.15: met)" in on_redis and "18.0 ms (target <= 20 ms: met)" in on_redis
    assert "0.170 (target >= 0.2: MISSED)" in on_memory and "18.0 ms (target <= 15 ms: MISSED)" in on_memory


@pytest.mark.parametrize("load, p99_s", [(0.25, 0.010), (0.9, 0.030)])
def test_the_p99_target_is_judged_only_at_half_load(load, p99_s):
    """The target is the p99 at half load: at a quarter load a slow server would be "met", at 90 % a fast one "MISSED"."""
    results = table_phases(0.001, 0.01, p99_s)
    results[2].mode = f"open@{load:.0%}"  # as --load shows it
    table, report = loadgen.format_table(results), json.loads(loadgen.report_json(results, "python"))

    assert f"GetFeed p99 at open@{load:.0%}: {p99_s * 1e3:.1f} ms\n" in table and "target <= 15 ms" not in table
    assert report["p99_half_load_met"] is None
    assert "(target <= 15 ms: met)" in loadgen.format_table(table_phases(0.001, 0.01, 0.010))  # at half load it is judged


def test_the_python_client_names_a_server_it_cannot_reach_before_any_phase(world, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        run_loadgen(world, f"127.0.0.1:{loadgen.free_port()}", tmp_path, "--timeout", "0.5")
    assert stopped.value.code == 1
    assert "cannot connect to 127.0.0.1:" in capsys.readouterr().err
    assert not (tmp_path / "report.json").exists()


@pytest.mark.parametrize("argv, message", [
    (["--target", "127.0.0.1:1"], "--data is required"),
    (["--target", "127.0.0.1:1", "--data", "/nonexistent"], "--data /nonexistent: no such directory"),
    (["--target", "127.0.0.1:1", "--data", "{data}", "--json", "/nonexistent/x.json"], "--json: no directory /nonexistent"),
    (["--target", "127.0.0.1:1", "--data", "{data}", "--tls-ca", "/nonexistent/ca.pem"], "--tls-ca /nonexistent/ca.pem: No such file or directory"),
    (["--target", "127.0.0.1:1", "--data", "{data}", "--tls-ca", "{data}/likes.csv"], "likes.csv: no PEM certificate in it"),
    (["--models", "{data}", "--data", "{data}", "--store", "foo://x"], "--store foo://x: unknown store"),
    (["--models", "{data}", "--data", "{data}", "--store", "redis://127.0.0.1:1/0"], "--store redis://127.0.0.1:1/0: no Redis answers"),
])  # fmt: skip
def test_bad_inputs_are_refused_by_flag_before_any_load(world, argv, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        loadgen.main([arg.format(data=world.data_dir) for arg in argv])
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


def test_a_spawned_server_that_exits_fails_the_run_at_once_with_its_log(world, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        loadgen.main(["--models", str(tmp_path / "no-models"), "--data", str(world.data_dir), "--start-timeout", "120"])
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert "the spawned server (.) exited with status" in err and "the last lines of its log:" in err
    assert "no-models" in err  # the server's own words


def spawned_server(loading, started_serving: Callable[[], bool]) -> int:
    """The pid of the server a loadgen run spawned, once ``started_serving()`` says so."""
    loading.wait(lambda: loading.direct_children() and started_serving())
    return min(loading.children)  # the server, started before anything else of the run


@pytest.mark.parametrize("signum, when", [(signal.SIGTERM, "serving"), (signal.SIGINT, "starting")])
def test_a_signal_to_loadgen_alone_stops_its_spawned_server_and_ends_in_one_line(world, tmp_path, signum, when):
    # A `kill PID` or a job runner signals loadgen, not its process group: the server must not outlive it.
    args = ["--models", str(world.models_dir), "--data", str(world.data_dir), "--duration", "30", "--warmup", "0"]
    with running_tool("benchmarks.loadgen", args, tmp_path) as loading:
        server = spawned_server(loading, lambda: when == "starting" or loading.wrote("loadgen-*/port"))
        loading.process.send_signal(signum)
        out, err = loading.finish()
    assert loading.process.returncode == 130, err
    assert err.strip().splitlines()[-1] == "python -m benchmarks.loadgen: interrupted; no report", err
    assert "Traceback" not in err and "rpc " not in out
    assert not alive(server), "the spawned server outlived loadgen"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_asked_for_while_a_child_starts_is_raised_once_the_child_is_held(signum):
    # Raised inside subprocess.Popen after the fork, a Ctrl-C left the spawned server running
    # with no Popen to stop it (the SIGINT-while-starting test above, once under load).
    held = []
    with pytest.raises(KeyboardInterrupt):
        with loadgen.stops_deferred():
            os.kill(os.getpid(), signum)
            time.sleep(0.05)  # the handler has run by now
            held.append("the child's Popen")
    assert held and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_sigterm_while_waiting_for_the_target_is_one_line():
    # A CI run: SIGTERM while loadgen waited for its channels logged "_GatheringFuture
    # exception was never retrieved" and a CancelledError traceback after the run's one line.
    script = (
        "import asyncio, sys, types, grpc\n"
        "from benchmarks.loadgen import interrupt_on_sigterm, wait_until_connected\n"
        "async def connect():\n"
        f"    channels = [grpc.aio.insecure_channel('127.0.0.1:{loadgen.free_port()}') for _ in range(2)]\n"
        "    print('waiting', flush=True)\n"
        "    await wait_until_connected(types.SimpleNamespace(channels=channels), 'nowhere', 60)\n"
        "interrupt_on_sigterm()\n"
        "try:\n"
        "    asyncio.run(connect())\n"
        "except KeyboardInterrupt:\n"
        "    sys.exit('interrupted; no report')\n"
    )
    waiting = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert waiting.stdout.readline() == "waiting\n"
        time.sleep(0.3)  # into the wait
        waiting.send_signal(signal.SIGTERM)
        _, err = waiting.communicate(timeout=30)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert waiting.returncode == 1 and err == "interrupted; no report\n", err


def test_a_signal_to_compare_load_alone_stops_its_server_and_its_load_generator(world, tmp_path):
    # `kill PID` or `timeout` signals the script alone: the server was stopped, but loadgen went on loading the dead
    # port for the rest of its phases (minutes at DURATION=60), then wrote a table of UNAVAILABLE to LABEL.txt.
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHON": sys.executable, "MODELS": str(world.models_dir),
           "DATA": str(world.data_dir), "DURATION": "60"}  # fmt: skip
    with open(tmp_path / "output", "w") as output:  # a file: a pipe would stay open as long as what outlived the script
        script = subprocess.Popen(["bash", str(REPO / "benchmarks" / "compare_load.sh"), str(tmp_path / "out"), f"one:{REPO}"],
                                  cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    started: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while not any(b"benchmarks.loadgen" in cmdline(pid) for pid in started if alive(pid)):
            assert script.poll() is None and time.monotonic() < deadline, (tmp_path / "output").read_text()
            started |= loadgen.process_tree(script.pid, loadgen.process_stats()) - {script.pid}
            time.sleep(0.05)
        time.sleep(1.0)  # into the phases
        started |= loadgen.process_tree(script.pid, loadgen.process_stats()) - {script.pid}
        script.send_signal(signal.SIGTERM)
        script.wait(timeout=60)
        deadline = time.monotonic() + 30  # the server and loadgen stop on their own, in a few seconds
        while [pid for pid in started if alive(pid)] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [cmdline(pid) for pid in started if alive(pid)], "outlived compare_load.sh"
    finally:
        for pid in [script.pid, *started]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_spawned_server_that_dies_during_the_phases_fails_the_run_with_its_log(world, tmp_path):
    args = ["--models", str(world.models_dir), "--data", str(world.data_dir), "--duration", "2", "--warmup", "0"]
    with running_tool("benchmarks.loadgen", args, tmp_path) as loading:
        server = spawned_server(loading, lambda: loading.wrote("loadgen-*/port"))
        time.sleep(0.5)  # into the phases
        os.kill(server, signal.SIGKILL)
        out, err = loading.finish()
    assert loading.process.returncode == 1 and "rpc " not in out, "no table of UNAVAILABLE errors"
    assert "python -m benchmarks.loadgen: the spawned server exited with status -9 during the run; the last lines of its log:" in err


def test_the_compiled_client_spells_every_status_code_as_python_does():
    names = json.loads(subprocess.run([str(go_client_binary()), "-code-names"], capture_output=True, text=True, check=True).stdout)
    assert {int(code): name for code, name in names.items()} == {code.value[0]: code.name for code in grpc.StatusCode}


def test_the_compiled_client_counts_a_server_gone_after_the_first_phase_as_errors(world, tmp_path):
    from benchmarks.go_client import GoClient, write_requests
    from protos.feed.v1 import feed_pb2

    binary = go_client_binary()
    user = world.dataset.user_ids()[0]
    requests = write_requests(tmp_path / "feed.requests", [feed_pb2.GetFeedRequest(user_id=user, limit=5).SerializeToString()])
    with running_server(world) as (server, _):
        client = GoClient(binary, f"127.0.0.1:{server.port}", {"GetFeed": ("/feedrank.feed.v1.FeedService/GetFeed", requests)}, 2, 0.5, 0)
        first = asyncio.run(client.closed("GetFeed", 2, 0.3))
    second = asyncio.run(client.closed("GetFeed", 2, 0.3))

    assert first.started == len(first.latencies) > 0 and not first.errors
    assert second.started > 0 and not second.latencies
    assert set(second.errors) <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"} and sum(second.errors.values()) == second.started


# --- the pre-flight: a server this run cannot measure stops it before any phase ---------------------


@contextlib.contextmanager
def bare_server(feed_servicer: feed_pb2_grpc.FeedServiceServicer | None = None) -> Iterator[str]:
    """A plain gRPC server on a free port: the health service, and ``feed_servicer`` as its FeedService when given."""
    from concurrent import futures

    from grpc_health.v1 import health, health_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    if feed_servicer is not None:
        feed_pb2_grpc.add_FeedServiceServicer_to_server(feed_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=0)


class FeedsOfSomeUsers(feed_pb2_grpc.FeedServiceServicer):
    """A FeedService whose feeds are empty for the users ``empty`` picks, one item long for the others."""

    def __init__(self, empty: Callable[[str], bool]) -> None:
        self.empty = empty

    def GetFeed(self, request, context):  # gRPC's name
        if self.empty(request.user_id):
            return feed_pb2.GetFeedResponse(model_version="v1")
        return feed_pb2.GetFeedResponse(items=[feed_pb2.FeedItem(item_id="i1", score=1.0)], model_version="v1")


def odd_user(user_id: str) -> bool:
    return int(user_id[-1]) % 2 == 1


def preflight_failure(world, target: str, tmp_path, capsys, *extra: str) -> str:
    """loadgen's one line when its pre-flight stops the run (exit 1, no report)."""
    with pytest.raises(SystemExit) as stopped:
        run_loadgen(world, target, tmp_path, *extra)
    assert stopped.value.code == 1
    assert not (tmp_path / "report.json").exists()
    captured = capsys.readouterr()
    assert "rpc " not in captured.out, "no table"
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_a_server_whose_feeds_are_all_empty_is_refused_before_the_load(world, tmp_path, capsys):
    with bare_server(FeedsOfSomeUsers(lambda user: True)) as target:
        line = preflight_failure(world, target, tmp_path, capsys)
    assert f"all {loadgen.PREFLIGHT_USERS} feeds asked for before the load came back empty" in line
    assert "store looks empty or not loaded" in line and "python -m serving load" in line


@pytest.mark.redis
def test_a_server_on_an_empty_redis_is_refused_before_the_load(world, tmp_path, capsys, redis_url):
    with running_server(world, store_url=redis_url) as (server, _):  # nothing loaded: every feed is empty, and OK
        line = preflight_failure(world, f"127.0.0.1:{server.port}", tmp_path, capsys)
    assert "store looks empty or not loaded" in line


def test_a_server_without_the_feed_service_is_refused_before_the_load(world, tmp_path, capsys):
    with bare_server() as target:  # health answers, GetFeed is UNIMPLEMENTED
        line = preflight_failure(world, target, tmp_path, capsys)
    assert f"{target} answered GetFeed with UNIMPLEMENTED: not a feedrank FeedService" in line


@pytest.mark.parametrize("client", ["python", "go"])
def test_empty_feeds_among_the_successes_are_counted_per_phase(world, tmp_path, capsys, client):
    if client == "go":
        go_client_binary()
    with bare_server(FeedsOfSomeUsers(odd_user)) as target:
        status, phases = run_loadgen(world, target, tmp_path, "--client", client)

    assert status == 0
    assert phases[0]["empty_feeds"] is None, "not a feed: null"
    for phase in phases[1:]:
        assert phase["errors"] == 0
        # About half the users are odd: their share of the calls, well inside (0, 1).
        assert 0.2 * phase["successes"] < phase["empty_feeds"] < 0.8 * phase["successes"], phase
    table = capsys.readouterr().out
    assert "empty" in table.splitlines()[0].split()
    assert f"empty feeds in GetFeed closed: {phases[1]['empty_feeds']} of {phases[1]['successes']}" in table


# --- bearer tokens and TLS -------------------------------------------------------------------------------

READ_TOKEN = "loadgen-read-token-0123456789"
WRITE_TOKEN = "loadgen-write-token-012345678"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA and a server certificate for 127.0.0.1 it signed (openssl, as tests/test_auth_tls.py makes them)."""
    from tests.test_auth_tls import make_server_pki

    return make_server_pki(tmp_path_factory.mktemp("loadgen-pki"))


@pytest.fixture(scope="module")
def guarded(world, pki) -> Iterator[str]:
    """A server that wants a token with the 'read' scope for feeds and speaks only TLS."""
    from serving import auth

    tokens = tuple(auth.parse_tokens(f"{READ_TOKEN} read reader\n{WRITE_TOKEN} write writer\n", "loadgen test"))
    with running_server(world, tokens=tokens, tls_cert=str(pki / "server.pem"), tls_key=str(pki / "server.key")) as (server, _):
        yield f"127.0.0.1:{server.port}"


@pytest.mark.parametrize("client", ["python", "go"])
def test_a_server_with_tokens_and_tls_is_loaded_with_the_token_over_tls(world, guarded, pki, tmp_path, monkeypatch, client):
    from serving.client import TOKEN_VARIABLE

    if client == "go":
        go_client_binary()
    monkeypatch.delenv(TOKEN_VARIABLE, raising=False)
    status, phases = run_loadgen(world, guarded, tmp_path, "--client", client, "--tls-ca", str(pki / "server-ca.pem"), "--token", READ_TOKEN)
    assert status == 0
    assert [(p["rpc"], p["mode"]) for p in phases] == PHASES
    for phase in phases:
        assert phase["errors"] == 0 and phase["successes"] == phase["calls"] > 0, phase
    assert all(p["empty_feeds"] == 0 for p in phases[1:])

    monkeypatch.setenv(TOKEN_VARIABLE, READ_TOKEN)  # the variable `python -m serving feed` reads, out of the process list
    status, phases = run_loadgen(world, guarded, tmp_path, "--client", client, "--tls-ca", str(pki / "server-ca.pem"))
    assert status == 0 and all(p["errors"] == 0 and p["successes"] > 0 for p in phases)


def test_a_server_with_tokens_refuses_the_run_in_one_line_without_a_good_token(world, guarded, pki, tmp_path, monkeypatch, capsys):
    from serving.client import TOKEN_VARIABLE

    monkeypatch.delenv(TOKEN_VARIABLE, raising=False)
    line = preflight_failure(world, guarded, tmp_path, capsys, "--tls-ca", str(pki / "server-ca.pem"))
    assert f"{guarded} refused GetFeed: UNAUTHENTICATED" in line and f"--token (or {TOKEN_VARIABLE})" in line
    line = preflight_failure(world, guarded, tmp_path, capsys, "--tls-ca", str(pki / "server-ca.pem"), "--token", WRITE_TOKEN)
    assert f"{guarded} refused GetFeed: PERMISSION_DENIED" in line and "'read' scope" in line
    assert WRITE_TOKEN not in line


def test_a_tls_server_is_not_reached_in_plaintext(world, guarded, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        run_loadgen(world, guarded, tmp_path, "--token", READ_TOKEN, "--timeout", "0.5")
    assert stopped.value.code == 1
    assert f"cannot connect to {guarded}" in capsys.readouterr().err


# --- the open loop's arrivals -------------------------------------------------------------------------


def arrivals(seed: int, rate: float, duration: float) -> int:
    """How many Poisson arrivals at ``rate`` fall within ``duration`` seconds, drawn as open_loop draws them."""
    rng, at, count = random.Random(seed), 0.0, 0
    while at < duration:
        count += 1
        at += rng.expovariate(rate)
    return count


def test_a_busy_client_falling_behind_the_open_loops_schedule_is_reported(world, target):
    # The generator's own delays count in the open loop's latencies (from the scheduled time, rightly), so the
    # report must say how large they were: a client starved of CPU would otherwise pass for a slow server.
    async def open_loop_beside_a_hog() -> loadgen.PhaseResult:
        calls = loadgen.server_calls(target, world.dataset.user_ids(), 2, 5, random.Random(0))
        loop = asyncio.get_running_loop()

        def hog() -> None:  # the client's thread busy 30 ms in every 80
            time.sleep(0.03)
            loop.call_later(0.05, hog)

        loop.call_soon(hog)
        try:
            tally, elapsed = await loadgen.open_loop(calls.get_feed, 100.0, DURATION, 5.0, seed=0)
        finally:
            await calls.close()
        return loadgen.summarise("GetFeed", "open@100/s", 0, 100.0, tally, elapsed)

    result = asyncio.run(open_loop_beside_a_hog())
    assert result.errors == 0 and result.calls > 50
    assert 20 <= result.send_lag_p99_ms <= result.p99_ms
    empty = loadgen.PhaseResult("empty", "closed", 4, 0, 1.0, 10, 10, 0, {}, 10.0, 1.0, 1.0, 1.0)
    table = loadgen.format_table([empty, empty, result])
    assert f"the generator's own lag at open@100/s: p99 {result.send_lag_p99_ms:.1f} ms" in table


def test_the_open_loops_arrivals_follow_the_seed(world, target, tmp_path):
    # The count of arrivals is the draws' alone (each call is scheduled from the start, not
    # from the last call's end), so it tells which seed drew them.
    rate, seeds = 200.0, (1, 2)
    assert len({arrivals(seed, rate, DURATION) for seed in (*seeds, 7)}) == 3, "seeds the test can tell apart"
    for seed in seeds:
        status, phases = run_loadgen(world, target, tmp_path, "--rate", str(rate), "--seed", str(seed))
        assert status == 0
        assert phases[2]["calls"] == arrivals(seed, rate, DURATION)


# --- the independent Locust client ---------------------------------------------------------------------


def locust_command() -> list[str]:
    """Locust, which lives in its own environment (benchmarks/locustfile.py): $FEEDRANK_LOCUST
    (its locust executable), or this interpreter's locust; skips without either."""
    import importlib.util

    if os.environ.get("FEEDRANK_LOCUST"):
        return [os.environ["FEEDRANK_LOCUST"]]
    if importlib.util.find_spec("locust") is not None:
        return [sys.executable, "-m", "locust"]
    if os.environ.get("CI") == "true":  # `make test` installs it: missing there is a failure
        pytest.fail("locust is not installed: `make locust`, and FEEDRANK_LOCUST=.venv-locust/bin/locust")
    pytest.skip("locust is not installed here; set FEEDRANK_LOCUST to the locust of its own environment (`make locust`)")


@pytest.mark.parametrize("flags, message", [
    (["--data", "{data}"], "--host is required"),
    (["--host", "127.0.0.1:1"], "--data is required"),
    (["--host", "127.0.0.1:1", "--data", "/nonexistent"], "--data /nonexistent: no such directory"),
])  # fmt: skip
def test_the_locustfile_names_a_missing_host_or_dataset_before_any_user_starts(world, flags, message):
    repo = Path(__file__).resolve().parent.parent
    argv = [*locust_command(), "-f", str(repo / "benchmarks" / "locustfile.py"), "--headless", "--users", "1", "--run-time", "1s"]
    done = subprocess.run([*argv, *(flag.format(data=world.data_dir) for flag in flags)], check=False, capture_output=True,
                          text=True, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)}, timeout=60)  # fmt: skip
    assert done.returncode == 1
    assert f"benchmarks/locustfile.py: {message}" in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_the_locustfile_reads_the_users_by_column_name(world, tmp_path):
    # It took likes.csv's first column as the user, as loadgen did: timestamps with "ts,item_id,user_id".
    command = locust_command()
    python = sys.executable if command[0] == sys.executable else str(Path(command[0]).with_name("python"))
    write_reordered_likes(world, tmp_path)
    done = subprocess.run([python, "-c", "import json, sys; from benchmarks.locustfile import _user_ids; print(json.dumps(_user_ids(sys.argv[1])))",
                           str(tmp_path)], check=False, capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    users = json.loads(done.stdout)
    assert users and set(users) <= set(world.dataset.user_ids()), users[:5]


@pytest.fixture(scope="module")
def token_guarded(world) -> Iterator[str]:
    """A plaintext server that wants a token with the 'read' scope for feeds."""
    from serving import auth

    tokens = tuple(auth.parse_tokens(f"{READ_TOKEN} read reader\n", "locust test"))
    with running_server(world, tokens=tokens) as (server, _):
        yield f"127.0.0.1:{server.port}"


@pytest.mark.parametrize("token", [READ_TOKEN, "not-a-token-0123456789"])
def test_the_locustfile_loads_a_token_guarded_server_with_its_token(world, token_guarded, tmp_path, token):
    # It had no way to send one: against a server with --tokens-file every call failed UNAUTHENTICATED.
    argv = [*locust_command(), "-f", str(REPO / "benchmarks" / "locustfile.py"), "--headless", "--users", "2", "--spawn-rate", "2",
            "--run-time", "5s", "--tags", "feed", "--only-summary", "--host", token_guarded, "--data", str(world.data_dir),
            "--token", token, "--csv", str(tmp_path / "run")]  # fmt: skip
    done = subprocess.run(argv, check=False, capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    # A clean-clone CI on a loaded machine saw no GetFeed at all in a run of 2 s.
    with open(tmp_path / "run_stats.csv", newline="") as handle:
        (getfeed,) = [row for row in csv.DictReader(handle) if row["Name"] == "GetFeed"] or [None]
    assert getfeed is not None, f"no GetFeed in the run's stats: {done.stderr}"
    requests, failures = int(getfeed["Request Count"]), int(getfeed["Failure Count"])
    assert requests > 0, done.stderr
    if token == READ_TOKEN:
        assert (done.returncode, failures) == (0, 0), done.stderr
    else:
        assert (done.returncode, failures) == (1, requests), done.stderr
