"""HTTP beside gRPC, in the same process: the feed explorer (HTML) and the HTTP/JSON API.

One Flask app (Jinja2 escapes everything it renders), served by cheroot, a threaded
production WSGI server that also speaks TLS, so ``--tls-cert``/``--tls-key`` cover both
ports. Both parts call the same FeedService as the gRPC servicer.
"""

from __future__ import annotations

import logging
import threading

from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter
from flask import Flask

from serving.web.common import HttpError, WebContext, error_json

log = logging.getLogger("feedrank.http")

HTTP_THREADS = 8


def create_app(context: WebContext) -> Flask:
    from serving.web.api import api
    from serving.web.explorer import explorer

    app = Flask(__name__, static_folder=None)  # the explorer serves its assets, with its headers
    app.extensions["feedrank"] = context
    app.register_blueprint(api)
    app.register_blueprint(explorer)
    app.register_error_handler(HttpError, error_json)
    return app


class HttpServer:
    """``app`` on ``host:port`` (0: a free port; ``port`` tells which) in a thread of its own."""

    def __init__(self, app: Flask, host: str, port: int, tls_cert: str | None = None, tls_key: str | None = None) -> None:
        self.server = wsgi.Server((host, port), app, numthreads=HTTP_THREADS, server_name="feedrank")
        if tls_cert:
            self.server.ssl_adapter = BuiltinSSLAdapter(tls_cert, tls_key)
        self.server.prepare()  # binds now, so a taken port fails the start
        self.port = self.server.bind_addr[1]
        self._thread = threading.Thread(target=self.server.serve, name="http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.stop()
        self._thread.join(timeout=5)
