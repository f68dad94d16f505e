"""HTTP beside gRPC, in the same process: the feed explorer (HTML) and the HTTP/JSON API.

One Flask app (Jinja2 escapes everything it renders), served by cheroot, a threaded
production WSGI server that also speaks TLS, so ``--tls-cert``/``--tls-key`` cover both
ports. Both parts call the same FeedService as the gRPC servicer.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from typing import Any

from cheroot import errors, server, wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter
from flask import Flask
from werkzeug.exceptions import MethodNotAllowed, NotFound

from serving import logs
from serving.native_threads import one_faiss_thread
from serving.web.common import HttpError, WebContext, error_json

log = logging.getLogger("feedrank.http")

HTTP_THREADS = 8
BODY_CAP_FACTOR = 4
FAILED_HANDSHAKES = {
    "plain_http": "that spoke plain HTTP to the TLS port",
    "handshake_lost": "lost during the TLS handshake",
}
"""The kinds of lines of connections to the TLS port that never completed a handshake, and what the summary says of their clients."""


def create_app(context: WebContext) -> Flask:
    from serving.web.api import api, routing_error
    from serving.web.explorer import explorer

    app = Flask(__name__, static_folder=None)  # the explorer serves its assets, with its headers
    app.extensions["feedrank"] = context
    app.register_blueprint(api)
    app.register_blueprint(explorer)
    app.register_error_handler(HttpError, error_json)
    app.register_error_handler(NotFound, routing_error)
    app.register_error_handler(MethodNotAllowed, routing_error)
    app.before_request(one_faiss_thread)  # cheroot's worker threads build feeds too
    return app


class _WorkerHandshakeAdapter(BuiltinSSLAdapter):
    """cheroot's TLS adapter with the handshake left to the worker thread that serves the
    connection. cheroot shakes hands in its one accept loop, so a client that opened a TCP
    connection and sent nothing (a port probe, a browser's spare socket) stalled every other
    client of the port, connected or new, for the whole timeout (cheroot issue #748)."""

    def wrap(self, sock: socket.socket) -> tuple[ssl.SSLSocket, dict[str, Any]]:
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), {}

    def handshake(self, sock: ssl.SSLSocket) -> dict[str, Any]:
        """Shake hands on ``sock``; its WSGI environ entries, as ``wrap`` gives them in cheroot."""
        try:
            sock.do_handshake()
        except ssl.SSLError as error:
            plain_http = error.errno == ssl.SSL_ERROR_SSL and "http request" in str(error)
            raise (errors.NoSSLError if plain_http else errors.FatalSSLAlert)(*error.args) from error
        except OSError as error:  # a timeout, or the peer gone
            raise errors.FatalSSLAlert(*error.args) from error
        return self.get_environ(sock)


class _Request(server.HTTPRequest):
    """cheroot's request, which also refuses a negative Content-Length. cheroot read -1 as "to
    the end of the connection": the request held a thread for the 10 s read timeout, then
    got a 500 with an ERROR traceback."""

    def read_request_headers(self) -> bool:
        if not super().read_request_headers():
            return False
        if int(self.inheaders.get(b"Content-Length", 0)) < 0:
            self.simple_response("400 Bad Request", "Malformed Content-Length Header.")
            return False
        return True


class _Connection(server.HTTPConnection):
    """cheroot's connection, which completes a TLS handshake (see _WorkerHandshakeAdapter) before its first request."""

    RequestHandlerClass = _Request

    def communicate(self) -> bool:
        if self.server.ssl_adapter is None or self.ssl_env:
            return super().communicate()
        client = f"{self.remote_addr}:{self.remote_port}"
        try:
            self.ssl_env = self.server.ssl_adapter.handshake(self.socket)
        except errors.FatalSSLAlert as error:
            self._log_failed_handshake("handshake_lost", f"client {client} lost during the TLS handshake: {error}")
            return False
        except errors.NoSSLError:
            self._log_failed_handshake("plain_http", f"client {client} attempted to speak plain HTTP to the TLS port; answered 400")
            message = b"The client sent a plain HTTP request, but this server only speaks HTTPS on this port."
            head = f"HTTP/1.1 400 Bad Request\r\nContent-Length: {len(message)}\r\nContent-Type: text/plain\r\n\r\n"
            with contextlib.suppress(OSError):  # the client may be gone already
                socket.socket.sendall(self.socket, head.encode("ascii") + message)  # the bare socket: no TLS was agreed
            return False
        return super().communicate()

    def _log_failed_handshake(self, kind: str, message: str) -> None:
        """``message``, unless the lines of ``kind`` are over their budget (see FailedHandshakeLines)."""
        peer = logs.peer_name(self.remote_addr or "", self.remote_port)
        if log.isEnabledFor(logging.INFO) and self.server.failed_handshakes.admit(kind, peer):
            self.server.error_log(message)


class FailedHandshakeLines(logs.LimitedLines):
    """The lines of connections to the TLS port that never completed a handshake (``FAILED_HANDSHAKES``),
    limited as the access lines of calls without a token are: anyone who reaches the port can open
    connections, and one client looping plain HTTP requests had the server write 1,250 lines (160 KB) a second."""

    def summarise(self, kind: str, suppressed: int, first_peer: str, fields: dict[str, Any]) -> None:
        log.info("%d lines of clients %s not written (rate-limited), the first from %s",
                 suppressed, FAILED_HANDSHAKES[kind], first_peer, extra={"fields": {"kind": kind, **fields}})


class _LoggingServer(wsgi.Server):
    """cheroot's server with its own messages (a plain HTTP request on the TLS port, an
    error in a worker thread) on the ``feedrank.http`` logger instead of raw stderr lines,
    so that they follow --log-format and --log-level."""

    ConnectionClass = _Connection
    # cheroot's selector loop wakes this often to expire idle connections and to see a
    # stop: at its 0.5 s, a server's stop waited up to half a second for this port. 20
    # wakes a second cost an idle server about 2 ms of CPU a second.
    expiration_interval = 0.05

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failed_handshakes = FailedHandshakeLines()

    def error_log(self, msg: str = "", level: int = logging.INFO, traceback: bool = False) -> None:
        log.log(level, "%s", msg, exc_info=traceback)


class HttpServer:
    """``app`` on ``host:port`` (0: a free port; ``port`` tells which) in a thread of its own;
    TLS with ``tls``: the certificate files and the context that holds them (and the client
    CA when clients must present a certificate, as on the gRPC port)."""

    def __init__(self, app: Flask, host: str, port: int, tls: tuple[str, str, ssl.SSLContext] | None = None) -> None:
        # cheroot listens with a backlog of 5: load tools open all their connections at once,
        # and the kernel dropped the handshakes past it (retried after 1 s, 3 s, 7 s ...).
        self.server = _LoggingServer((host, port), app, numthreads=HTTP_THREADS, server_name="feedrank",
                                     request_queue_size=socket.SOMAXCONN)
        self.context: WebContext = app.extensions["feedrank"]
        # The API refuses a body over the limit from its Content-Length, in JSON, then reads
        # and drops it (api.py, _discard_body_once_answered). This cap bounds that (a larger
        # body gets cheroot's own plain 413).
        self.server.max_request_body_size = BODY_CAP_FACTOR * self.context.max_body_bytes
        # The request line and headers had no cap at all: one 200 MB query string added 1.9 GB
        # to the process. A GetFeed's largest valid query (1000 excluded ids of 256 bytes,
        # percent-encoded) is under 1 MB; cheroot answers 414 (line) or 413 (headers) past it.
        self.server.max_request_header_size = self.context.max_body_bytes
        if tls:
            cert, key, context = tls
            self.server.ssl_adapter = _WorkerHandshakeAdapter(cert, key)
            self.use_ssl_context(context)
        self.server.prepare()  # binds now, so a taken port fails the start
        self.port = self.server.bind_addr[1]
        self._thread = threading.Thread(target=self.server.serve, name="http", daemon=True)

    def use_ssl_context(self, context: ssl.SSLContext) -> None:
        """Shake hands with ``context`` from the next connection on (cheroot wraps each new
        socket with the adapter's context of the moment; open connections keep theirs)."""
        self.server.ssl_adapter.context = context

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.stop()
        self._thread.join(timeout=5)
        # The last second's, whose summaries were not yet due.
        self.context.tokenless_lines.report_suppressed()
        self.server.failed_handshakes.report_suppressed()
