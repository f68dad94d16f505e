"""The feed explorer (serving/web/explorer.py) in headless Chromium against a real server.

One world, one server and one browser serve the module. The page must show what the
gRPC GetFeed serves, and its funnel what the metrics counted. Status codes are checked
with plain HTTP requests, the pages with the browser (tests/browser.py finds it).

``FEEDRANK_SCREENSHOT=docs/explorer.png pytest tests/test_explorer.py -k screenshot``
writes the README's screenshot.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping

import grpc
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait

from protos.feed.v1 import feed_pb2
from serving import auth
from serving.arms import published_versions
from serving.client import describe_reason
from serving.web.common import TOKEN_COOKIE
from stores.base import StoreUnavailable
from tests.browser import WINDOW, start_chromium
from tests.feed_world import (
    FAST_TRAINING,
    World,
    all_pages,
    build_world,
    running_server,
)
from tests.redis_servers import free_port
from training.artifact import EVALUATION_CHART, publish
from training.dataset import Dataset, write_dataset
from training.train import default_ranker_spec, evaluation_chart_files, train

pytestmark = pytest.mark.slow

READ = "explorer-read-token-0123456789"
WRITE = "explorer-write-token-0123456789"
TOKENS_TEXT = f"{READ} read reader\n{WRITE} write writer\n"
HOSTILE_TITLE = "<script>alert(1)</script><b>x</b>"
METRICS = {
    "model": {"precision@10": 0.21, "recall@10": 0.34, "ndcg@10": 0.27},
    "baselines": {"popularity": {"precision@10": 0.06, "recall@10": 0.11, "ndcg@10": 0.08}},
    "coverage": 0.41,
    "test_users": 40,
}


@dataclasses.dataclass
class Explorer:
    world: World
    server: object  # serving.server.FeedServer
    stub: object  # FeedServiceStub
    url: str

    @property
    def service(self):
        return self.server.servicer.service


# --- the world, the server, the browser --------------------------------------------------------


def without_pictures(dataset: Dataset) -> Dataset:
    """The catalogue's image URLs point at a host that does not exist: a failed load is a console error."""
    items = dataset.items
    return dataclasses.replace(dataset, items=dataclasses.replace(items, image_url=[""] * len(items.item_id)))


def publish_charted_version(world: World) -> None:
    """A second, smaller model as CURRENT, with metrics, timings and (matplotlib permitting) the chart."""
    model, _ = train(world.dataset, dataclasses.replace(FAST_TRAINING, factors=8, iterations=4))
    files = evaluation_chart_files(METRICS)
    manifest = {
        "params": {"factors": 8, "iterations": 4}, "data_fingerprint": world.dataset.fingerprint(),
        "metrics": METRICS, "charts": {"evaluation": EVALUATION_CHART} if files else {},
        "engine": {"name": "implicit"}, "timings": {"train": 0.42, "evaluate": 0.17},
        "ranker": default_ranker_spec(),
    }
    publish(str(world.models_dir), model, manifest, files=files)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    world = build_world(tmp_path_factory.mktemp("explorer-world"), users=120, sellers=12, items=300)
    world.dataset = without_pictures(world.dataset)
    write_dataset(world.dataset, str(world.data_dir))
    publish_charted_version(world)
    return world


@pytest.fixture(scope="module")
def explorer(world) -> Iterator[Explorer]:
    port = free_port()
    with running_server(world, http_port=port) as (server, stub):
        yield Explorer(world, server, stub, f"http://127.0.0.1:{port}")


@pytest.fixture(scope="module")
def driver():
    browser = start_chromium()
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture(scope="module")
def social_user(world) -> str:
    """The follower with the most friends: their cards carry friends' and sellers' reasons."""
    dataset = world.dataset
    friends = collections.Counter(dataset.friends.src) + collections.Counter(dataset.friends.dst)
    return max(sorted(set(dataset.follows.src)), key=lambda user: friends[user])


# --- helpers -------------------------------------------------------------------------------------


def http_get(url: str, headers: Mapping[str, str] = {}, method: str = "GET") -> tuple[int, Mapping[str, str], str]:
    request = urllib.request.Request(url, headers=dict(headers), method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read().decode()


def console_errors(driver) -> list[str]:
    """The SEVERE browser console messages since the last call (reading the log clears it)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def css(driver, selector: str):
    return driver.find_elements(By.CSS_SELECTOR, selector)


def card_ids(scope, selector: str = "article.card") -> list[str]:
    return [card.get_attribute("data-item-id") for card in css(scope, selector)]


def grpc_page(stub, user_id: str, limit: int, token: str = "") -> feed_pb2.GetFeedResponse:
    return stub.GetFeed(feed_pb2.GetFeedRequest(user_id=user_id, limit=limit, page_token=token), timeout=10)


def counter_values(registry, family: str, label: str) -> dict[str, float]:
    return {sample.labels[label]: sample.value
            for metric in registry.collect() if metric.name == family
            for sample in metric.samples if sample.name == f"{family}_total"}


def increase(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, int]:
    return {key: int(value - before.get(key, 0.0)) for key, value in after.items() if value != before.get(key, 0.0)}


def page_counts(driver, attribute: str) -> dict[str, int]:
    return {row.get_attribute(attribute): int(css(row, "td.count")[0].text) for row in css(driver, f"#funnel tr[{attribute}]")}


def wait_for(driver, selector: str) -> None:
    WebDriverWait(driver, 10).until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, selector)))


# --- the feed page --------------------------------------------------------------------------------


def test_cards_are_the_grpc_feed_with_its_reasons(explorer, driver, social_user):
    driver.get(f"{explorer.url}/?user={social_user}&limit=10")
    served = grpc_page(explorer.stub, social_user, 10)
    assert card_ids(driver) == [item.item_id for item in served.items]
    assert len(served.items) == 10
    for card, item in zip(css(driver, "article.card"), served.items):
        assert css(card, ".title-text")[0].text == item.title
        assert [r.text for r in css(card, ".reason-text")] == [describe_reason(r) for r in item.reasons]
        actors = [a.text for a in css(card, ".reason .actors a")]
        assert actors == [actor for reason in item.reasons for actor in reason.actor_ids]
        assert [e.text for e in css(card, ".price")] == ([f"{item.price:.2f} {item.currency}"] if item.HasField("price") else [])
        ship = "ships today" if item.ship_days == 0 else f"ships in {item.ship_days} d"
        assert [e.text for e in css(card, ".ship")] == ([ship] if item.HasField("ship_days") else [])
        assert css(card, ".thumb")[0].get_attribute("alt") == item.title
    kinds = {reason.kind for item in served.items for reason in item.reasons}
    assert {feed_pb2.REASON_KIND_FRIENDS_LIKED, feed_pb2.REASON_KIND_FOLLOWED_SELLER} <= kinds
    friend_link = css(driver, ".reason .actors a")[0]
    assert friend_link.get_attribute("href") == f"{explorer.url}/?user={friend_link.text}"
    assert console_errors(driver) == []


def test_next_page_is_the_grpc_second_page(explorer, driver, social_user):
    driver.get(f"{explorer.url}/?user={social_user}&limit=10")
    css(driver, "#next-page")[0].click()
    wait_for(driver, "nav.paging a[href$='limit=10']")  # "First page": the second page has loaded
    pages = all_pages(explorer.stub, social_user, 10, 2)
    assert card_ids(driver) == [item.item_id for item in pages[1].items]
    assert console_errors(driver) == []


def test_grpc_and_explorer_refuse_the_same_bad_page_token(explorer):
    with pytest.raises(grpc.RpcError) as error:
        grpc_page(explorer.stub, "u00001", 10, "not-a-token")
    status, _, body = http_get(f"{explorer.url}/?user=u00001&page_token=not-a-token")
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and status == 400 and "page_token" in body


def test_a_page_size_the_form_does_not_list_is_kept_selected(explorer):
    """limit=7 showed 7 cards, but the form's select fell back to 10 and resubmitting changed it."""
    status, _, body = http_get(f"{explorer.url}/?user=u00001&limit=7")
    assert status == 200 and '<option value="7" selected>7</option>' in body
    assert body.count(" selected>") == 1
    status, _, body = http_get(f"{explorer.url}/?user=u00001&limit=20")
    assert '<option value="20" selected>20</option>' in body and '<option value="7"' not in body


def test_funnel_counts_are_what_the_metrics_counted(explorer, driver, social_user):
    registry = explorer.service.metrics.registry
    before = [counter_values(registry, "feedrank_candidates", "source"), counter_values(registry, "feedrank_filtered", "filter")]
    driver.get(f"{explorer.url}/?user={social_user}&limit=20")
    after = [counter_values(registry, "feedrank_candidates", "source"), counter_values(registry, "feedrank_filtered", "filter")]
    gathered, removed = page_counts(driver, "data-source"), page_counts(driver, "data-filter")
    assert sum(gathered.values()) > 0 and sum(removed.values()) > 0
    assert {k: v for k, v in gathered.items() if v} == increase(before[0], after[0])
    assert {k: v for k, v in removed.items() if v} == increase(before[1], after[1])
    assert css(driver, "#model-version")[0].text == explorer.service.model_version
    assert css(driver, "#arm")[0].text == "none"
    for card in css(driver, "article.card"):
        score = float(css(card, ".score strong")[0].text)
        total = float(css(card, ".why td.total")[0].get_attribute("textContent"))
        contributions = [float(td.get_attribute("textContent")) for td in css(card, ".why td.contribution")]
        assert abs(total - score) <= 0.0015 and abs(sum(contributions) - score) <= 0.001 * len(contributions) + 0.0015
    assert console_errors(driver) == []


def test_funnel_leads_from_the_candidates_to_the_served_page(explorer, driver, social_user):
    """The funnel stopped at the filters: nothing tied its totals to the page, and a page
    shorter than its size while more remained (the per-seller cap) went unexplained."""
    driver.get(f"{explorer.url}/?user={social_user}&limit=100")
    served = grpc_page(explorer.stub, social_user, 100)
    gathered, removed = page_counts(driver, "data-source"), page_counts(driver, "data-filter")
    stages = page_counts(driver, "data-stage")
    assert stages["ranked"] == sum(gathered.values()) - sum(removed.values())
    assert stages["served"] == len(served.items) == len(css(driver, "article.card"))
    assert stages["not_served"] == stages["ranked"] - stages["served"] > 0
    assert len(served.items) < 100 and served.next_page_token  # 12 sellers, at most 2 each on a page
    assert "Fewer than 100 items although more remain" in css(driver, "#short-page")[0].text
    driver.get(f"{explorer.url}/?user={social_user}&limit=10")
    assert css(driver, "#short-page") == []
    assert console_errors(driver) == []


def test_context_shows_likes_friends_and_follows(explorer, driver, social_user):
    driver.get(f"{explorer.url}/?user={social_user}")
    context = explorer.service.user_context(social_user)
    assert [a.text for a in css(driver, "#friends a")] == list(context.friends)
    assert [a.text for a in css(driver, "#follows a")] == list(context.follows)
    assert [c.text for c in css(driver, "#context .likes code")] == [item_id for item_id, _ in context.recent_likes]
    assert not css(driver, "#context-empty")


@pytest.mark.skipif(not os.environ.get("FEEDRANK_SCREENSHOT"), reason="set FEEDRANK_SCREENSHOT=path to write the screenshot")
def test_screenshot(explorer, driver, social_user):
    width, height = WINDOW  # the page's viewport, not the window (whose frame takes some of it)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    try:
        driver.get(f"{explorer.url}/?user={social_user}&limit=10")
        driver.save_screenshot(os.environ["FEEDRANK_SCREENSHOT"])
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    assert console_errors(driver) == []


def test_an_unknown_user_gets_trending_and_an_empty_context(explorer, driver):
    driver.get(f"{explorer.url}/?user=nobody-at-all")
    assert css(driver, "#context-empty")
    reasons = {r.text for r in css(driver, ".reason-text")}
    assert reasons == {"trending"}
    assert console_errors(driver) == []


@pytest.mark.parametrize("user_id, message", [("", "user_id: must not be empty"), ("u" * 300, "user_id: longer than 256 bytes")])
def test_a_bad_user_id_is_a_400_naming_the_field(explorer, driver, user_id, message):
    status, _, body = http_get(f"{explorer.url}/?user={user_id}")
    assert status == 400 and "user_id" in body
    driver.get(f"{explorer.url}/?user={user_id}")
    assert css(driver, "#error")[0].text == message
    assert css(driver, "input[name=user]")[0].get_attribute("value") == user_id
    assert all("status of 400" in error for error in console_errors(driver))  # the page's own status only


def test_store_down_is_a_503_page(explorer, monkeypatch):
    def unavailable(*args, **kwargs):
        raise StoreUnavailable("redis://10.0.0.7:6379: connection refused")

    monkeypatch.setattr(explorer.service, "get_feed", unavailable)
    status, headers, body = http_get(f"{explorer.url}/?user=u00001")
    assert status == 503 and headers["Retry-After"] == "1"
    assert "store is unavailable" in body and "10.0.0.7" not in body


def test_html_in_a_title_is_shown_as_text(explorer, driver):
    seller = explorer.world.dataset.items.seller_id[0]
    picture = f"{explorer.url}/explorer/static/placeholder.svg"
    listing = feed_pb2.ItemUpsert(item_id="hostile-item", seller_id=seller, stock=3, price=9.5, currency="EUR",
                                  title=HOSTILE_TITLE, image_url=picture, ship_days=0)
    events = [feed_pb2.Event(event_id="explorer-hostile-item", item_upsert=listing),
              feed_pb2.Event(event_id="explorer-hostile-follow", follow=feed_pb2.UserSeller(user_id="hostile-viewer", seller_id=seller))]
    explorer.stub.Ingest(feed_pb2.IngestRequest(events=events), timeout=10)
    driver.get(f"{explorer.url}/?user=hostile-viewer")
    card = css(driver, "article.card[data-item-id='hostile-item']")[0]
    assert css(card, ".title-text")[0].text == HOSTILE_TITLE
    assert not css(card, ".title b") and not css(driver, "main script")
    assert css(card, ".thumb")[0].get_attribute("src") == picture
    assert css(card, ".ship")[0].text == "ships today"
    assert console_errors(driver) == []  # also: no alert, which would have failed every call above


def test_news_from_the_users_graph_is_badged(explorer, driver):
    # A seller the viewer follows lists an item now: news, which leads the page with a badge;
    # the seller's older listings below it have none.
    seller = explorer.world.dataset.items.seller_id[1]
    events = [feed_pb2.Event(event_id="explorer-news-follow", follow=feed_pb2.UserSeller(user_id="news-viewer", seller_id=seller)),
              feed_pb2.Event(event_id="explorer-news-item", item_upsert=feed_pb2.ItemUpsert(item_id="news-item", seller_id=seller, stock=2))]
    explorer.stub.Ingest(feed_pb2.IngestRequest(events=events), timeout=10)
    driver.get(f"{explorer.url}/?user=news-viewer&limit=10")
    cards = css(driver, "article.card")
    assert cards[0].get_attribute("data-item-id") == "news-item"
    assert [bool(css(card, ".news-badge")) for card in cards] == [True] + [False] * (len(cards) - 1)
    assert console_errors(driver) == []


def test_pages_are_read_only_and_send_the_security_headers(explorer):
    for path in ("/?user=u00001", "/explorer/static/explorer.css", "/model"):
        status, headers, _ = http_get(explorer.url + path)
        assert status == 200
        assert headers["Content-Security-Policy"].startswith("default-src 'self'; img-src * data:;")
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["Referrer-Policy"] == "no-referrer"
    assert http_get(f"{explorer.url}/?user=u00001", method="POST")[0] == 405
    assert http_get(f"{explorer.url}/compare", method="DELETE")[0] == 405


# --- compare and model pages ----------------------------------------------------------------------


def test_compare_shows_two_versions_side_by_side(explorer, driver, social_user):
    versions = published_versions(str(explorer.world.models_dir))
    driver.get(f"{explorer.url}/compare?user={social_user}&limit=10")
    sides = css(driver, "section.side")
    assert len(sides) == 2
    expected = [[item.item_id for item in explorer.service.get_feed(social_user, 10, "", (), time.time(), version=v).items]
                for v in versions]
    assert [card_ids(side) for side in sides] == expected
    for side, mine, other in zip(sides, expected, reversed(expected)):
        assert card_ids(side, "article.card.only") == [item for item in mine if item not in other]
        assert len(css(side, ".badge")) == len(card_ids(side, "article.card.only"))
    assert console_errors(driver) == []


def test_model_page_shows_the_live_version_metrics_and_chart(explorer, driver):
    live = explorer.service.current_artifact
    driver.get(f"{explorer.url}/model")
    assert css(driver, "#version")[0].text == live.version
    assert [row.get_attribute("data-method") for row in css(driver, "#metrics tr[data-method]")] == ["model", "popularity"]
    assert "implicit" in driver.page_source and css(driver, "#timings")
    if EVALUATION_CHART in os.listdir(live.path):
        chart = css(driver, "#chart")[0]
        assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", chart) > 0
    else:
        assert css(driver, "#no-chart")
    older = [a for a in css(driver, "#versions a") if a.text != live.version]
    older[0].click()
    wait_for(driver, "#no-chart")
    assert console_errors(driver) == []


def test_the_chart_route_serves_only_the_chart_of_a_published_version(explorer):
    live = explorer.service.current_artifact
    status, headers, _ = http_get(f"{explorer.url}/models/{live.version}/{EVALUATION_CHART}")
    has_chart = EVALUATION_CHART in os.listdir(live.path)
    assert (status, headers["Content-Type"].startswith("image/svg+xml")) == ((200, True) if has_chart else (404, False))
    older = next(v for v in published_versions(str(explorer.world.models_dir)) if v != live.version)
    for path in (f"{older}/{EVALUATION_CHART}", f"{live.version}/manifest.json", f"..%2F{live.version}/{EVALUATION_CHART}",
                 f"CURRENT/{EVALUATION_CHART}"):
        assert http_get(f"{explorer.url}/models/{path}")[0] == 404, path


# --- auth -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(world, tmp_path_factory) -> Iterator[Explorer]:
    """A server with tokens and two A/B arms: the live model and the older one."""
    older = published_versions(str(world.models_dir))[1]
    arms = tmp_path_factory.mktemp("explorer-arms") / "arms.toml"
    arms.write_text(f'salt = "explorer"\n[[arm]]\nname = "live"\nshare = 0.5\n'
                    f'[[arm]]\nname = "older"\nshare = 0.5\nmodel = "{older}"\n')
    port = free_port()
    tokens = tuple(auth.parse_tokens(TOKENS_TEXT, "t"))
    with running_server(world, http_port=port, tokens=tokens, arms_file=str(arms)) as (server, stub):
        yield Explorer(world, server, stub, f"http://127.0.0.1:{port}")


def test_with_tokens_the_pages_need_the_read_scope(guarded):
    guarded = guarded.url
    status, headers, body = http_get(f"{guarded}/?user=u00001")
    assert status == 401 and "Sign in" in body and 'name="token"' in body
    assert headers["WWW-Authenticate"] == "Bearer"
    assert http_get(f"{guarded}/?user=u00001", {"Authorization": f"Bearer {READ}"})[0] == 200
    assert http_get(f"{guarded}/?user=u00001", {"Authorization": f"Bearer {WRITE}"})[0] == 403
    assert http_get(f"{guarded}/model", {"Cookie": f"{TOKEN_COOKIE}={READ}"})[0] == 200
    assert http_get(f"{guarded}/model", {"Cookie": f"{TOKEN_COOKIE}=not-a-token-0123456789"})[0] == 401


def test_sign_in_keeps_the_token_in_an_http_only_cookie_and_sign_out_drops_it(guarded, driver, social_user):
    arm = guarded.service.arm_of(social_user)
    guarded = guarded.url
    driver.delete_all_cookies()
    driver.get(f"{guarded}/?user={social_user}")
    css(driver, "input[name=token]")[0].send_keys(WRITE)
    css(driver, ".signin button")[0].click()
    wait_for(driver, ".signin .error")
    assert "read" in css(driver, ".signin .error")[0].text
    css(driver, "input[name=token]")[0].send_keys(READ)
    css(driver, ".signin button")[0].click()
    wait_for(driver, "article.card")
    assert driver.current_url == f"{guarded}/?user={social_user}"
    assert css(driver, "#arm")[0].text == arm
    cookie = driver.get_cookie(TOKEN_COOKIE)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    css(driver, ".signout button")[0].click()
    wait_for(driver, "input[name=token]")
    assert driver.get_cookie(TOKEN_COOKIE) is None
    console_errors(driver)  # the 401 and 403 pages log their status: not this test's subject


def test_compare_defaults_to_the_two_arms(guarded, social_user):
    status, _, body = http_get(f"{guarded.url}/compare?user={social_user}&limit=10", {"Authorization": f"Bearer {READ}"})
    assert status == 200
    columns = body.split('<section class="side"')[1:]
    assert [re.search(r"<h2>(\w): arm (\w+)", column).groups() for column in columns] == [("A", "live"), ("B", "older")]
    for column, arm in zip(columns, ("live", "older")):
        page = guarded.service.get_feed(social_user, 10, "", (), time.time(), arm=arm)
        assert re.findall(r'data-item-id="([^"]+)"', column) == [item.item_id for item in page.items]


def test_model_page_says_which_arm_serves_a_pinned_version(guarded):
    """The version an arm pins was called "published, not the live model" though half the users got it."""
    live, older = published_versions(str(guarded.world.models_dir))[:2]
    reader = {"Authorization": f"Bearer {READ}"}
    status, _, body = http_get(f"{guarded.url}/model?version={older}", reader)
    assert status == 200
    assert re.search(r'id="live-status">([^<]*)<', body).group(1) == "live for A/B arm older, not CURRENT"
    versions = body.split('id="versions"')[1]
    assert re.search(rf"<code>{live}</code></a> <span class=\"badge\">CURRENT</span> <span class=\"badge\">arm live</span>", versions)
    assert re.search(rf"<code>{older}</code></a> <span class=\"badge\">arm older</span>", versions)


def test_an_error_on_compare_keeps_the_compare_form(explorer):
    """Comparing with an empty user id gave an error page whose form showed a feed, dropping the A/B choices."""
    a, b = (f"version:{version}" for version in published_versions(str(explorer.world.models_dir))[:2])
    status, _, body = http_get(f"{explorer.url}/compare?user=&a={a}&b={b}")
    form = body.split('<form class="ask"')[1].split("</form>")[0]
    assert status == 400 and 'action="/compare"' in form and ">Compare</button>" in form
    assert re.findall(r'<input type="hidden" name="(\w)" value="([^"]+)">', form) == [("a", a), ("b", b)]
    status, _, body = http_get(f"{explorer.url}/compare?user=u00001&a=nonsense&b={b}")
    assert status == 400 and re.findall(r'<input type="hidden" name="(\w)"', body) == ["b"]  # not the choice at fault
    # A bare version name, as a reader of the URL may type it, is told the form each side takes.
    status, _, body = http_get(f"{explorer.url}/compare?user=u00001&a={b.removeprefix('version:')}&b={b}")
    assert status == 400 and "(version:NAME) or a configured A/B arm (arm:NAME)" in body
    status, _, body = http_get(f"{explorer.url}/?user=")
    assert status == 400 and '<form class="ask" method="get" action="/">' in body and 'type="hidden"' not in body
