"""The TLS files' expiry (serving/tls.py): read from the certificates openssl makes here,
logged at start, refused once past, and a gauge of the seconds left."""

from __future__ import annotations

import datetime
import logging
import subprocess
from pathlib import Path

import pytest

from serving.config import ServerConfig
from serving.server import FeedServer
from serving.tls import chain_not_after, read_tls_files
from tests.feed_world import TOKEN_SECRET, build_world
from tests.test_auth_tls import make_cert, make_server_pki, serving


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("tls-world"), users=120, sellers=12, items=300)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    root = make_server_pki(tmp_path_factory.mktemp("pki"))
    server = "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"
    make_cert(root, "expired", "server-ca", server, days=-1)
    make_cert(root, "lasting", "server-ca", server, days=20_000)  # past 2049: a GeneralizedTime, not a UTCTime
    return root


def openssl_not_after(path: Path) -> datetime.datetime:
    line = subprocess.run(["openssl", "x509", "-in", str(path), "-noout", "-enddate"], capture_output=True, text=True,
                          check=True, timeout=60).stdout.strip()
    return datetime.datetime.strptime(line.removeprefix("notAfter="), "%b %d %H:%M:%S %Y GMT").replace(tzinfo=datetime.UTC)


def read_tls_files_not_after(pki: Path, chain: bytes) -> datetime.datetime:
    path = pki / "chain.pem"
    path.write_bytes(chain)
    return read_tls_files(str(path), str(pki / "lasting.key")).not_after


def test_the_not_after_read_from_a_certificate_is_what_openssl_reads(pki):
    for name in ("server", "expired", "lasting", "server-ca"):
        assert chain_not_after((pki / f"{name}.pem").read_bytes()) == openssl_not_after(pki / f"{name}.pem"), name
    assert openssl_not_after(pki / "lasting.pem").year > 2049
    chain = (pki / "lasting.pem").read_bytes() + (pki / "server-ca.pem").read_bytes()
    assert read_tls_files_not_after(pki, chain) == openssl_not_after(pki / "server-ca.pem")  # the earliest of the chain
    for garbage in (b"", b"-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n", (pki / "server.key").read_bytes()):
        with pytest.raises(ValueError, match="not a PEM X.509 certificate chain"):
            chain_not_after(garbage)


def test_an_expired_certificate_stops_the_start_naming_the_file(world, pki):
    config = ServerConfig(models_dir=str(world.models_dir), data_dir=str(world.data_dir), port=0, token_secret=TOKEN_SECRET,
                          tls_cert=str(pki / "expired.pem"), tls_key=str(pki / "expired.key"))
    expected = openssl_not_after(pki / "expired.pem")
    with pytest.raises(ValueError) as error:
        FeedServer(config)
    assert str(error.value) == f"--tls-cert {pki / 'expired.pem'}: the certificate expired at {expected:%Y-%m-%d %H:%M:%S} UTC; renew it"


def test_the_expiry_is_logged_at_start_warned_when_near_and_scraped_as_seconds_left(world, pki, caplog):
    caplog.set_level(logging.INFO, logger="feedrank.serving")
    with serving(world, tls_cert=str(pki / "server.pem"), tls_key=str(pki / "server.key")) as server:
        left = server.metrics.registry.get_sample_value("feedrank_tls_certificate_expires_in_seconds")
        expected = (openssl_not_after(pki / "server.pem") - datetime.datetime.now(datetime.UTC)).total_seconds()
        assert abs(left - expected) < 60
    [line] = [r for r in caplog.records if "expires at" in r.getMessage()]
    assert line.levelno == logging.WARNING and line.getMessage().startswith(f"TLS certificate {pki / 'server.pem'} expires at ")
    assert line.getMessage().endswith(" in 2.0 days; renew it")
    caplog.clear()
    with serving(world, tls_cert=str(pki / "lasting.pem"), tls_key=str(pki / "lasting.key")):
        pass
    [line] = [r for r in caplog.records if "expires at" in r.getMessage()]
    assert line.levelno == logging.INFO and line.getMessage().endswith(" days")


def test_without_tls_there_is_no_expiry_series(world):
    with serving(world) as server:
        assert server.metrics.registry.get_sample_value("feedrank_tls_certificate_expires_in_seconds") is None
