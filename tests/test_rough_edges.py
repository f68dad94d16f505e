"""The rough edges a new user hits on the command lines (issue 10): a missing --data
directory, an unknown command, tracebacks on a bad Redis URL, progress bars in log files,
export rows with fields their kind does not use, and forgiving CSV reading."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ranking.ranker import DEFAULT_BLEND
from stores.events import Event, EventKind
from tests.conftest import REPO, failing_listdir


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], cwd=REPO, capture_output=True, text=True, timeout=300, check=False)


def run_bytes(*argv: str) -> subprocess.CompletedProcess:
    """Output as bytes: text mode would turn a progress bar's carriage returns into newlines."""
    return subprocess.run([sys.executable, "-m", *argv], cwd=REPO, capture_output=True, timeout=300, check=False)


def one_error_line(result: subprocess.CompletedProcess, starts: str) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if "WARNING" not in line]  # the server's startup warnings
    assert len(lines) == 1 and lines[0].startswith(starts), result.stderr
    return lines[0]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


TINY = ("--users", "120", "--sellers", "12", "--items", "240", "--seed", "3")
FAST = ("--factors", "8", "--iterations", "2", "--ranker-users", "50", "--eval-users", "50")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """A small dataset and a model trained on it."""
    root = tmp_path_factory.mktemp("rough")
    data, models = root / "data", root / "models"
    assert run("training", "generate", "--out", str(data), *TINY).returncode == 0
    trained = run("training", "train", "--data", str(data), "--out", str(models), *FAST, "--eval-split", "none")
    assert (models / "CURRENT").exists(), trained.stderr
    return data, models


# --------------------------------------------------------------------------- --data


@pytest.mark.parametrize("command", ["train", "evaluate", "tune"])
def test_a_missing_data_directory_is_named_by_training_commands(tmp_path, command):
    missing = tmp_path / "no" / "such"
    out = () if command == "evaluate" else ("--out", str(tmp_path / "out"))
    line = one_error_line(run("training", command, "--data", str(missing), *out), "error: ")
    assert line == f"error: dataset directory {missing}: no such directory"


def test_a_directory_without_likes_csv_says_so(tmp_path):
    (tmp_path / "items.csv").write_text("item_id,seller_id,created_at,stock\n")
    line = one_error_line(run("training", "train", "--data", str(tmp_path), "--out", str(tmp_path / "m")), "error: ")
    assert line == f"error: likes.csv: not found in dataset directory {tmp_path} (the one required file; it holds items.csv)"


def test_data_too_thin_for_a_ranker_still_trains_and_evaluates_with_the_blend(tmp_path):
    """Three likes cannot fit a learned ranker: train publishes the hand-set blend and
    evaluate reports it, each with a warning and the reason, instead of failing."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "items.csv").write_text("item_id,seller_id,created_at,stock\n" + "".join(f"i{k},s0,{1_700_000_000 + k},1\n" for k in range(5)))
    (data / "likes.csv").write_text("user_id,item_id,ts\na,i0,1700000001\nb,i1,1700000002\nc,i0,1700000003\n")
    warning = "warning: ranker: cannot fit (the ranker's validation pools need both positives and negatives); using the hand-set blend"

    trained = run("training", "train", "--data", str(data), "--out", str(tmp_path / "models"), "--no-progress")
    assert trained.returncode == 0, trained.stderr
    assert trained.stderr.splitlines().count(warning) == 2, trained.stderr  # the published ranker's fit and the evaluation's
    version = (tmp_path / "models" / "CURRENT").read_text().strip()
    manifest = json.loads((tmp_path / "models" / version / "manifest.json").read_text())
    assert manifest["ranker"]["fit"] == {"objective": "blend", "reason": "the ranker's validation pools need both positives and negatives"}
    assert manifest["ranker"]["weights"] == DEFAULT_BLEND

    evaluated = run("training", "evaluate", "--data", str(data), "--no-progress")
    assert evaluated.returncode == 0, evaluated.stderr
    assert warning in evaluated.stderr.splitlines()
    assert evaluated.stdout.splitlines()[1].startswith("model ")


def test_serve_names_a_missing_data_directory(tiny, tmp_path):
    _, models = tiny
    missing = tmp_path / "gone"
    result = run("serving", "--data", str(missing), "--models", str(models), "--port", "0")
    assert one_error_line(result, "error: ") == f"error: dataset directory {missing}: no such directory"


def test_serving_load_names_a_missing_data_directory(redis_url, tmp_path):
    missing = tmp_path / "gone"
    result = run("serving", "load", "--data", str(missing), "--redis", redis_url)
    assert one_error_line(result, "error: ") == f"error: dataset directory {missing}: no such directory"


OS_ERRORS_AND_LINES = [
    (PermissionError(13, "Permission denied", "/m/v1/knn.npz"), "error: /m/v1/knn.npz: Permission denied"),
    (IsADirectoryError(21, "Is a directory", "/m/v1/ids.npz"), "error: /m/v1/ids.npz: Is a directory"),
    (OSError(5, "Input/output error", "/state/wal.log"), "error: /state/wal.log: Input/output error"),
    (OSError(5, "Input/output error"), "error: Input/output error"),
    (OSError(18, "Invalid cross-device link", "/out/.a.tmp", None, "/out/a"), "error: /out/.a.tmp -> /out/a: Invalid cross-device link"),
]


@pytest.mark.parametrize(("error", "line"), OS_ERRORS_AND_LINES)
def test_every_os_error_at_start_is_one_line_naming_its_path(tmp_path, monkeypatch, error, line):
    """Only FileNotFoundError (and ValueError) at start were one line: a PermissionError,
    IsADirectoryError or EIO from a file the server reads gave a traceback."""
    import serving.server
    from serving.__main__ import main

    def serve(config, port_file=None):
        raise error

    monkeypatch.setattr(serving.server, "serve", serve)
    with pytest.raises(SystemExit) as exited:
        main(["--models", str(tmp_path), "--data", str(tmp_path), "--port", "0"])
    assert exited.value.code == line


@pytest.mark.parametrize("command", ["load", "repack", "export", "versions", "retire"])
@pytest.mark.parametrize(("error", "line"), OS_ERRORS_AND_LINES)
def test_every_os_error_of_a_tool_is_one_line_naming_its_path(monkeypatch, command, error, line):
    """serve's OSErrors were one line (start_error), the tools' a traceback: a --data or
    --models directory that cannot be listed, an --out that cannot be written..."""
    import importlib

    from serving.__main__ import TOOLS, main

    module_name, function = TOOLS[command].split(":")

    def failing(argv):
        raise error

    monkeypatch.setattr(importlib.import_module(module_name), function, failing)
    with pytest.raises(SystemExit) as exited:
        main([command])
    assert exited.value.code == line



@pytest.mark.parametrize("command", ["versions", "retire"])
@pytest.mark.parametrize("code", [errno.EIO, errno.EACCES])
def test_versions_and_retire_name_a_models_directory_that_cannot_be_listed(tmp_path, monkeypatch, command, code):
    from serving.__main__ import main

    models = tmp_path / "models"
    models.mkdir()
    failing_listdir(monkeypatch, models, code)
    with pytest.raises(SystemExit) as exited:
        main([command, "--models", str(models)])
    assert exited.value.code == f"error: {models}: {os.strerror(code)}"


def test_serving_load_names_a_parquet_part_directory_that_cannot_be_listed(redis_url, tmp_path, monkeypatch):
    from serving.__main__ import main

    data = tmp_path / "data"
    data.mkdir()
    (data / "likes.csv").write_text("user_id,item_id,ts\nu1,i1,1\n")
    (data / "items.parquet").mkdir()  # Spark's part files would be in it
    failing_listdir(monkeypatch, data / "items.parquet")
    with pytest.raises(SystemExit) as exited:
        main(["load", "--data", str(data), "--redis", redis_url, "--no-progress"])
    assert exited.value.code == f"error: {data / 'items.parquet'}: Input/output error"


@pytest.mark.parametrize("command", ["serve", "versions"])
def test_an_arms_file_that_cannot_be_read_is_named_without_errno(tmp_path, capsys, command):
    """serve and versions said "--arms: [Errno 20] Not a directory: '/x/f/arms.toml'"."""
    from serving.__main__ import main

    (tmp_path / "f").write_text("")
    arms = tmp_path / "f" / "arms.toml"  # under a regular file: ENOTDIR, for root too
    (tmp_path / "models").mkdir()
    argv = ["--models", str(tmp_path / "models"), "--arms", str(arms)]
    with pytest.raises(SystemExit) as exited:
        main(argv + ["--data", str(tmp_path), "--port", "0"] if command == "serve" else [command, *argv])
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f": error: --arms: {arms}: Not a directory")


# --------------------------------------------------------------------------- unknown command


def test_an_unknown_serving_command_is_an_error(capsys):
    from serving.__main__ import main

    with pytest.raises(SystemExit) as exited:
        main(["fed", "--user", "u1"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "unknown command 'fed'" in err and "serve, feed, demo, load, repack, export" in err and "did you mean 'feed'?" in err


def test_flags_alone_still_serve(tmp_path):
    result = run("serving", "--models", str(tmp_path / "models"), "--data", str(tmp_path), "--port", "0")
    assert result.returncode != 0 and "unknown command" not in result.stderr
    assert "no published model" in result.stderr  # serve ran, and found no model


# --------------------------------------------------------------------------- Redis errors


@pytest.mark.parametrize(
    "url, says",
    [
        ("http://127.0.0.1:6379/0", "bad URL"),
        ("redis://127.0.0.1:6379/0?no_such_option=1", "bad URL"),
        ("redis://127.0.0.1:6379/0?recent_likes=many", "bad URL"),
        ("redis://user:s3cret@127.0.0.1:{port}/0", "Redis unreachable"),
        ("redis-cluster://127.0.0.1:{port}", "Redis unreachable"),
    ],
)
@pytest.mark.parametrize("command", ["load", "export"])
def test_load_and_export_print_one_line_on_redis_errors(tiny, tmp_path, command, url, says):
    data, _ = tiny
    url = url.format(port=closed_port())
    where = ("--data", str(data)) if command == "load" else ("--out", str(tmp_path / "out"))
    line = one_error_line(run("serving", command, *where, "--redis", url), "error: --redis ")
    assert says in line and "s3cret" not in line


# --------------------------------------------------------------------------- progress bars


def test_progress_bars_is_off_inside_and_restored_after():
    from tqdm import tqdm

    from training.__main__ import progress_bars

    out = io.StringIO()
    with progress_bars(False):
        list(tqdm(range(3), file=out, disable=False))
    assert out.getvalue() == ""
    list(tqdm(range(3), file=out, disable=False))
    assert "\r" in out.getvalue()


def test_no_progress_bars_when_stderr_is_a_file(tiny, tmp_path):
    data, _ = tiny
    trained = run_bytes("training", "train", "--data", str(data), "--out", str(tmp_path / "m"), *FAST)
    assert trained.returncode == 0, trained.stderr
    assert b"\r" not in trained.stderr and b"\r" not in trained.stdout
    assert b"total" in trained.stdout  # the step timings stay: they are lines, not bars


def test_the_server_logs_no_progress_bar(tiny, tmp_path):
    data, models = tiny
    port_file = tmp_path / "port"
    log = tmp_path / "server.log"
    with open(log, "w") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "serving", "--data", str(data), "--models", str(models), "--port", "0",
             "--port-file", str(port_file)], cwd=REPO, stdout=sink, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while not port_file.exists():
                assert server.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
    assert b"\r" not in log.read_bytes()


def test_serving_load_draws_no_bar_into_a_pipe(tiny, redis_url):
    data, _ = tiny
    loaded = run_bytes("serving", "load", "--data", str(data), "--redis", redis_url)
    assert loaded.returncode == 0, loaded.stderr
    assert b"\r" not in loaded.stderr and b"rows/s" in loaded.stdout


def test_serving_repack_names_a_redis_that_is_down_in_one_line():
    repacked = run("serving", "repack", "--redis", "redis://127.0.0.1:1/0")
    assert repacked.returncode != 0 and "Traceback" not in repacked.stderr
    assert "redis://127.0.0.1:1/0" in repacked.stderr, repacked.stderr


def test_every_command_takes_no_progress():
    from serving import export, load
    from training.__main__ import build_parser

    _, subparsers = build_parser()
    for name, sub in subparsers.items():
        assert "--no-progress" in sub.format_help(), name
    help_of = {
        "serve": run("serving", "--help").stdout,
        "load": run("serving", "load", "--help").stdout,
        "export": run("serving", "export", "--help").stdout,
        "repack": run("serving", "repack", "--help").stdout,
    }
    for name, text in help_of.items():
        assert "--no-progress" in text, name
    assert load and export


# --------------------------------------------------------------------------- export


class _Stream:
    """A client whose event stream holds these records (what RedisStore logs)."""

    def __init__(self, events: list[Event]) -> None:
        self.entries = [(f"{n}-0", event.to_record()) for n, event in enumerate(events, start=1)]

    def xrange(self, key, min, max, count):  # redis-py's names
        return [] if min != "-" else self.entries


def test_export_leaves_the_fields_a_kind_does_not_use_empty(tmp_path):
    from serving.export import EVENT_COLUMNS, write_events

    events = [
        Event("e1", EventKind.LIKE, 10.0, user_id="u1", item_id="i1"),
        Event("e2", EventKind.ITEM_UPSERT, 11.0, item_id="i2", seller_id="s1", created_at=5.0, stock=3, price=9.5),
        Event("e3", EventKind.STOCK_UPDATE, 12.0, item_id="i2", stock=0),
        Event("e4", EventKind.SELLER_VACATION, 13.0, seller_id="s1", vacation_until=float("inf")),
        Event("e5", EventKind.SHARE, 14.0, user_id="u1", item_id="i2", friend_id="u2"),
        Event("e6", EventKind.FOLLOW, 15.0, user_id="u1", seller_id="s1"),
    ]
    path = tmp_path / "events.csv"
    assert write_events(_Stream(events), str(path), "0") == (6, "6-0")
    rows = {row["event_id"]: row for row in csv.DictReader(path.open())}
    assert list(rows["e1"]) == list(EVENT_COLUMNS)
    filled = {event_id: {k for k, v in row.items() if v} - {"stream_id", "event_id", "kind", "ts"} for event_id, row in rows.items()}
    assert filled == {
        "e1": {"user_id", "item_id"},
        "e2": {"item_id", "seller_id", "created_at", "stock", "card"},
        "e3": {"item_id", "stock"},
        "e4": {"seller_id", "vacation_until"},
        "e5": {"user_id", "item_id", "friend_id"},
        "e6": {"user_id", "seller_id"},
    }
    assert (rows["e2"]["created_at"], rows["e2"]["stock"], rows["e3"]["stock"]) == ("5.0", "3", "0")
    assert rows["e4"]["vacation_until"] == "inf"
    back = Event.from_record({k: v for k, v in rows["e1"].items() if k != "stream_id"})
    assert back == events[0]


# --------------------------------------------------------------------------- CSV on the command line


def _with_likes(tmp_path: Path, data: Path, extra_lines: list[str], header: str | None = None) -> Path:
    out = tmp_path / "data"
    out.mkdir()
    for file in data.iterdir():
        (out / file.name).write_bytes(file.read_bytes())
    lines = (data / "likes.csv").read_text().splitlines()
    if header is not None:
        lines = [header] + [line + ",x" for line in lines[1:]]
    (out / "likes.csv").write_text("\n".join(lines + extra_lines) + "\n")
    return out


def test_train_reports_every_bad_value_and_warns_about_extra_columns(tiny, tmp_path):
    data, _ = tiny
    bad = _with_likes(tmp_path, data, ["u1,i1,yesterday,x", ",i1,1,x"], header="user_id,item_id,ts,note")
    result = run("training", "train", "--data", str(bad), "--out", str(tmp_path / "m"), *FAST)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    n = len((bad / "likes.csv").read_text().splitlines())
    assert f"likes.csv:{n - 1}: column 'ts': expected a Unix time or ISO-8601 timestamp, got 'yesterday'" in result.stderr
    assert f"likes.csv:{n}: column 'user_id': must not be empty" in result.stderr
    assert "warning: likes.csv: ignored column 'note'" in result.stderr


@pytest.mark.parametrize("command", ["train", "evaluate", "tune"])
def test_drop_unknown_items_flag(tiny, tmp_path, command):
    data, _ = tiny
    user = (data / "likes.csv").read_text().splitlines()[1].split(",")[0]
    bad = _with_likes(tmp_path, data, [f"{user},no-such-item,1"])
    out = {"train": ("--out", str(tmp_path / "m"), *FAST, "--eval-split", "none"),
           "evaluate": (*FAST, "--no-cap-grid", "--no-blend"),
           "tune": ("--out", str(tmp_path / "p.json"), "--trials", "1", "--eval-users", "50")}[command]
    refused = run("training", command, "--data", str(bad), *out)
    assert refused.returncode != 0 and "unknown item 'no-such-item' (not in items.csv)" in refused.stderr
    dropped = run("training", command, "--data", str(bad), *out, "--drop-unknown-items")
    assert dropped.returncode == 0, dropped.stderr
    assert "warning: likes.csv: dropped 1 likes of items not in items.csv" in dropped.stderr


def test_serving_load_drop_unknown_items(tiny, tmp_path, redis_url):
    data, _ = tiny
    user = (data / "likes.csv").read_text().splitlines()[1].split(",")[0]
    bad = _with_likes(tmp_path, data, [f"{user},no-such-item,1"])
    refused = run("serving", "load", "--data", str(bad), "--redis", redis_url)
    assert one_error_line(refused, "error: likes.csv:").endswith("unknown item 'no-such-item' (not in items.csv)")
    loaded = run("serving", "load", "--data", str(bad), "--redis", redis_url, "--drop-unknown-items")
    assert loaded.returncode == 0 and "warning: likes.csv: dropped 1 likes" in loaded.stderr


def test_serve_drop_unknown_items(tiny, tmp_path):
    data, models = tiny
    user = (data / "likes.csv").read_text().splitlines()[1].split(",")[0]
    bad = _with_likes(tmp_path, data, [f"{user},no-such-item,1"])
    refused = run("serving", "--data", str(bad), "--models", str(models), "--port", "0")
    assert "unknown item 'no-such-item'" in one_error_line(refused, "error: likes.csv:")
    port_file = tmp_path / "port"
    server = subprocess.Popen(
        [sys.executable, "-m", "serving", "--data", str(bad), "--models", str(models), "--port", "0",
         "--port-file", str(port_file), "--drop-unknown-items"],
        cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert server.poll() is None and time.monotonic() < deadline, server.stdout.read() if server.poll() is not None else "timeout"
            time.sleep(0.1)
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=30)
    assert "likes.csv: dropped 1 likes of items not in items.csv" in output


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (("serving", "load", "--data", "d", "--redis", "redis://127.0.0.1:1/0", "--recent-likes", "-1"),
         "argument --recent-likes: must be >= 1, got -1"),
        (("serving", "load", "--data", "d", "--redis", "redis://127.0.0.1:1/0", "--batch", "0"), "argument --batch: must be >= 1, got 0"),
        (("serving", "feed", "--user", "u", "--pages", "0"), "argument --pages: must be >= 1, got 0"),
        (("serving", "feed", "--user", "u", "--limit", "101"), "argument --limit: must be <= 100, got 101"),
        # 8e9 s passed, and gRPC's deadline (nanoseconds since 1970 in 64 bits) overflowed: DEADLINE_EXCEEDED at once
        (("serving", "feed", "--user", "u", "--timeout", "8e9"), "argument --timeout: must be <= 1e+09, got 8e9"),
        (("benchmarks.loadgen", "--target", "127.0.0.1:1", "--concurrency", "0"), "argument --concurrency: must be >= 1, got 0"),
        (("benchmarks.loadgen", "--target", "127.0.0.1:1", "--duration", "nan"), "argument --duration: expected a finite number, got 'nan'"),
        (("benchmarks.loadgen", "--target", "127.0.0.1:1", "--timeout", "8e9"), "argument --timeout: must be <= 1e+09, got 8e9"),
        (("benchmarks.compare_servers", "--timeout", "nan"), "argument --timeout: expected a finite number, got 'nan'"),
    ],
)
def test_numeric_flags_out_of_range_are_refused_before_any_work(argv, says):
    """`serving load --recent-likes -1` used to load, and `loadgen --concurrency 0` to run."""
    result = run(*argv)
    assert result.returncode == 2 and result.stderr.splitlines()[-1].endswith(says), result.stderr
