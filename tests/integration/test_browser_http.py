"""What browser storefronts and the web's caches send and need, against the real stack (Tansu, Redis, the
worker, the API under gunicorn): CORS preflights carrying tracing headers, an explicit caching policy on
every answer, compressed request bodies (and bombs), and an event time ahead of the server's clock."""

from __future__ import annotations

import gzip
import json
import time
import uuid
import zlib
from pathlib import Path

import pytest
import requests
import zstandard

from streamrec.contract import MAX_TS_MS, now_ms
from streamrec.state import applied_events
from tests.conftest import Namespace, wait_until
from tests.integration.test_hostile_input import start_stack

pytestmark = [pytest.mark.broker, pytest.mark.redis]

SHOP = "https://shop.example.com"
ADMIN = "ak-" + uuid.uuid4().hex
WRITER = "sk-" + uuid.uuid4().hex
KEYS = {"STREAMREC_API_KEYS": f"ops={ADMIN}:admin,backend={WRITER}", "STREAMREC_CORS_ORIGINS": SHOP}
JSON = {"Content-Type": "application/json", "X-API-Key": WRITER}
# what OpenTelemetry, Sentry, Zipkin and Datadog browser SDKs add to a storefront's calls, and ids
TRACING = [
    "traceparent",
    "tracestate",
    "baggage",
    "sentry-trace",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-sampled",
    "x-datadog-trace-id",
    "x-request-id",
    "x-client-id",
]
LOOK_ALIKES = [
    "https://shop.example.com.evil.io",  # the allowed origin as a prefix
    "https://evilshop.example.com",  # as a suffix
    "https://evil.shop.example.com",  # a subdomain of it
    "http://shop.example.com",  # another scheme
    "https://shop.example.com:8443",  # another port
    "https://shop.example.co",
    "null",  # a sandboxed frame or a file
]


def _event(tag: str, n: int, **extra: object) -> dict[str, object]:
    return {
        "event_id": f"{tag}-{n}",
        "type": "view",
        "user_id": f"u-{tag}",
        "item_id": f"i-{tag}-{n % 3}",
        "ts": now_ms() - 60_000 + n,
        **extra,
    }


def _events_body(tag: str, n: int) -> bytes:
    return json.dumps([_event(tag, n)]).encode()


def test_a_storefront_with_tracing_gets_its_preflight_and_look_alikes_get_nothing(
    namespace: Namespace,
) -> None:
    api = start_stack(namespace, worker=False, **KEYS)
    asked = ", ".join(["content-type", "x-api-key", *TRACING])
    pre = requests.options(
        f"{api}/v1/events",
        headers={
            "Origin": SHOP,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": asked,
        },
        timeout=10,
    )
    assert pre.status_code == 200
    assert pre.headers["Access-Control-Allow-Origin"] == SHOP
    allowed = {h.strip().lower() for h in pre.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"content-type", "authorization", "x-api-key", *TRACING} <= allowed
    assert "POST" in pre.headers["Access-Control-Allow-Methods"]
    assert int(pre.headers["Access-Control-Max-Age"]) > 0
    vary = {v.strip().lower() for v in pre.headers["Vary"].split(",")}
    assert {"origin", "access-control-request-headers", "access-control-request-method"} <= vary
    # names a page cannot set, or that are not header names, are not granted
    odd = requests.options(
        f"{api}/v1/events",
        headers={
            "Origin": SHOP,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "cookie, sec-fetch-mode, bad(name), traceparent",
        },
        timeout=10,
    ).headers["Access-Control-Allow-Headers"]
    assert "traceparent" in odd and "cookie" not in odd and "sec-" not in odd and "bad" not in odd

    # the call itself, with the tracing headers a browser then sends
    tag = uuid.uuid4().hex[:8]
    sent = requests.post(
        f"{api}/v1/events",
        data=_events_body(tag, 0),
        headers={
            **JSON,
            "Origin": SHOP,
            "traceparent": f"00-{uuid.uuid4().hex}-{tag}{tag}-01",
            "baggage": "a=b",
        },
        timeout=30,
    )
    assert sent.status_code == 202, sent.text
    assert sent.headers["Access-Control-Allow-Origin"] == SHOP
    exposed = sent.headers["Access-Control-Expose-Headers"].lower()
    assert "retry-after" in exposed and "x-request-id" in exposed
    read = requests.get(f"{api}/v1/popular", headers={"Origin": SHOP}, timeout=10)
    assert read.headers["Access-Control-Allow-Origin"] == SHOP and "Origin" in read.headers["Vary"]

    for origin in LOOK_ALIKES:
        pre = requests.options(
            f"{api}/v1/events",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": asked,
            },
            timeout=10,
        )
        got = requests.get(f"{api}/v1/popular", headers={"Origin": origin}, timeout=10)
        for resp in (pre, got):
            granted = [h for h in resp.headers if h.lower().startswith("access-control-")]
            assert granted == [], (origin, granted)
            assert "Origin" in resp.headers["Vary"]  # a cache keeps the grant and the refusal apart


def test_every_answer_states_its_caching_policy(namespace: Namespace) -> None:
    ns = namespace
    api = start_stack(ns, **KEYS)
    tag = uuid.uuid4().hex[:8]
    user, item = f"u-{tag}", f"i-{tag}-0"
    write = requests.post(
        f"{api}/v1/events", json=[_event(tag, n) for n in range(6)], headers=JSON, timeout=30
    )
    assert write.status_code == 202 and write.headers["Cache-Control"] == "private, no-store"
    put = requests.put(
        f"{api}/v1/items/{item}", json={"title": "T", "category": "c"}, headers=JSON, timeout=30
    )
    assert put.status_code == 202 and put.headers["Cache-Control"] == "private, no-store"
    wait_until(lambda: applied_events(ns.redis, ns.keys) == 6, 30, what="the events folded")
    record = wait_until(
        lambda: (r := requests.get(f"{api}/v1/items/{item}", timeout=10)).status_code == 200 and r,
        30,
        what="the catalog record folded",
    )

    # every recommendation answer carries an id made for that one response: nobody may store it
    for path in (
        f"/v1/users/{user}/recommendations",
        f"/v1/items/{item}/similar",
        f"/v1/items/{item}/similar?user_id={user}",
        "/v1/popular",
        "/v1/trending?category=c",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        resp = requests.get(f"{api}{path}", timeout=10)
        assert resp.status_code == 200, (path, resp.text)
        assert resp.headers["Cache-Control"] == "private, no-store", path
        assert "ETag" not in resp.headers, path

    # the catalog record and the document are the same for everyone: kept, but asked again each time
    assert record.headers["Cache-Control"] == "public, no-cache"
    again = requests.get(
        f"{api}/v1/items/{item}", headers={"If-None-Match": record.headers["ETag"]}, timeout=10
    )
    assert again.status_code == 304 and again.content == b""
    changed = requests.put(
        f"{api}/v1/items/{item}", json={"title": "T2", "category": "c"}, headers=JSON, timeout=30
    )
    assert changed.status_code == 202
    fresh = wait_until(
        lambda: (r := requests.get(f"{api}/v1/items/{item}", timeout=10)).json()["data"]["title"] == "T2"
        and r,
        30,
        what="the change folded",
    )
    assert fresh.headers["ETag"] != record.headers["ETag"]
    doc = requests.get(f"{api}/openapi.json", timeout=10)
    assert doc.headers["Cache-Control"] == "public, no-cache" and doc.headers["ETag"]

    # errors of every kind: no-store
    errors = [
        requests.get(f"{api}/v1/popular?k=0", timeout=10),  # 400
        requests.post(f"{api}/v1/events", json=[_event(tag, 9)], timeout=10),  # 401, no key
        requests.get(f"{api}/v1/items/{tag}-none", timeout=10),  # 404
        requests.get(f"{api}/nowhere", timeout=10),  # 404
        requests.delete(f"{api}/v1/popular", timeout=10),  # 405
        requests.post(
            f"{api}/v1/events", data=b"[" + b" " * (4 * 1024 * 1024) + b"]", headers=JSON, timeout=30
        ),  # 413
        requests.post(
            f"{api}/v1/events", data=b"x", headers={**JSON, "Content-Type": "text/plain"}, timeout=10
        ),
    ]
    assert [r.status_code for r in errors] == [400, 401, 404, 404, 405, 413, 415]
    for resp in errors:
        assert resp.headers["Cache-Control"] == "no-store", (resp.status_code, resp.headers)


def _compressed(coding: str, body: bytes) -> bytes:
    if coding == "gzip":
        return gzip.compress(body)
    if coding == "deflate":
        return zlib.compress(body)
    if coding == "raw-deflate":
        packer = zlib.compressobj(wbits=-15)
        return packer.compress(body) + packer.flush()
    return zstandard.ZstdCompressor().compress(body)


def test_compressed_bodies_are_decoded_on_every_endpoint_that_takes_one(namespace: Namespace) -> None:
    ns = namespace
    api = start_stack(ns, **KEYS)
    tag = uuid.uuid4().hex[:8]
    sent = [
        ("gzip", "gzip"),
        ("deflate", "deflate"),
        ("raw-deflate", "deflate"),  # what some browsers and clients send as "deflate"
        ("zstd", "zstd"),
        ("zstd", "ZSTD"),
        ("gzip", "x-gzip"),
    ]
    for n, (how, header) in enumerate(sent):
        body = _compressed(how, _events_body(tag, n))
        resp = requests.post(
            f"{api}/v1/events", data=body, headers={**JSON, "Content-Encoding": header}, timeout=30
        )
        assert resp.status_code == 202, (header, resp.text)
        assert resp.json()["data"]["event_ids"] == [f"{tag}-{n}"]
    stacked = gzip.compress(zstandard.ZstdCompressor().compress(_events_body(tag, 10)))
    resp = requests.post(
        f"{api}/v1/events", data=stacked, headers={**JSON, "Content-Encoding": "zstd, gzip"}, timeout=30
    )
    assert resp.status_code == 202, resp.text
    wait_until(lambda: applied_events(ns.redis, ns.keys) == len(sent) + 1, 30, what="every event folded")

    item = f"i-{tag}-z"
    put = requests.put(
        f"{api}/v1/items/{item}",
        data=_compressed("zstd", b'{"title": "zstd shoes", "category": "shoes"}'),
        headers={**JSON, "Content-Encoding": "zstd"},
        timeout=30,
    )
    assert put.status_code == 202, put.text
    bulk = requests.post(
        f"{api}/v1/items",
        data=_compressed("gzip", f'[{{"item_id": "{item}-2", "title": "gzip hat"}}]'.encode()),
        headers={**JSON, "Content-Encoding": "gzip"},
        timeout=30,
    )
    assert bulk.status_code == 202, bulk.text
    for path, title in ((item, "zstd shoes"), (f"{item}-2", "gzip hat")):
        wait_until(
            lambda p=path, t=title: requests.get(f"{api}/v1/items/{p}", timeout=10)
            .json()
            .get("data", {})
            .get("title")
            == t,
            30,
            what=f"{path} folded",
        )
    # the admin endpoint reads its body the same way (the version is unknown: a 404 after decoding)
    admin = requests.post(
        f"{api}/v1/admin/model/activate",
        data=gzip.compress(b'{"version": "nope"}'),
        headers={"Content-Type": "application/json", "X-API-Key": ADMIN, "Content-Encoding": "gzip"},
        timeout=10,
    )
    assert admin.status_code == 404 and "no published model version" in admin.json()["msg"]

    # a body that is not valid in its coding is a 400 that says so, not "not valid JSON"
    for header, body in (("gzip", b"not gzip"), ("gzip", gzip.compress(b"[1]")[:-4]), ("zstd", b"nope")):
        bad = requests.post(
            f"{api}/v1/events", data=body, headers={**JSON, "Content-Encoding": header}, timeout=10
        )
        assert bad.status_code == 400 and bad.json()["code"] == 1006 and header in bad.json()["msg"]


def _worker_peak_kib(api_pid: int) -> int:
    """The largest peak resident size (VmHWM) among the API's gunicorn workers."""
    children = Path(f"/proc/{api_pid}/task/{api_pid}/children").read_text().split()
    peaks = []
    for pid in children:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peaks.append(int(line.split()[1]))
    assert peaks
    return max(peaks)


def test_a_compression_bomb_is_a_quick_413_without_memory_growth(namespace: Namespace) -> None:
    ns = namespace
    api = start_stack(ns, worker=False, **KEYS)
    api_pid = ns.procs[-1].proc.pid
    for _ in range(3):  # warm the worker up, so its peak is its working size
        requests.post(f"{api}/v1/events", data=_events_body("warm", 0), headers=JSON, timeout=30)
    before = _worker_peak_kib(api_pid)
    zeros = bytes(1 << 30)  # 1 GiB of zeros
    bombs = {
        "gzip": gzip.compress(zeros, 9),  # about 1 MiB
        "deflate": zlib.compress(zeros, 9),
        "zstd": zstandard.ZstdCompressor(level=3).compress(zeros),  # a few KiB
    }
    del zeros
    for coding, bomb in bombs.items():
        for path, method in (("/v1/events", "POST"), ("/v1/items/bomb", "PUT"), ("/v1/items", "POST")):
            started = time.monotonic()
            resp = requests.request(
                method, f"{api}{path}", data=bomb, headers={**JSON, "Content-Encoding": coding}, timeout=30
            )
            took = time.monotonic() - started
            assert resp.status_code == 413, (coding, path, resp.status_code, resp.text[:200])
            assert resp.json()["code"] == 1413 and resp.headers["Cache-Control"] == "no-store"
            assert took < 2.0, (coding, path, took)
    grown_mib = (_worker_peak_kib(api_pid) - before) / 1024
    assert grown_mib < 32, f"a worker's peak memory grew by {grown_mib:.0f} MiB"


def test_other_codings_are_a_415_naming_the_ones_taken(namespace: Namespace) -> None:
    api = start_stack(namespace, worker=False, **KEYS)
    body = _events_body("x", 0)
    targets = (
        ("POST", "/v1/events", WRITER),
        ("PUT", "/v1/items/x", WRITER),
        ("POST", "/v1/items", WRITER),
        ("POST", "/v1/admin/model/activate", ADMIN),
    )
    for coding in ("br", "compress", "x-foo", "gzip, br", "gzip, gzip, gzip, gzip"):
        for method, path, key in targets:
            resp = requests.request(
                method,
                f"{api}{path}",
                data=body,
                headers={"Content-Type": "application/json", "X-API-Key": key, "Content-Encoding": coding},
                timeout=10,
            )
            assert resp.status_code == 415, (coding, path, resp.status_code, resp.text)
            assert resp.json()["code"] == 1415
            codings = {c.strip() for c in resp.headers["Accept-Encoding"].split(",")}
            assert codings == {"gzip", "deflate", "zstd"}, resp.headers
            assert resp.headers["Cache-Control"] == "no-store"
    # identity is no coding at all
    resp = requests.post(
        f"{api}/v1/events", data=body, headers={**JSON, "Content-Encoding": "identity"}, timeout=30
    )
    assert resp.status_code == 202, resp.text


def test_an_event_time_ahead_of_the_servers_clock_becomes_the_receive_time(namespace: Namespace) -> None:
    ns = namespace
    api = start_stack(ns, **KEYS)
    tag = uuid.uuid4().hex[:8]
    ahead = now_ms() + 10 * 3_600_000  # a device clock in the wrong time zone
    rows = [_event(tag, 0), _event(tag, 1, ts=ahead), _event(tag, 2, ts=MAX_TS_MS)]
    before = now_ms()
    resp = requests.post(f"{api}/v1/events", json=rows, headers=JSON, timeout=30)
    assert resp.status_code == 202, resp.text
    assert resp.json()["data"]["ts_set_to_receive_time"] == [1, 2]
    wait_until(lambda: applied_events(ns.redis, ns.keys) == 3, 30, what="the events folded")

    item = f"i-{tag}-future"
    put = requests.put(
        f"{api}/v1/items/{item}", json={"title": "later", "ts": MAX_TS_MS}, headers=JSON, timeout=30
    )
    assert put.status_code == 202 and put.json()["data"]["ts_set_to_receive_time"] == [0]
    stored = wait_until(
        lambda: (r := requests.get(f"{api}/v1/items/{item}", timeout=10)).status_code == 200
        and r.json()["data"],
        30,
        what="the record folded",
    )
    assert before <= stored["ts"] <= now_ms()
    # and a later update, stamped now, is not shadowed by the far-future one
    newer = requests.put(f"{api}/v1/items/{item}", json={"title": "now"}, headers=JSON, timeout=30)
    assert newer.status_code == 202 and "ts_set_to_receive_time" not in newer.json()["data"]
    wait_until(
        lambda: requests.get(f"{api}/v1/items/{item}", timeout=10).json()["data"]["title"] == "now",
        30,
        what="the later update folded",
    )
    # past 2100 is still a unit error, refused naming the unit
    micro = requests.post(
        f"{api}/v1/events", json=[_event(tag, 5, ts=now_ms() * 1000)], headers=JSON, timeout=10
    )
    assert micro.status_code == 400 and "microseconds" in micro.json()["msg"]
