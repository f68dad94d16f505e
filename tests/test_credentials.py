"""Credentials replaced on disk while the server runs (serving/credentials.py): the tokens
file and the TLS files, over real gRPC and HTTP(S), polled every POLL_SECONDS. Files are replaced whole (by a
rename), as deployment tools do: a poll could otherwise read one half-written."""

from __future__ import annotations

import http.client
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from protos.feed.v1 import feed_pb2_grpc
from serving import auth
from serving.config import TOKENS_ENV
from tests.feed_world import build_world
from tests.redis_servers import free_port
from tests.test_auth_tls import (
    BOTH,
    READ,
    WRITE,
    code_of,
    get_feed,
    https_feed_status,
    ingest,
    make_cert,
    make_server_pki,
    serving,
)

POLL_SECONDS = 0.05
WAIT_SECONDS = 5.0  # far above the poll interval, for a loaded machine


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("credentials-world"), users=120, sellers=12, items=300)


def eventually(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not check():
        assert time.monotonic() < deadline, "the server did not take the new file within the wait"
        time.sleep(POLL_SECONDS / 2)


def replace_by_rename(path: Path, text: str) -> None:
    """As an editor or a deployment tool writes a file: whole, under another name, then renamed."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    tmp.replace(path)


def swap_kubernetes_volume(directory: Path, files: dict[str, str | Path], version: str) -> None:
    """As the kubelet updates a Secret or ConfigMap volume (cert-manager's certificates are
    one): each file NAME links to ``..data/NAME``, and ``..data`` to a directory of the
    version; a new version's directory is written, then ``..data`` is swapped to it by
    renaming a new link over it, so every file changes at once. ``files``: each file's
    text, or a file to copy."""
    (directory / version).mkdir()
    for name, content in files.items():
        if isinstance(content, Path):
            shutil.copyfile(content, directory / version / name)
        else:
            (directory / version / name).write_text(content)
    (directory / "..data_tmp").symlink_to(version)
    os.replace(directory / "..data_tmp", directory / "..data")
    for name in files:
        if not (directory / name).is_symlink():
            (directory / name).symlink_to(Path("..data") / name)


def feed_code(stub: feed_pb2_grpc.FeedServiceStub, token: str) -> grpc.StatusCode:
    try:
        get_feed(stub, token)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def http_feed_status(port: int, token: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/v1/users/u00001/feed?page_size=2", headers={"Authorization": f"Bearer {token}"})
        return connection.getresponse().status
    finally:
        connection.close()


def test_a_changed_tokens_file_is_in_force_on_both_ports_within_the_poll(world, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="feedrank.serving")
    path = tmp_path / "tokens"
    path.write_text(f"{READ} read reader\n")
    inline = tuple(auth.parse_tokens(f"{WRITE} write writer", TOKENS_ENV, separators="\n;"))
    with serving(world, tokens=inline, tokens_file=str(path), credentials_reload_seconds=POLL_SECONDS,
                 http_port=free_port()) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub, http_port = feed_pb2_grpc.FeedServiceStub(channel), server.config.http_port
        assert len(get_feed(stub, READ).items) == 5 and http_feed_status(http_port, READ) == 200
        assert code_of(get_feed, stub, BOTH) == grpc.StatusCode.UNAUTHENTICATED

        replace_by_rename(path, f"{BOTH} read,write both\n")  # READ revoked, BOTH added
        eventually(lambda: http_feed_status(http_port, READ) == 401)
        assert code_of(get_feed, stub, READ) == grpc.StatusCode.UNAUTHENTICATED
        assert len(get_feed(stub, BOTH).items) == 5 and http_feed_status(http_port, BOTH) == 200
        assert ingest(stub, WRITE).applied == 1  # FEEDRANK_TOKENS' tokens stay
        assert any(r.getMessage().endswith("re-read: 2 tokens; added: both; removed: reader") for r in caplog.records)

        replace_by_rename(path, f"{READ} read reader\n{READ} write again\n")  # broken
        failures = {"credential": "tokens"}
        eventually(lambda: server.metrics.registry.get_sample_value("feedrank_credentials_reload_failures_total", failures) == 1)
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and r.name == "feedrank.serving"]
        assert errors == [(f"tokens reload failed: {path}:2: the same token is already listed at {path}:1; "
                           "keeping the tokens in force until the files change again")]
        assert len(get_feed(stub, BOTH).items) == 5 and code_of(get_feed, stub, READ) == grpc.StatusCode.UNAUTHENTICATED
        time.sleep(4 * POLL_SECONDS)  # an unchanged broken file is not read, nor logged, again
        assert server.metrics.registry.get_sample_value("feedrank_credentials_reload_failures_total", failures) == 1

        replace_by_rename(path, f"{WRITE} read clash\n")  # the same token as FEEDRANK_TOKENS has: refused too
        eventually(lambda: server.metrics.registry.get_sample_value("feedrank_credentials_reload_failures_total", failures) == 2)
        assert len(get_feed(stub, BOTH).items) == 5

        replace_by_rename(path, "")  # no token at all would turn auth off: refused
        eventually(lambda: server.metrics.registry.get_sample_value("feedrank_credentials_reload_failures_total", failures) == 3)
        assert code_of(get_feed, stub) == grpc.StatusCode.UNAUTHENTICATED

        path.unlink()
        eventually(lambda: server.metrics.registry.get_sample_value("feedrank_credentials_reload_failures_total", failures) == 4)
        replace_by_rename(path, f"{READ} read reader\n")
        eventually(lambda: http_feed_status(http_port, READ) == 200)
        assert len(get_feed(stub, READ).items) == 5 and code_of(get_feed, stub, BOTH) == grpc.StatusCode.UNAUTHENTICATED


def test_a_tokens_file_in_a_kubernetes_volume_is_re_read_when_its_data_link_is_swapped(world, tmp_path):
    swap_kubernetes_volume(tmp_path, {"tokens": f"{READ} read reader\n"}, "..2026_12_06_01")
    with serving(world, tokens_file=str(tmp_path / "tokens"), credentials_reload_seconds=POLL_SECONDS) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = feed_pb2_grpc.FeedServiceStub(channel)
        assert len(get_feed(stub, READ).items) == 5
        swap_kubernetes_volume(tmp_path, {"tokens": f"{BOTH} read,write both\n"}, "..2026_12_06_02")
        eventually(lambda: feed_code(stub, READ) == grpc.StatusCode.UNAUTHENTICATED)
        assert len(get_feed(stub, BOTH).items) == 5


def test_a_bad_tokens_file_at_start_is_refused_naming_its_line(world, tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"{READ} read reader\n{READ[:8]} read short\n")
    with pytest.raises(auth.TokenError, match=rf"^{path}:2: a token must be at least 16"), serving(world, tokens_file=str(path)):
        pass


# --- TLS ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_pkis(tmp_path_factory) -> tuple[Path, Path]:
    """Two server certificates for 127.0.0.1, each from a CA of its own (a renewal from a new
    CA shows which one a handshake got), and a client certificate from each one's client CA."""
    pkis = []
    for name in ("old", "new"):
        root = make_server_pki(tmp_path_factory.mktemp(f"pki-{name}"), "client-ca")
        make_cert(root, "client", "client-ca", "extendedKeyUsage=clientAuth")
        make_cert(root, "expired", "server-ca", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth", days=-1)
        pkis.append(root)
    return pkis[0], pkis[1]


def tls_volume(pki: Path, with_client_ca: bool = False) -> dict[str, str | Path]:
    files: dict[str, str | Path] = {"tls.crt": pki / "server.pem", "tls.key": pki / "server.key"}
    if with_client_ca:
        files["ca.crt"] = pki / "client-ca.pem"
    return files


def grpc_feed_code(port: int, pki: Path, client: bool = False) -> grpc.StatusCode:
    """A GetFeed's status over a new connection that trusts ``pki``'s server CA (and presents its client certificate)."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(pki / "server-ca.pem").read_bytes(),
        private_key=(pki / "client.key").read_bytes() if client else None,
        certificate_chain=(pki / "client.pem").read_bytes() if client else None,
    )
    # A pool of its own: a new connection, whatever other channels of this process hold.
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        try:
            get_feed(feed_pb2_grpc.FeedServiceStub(channel))
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def test_a_renewed_certificate_is_served_to_new_connections_on_both_ports(world, two_pkis, tmp_path, caplog):
    old, new = two_pkis
    swap_kubernetes_volume(tmp_path, tls_volume(old), "..2026_10_01")
    with serving(world, tls_cert=str(tmp_path / "tls.crt"), tls_key=str(tmp_path / "tls.key"),
                 credentials_reload_seconds=POLL_SECONDS, http_port=free_port()) as server:
        http_port = server.config.http_port
        assert grpc_feed_code(server.port, old) == grpc.StatusCode.OK and https_feed_status(http_port, old) == 200
        assert grpc_feed_code(server.port, new) == grpc.StatusCode.UNAVAILABLE
        open_credentials = grpc.ssl_channel_credentials(root_certificates=(old / "server-ca.pem").read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{server.port}", open_credentials) as open_channel:
            open_stub = feed_pb2_grpc.FeedServiceStub(open_channel)
            assert len(get_feed(open_stub).items) == 5

            swap_kubernetes_volume(tmp_path, tls_volume(new), "..2026_12_01")  # cert-manager renewed it
            eventually(lambda: grpc_feed_code(server.port, new) == grpc.StatusCode.OK)
            assert grpc_feed_code(server.port, old) == grpc.StatusCode.UNAVAILABLE
            assert https_feed_status(http_port, new) == 200 and https_feed_status(http_port, old) != 200
            assert len(get_feed(open_stub).items) == 5  # an open connection keeps the certificate it shook hands with

        caplog.set_level(logging.ERROR, logger="feedrank.serving")
        mismatched = {"tls.crt": old / "server.pem", "tls.key": new / "server.key"}
        swap_kubernetes_volume(tmp_path, mismatched, "..2026_12_02")
        failures = {"credential": "tls"}
        eventually(lambda: server.metrics.registry.get_sample_value("feedrank_credentials_reload_failures_total", failures) == 1)
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and r.name == "feedrank.serving"]
        assert len(errors) == 1 and errors[0].startswith(f"tls reload failed: --tls-cert {tmp_path / 'tls.crt'} / --tls-key")
        assert errors[0].endswith("keeping the certificate, key and client CA in force until the files change again")
        assert grpc_feed_code(server.port, new) == grpc.StatusCode.OK and https_feed_status(http_port, new) == 200

        swap_kubernetes_volume(tmp_path, {"tls.crt": new / "expired.pem", "tls.key": new / "expired.key"}, "..2026_12_03")
        eventually(lambda: server.metrics.registry.get_sample_value("feedrank_credentials_reload_failures_total", failures) == 2)
        assert caplog.records[-1].getMessage().startswith(f"tls reload failed: --tls-cert {tmp_path / 'tls.crt'}: the certificate expired at ")
        assert grpc_feed_code(server.port, new) == grpc.StatusCode.OK


def test_a_replaced_client_ca_decides_which_client_certificates_are_accepted(world, two_pkis, tmp_path):
    old, new = two_pkis
    swap_kubernetes_volume(tmp_path, tls_volume(old, with_client_ca=True), "..2026_10_01")
    with serving(world, tls_cert=str(tmp_path / "tls.crt"), tls_key=str(tmp_path / "tls.key"), tls_client_ca=str(tmp_path / "ca.crt"),
                 credentials_reload_seconds=POLL_SECONDS, http_port=free_port()) as server:
        http_port = server.config.http_port
        assert grpc_feed_code(server.port, old, client=True) == grpc.StatusCode.OK and https_feed_status(http_port, old, "client") == 200
        swap_kubernetes_volume(tmp_path, {**tls_volume(old), "ca.crt": new / "client-ca.pem"}, "..2026_12_01")
        # The server keeps its certificate (old's CA verifies it); new's client certificate is now the one accepted.
        mixed = tmp_path / "mixed"
        mixed.mkdir()
        shutil.copyfile(old / "server-ca.pem", mixed / "server-ca.pem")
        for name in ("client.pem", "client.key"):
            shutil.copyfile(new / name, mixed / name)
        eventually(lambda: grpc_feed_code(server.port, mixed, client=True) == grpc.StatusCode.OK)
        assert grpc_feed_code(server.port, old, client=True) == grpc.StatusCode.UNAVAILABLE
        assert https_feed_status(http_port, mixed, "client") == 200 and https_feed_status(http_port, old, "client") != 200
