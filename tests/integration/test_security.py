"""API keys, roles, rate limits and CORS: the pure parts directly, the rest against the real API under
gunicorn with a real broker and Redis."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests

from streamrec.api.security import KeyConfigError, KeyRing, TokenBucket, parse_keys
from streamrec.topics import Topics, ensure_topics
from tests.conftest import Namespace, wait_until

SHOP = "pk-" + uuid.uuid4().hex  # an "events" key, as the storefront's page gets it
WRITER = "sk-" + uuid.uuid4().hex
ADMIN = "ak-" + uuid.uuid4().hex
# WRITER with its last digit changed (one key in 16 ends in "0": replacing it with "0" changed nothing)
NOT_WRITER = WRITER[:-1] + ("1" if WRITER.endswith("0") else "0")
FILED = "fk-" + uuid.uuid4().hex  # from the secret file


# --- pure parts ---------------------------------------------------------------------------------------


def test_key_entries_name_a_secret_and_a_role() -> None:
    keys = parse_keys(f"shop={SHOP}:events, ops = {ADMIN}:admin\n# a comment\nbackend={WRITER}")
    assert [(k.name, k.role) for k in keys] == [("shop", "events"), ("ops", "admin"), ("backend", "write")]
    assert keys[1].secret == ADMIN
    assert ADMIN not in repr(keys)  # a key printed by accident shows no secret
    # a colon inside a secret that is not followed by a role stays part of the secret
    assert parse_keys("x=abcdefgh:ijklmnopqrst")[0].secret == "abcdefgh:ijklmnopqrst"


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("justasecretwithoutname", "is not 'name=secret"),
        ("a=short", "at least 16 characters"),
        (f"a={SHOP},a={WRITER}", "unique"),
    ],
)
def test_bad_key_entries_are_refused_without_echoing_the_secret(text: str, complaint: str) -> None:
    with pytest.raises(KeyConfigError, match=complaint) as info:
        parse_keys(text)
    assert SHOP not in str(info.value) and WRITER not in str(info.value)


def test_keyring_finds_only_exact_secrets() -> None:
    ring = KeyRing(parse_keys(f"shop={SHOP}:events,backend={WRITER}"))
    assert ring.find(WRITER).name == "backend"  # type: ignore[union-attr]
    assert ring.find(WRITER[:-1]) is None and ring.find(WRITER + "x") is None and ring.find("") is None
    assert ring.find("ünïcødé") is None
    assert ring.publishable().name == "shop"  # type: ignore[union-attr]


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    now = [100.0]
    bucket = TokenBucket(rate=2, burst=3, clock=lambda: now[0])
    assert [bucket.take("a") for _ in range(3)] == [0, 0, 0]
    assert bucket.take("a") == pytest.approx(0.5)  # the next token is half a second away
    assert bucket.take("b") == 0  # another key has its own bucket
    now[0] += 0.5
    assert bucket.take("a") == 0
    assert bucket.take("a") > 0
    now[0] += 100
    assert [bucket.take("a") for _ in range(4)][:3] == [0, 0, 0]  # refilled to the burst, not beyond


def test_token_bucket_remembers_a_bounded_number_of_names() -> None:
    bucket = TokenBucket(rate=1, burst=1, clock=lambda: 0.0, max_names=10)
    for n in range(1000):
        bucket.take(f"addr-{n}")
    assert len(bucket._buckets) == 10


# --- the real API ---------------------------------------------------------------------------------------


def _event(user: str = "u1") -> dict:
    return {"event_id": uuid.uuid4().hex, "type": "view", "user_id": user, "item_id": "i1"}


def _start_api(ns: Namespace, **env: str) -> str:
    ns.env.update(env)
    ensure_topics(ns.settings.kafka_bootstrap, Topics(ns.settings.topic_prefix), 2)
    ns.start("api", "api")
    api = f"http://127.0.0.1:{ns.settings.api_port}"
    wait_until(lambda: _get(f"{api}/healthz") == 200, 30, what="the API")
    return api


def _get(url: str) -> int:
    try:
        return requests.get(url, timeout=2).status_code
    except requests.RequestException:
        return 0


@pytest.mark.broker
@pytest.mark.redis
def test_keys_protect_writes_and_admin_actions_and_never_reach_the_logs(
    namespace: Namespace, tmp_path: Path
) -> None:
    secret_file = tmp_path / "keys"
    secret_file.write_text(f"# mounted secret\nfiled={FILED}\n")
    api = _start_api(
        namespace,
        STREAMREC_API_KEYS=f"shop={SHOP}:events,backend={WRITER},ops={ADMIN}:admin",
        STREAMREC_API_KEYS_FILE=str(secret_file),
        STREAMREC_CORS_ORIGINS="https://shop.example",
        STREAMREC_LOG_LEVEL="DEBUG",
    )
    post, put = f"{api}/v1/events", f"{api}/v1/items/sku-1"
    item = {"title": "Sock"}

    missing = requests.post(post, json=_event(), timeout=10)
    assert missing.status_code == 401 and missing.json()["code"] == 1401
    assert "API key" in missing.json()["msg"] and missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = requests.post(post, json=_event(), headers={"X-API-Key": NOT_WRITER}, timeout=10)
    assert wrong.status_code == 401 and wrong.json()["msg"] == "the API key is not valid"

    # the publishable key may send events, nothing else
    assert requests.post(post, json=_event(), headers={"X-API-Key": SHOP}, timeout=10).status_code == 202
    refused = requests.put(put, json=item, headers={"X-API-Key": SHOP}, timeout=10)
    assert refused.status_code == 403 and "role events" in refused.json()["msg"]
    # a write key (bearer or header, from the env or the secret file) may upsert the catalog
    assert (
        requests.put(put, json=item, headers={"Authorization": f"Bearer {WRITER}"}, timeout=10).status_code
        == 202
    )
    assert (
        requests.post(
            f"{api}/v1/items", json=[{"item_id": "s2"}], headers={"X-API-Key": FILED}, timeout=10
        ).status_code
        == 202
    )
    # admin actions need the admin key; with it, the model store answers (nothing published here)
    rollback = f"{api}/v1/admin/model/rollback"
    assert requests.post(rollback, headers={"X-API-Key": WRITER}, timeout=10).status_code == 403
    answer = requests.post(rollback, headers={"X-API-Key": ADMIN}, timeout=10)
    assert answer.status_code == 409 and "roll back" in answer.json()["msg"]
    activate = requests.post(
        f"{api}/v1/admin/model/activate", json={"version": "nope"}, headers={"X-API-Key": ADMIN}, timeout=10
    )
    assert activate.status_code == 404 and "no published model version" in activate.json()["msg"]
    # reads are open
    assert requests.get(f"{api}/v1/popular", timeout=10).status_code == 200

    # CORS: the configured origin may call, preflight included; another origin gets no grant
    pre = requests.options(
        post,
        headers={
            "Origin": "https://shop.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, x-api-key",
        },
        timeout=10,
    )
    assert pre.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    assert "X-API-Key" in pre.headers["Access-Control-Allow-Headers"]
    other = requests.get(f"{api}/v1/popular", headers={"Origin": "https://evil.example"}, timeout=10)
    assert "Access-Control-Allow-Origin" not in other.headers

    # the storefront's page carries the publishable key, and only that one
    page = requests.get(f"{api}/shop/", timeout=10).text
    assert f'content="{SHOP}"' in page and WRITER not in page and ADMIN not in page

    # no secret in the API's log (DEBUG) nor in `streamrec settings`
    shown = subprocess.run(
        [sys.executable, "-m", "streamrec.cli", "settings"],
        env=namespace.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0 and "STREAMREC_API_KEYS" in shown.stdout
    log = (namespace.log_dir / "api.log").read_text()
    assert "4 configured" in log
    for secret in (SHOP, WRITER, ADMIN, FILED, NOT_WRITER):
        assert secret not in log and secret not in shown.stdout + shown.stderr


@pytest.mark.broker
@pytest.mark.redis
def test_writes_are_rate_limited_per_key_with_retry_after(namespace: Namespace) -> None:
    api = _start_api(
        namespace,
        STREAMREC_API_KEYS=f"a={WRITER},b={ADMIN}:admin",
        STREAMREC_WRITE_RATE_PER_S="0.5",
        STREAMREC_WRITE_BURST="3",
    )
    post = f"{api}/v1/events"
    codes = [requests.post(post, json=_event(), headers={"X-API-Key": WRITER}, timeout=10) for _ in range(4)]
    assert [r.status_code for r in codes] == [202, 202, 202, 429]
    limited = codes[-1]
    assert limited.json()["code"] == 1429 and "too many writes" in limited.json()["msg"]
    assert 1 <= int(limited.headers["Retry-After"]) <= 2
    # another key is not held back; reads are never limited
    assert requests.post(post, json=_event(), headers={"X-API-Key": ADMIN}, timeout=10).status_code == 202
    assert all(requests.get(f"{api}/v1/popular", timeout=10).status_code == 200 for _ in range(5))
    # after Retry-After the key may write again
    wait_until(
        lambda: requests.post(post, json=_event(), headers={"X-API-Key": WRITER}, timeout=10).status_code
        == 202,
        5,
        interval=0.5,
        what="a token to come back",
    )


@pytest.mark.broker
@pytest.mark.redis
def test_without_keys_writes_are_open_with_a_warning_and_admin_is_closed(namespace: Namespace) -> None:
    api = _start_api(namespace)
    assert requests.post(f"{api}/v1/events", json=_event(), timeout=10).status_code == 202
    admin = requests.post(f"{api}/v1/admin/model/rollback", timeout=10)
    assert admin.status_code == 403 and "admin key" in admin.json()["msg"]
    assert 'name="streamrec-api-key"' not in requests.get(f"{api}/shop/", timeout=10).text
    assert "no API keys configured" in (namespace.log_dir / "api.log").read_text()
