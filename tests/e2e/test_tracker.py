"""The browser tracker (/static/streamrec.js) in headless Chromium, on a page served from another origin
than the API's, over the real broker, worker, Redis and API under gunicorn: a batch and what is queued
when the page is left arrive and are folded, the API's own 429 is retried after its Retry-After, a 400 is
not retried, a click on a recommended item makes the events of that item cite its recommendation_id, and
the Python snippets of docs/tracker.md work."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import requests
from playwright.sync_api import Browser, Page, Request, sync_playwright

from streamrec.api.app import create_app
from streamrec.settings import Settings
from streamrec.state import read_stats
from tests.conftest import Namespace, wait_until
from tests.e2e.test_storefront import CHROMIUM, CHROMIUM_ARGS, _events_of
from tests.integration.test_hostile_input import start_stack

DOC = Path(__file__).resolve().parents[2] / "docs" / "tracker.md"
SEED = "sk-" + uuid.uuid4().hex
# one publishable key per part: the write rate limit is per key, and each part counts its own requests
KEYS = {name: f"pk-{name}-{uuid.uuid4().hex}" for name in ("batch", "close", "limited", "click")}
RATE_PER_S = 0.5  # with a burst of 2: a key's third request in a row is refused for about 2 s
CATALOG = [
    ("camera", "Mirrorless camera", 899.0),
    ("lens", "Portrait lens 50mm", 349.0),
    ("tripod", "Carbon travel tripod", 189.0),
    ("tent", "Two-person tent", 299.0),
    ("kettle", "Camping kettle", 35.0),
]
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")

# The shop's page: it imports the tracker from the API's origin and configures it from its query string.
# page=list renders the recommendations as links; page=product views its item.
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>a shop on another origin</title><link rel="icon" href="data:,"></head>
<body><main id="recs"></main>
<script type="module">
  import { createTracker } from "%(api)s/static/streamrec.js";
  const q = new URLSearchParams(location.search);
  const tracker = createTracker({
    apiKey: q.get("key"),
    userId: q.get("user"),
    batchSize: Number(q.get("batch") || 10),
    flushInterval: Number(q.get("interval") || 500),
  });
  window.tracker = tracker;
  window.apiUrl = tracker.apiUrl;
  if (q.get("page") === "list") {
    const answer = await tracker.recommendations({ k: 4 });
    const section = document.createElement("section");
    section.dataset.streamrecRid = answer.recommendation_id;
    for (const item of answer.items) {
      const link = document.createElement("a");
      const next = new URLSearchParams(q);
      next.set("page", "product");
      next.set("item", item.item_id);
      link.href = "/?" + next;
      link.dataset.streamrecItem = item.item_id;
      link.textContent = item.title;
      section.append(link);
    }
    document.getElementById("recs").append(section);
  }
  if (q.get("page") === "product") window.viewed = await tracker.view(q.get("item"));
  window.ready = true;
</script></body></html>
"""


@contextmanager
def shop_site(api: str) -> Iterator[str]:
    """A tiny HTTP server on another loopback port serving ``PAGE``; yields its origin."""
    body = (PAGE % {"api": api}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server hook's name
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _seed(api: str, ns: Namespace) -> None:
    """The catalog and a few shoppers, so that a new shopper is recommended popular items."""
    key = {"X-API-Key": SEED}
    items = [{"item_id": i, "title": t, "category": "shop", "price": p} for i, t, p in CATALOG]
    assert requests.post(f"{api}/v1/items", json=items, headers=key, timeout=10).status_code == 202
    ts0 = int(time.time() * 1000) - 3_600_000
    events = [
        {"event_id": f"seed-{u}-{j}", "type": "view", "user_id": f"seed{u}", "item_id": item, "ts": ts0 + j}
        for u in range(4)
        for j, item in enumerate(["camera", "lens", "tripod"][: u + 1])
    ]
    assert requests.post(f"{api}/v1/events", json=events, headers=key, timeout=10).status_code == 202

    def landed() -> bool:
        stats = read_stats(ns.redis, ns.keys)
        applied = sum(v for k, v in stats.items() if k.startswith("applied:"))
        return applied == len(events) and stats.get("items", 0) == len(CATALOG)

    wait_until(landed, 30, what="the seeded catalog and events to be folded in")


def _history(ns: Namespace, user: str) -> list[tuple[str, str]]:
    """(item, type) of the user's folded history, oldest first."""
    entries = [h.decode().split("|") for h in ns.redis.lrange(ns.keys.history(user), 0, -1)]
    return [(e[0], e[2]) for e in reversed(entries)]


def _folded(ns: Namespace, user: str) -> int:
    """How many events of ``user`` were folded into their state."""
    return int(ns.redis.hget(ns.keys.version(user), "n") or 0)


def _claimed(ns: Namespace, user: str) -> set[str]:
    """The event ids of ``user`` the worker folded (its dedupe claims)."""
    return {m.decode() for m in ns.redis.zrange(ns.keys.claims(user), 0, -1)}


def _open(browser: Browser, url: str, posts: list[Request], console: list[str]) -> Page:
    """A page in a new context (its own storage) at ``url``, recording its event POSTs and console errors."""
    page = browser.new_context().new_page()
    page.on("request", lambda r: r.method == "POST" and r.url.endswith("/v1/events") and posts.append(r))
    page.on("console", lambda m: m.type == "error" and console.append(m.text))
    page.on("pageerror", lambda exc: console.append(str(exc)))
    page.goto(url)
    page.wait_for_function("window.ready === true", timeout=10_000)
    return page


def _sent(request: Request) -> list[dict[str, Any]]:
    body: list[dict[str, Any]] = orjson.loads(request.post_data or "[]")
    return body


@pytest.mark.e2e
@pytest.mark.broker
@pytest.mark.redis
def test_a_page_on_another_origin_batches_sends_on_exit_retries_a_429_and_attributes_clicks(
    namespace: Namespace,
) -> None:
    ns = namespace
    tag = uuid.uuid4().hex[:6]
    with shop_site("http://127.0.0.1:" + str(ns.settings.api_port)) as shop, sync_playwright() as pw:
        api = start_stack(
            ns,
            STREAMREC_API_KEYS=",".join(
                [f"seed={SEED}:write", *(f"{n}={k}:events" for n, k in KEYS.items())]
            ),
            STREAMREC_CORS_ORIGINS=shop,
            STREAMREC_WRITE_RATE_PER_S=str(RATE_PER_S),
            STREAMREC_WRITE_BURST="2",
        )
        assert shop != api  # the page and the API are two origins (another port)
        _seed(api, ns)
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            posts: list[Request] = []
            console: list[str] = []

            # -- a batch: three actions, one request --------------------------------------------------
            user = f"batch-{tag}"
            started = int(time.time() * 1000)
            page = _open(
                browser, f"{shop}/?key={KEYS['batch']}&user={user}&batch=3&interval=60000", posts, console
            )
            assert page.evaluate("window.apiUrl") == api  # by default, the origin the module came from
            results = page.evaluate(
                """() => Promise.all([tracker.search("tripod"), tracker.view("camera"),
                                      tracker.addToCart("camera", { price: 899 })])"""
            )
            assert [(r["ok"], r["status"]) for r in results] == [(True, 202)] * 3
            assert len(posts) == 1
            batch = _sent(posts[0])
            assert [(e["type"], e.get("item_id") or e.get("query")) for e in batch] == [
                ("search", "tripod"),
                ("view", "camera"),
                ("add_to_cart", "camera"),
            ]
            assert [e["event_id"] for e in batch] == [r["eventId"] for r in results]
            assert all(UUID.match(e["event_id"]) for e in batch)  # crypto.randomUUID on a secure context
            assert all(e["user_id"] == user and started <= e["ts"] <= time.time() * 1000 for e in batch)
            assert len({e["session_id"] for e in batch}) == 1 and batch[2]["price"] == 899

            # -- two more actions, still queued (the batch is 3, the interval a minute), then the page is left
            page.evaluate("""() => { tracker.view("lens"); tracker.purchase("camera", { price: 899 }); }""")
            assert len(posts) == 1
            page.goto("about:blank")  # navigating away: pagehide sends them with fetch keepalive
            wait_until(lambda: _folded(ns, user) == 5, 15, what="the events sent on page exit to be folded")
            assert _history(ns, user) == [
                ("camera", "view"),
                ("camera", "add_to_cart"),
                ("lens", "view"),
                ("camera", "purchase"),
            ]
            assert {e["event_id"] for e in batch} <= _claimed(ns, user)
            page.context.close()

            # -- a 400 is not retried (and is logged once); closing the page sends what is queued -----
            user = f"close-{tag}"
            posts.clear()
            page = _open(
                browser, f"{shop}/?key={KEYS['close']}&user={user}&batch=10&interval=60000", posts, console
            )
            refused = page.evaluate(
                """() => { const sent = tracker.track("view", { item_id: " padded " }); tracker.flush(); return sent; }"""
            )
            assert (refused["ok"], refused["status"], refused["attempts"]) == (False, 400, 1)
            assert len(posts) == 1
            assert len([c for c in console if "answered 400" in c]) == 1
            page.evaluate("""() => { tracker.view("tent"); tracker.addToCart("tent", { price: 299 }); }""")
            page.close()  # closing the tab: pagehide again
            wait_until(
                lambda: _folded(ns, user) == 2, 15, what="the events sent as the page closed to be folded"
            )
            assert _history(ns, user) == [("tent", "view"), ("tent", "add_to_cart")]

            # -- the API's own 429: retried after its Retry-After ---------------------------------------
            user = f"limited-{tag}"
            posts.clear()
            page = _open(browser, f"{shop}/?key={KEYS['limited']}&user={user}&batch=1", posts, console)
            finished: list[Request] = []
            page.on("requestfinished", lambda r: r.method == "POST" and finished.append(r))
            results = page.evaluate(
                """async () => [await tracker.view("camera"), await tracker.view("lens"), await tracker.view("tripod")]"""
            )
            assert [(r["ok"], r["attempts"]) for r in results] == [(True, 1), (True, 1), (True, 2)]
            wait_until(lambda: len(finished) == 4, 5, what="the four requests to finish")
            statuses = [r.response().status for r in finished]  # type: ignore[union-attr]
            assert statuses == [202, 202, 429, 202]
            refused_at, retry = finished[2], finished[3]
            retry_after = refused_at.response().headers["retry-after"]  # type: ignore[union-attr]
            assert retry_after in ("1", "2")
            answered = refused_at.timing["startTime"] + refused_at.timing["responseEnd"]
            waited_ms = retry.timing["startTime"] - answered
            assert int(retry_after) * 1000 <= waited_ms < int(retry_after) * 1000 + 1500, waited_ms
            assert _sent(refused_at) == _sent(retry)  # the same events, the same event ids
            (ns.log_dir / "tracker.txt").write_text(
                f"429 with Retry-After: {retry_after} -> retried {waited_ms:.0f} ms after the answer\n"
            )
            wait_until(lambda: _folded(ns, user) == 3, 15, what="the retried event to be folded")
            page.context.close()

            # -- a click on a recommended item: its events cite the answer's recommendation_id ----------
            user = f"click-{tag}"
            posts.clear()
            page = _open(
                browser, f"{shop}/?page=list&key={KEYS['click']}&user={user}&batch=1", posts, console
            )
            rid = page.get_attribute("[data-streamrec-rid]", "data-streamrec-rid")
            first = page.get_attribute("[data-streamrec-item]", "data-streamrec-item")
            assert rid and first
            with page.expect_navigation():
                page.click(f"[data-streamrec-item='{first}']")
            page.wait_for_function("window.ready === true")
            assert page.evaluate("window.viewed.ok") is True
            # the cart add of that item cites it too; another item's view does not
            assert page.evaluate(f"tracker.attributed({orjson.dumps(first).decode()})") == rid
            page.evaluate(f"""() => Promise.all([tracker.addToCart({orjson.dumps(first).decode()}),
                                                 tracker.view("kettle")])""")
            page.context.close()
            # nothing else went wrong (the browser itself reports each 400 and 429 it was answered)
            assert [
                c for c in console if "answered 400" not in c and "Failed to load resource" not in c
            ] == []
        finally:
            browser.close()

    arrived = _events_of(ns, user, 3)
    assert [(e["type"], e["item_id"], e.get("recommendation_id")) for e in arrived] == [
        ("view", first, rid),
        ("add_to_cart", first, rid),
        ("view", "kettle", None),
    ]
    wait_until(lambda: _folded(ns, user) == 3, 15, what="the attributed events to be folded")

    # the Python snippets of docs/tracker.md, run as a shop's backend would run them
    snippets = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(snippets) == 2
    env = {**ns.env, "SHOP_RECS_API": api, "SHOP_RECS_KEY": SEED}
    for code in snippets:
        ran = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
        )
        assert ran.returncode == 0, ran.stderr
    wait_until(lambda: _folded(ns, "alice") == 3, 15, what="the events of the docs' snippets to be folded")
    assert sorted(_history(ns, "alice")) == [
        ("camera", "purchase"),
        ("camera", "view"),
        ("memory-card", "purchase"),
    ]


def test_the_tracker_is_served_as_javascript_to_any_origin() -> None:
    settings = Settings(api_change_feed=False, cors_origins="https://shop.example")
    app = create_app(settings, redis_client=redis.Redis(port=1))  # never asked: serving a file reads no state
    client = app.test_client()
    resp = client.get("/static/streamrec.js", headers={"Origin": "https://elsewhere.example"})
    assert resp.status_code == 200
    assert resp.content_type == "text/javascript; charset=utf-8"
    assert "export function createTracker" in resp.get_data(as_text=True)
    assert resp.headers["Access-Control-Allow-Origin"] == "*"  # a module script is fetched in CORS mode
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Cache-Control"] == "public, max-age=300"
    again = client.get("/static/streamrec.js", headers={"If-None-Match": resp.headers["ETag"]})
    assert again.status_code == 304
    assert "/static/streamrec.js" not in client.get("/openapi.json").get_json()["paths"]
    for r in (resp, again):
        r.close()
