"""``streamrec bench --serving``'s pure parts: the server shapes it accepts and the table it prints."""

from __future__ import annotations

import pytest

from streamrec.devtools.bench import SERVING_ORDER, WARMED, Server, serving_markdown


def test_server_shapes_parse_and_bad_ones_say_the_form() -> None:
    assert Server.parse("gthread:2x4") == Server("gthread", 2, 4, 500)
    assert Server.parse("sync:3") == Server("sync", 3, 1, 500)
    assert Server.parse("sync:2:1000:nofeed") == Server("sync", 2, 1, 1000, change_feed=False)
    fed = Server.parse("sync:2:500:feed")
    assert fed == Server("sync", 2, 1, 500, change_feed=True)
    assert fed.env()["STREAMREC_API_CHANGE_FEED"] == "true"
    assert fed.label == "sync, 2 workers, cache 500 ms"  # the default: following the change feed
    assert Server.parse("sync:2") == fed
    assert (
        Server.parse("sync:2:nofeed").label
        == "sync, 2 workers, cache 500 ms, no change feed (the old default caches)"
    )
    assert Server.parse("gthread:2x4:0").env()["STREAMREC_API_CACHE_TTL_MS"] == "0"
    assert Server.parse("gthread:2x4:0").label == "gthread, 2 workers × 4 threads, no cache"
    for bad in ("gthread", "gthread:twoxfour", "gthread:2x4:soon"):
        with pytest.raises(ValueError, match="worker-class:workers"):
            Server.parse(bad)


def _report(recs_per_s: float, recs_p99: float, errors: float) -> dict:
    row = {"requests_per_s": 1000.0, "p50_ms": 2.0, "p99_ms": 9.0, "errors": 0.0}
    api = {name: dict(row) for name in SERVING_ORDER}
    api["recommendations"].update(requests_per_s=recs_per_s, p99_ms=recs_p99, errors=errors)
    return {
        "shoppers": 3000,
        "events": 34643,
        "wrk": {"threads": 2, "connections": 16, "seconds": 10},
        "machine": {"cpus": 2},
        "load_average_before_after": [[0.5, 0.4, 0.3], [1.5, 0.7, 0.4]],
        "results": [{"label": "gthread, 2 workers × 4 threads, cache 1000 ms", "api": api}],
    }


@pytest.mark.parametrize(
    ("recs_per_s", "p99", "errors", "verdict"),
    [
        (600, 19.0, 0, "met"),
        (400, 19.0, 0, "**missed**"),
        (600, 21.0, 0, "**missed**"),
        (600, 19.0, 1, "**missed**"),
    ],
)
def test_the_serving_table_checks_every_target_on_recommendations(
    recs_per_s: float, p99: float, errors: float, verdict: str
) -> None:
    table = serving_markdown(_report(recs_per_s, p99, errors))
    rows = [line for line in table.splitlines() if line.startswith("| gthread")]
    assert [r.split(" | ")[1] for r in rows] == list(SERVING_ORDER)
    assert rows[0].endswith(f"p99 ≤ 20 ms, ≥ 50 %, 0 non-2xx: {verdict} |")
    assert "load average before/after 0.5 / 1.5 on 2 cores" in table


def test_the_serving_table_says_what_was_warmed_up_and_for_how_long() -> None:
    report = _report(600, 19.0, 0)
    assert "after 2 s of warm-up on recommendations;" in serving_markdown(report)  # reports before Dec 1
    report["wrk"].update(warm_up_s=240.0, warm_up_on=list(WARMED))
    assert "after 240 s of warm-up on recommendations and similar;" in serving_markdown(report)


def test_the_in_process_answer_cost_is_printed_under_the_table() -> None:
    report = _report(600, 19.0, 0)
    report["answer_cost"] = {
        "rate_per_s": 70.0,
        "answers": 700,
        "median_ms": 6.71,
        "mean_ms": 7.59,
        "p99_ms": 18.13,
        "redis_commands_per_answer": 43.8,
        "cache_hit_rate": {"catalog": 0.452, "neighbours": 0.393},
    }
    table = serving_markdown(report)
    assert "as under 70 answers/s, 700 random shoppers): median 6.71 ms, mean 7.59 ms, p99 18.13 ms" in table
    assert "43.8 Redis commands per answer; cache hit rates catalog 45%, neighbours 39%." in table
    assert "without HTTP" not in serving_markdown(_report(600, 19.0, 0))


def test_the_passes_and_freshness_tables_check_their_targets() -> None:
    report = _report(600, 19.0, 0)
    row = {"requests_per_s": 1000.0, "p50_ms": 2.0, "p99_ms": 9.0, "errors": 0.0}
    slow = {**row, "requests_per_s": 100.0, "p99_ms": 300.0}
    report["results"][0]["passes"] = {
        "cold": {"recommendations": dict(row, requests_per_s=600.0), "trivial (/healthz)": row},
        "live": {"recommendations": slow, "trivial (/healthz)": row, "events_per_s": 499.6},
    }
    report["results"][0]["freshness"] = {
        "similar": {"seconds": [0.03, 1.2], "median_s": 0.6, "max_s": 1.2},
        "personal": {"seconds": [0.05, None], "median_s": None, "max_s": None},
        "own": {"seconds": [0.02], "median_s": 0.02, "max_s": 0.02},
    }
    table = serving_markdown(report)
    assert "| cold | 600 | 2.0 ms | 9.0 ms | 0 | 0.60 | 1,000 | met |" in table
    assert "| live (500 events/s) | 100 | 2.0 ms | 300.0 ms | 0 | 0.10 | 1,000 | **missed** |" in table
    assert "| 0.03, 1.20 | 0.600 s | 1.200 s | ≤ 1 s: **missed** |" in table
    assert "| 0.05, > 10 | > 10 s | > 10 s | ≤ 1 s: **missed** |" in table
    assert "| 0.02 | 0.020 s | 0.020 s | ≤ 0.25 s: met |" in table
