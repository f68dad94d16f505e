"""The server's TLS files (--tls-cert, --tls-key, --tls-client-ca), read and checked together,
and the gRPC credentials whose certificate can be replaced while the server runs.

A new certificate applies to new connections; those open keep the one they shook hands with.
"""

from __future__ import annotations

import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

import grpc


@dataclass(frozen=True)
class TlsFiles:
    """What the TLS files held when read: the PEM bytes gRPC takes, and the same pair and
    CA in an ``ssl.SSLContext`` for the HTTP port."""

    cert_path: str
    cert_chain: bytes = field(repr=False)
    key: bytes = field(repr=False)
    client_ca: bytes | None = field(repr=False)
    context: ssl.SSLContext = field(repr=False)


def _read(flag: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ValueError(f"{flag} {path}: {error.strerror or error}") from None


def read_tls_files(cert: str, key: str | None, client_ca: str | None = None) -> TlsFiles:
    """The certificate chain ``cert``, its private key ``key`` and the client CA bundle,
    checked as a handshake would use them; ValueError naming the flag and file when they
    cannot be read or do not match."""
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
    return TlsFiles(cert, chain, private_key, ca, context)


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
