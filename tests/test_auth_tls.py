"""Bearer tokens with scopes, TLS and mutual TLS, over real gRPC with certificates made here (openssl)."""

from __future__ import annotations

import collections
import contextlib
import http.client
import itertools
import logging
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from protos.feed.v1 import feed_pb2, feed_pb2_grpc
from serving import auth, logs
from serving.config import ServerConfig
from serving.server import FeedServer
from tests.feed_world import TOKEN_SECRET, build_world
from tests.processes import running_tool
from tests.redis_servers import free_port

READ = "read-token-0123456789abcdef"
WRITE = "write-token-0123456789abcdef"
BOTH = "both-token-0123456789abcdef0"
TOKENS_TEXT = f"""# test tokens
{READ} read  reader
{WRITE} write writer
{BOTH}  read,write
"""
_ids = itertools.count()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("auth-world"), users=120, sellers=12, items=300)


@contextlib.contextmanager
def serving(world, **overrides) -> Iterator[FeedServer]:
    config = ServerConfig(models_dir=str(world.models_dir), data_dir=str(world.data_dir), port=0,
                          token_secret=TOKEN_SECRET, reload_seconds=0, **overrides)
    server = FeedServer(config)
    server.start()
    try:
        yield server
    finally:
        server.stop(grace=0)


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def get_feed(stub, token: str | None = None, **metadata):
    md = bearer(token) if token else []
    md += list(metadata.items())
    return stub.GetFeed(feed_pb2.GetFeedRequest(user_id="u00001", limit=5), metadata=md, timeout=10)


def ingest(stub, token: str | None = None):
    event = feed_pb2.Event(event_id=f"auth-{next(_ids)}", not_interested_seller=feed_pb2.UserSeller(user_id="u00001", seller_id="s-nobody"))
    return stub.Ingest(feed_pb2.IngestRequest(events=[event]), metadata=bearer(token) if token else None, timeout=10)


def code_of(call, *args, **kwargs) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as error:
        call(*args, **kwargs)
    return error.value.code()


# --- the tokens file -------------------------------------------------------------------------


def test_tokens_file_format_and_errors_name_the_line_but_never_the_token(tmp_path):
    path = tmp_path / "tokens.txt"
    path.write_text(TOKENS_TEXT)
    tokens = auth.read_tokens_file(str(path))
    assert [(t.name, sorted(t.scopes)) for t in tokens] == [
        ("reader", ["read"]), ("writer", ["write"]), (f"{path}:4", ["read", "write"])]
    assert all(READ not in repr(t) for t in tokens)  # only digests are kept
    for text, expected in [
        (f"{READ} read\n{READ} write\n", f"{path}:2: the same token is already listed at {path}:1"),
        (f"\n{READ} admin\n", f"{path}:2: scopes must be a comma-separated subset of read,write, got 'admin'"),
        ("short read\n", f"{path}:1: a token must be at least 16 printable ASCII characters"),
        (f"{READ}\n", f"{path}:1: expected 'TOKEN SCOPES [NAME]', got 1 fields"),
        ("# nothing\n", f"tokens file {path} lists no token"),
    ]:
        path.write_text(text)
        with pytest.raises(auth.TokenError) as error:
            auth.read_tokens_file(str(path))
        assert str(error.value) == expected
        assert READ not in str(error.value)
    env_tokens = auth.parse_tokens(f"{READ} read; {WRITE} write,read ci", "FEEDRANK_TOKENS", separators="\n;")
    assert [(t.name, sorted(t.scopes)) for t in env_tokens] == [("FEEDRANK_TOKENS entry 1", ["read"]), ("ci", ["read", "write"])]


def test_tokens_are_compared_in_constant_time_against_every_known_token(monkeypatch):
    tokens = auth.parse_tokens(TOKENS_TEXT, "t")
    interceptor = auth.AuthInterceptor(tokens)
    calls = []
    real = auth.hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    assert interceptor.identify(READ).name == "reader"  # the first one matches, the others are still compared
    assert interceptor.identify("x" * 40) is None
    assert len(calls) == 2 * len(tokens)


# --- scopes over real gRPC ------------------------------------------------------------------------


def test_tokens_and_scopes_over_grpc(world):
    tokens = auth.parse_tokens(TOKENS_TEXT, "t")
    with serving(world, tokens=tuple(tokens)) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = feed_pb2_grpc.FeedServiceStub(channel)
        assert code_of(get_feed, stub) == grpc.StatusCode.UNAUTHENTICATED
        assert code_of(get_feed, stub, "wrong-token-0123456789abcdef") == grpc.StatusCode.UNAUTHENTICATED
        assert code_of(get_feed, stub, READ[:-1]) == grpc.StatusCode.UNAUTHENTICATED
        assert code_of(ingest, stub) == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as error:  # not a bearer token
            stub.GetFeed(feed_pb2.GetFeedRequest(user_id="u00001", limit=5), metadata=[("authorization", f"Basic {READ}")], timeout=10)
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED and READ not in error.value.details()
        assert len(get_feed(stub, READ).items) == 5
        assert code_of(ingest, stub, READ) == grpc.StatusCode.PERMISSION_DENIED
        assert ingest(stub, WRITE).applied == 1
        with pytest.raises(grpc.RpcError) as error:
            get_feed(stub, WRITE)
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED and "'read' scope" in error.value.details()
        assert len(get_feed(stub, BOTH).items) == 5 and ingest(stub, BOTH).applied == 1
        # Health and reflection stay open.
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="feedrank.feed.v1.FeedService"), timeout=5)
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        assert "feedrank.feed.v1.FeedService" in {s.name for r in responses for s in r.list_services_response.service}
        # Refusals are counted in the metrics like any other answer.
        metrics = server.service.metrics.registry
        assert metrics.get_sample_value("feedrank_requests_total", {"method": "GetFeed", "code": "UNAUTHENTICATED"}) >= 3
        assert metrics.get_sample_value("feedrank_requests_total", {"method": "Ingest", "code": "PERMISSION_DENIED"}) == 1


def test_every_feed_service_method_needs_a_known_scope():
    service = feed_pb2.DESCRIPTOR.services_by_name["FeedService"]
    assert {f"/{service.full_name}/{m.name}" for m in service.methods} == set(auth.METHOD_SCOPES)


# --- TLS and mutual TLS with real certificates ----------------------------------------------------


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)


def make_cert(directory: Path, name: str, ca: str, extensions: str, days: int = 2) -> None:
    """``name``.pem and .key, signed by ``ca`` for ``days`` from now (-1: expired a day ago)."""
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=directory)
    (directory / f"{name}.ext").write_text(extensions + "\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", str(days), "-extfile", f"{name}.ext", cwd=directory)


def make_server_pki(root: Path, *other_cas: str) -> Path:
    """In ``root``: server-ca.pem, and server.pem / server.key it signed for 127.0.0.1; then ``other_cas``."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    make_ca(root, "server-ca")
    make_cert(root, "server", "server-ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth")
    for ca in other_cas:
        make_ca(root, ca)
    return root


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    root = make_server_pki(tmp_path_factory.mktemp("pki"), "client-ca", "rogue-ca")
    make_cert(root, "client", "client-ca", "extendedKeyUsage=clientAuth")
    make_cert(root, "rogue", "rogue-ca", "extendedKeyUsage=clientAuth")
    return root


def secure_channel(server: FeedServer, pki: Path, client: str | None = None) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(pki / "server-ca.pem").read_bytes(),
        private_key=(pki / f"{client}.key").read_bytes() if client else None,
        certificate_chain=(pki / f"{client}.pem").read_bytes() if client else None,
    )
    return grpc.secure_channel(f"127.0.0.1:{server.port}", credentials)


def test_tls_serves_encrypted_only_with_tokens(world, pki):
    tokens = tuple(auth.parse_tokens(TOKENS_TEXT, "t"))
    with serving(world, tokens=tokens, tls_cert=str(pki / "server.pem"), tls_key=str(pki / "server.key")) as server:
        with secure_channel(server, pki) as channel:
            stub = feed_pb2_grpc.FeedServiceStub(channel)
            assert len(get_feed(stub, READ).items) == 5
            assert code_of(get_feed, stub) == grpc.StatusCode.UNAUTHENTICATED
            check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert check.status == health_pb2.HealthCheckResponse.SERVING
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as plain:  # plaintext is not spoken
            assert code_of(get_feed, feed_pb2_grpc.FeedServiceStub(plain), READ) == grpc.StatusCode.UNAVAILABLE
        wrong_ca = grpc.ssl_channel_credentials(root_certificates=(pki / "rogue-ca.pem").read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{server.port}", wrong_ca) as untrusted:  # the client checks the server
            assert code_of(get_feed, feed_pb2_grpc.FeedServiceStub(untrusted), READ) == grpc.StatusCode.UNAVAILABLE


def test_the_feed_command_sends_a_token_and_speaks_tls(world, pki, monkeypatch, capsys):
    from serving import client

    tokens = tuple(auth.parse_tokens(TOKENS_TEXT, "t"))
    with serving(world, tokens=tokens, tls_cert=str(pki / "server.pem"), tls_key=str(pki / "server.key"),
                 tls_client_ca=str(pki / "client-ca.pem")) as server:
        args = ["--target", f"127.0.0.1:{server.port}", "--user", "u00001", "--limit", "3",
                "--tls-ca", str(pki / "server-ca.pem"), "--tls-client-cert", str(pki / "client.pem"),
                "--tls-client-key", str(pki / "client.key")]
        client.main([*args, "--token", READ])
        assert capsys.readouterr().out.startswith("Feed for u00001")
        monkeypatch.setenv(client.TOKEN_VARIABLE, READ)  # kept out of the process list
        client.main(args)
        assert " 3. " in capsys.readouterr().out
        monkeypatch.delenv(client.TOKEN_VARIABLE)
        with pytest.raises(SystemExit, match="UNAUTHENTICATED: missing bearer token") as refused:
            client.main(args)
        assert str(refused.value).endswith("(give this command the token with --token or FEEDRANK_CLIENT_TOKEN)")  # not a header to write
        with pytest.raises(SystemExit, match="UNAVAILABLE"):  # plaintext against a TLS server
            client.main(["--target", f"127.0.0.1:{server.port}", "--user", "u00001", "--token", READ])
    with pytest.raises(SystemExit):
        client.main(["--user", "u00001", "--tls-ca", str(pki / "missing.pem")])
    error = capsys.readouterr().err
    assert "--tls-ca" in error and "missing.pem: No such file or directory" in error


def test_mutual_tls_requires_a_client_certificate_from_the_client_ca(world, pki):
    with serving(world, tls_cert=str(pki / "server.pem"), tls_key=str(pki / "server.key"),
                 tls_client_ca=str(pki / "client-ca.pem")) as server:
        with secure_channel(server, pki, client="client") as channel:
            assert len(get_feed(feed_pb2_grpc.FeedServiceStub(channel)).items) == 5
        with secure_channel(server, pki) as anonymous:  # no client certificate
            assert code_of(get_feed, feed_pb2_grpc.FeedServiceStub(anonymous)) == grpc.StatusCode.UNAVAILABLE
            health = health_pb2_grpc.HealthStub(anonymous)
            assert code_of(health.Check, health_pb2.HealthCheckRequest(), timeout=5) == grpc.StatusCode.UNAVAILABLE
        with secure_channel(server, pki, client="rogue") as rogue:  # a certificate from another CA
            assert code_of(get_feed, feed_pb2_grpc.FeedServiceStub(rogue)) == grpc.StatusCode.UNAVAILABLE


def https_feed_status(port: int, pki: Path, client: str | None = None) -> int | str:
    """The HTTP status of a feed over HTTPS, or the error that ended the TLS handshake."""
    context = ssl.create_default_context(cafile=str(pki / "server-ca.pem"))
    if client:
        context.load_cert_chain(str(pki / f"{client}.pem"), str(pki / f"{client}.key"))
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        connection.request("GET", "/v1/users/u00001/feed?page_size=2")
        return connection.getresponse().status
    except (ssl.SSLError, ConnectionError) as error:
        return type(error).__name__
    finally:
        connection.close()


def test_mutual_tls_covers_the_http_port_too(world, pki):
    with serving(world, tls_cert=str(pki / "server.pem"), tls_key=str(pki / "server.key"),
                 tls_client_ca=str(pki / "client-ca.pem"), http_port=free_port()) as server:
        port = server.config.http_port
        assert https_feed_status(port, pki, client="client") == 200
        assert https_feed_status(port, pki) != 200  # no client certificate
        assert https_feed_status(port, pki, client="rogue") != 200  # one from another CA


def test_plain_http_on_the_tls_http_port_is_logged_not_written_raw(world, pki, capfd, caplog):
    caplog.set_level(logging.INFO, logger="feedrank.http")
    with serving(world, tls_cert=str(pki / "server.pem"), tls_key=str(pki / "server.key"), http_port=free_port()) as server:
        with socket.create_connection(("127.0.0.1", server.config.http_port), timeout=10) as plain:
            plain.sendall(b"GET /v1/users/u00001/feed HTTP/1.1\r\nHost: x\r\n\r\n")
            with contextlib.suppress(ConnectionError):  # cheroot answers a plain 400 and closes
                assert plain.recv(1024).startswith(b"HTTP/1.1 400")
    assert "plain HTTP" not in capfd.readouterr().err  # not a raw line in a --log-format json stream
    assert any("attempted to speak plain HTTP" in r.getMessage() for r in caplog.records if r.name == "feedrank.http")


def plain_http_request(port: int) -> bytes:
    """What the TLS HTTP port answers a plain HTTP request (cheroot closes after it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as plain:
        plain.sendall(b"GET /v1/users/u00001/feed HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        with contextlib.suppress(ConnectionError):
            while chunk := plain.recv(4096):
                answer += chunk
        return answer


def aborted_handshake(port: int) -> None:
    """A client that sends its TLS hello and closes without waiting for the server's."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(outgoing.read())


def test_the_lines_of_failed_handshakes_on_the_tls_http_port_are_rate_limited_and_summarised(world, pki, caplog):
    # One line per connection that spoke plain HTTP or left during the handshake: anyone who
    # reaches the port had the server write 1,250 such lines (160 KB) a second.
    plain, aborted = 200, 50
    caplog.set_level(logging.INFO, logger="feedrank.http")
    with serving(world, tls_cert=str(pki / "server.pem"), tls_key=str(pki / "server.key"), http_port=free_port()) as server:
        server.http.server.failed_handshakes.clock = lambda: 1000.0  # one second that never ends, however slow the clients
        port = server.config.http_port
        with ThreadPoolExecutor(max_workers=16) as pool:
            answers = pool.map(lambda job: job(port), [plain_http_request] * plain + [aborted_handshake] * aborted)
            assert sum(answer is not None and answer.startswith(b"HTTP/1.1 400") for answer in answers) == plain
        assert https_feed_status(port, pki) == 200  # a client that speaks TLS is served, and its handshake writes nothing
    messages = [record for record in caplog.records if record.name == "feedrank.http"]
    written = collections.Counter("plain_http" if "plain HTTP" in record.getMessage() else "handshake_lost"
                                  for record in messages if not hasattr(record, "fields"))
    summaries = [record.fields for record in messages if hasattr(record, "fields")]
    suppressed = collections.Counter()
    for summary in summaries:
        suppressed[summary["kind"]] += summary["suppressed"]
        assert summary["first_peer"].startswith("ipv4:127.0.0.1:") and summary["peers"] == 1, summary
    limit = logs.TOKENLESS_LINES_PER_SECOND
    assert written == {"plain_http": limit, "handshake_lost": limit}
    assert suppressed == {"plain_http": plain - limit, "handshake_lost": aborted - limit}


def test_a_client_that_connects_and_sends_nothing_holds_up_no_other_client_of_the_tls_http_port(world, pki):
    with serving(world, tls_cert=str(pki / "server.pem"), tls_key=str(pki / "server.key"), http_port=free_port()) as server:
        port = server.config.http_port
        with socket.create_connection(("127.0.0.1", port), timeout=30):  # a port probe: no TLS hello
            time.sleep(0.2)  # accepted first
            started = time.monotonic()
            assert https_feed_status(port, pki) == 200
            assert time.monotonic() - started < 2  # not after the silent client's 10 s timeout


def test_a_plaintext_client_on_the_tls_port_leaves_only_json_lines_in_the_log(world, pki, tmp_path, monkeypatch):
    monkeypatch.delenv("GRPC_VERBOSITY", raising=False)
    port_file = tmp_path / "port"
    args = ["--models", str(world.models_dir), "--data", str(world.data_dir), "--port", "0", "--port-file", str(port_file),
            "--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"), "--log-format", "json",
            "--feed-processes", "0", "--reload-seconds", "0"]
    with running_tool("serving", args) as run:
        run.wait(port_file.exists)
        with grpc.insecure_channel(f"127.0.0.1:{port_file.read_text()}") as plain:
            assert code_of(get_feed, feed_pb2_grpc.FeedServiceStub(plain)) == grpc.StatusCode.UNAVAILABLE
        run.process.send_signal(signal.SIGTERM)
        _, stderr = run.finish()
    assert run.process.returncode == 0
    assert [line for line in stderr.splitlines() if not line.startswith("{")] == []  # gRPC core's "Handshake failed" was one


def test_bad_tls_files_fail_at_start_with_one_clear_message(world, pki):
    config = dict(models_dir=str(world.models_dir), data_dir=str(world.data_dir), port=0, token_secret=TOKEN_SECRET)
    # Two good PEM files that are no pair were called "not a PEM certificate and its unencrypted private key".
    with pytest.raises(ValueError, match=r"--tls-cert .*server\.pem / --tls-key .*client\.key: the private key does not match the certificate"):
        FeedServer(ServerConfig(**config, tls_cert=str(pki / "server.pem"), tls_key=str(pki / "client.key")))
    with pytest.raises(ValueError, match=r"--tls-cert .*server\.key / --tls-key .*server\.key: not a PEM certificate and its unencrypted private key"):
        FeedServer(ServerConfig(**config, tls_cert=str(pki / "server.key"), tls_key=str(pki / "server.key")))
    with pytest.raises(ValueError, match=r"--tls-key .*missing\.key: No such file or directory"):
        FeedServer(ServerConfig(**config, tls_cert=str(pki / "server.pem"), tls_key=str(pki / "missing.key")))
    with pytest.raises(ValueError, match=r"--tls-client-ca .*server\.ext: not PEM CA certificates"):
        FeedServer(ServerConfig(**config, tls_cert=str(pki / "server.pem"), tls_key=str(pki / "server.key"),
                                tls_client_ca=str(pki / "server.ext")))
