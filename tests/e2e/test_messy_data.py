"""Issue 13's inputs on the real stack (Tansu, Redis, the worker, the API under gunicorn), with the right
answers: writes go in through the API's HTTP endpoints (or a plain kafka-python producer), answers come
back over HTTP. Sold-out best-sellers, a re-categorised and then deleted item, catalog timestamps in other
units, a client whose clock runs 10 h ahead, and the erasure of a user. (Ids holding '/' are in
tests/integration/test_hostile_input.py; the full-answer property test in
tests/integration/test_full_answers.py.)"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import orjson
import pytest
import requests
from kafka import KafkaProducer

from streamrec.state import applied_events
from streamrec.topics import Topics
from tests.conftest import Namespace, wait_until
from tests.integration.test_hostile_input import start_stack

pytestmark = [pytest.mark.e2e, pytest.mark.broker, pytest.mark.redis]

HOUR_MS = 3_600_000


def _now() -> int:
    return int(time.time() * 1000)


def _data(api: str, path: str, **params: Any) -> Any:
    resp = requests.get(f"{api}{path}", params=params, timeout=10)
    assert resp.status_code == 200, (path, resp.text)
    return resp.json()["data"]


def _ids(api: str, path: str, **params: Any) -> list[str]:
    return [i["item_id"] for i in _data(api, path, **params)["items"]]


def _accepted(resp: requests.Response) -> Any:
    assert resp.status_code == 202, resp.text
    return resp.json()["data"]


def _events(api: str, rows: list[dict[str, Any]]) -> None:
    for row in rows:
        row.setdefault("event_id", uuid.uuid4().hex)
    _accepted(requests.post(f"{api}/v1/events", json=rows, timeout=30))


def _items(api: str, rows: list[dict[str, Any]]) -> None:
    _accepted(requests.post(f"{api}/v1/items", json=rows, timeout=30))


def _record(api: str, item: str) -> dict[str, Any] | None:
    resp = requests.get(f"{api}/v1/items/{item}", timeout=10)
    assert resp.status_code in (200, 404), resp.text
    return resp.json()["data"] if resp.status_code == 200 else None


# The API answers through a per-process cache whose staleness is bounded (STREAMREC_API_CACHE_TTL_MS,
# 1 s; neighbour lists STREAMREC_API_CACHE_NEIGHBOURS_TTL_MS, 10 s in the tests' namespace): an answer
# must be right once that bound has passed after the change reached Redis, so each check after a change
# waits that long at most.
SETTLE_S = 12.0


def _eventually(check: Callable[[], bool], what: str) -> None:
    wait_until(check, SETTLE_S, 0.2, what)


def _folded(ns: Namespace, count: int) -> None:
    wait_until(lambda: applied_events(ns.redis, ns.keys) >= count, 30, what=f"{count} events folded")
    assert applied_events(ns.redis, ns.keys) == count


def test_sold_out_best_sellers_leave_the_cold_item_for_k_1(namespace: Namespace) -> None:
    ns, api = namespace, start_stack(namespace)
    hot = [f"h{n}" for n in range(1, 13)]
    _items(api, [{"item_id": i, "title": i, "category": "c"} for i in [*hot, "cold"]])
    wait_until(lambda: all(_record(api, i) for i in [*hot, "cold"]), 30, what="the catalog folded")
    _events(api, [{"type": "view", "user_id": f"{i}-{v}", "item_id": i} for i in hot for v in range(2)])
    _events(api, [{"type": "view", "user_id": "cold-0", "item_id": "cold"}])
    _folded(ns, 25)
    assert _ids(api, "/v1/popular", category="c", k=1) != ["cold"]  # the best-sellers lead while in stock

    _items(api, [{"item_id": i, "title": i, "category": "c", "in_stock": False} for i in hot])
    wait_until(lambda: not any(_record(api, i)["in_stock"] for i in hot), 30, what="h1-h12 sold out")
    for k in (1, 2, 3):
        _eventually(lambda k=k: _ids(api, "/v1/popular", category="c", k=k) == ["cold"], f"popular c k={k}")
        _eventually(lambda k=k: _ids(api, "/v1/popular", k=k) == ["cold"], f"popular k={k}")
        _eventually(lambda k=k: _ids(api, "/v1/trending", category="c", k=k) == ["cold"], f"trending c k={k}")
    new_user = f"new-{uuid.uuid4().hex[:6]}"

    def cold_for_new_user() -> bool:
        answer = _data(api, f"/v1/users/{new_user}/recommendations", category="c", k=1)
        return [i["item_id"] for i in answer["items"]] == ["cold"] and answer[
            "strategy"
        ] == "category_popular"

    _eventually(cold_for_new_user, "cold for a new user in c")
    _eventually(lambda: _ids(api, f"/v1/users/{new_user}/recommendations", k=3) == ["cold"], "cold, k=3")


def _listed(api: str, query: str = "") -> str:
    """The storefront's product grid (all products, or the search results for ``query``) as HTML."""
    resp = requests.get(f"{api}/shop/", params={"q": query} if query else {}, timeout=10)
    assert resp.status_code == 200
    return resp.text


def test_a_recategorised_item_moves_lists_in_any_order_and_a_deleted_one_leaves_everything(
    namespace: Namespace,
) -> None:
    ns, api = namespace, start_stack(namespace)
    m, n, p = "item-M", "item-N", "item-P"
    _items(
        api, [{"item_id": m, "title": "M", "category": "A"}, {"item_id": n, "title": "N", "category": "A"}]
    )
    wait_until(lambda: _record(api, m) and _record(api, n), 30, what="M and N in the catalog")
    rows = []
    for u in range(3):
        rows += [
            {"type": "view", "user_id": f"u{u}", "item_id": m},
            {"type": "add_to_cart", "user_id": f"u{u}", "item_id": m},
        ]
    rows += [{"type": "view", "user_id": "u0", "item_id": n}, {"type": "view", "user_id": "w", "item_id": n}]
    # a shopper who searched for a zebra lamp chose M: the storefront's search learns it
    rows += [
        {"type": "search", "user_id": "s0", "query": "zebra lamp"},
        {"type": "view", "user_id": "s0", "item_id": m},
    ]
    # P's events come before its catalog record (the two topics are consumed independently)
    rows += [{"type": "view", "user_id": f"p{v}", "item_id": p} for v in range(2)]
    _events(api, rows)
    _folded(ns, len(rows))
    assert _ids(api, "/v1/popular", category="A") == [m, n]
    assert _ids(api, "/v1/trending", category="A")[0] == m

    _accepted(requests.put(f"{api}/v1/items/{m}", json={"title": "M", "category": "B"}, timeout=30))
    _accepted(requests.put(f"{api}/v1/items/{p}", json={"title": "P", "category": "A"}, timeout=30))
    wait_until(lambda: (r := _record(api, m)) and r["category"] == "B", 30, what="M re-categorised")
    wait_until(lambda: _record(api, p), 30, what="P in the catalog")
    for kind in ("popular", "trending"):
        _eventually(lambda kind=kind: _ids(api, f"/v1/{kind}", category="B") == [m], f"{kind} B")
        _eventually(lambda kind=kind: sorted(_ids(api, f"/v1/{kind}", category="A")) == [n, p], f"{kind} A")
    # a new event files M under B only
    _events(api, [{"type": "view", "user_id": "u9", "item_id": m}])
    _folded(ns, len(rows) + 1)
    _eventually(
        lambda: m not in _ids(api, "/v1/popular", category="A")
        and _ids(api, "/v1/popular", category="B") == [m],
        "M under B only",
    )

    # before the deletion M is everywhere: similar to N (u0 saw both), recommended to a shopper of N
    viewer = f"x-{uuid.uuid4().hex[:6]}"
    _events(api, [{"type": "view", "user_id": viewer, "item_id": n}])
    _folded(ns, len(rows) + 2)
    _eventually(lambda: m in _ids(api, f"/v1/items/{n}/similar"), "M similar to N")
    _eventually(lambda: _ids(api, f"/v1/users/{viewer}/recommendations", k=1) == [m], "M recommended")
    assert f'data-item-id="{m}"' in _listed(api) and f'data-item-id="{m}"' in _listed(api, "zebra lamp")

    _accepted(requests.delete(f"{api}/v1/items/{m}", timeout=30))
    wait_until(lambda: _record(api, m) is None, 30, what="M deleted")
    gone = requests.get(f"{api}/v1/items/{m}", timeout=10)
    assert gone.status_code == 404 and "no item" in gone.json()["msg"]
    for kind in ("popular", "trending"):
        for category in (None, "A", "B"):
            params = {"category": category} if category else {}
            _eventually(
                lambda kind=kind, params=params: m not in _ids(api, f"/v1/{kind}", k=20, **params),
                f"M out of {kind} {category}",
            )
    _eventually(lambda: _ids(api, "/v1/popular", category="B") == [], "popular B empty")
    _eventually(lambda: m not in _ids(api, f"/v1/items/{n}/similar", k=20), "M out of similar")
    _eventually(lambda: m not in _ids(api, f"/v1/users/{viewer}/recommendations", k=20), "M not recommended")
    listing = _listed(api)
    assert f'data-item-id="{n}"' in listing and f'data-item-id="{m}"' not in listing
    assert f'data-item-id="{m}"' not in _listed(api, "zebra lamp")
    assert requests.get(f"{api}/shop/p/{m}", timeout=10).status_code == 404
    # a late event for the deleted item does not bring it back
    _events(api, [{"type": "view", "user_id": "late", "item_id": m}])
    _folded(ns, len(rows) + 3)
    assert m not in _ids(api, "/v1/popular", k=20) and not ns.redis.exists(ns.keys.activity(m))


def test_catalog_ts_in_other_units_is_refused_and_a_normal_update_applies(namespace: Namespace) -> None:
    api = start_stack(namespace)
    _accepted(requests.put(f"{api}/v1/items/P", json={"title": "P", "in_stock": True}, timeout=30))
    wait_until(lambda: _record(api, "P"), 30, what="P in the catalog")
    now = _now()
    for ts, unit in ((now // 1000, "seconds"), (now * 1000, "microseconds")):
        resp = requests.put(f"{api}/v1/items/P", json={"in_stock": False, "ts": ts}, timeout=10)
        assert resp.status_code == 400, resp.text
        assert f"looks like epoch {unit}" in resp.json()["msg"] and str(ts) in resp.json()["msg"]
    # a device 10 h ahead (within 1995-2100): over HTTP its ts becomes the receive time, and the 202 says so
    ahead = requests.post(
        f"{api}/v1/events",
        json={"event_id": "e", "type": "view", "user_id": "u", "item_id": "T", "ts": now + 10 * HOUR_MS},
        timeout=10,
    )
    assert ahead.status_code == 202 and ahead.json()["data"]["ts_set_to_receive_time"] == [0], ahead.text
    assert _record(api, "P")["in_stock"] is True  # nothing refused reached the catalog

    stamped = _now()
    _accepted(
        requests.put(f"{api}/v1/items/P", json={"title": "P", "in_stock": False, "ts": stamped}, timeout=30)
    )
    wait_until(lambda: _record(api, "P")["in_stock"] is False, 30, what="the update applied")
    assert _record(api, "P")["ts"] == stamped
    # and a later one without ts (the receive time) applies after it
    _accepted(requests.put(f"{api}/v1/items/P", json={"title": "P2", "in_stock": True}, timeout=30))
    wait_until(lambda: _record(api, "P")["title"] == "P2", 30, what="the next update applied")
    assert _record(api, "P")["in_stock"] is True


def test_a_client_10_hours_ahead_cannot_freeze_trending(namespace: Namespace) -> None:
    # the skew raised so that the API and the worker accept the event: the state's clock must still
    # not follow it (decay is capped at the worker's wall clock)
    ns, api = namespace, start_stack(namespace, STREAMREC_MAX_FUTURE_SKEW_MS=str(11 * HOUR_MS))
    _items(api, [{"item_id": t, "title": t, "category": "toys"} for t in ("T1", "T2")])
    wait_until(lambda: _record(api, "T1") and _record(api, "T2"), 30, what="the catalog folded")
    ahead = _now() + 10 * HOUR_MS
    _events(api, [{"type": "view", "user_id": "fast-clock", "item_id": "T1", "ts": ahead}])
    _folded(ns, 1)
    assert _ids(api, "/v1/trending") == ["T1"]

    # six fresh cart adds from different shoppers make T2 trend within seconds, overall and in its category
    _events(api, [{"type": "add_to_cart", "user_id": f"shopper{u}", "item_id": "T2"} for u in range(6)])
    wait_until(
        lambda: _ids(api, "/v1/trending", k=1) == _ids(api, "/v1/trending", k=1, category="toys") == ["T2"],
        10,
        what="T2 trending first",
    )
    assert _ids(api, "/v1/trending", k=20) == ["T2", "T1"]
    assert _ids(api, "/v1/popular", k=20) == ["T2", "T1"]
    last = int(ns.redis.hget(ns.keys.activity("T1"), "last") or 0)
    assert last <= _now()  # folded as of the worker's clock, not the client's


def test_an_erased_user_leaves_no_trace_and_no_old_event_brings_them_back(namespace: Namespace) -> None:
    ns, api = namespace, start_stack(namespace)
    topics = Topics(ns.settings.topic_prefix)
    user = f"gone/{uuid.uuid4().hex[:6]}"
    seg = quote(user, safe="")
    t = _now() - 60_000
    theirs = [
        {"event_id": f"g{n}", "type": kind, "user_id": user, "item_id": item, "ts": t + n}
        for n, (kind, item) in enumerate(
            [("view", "a"), ("view", "b"), ("add_to_cart", "b"), ("purchase", "b")]
        )
    ]
    theirs.append(
        {"event_id": "g-search", "type": "search", "user_id": user, "query": "red shoes", "ts": t + 9}
    )
    theirs.append({"event_id": "g-after", "type": "view", "user_id": user, "item_id": "c", "ts": t + 10})
    # another shopper went from the same items on to e and f: the erased user's personal candidates
    others = [
        {"type": "view", "user_id": "other", "item_id": i, "ts": t + 20 + n} for n, i in enumerate("abcef")
    ]
    _events(api, [dict(e) for e in theirs] + others)
    _folded(ns, len(theirs) + len(others))
    k = ns.keys
    present = [key for key in k.user_keys(user) if ns.redis.exists(key)]
    assert {k.history(user), k.prefs(user), k.bought(user), k.searches(user), k.version(user)} <= set(present)
    assert _data(api, f"/v1/users/{seg}/recommendations")["strategy"] == "personalized"
    occurrences = {i: ns.redis.hget(k.activity(i), "c") for i in "abc"}

    erased = _accepted(requests.delete(f"{api}/v1/users/{seg}", timeout=30))
    assert erased["user_id"] == user
    wait_until(lambda: not ns.redis.exists(k.history(user)), 30, what="the erasure folded")
    assert [key for key in k.user_keys(user) if ns.redis.exists(key)] == [k.erased(user)]
    stranger = f"never-seen-{uuid.uuid4().hex[:6]}"
    assert _data(api, f"/v1/users/{seg}/recommendations")["strategy"] != "personalized"
    assert _ids(api, f"/v1/users/{seg}/recommendations") == _ids(api, f"/v1/users/{stranger}/recommendations")

    # their old events again: a late one through the API, and the originals redelivered, byte for byte,
    # by a plain kafka-python producer (new offsets; the dedupe claims left with the user)
    _events(api, [{"type": "view", "user_id": user, "item_id": "d", "ts": t + 30}])
    producer = KafkaProducer(bootstrap_servers=ns.settings.kafka_bootstrap, acks="all", linger_ms=0)
    try:
        for e in theirs:
            producer.send(topics.events, key=user.encode(), value=orjson.dumps(e))
        # one marker per partition, after the replays: once both are folded, so is everything before them
        markers = [f"marker-{p}" for p in range(2)]
        for p, marker in enumerate(markers):
            producer.send(
                topics.events,
                key=marker.encode(),
                value=orjson.dumps({"event_id": marker, "type": "view", "user_id": marker, "item_id": "z"}),
                partition=p,
            )
        producer.flush()
    finally:
        producer.close()
    wait_until(lambda: all(ns.redis.exists(k.history(m)) for m in markers), 30, what="the markers folded")
    assert [key for key in k.user_keys(user) if ns.redis.exists(key)] == [k.erased(user)]
    assert {i: ns.redis.hget(k.activity(i), "c") for i in "abc"} == occurrences  # nothing folded twice
    assert not ns.redis.exists(k.activity("d"))
    assert _data(api, f"/v1/users/{seg}/recommendations")["strategy"] != "personalized"

    # a new action after the erasure is a new start
    _events(api, [{"type": "view", "user_id": user, "item_id": "a"}])
    wait_until(lambda: ns.redis.exists(k.history(user)), 30, what="the new action folded")
    assert [e.split(b"|")[0] for e in ns.redis.lrange(k.history(user), 0, -1)] == [b"a"]
