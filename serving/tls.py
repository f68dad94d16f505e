"""The server's TLS files (--tls-cert, --tls-key, --tls-client-ca), read and checked together,
and the gRPC credentials whose certificate can be replaced while the server runs.

A new certificate applies to new connections; those open keep the one they shook hands with.
"""

from __future__ import annotations

import datetime
import logging
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from cryptography import x509

log = logging.getLogger("feedrank.serving")

EXPIRY_WARNING_DAYS = 14
"""A certificate that expires sooner is logged as a warning at start and at each reload:
cert-manager renews at two thirds of a certificate's life by default (30 days ahead for
90 days), so one this close was not renewed when it should have been."""

@dataclass(frozen=True)
class TlsFiles:
    """What the TLS files held when read: the PEM bytes gRPC takes, the same pair and CA in
    an ``ssl.SSLContext`` for the HTTP port, and when the chain expires."""

    cert_path: str
    cert_chain: bytes = field(repr=False)
    key: bytes = field(repr=False)
    client_ca: bytes | None = field(repr=False)
    context: ssl.SSLContext = field(repr=False)
    not_after: datetime.datetime  # the earliest notAfter of the chain's certificates (UTC)

    def seconds_left(self, now: datetime.datetime | None = None) -> float:
        return (self.not_after - (now or datetime.datetime.now(datetime.UTC))).total_seconds()


def _read(flag: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ValueError(f"{flag} {path}: {error.strerror or error}") from None


def read_tls_files(cert: str, key: str | None, client_ca: str | None = None, now: datetime.datetime | None = None) -> TlsFiles:
    """The certificate chain ``cert``, its private key ``key`` and the client CA bundle,
    checked as a handshake would use them; ValueError naming the flag and file when they
    cannot be read, do not match, or a certificate of the chain has expired."""
    if not key:
        raise ValueError(f"--tls-cert {cert} needs --tls-key")
    chain, private_key = _read("--tls-cert", cert), _read("--tls-key", key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:  # gRPC would only fail at the first handshake: check the pair now
        context.load_cert_chain(cert, key, password=lambda: b"")
    except (ssl.SSLError, ValueError) as error:
        raise ValueError(f"--tls-cert {cert} / --tls-key {key}: {_pair_problem(error)}") from None
    ca = None
    if client_ca:
        ca = _read("--tls-client-ca", client_ca)
        try:
            context.load_verify_locations(cadata=ca.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError) as error:
            raise ValueError(f"--tls-client-ca {client_ca}: not PEM CA certificates ({getattr(error, 'reason', None) or error})") from None
        context.verify_mode = ssl.CERT_REQUIRED
    try:
        not_after = chain_not_after(chain)
    except ValueError as error:
        raise ValueError(f"--tls-cert {cert}: {error}") from None
    files = TlsFiles(cert, chain, private_key, ca, context, not_after)
    if files.seconds_left(now) <= 0:
        raise ValueError(f"--tls-cert {cert}: the certificate expired at {not_after:%Y-%m-%d %H:%M:%S} UTC; renew it")
    return files


def _pair_problem(error: ssl.SSLError | ValueError) -> str:
    """What is wrong with a certificate and key that do not load: OpenSSL's reason alone
    (KEY_VALUES_MISMATCH) left an operator reading that two good PEM files were not PEM."""
    reason = getattr(error, "reason", None)
    if reason == "KEY_VALUES_MISMATCH":
        return "the private key does not match the certificate (a key of another certificate, or the old one of a renewal?)"
    return f"not a PEM certificate and its unencrypted private key ({reason or error})"


def log_expiry(files: TlsFiles, now: datetime.datetime | None = None) -> None:
    """One line with the certificate's expiry: a warning when it is under EXPIRY_WARNING_DAYS away."""
    days = files.seconds_left(now) / 86_400
    report = log.warning if days < EXPIRY_WARNING_DAYS else log.info
    report("TLS certificate %s expires at %s UTC, in %.1f days%s", files.cert_path, f"{files.not_after:%Y-%m-%d %H:%M:%S}",
           days, "; renew it" if days < EXPIRY_WARNING_DAYS else "")


def chain_not_after(pem: bytes) -> datetime.datetime:
    """The earliest notAfter of a PEM chain's certificates (UTC): Python's ssl module
    decodes a certificate only for a peer's handshake."""
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise ValueError("not a PEM X.509 certificate chain") from None
    return min(certificate.not_valid_after_utc for certificate in certificates)


def _configuration(files: TlsFiles) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration([(files.key, files.cert_chain)], root_certificates=files.client_ca)


class GrpcCertificates:
    """gRPC server credentials serving ``files``, then whatever ``use`` gives, from the next
    connection on. gRPC asks ``_fetch`` before every handshake; it answers None (no change)
    but once after each ``use``, so a connection costs no file read."""

    def __init__(self, files: TlsFiles) -> None:
        self._lock = threading.Lock()  # gRPC's threads call _fetch while a reload calls use
        self._next: grpc.ServerCertificateConfiguration | None = None
        self.credentials = grpc.dynamic_ssl_server_credentials(
            _configuration(files), self._fetch, require_client_authentication=files.client_ca is not None
        )

    def use(self, files: TlsFiles) -> None:
        with self._lock:
            self._next = _configuration(files)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            configuration, self._next = self._next, None
        return configuration
