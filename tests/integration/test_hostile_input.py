"""Hostile and unusual input against the real API under gunicorn, with a real worker behind it: odd ids
travel all the way into Redis and back, bad bodies get a 4xx that says what is wrong, never a 5xx."""

from __future__ import annotations

import time
import uuid
from urllib.parse import quote

import pytest
import requests

from streamrec.state import applied_events
from streamrec.topics import Topics, ensure_topics
from tests.conftest import Namespace, wait_until

pytestmark = [pytest.mark.broker, pytest.mark.redis]


def start_stack(ns: Namespace, worker: bool = True, **env: str) -> str:
    """Topics, a worker (unless ``worker`` is false) and the API under gunicorn for this namespace, with
    ``env`` added to their environment; returns the API's base URL once it is ready."""
    ns.env.update({"STREAMREC_WORKER_METRICS_PORT": "0", **env})  # no fixed port shared with other runs
    ensure_topics(ns.settings.kafka_bootstrap, Topics(ns.settings.topic_prefix), 2)
    if worker:
        ns.start("worker", "worker")
    ns.start("api", "api")
    api = f"http://127.0.0.1:{ns.settings.api_port}"
    wait_until(lambda: status(f"{api}/readyz") == 200, 30, what="the API")
    return api


def status(url: str) -> int:
    """The HTTP status of a GET of ``url``, 0 when nothing answers."""
    try:
        return requests.get(url, timeout=2).status_code
    except requests.RequestException:
        return 0


def _post(api: str, body: bytes | str, ctype: str = "application/json") -> requests.Response:
    data = body.encode() if isinstance(body, str) else body
    return requests.post(f"{api}/v1/events", data=data, headers={"Content-Type": ctype}, timeout=30)


def test_odd_ids_go_through_the_pipeline_and_back(namespace: Namespace) -> None:
    api = start_stack(namespace)
    tag = uuid.uuid4().hex[:6]
    user = f"ユーザー😀|{tag}:%s%%"  # wide, astral, and characters the state script and keys treat specially
    items = [f"商品-{tag}-1", f"item|{tag}|2", "x" * 128, f"é{tag}/3"]
    ts = int(time.time() * 1000) - 60_000
    events = [
        {"event_id": f"{tag}-{n}-ü", "type": "view", "user_id": user, "item_id": item, "ts": ts + n}
        for n, item in enumerate(items)
    ]
    other = f"{tag}-other"
    events += [
        {"event_id": f"{tag}-o{n}", "type": "view", "user_id": other, "item_id": item, "ts": ts + 10 + n}
        for n, item in enumerate(items[:2])
    ]
    assert requests.post(f"{api}/v1/events", json=events, timeout=30).status_code == 202
    # the other shopper viewed items 1 and 2; the odd user viewed all four, so ranks from what they saw
    url = f"{api}/v1/items/{quote(items[0], safe='')}/similar"
    similar = wait_until(
        lambda: (r := requests.get(url, params={"k": 5}, timeout=10).json()["data"])["items"] and r,
        30,
        what="the odd ids folded",
    )
    assert {i["item_id"] for i in similar["items"]} >= {items[1]}
    assert similar["item_id"] == items[0]
    answer = requests.get(
        f"{api}/v1/users/{quote(user, safe='')}/recommendations", params={"explain": "true"}, timeout=10
    )
    assert answer.status_code == 200 and answer.json()["data"]["user_id"] == user
    history = namespace.redis.lrange(namespace.keys.history(user), 0, -1)
    assert len(history) == len(items)  # one key per odd user, every view in it
    # ids one character too long are refused naming the field; a 10,000-character path id is just unknown
    too_long = dict(events[0], event_id=uuid.uuid4().hex, item_id="y" * 129)
    refused = requests.post(f"{api}/v1/events", json=too_long, timeout=10)
    assert refused.status_code == 400 and "item_id" in refused.json()["msg"]
    # an id longer than the contract allows is refused on read as on write
    long_path = requests.get(f"{api}/v1/users/{'z' * 3000}/recommendations", timeout=10)
    assert long_path.status_code == 400 and "at most 128 characters" in long_path.json()["msg"]


SLASHED = ["SKU-1/XL", "acct/1", "/", "a//b/", "100%2F", "a+b c?#", "é/商😀"]


def test_ids_with_slashes_are_reachable_through_gunicorn(namespace: Namespace) -> None:
    # gunicorn decodes %2F into '/' before the app routes; the app reads the raw request target instead
    api = start_stack(namespace, worker=False)
    for value in SLASHED:
        seg = quote(value, safe="")
        recs = requests.get(f"{api}/v1/users/{seg}/recommendations", timeout=10)
        assert recs.status_code == 200 and recs.json()["data"]["user_id"] == value, (value, recs.text)
        similar = requests.get(f"{api}/v1/items/{seg}/similar", params={"user_id": value}, timeout=10)
        assert similar.status_code == 200 and similar.json()["data"]["item_id"] == value, similar.text
        record = requests.get(f"{api}/v1/items/{seg}", timeout=10)
        assert record.status_code == 404 and record.json()["msg"].startswith(f"no item {value!r}")
        put = requests.put(f"{api}/v1/items/{seg}", json={"title": "x"}, timeout=30)
        assert put.status_code == 202, (value, put.text)
        gone = requests.delete(f"{api}/v1/items/{seg}", timeout=30)
        assert gone.status_code == 202 and gone.json()["data"]["item_id"] == value, gone.text
        erased = requests.delete(f"{api}/v1/users/{seg}", timeout=30)
        assert erased.status_code == 202 and erased.json()["data"]["user_id"] == value, erased.text
    padded = requests.put(f"{api}/v1/items/%20P", json={"title": "x"}, timeout=10)
    assert padded.status_code == 400 and "whitespace" in padded.json()["msg"]
    trace = requests.request("TRACE", f"{api}/v1/items/{quote('SKU-1/XL', safe='')}", timeout=10)
    assert trace.status_code == 405 and trace.headers["Allow"] == "DELETE, GET, HEAD, OPTIONS, PUT"


def test_ids_with_slashes_go_through_the_worker_and_back(namespace: Namespace) -> None:
    # issue 13's third input end to end: accepted (202), folded by the worker, then reachable on every
    # endpoint by their percent-encoded path segment
    api = start_stack(namespace)
    ns, tag = namespace, uuid.uuid4().hex[:6]
    xl, m, user, other = "SKU-1/XL", "SKU-1/M", "acct/1", "acct/2"  # the namespace keeps them apart
    seg = {v: quote(v, safe="") for v in (xl, m, user, other)}
    put = requests.put(
        f"{api}/v1/items/{seg[xl]}", json={"title": "Shirt XL", "category": "shirts/tops"}, timeout=30
    )
    assert put.status_code == 202, put.text
    ts = int(time.time() * 1000) - 60_000
    events = [
        {"event_id": f"{tag}-1", "type": "view", "user_id": user, "item_id": xl, "ts": ts},
        {"event_id": f"{tag}-2", "type": "view", "user_id": other, "item_id": xl, "ts": ts + 1},
        {"event_id": f"{tag}-3", "type": "add_to_cart", "user_id": other, "item_id": m, "ts": ts + 2},
    ]
    assert requests.post(f"{api}/v1/events", json=events, timeout=30).status_code == 202
    wait_until(lambda: applied_events(ns.redis, ns.keys) == len(events), 30, what="the events folded")
    record = wait_until(
        lambda: (r := requests.get(f"{api}/v1/items/{seg[xl]}", timeout=10)).status_code == 200 and r.json(),
        30,
        what="the catalog record folded",
    )
    assert record["data"]["item_id"] == xl and record["data"]["category"] == "shirts/tops"
    # the other shopper went on from XL to M: M is similar to XL, and recommended to the XL viewer
    similar = requests.get(f"{api}/v1/items/{seg[xl]}/similar", timeout=10).json()["data"]
    assert similar["item_id"] == xl and [i["item_id"] for i in similar["items"]][:1] == [m]
    recs = requests.get(
        f"{api}/v1/users/{seg[user]}/recommendations", params={"explain": "true"}, timeout=10
    ).json()["data"]
    assert recs["user_id"] == user and recs["strategy"] == "personalized"
    assert [i["item_id"] for i in recs["items"]][:1] == [m]
    assert xl in recs["items"][0]["reason"]  # "viewed together with SKU-1/XL", the id unaltered
    popular = requests.get(f"{api}/v1/popular", params={"category": "shirts/tops"}, timeout=10).json()
    assert [i["item_id"] for i in popular["data"]["items"]] == [xl]
    # an update through the slashed path applies to the same item
    sold_out = requests.put(
        f"{api}/v1/items/{seg[xl]}",
        json={"title": "Shirt XL", "category": "shirts/tops", "in_stock": False},
        timeout=30,
    )
    assert sold_out.status_code == 202, sold_out.text
    wait_until(
        lambda: requests.get(f"{api}/v1/items/{seg[xl]}", timeout=10).json()["data"]["in_stock"] is False,
        30,
        what="the update folded",
    )
    # the API caches catalog fields for at most STREAMREC_API_CACHE_TTL_MS (1 s by default)
    wait_until(
        lambda: xl
        not in [i["item_id"] for i in requests.get(f"{api}/v1/popular", timeout=10).json()["data"]["items"]],
        10,
        what="the sold-out item to leave popular",
    )
    # and the slashed user is erased through the slashed path
    erased = requests.delete(f"{api}/v1/users/{seg[user]}", timeout=30)
    assert erased.status_code == 202 and erased.json()["data"]["user_id"] == user
    wait_until(lambda: not ns.redis.exists(ns.keys.history(user)), 30, what="the erasure folded")
    assert [k for k in ns.keys.user_keys(user) if ns.redis.exists(k)] == [ns.keys.erased(user)]


def test_catalog_ts_in_seconds_or_microseconds_is_refused_naming_the_unit(namespace: Namespace) -> None:
    api = start_stack(namespace, worker=False)
    now = int(time.time() * 1000)
    for ts, unit in ((now // 1000, "seconds"), (now * 1000, "microseconds")):
        resp = requests.put(f"{api}/v1/items/P", json={"in_stock": False, "ts": ts}, timeout=10)
        assert resp.status_code == 400 and f"looks like epoch {unit}" in resp.json()["msg"], resp.text
    ahead = requests.post(
        f"{api}/v1/events",
        json={"event_id": "e", "type": "view", "user_id": "u", "item_id": "T", "ts": now + 10 * 3_600_000},
        timeout=10,
    )
    # a device clock hours ahead: the action happened now, so it is taken at the receive time
    assert ahead.status_code == 202 and ahead.json()["data"]["ts_set_to_receive_time"] == [0], ahead.text


BAD_BODIES = (
    (
        '{"event_id": "a", "type": "view", "user_id": "u", "item_id": "i", "ts": "1700000000000"}',
        400,
        "ts",
    ),
    ('{"event_id": "a", "type": "view", "user_id": "u", "item_id": "i", "price": "free"}', 400, "price"),
    (
        '{"event_id": "a", "type": "view", "user_id": "u", "item_id": "i", "colour": "red"}',
        400,
        "colour: is not a field",
    ),
    (
        '{"event_id": "a\\u0000b", "type": "view", "user_id": "u", "item_id": "i"}',
        400,
        "control characters",
    ),
    ('{"event_id": "a", "type": "view", "user_id": 7, "item_id": "i"}', 400, "user_id"),
    (
        '{"event_id": "a", "type": "view", "user_id": "u", "item_id": "i", "price": NaN}',
        400,
        "not valid JSON",
    ),
    ("[" * 100_000 + "]" * 100_000, 400, "not valid JSON"),
    ("\udcff".encode("utf-8", "surrogatepass"), 400, "not valid JSON"),
    ('"just a string"', 400, "expected a JSON object"),
    ("[1, null, {}]", 400, "3 of 3 events invalid"),
)


def test_bad_bodies_get_a_400_that_names_the_problem(namespace: Namespace) -> None:
    api = start_stack(namespace, worker=False)
    for body, status, says in BAD_BODIES:
        resp = _post(api, body)
        assert resp.status_code == status, (body[:80], resp.text)
        assert says in resp.json()["msg"], (body[:80], resp.json())


def test_oversized_and_mistyped_bodies_at_the_real_server(namespace: Namespace) -> None:
    api = start_stack(namespace, worker=False)
    huge = _post(api, b'{"pad": "' + b"x" * (5 * 1024 * 1024) + b'"}')
    assert huge.status_code == 413 and huge.json()["code"] == 1413
    form = _post(api, "event_id=a", "application/x-www-form-urlencoded")
    assert form.status_code == 415 and "application/json" in form.json()["msg"]
    batch = [{"event_id": f"b{n}", "type": "view", "user_id": "u", "item_id": "i"} for n in range(1001)]
    too_many = requests.post(f"{api}/v1/events", json=batch, timeout=30)
    assert too_many.status_code == 400 and "at most 1000" in too_many.json()["msg"]
    assert status(f"{api}/healthz") == 200  # and the server is still there
