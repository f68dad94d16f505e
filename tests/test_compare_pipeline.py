"""benchmarks.compare_pipeline, run briefly on a small world: two workers, interleaved."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

from benchmarks import compare_pipeline
from serving.load import load_into_redis
from stores.redis import connect
from tests.feed_world import build_world
from tests.processes import running_tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("compare-pipeline"), users=200, sellers=20, items=600)


def test_it_reports_each_checkout_and_the_ratio_to_the_first(world, capsys):
    compare_pipeline.main(["--data", str(world.data_dir), "--models", str(world.models_dir), "--rounds", "3", "--batch", "5",
                           "--users", "50", ROOT, f"{ROOT}:neighbours=40,fresh_window_seconds=60"])  # fmt: skip

    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3, lines
    for line in lines[:2]:
        assert re.fullmatch(r".+: median \d+ us, p10 \d+ us per page", line), line
    ratio = re.fullmatch(r".+ / .+: per-round ratio median ([\d.]+), p10 ([\d.]+), p90 ([\d.]+)", lines[2])
    assert ratio, lines[2]
    median, p10, p90 = (float(v) for v in ratio.groups())
    assert 0 < p10 <= median <= p90


def test_with_page_it_times_the_page_a_user_paging_reaches(world, capsys):
    compare_pipeline.main(["--data", str(world.data_dir), "--models", str(world.models_dir), "--rounds", "2", "--batch", "5",
                           "--users", "20", "--page", "3", ROOT, ROOT])  # fmt: skip

    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(re.fullmatch(r".+: median \d+ us, p10 \d+ us per page", line) for line in lines[:2]), lines


@pytest.mark.redis
def test_on_redis_it_adds_redis_cpu_and_the_ratio_of_both(tmp_path, capsys, redis_server):
    world = build_world(tmp_path, users=200, sellers=20, items=600)
    with redis_server.client() as client:
        client.flushall()
    client = connect(redis_server.url, socket_timeout=30.0)
    load_into_redis(client, world.dataset)
    client.close()
    compare_pipeline.main(["--data", str(world.data_dir), "--models", str(world.models_dir), "--rounds", "3", "--batch", "5",
                           "--users", "50", "--store", redis_server.url, "--store", redis_server.url, ROOT, ROOT])  # fmt: skip

    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 6, lines
    for line in lines[3:5]:
        cpu = re.fullmatch(r".+: Redis CPU median (\d+) us per page", line)
        assert cpu and int(cpu.group(1)) > 0, line  # every page reads Redis
    assert re.fullmatch(r".+ / .+: client and Redis CPU per-round ratio median [\d.]+, p10 [\d.]+, p90 [\d.]+", lines[5]), lines[5]


@pytest.mark.redis
def test_a_redis_without_the_dataset_is_refused_not_measured(world, capfd, redis_url):
    # Every page came back empty, and their CPU time was reported as the pipeline's without a word.
    with pytest.raises(SystemExit) as stopped:
        compare_pipeline.main(["--data", str(world.data_dir), "--models", str(world.models_dir), "--rounds", "2", "--batch", "5",
                               "--users", "50", "--store", redis_url, ROOT, ROOT])  # fmt: skip
    assert stopped.value.code == 2
    out, err = capfd.readouterr()
    assert f"{ROOT}: all 50 first pages came back empty: the Redis at {redis_url} looks empty" in err and "python -m serving load" in err
    assert "per page" not in out and "Traceback" not in err


def test_it_refuses_a_store_count_that_matches_no_checkout_count(capsys):
    with pytest.raises(SystemExit):
        compare_pipeline.main(["--data", ROOT, "--models", ROOT, "--store", "redis://a", "--store", "redis://b",
                               "--store", "redis://c", ROOT, ROOT])  # fmt: skip
    assert "give --store once, or once per checkout (2), not 3 times" in capsys.readouterr().err


def test_each_checkout_serves_its_own_models_when_given_one_per_checkout(world, tmp_path, capsys):
    """The same checkout twice with two model directories: two models' serving cost, side by side."""
    import shutil

    broken = tmp_path / "broken-models"
    shutil.copytree(world.models_dir, broken)
    version = next(path for path in broken.iterdir() if path.is_dir())
    for path in version.iterdir():
        if path.suffix == ".npy" or path.suffix == ".npz":
            path.write_bytes(b"not an array")
    copy = tmp_path / "models-copy"
    shutil.copytree(world.models_dir, copy)
    compare_pipeline.main(["--data", str(world.data_dir), "--models", str(world.models_dir), "--models", str(copy),
                           "--rounds", "2", "--batch", "5", "--users", "20", ROOT, ROOT])  # fmt: skip
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"{ROOT} [{world.models_dir}]: median") and lines[1].startswith(f"{ROOT} [{copy}]: median"), lines
    assert lines[2].startswith(f"{ROOT} [{copy}] / {ROOT} [{world.models_dir}]: per-round ratio"), lines

    with pytest.raises(SystemExit):  # only the second worker reads the broken model
        compare_pipeline.main(["--data", str(world.data_dir), "--models", str(world.models_dir), "--models", str(broken),
                               "--rounds", "1", "--batch", "1", "--users", "5", ROOT, f"{ROOT}:neighbours=40"])  # fmt: skip
    err = capsys.readouterr().err
    assert f"{ROOT}:neighbours=40:" in err and f"{ROOT}: " not in err.replace(f"{ROOT}:neighbours=40:", ""), err


def test_it_refuses_a_models_count_that_matches_no_checkout_count(capsys):
    with pytest.raises(SystemExit):
        compare_pipeline.main(["--data", ROOT, "--models", "a", "--models", "b", "--models", "c", ROOT, ROOT])
    assert "give --models once, or once per checkout (2), not 3 times" in capsys.readouterr().err


def test_it_names_a_directory_that_is_not_a_checkout(tmp_path, capsys):
    with pytest.raises(SystemExit):
        compare_pipeline.main(["--data", str(tmp_path), "--models", str(tmp_path), ROOT, str(tmp_path)])
    assert f"{tmp_path}: not a feedrank checkout" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    ({"--data": "/nonexistent"}, "--data /nonexistent: no such directory"),
    ({"--models": "{data}"}, "--models {data}: no published model"),
    ({"--store": "foo://x"}, "--store foo://x: unknown store"),
    ({"--store": "redis://127.0.0.1:1/0"}, "--store redis://127.0.0.1:1/0: no Redis answers there"),
    ({"--page": "0"}, "--page must be at least 1"),
    ({"second": f"{ROOT}:max_per_seller=abc"}, f"{ROOT}:max_per_seller=abc: max_per_seller=abc: expected int"),
    ({"second": f"{ROOT}:max_per_seller"}, "'max_per_seller': expected KEY=VALUE"),
    # A key this checkout lacks may be another's: its own worker refuses it, before loading anything.
    ({"second": f"{ROOT}:bogus=3"}, f"{ROOT}:bogus=3: bogus: no such FeedSettings field"),
])  # fmt: skip
def test_bad_inputs_are_one_line_errors_naming_the_flag(world, change, message, capfd):
    flags = {"--data": str(world.data_dir), "--models": str(world.models_dir), **change}
    second = flags.pop("second", ROOT)
    argv = [arg for flag, value in flags.items() for arg in (flag, value.format(data=world.data_dir))]
    with pytest.raises(SystemExit) as stopped:
        compare_pipeline.main([*argv, "--rounds", "1", "--batch", "1", "--users", "5", ROOT, second])
    assert stopped.value.code == 2
    err = capfd.readouterr().err  # the workers' too
    assert message.format(data=world.data_dir) in err and "Traceback" not in err


def test_relative_data_and_models_paths_are_read_from_the_callers_directory(world, monkeypatch, capsys):
    # Each worker runs in its checkout's directory: "models" there is not the caller's.
    monkeypatch.chdir(world.models_dir.parent)
    compare_pipeline.main(["--data", "data", "--models", "models", "--rounds", "1", "--batch", "2", "--users", "5", ROOT, ROOT])

    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and re.fullmatch(r".+ / .+: per-round ratio median [\d.]+, p10 [\d.]+, p90 [\d.]+", lines[2]), lines


@pytest.mark.parametrize("victim", [0, 1])
def test_a_worker_that_dies_mid_run_is_named_in_one_line(world, victim):
    # The OOM killer, or a checkout whose pipeline raises: the run stops naming that checkout.
    specs = [ROOT, f"{ROOT}:neighbours=40"]
    args = ["--data", str(world.data_dir), "--models", str(world.models_dir), "--rounds", "1000000", "--batch", "5", "--users", "50", *specs]
    with running_tool("benchmarks.compare_pipeline", args) as comparing:
        comparing.wait(lambda: len(comparing.direct_children()) == 2)
        workers = sorted(comparing.children)
        started = read_calls(comparing.process.pid)
        comparing.wait(lambda: read_calls(comparing.process.pid) >= started + 200)  # the workers' replies, turn after turn: into the rounds
        os.kill(workers[victim], signal.SIGKILL)
        out, err = comparing.finish()
    assert comparing.process.returncode == 2 and not out, err
    assert err.strip().splitlines()[-1] == f"python -m benchmarks.compare_pipeline: error: {specs[victim]}: the worker exited with status -9 during the rounds"
    assert "Traceback" not in err


def read_calls(pid: int) -> int:
    """How many read system calls ``pid`` has made (Linux /proc)."""
    with open(f"/proc/{pid}/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("syscr:"))


def test_a_worker_that_dies_in_the_middle_of_its_reply_is_named_in_one_line():
    # Under PYTHONUNBUFFERED a worker's print reaches the pipe in parts: killed between two,
    # it left "12.5 " behind, and the run ended in a ValueError traceback.
    worker = subprocess.Popen([sys.executable, "-c", "import os, sys; sys.stdin.readline(); sys.stdout.write('12.5 '); sys.stdout.flush(); os._exit(9)"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    with pytest.raises(compare_pipeline.WorkerFailed, match=r"^CHECKOUT: the worker exited with status 9 during the rounds$"):
        compare_pipeline.take_turn("CHECKOUT", worker, 5)
