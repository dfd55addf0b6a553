"""The README's first command: ``streamrec up`` brings the stack up on real data, prints live
recommendations, and Ctrl-C leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from streamrec.devtools.localstack import free_port

pytestmark = [pytest.mark.e2e]


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _descendants(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-eo", "pid=,ppid=,pgid="], capture_output=True, text=True, check=True).stdout
    rows = [tuple(int(x) for x in line.split()) for line in out.splitlines() if line.strip()]
    found, frontier = set(), {pid}
    while frontier:
        children = {p for p, pp, _ in rows if pp in frontier} - found
        found |= children
        frontier = children
    return found


def test_up_replays_real_data_prints_recommendations_and_stops_cleanly(
    tmp_path: Path, artifacts: Path
) -> None:
    ports = {"kafka": free_port(), "redis": free_port(), "api": free_port()}
    env = {
        **os.environ,
        "STREAMREC_KAFKA_BOOTSTRAP": f"127.0.0.1:{ports['kafka']}",
        "STREAMREC_REDIS_URL": f"redis://127.0.0.1:{ports['redis']}/0",
        "STREAMREC_API_PORT": str(ports["api"]),
        "STREAMREC_API_WORKERS": "1",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamrec.cli",
            "up",
            "--dataset",
            "movielens-100k",
            "--limit",
            "3000",
            "--data-dir",
            str(tmp_path / "stack"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "Press Ctrl-C" in line:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(240), "streamrec up did not finish its demo:\n" + "".join(lines)
        children = _descendants(proc.pid)
        assert len(children) >= 4  # broker, redis, worker, api (+ gunicorn workers)
        assert all(_listening(p) for p in ports.values())
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(5)
        if proc.stdout:
            proc.stdout.close()
        (artifacts / "streamrec-up.txt").write_text("".join(lines))
    output = "".join(lines)
    assert "Recommended for user" in output and "Popular now:" in output
    assert re.search(
        r"\n +\d+  .+ \(\d{4}\)\n", output
    )  # MovieLens titles ("Title (1995)") enrich the answers
    time.sleep(0.5)
    left = [pid for pid in children if Path(f"/proc/{pid}").exists()]
    assert not left, f"processes left behind: {left}"
    assert not any(_listening(p) for p in ports.values())
