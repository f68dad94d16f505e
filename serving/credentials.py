"""Credentials re-read while the server runs: the bearer tokens file and the TLS files.

``CredentialsWatcher`` polls their signatures, as ``ModelWatcher`` polls models/CURRENT,
and has each changed source re-read its files. A file that fails (unreadable, malformed, a
key that does not match its certificate, an expired certificate) is logged in one line
naming it and counted in ``feedrank_credentials_reload_failures``; the credentials in
force stay, and the file is tried again once it changes again.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from serving import auth
from serving.tls import GrpcCertificates, TlsFiles, log_expiry, read_tls_files
from serving.watched_files import WatchedFiles

log = logging.getLogger("feedrank.serving")


class CredentialSource(Protocol):
    name: str  # labels the failure metric: "tokens" or "tls"
    what: str  # what stays in force when a reload fails, for the log
    files: WatchedFiles

    def reload(self) -> None:
        """Read the files again and put what they hold in force; ValueError (naming the
        file) leaves the credentials in force as they were."""


class TokensFileSource:
    """The tokens of ``path`` together with ``fixed`` ones (FEEDRANK_TOKENS'), checked by
    ``interceptor``, which serves both ports. The file must list a token: auth never turns off."""

    name = "tokens"
    what = "tokens"

    def __init__(self, path: str, fixed: Sequence[auth.Token] = ()) -> None:
        """TokenError (a ValueError) when the file is bad now: the server does not start."""
        self.files = WatchedFiles(path)
        self.path = path
        self.fixed = tuple(fixed)
        self.interceptor = auth.AuthInterceptor(self._read())

    def _read(self) -> tuple[auth.Token, ...]:
        return auth.merge_tokens(auth.read_tokens_file(self.path), self.fixed)

    def reload(self) -> None:
        tokens = self._read()
        old = {token.digest: token.name for token in self.interceptor.tokens}
        new = {token.digest: token.name for token in tokens}
        self.interceptor.use(tokens)
        added = [name for digest, name in new.items() if digest not in old]
        removed = [name for digest, name in old.items() if digest not in new]
        log.info("tokens file %s re-read: %d tokens; added: %s; removed: %s", self.path, len(tokens),
                 ", ".join(added) or "none", ", ".join(removed) or "none")


class TlsFilesSource:
    """The TLS files: gRPC's credentials and the HTTP port's context (``on_context``) take a
    new certificate, key and client CA for new connections."""

    name = "tls"
    what = "certificate, key and client CA"

    def __init__(self, cert: str, key: str | None, client_ca: str | None = None) -> None:
        """ValueError naming the flag and file when they are bad now: the server does not start."""
        self.files = WatchedFiles(*(path for path in (cert, key, client_ca) if path))
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self.current: TlsFiles = read_tls_files(cert, key, client_ca)
        log_expiry(self.current)
        self.grpc = GrpcCertificates(self.current)
        self.on_context: list[Callable[[ssl.SSLContext], None]] = []  # the HTTP port's, when it serves

    def reload(self) -> None:
        files = read_tls_files(self.cert, self.key, self.client_ca)
        self.grpc.use(files)
        for use in self.on_context:
            use(files.context)
        self.current = files
        log.info("TLS files %s re-read: new connections get the new certificate", ", ".join(self.files.paths))
        log_expiry(files)


class CredentialsWatcher(threading.Thread):
    """Every ``every_seconds``, re-reads each source whose files changed (``check``);
    ``failed(name)`` counts a failed reload."""

    def __init__(self, sources: Sequence[CredentialSource], every_seconds: float, failed: Callable[[str], None]) -> None:
        super().__init__(name="credentials-watcher", daemon=True)
        self.sources = tuple(sources)
        self.every_seconds = every_seconds
        self.failed = failed
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.every_seconds):
            self.check()

    def check(self) -> None:
        for source in self.sources:
            if not source.files.changed():
                continue
            try:
                source.reload()
            except ValueError as error:  # TokenError too; every message names the file (and line)
                self.failed(source.name)
                log.error("%s reload failed: %s; keeping the %s in force until the files change again", source.name, error, source.what)
