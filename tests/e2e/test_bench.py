"""``streamrec bench --quick`` runs every measure on a stack of its own and writes the figures' files.

It checks the shape of what is written (every measure, every target, a table row per measure, a PNG),
never the figures themselves: those depend on the machine and are reported, not asserted.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import needs_dataset

pytestmark = [pytest.mark.e2e]


@pytest.mark.skipif(shutil.which("wrk") is None, reason="the API bench needs Debian's wrk")
@needs_dataset("amazon-beauty")  # the ingest and memory measures replay it
def test_quick_bench_writes_every_measure_to_json_markdown_and_a_plot(tmp_path: Path) -> None:
    out = tmp_path / "docs"
    done = subprocess.run(
        [sys.executable, "-m", "streamrec.cli", "bench", "--quick", "--out-dir", str(out)],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    figures = json.loads((out / "bench.json").read_text())
    assert set(figures) >= {
        "machine",
        "plan",
        "ingest",
        "freshness",
        "api",
        "memory",
        "scale",
        "targets",
        "met",
    }
    assert figures["plan"]["repeats"] == 1
    for name in (
        "one_worker_events_per_s",
        "two_workers_events_per_s",
        "end_to_end_one_worker_events_per_s",
        "producer_events_per_s",
        "broker_raw_events_per_s",
        "state_script_events_per_s",
        "faust_alone_events_per_s",
    ):
        assert figures["ingest"][name] > 0, name
    assert 0 < figures["freshness"]["p50_ms"] <= figures["freshness"]["p99_ms"]
    assert set(figures["api"]) == {"recommendations", "similar", "popular", "trending", "trivial (/healthz)"}
    for endpoint, row in figures["api"].items():
        assert 0 < row["p50_ms"] <= row["p99_ms"], endpoint
        assert row["requests_per_s"] > 0 and row["errors"] == 0, endpoint
    memory = figures["memory"]
    assert memory["users"] > 0 and memory["items"] > 0
    assert memory["bytes_per_user"] > 0 and memory["bytes_per_item"] > 0
    assert [s["events"] for s in figures["scale"]] == figures["plan"]["scale_sizes"]
    assert all(math.isfinite(s["ingest_events_per_s"]) and s["used_memory"] > 0 for s in figures["scale"])
    assert set(figures["met"]) == set(figures["targets"])
    assert all(isinstance(v, bool) for v in figures["met"].values())

    table = (out / "bench.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| measure | figure |")
    for label in ("ingest, 1 worker", "ingest, 2 workers", "freshness", "API recommendations", "API similar"):
        assert any(label in r for r in rows), label
    assert sum(r.startswith("| API ") for r in rows) == 5
    assert any("Redis memory" in r for r in rows)
    scale_rows = [r for r in rows if r.split("|")[1].strip().replace(",", "").isdigit()]
    assert len(scale_rows) == len(figures["scale"])
    assert table in done.stdout

    assert (out / "scale.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
