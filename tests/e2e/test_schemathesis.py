"""The API's own OpenAPI document drives schemathesis, with every check (``--checks all``) and every phase,
against the real API under gunicorn (real broker and Redis): no 5xx; every answer matches the document
(status, content type, schema, headers); what the document calls valid is accepted and what it calls
invalid is refused; 405s carry ``Allow``; write endpoints enforce keys. The document is also checked
against the app's URL map, so a new route cannot go undocumented."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from streamrec.api.app import create_app
from streamrec.api.openapi import documented_rules
from streamrec.contract import ID_PATTERN, MIN_TS_MS
from streamrec.event_types import EventType
from streamrec.settings import Settings
from streamrec.topics import Topics, ensure_topics
from tests.conftest import Namespace, wait_until

ADMIN = "ak-" + uuid.uuid4().hex
# The run's one setting: gunicorn answers a request line over 4094 bytes with 414 before the app sees it
# (the document says so); schemathesis' default list of rejections lacks 414, so a long invalid query
# would count as "accepted". A 414 is a rejection; and a valid filter= document may make the request line
# too long just the same, so a 414 is also what a valid request may get.
CONFIG = """
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "414", "415", "422", "428", "429", "5xx"]

[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "414", "429", "5xx"]

# An experiment whose variants share a name is refused with a 400 naming the second one: JSON Schema
# cannot say "unique by name", so a document valid by the schema may still be refused there.
[[operations]]
include-operation-id = "admin_experiments_put_experiment"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "414", "429", "5xx"]

# GET /v1/trending takes the very parameters of GET /v1/popular through the same view (``_listing``; the
# test below checks the parameters stay equal), and the coverage phase spends ~40 s on each of them
# enumerating the filter= document's grammar. Trending keeps the examples, fuzzing and stateful phases.
[[operations]]
include-operation-id = "v1_trending"
phases.coverage.enabled = false
"""


def test_every_route_is_documented_and_nothing_else() -> None:
    app = create_app(Settings(redis_url="redis://127.0.0.1:1/0"))  # the document needs no Redis
    doc = app.extensions["streamrec.openapi"]
    routes = {(path, method) for path, method, _ in documented_rules(app)}
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert routes == documented, f"undocumented: {routes - documented}; gone: {documented - routes}"
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op["summary"] and op["responses"], (method, path)
            params = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert params == set(re.findall(r"{(\w+)}", path)), (method, path)


def test_trending_takes_exactly_the_parameters_of_popular() -> None:
    """What lets the schemathesis run below skip trending's coverage phase: popular's covers the same."""
    app = create_app(Settings(redis_url="redis://127.0.0.1:1/0"))
    paths = app.extensions["streamrec.openapi"]["paths"]
    assert paths["/v1/trending"]["get"]["parameters"] == paths["/v1/popular"]["get"]["parameters"]
    assert paths["/v1/trending"]["get"]["operationId"] == "v1_trending"


def test_events_are_a_union_by_type_that_says_what_each_type_needs() -> None:
    app = create_app(Settings(redis_url="redis://127.0.0.1:1/0"))
    schemas = app.extensions["streamrec.openapi"]["components"]["schemas"]
    union = schemas["Event"]
    assert union["discriminator"]["propertyName"] == "type"
    mapping = union["discriminator"]["mapping"]
    assert set(mapping) == {t.value for t in EventType}
    assert [ref["$ref"] for ref in union["oneOf"]] == list(mapping.values())
    for kind, ref in mapping.items():
        variant = schemas[ref.rsplit("/", 1)[-1]]
        needs = "query" if kind == "search" else "item_id"
        assert variant["properties"]["type"] == {"const": kind, "type": "string"}
        assert set(variant["required"]) == {"event_id", "type", "user_id", needs}
        assert variant["additionalProperties"] is False
        assert variant["properties"]["ts"]["minimum"] == MIN_TS_MS
        assert variant["properties"]["user_id"]["pattern"] == ID_PATTERN


@pytest.mark.e2e
@pytest.mark.broker
@pytest.mark.redis
@pytest.mark.timeout(720)  # ~23,000 generated requests: ~3 min on a quiet machine, more while CI is busy
def test_schemathesis_with_every_check_finds_nothing(namespace: Namespace) -> None:
    ns = namespace
    ns.env.update(
        {
            "STREAMREC_API_KEYS": f"fuzz={ADMIN}:admin",
            "STREAMREC_WRITE_RATE_PER_S": "0",  # limits are tested elsewhere; here every write is let in
            "STREAMREC_API_WORKERS": "2",
            # the default time policy: a ts further ahead of the clock than allowed becomes the receive
            # time, so every ts the document allows (1995 to 2100) is accepted whatever the clock says
        }
    )
    ensure_topics(ns.settings.kafka_bootstrap, Topics(ns.settings.topic_prefix), 2)
    ns.start("api", "api")
    api = f"http://127.0.0.1:{ns.settings.api_port}"
    wait_until(lambda: _status(f"{api}/readyz") == 200, 30, what="the API to be ready")
    docs = requests.get(f"{api}/docs", timeout=10)
    assert docs.status_code == 200 and "POST /v1/events" in docs.text
    assert not re.search(r"(src|href)=['\"]https?:", docs.text)  # nothing from outside this server

    report = ns.log_dir / "schemathesis.xml"
    (ns.log_dir / "schemathesis.toml").write_text(CONFIG)  # read from the working directory
    started = time.monotonic()
    run = subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "run",
            f"{api}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            "5",  # the coverage phase ignores this and sends ~20,000 requests; the others stay short
            "--workers",
            "1",  # its threads can trip CPython 3.11's "AST constructor recursion depth mismatch"
            "--seed",
            str(uuid.uuid4().int % 2**31),
            "--generation-database",
            "none",
            "--request-timeout",
            "15",
            "--header",
            f"X-API-Key: {ADMIN}",
            "--no-color",
            "--report",
            "junit",
            "--report-junit-path",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ns.log_dir,  # it keeps a cache folder in its working directory
        env={**ns.env, "SCHEMATHESIS_HOOKS": ""},
    )
    (ns.log_dir / "schemathesis.txt").write_text(run.stdout + run.stderr)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    tried = re.search(r"(\d+) generated", run.stdout)
    summary = {
        "exit": run.returncode,
        "generated": int(tried.group(1)) if tried else None,
        "seconds": round(time.monotonic() - started, 1),
    }
    (ns.log_dir / "schemathesis-summary.json").write_text(json.dumps(summary))
    assert ADMIN not in (ns.log_dir / "api.log").read_text()


def _status(url: str) -> int:
    try:
        return requests.get(url, timeout=2).status_code
    except requests.RequestException:
        return 0
