"""Config from flags, FEEDRANK_* variables and a TOML file; JSON logs and access lines; model-reload backoff."""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from grpc._cython import cygrpc

from protos.feed.v1 import feed_pb2, feed_pb2_grpc
from serving import auth, logs
from serving import server as server_module
from serving import service_setup
from serving.config import FLAGS, ConfigError, HelpFormatter, ServerConfig, add_server_arguments, config_from_args, is_service_link, resolve_config, resolve_settings
from serving.credentials import TokensFileSource
from serving.metrics import FeedMetrics
from serving.store_url import Durability
from tests.conftest import REPO, json_lines
from tests.feed_world import TOKEN_SECRET, build_world

TOKEN = "log-test-token-0123456789abcdef"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    add_server_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("logs-world"), users=120, sellers=12, items=300)


# --- config ---------------------------------------------------------------------------------------


def test_feed_threads_default_to_the_measured_best_for_the_store_and_a_set_value_wins():
    from serving.config import MEMORY_FEED_THREADS, REDIS_FEED_THREADS

    models = ("--models", "m", "--data", "d")
    assert resolve_config(parse(*models), {}).feed_threads == MEMORY_FEED_THREADS
    assert resolve_config(parse("--models", "m", "--store", "redis://127.0.0.1:1/0"), {}).feed_threads == REDIS_FEED_THREADS
    assert resolve_config(parse(*models, "--threads", "5"), {}).feed_threads == 5


def test_precedence_is_flag_then_environment_then_file_then_default(tmp_path):
    config_file = tmp_path / "feedrank.toml"
    config_file.write_text('models = "m"\nport = 7001\nthreads = 3\nmax_per_seller = 4\nfatigue_sink = 1\nlog_format = "json"\n')
    env = {"FEEDRANK_CONFIG": str(config_file), "FEEDRANK_PORT": "7002", "FEEDRANK_THREADS": "5", "FEEDRANK_HOST": ""}
    config = resolve_config(parse("--port", "7003"), env)
    assert config.port == 7003  # flag over environment and file
    assert config.threads == 5  # environment over file
    assert config.feed.max_per_seller == 4 and config.feed.fatigue_sink == 1.0 and config.log_format == "json"  # file
    assert config.host == "127.0.0.1" and config.workers == 1 and config.feed.max_per_category == 0  # defaults (empty = unset)
    assert config.models_dir == str(tmp_path / "m") and config.token_secret is None  # beside the file
    # --config on the command line wins over FEEDRANK_CONFIG.
    other = tmp_path / "other.toml"
    other.write_text("models = 'n'\n")
    assert resolve_config(parse("--config", str(other)), env).models_dir == str(tmp_path / "n")


def test_every_flag_can_come_from_the_environment(tmp_path):
    values = {"int": "3", "float": "2.5", "str": None, "bool": "yes"}
    env = {}
    for flag in FLAGS:
        if flag.choices:
            env[flag.env] = flag.choices[-1]
        elif flag.kind is str:
            env[flag.env] = {"store": "memory", "sources": "trending", "fallback_sources": "none"}.get(flag.dest, str(tmp_path / flag.dest))
        else:
            env[flag.env] = values[flag.kind.__name__]
    del env["FEEDRANK_TLS_CLIENT_CA"], env["FEEDRANK_TLS_KEY"], env["FEEDRANK_TLS_CERT"], env["FEEDRANK_TOKENS_FILE"]
    env["FEEDRANK_MAX_MESSAGE_BYTES"] = "5000"
    env["FEEDRANK_WORKERS"] = "1"  # more need a shared store, and --state-dir is the memory store's
    env["FEEDRANK_FEED_PROCESSES"] = "0"
    env["FEEDRANK_METRICS_PORT"], env["FEEDRANK_HTTP_PORT"] = "9100", "9200"  # each port its own
    args = parse()
    config = resolve_config(args, env)
    for flag in FLAGS:
        if flag.env in env:
            expected = flag.from_text(env[flag.env])
            assert getattr(args, flag.dest) == expected, flag.env  # written back into the namespace
    assert config.port == 3 and config.feed.fresh_window_seconds == 2.5 and config.feed.sources == ("trending",)
    assert config.feed.fallback_sources == ()
    assert config.log_format == "json" and config.log_level == "error"
    assert config.durability == Durability(str(tmp_path / "state_dir"), "off", 2.5)
    assert config.port_file == str(tmp_path / "port_file") and config.arms_file == str(tmp_path / "arms")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FEEDRANK_PORT": "abc"}, "FEEDRANK_PORT: expected an integer, got 'abc'"),
        ({"FEEDRANK_PORT": "70000"}, "FEEDRANK_PORT: must be <= 65535, got 70000"),
        ({"FEEDRANK_THREADS": "-1"}, "FEEDRANK_THREADS: must be >= 0, got -1"),
        ({"FEEDRANK_FATIGUE_SINK": "lots"}, "FEEDRANK_FATIGUE_SINK: expected a number, got 'lots'"),
        ({"FEEDRANK_LOG_FORMAT": "xml"}, "FEEDRANK_LOG_FORMAT: expected one of text, json, got 'xml'"),
        ({"FEEDRANK_FSYNC": "always"}, "FEEDRANK_FSYNC: expected one of batch, off, got 'always'"),
        ({"FEEDRANK_PROGRESS": "maybe"}, "FEEDRANK_PROGRESS: expected one of 1, true, yes, on, 0, false, no, off, got 'maybe'"),
        ({"FEEDRANK_SOURCES": "trending,bogus"}, "FEEDRANK_SOURCES: unknown sources bogus; choose from"),
        ({"FEEDRANK_FALLBACK_SOURCES": "trendy"}, "FEEDRANK_FALLBACK_SOURCES: unknown sources trendy; choose from"),
        ({"FEEDRANK_TLS_KEY": "k.pem"}, "FEEDRANK_TLS_KEY needs --tls-cert"),
        ({"FEEDRANK_STATE_DIR": "s", "FEEDRANK_STORE": "redis://x:1/0"}, "FEEDRANK_STATE_DIR is for the memory store"),
        ({"FEEDRANK_FEED_PROCESSES": "2", "FEEDRANK_WORKERS": "2", "FEEDRANK_STORE": "redis://x:1/0"}, "FEEDRANK_FEED_PROCESSES and FEEDRANK_WORKERS: choose one"),
        # Refused only once serve() ran (status 1), and as "--workers" whatever had set it.
        ({"FEEDRANK_WORKERS": "2"}, "FEEDRANK_WORKERS > 1 needs a shared store (--store redis://...)"),
        ({"FEEDRANK_TOKENS": "short read"}, "FEEDRANK_TOKENS entry 1: a token must be at least 16 printable ASCII characters"),
        ({"FEEDRANK_STORE": "redis://x:1/abc"}, "FEEDRANK_STORE redis://x:1/abc: the DB must be a non-negative integer, got 'abc'"),
        ({"FEEDRANK_TOKEN_SECRET": "short"}, "FEEDRANK_TOKEN_SECRET: page token secrets must be at least 16 bytes"),
        ({"FEEDRANK_TOKEN_SECRET_PREVIOUS": "0123456789abcdef, short"}, "FEEDRANK_TOKEN_SECRET_PREVIOUS: page token secrets must be at least 16 bytes"),
        # Each of these failed later, in a connection (a feed process's, or a traceback), or unnamed.
        ({"FEEDRANK_STORE": "redis://x:y/0"}, "FEEDRANK_STORE redis://x:y/0: the port must be a whole number from 0 to 65535, got 'y'"),
        ({"FEEDRANK_STORE": "redis://x:1/0?socket_timeout=abc"}, "FEEDRANK_STORE redis://x:1/0?socket_timeout=abc: store URL option socket_timeout='abc'"),
        ({"FEEDRANK_STORE": "redis://u:pw@x:1/0?colour=1"}, "FEEDRANK_STORE redis://u:***@x:1/0?colour=1: unknown store URL option 'colour'; ours: recent_likes"),
        # A "/" in the password: the URL and the DB it was read as ('cdS3cr3t@x:1/0') showed the password.
        ({"FEEDRANK_STORE": "redis://:ab/cdS3cr3t@x:1/0"},
         "FEEDRANK_STORE redis://:***@x:1/0: an '@' after the host: a '/', '?' or '#' in the password must be percent-encoded (%2F, %3F, %23)"),
        # A "?" or "#" in the password: the port it was read as ('ab') showed its start (found by the security review).
        ({"FEEDRANK_STORE": "redis://:ab?cdS3cr3t@x:1/0"},
         "FEEDRANK_STORE redis://:***@x:1/0: an '@' after the host: a '/', '?' or '#' in the password must be percent-encoded (%2F, %3F, %23)"),
        ({"FEEDRANK_STORE": "redis://u:ab#cdS3cr3t@x:1/0"},
         "FEEDRANK_STORE redis://u:***@x:1/0: an '@' after the host: a '/', '?' or '#' in the password must be percent-encoded (%2F, %3F, %23)"),
        # Two settings on one port failed their second bind after the load, "Address already in use".
        ({"FEEDRANK_PORT": "9000", "FEEDRANK_METRICS_PORT": "9000"}, "FEEDRANK_PORT 9000 and FEEDRANK_METRICS_PORT 9000: the same port twice"),
        ({"FEEDRANK_METRICS_PORT": "9100", "FEEDRANK_HTTP_PORT": "9101", "FEEDRANK_WORKERS": "2", "FEEDRANK_STORE": "redis://x:1/0"},
         "FEEDRANK_METRICS_PORT 9100 (to 9101 with --workers) and FEEDRANK_HTTP_PORT 9101 (to 9102 with --workers): the same port twice"),
        # Worker 1 of 2 failed to bind port 65536 after the load, with a traceback, and the server exited.
        ({"FEEDRANK_METRICS_PORT": "65535", "FEEDRANK_WORKERS": "2", "FEEDRANK_STORE": "redis://x:1/0"},
         "FEEDRANK_METRICS_PORT 65535 (to 65536 with --workers): past 65535, the last port"),
        ({"FEEDRANK_HTTP_PORT": "65534", "FEEDRANK_WORKERS": "3", "FEEDRANK_STORE": "redis://x:1/0"},
         "FEEDRANK_HTTP_PORT 65534 (to 65536 with --workers): past 65535, the last port"),
    ],
)
def test_a_bad_environment_value_names_the_variable(env, message):
    with pytest.raises(ConfigError) as error:
        resolve_config(parse("--models", "m"), env)
    assert str(error.value).startswith(message)


def test_fallback_sources_default_to_trending_and_none_turns_the_fallback_off():
    assert resolve_config(parse("--models", "m"), {}).feed.fallback_sources == ("trending",)
    assert resolve_config(parse("--models", "m", "--fallback-sources", "none"), {}).feed.fallback_sources == ()
    both = resolve_config(parse("--models", "m"), {"FEEDRANK_FALLBACK_SOURCES": "trending,item_knn"})
    assert both.feed.fallback_sources == ("trending", "item_knn")
    # The default falls back on trending only when it is a source; a fallback given outside the sources would never run.
    assert resolve_config(parse("--models", "m", "--sources", "followed_sellers"), {}).feed.sources == ("followed_sellers",)
    # Given, even as the default's value, a fallback outside the sources is refused (it was taken in silence).
    with pytest.raises(ConfigError, match="--fallback-sources: trending is not among the sources"):
        resolve_config(parse("--models", "m", "--sources", "item_knn", "--fallback-sources", "trending"), {})
    with pytest.raises(ConfigError, match="FEEDRANK_FALLBACK_SOURCES: trending is not among the sources"):
        resolve_config(parse("--models", "m", "--sources", "item_knn"), {"FEEDRANK_FALLBACK_SOURCES": "trending"})
    with pytest.raises(ConfigError, match="--fallback-sources: item_knn is not among the sources"):
        resolve_config(parse("--models", "m", "--sources", "trending", "--fallback-sources", "item_knn"), {})


def test_switches_come_from_flags_environment_and_file_and_can_be_turned_off(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('models = "m"\nprogress = false\ndrop_unknown_items = true\n')
    from_file = resolve_config(parse("--config", str(path)), {})
    assert (from_file.progress, from_file.drop_unknown_items) == (False, True)
    env = {"FEEDRANK_PROGRESS": "on", "FEEDRANK_DROP_UNKNOWN_ITEMS": "0"}
    from_env = resolve_config(parse("--config", str(path)), env)
    assert (from_env.progress, from_env.drop_unknown_items) == (True, False)
    flagged = resolve_config(parse("--config", str(path), "--no-progress", "--drop-unknown-items"), env)
    assert (flagged.progress, flagged.drop_unknown_items) == (False, True)
    defaults = resolve_config(parse("--models", "m"), {})
    assert (defaults.progress, defaults.drop_unknown_items) == (True, False)
    path.write_text('models = "m"\nprogress = 1\n')
    with pytest.raises(ConfigError, match="progress.*expected true or false"):
        resolve_config(parse("--config", str(path)), {})


def assert_config_file_refusals(path, cases: list[tuple[str, str]]) -> None:
    """A server started with a config file holding each case's text is refused with a message starting with its message."""
    for text, message in cases:
        path.write_text(text)
        with pytest.raises(ConfigError) as error:
            resolve_config(parse("--config", str(path)), {})
        assert str(error.value).startswith(message), str(error.value)


def test_a_bad_config_file_names_the_file_the_key_and_the_line(tmp_path):
    path = tmp_path / "c.toml"
    cases = [
        ('models = "m"\n\nport = "50051"\n', f"{path}:3: key 'port': expected an integer, got '50051'"),
        ('models = "m"\nmax_per_selller = 3\n', f"{path}:2: unknown key 'max_per_selller' (did you mean 'max_per_seller'?)"),
        ('models = "m"\nlog_level = "loud"\n', f"{path}:2: key 'log_level': expected one of debug, info, warning, error, got 'loud'"),
        # The place was "(at line 1, column 8)" after the message, not FILE:LINE:COLUMN where editors jump to.
        ("port = \n", f"{path}:1:8: not valid TOML: Invalid value"),
        ('models = "m"\nname = "a', f"{path}: not valid TOML: Unterminated string (at end of document)"),
        ("reload_seconds = -1\n", f"{path}:1: key 'reload_seconds': must be >= 0, got -1.0"),
        # A file laid out in sections: the table's line was missing ("c.toml: unknown key 'server'").
        ('models = "m"\n\n[server]\nport = 1\n', f"{path}:3: unknown key 'server'; keys are the flag names"),
        ('models = "m"\nlimits.port = 1\n', f"{path}:2: unknown key 'limits'"),
    ]
    assert_config_file_refusals(path, cases)
    with pytest.raises(ConfigError, match=r"config file .*missing\.toml: No such file"):
        resolve_config(parse("--config", str(tmp_path / "missing.toml")), {})
    with pytest.raises(ConfigError, match=r"--models is required \(or FEEDRANK_MODELS, or 'models' in the --config file\)"):
        resolve_config(parse(), {})


def test_a_config_file_takes_the_candidate_sources_as_an_array_as_an_arms_file_does(tmp_path):
    """An arms file's [arm.feed] takes sources = ["trending"] (and only an array); the same
    line moved into the --config file was refused: "expected a string, got ['trending']"."""
    path = tmp_path / "c.toml"
    path.write_text('models = "m"\nsources = ["followed_sellers", "trending"]\nfallback_sources = ["trending"]\n')
    feed = resolve_config(parse("--config", str(path)), {}).feed
    assert (feed.sources, feed.fallback_sources) == (("followed_sellers", "trending"), ("trending",))
    path.write_text('models = "m"\nsources = ["trending"]\nfallback_sources = []\n')
    assert resolve_config(parse("--config", str(path)), {}).feed.fallback_sources == ()
    cases = [
        ('models = "m"\nsources = ["trending", 3]\n', f"{path}:2: key 'sources': expected a string or an array of strings, got ['trending', 3]"),
        ('models = "m"\nsources = ["trending", "bogus"]\n', f"{path}:2: key 'sources': unknown sources bogus"),
        ('models = "m"\nsources = 3\n', f"{path}:2: key 'sources': expected a string or an array of strings, got 3"),
    ]
    assert_config_file_refusals(path, cases)


def test_a_config_file_value_refused_by_a_later_check_names_its_line(tmp_path):
    path = tmp_path / "c.toml"
    cases = [
        ('models = "m"\n\ntls_key = "k.pem"\n', f"{path}:3: key 'tls_key' needs --tls-cert"),
        ('models = "m"\nfallback_sources = "bogus"\n', f"{path}:2: key 'fallback_sources': unknown sources bogus"),
        ('models = "m"\n# the store\nstore = "redis://h:1/0?bogus=1"\n', f"{path}:3: key 'store' redis://h:1/0?bogus=1: unknown store URL option 'bogus'"),
    ]
    assert_config_file_refusals(path, cases)


def test_a_relative_path_in_the_config_file_is_relative_to_the_file(tmp_path, monkeypatch):
    # A service manager often starts the server in /: "models = 'models'" beside the file
    # meant /models there, and the server could not find its model.
    etc = tmp_path / "etc" / "feedrank"
    etc.mkdir(parents=True)
    (etc / "feedrank.toml").write_text('models = "models"\ntokens_file = "../tokens"\nstate_dir = "/var/lib/feedrank"\n')
    monkeypatch.chdir(tmp_path)
    values, _ = resolve_settings(parse("--config", "etc/feedrank/feedrank.toml"), {})
    assert values["models"] == str(etc / "models")
    assert os.path.normpath(values["tokens_file"]) == str(tmp_path / "etc" / "tokens")
    assert values["state_dir"] == "/var/lib/feedrank"
    assert resolve_settings(parse("--config", "etc/feedrank/feedrank.toml", "--models", "models"), {})[0]["models"] == "models"  # a flag is the caller's


def test_tokens_come_from_the_file_and_the_environment_together(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"{TOKEN} read web\n")
    config = resolve_config(parse("--models", "m", "--tokens-file", str(path)), {"FEEDRANK_TOKENS": "another-token-0123456789 read,write ci"})
    # The file's tokens are the server's to read (and re-read when it changes); the variable's stay.
    assert config.tokens_file == str(path)
    assert [(t.name, sorted(t.scopes)) for t in config.tokens] == [("ci", ["read", "write"])]
    assert [t.name for t in TokensFileSource(str(path), config.tokens).interceptor.tokens] == ["web", "ci"]
    with pytest.raises(ConfigError, match="the same token is also listed"):
        resolve_config(parse("--models", "m", "--tokens-file", str(path)), {"FEEDRANK_TOKENS": f"{TOKEN} write"})


def test_the_cli_reports_a_bad_variable_in_one_line_and_help_names_every_variable():
    env = {**os.environ, "FEEDRANK_MAX_PER_SELLER": "two"}
    result = subprocess.run([sys.executable, "-m", "serving", "--models", "m", "--data", "d"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "python -m serving: error: FEEDRANK_MAX_PER_SELLER: expected an integer, got 'two'"
    help_text = " ".join(subprocess.run([sys.executable, "-m", "serving", "--help"], cwd=REPO, capture_output=True, text=True,
                                        timeout=120, check=True).stdout.split())
    for flag in FLAGS:
        assert f"{flag.flag} " in help_text and f"env {flag.env})" in help_text, flag.env
    assert "FEEDRANK_CONFIG" in help_text and "FEEDRANK_TOKEN_SECRET" in help_text and "FEEDRANK_TOKENS" in help_text
    assert "FEEDRANK_TOKEN_SECRET_PREVIOUS" in help_text  # a rotation's variable, which the README says --help gives


def test_help_gives_every_flag_s_default_or_what_happens_without_it():
    """--metrics-host's help ended "(default: ; env ...)", and --data, --port-file,
    --tokens-file and the --tls-* flags said nothing of what the server does without them."""
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    add_server_arguments(parser)
    for action in parser._actions:
        if action.option_strings and action.help and action.dest != "help":
            text = " ".join(action.help.split())
            assert "default: ;" not in text and "default: )" not in text, action.option_strings
            assert re.search(r"\bdefault\b|\brequired\b", text, re.IGNORECASE), action.option_strings


def test_config_from_args_turns_errors_into_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        config_from_args(parse(), {})
    assert exit_.value.code == 2 and "error: --models is required" in capsys.readouterr().err


def test_durability_settings_reach_the_store(world, monkeypatch):
    opened = []
    real = service_setup.open_store

    def spy(url, data_dir=None, durability=Durability(), limits={}):
        opened.append((durability, limits))
        return real(url, data_dir)

    monkeypatch.setattr(service_setup, "open_store", spy)
    args = parse("--models", str(world.models_dir), "--data", str(world.data_dir), "--port", "0",
                 "--state-dir", "/tmp/state", "--fsync", "off", "--snapshot-seconds", "60", "--max-friends", "7")
    server = server_module.FeedServer(resolve_config(args, {"FEEDRANK_DEDUPE_TTL_SECONDS": "60"}))
    server.start()
    server.stop(grace=0)
    assert opened == [(Durability("/tmp/state", "off", 60.0), {"max_friends": 7, "max_follows": 1000, "dedupe_ttl": 60})]


@pytest.mark.parametrize(("seconds", "kept"), [(0.5, 1), (60.2, 61), (0.0, 0)])
def test_a_fractional_dedupe_ttl_is_rounded_up_not_to_forever(seconds, kept):
    # int(0.5) was 0, which the stores read as "remember every event id forever".
    config = resolve_config(parse("--models", "m", "--dedupe-ttl-seconds", str(seconds)), {})
    assert service_setup.store_limits(config)["dedupe_ttl"] == kept


FLOAT_FLAGS = [flag for flag in FLAGS if flag.kind is float]


@pytest.mark.parametrize("flag", FLOAT_FLAGS, ids=[flag.dest for flag in FLOAT_FLAGS])
def test_an_infinite_number_is_refused_from_the_flag_the_variable_and_the_file(flag, tmp_path, capsys):
    # inf passed the check: --dedupe-ttl-seconds inf stopped the start with a traceback
    # (math.ceil), --reload-seconds and --snapshot-seconds inf killed their thread
    # (Event.wait overflows), --fatigue-sink inf made every score nan.
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    add_server_arguments(parser)
    for text in ("inf", "-inf", "Infinity"):
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args([f"{flag.flag}={text}"])
        assert exit_.value.code == 2
        assert f"argument {flag.flag}: expected a finite number, got {text!r}" in capsys.readouterr().err
    assert_refused_from_the_variable_and_the_file(flag, "inf", "expected a finite number, got 'inf'", "expected a finite number, got inf", tmp_path)


def assert_refused_from_the_variable_and_the_file(flag, value: str, variable_says: str, file_says: str, tmp_path) -> None:
    """``value`` given by ``flag``'s FEEDRANK_ variable, then by a config file's key, is refused
    naming each (the messages are regular expressions)."""
    with pytest.raises(ConfigError, match=f"^{flag.env}: {variable_says}$"):
        resolve_config(parse("--models", "m"), {flag.env: value})
    config_file = tmp_path / "feedrank.toml"
    config_file.write_text(f"{flag.dest} = {value}\n")
    with pytest.raises(ConfigError, match=f"^{re.escape(str(config_file))}:1: key '{flag.dest}': {file_says}$"):
        resolve_config(parse("--models", "m", "--config", str(config_file)), {})


WAIT_FLAGS = [flag for flag in FLAGS if flag.dest in ("reload_seconds", "credentials_reload_seconds", "snapshot_seconds")]


@pytest.mark.parametrize("flag", WAIT_FLAGS, ids=[flag.dest for flag in WAIT_FLAGS])
def test_a_wait_longer_than_python_can_wait_is_refused_from_the_flag_the_variable_and_the_file(flag, tmp_path, capsys):
    # 1e10 passed the check, and the thread waiting that long (Event.wait) died with
    # "OverflowError: timestamp out of range for platform time_t" while the server ran on.
    most = re.escape(f"{threading.TIMEOUT_MAX:g}")
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    add_server_arguments(parser)
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args([f"{flag.flag}=1e10"])
    assert exit_.value.code == 2
    assert re.search(f"argument {flag.flag}: must be <= {most}, got 10000000000.0\n", capsys.readouterr().err)
    too_long = f"must be <= {most}, got 10000000000.0"
    assert_refused_from_the_variable_and_the_file(flag, "1e10", too_long, too_long, tmp_path)
    longest = resolve_config(parse("--models", "m", flag.flag, repr(threading.TIMEOUT_MAX)), {})
    seconds = longest.durability.snapshot_seconds if flag.dest == "snapshot_seconds" else getattr(longest, flag.dest)
    assert seconds == threading.TIMEOUT_MAX
    waiter = threading.Event()  # the longest accepted is a wait Python makes
    threading.Timer(0.01, waiter.set).start()
    assert waiter.wait(seconds)


def test_a_dedupe_ttl_longer_than_redis_keeps_a_key_is_refused(capsys):
    # 1e16 passed the check, and Redis then refused every Ingest's SET ... EX ("invalid expire time").
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    add_server_arguments(parser)
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--dedupe-ttl-seconds=1e16"])
    assert exit_.value.code == 2
    assert "argument --dedupe-ttl-seconds: must be <= 1e+12, got 1e+16\n" in capsys.readouterr().err
    longest = resolve_config(parse("--models", "m", "--dedupe-ttl-seconds", "1e12"), {})
    assert service_setup.store_limits(longest)["dedupe_ttl"] == 10**12


# --- logs -----------------------------------------------------------------------------------------


def test_every_logger_of_the_project_is_under_feedrank():
    # An operator selects the service's lines by their "logger" field: store outages came
    # as "serving.servicer", the write-ahead log's as "stores.wal", among "feedrank.*".
    code = ("import importlib, json, logging, pkgutil\n"
            "for package in ('embeddings', 'ranking', 'serving', 'stores', 'training'):\n"
            "    for module in pkgutil.walk_packages(importlib.import_module(package).__path__, package + '.'):\n"
            "        importlib.import_module(module.name)\n"
            "print(json.dumps(sorted(logging.root.manager.loggerDict)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300, check=True)
    ours = ("embeddings", "ranking", "serving", "stores", "training")
    assert [name for name in json.loads(done.stdout) if name.split(".")[0] in ours] == []


def test_json_lines_hold_a_traceback_in_one_line(log_stream):
    log = logging.getLogger("feedrank.test")
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        log.exception("it failed: %s", "badly", extra={"fields": {"version": "v1"}})
    log.debug("not shown at info")
    [line] = json_lines(log_stream)
    assert line["level"] == "error" and line["logger"] == "feedrank.test" and line["msg"] == "it failed: badly"
    assert line["version"] == "v1" and line["pid"] == os.getpid() and line["worker"] == 0
    assert "RuntimeError: boom" in line["exc"] and line["ts"].endswith("Z")



@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_feed_processs_lines_say_so(log_format):
    """Each feed process logs a model version that fails to load on its own: with two of
    them, three identical lines each retry read as three attempts (found by the chaos review)."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    logs.configure(log_format, "info", stream=stream)
    try:
        logging.getLogger("feedrank.test").info("the server's own")
        logs.set_feed_process()
        logging.getLogger("feedrank.test").info("a child's")
    finally:
        logs.set_feed_process(False)
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    server_line, child_line = stream.getvalue().splitlines()
    if log_format == "json":
        assert "feed_process" not in json.loads(server_line) and json.loads(child_line)["feed_process"] is True
    else:
        assert "feed_process" not in server_line and child_line.endswith(f"a child's feed_process={os.getpid()}")

def test_one_access_line_per_rpc_with_request_id_code_latency_model_and_worker(world, log_stream):
    tokens = tuple(auth.parse_tokens(f"{TOKEN} read web-client\n", "t"))
    config = ServerConfig(models_dir=str(world.models_dir), data_dir=str(world.data_dir), port=0, token_secret=TOKEN_SECRET,
                          reload_seconds=0, tokens=tokens)
    server = server_module.FeedServer(config)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = feed_pb2_grpc.FeedServiceStub(channel)
            md = [("authorization", f"Bearer {TOKEN}")]
            response, call = stub.GetFeed.with_call(feed_pb2.GetFeedRequest(user_id="u00001", limit=5),
                                                    metadata=md + [("x-request-id", "req-42")], timeout=10)
            assert ("x-request-id", "req-42") in call.trailing_metadata()
            with pytest.raises(grpc.RpcError) as bad:
                stub.GetFeed(feed_pb2.GetFeedRequest(user_id="", limit=5), metadata=md, timeout=10)
            generated = dict(bad.value.trailing_metadata())["x-request-id"]
            with pytest.raises(grpc.RpcError):
                stub.Ingest(feed_pb2.IngestRequest(), metadata=md, timeout=10)  # no write scope
    finally:
        server.stop(grace=0)
    access = [line for line in json_lines(log_stream) if line["logger"] == logs.ACCESS_LOGGER]
    assert [(a["method"], a["code"]) for a in access] == [
        ("/feedrank.feed.v1.FeedService/GetFeed", "OK"),
        ("/feedrank.feed.v1.FeedService/GetFeed", "INVALID_ARGUMENT"),
        ("/feedrank.feed.v1.FeedService/Ingest", "PERMISSION_DENIED"),
    ]
    first = access[0]
    assert first["request_id"] == "req-42" and access[1]["request_id"] == generated and len(generated) == 32
    assert first["model_version"] == response.model_version != "" and access[2]["model_version"] == response.model_version
    assert first["worker"] == 0 and first["pid"] == os.getpid() and first["client"] == "web-client"
    assert access[2]["client"] == "web-client"  # a valid token refused for its scope is named too
    assert 0 < first["latency_ms"] < 10_000 and first["peer"].startswith("ipv")
    assert TOKEN not in log_stream.getvalue()


def test_a_call_to_an_unknown_method_is_logged_and_counted_as_unimplemented(world, log_stream):
    # Before the fix gRPC answered UNIMPLEMENTED itself: no access line, no metric, so a
    # client calling a method this server version lacks went unseen.
    config = ServerConfig(models_dir=str(world.models_dir), data_dir=str(world.data_dir), port=0, token_secret=TOKEN_SECRET,
                          reload_seconds=0)
    server = server_module.FeedServer(config)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            unary = channel.unary_unary("/feedrank.feed.v1.FeedService/GetFeeds", request_serializer=None, response_deserializer=None)
            with pytest.raises(grpc.RpcError) as unknown:
                unary(b"", metadata=[("x-request-id", "req-7")], timeout=10)
            assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert "/feedrank.feed.v1.FeedService/GetFeeds" in unknown.value.details()
            assert ("x-request-id", "req-7") in unknown.value.trailing_metadata()
            # A stream that sends nothing and waits is answered too, at once.
            bidi = channel.stream_stream("/other.Service/Chat", request_serializer=None, response_deserializer=None)
            with pytest.raises(grpc.RpcError) as streamed:
                list(bidi(iter(()), timeout=10))
            assert streamed.value.code() == grpc.StatusCode.UNIMPLEMENTED
        counted = server.service.metrics.registry.get_sample_value(
            "feedrank_requests_total", {"method": logs.UNKNOWN_METHOD, "code": "UNIMPLEMENTED"})
    finally:
        server.stop(grace=0)
    access = [line for line in json_lines(log_stream) if line["logger"] == logs.ACCESS_LOGGER]
    assert [(a["method"], a["code"], a["level"]) for a in access] == [
        ("/feedrank.feed.v1.FeedService/GetFeeds", "UNIMPLEMENTED", "info"),
        ("/other.Service/Chat", "UNIMPLEMENTED", "info"),
    ]
    assert access[0]["request_id"] == "req-7" and all(a["peer"].startswith("ipv") for a in access)
    assert counted == 2


async def _tokenless_flood(port: int, tokenless: int, unknown: int, authorised: int, denied: int) -> None:
    """``tokenless`` GetFeeds without a token and ``unknown`` calls to a method the server
    lacks, all in flight at once, with ``authorised`` GetFeeds and ``denied`` Ingests (a
    token without the write scope) among them."""
    md = [("authorization", f"Bearer {TOKEN}")]
    request = feed_pb2.GetFeedRequest(user_id="u00001", limit=5)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = feed_pb2_grpc.FeedServiceStub(channel)
        missing = channel.unary_unary("/feedrank.feed.v1.FeedService/GetFeeds", request_serializer=None, response_deserializer=None)
        calls = [stub.GetFeed(request, timeout=30) for _ in range(tokenless)]
        calls += [missing(b"", timeout=30) for _ in range(unknown)]
        calls += [stub.GetFeed(request, metadata=md, timeout=30) for _ in range(authorised)]
        calls += [stub.Ingest(feed_pb2.IngestRequest(), metadata=md, timeout=30) for _ in range(denied)]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
    codes = [getattr(outcome, "code", lambda: grpc.StatusCode.OK)() for outcome in outcomes]
    assert codes == ([grpc.StatusCode.UNAUTHENTICATED] * tokenless + [grpc.StatusCode.UNIMPLEMENTED] * unknown
                     + [grpc.StatusCode.OK] * authorised + [grpc.StatusCode.PERMISSION_DENIED] * denied)


_TEXT_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def _records(log_stream, log_format: str) -> list[dict]:
    """The records of the log, each one line: JSON's, or the fields of the text's."""
    if log_format == "json":
        return json_lines(log_stream)
    records = []
    for line in log_stream.getvalue().splitlines():
        fields = {key: json.loads(value) if value.startswith('"') else value for key, value in _TEXT_FIELD.findall(line)}
        records.append({"logger": line.split()[3].rstrip(":"), **fields})
    return records


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_the_access_lines_of_calls_without_a_token_are_rate_limited_and_summarised(world, log_stream, log_format):
    # Anyone reaching the port could have the server write an access line per call without
    # a token: one client looping unauthenticated GetFeeds made it write 3,500 lines (1 MB)
    # a second. Every call is still counted; calls with a valid token are all logged.
    logging.getLogger().handlers[0].setFormatter(logs.TextFormatter() if log_format == "text" else logs.JsonFormatter())
    tokens = tuple(auth.parse_tokens(f"{TOKEN} read web-client\n", "t"))
    config = ServerConfig(models_dir=str(world.models_dir), data_dir=str(world.data_dir), port=0, token_secret=TOKEN_SECRET,
                          reload_seconds=0, tokens=tokens)
    server = server_module.FeedServer(config)
    server.access_log.tokenless.clock = lambda: 1000.0  # one second that never ends, however slow the calls
    server.start()
    try:
        asyncio.run(_tokenless_flood(server.port, tokenless=500, unknown=60, authorised=30, denied=20))
        counted = {(method, code): server.metrics.registry.get_sample_value("feedrank_requests_total", {"method": method, "code": code})
                   for method, code in (("GetFeed", "UNAUTHENTICATED"), (logs.UNKNOWN_METHOD, "UNIMPLEMENTED"))}
    finally:
        server.stop(grace=0)
    access = [record for record in _records(log_stream, log_format) if record["logger"] == logs.ACCESS_LOGGER]
    written = collections.Counter(record["code"] for record in access if "suppressed" not in record)
    suppressed = collections.Counter()
    for summary in (record for record in access if "suppressed" in record):
        suppressed[summary["code"]] += int(summary["suppressed"])
        assert summary["first_peer"].startswith("ipv") and int(summary["peers"]) == 1
    limit = logs.TOKENLESS_LINES_PER_SECOND
    assert written == {"UNAUTHENTICATED": limit, "UNIMPLEMENTED": limit, "OK": 30, "PERMISSION_DENIED": 20}
    assert suppressed == {"UNAUTHENTICATED": 500 - limit, "UNIMPLEMENTED": 60 - limit}
    assert counted == {("GetFeed", "UNAUTHENTICATED"): 500, (logs.UNKNOWN_METHOD, "UNIMPLEMENTED"): 60}


def test_an_unknown_method_cannot_add_a_line_to_the_text_log(log_stream):
    # The name is the client's: a newline in it began a line of its own in the text log
    # (the default format), forging an access line; an escape reached the operator's terminal.
    logging.getLogger().handlers[0].setFormatter(logs.TextFormatter())
    forged = "\n2026-12-06 14:52:00,000 INFO feedrank.access: Ingest OK 1.0 ms client=ingest-worker"
    access = logs.AccessLog(lambda request: ("v1", ""))
    access.write(logging.INFO, "/x/Foo" + forged + "\x1b[2J", "UNIMPLEMENTED", 0.001, None, None,
                 {"request_id": "req-1", "client": None}, "ipv4:127.0.0.1:5000")
    [line] = log_stream.getvalue().splitlines()
    assert "\x1b" not in line and "Foo\\n2026-12-06" in line


def test_a_request_id_keeps_only_what_metadata_can_carry_back():
    # The id goes back in the trailing metadata, where gRPC sends printable ASCII only: a
    # client (a raw HTTP/2 one, or through a proxy) that sent x-request-id "café" had its
    # GetFeed built and logged OK, then answered INTERNAL "Invalid metadata".
    assert logs.request_id_of([("x-request-id", "café-42\n\x00\u2028")]) == "caf-42"
    assert len(logs.request_id_of([("x-request-id", "éà")])) == 32  # nothing left: a new one


def test_a_call_cancelled_or_past_its_deadline_is_logged_and_counted_as_such(world, log_stream):
    # Before the fix gRPC's cancellation of the handler was logged as code UNKNOWN, with
    # no peer (the context no longer answers), and a deadline counted as CANCELLED.
    config = ServerConfig(models_dir=str(world.models_dir), data_dir=str(world.data_dir), port=0, token_secret=TOKEN_SECRET,
                          reload_seconds=0, threads=1)
    server = server_module.FeedServer(config)
    server.start()
    real = server.service.get_feed
    server.service.get_feed = lambda *args, **kwargs: (time.sleep(0.3), real(*args, **kwargs))[1]
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = feed_pb2_grpc.FeedServiceStub(channel)
            request = feed_pb2.GetFeedRequest(user_id="u00001", limit=5)
            stub.GetFeed(request, timeout=10)
            with pytest.raises(grpc.RpcError) as late:
                stub.GetFeed(request, timeout=0.1)
            assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            cancelled = stub.GetFeed.future(request, timeout=10)
            time.sleep(0.1)
            cancelled.cancel()
            time.sleep(0.5)  # the thread finishes the feed nobody waits for
        registry = server.service.metrics.registry
        counts = {code: registry.get_sample_value("feedrank_requests_total", {"method": "GetFeed", "code": code})
                  for code in ("DEADLINE_EXCEEDED", "CANCELLED")}
    finally:
        server.stop(grace=0)
    access = [line for line in json_lines(log_stream) if line["logger"] == logs.ACCESS_LOGGER]
    assert [a["code"] for a in access] == ["OK", "DEADLINE_EXCEEDED", "CANCELLED"]
    assert all(a["peer"].startswith("ipv") for a in access)
    assert counts == {"DEADLINE_EXCEEDED": 1, "CANCELLED": 1}
    assert not [line for line in json_lines(log_stream) if line["level"] == "error"]


def test_an_answer_grpc_could_not_send_to_a_call_already_over_is_a_counted_debug_line_not_an_error(log_stream):
    """GetFeeds with deadlines of 2-5 ms against `python -m serving`: 24 of 53,630 calls had
    grpc.aio log an ERROR with a traceback, its answer not sent because the call had ended
    in gRPC's core (deadline passed) before grpc.aio noticed. The client had its status, the
    access log and metrics had counted the call."""
    method = "/feedrank.feed.v1.FeedService/GetFeed"
    _log_as_grpc_aio_does(cygrpc.ExecuteBatchError('Failed "execute_batch": (<SendInitialMetadataOperation>, '
                                                   '<SendMessageOperation>, <SendStatusFromServerOperation>)'),
                          f"ExecuteBatchError raised in core by servicer method [{method}]")
    assert json_lines(log_stream) == []
    logging.getLogger().setLevel(logging.DEBUG)
    _log_as_grpc_aio_does(cygrpc.ExecuteBatchError('Failed "execute_batch": (<SendStatusFromServerOperation>,)'),
                          f"ExecuteBatchError raised in core by servicer method [{method}]")
    [line] = json_lines(log_stream)
    assert line["level"] == "debug" and method in line["msg"] and "not sent" in line["msg"] and "exc" not in line
    assert line["unsent_answers"] >= 2  # counted at info too
    _log_as_grpc_aio_does(ValueError("a bug"), f"Unexpected [ValueError] raised by servicer method [{method}]")
    assert json_lines(log_stream)[-1]["level"] == "error" and "ValueError: a bug" in json_lines(log_stream)[-1]["exc"]


def test_the_server_starts_and_still_recognises_unsent_answers_when_grpc_moves_its_private_cygrpc(monkeypatch):
    """serving.logs reads ExecuteBatchError from grpc's private grpc._cython.cygrpc; a grpc
    that moved it must not stop the server from starting: the filter then knows the error by
    its class name."""
    import importlib.util

    import grpc._cython

    monkeypatch.setitem(sys.modules, "grpc._cython.cygrpc", None)  # "from grpc._cython import cygrpc" fails
    monkeypatch.delattr(grpc._cython, "cygrpc")
    spec = importlib.util.spec_from_file_location("feedrank_logs_without_cygrpc", REPO / "serving" / "logs.py")
    moved = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(moved)  # raised ModuleNotFoundError
    monkeypatch.undo()
    unsent = moved._UnsentAnswers()
    method = "/feedrank.feed.v1.FeedService/GetFeed"

    def record(error: Exception, message: str) -> logging.LogRecord:
        try:
            raise error
        except Exception:
            return logging.LogRecord("grpc._cython.cygrpc", logging.ERROR, __file__, 0, message, None, sys.exc_info())

    class ExecuteBatchError(Exception):  # grpc's, wherever it lives now
        pass

    message = f"ExecuteBatchError raised in core by servicer method [{method}]"
    assert not unsent.filter(record(ExecuteBatchError('Failed "execute_batch": (<SendStatusFromServerOperation>,)'), message))
    assert not unsent.filter(record(cygrpc.ExecuteBatchError('Failed "execute_batch": (<SendMessageOperation>,)'), message))
    assert unsent.unsent == 2
    assert unsent.filter(record(ValueError('Failed "execute_batch": no'), message))
    assert unsent.filter(record(ExecuteBatchError("Failed something else"), message))


def _log_as_grpc_aio_does(error: Exception, message: str) -> None:
    """What grpc.aio's server does with an exception it met around a handler (server.pyx.pxi)."""
    try:
        raise error
    except Exception:
        logging.getLogger("grpc._cython.cygrpc").exception(message)


def test_startup_warns_when_open_and_without_a_token_secret(world, caplog):
    caplog.set_level("WARNING", logger="feedrank.serving")
    server = server_module.FeedServer(ServerConfig(models_dir=str(world.models_dir), data_dir=str(world.data_dir), port=0, reload_seconds=0))
    server.start()
    server.stop(grace=0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(w.startswith("auth is off: no bearer tokens") for w in warnings)
    assert server_module.NO_SECRET_WARNING in warnings


def test_the_server_command_reads_env_and_config_file_and_logs_json(world, tmp_path):
    port_file, tokens_file = tmp_path / "port", tmp_path / "tokens"
    tokens_file.write_text(f"{TOKEN} read cli\n")
    config_file = tmp_path / "feedrank.toml"
    config_file.write_text(f'models = "{world.models_dir}"\ndata = "{world.data_dir}"\nlog_format = "json"\nport = 0\nlog_level = "debug"\n')
    env = {**os.environ, "FEEDRANK_CONFIG": str(config_file), "FEEDRANK_PORT_FILE": str(port_file), "FEEDRANK_LOG_LEVEL": "info",
           "FEEDRANK_TOKENS_FILE": str(tokens_file), "FEEDRANK_TOKEN_SECRET": TOKEN_SECRET.decode(),
           "FEEDRANK_MAX_PER_SELER": "1",  # misspelt: warned about, not applied
           **KUBERNETES_SERVICE_LINKS}  # a pod's, for Services named feedrank and feedrank-metrics: ignored
    server = subprocess.Popen([sys.executable, "-m", "serving"], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert server.poll() is None and time.monotonic() < deadline, server.stderr.read() if server.poll() is not None else "timeout"
            time.sleep(0.1)
        with grpc.insecure_channel(f"127.0.0.1:{port_file.read_text()}") as channel:
            stub = feed_pb2_grpc.FeedServiceStub(channel)
            items = stub.GetFeed(feed_pb2.GetFeedRequest(user_id="u00001", limit=5), metadata=[("authorization", f"Bearer {TOKEN}")], timeout=10).items
            assert len(items) == 5
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()
    stderr = server.stderr.read()
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert not [line for line in lines if line["level"] == "debug"]  # FEEDRANK_LOG_LEVEL over the file
    access = [line for line in lines if line["logger"] == logs.ACCESS_LOGGER]
    assert len(access) == 1 and access[0]["code"] == "OK" and access[0]["client"] == "cli"
    assert any(line["msg"].startswith("serving model") for line in lines)
    assert TOKEN not in stderr and "auth is off" not in stderr and "FEEDRANK_TOKEN_SECRET is not set" not in stderr
    assert [line["msg"] for line in lines if "FEEDRANK_MAX_PER_SELER" in line["msg"]] == [
        "FEEDRANK_MAX_PER_SELER is not a setting (did you mean FEEDRANK_MAX_PER_SELLER?): it is ignored"]
    assert not [line for line in lines if any(name in line["msg"] for name in KUBERNETES_SERVICE_LINKS)]


KUBERNETES_SERVICE_LINKS = {
    "FEEDRANK_PORT": "tcp://10.0.0.7:50051", "FEEDRANK_SERVICE_HOST": "10.0.0.7", "FEEDRANK_SERVICE_PORT": "50051",
    "FEEDRANK_SERVICE_PORT_GRPC": "50051", "FEEDRANK_PORT_50051_TCP": "tcp://10.0.0.7:50051", "FEEDRANK_PORT_50051_TCP_PROTO": "tcp",
    "FEEDRANK_PORT_50051_TCP_PORT": "50051", "FEEDRANK_PORT_50051_TCP_ADDR": "10.0.0.7",
    "FEEDRANK_METRICS_PORT": "tcp://10.0.0.8:9100", "FEEDRANK_METRICS_SERVICE_HOST": "10.0.0.8",
}


def test_a_kubernetes_service_link_is_no_setting_but_a_real_port_variable_is():
    assert all(is_service_link(name, value) for name, value in KUBERNETES_SERVICE_LINKS.items())
    assert not is_service_link("FEEDRANK_PORT", "50051") and not is_service_link("FEEDRANK_METRICS_PORT", "9100")
    assert not is_service_link("FEEDRANK_MAX_PER_SELLER", "2")


def test_with_json_logs_a_fatal_start_error_is_a_json_line_too(world, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "serving", "--models", str(world.models_dir), "--data", str(tmp_path / "nope"),
         "--log-format", "json", "--port", "0", "--no-progress"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    lines = [json.loads(line) for line in result.stderr.splitlines()]  # every line is JSON
    assert lines[-1]["level"] == "critical" and "no such directory" in lines[-1]["msg"]


def test_with_json_logs_a_bad_setting_is_a_json_line_too(world, tmp_path):
    """A setting refused before the server starts (a bad variable, an arms file, the config
    file's values) was argparse's usage text and a plain error line under --log-format json."""
    base = [sys.executable, "-m", "serving", "--models", str(world.models_dir), "--data", str(world.data_dir), "--no-progress"]
    (tmp_path / "arms.toml").write_text('salt = "s"\n[[arm]]\nname = "a"\nshare = 0.5\n')
    (tmp_path / "c.toml").write_text('log_format = "json"\nmax_per_seller = 0\n')
    cases = [
        (["--log-format", "json"], {"FEEDRANK_PORT": "abc"}, "error: FEEDRANK_PORT: expected an integer, got 'abc'"),
        (["--arms", str(tmp_path / "arms.toml")], {"FEEDRANK_LOG_FORMAT": "json"}, "error: --arms: "),
        (["--config", str(tmp_path / "c.toml")], {}, f"error: {tmp_path / 'c.toml'}:2: key 'max_per_seller': must be >= 1"),
    ]
    for extra, env, message in cases:
        result = subprocess.run([*base, *extra], cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stderr
        lines = [json.loads(line) for line in result.stderr.splitlines()]  # every line is JSON
        assert lines[-1]["level"] == "critical" and lines[-1]["msg"].startswith(message), lines[-1]
    text = subprocess.run([*base, "--max-per-seller", "0"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert text.returncode == 2 and text.stderr.startswith("usage: ")  # text logs: argparse's usage, as before


def test_with_json_logs_a_port_in_use_is_a_json_line_too(world):
    """Bind errors (gRPC, --http-port, --metrics-port) were plain text under --log-format json."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for flag in ("--port", "--metrics-port"):
            result = subprocess.run(
                [sys.executable, "-m", "serving", "--models", str(world.models_dir), "--data", str(world.data_dir),
                 "--log-format", "json", "--no-progress", "--port", "0", flag, str(port)],
                cwd=REPO, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert result.returncode == 1, result.stderr
            lines = [json.loads(line) for line in result.stderr.splitlines()]  # every line is JSON
            assert lines[-1]["level"] == "critical" and f"127.0.0.1:{port}" in lines[-1]["msg"], lines[-1]


# --- model reload -----------------------------------------------------------------------------------


def test_a_broken_artifact_is_logged_in_one_line_naming_it_and_retried_with_backoff(tmp_path, monkeypatch, caplog):
    models = tmp_path / "models"
    models.mkdir()
    attempts = []

    def load_version(path):
        attempts.append((Path(path).name, now[0]))
        if Path(path).name != "v4":
            raise ValueError(f"{path}: index.faiss does not hold\nthe item factors")
        return SimpleNamespace(version="v4", path=path)

    monkeypatch.setattr(service_setup, "load_version", load_version)
    served = SimpleNamespace(version="v1", path=str(models / "v1"))
    configured = []

    def configure(current, arms, pinned):
        configured.append(current.version)
        service.current_artifact, service.model_version = current, current.version

    service = SimpleNamespace(current_artifact=served, arms=None, pinned={}, model_version="v1", configure=configure,
                              metrics=FeedMetrics())
    now = [0.0]
    watcher = service_setup.ModelWatcher(service, str(models), every_seconds=1.0, clock=lambda: now[0])
    caplog.set_level("INFO", logger="feedrank.serving")

    def poll(until: float) -> None:
        while now[0] < until:
            now[0] += 1.0
            watcher.check()

    (models / "CURRENT").write_text("v2\n")
    poll(20)
    assert [t for v, t in attempts] == [1.0, 3.0, 7.0, 15.0]  # 2, 4, 8 polls apart: not every poll
    assert service.metrics.registry.get_sample_value("feedrank_model_reload_failures_total") == 4  # for alerts
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 4 and all("\n" not in r.getMessage() for r in errors)
    assert errors[0].getMessage() == ("model reload failed: version v2: ValueError: " + str(models / "v2") +
                                      ": index.faiss does not hold the item factors; still serving v1; next try in 2 s")
    (models / "CURRENT").write_text("v3\n")  # a new version is tried at the next poll
    poll(21)
    assert attempts[-1] == ("v3", 21.0)
    (models / "CURRENT").unlink()  # CURRENT itself missing: also backed off
    caplog.clear()
    poll(26)
    assert len([r for r in caplog.records if "version CURRENT" in r.getMessage()]) == 2
    (models / "CURRENT").write_text("v4\n")
    poll(40)
    assert configured == ["v4"] and attempts[-1][0] == "v4"


def test_an_arms_file_broken_at_reload_is_one_error_line_without_a_traceback(tmp_path, caplog):
    """A TOML syntax error logged a full traceback at every retry (an outside review)."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "CURRENT").write_text("v1\n")
    arms = tmp_path / "arms.toml"
    arms.write_text("[arm.a\nweight = 1\n")
    service = SimpleNamespace(current_artifact=SimpleNamespace(version="v1", path=str(models / "v1")), arms=None, pinned={}, model_version="v1",
                              configure=lambda *_: None, metrics=FeedMetrics())  # fmt: skip
    watcher = service_setup.ModelWatcher(service, str(models), every_seconds=1.0, arms_file=str(arms), clock=lambda: 1.0)
    caplog.set_level("INFO", logger="feedrank.serving")
    watcher.check()
    (failure,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert failure.exc_info is None and "\n" not in failure.getMessage()
    assert failure.getMessage().startswith(f"arms reload from {arms} failed: ") and "next try in" in failure.getMessage()


def test_page_token_and_ingest_limits_come_from_flags_and_environment(world):
    args = parse("--models", str(world.models_dir), "--data", str(world.data_dir), "--token-ttl-seconds", "60",
                 "--max-feed-depth", "200", "--max-friends-read", "9")
    environ = {"FEEDRANK_TOKEN_SECRET_PREVIOUS": "old-secret-0123456789, older-secret-0123456789",
               "FEEDRANK_MAX_CLOCK_SKEW_SECONDS": "30", "FEEDRANK_TOKEN_TTL_SECONDS": "999"}
    config = resolve_config(args, environ)
    assert (config.token_ttl_seconds, config.max_feed_depth, config.max_clock_skew_seconds) == (60.0, 200, 30.0)
    assert config.previous_token_secrets == (b"old-secret-0123456789", b"older-secret-0123456789")
    assert config.feed.max_friends_read == 9
    # A secret from a file with its newline is the secret stripped, as the previous ones are:
    # rotated into the previous list as it was, it still verifies the tokens it signed.
    with_newline = resolve_config(args, {"FEEDRANK_TOKEN_SECRET": "old-secret-0123456789\n"})
    assert with_newline.token_secret == b"old-secret-0123456789"
    server = server_module.FeedServer(config)
    server.start()
    try:
        codec = server.service.codec
        assert (codec.ttl_seconds, codec.max_served) == (60.0, 200) and server.service.max_clock_skew == 30.0
    finally:
        server.stop(grace=0)
