"""The command lines, run as a user would: subprocesses, real files, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from protos.feed.v1 import feed_pb2, feed_pb2_grpc
from tests.conftest import REPO


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=300, check=check)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli")
    data, models = root / "data", root / "models"
    run("-m", "training", "generate", "--out", str(data), "--users", "300", "--sellers", "30", "--items", "900", "--seed", "5")
    result = run("-m", "training", "train", "--data", str(data), "--out", str(models), "--factors", "16", "--iterations", "5")
    assert (models / "CURRENT").exists(), result.stdout + result.stderr
    assert "popularity" in result.stdout and "ndcg@10" in result.stdout  # the evaluation table
    return data, models


def test_generate_is_byte_identical_for_a_seed(tmp_path):
    for name in ("a", "b"):
        run("-m", "training", "generate", "--out", str(tmp_path / name), "--users", "200", "--sellers", "20", "--items", "500", "--seed", "11")
    for file in ("items.csv", "likes.csv", "follows.csv", "friends.csv"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()


def test_train_prints_the_evaluation_table_and_publishes(trained):
    _, models = trained
    version = (models / "CURRENT").read_text().strip()
    assert (models / version / "manifest.json").exists()


def test_train_can_publish_a_candidate_without_making_it_current(trained, tmp_path):
    """To try a new model in an A/B arm it must be published without replacing the served
    one; train always moved CURRENT, so the candidate went to every user first."""
    import shutil

    data, models = trained
    shutil.copytree(models, tmp_path / "models")
    served = (tmp_path / "models" / "CURRENT").read_text()
    result = run("-m", "training", "train", "--data", str(data), "--out", str(tmp_path / "models"), "--factors", "8",
                 "--iterations", "2", "--eval-split", "none", "--no-progress", "--no-current")
    candidate = Path(result.stdout.splitlines()[-1])
    assert (candidate / "manifest.json").exists() and candidate.parent == tmp_path / "models"
    assert (tmp_path / "models" / "CURRENT").read_text() == served
    assert "--no-current" in run("-m", "training", "train", "--help").stdout


def test_a_bad_dataset_row_fails_with_file_line_and_column(tmp_path, trained):
    data, _ = trained
    bad = tmp_path / "bad"
    bad.mkdir()
    for file in ("items.csv", "follows.csv", "friends.csv"):
        (bad / file).write_bytes((data / file).read_bytes())
    lines = (data / "likes.csv").read_text().splitlines()
    user, item, _ = lines[2].split(",")
    lines[2] = f"{user},{item},yesterday"
    (bad / "likes.csv").write_text("\n".join(lines) + "\n")
    result = run("-m", "training", "train", "--data", str(bad), "--out", str(tmp_path / "m"), check=False)
    assert result.returncode != 0
    assert "likes.csv:3: column 'ts'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, "nohup"])  # SIGHUP: the terminal it ran in closed
def test_server_serves_then_exits_cleanly_on_sigterm(trained, tmp_path, signum):
    data, models = trained
    port_file = tmp_path / "port"
    nohup = signum == "nohup"  # started under nohup: a SIGHUP stays ignored, SIGTERM still drains
    server = subprocess.Popen(
        [*(["nohup"] if nohup else []), sys.executable, "-m", "serving", "--data", str(data), "--models", str(models),
         "--port", "0", "--port-file", str(port_file)],
        cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert server.poll() is None and time.monotonic() < deadline, server.stdout.read() if server.poll() is not None else "timeout"
            time.sleep(0.1)
        with grpc.insecure_channel(f"127.0.0.1:{port_file.read_text()}") as channel:
            items = feed_pb2_grpc.FeedServiceStub(channel).GetFeed(feed_pb2.GetFeedRequest(user_id="u00001", limit=5), timeout=10).items
        assert len(items) == 5
        if nohup:
            server.send_signal(signal.SIGHUP)
            time.sleep(1)
            assert server.poll() is None, "a server started under nohup exited on SIGHUP"
            signum = signal.SIGTERM
        server.send_signal(signum)
        assert server.wait(timeout=20) == 0
        assert not port_file.exists()  # removed at a drained exit
    finally:
        if server.poll() is None:
            server.kill()


def test_help_explains_every_command():
    for argv in (["-m", "training", "--help"], ["-m", "training", "generate", "--help"], ["-m", "training", "train", "--help"], ["-m", "serving", "--help"], ["-m", "serving", "feed", "--help"]):
        result = run(*argv)
        assert "usage:" in result.stdout


def refused(*argv: str, status: int = 2) -> str:
    """stderr of a command line that must stop with ``status`` and an error, not a traceback."""
    result = run("-m", "training", *argv, check=False)
    assert result.returncode == status, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


def test_an_unusable_output_path_is_refused_before_any_work(tmp_path):
    taken = tmp_path / "file"
    taken.write_text("not a directory")
    data = str(tmp_path / "no-data")  # would fail later: the path is checked first
    generate = ("generate", "--users", "50", "--sellers", "5", "--items", "50")
    for argv, message in [
        (("train", "--data", data, "--out", str(taken)), f"argument --out: {taken} exists and is not a directory"),
        (("train", "--data", data, "--out", str(taken / "models")), f"argument --out: cannot make {taken / 'models'}"),
        ((*generate, "--out", str(taken)), f"argument --out: {taken} exists and is not a directory"),
        (("tune", "--data", data, "--out", str(tmp_path / "nodir" / "p.json")), f"argument --out: no directory {tmp_path / 'nodir'}"),
        (("tune", "--data", data, "--out", str(tmp_path)), f"argument --out: {tmp_path} is a directory"),
        (("evaluate", "--data", data, "--json", str(tmp_path / "nodir" / "r.json")), "argument --json: no directory"),
        (("evaluate", "--data", data, "--plot", str(tmp_path / "chart.xyz")), "argument --plot: unknown image format 'xyz'"),
        # "$OUT" of an unset variable: train trained and evaluated, then failed to publish (naming no flag);
        # evaluate --json wrote nothing, silently
        (("train", "--data", data, "--out", ""), "argument --out: expected a path, got an empty one"),
        ((*generate, "--out", ""), "argument --out: expected a path, got an empty one"),
        (("tune", "--data", data, "--out", ""), "argument --out: expected a path, got an empty one"),
        (("evaluate", "--data", data, "--json", ""), "argument --json: expected a path, got an empty one"),
        (("lastfm", "--src", data, "--out", ""), "argument --out: expected a path, got an empty one"),
    ]:
        assert f"error: {message}" in refused(*argv), argv
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file"]


@pytest.fixture
def unwritable():
    """Makes a file or directory its writer may not write: read-only, or (for root, whom modes do
    not stop) immutable, undone at teardown."""
    made = []

    def make(path: Path) -> Path:
        if os.geteuid() != 0:
            path.chmod(0o555 if path.is_dir() else 0o444)
        elif subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("running as root, and chattr +i (the only way to refuse root a write) is not available")
        made.append(path)
        return path

    yield make
    for path in made:
        if os.geteuid() != 0:
            path.chmod(0o755 if path.is_dir() else 0o644)
        else:
            subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.fixture
def unwritable_file(tmp_path, unwritable):
    path = tmp_path / "kept.json"
    path.write_text("{}")
    return unwritable(path)


def test_an_output_file_that_cannot_be_overwritten_is_refused_before_any_work(tmp_path, unwritable_file):
    """tune --out and evaluate --json on a read-only file did the whole search or evaluation first,
    then ended in a PermissionError traceback."""
    with pytest.raises(PermissionError):
        open(unwritable_file, "w")
    data = str(tmp_path / "no-data")  # would fail later: the path is checked first
    for argv, flag in [
        (("tune", "--data", data, "--out", str(unwritable_file)), "--out"),
        (("evaluate", "--data", data, "--json", str(unwritable_file)), "--json"),
        (("evaluate", "--data", data, "--plot", str(unwritable_file.with_suffix(".png"))), None),
    ]:
        if flag is None:  # a plot that does not exist yet is fine: the directory is writable
            assert "--plot" not in refused(*argv, status=1), argv
            continue
        assert f"error: argument {flag}: cannot write {unwritable_file}: the file exists and is not writable" in refused(*argv), argv


def test_a_write_the_system_refuses_midway_is_one_line_and_leaves_no_temporary_file(tmp_path, unwritable):
    """A full disk, or a file the system will not let be replaced, is found only when the
    dataset is written: it ended in a PermissionError (OSError) traceback, and left the
    half-done `.likes.csv.tmp` behind."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "likes.csv").write_text("user_id,item_id\n")
    unwritable(out / "likes.csv")
    error = refused("generate", "--users", "50", "--sellers", "5", "--items", "100", "--out", str(out), "--no-progress", status=1)
    assert error.strip().splitlines()[-1].startswith("error: [Errno 1] Operation not permitted:")
    assert str(out / "likes.csv") in error
    assert not [path.name for path in out.iterdir() if path.name.endswith(".tmp")]


def test_a_lastfm_out_that_cannot_be_written_is_refused_before_reading(tmp_path, unwritable):
    """lastfm --out checked only that the path was no file: under a read-only directory it read
    and converted the source, then ended in a PermissionError traceback."""
    (tmp_path / "kept").mkdir()
    kept = unwritable(tmp_path / "kept")
    src = str(tmp_path / "no-source")  # would fail later: the path is checked first
    for out in (kept, kept / "lastfm"):
        assert f"error: argument --out: cannot write {out}: {kept} is not writable" in refused(
            "lastfm", "--src", src, "--out", str(out)), out


def test_a_feed_without_sources_or_with_a_stray_fallback_is_refused(tmp_path):
    argv = ("train", "--data", str(tmp_path), "--out", str(tmp_path / "m"))
    for empty in ("", "none"):
        assert "error: argument --sources: no source: every feed would be empty" in refused(*argv, "--sources", empty)
    stray = refused(*argv, "--sources", "trending,embedding_neighbours", "--fallback-sources", "item_knn", status=1)
    assert "error: --fallback-sources: item_knn is not among --sources (trending, embedding_neighbours)" in stray


def test_the_default_fallback_applies_only_to_the_sources_given():
    from training.__main__ import build_parser
    from training.arguments import settings_from_args

    parser, _ = build_parser()

    def settings(*flags: str):
        return settings_from_args(parser.parse_args(["evaluate", "--data", "d", *flags]))

    assert settings("--sources", "embedding_neighbours").fallback_sources == ("trending",)  # no trending: no fallback
    assert settings("--fallback-sources", "none").fallback_sources == ()
    assert settings("--fallback-sources", "trending,item_knn").fallback_sources == ("trending", "item_knn")


@pytest.fixture
def untimed(tmp_path) -> Path:
    data = tmp_path / "untimed"
    data.mkdir()
    (data / "items.csv").write_text("item_id,seller_id,created_at,stock\n"
                                    + "".join(f"i{k},s{k % 3},{1_700_000_000 + k},1\n" for k in range(20)))
    (data / "likes.csv").write_text("user_id,item_id,ts\n" + "".join(f"u{k % 7},i{k % 20},\n" for k in range(60)))
    return data


def test_a_time_split_of_untimed_likes_is_refused_before_training(untimed, tmp_path):
    for argv, flag in [
        (("train", "--data", str(untimed), "--out", str(tmp_path / "m"), "--eval-split", "time:0.2"), "--eval-split"),
        (("evaluate", "--data", str(untimed), "--split", "time:0.2", "--no-cap-grid"), "--split"),
        (("tune", "--data", str(untimed), "--out", str(tmp_path / "p.json"), "--test-split", "time:0.2"), "--test-split"),
    ]:
        result = run("-m", "training", *argv, check=False)
        assert result.returncode == 1 and result.stdout == "", argv  # nothing trained: no step was timed
        assert (f"error: {flag} time:0.2: a time split needs a ts on every like, and 60 of 60 have none; "
                f"use {flag} user:0.2 or random:0.2") in result.stderr
    assert not (tmp_path / "m").exists() and not (tmp_path / "p.json").exists()


def test_ctrl_c_in_train_prints_one_line_exits_130_and_publishes_nothing(trained, tmp_path):
    data, _ = trained
    models = tmp_path / "models"
    trainer = subprocess.Popen([sys.executable, "-m", "training", "train", "--data", str(data), "--out", str(models)],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in trainer.stdout:
            if line.startswith("interactions"):  # the step timings: the ranker's fit comes next
                break
        trainer.send_signal(signal.SIGINT)
        assert trainer.wait(timeout=60) == 130
        assert trainer.stderr.read() == "interrupted\n"
    finally:
        if trainer.poll() is None:
            trainer.kill()
    assert not models.exists() or not any(models.iterdir())


def test_ctrl_c_anywhere_is_one_line_and_status_130(monkeypatch, capsys, tmp_path):
    import training.generate
    from training.__main__ import main

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(training.generate, "run", interrupted)
    with pytest.raises(SystemExit) as stopped:
        main(["generate", "--out", str(tmp_path / "d"), "--users", "50", "--sellers", "5", "--items", "50"])
    assert stopped.value.code == 130 and capsys.readouterr().err == "interrupted\n"


def _interrupted_while_importing(argv: list[str], after: float) -> tuple[int, list[str]]:
    """``python -m ARGV`` sent SIGINT ``after`` seconds past the installation of its own
    handler (the end of its ``argparse`` import, which follows it), as a Ctrl-C from a
    terminal: its status and stderr without ``-X importtime``'s lines.

    The child starts with SIGINT's default action whatever this process has (a CI job
    started in the background ignores it, and so did its children: a Ctrl-C before the
    handler was lost), and compiles every module from source (PYTHONDONTWRITEBYTECODE),
    where an exception the handler raises can be lost."""
    command = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", *argv], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines: list[str] = []
    for line in command.stderr:
        lines.append(line.rstrip("\n"))
        if line.rstrip().endswith("| argparse"):
            break
    time.sleep(after)
    command.send_signal(signal.SIGINT)
    try:
        _, rest = command.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        command.kill()
        command.communicate()
        pytest.fail(f"the Ctrl-C {after} s in was lost: the command was still running 30 s later")
    said = [line for line in lines + rest.splitlines() if not line.startswith("import time:")]
    return command.returncode, said


@pytest.mark.parametrize("argv", [
    ["training", "generate", "--out", "{tmp}/d", "--users", "100000", "--sellers", "500", "--items", "20000", "--no-progress"],
    ["serving", "demo", "--workdir", "{tmp}/demo"],
])  # fmt: skip
def test_ctrl_c_while_a_command_still_imports_is_one_line_and_status_130(tmp_path, argv):
    # The imports take a second or two: a Ctrl-C there printed a traceback through whichever
    # module was loading (numpy, pyarrow, grpc), and exited 1. Then its sys.exit(130) was lost
    # now and then while Python compiled a module (the command ran in full: a probe lost 1 of
    # 36 Ctrl-Cs 0.07-0.25 s in), or became an ImportError from grpc's Cython module (1 of 36).
    words = [word.format(tmp=tmp_path) for word in argv]
    for after in (0.0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.13, 0.16, 0.2, 0.25, 0.3, 0.4, 0.5, 0.7):
        status, said = _interrupted_while_importing(words, after)
        assert status == 130 and said[-1:] == ["interrupted"], (after, status, said[-12:])
        assert not any("Traceback" in line for line in said), (after, said)


def test_flag_errors_name_the_flag_and_help_does_not_mislead(tmp_path):
    assert "error: argument --seed: must be >= 0, got -1" in refused(
        "generate", "--out", str(tmp_path / "d"), "--users", "50", "--sellers", "5", "--items", "50", "--seed", "-1")
    assert "error: --sellers: must be <= --users (50), got 60" in refused(
        "generate", "--out", str(tmp_path / "d"), "--users", "50", "--sellers", "60", "--items", "50", status=1)
    assert "error: argument --require-sources: unknown sources bogus" in refused(
        "tune", "--data", str(tmp_path), "--out", str(tmp_path / "p.json"), "--require-sources", "bogus")
    assert "--factors 64" not in run("-m", "training", "train", "--help").stdout  # the default is 16
    # An outside review's: 0 built an index that searched with a beam of k; the flag named twice; no --test.
    assert "error: argument --ef-search: must be >= 1, got 0" in refused("train", "--data", str(tmp_path), "--out", str(tmp_path / "m"), "--ef-search", "0")
    assert "error: argument --spark-conf: expected KEY=VALUE, got 'x'" in refused("train", "--data", str(tmp_path), "--out", str(tmp_path / "m"), "--spark-conf", "x")


def test_a_negative_spark_count_is_a_usage_error_naming_the_flag(tmp_path):
    # Parsed as any int, a negative one was refused only once the command ran: "error:
    # --spark-partitions: expected 0 or more", status 1, or without --engine spark as
    # "the --spark-* flags apply to --engine spark only", the wrong reason.
    train = ("train", "--data", str(tmp_path), "--out", str(tmp_path / "m"))
    for flag in ("--spark-partitions", "--spark-knn-max-user-items"):
        for engine in ((), ("--engine", "spark")):
            assert f"error: argument {flag}: must be >= 0, got -1" in refused(*train, *engine, f"{flag}=-1"), (flag, engine)
        assert f"error: argument {flag}: expected an integer, got 'x'" in refused(*train, flag, "x")


def test_serving_repack_refuses_a_batch_below_1_as_a_usage_error_naming_it():
    # Parsed as any int and checked after: "error: --batch must be >= 1", not argparse's
    # "argument --batch: ..." form. Refused before Redis is asked (none listens on port 1).
    for batch, message in (("0", "must be >= 1, got 0"), ("-5", "must be >= 1, got -5"), ("x", "expected an integer, got 'x'")):
        result = run("-m", "serving", "repack", "--redis", "redis://127.0.0.1:1/0", f"--batch={batch}", check=False)
        assert result.returncode == 2 and result.stderr.startswith("usage: python -m serving repack"), result.stderr
        assert result.stderr.endswith(f"python -m serving repack: error: argument --batch: {message}\n"), result.stderr
