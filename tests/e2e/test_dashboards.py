"""Every Grafana panel and every alert has data: the repo's Prometheus config and rules, a real Prometheus
(Debian's) scraping a real worker, the API under gunicorn, the simulator and a Redis exporter, after
traffic that includes attributed clicks and purchases, a malformed event and failed requests."""

from __future__ import annotations

import json
import math
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from streamrec.devtools.localstack import free_port, spawn, wait_for_port
from streamrec.experiment_store import ExperimentStore
from streamrec.experiments import parse_experiment
from streamrec.placement_store import PlacementStore
from streamrec.placements import parse_placement
from streamrec.publisher import EventPublisher
from streamrec.topics import Topics, ensure_topics
from tests.conftest import Namespace, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.broker, pytest.mark.redis]

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "infra" / "prometheus"
DASHBOARDS = ROOT / "infra" / "grafana" / "dashboards"
RATE_INTERVAL = "1m"  # what Grafana's $__rate_interval becomes at a 1 s scrape interval and a short range


def need(binary: str, package: str) -> str:
    found = shutil.which(binary)
    assert found, f"{binary} is missing: install the Debian package {package} (listed in .ci/apt-packages)"
    return found


def with_bool(expr: str) -> str:
    """An alert expression whose comparisons keep every series (0 or 1) instead of filtering them.

    An alert's expression returns nothing while all is well; with ``bool`` it returns the series it
    compares, so "no data" can only mean the series it watches do not exist.
    """
    out, i, depth = [], 0, 0
    while i < len(expr):
        ch = expr[i]
        if ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
        elif ch == '"':
            end = expr.index('"', i + 1)
            out.append(expr[i : end + 1])
            i = end + 1
            continue
        if depth == 0:
            for op in ("==", "!=", ">=", "<=", ">", "<"):
                if expr.startswith(op, i):
                    out.append(f"{op} bool")
                    i += len(op)
                    break
            else:
                out.append(ch)
                i += 1
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def panel_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every target of every panel of every dashboard in the repo."""
    queries = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel["targets"]:
                expr = target["expr"].replace("$__rate_interval", RATE_INTERVAL)
                assert "$" not in expr, f"unhandled Grafana variable in {path.name}: {expr}"
                queries.append((f"{board['title']} / {panel['title']} / {target['refId']}", expr))
    return queries


def alert_queries() -> list[tuple[str, str]]:
    rules = yaml.safe_load((PROM_DIR / "alerts.yml").read_text())
    return [
        (f"alert {rule['alert']}", with_bool(rule["expr"]))
        for group in rules["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def prometheus_config(tmp: Path, targets: dict[str, str]) -> Path:
    """The repo's prometheus.yml with each job's discovery replaced by this test's loopback targets."""
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(PROM_DIR / name) for name in config["rule_files"]]
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert jobs == set(targets), f"the test scrapes {sorted(targets)}, the config has {sorted(jobs)}"
    for job in config["scrape_configs"]:
        job.pop("dns_sd_configs", None)
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def query(prom: str, expr: str) -> list[dict[str, Any]]:
    resp = requests.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10)
    assert resp.status_code == 200, f"{expr}: {resp.text[:300]}"
    result: list[dict[str, Any]] = resp.json()["data"]["result"]
    return result


def has_data(prom: str, expr: str) -> bool:
    """At least one series with a real number (NaN is what Grafana draws as nothing)."""
    return any(math.isfinite(float(row["value"][1])) for row in query(prom, expr))


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.RequestException:  # not listening yet, or too busy starting to answer
        return False


def start_parts(ns: Namespace, tmp: Path) -> tuple[str, str]:
    """Worker, API (two gunicorn workers), simulator, Redis exporter and Prometheus; returns their URLs."""
    ports = {name: free_port() for name in ("worker", "producer", "exporter", "prometheus")}
    ns.env.update(
        STREAMREC_WORKER_METRICS_PORT=str(ports["worker"]),
        STREAMREC_PRODUCER_METRICS_PORT=str(ports["producer"]),
        STREAMREC_API_WORKERS="2",
        STREAMREC_LOG_FORMAT="json",
        # what the dashboards show, not the answer cache (tests/integration/test_consistent_read.py):
        # every answer reads Redis, so each strategy is served once the traffic is folded
        STREAMREC_API_CACHE_TTL_MS="0",
        STREAMREC_API_CACHE_NEIGHBOURS_TTL_MS="0",
    )
    ensure_topics(ns.settings.kafka_bootstrap, Topics(ns.settings.topic_prefix), 2)
    ns.start("worker", "worker")
    ns.start("api", "api")
    api = f"http://127.0.0.1:{ns.settings.api_port}"
    wait_until(lambda: _ok(f"{api}/readyz"), 30, what="the API to be ready")
    ns.start("simulator", "simulate", "--users", "50", "--items", "40", "--events", "100000", "--rate", "20")

    exporter = spawn(
        "redis-exporter",
        [
            need("prometheus-redis-exporter", "prometheus-redis-exporter"),
            "-redis.addr",
            ns.settings.redis_url.rsplit("/", 1)[0],
            "-web.listen-address",
            f"127.0.0.1:{ports['exporter']}",
        ],
        ns.log_dir / "redis-exporter.log",
    )
    ns.procs.append(exporter)
    config = prometheus_config(
        tmp,
        {
            "streamrec-api": f"127.0.0.1:{ns.settings.api_port}",
            "streamrec-worker": f"127.0.0.1:{ports['worker']}",
            "streamrec-producer": f"127.0.0.1:{ports['producer']}",
            "redis": f"127.0.0.1:{ports['exporter']}",
            "prometheus": f"127.0.0.1:{ports['prometheus']}",
        },
    )
    prom_proc = spawn(
        "prometheus",
        [
            need("prometheus", "prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
            "--log.level=warn",
        ],
        ns.log_dir / "prometheus.log",
    )
    ns.procs.append(prom_proc)
    wait_for_port(ports["prometheus"], 30, prom_proc.proc)
    prom = f"http://127.0.0.1:{ports['prometheus']}"
    wait_until(lambda: _ok(f"{prom}/-/ready"), 30, what="Prometheus to be ready")
    # counters must be seen at zero before the traffic, or rate() cannot tell when they rose
    wait_until(
        lambda: len(query(prom, "up == 1")) == 5, 30, interval=0.2, what="a first scrape of every target"
    )
    return api, prom


def traffic(ns: Namespace, api: str) -> None:
    """Catalog, history, every kind of recommendation, attributed actions on them, and bad input."""
    items = [
        {"item_id": f"sku-{i}", "title": f"Item {i}", "category": f"c{i % 3}", "price": 5.0} for i in range(8)
    ]
    assert requests.post(f"{api}/v1/items", json=items, timeout=10).status_code == 202
    now = int(time.time() * 1000)
    history = [
        {
            "event_id": uuid.uuid4().hex,
            "type": "view",
            "user_id": f"h{u}",
            "item_id": f"sku-{(u + j) % 8}",
            "ts": now - 5000 + j,
        }
        for u in range(10)
        for j in range(3)
    ]
    assert requests.post(f"{api}/v1/events", json=history, timeout=10).status_code == 202

    def folded() -> bool:
        similar = requests.get(f"{api}/v1/items/sku-1/similar", timeout=5).json()["data"]
        in_category = requests.get(f"{api}/v1/popular", params={"category": "c1"}, timeout=5).json()["data"]
        return similar["strategy"] == "item_to_item" and bool(in_category["items"])

    # events and catalog records travel on different topics: wait for both
    wait_until(
        folded,
        30,
        interval=0.1,
        what="the history and the catalog folded in",
    )
    answers: list[requests.Response] = []

    def filled() -> bool:
        answers[:] = [
            requests.get(f"{api}/v1/users/h1/recommendations", timeout=5),
            requests.get(f"{api}/v1/users/someone-new/recommendations", timeout=5),
            requests.get(f"{api}/v1/items/sku-1/similar", timeout=5),
            requests.get(f"{api}/v1/popular", params={"category": "c1"}, timeout=5),
            requests.get(f"{api}/v1/trending", timeout=5),
            requests.get(f"{api}/v1/popular", params={"category": "no-such-category"}, timeout=5),
        ]
        return all(r.json()["data"]["items"] for r in answers[:5])

    # asked again until all five are filled: the traffic's last effects may still be on their way to Redis
    wait_until(filled, 15, interval=0.2, what="every answer filled")
    experiment(ns, api)
    strategies = {r.json()["data"]["strategy"] for r in answers}
    assert {"personalized", "item_to_item", "popular", "trending", "empty"} <= strategies, strategies
    cited = []
    for n, resp in enumerate(answers[:5]):
        data = resp.json()["data"]
        for event_type in ("view", "add_to_cart", "purchase"):
            cited.append(
                {
                    "event_id": uuid.uuid4().hex,
                    "type": event_type,
                    "user_id": f"shopper-{n}",
                    "item_id": data["items"][0]["item_id"],
                    "recommendation_id": data["recommendation_id"],
                }
            )
    assert requests.post(f"{api}/v1/events", json=cited, timeout=10).status_code == 202
    assert requests.post(f"{api}/v1/events", json=[{"type": "view"}], timeout=10).status_code == 400
    topics = Topics(ns.settings.topic_prefix)
    with EventPublisher(ns.settings.kafka_bootstrap, topics) as pub:
        pub.publish_raw(topics.events, b"bad", b"this is not JSON").get(10)


def experiment(ns: Namespace, api: str) -> None:
    """An A/B experiment on a placement, its answers to a few shoppers and a purchase citing one of them:
    the experiment panels and the sample-ratio-mismatch alert read its series."""
    placements = PlacementStore(ns.redis, ns.keys)
    for name in ("home", "home-b"):
        placements.put(parse_placement(name, {"strategy": "popular"}))
    variants = [{"name": "a", "weight": 1, "use": "home"}, {"name": "b", "weight": 1, "use": "home-b"}]
    ExperimentStore(ns.redis, ns.keys).put(
        parse_experiment("home-ab", {"placement": "home", "variants": variants})
    )

    def split() -> list[dict[str, Any]]:
        got = [
            requests.get(f"{api}/v1/users/ab-{n}/recommendations", params={"placement": "home"}, timeout=5)
            for n in range(10)
        ]
        data = [r.json()["data"] for r in got if r.status_code == 200]
        return data if len(data) == 10 and all("experiment" in d for d in data) else []

    answers = wait_until(split, 10, interval=0.2, what="the experiment splitting its placement")
    assert isinstance(answers, list)
    bought = answers[0]
    purchase = {
        "event_id": uuid.uuid4().hex,
        "type": "purchase",
        "user_id": "ab-0",
        "item_id": bought["items"][0]["item_id"],
        "recommendation_id": bought["recommendation_id"],
        "price": 5.0,
    }
    assert requests.post(f"{api}/v1/events", json=[purchase], timeout=10).status_code == 202


def test_every_dashboard_panel_and_alert_expression_has_data(namespace: Namespace, tmp_path: Path) -> None:
    ns = namespace
    api, prom = start_parts(ns, tmp_path)
    traffic(ns, api)
    # keep some requests flowing so that every rate window has fresh samples while we look
    checks = panel_queries() + alert_queries()
    assert len(checks) > 30

    def empty() -> list[str]:
        requests.get(f"{api}/v1/users/h2/recommendations", timeout=5)
        return [f"{where}: {expr}" for where, expr in checks if not has_data(prom, expr)]

    missing: list[str] = []

    def all_have_data() -> bool:
        missing[:] = empty()
        return not missing

    try:
        wait_until(all_have_data, 90, interval=1.0, what="every panel and alert query to return data")
    except AssertionError:
        raise AssertionError("no data for:\n" + "\n".join(missing)) from None

    # every job in the config is scraped and up, the simulator included
    wait_until(lambda: len(query(prom, "up == 1")) == 5, 30, interval=0.5, what="every target up")
    assert has_data(
        prom, 'streamrec_producer_records_sent_total{job="streamrec-producer", topic="events"} > 0'
    )

    # clicks were credited to the strategies that served them
    def clicked() -> set[str]:
        rows = query(prom, "strategy:streamrec_ctr:ratio_rate5m > 0")
        return {row["metric"]["strategy"] for row in rows}

    served = {"personalized", "item_to_item", "category_popular", "popular", "trending"}
    try:
        wait_until(lambda: served <= clicked(), 30, interval=1.0, what="clicks")
    except AssertionError:
        raise AssertionError(
            f"click-through rates {query(prom, 'strategy:streamrec_ctr:ratio_rate5m')}; "
            f"attributed {query(prom, 'streamrec_worker_attributed_events_total > 0')}; "
            f"impressions {query(prom, 'strategy:streamrec_impressions:rate5m')}"
        ) from None
    assert has_data(prom, 'strategy:streamrec_conversion:ratio_rate5m{strategy="item_to_item"} > 0')
    # the API logged JSON lines that carry request ids
    lines = [
        json.loads(line) for line in (ns.log_dir / "api.log").read_text().splitlines() if line.startswith("{")
    ]
    assert any(line.get("request_id") and line.get("endpoint") == "/v1/events" for line in lines)
    worker_lines = [
        json.loads(x) for x in (ns.log_dir / "worker.log").read_text().splitlines() if x.startswith("{")
    ]
    assert any(line.get("reason", "").startswith("not valid JSON") for line in worker_lines)


def test_with_bool_keeps_label_matchers_and_strings() -> None:
    assert (
        with_bool('up{job!="a"} == 0 or absent(up{job="a"})')
        == 'up{job!="a"} == bool 0 or absent(up{job="a"})'
    )
    assert (
        with_bool('x{e=~"5.."} > 0.5 and rate(y[5m]) >= 1')
        == 'x{e=~"5.."} > bool 0.5 and rate(y[5m]) >= bool 1'
    )
