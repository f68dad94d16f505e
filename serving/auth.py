"""Bearer tokens with scopes, checked by a gRPC server interceptor.

Tokens come from a file (``--tokens-file``) and/or the ``FEEDRANK_TOKENS`` environment
variable, one token per entry::

    # TOKEN                            SCOPES       [NAME]
    3f9c0d2e6b1a4c8e9f7d5b3a1c2e4f60   read         feed-web
    a1b2c3d4e5f60718293a4b5c6d7e8f90   read,write   ingest-worker

A file has one entry per line (``#`` starts a comment); ``FEEDRANK_TOKENS`` separates
entries with newlines or ``;``. SCOPES is a comma-separated subset of ``read`` (GetFeed)
and ``write`` (Ingest). NAME labels the client in access logs (default: where the entry
is). A token is at least 16 printable ASCII characters without spaces.

Clients send ``authorization: Bearer TOKEN`` metadata. No or an unknown token:
UNAUTHENTICATED; a token without the method's scope: PERMISSION_DENIED. Health and
reflection stay open. Only SHA-256 digests of the tokens are kept, compared in constant
time, and no token is ever logged or put in an error message.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from protos.feed.v1 import feed_pb2
from serving import logs

log = logging.getLogger("feedrank.auth")

SCOPES = ("read", "write")
MIN_TOKEN_CHARS = 16
FEED_SERVICE = feed_pb2.DESCRIPTOR.services_by_name["FeedService"].full_name
# The scope each FeedService method needs. A method missing here is refused to every token.
METHOD_SCOPES = {f"/{FEED_SERVICE}/GetFeed": "read", f"/{FEED_SERVICE}/Ingest": "write"}
# Services anyone may call: load balancers and tools need them without a token.
OPEN_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection")
_OPEN_PREFIXES = tuple(f"/{name}/" for name in OPEN_SERVICES)


def is_open_method(method: str) -> bool:
    return method.startswith(_OPEN_PREFIXES)


class TokenError(ValueError):
    """A malformed tokens file or FEEDRANK_TOKENS entry (the message never holds a token)."""


@dataclass(frozen=True)
class Token:
    name: str
    digest: bytes = field(repr=False)  # SHA-256 of the token; the token itself is not kept
    scopes: frozenset[str]


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def parse_tokens(text: str, source: str, separators: str = "\n") -> list[Token]:
    """Entries of ``text`` (``source`` names it in errors: a path or a variable)."""
    lines = [text]
    for separator in separators:
        lines = [part for line in lines for part in line.split(separator)]
    tokens: list[Token] = []
    seen: dict[bytes, str] = {}
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source}:{number}" if separators == "\n" else f"{source} entry {number}"
        parts = line.split()
        if len(parts) not in (2, 3):
            raise TokenError(f"{where}: expected 'TOKEN SCOPES [NAME]', got {len(parts)} fields")
        secret, scopes_text = parts[0], parts[1]
        if len(secret) < MIN_TOKEN_CHARS or not secret.isascii() or not secret.isprintable():
            raise TokenError(f"{where}: a token must be at least {MIN_TOKEN_CHARS} printable ASCII characters")
        scopes = frozenset(s for s in scopes_text.split(",") if s)
        unknown = sorted(scopes - set(SCOPES))
        if not scopes or unknown:
            raise TokenError(f"{where}: scopes must be a comma-separated subset of {','.join(SCOPES)}, got {scopes_text!r}")
        digest = _digest(secret)
        if digest in seen:
            raise TokenError(f"{where}: the same token is already listed at {seen[digest]}")
        seen[digest] = where
        tokens.append(Token(parts[2] if len(parts) == 3 else where, digest, scopes))
    return tokens


def read_tokens_file(path: str) -> list[Token]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as error:
        raise TokenError(f"tokens file {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise TokenError(f"tokens file {path}: not UTF-8 text") from None
    tokens = parse_tokens(text, path)
    if not tokens:
        raise TokenError(f"tokens file {path} lists no token")
    return tokens


def merge_tokens(*groups: Iterable[Token]) -> tuple[Token, ...]:
    merged: dict[bytes, Token] = {}
    for group in groups:
        for token in group:
            if token.digest in merged:
                raise TokenError(f"{token.name}: the same token is also listed as {merged[token.digest].name}")
            merged[token.digest] = token
    return tuple(merged.values())


def rejecting(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, details: str,
              trailers: tuple[tuple[str, bytes], ...] = ()) -> grpc.RpcMethodHandler:
    """``handler`` (of a grpc.aio server) with its behaviour replaced by an immediate ``code``,
    sending ``trailers`` too (a google.rpc.Status with its details).

    The request is not parsed. Access logs (serving/logs.py) count it as rejected.
    """

    async def reject(request: Any, context: grpc.aio.ServicerContext) -> None:
        logs.mark_call(rejected=True)
        context.set_code(code)  # the status leaves after the access log has counted it
        context.set_details(details)
        if trailers:  # after the access log's x-request-id
            context.set_trailing_metadata(tuple(context.trailing_metadata() or ()) + trailers)

    return handler._replace(**{_kind(handler): reject, "request_deserializer": None})


def _kind(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming:
        return "stream_stream" if handler.response_streaming else "stream_unary"
    return "unary_stream" if handler.response_streaming else "unary_unary"


def _metadata_value(metadata: Sequence[tuple[str, Any]] | None, key: str) -> Any:
    for name, value in metadata or ():
        if name == key:
            return value
    return None


@dataclass(frozen=True)
class AuthRefusal:
    """Why a call's token does not let it through; ``client``: the token's name when the
    token is valid but lacks the scope (PERMISSION_DENIED), for the access line."""

    code: grpc.StatusCode
    message: str
    client: str | None = None


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks the bearer token and its scope of every call but health and reflection."""

    def __init__(self, tokens: Sequence[Token]) -> None:
        self.use(tokens)

    def use(self, tokens: Sequence[Token]) -> None:
        """Check calls against ``tokens`` from now on (a call being checked finishes with the old ones)."""
        if not tokens:
            raise ValueError("AuthInterceptor needs at least one token")
        self.tokens = tuple(tokens)

    def identify(self, presented: str) -> Token | None:
        """The token ``presented`` is, compared in constant time with every known token."""
        digest = _digest(presented)
        found = None
        for token in self.tokens:  # no early exit: the time does not depend on which one matched
            if hmac.compare_digest(digest, token.digest):
                found = token
        return found

    def check(self, method: str, metadata: Sequence[tuple[str, Any]] | None) -> AuthRefusal | Token:
        """The token allowed to call ``method``, or the refusal of the call."""
        header = _metadata_value(metadata, "authorization")
        scope = METHOD_SCOPES.get(method)
        return self.check_bearer(header if isinstance(header, str) else None, scope, method.rsplit("/", 1)[-1])

    def check_bearer(self, header: str | None, scope: str | None, what: str) -> AuthRefusal | Token:
        """The token of an ``authorization`` header (gRPC metadata or HTTP) if it grants
        ``scope`` (None: refused to every token), else the refusal of ``what``."""
        if not header:
            return AuthRefusal(grpc.StatusCode.UNAUTHENTICATED, "missing bearer token: send the header 'authorization: Bearer TOKEN'")
        scheme, _, presented = header.strip().partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented:
            return AuthRefusal(grpc.StatusCode.UNAUTHENTICATED, "the authorization header must be 'Bearer TOKEN'")
        token = self.identify(presented)
        if token is None:
            return AuthRefusal(grpc.StatusCode.UNAUTHENTICATED, "invalid bearer token")
        if scope is None or scope not in token.scopes:
            needed = f"the '{scope}' scope" if scope else "a scope no token has"
            return AuthRefusal(grpc.StatusCode.PERMISSION_DENIED, f"this token does not grant {needed}, which {what} needs", token.name)
        return token

    async def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or is_open_method(method):
            return handler
        outcome = self.check(method, handler_call_details.invocation_metadata)
        if isinstance(outcome, Token):
            return _as_client(handler, outcome.name)
        refusing = rejecting(handler, outcome.code, outcome.message)
        return refusing if outcome.client is None else _as_client(refusing, outcome.client)


def _as_client(handler: grpc.RpcMethodHandler, name: str) -> grpc.RpcMethodHandler:
    """``handler`` noting the client's token name for the access log."""
    kind = _kind(handler)
    behavior = getattr(handler, kind)

    @functools.wraps(behavior)
    async def named(request: Any, context: grpc.aio.ServicerContext) -> Any:
        logs.mark_call(client=name)
        return await behavior(request, context)

    return handler._replace(**{kind: named})
