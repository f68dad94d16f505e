"""The feed explorer: read-only HTML pages over the FeedService calls gRPC makes.

``/`` a user's feed as cards, the funnel of that very request (the counts the metrics
got) and the user's context; ``/compare`` one user's feed from two model versions or
A/B arms side by side; ``/model`` the live model. Pages need the ``read`` scope when
tokens are configured: a browser cannot put a header on a link, so ``/signin`` keeps
the token in an HttpOnly cookie. No JavaScript; the Content-Security-Policy forbids it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import grpc
from flask import (
    Blueprint,
    Response,
    abort,
    redirect,
    render_template,
    request,
    send_from_directory,
)

from ranking.pipeline import Explanation
from ranking.types import RankedItem
from serving.arms import Arms, published_versions
from serving.auth import Token
from serving.client import describe_reason
from serving.feed_service import FeedPage, FeedService, InvalidRequest, UserContext
from serving.servicer import feed_item_to_proto
from serving.web.common import (
    TOKEN_COOKIE,
    HttpError,
    ready_service,
    record_refusal,
    requires,
    web_context,
)
from stores.base import StoreUnavailable
from training.artifact import EVALUATION_CHART, MANIFEST

log = logging.getLogger("feedrank.explorer")

explorer = Blueprint("explorer", __name__, template_folder="templates",
                     static_folder="static", static_url_path="/explorer/static")

SCOPE = "read"
WHAT = "the feed explorer"
METHOD = "http.explorer"  # the method its refusals are counted and logged as
PAGE_SIZES = (10, 20, 50, 100)
DEFAULT_PAGE_SIZE = 20
STORE_RETRY_SECONDS = 1
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src * data:; object-src 'none'; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",  # pages carry page tokens and a user's likes
}
# Why a filter removes an item, as a person reads it.
FILTER_MEANING = {
    "duplicate": "proposed by more than one source (kept once)",
    "excluded": "excluded by the request or served on an earlier page",
    "not_interested_item": "the user hid the item",
    "unknown_item": "not in the catalogue",
    "out_of_stock": "out of stock",
    "not_feed_eligible": "its seller keeps it out of feeds",
    "seller_on_vacation": "its seller is on vacation",
    "shopper_filters": "outside the shopper's filters",
    "seen_too_often": "shown too often without engagement",
    "already_liked": "the user already liked it",
    "own_listing": "the user's own listing",
    "not_interested_seller": "the user hid its seller",
}


# --- what the templates draw ------------------------------------------------------------------


@dataclass(frozen=True)
class ReasonView:
    text: str
    actor_ids: Sequence[str]  # the friends or the seller behind the reason


@dataclass(frozen=True)
class ScoreTerm:
    name: str
    feature_value: float | None  # None for the terms that are not features (bias, fatigue)
    contribution: float


@dataclass(frozen=True)
class CardView:
    item: RankedItem
    image_url: str  # "" draws the placeholder
    reasons: list[ReasonView]
    sources: Sequence[str] = ()
    terms: list[ScoreTerm] = field(default_factory=list)
    only_in: str = ""  # compare: the side's label when the other side lacks the item


@dataclass(frozen=True)
class FilterRow:
    name: str
    meaning: str
    removed: int
    item_ids: Sequence[str]


@dataclass(frozen=True)
class LikeView:
    item_id: str
    title: str
    liked_at: str


@dataclass(frozen=True)
class Choice:
    """A model version or an A/B arm to build a feed with (compare)."""

    key: str  # "version:NAME" or "arm:NAME", as the form sends it
    label: str
    version: str | None = None
    arm: str | None = None


@dataclass(frozen=True)
class Side:
    """One column of the compare page."""

    label: str
    choice: Choice
    page: FeedPage
    cards: list[CardView]


# --- pages --------------------------------------------------------------------------------------


@explorer.after_request
def add_security_headers(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


@explorer.get("/explorer")
@explorer.get("/")  # registered first: url_for builds "/"
@requires(SCOPE, WHAT, METHOD, allow_cookie=True)
def feed_page() -> str:
    user_id = request.args.get("user")
    limit = page_size()
    if user_id is None:
        return render("feed.html", limit=limit)
    service = ready_service()
    page = service.get_feed(user_id, limit, request.args.get("page_token", ""), (), time.time(), explain=True)
    context = service.user_context(user_id)
    return render(
        "feed.html", user_id=user_id, limit=limit, page=page, cards=explained_cards(page),
        gathered=page.gathered_by_source, filters=filter_rows(page), ranked=ranked_count(page), context=context,
        likes=like_views(service, context), context_empty=is_empty(context),
        paged=bool(request.args.get("page_token")),
    )


@explorer.get("/compare")
@requires(SCOPE, WHAT, METHOD, allow_cookie=True)
def compare_page() -> str:
    service = ready_service()
    choices = model_choices(service)
    default_a, default_b = default_pair(choices)
    a = chosen(choices, "a", default_a)
    b = chosen(choices, "b", default_b)
    user_id = request.args.get("user")
    limit = page_size()
    sides = []
    if user_id is not None:
        pages = [feed_of(service, user_id, limit, choice) for choice in (a, b)]
        labels = ("A", "B")
        sides = [Side(*side) for side in zip(labels, (a, b), pages, marked_sides(pages, labels))]
    return render("compare.html", user_id=user_id, limit=limit, choices=choices, a=a, b=b, sides=sides)


@explorer.get("/model")
@requires(SCOPE, WHAT, METHOD, allow_cookie=True)
def model_page() -> str:
    """The live model, or with ``?version=`` any published version."""
    service = ready_service()
    models_dir = web_context().models_dir
    versions = published_versions(models_dir)
    current = service.current_artifact
    version = request.args.get("version") or current.version
    if version == current.version:
        manifest = current.manifest
    elif version in versions:
        manifest = read_manifest(models_dir, version)
    else:
        raise InvalidRequest("version", f"no published model version {version!r}")
    metrics = manifest.get("metrics") or {}
    columns, rows = metrics_table(metrics)
    return render(
        "model.html", manifest=manifest, version=version, current=current.version, columns=columns, rows=rows,
        summary={k: v for k, v in metrics.items() if is_number(v)},
        has_chart=has_chart(manifest, os.path.join(models_dir, version)), arms=service.arms, versions=versions,
        arms_of={name: arms_serving(service.arms, name, current.version) for name in versions},
    )


@explorer.get(f"/models/<version>/{EVALUATION_CHART}")
@requires(SCOPE, WHAT, METHOD, allow_cookie=True)
def evaluation_chart(version: str) -> Response:
    """The chart file of a published version: no other file, no other directory."""
    models_dir = web_context().models_dir
    if version not in published_versions(models_dir):
        abort(404)
    return send_from_directory(os.path.join(models_dir, version), EVALUATION_CHART, mimetype="image/svg+xml")


@explorer.route("/signin", methods=["GET", "POST"])
def sign_in() -> Any:
    if request.method == "GET":
        return render("signin.html", next=local_path(request.args.get("next")))
    next_path = local_path(request.form.get("next"))
    auth = web_context().auth
    if auth is None:
        return redirect(next_path, code=303)
    started = time.perf_counter()
    token = request.form.get("token", "").strip()
    outcome = auth.check_bearer(f"Bearer {token}", SCOPE, WHAT)
    if not isinstance(outcome, Token):
        record_refusal(METHOD, outcome.code, started, outcome.client)
        refusal = HttpError(outcome.code, outcome.message)
        return render("signin.html", next=next_path, message=refusal.message), refusal.http_status
    response = redirect(next_path, code=303)
    response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict", secure=request.is_secure)
    return response


@explorer.post("/signout")
def sign_out() -> Response:
    response = redirect("/signin", code=303)
    response.delete_cookie(TOKEN_COOKIE, httponly=True, samesite="Strict", secure=request.is_secure)
    return response


# --- errors -------------------------------------------------------------------------------------


@explorer.errorhandler(HttpError)
def http_error_page(error: HttpError) -> tuple[str, int, dict[str, str]]:
    headers = {"Retry-After": str(max(1, math.ceil(error.retry_after)))} if error.retry_after is not None else {}
    if error.code == grpc.StatusCode.UNAUTHENTICATED:
        headers["WWW-Authenticate"] = "Bearer"  # a 401 must name its scheme (RFC 9110); browsers show the page
    if error.code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        # No token yet is no failure: the form says what to do.
        message = error.message if request.cookies.get(TOKEN_COOKIE) else ""
        next_path = request.full_path.removesuffix("?")
        return render("signin.html", next=next_path, message=message), error.http_status, headers
    return render("error.html", message=error.message, field=error.field), error.http_status, headers


@explorer.errorhandler(InvalidRequest)
def invalid_request_page(error: InvalidRequest) -> tuple[str, int]:
    return render("error.html", message=error.description, field=error.field), 400


@explorer.errorhandler(StoreUnavailable)
def store_unavailable_page(error: StoreUnavailable) -> tuple[str, int, dict[str, str]]:
    log.warning("explorer: store unavailable: %s", error)  # the page does not name internal hosts
    message = "The store is unavailable; try again in a moment."
    return render("error.html", message=message, field=""), 503, {"Retry-After": str(STORE_RETRY_SECONDS)}


# --- helpers ------------------------------------------------------------------------------------


def render(template: str, **values: Any) -> str:
    auth_on = web_context().auth is not None
    signed_in = auth_on and bool(request.cookies.get(TOKEN_COOKIE))
    return render_template(template, page_sizes=PAGE_SIZES, auth_on=auth_on, signed_in=signed_in,
                           user_id=values.pop("user_id", request.args.get("user")),
                           limit=values.pop("limit", DEFAULT_PAGE_SIZE), **values)


def page_size() -> int:
    text = request.args.get("limit") or str(DEFAULT_PAGE_SIZE)
    try:
        return int(text)
    except ValueError:
        raise InvalidRequest("limit", f"must be a whole number, got {text!r}") from None


def local_path(path: str | None) -> str:
    """``path`` when it stays on this server (no scheme, no host), else the feed page."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path or urlsplit(path).netloc:
        return "/"
    return path


def reasons_of(item: RankedItem) -> list[ReasonView]:
    """The reasons in the words ``python -m serving feed`` prints, with their actors to link."""
    return [ReasonView(describe_reason(reason), list(reason.actor_ids)) for reason in feed_item_to_proto(item).reasons]


def shown_image_url(url: str) -> str:
    """Only http(s) pictures: a catalogue row could hold any text."""
    return url if urlsplit(url).scheme in ("http", "https") else ""


def card_of(item: RankedItem, **extra: Any) -> CardView:
    return CardView(item, shown_image_url(item.card.image_url), reasons_of(item), **extra)


def explained_cards(page: FeedPage) -> list[CardView]:
    explanation = page.explanation
    if explanation is None:
        return [card_of(item) for item in page.items]
    return [card_of(item, sources=explanation.sources[row], terms=score_terms(explanation, row))
            for row, item in enumerate(page.items)]


def score_terms(explanation: Explanation, row: int) -> list[ScoreTerm]:
    """The terms of one item's score (they sum to it), with the feature value behind each."""
    feature_column = {name: column for column, name in enumerate(explanation.feature_names)}
    terms = []
    for column, name in enumerate(explanation.terms):
        feature = feature_column.get(name)
        value = float(explanation.features[row, feature]) if feature is not None else None
        terms.append(ScoreTerm(name, value, float(explanation.contributions[row, column])))
    return terms


def filter_rows(page: FeedPage) -> list[FilterRow]:
    removed_ids = page.explanation.removed if page.explanation is not None else {}
    return [FilterRow(name, FILTER_MEANING.get(name, ""), count, removed_ids.get(name, []))
            for name, count in page.removed_by_filter.items()]


def ranked_count(page: FeedPage) -> int:
    """The candidates the filters left to rank: every source's proposals less every removal
    (a duplicate is a removal too), so the funnel leads from the gathered total to the page."""
    return sum(page.gathered_by_source.values()) - sum(page.removed_by_filter.values())


def like_views(service: FeedService, context: UserContext) -> list[LikeView]:
    item_ids = [item_id for item_id, _ in context.recent_likes]
    titles = titles_of(service, item_ids)
    return [LikeView(item_id, titles.get(item_id, ""), utc_text(ts)) for item_id, ts in context.recent_likes]


def titles_of(service: FeedService, item_ids: Sequence[str]) -> dict[str, str]:
    """Item id -> title, from one card read of the items the store knows."""
    store = service.store
    codes = store.items.codes(list(item_ids))
    known = codes[codes >= 0]
    return dict(zip(store.items.ids(known.tolist()), (card.title for card in store.read_cards(known))))


def utc_text(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def is_empty(context: UserContext) -> bool:
    return not (context.recent_likes or context.friends or context.follows or context.hidden_items
                or context.hidden_sellers or context.shared_with)


def model_choices(service: FeedService) -> list[Choice]:
    """The configured arms, then every published version (newest first)."""
    current = service.model_version
    arms = service.arms.arms if service.arms is not None else ()
    choices = [Choice(f"arm:{arm.name}", f"arm {arm.name} ({arm.share:.0%}, model {arm.model or current})", arm=arm.name)
               for arm in arms]
    for version in published_versions(web_context().models_dir):
        label = f"version {version}" + (" (CURRENT)" if version == current else "")
        choices.append(Choice(f"version:{version}", label, version=version))
    return choices


def default_pair(choices: list[Choice]) -> tuple[str, str]:
    """Two arms when there are arms, else the two newest versions."""
    arms = [c.key for c in choices if c.arm is not None]
    versions = [c.key for c in choices if c.version is not None]
    keys = arms if len(arms) >= 2 else versions
    return keys[0], keys[min(1, len(keys) - 1)]


def chosen(choices: list[Choice], name: str, default: str) -> Choice:
    key = request.args.get(name) or default
    for choice in choices:
        if choice.key == key:
            return choice
    raise InvalidRequest(name, f"choose a published model version (version:NAME) or a configured A/B arm (arm:NAME), got {key!r}")


def feed_of(service: FeedService, user_id: str, limit: int, choice: Choice) -> FeedPage:
    return service.get_feed(user_id, limit, "", (), time.time(), arm=choice.arm, version=choice.version)


def marked_sides(pages: Sequence[FeedPage], labels: Sequence[str]) -> list[list[CardView]]:
    """Each page's cards, those missing from every other page marked with the page's label."""
    ids = [{item.item_id for item in page.items} for page in pages]
    sides = []
    for index, (page, label) in enumerate(zip(pages, labels)):
        elsewhere = set().union(*(s for other, s in enumerate(ids) if other != index))
        sides.append([card_of(item, only_in="" if item.item_id in elsewhere else label) for item in page.items])
    return sides


def arms_serving(arms: Arms | None, version: str, current: str) -> list[str]:
    """The A/B arms whose users get ``version`` (an arm without a model follows CURRENT)."""
    return [arm.name for arm in arms.arms if (arm.model or current) == version] if arms is not None else []


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def metrics_table(metrics: Mapping[str, Any]) -> tuple[list[str], list[tuple[str, Mapping[str, Any]]]]:
    """The model and baseline rows of a manifest's metrics, and the metric columns any of them has."""
    rows = [("model", metrics.get("model") or {}), *(metrics.get("baselines") or {}).items()]
    columns = list(dict.fromkeys(name for _, values in rows for name, value in values.items() if is_number(value)))
    return columns, (rows if columns else [])


def read_manifest(models_dir: str, version: str) -> dict[str, Any]:
    with open(os.path.join(models_dir, version, MANIFEST), encoding="utf-8") as f:
        return json.load(f)


def has_chart(manifest: Mapping[str, Any], version_dir: str) -> bool:
    charts = manifest.get("charts") or {}
    return charts.get("evaluation") == EVALUATION_CHART and os.path.isfile(os.path.join(version_dir, EVALUATION_CHART))
