"""benchmarks.compare_servers, run briefly: two servers from this checkout, driven in turns."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from benchmarks import compare_servers
from tests.feed_world import build_world
from tests.processes import alive, cmdline, running_tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("compare-servers"), users=200, sellers=20, items=600)


def test_it_reports_each_server_and_the_ratio_to_the_first(world, capsys):
    # The "store" is this process, where the load generator runs: the plumbing is what is checked.
    status = compare_servers.main(["--data", str(world.data_dir), "--models", str(world.models_dir), "--rounds", "2",
                                   "--burst", "0.3", "--concurrency", "2", "--store-pid", str(os.getpid()),
                                   ROOT, f"{ROOT}:--neighbours 40"])  # fmt: skip

    lines = capsys.readouterr().out.strip().splitlines()
    assert status == 0 and len(lines) == 6, lines
    for line in lines[:2]:
        figures = re.fullmatch(r".+: GetFeed (\d+)/s, empty (\d+)/s, GetFeed / empty per round: median ([\d.]+); "
                               r"server CPU per call: GetFeed ([\d.]+) ms, empty ([\d.]+) ms; store CPU per GetFeed ([\d.]+) ms", line)  # fmt: skip
        assert figures and all(float(f) > 0 for f in figures.groups()), line
        feed_cpu, empty_cpu = (float(f) for f in figures.groups()[3:5])
        assert feed_cpu > empty_cpu, line  # a feed is more work than a health check
    for line, what in zip(lines[2:5], ("GetFeed ", "server CPU per GetFeed ", "server and store CPU per GetFeed ")):
        ratio = re.fullmatch(rf".+ / .+: {what}per-round ratio median ([\d.]+), p10 ([\d.]+), p90 ([\d.]+)", line)
        assert ratio, line
        median, p10, p90 = (float(v) for v in ratio.groups())
        assert 0 < p10 <= median <= p90
    assert lines[5] == "failed calls: 0"


def test_it_names_a_directory_that_is_not_a_checkout(tmp_path, capsys):
    with pytest.raises(SystemExit):
        compare_servers.main(["--data", str(tmp_path), "--models", str(tmp_path), ROOT, str(tmp_path)])
    assert f"{tmp_path}: not a feedrank checkout" in capsys.readouterr().err


def test_a_store_no_redis_answers_is_refused_before_any_server_starts(world, capsys):
    with pytest.raises(SystemExit) as stopped:
        compare_servers.main(["--data", str(world.data_dir), "--models", str(world.models_dir),
                              "--store", "redis://127.0.0.1:1/0", ROOT, ROOT])  # fmt: skip
    assert stopped.value.code == 2
    assert "--store redis://127.0.0.1:1/0: no Redis answers there" in capsys.readouterr().err


def test_a_server_that_exits_fails_the_run_at_once_with_its_log(world, capsys):
    with pytest.raises(SystemExit) as stopped:
        compare_servers.main(["--data", str(world.data_dir), "--models", str(world.models_dir), "--start-timeout", "120",
                              ROOT, f"{ROOT}:--no-such-flag"])  # fmt: skip
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert f"{ROOT}:--no-such-flag: the spawned server ({ROOT}) exited with status 2" in err
    assert "unrecognized arguments: --no-such-flag" in err  # the last lines of its log


def test_relative_data_and_models_paths_are_read_from_the_callers_directory(world, monkeypatch, capsys):
    # Each server runs in its checkout's directory: "models" there is not the caller's.
    monkeypatch.chdir(world.models_dir.parent)
    status = compare_servers.main(["--data", "data", "--models", "models", "--rounds", "1", "--burst", "0.2",
                                   "--concurrency", "2", ROOT, ROOT])  # fmt: skip

    lines = capsys.readouterr().out.strip().splitlines()
    assert status == 0 and len(lines) == 5 and lines[-1] == "failed calls: 0", lines


def test_sigterm_stops_every_spawned_server_and_ends_in_one_line(world, tmp_path):
    # A `kill PID` or a job runner signals compare_servers alone: its servers must not outlive it.
    args = ["--data", str(world.data_dir), "--models", str(world.models_dir), "--rounds", "1000", "--burst", "0.3", ROOT, ROOT]
    with running_tool("benchmarks.compare_servers", args, tmp_path) as comparing:
        comparing.wait(lambda: comparing.wrote("compare-servers-*/1/port"))  # the second is up
        servers = comparing.direct_children()
        assert len(servers) == 2
        comparing.process.send_signal(signal.SIGTERM)
        out, err = comparing.finish()
    assert comparing.process.returncode == 130, err
    assert err.strip() == "python -m benchmarks.compare_servers: interrupted; no report" and not out
    assert not [pid for pid in servers if alive(pid)], "a spawned server outlived compare_servers"


def test_a_server_that_dies_mid_run_stops_the_run_naming_it(world, tmp_path):
    args = ["--data", str(world.data_dir), "--models", str(world.models_dir), "--rounds", "1000", "--burst", "0.3",
            ROOT, f"{ROOT}:--neighbours 40"]  # fmt: skip
    with running_tool("benchmarks.compare_servers", args, tmp_path) as comparing:
        comparing.wait(lambda: comparing.wrote("compare-servers-*/1/port"))
        [second] = [pid for pid in comparing.direct_children() if b"/1/port" in cmdline(pid)]
        time.sleep(1.0)  # into the rounds
        os.kill(second, signal.SIGKILL)
        out, err = comparing.finish()
    assert comparing.process.returncode == 1 and not out
    assert f"compare_servers: {ROOT}:--neighbours 40: the server exited with status -9 during the run; the last lines of its log:" in err
    assert "Traceback" not in err


def test_a_server_that_wants_a_token_is_refused_in_one_line_and_loaded_with_one(world, tmp_path, monkeypatch, capfd):
    from serving.client import TOKEN_VARIABLE

    monkeypatch.delenv(TOKEN_VARIABLE, raising=False)
    tokens = tmp_path / "tokens"
    tokens.write_text("compare-read-token-0123456789 read reader\n")
    tokens.chmod(0o600)
    argv = ["--data", str(world.data_dir), "--models", str(world.models_dir), "--rounds", "1", "--burst", "0.2", "--concurrency", "2",
            f"{ROOT}:--tokens-file {tokens}", ROOT]  # fmt: skip

    with pytest.raises(SystemExit) as stopped:  # every GetFeed of the first server refused: 0/s, then a ZeroDivisionError
        compare_servers.main(argv)
    [line] = capfd.readouterr().err.strip().splitlines()  # nothing after it either (gRPC's lines of connections left open)
    assert stopped.value.code == 1, line
    assert f"compare_servers: {ROOT}:--tokens-file {tokens}: 127.0.0.1:" in line and "refused GetFeed: UNAUTHENTICATED" in line
    assert f"--token (or {TOKEN_VARIABLE})" in line

    status = compare_servers.main([*argv, "--token", "compare-read-token-0123456789"])
    lines = capfd.readouterr().out.strip().splitlines()
    assert status == 0 and lines[-1] == "failed calls: 0", lines


def test_a_round_where_every_call_failed_is_left_out_of_the_ratios_not_divided_by():
    # With --allow-errors a round can answer no call: its GetFeed/s is 0 and its CPU per call
    # NaN. The report divided by them and ended in ZeroDivisionError, losing every other round.
    nan = float("nan")
    base = compare_servers.Bursts(empty_qps=[5000.0, 0.0, 5000.0], feed_qps=[900.0, 0.0, 1000.0],
                                  empty_cpu_ms=[0.2, nan, 0.2], feed_cpu_ms=[1.7, nan, 1.6], feed_store_cpu_ms=[nan] * 3)
    new = compare_servers.Bursts(empty_qps=[5000.0, 5000.0, 0.0], feed_qps=[990.0, 950.0, 0.0],
                                 empty_cpu_ms=[0.2, 0.2, nan], feed_cpu_ms=[1.6, 1.6, nan], feed_store_cpu_ms=[nan] * 3)
    lines = compare_servers.report(["base", "new"], [base, new], failed=40)
    assert "GetFeed / empty per round: median 0.190;" in lines[0]
    # The baseline's empty round is left out; the new server's is a measured 0 GetFeeds a second.
    assert lines[2] == "new / base: GetFeed per-round ratio median 0.550, p10 0.000, p90 1.100 (1 round without answered calls left out)"
    assert "server CPU per GetFeed per-round ratio median 0.941" in lines[3] and "(2 rounds" in lines[3]
    assert lines[-1] == "failed calls: 40"
    nothing = compare_servers.Bursts(empty_qps=[0.0], feed_qps=[0.0], empty_cpu_ms=[nan], feed_cpu_ms=[nan], feed_store_cpu_ms=[nan])
    lines = compare_servers.report(["base", "new"], [nothing, nothing], failed=2)
    assert "median not measured (no empty RPC answered)" in lines[0]
    assert lines[2] == "new / base: GetFeed per-round ratio not measured: no round where both had calls answered"
