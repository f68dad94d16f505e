"""The server's TLS files (--tls-cert, --tls-key, --tls-client-ca), read and checked together,
and the gRPC credentials whose certificate can be replaced while the server runs.

A new certificate applies to new connections; those open keep the one they shook hands with.
"""

from __future__ import annotations

import datetime
import logging
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

log = logging.getLogger("feedrank.serving")

EXPIRY_WARNING_DAYS = 14
"""A certificate that expires sooner is logged as a warning at start and at each reload:
cert-manager renews at two thirds of a certificate's life by default (30 days ahead for
90 days), so one this close was not renewed when it should have been."""

_PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"
_SEQUENCE, _UTC_TIME, _GENERALIZED_TIME, _VERSION_TAG = 0x30, 0x17, 0x18, 0xA0


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
        raise ValueError(
            f"--tls-cert {cert} / --tls-key {key}: not a PEM certificate and its unencrypted "
            f"private key ({getattr(error, 'reason', None) or error})"
        ) from None
    ca = None
    if client_ca:
        ca = _read("--tls-client-ca", client_ca)
        try:
            context.load_verify_locations(cadata=ca.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError) as error:
            raise ValueError(f"--tls-client-ca {client_ca}: not PEM CA certificates ({getattr(error, 'reason', None) or error})") from None
        context.verify_mode = ssl.CERT_REQUIRED
    try:
        not_after = min(certificate_not_after(der) for der in pem_certificates(chain))
    except ValueError as error:
        raise ValueError(f"--tls-cert {cert}: {error}") from None
    files = TlsFiles(cert, chain, private_key, ca, context, not_after)
    if files.seconds_left(now) <= 0:
        raise ValueError(f"--tls-cert {cert}: the certificate expired at {not_after:%Y-%m-%d %H:%M:%S} UTC; renew it")
    return files


def log_expiry(files: TlsFiles, now: datetime.datetime | None = None) -> None:
    """One line with the certificate's expiry: a warning when it is under EXPIRY_WARNING_DAYS away."""
    days = files.seconds_left(now) / 86_400
    report = log.warning if days < EXPIRY_WARNING_DAYS else log.info
    report("TLS certificate %s expires at %s UTC, in %.1f days%s", files.cert_path, f"{files.not_after:%Y-%m-%d %H:%M:%S}",
           days, "; renew it" if days < EXPIRY_WARNING_DAYS else "")


def pem_certificates(pem: bytes) -> Iterator[bytes]:
    """The DER bytes of each certificate of a PEM chain; ValueError if it holds none."""
    text = pem.decode("ascii", "replace")
    blocks = text.split(_PEM_CERTIFICATE)[1:]
    if not blocks:
        raise ValueError("holds no PEM certificate")
    for block in blocks:
        yield ssl.PEM_cert_to_DER_cert(_PEM_CERTIFICATE + block.split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n")


def _der_elements(der: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(tag, content start, content end) of each DER element from ``start`` to ``end``."""
    while start < end:
        tag, length = der[start], der[start + 1]
        start += 2
        if length & 0x80:
            size = length & 0x7F
            length = int.from_bytes(der[start:start + size], "big")
            start += size
        if start + length > end:
            raise ValueError("a certificate is truncated")
        yield tag, start, start + length
        start += length


def certificate_not_after(der: bytes) -> datetime.datetime:
    """The notAfter of a DER certificate (RFC 5280: Certificate > TBSCertificate > Validity),
    read here because Python's ssl module decodes a certificate only for a peer's handshake."""
    try:
        _, start, end = next(_der_elements(der, 0, len(der)))  # Certificate
        _, start, end = next(_der_elements(der, start, end))  # TBSCertificate
        fields = list(_der_elements(der, start, end))
        if fields[0][0] == _VERSION_TAG:
            fields = fields[1:]
        validity_tag, start, end = fields[3]  # after serialNumber, signature, issuer
        _not_before, (tag, start, end) = _der_elements(der, start, end)
        text = der[start:end].decode("ascii")
        if validity_tag != _SEQUENCE or tag not in (_UTC_TIME, _GENERALIZED_TIME) or not text.endswith("Z"):
            raise ValueError
        if tag == _UTC_TIME:  # two-digit years: 50-99 are 1950-1999 (RFC 5280, 4.1.2.5.1)
            text = ("19" if int(text[:2]) >= 50 else "20") + text
        return datetime.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=datetime.UTC)
    except (StopIteration, IndexError, ValueError, UnicodeDecodeError):
        raise ValueError("not an X.509 certificate with a readable validity period") from None


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
