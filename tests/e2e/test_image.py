"""The container image: its healthcheck command, and the image built and run for real with podman."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from streamrec.devtools.localstack import LOOPBACK, free_port

pytestmark = pytest.mark.e2e


class _Healthz(BaseHTTPRequestHandler):
    """Answers 200 on /healthz and 404 elsewhere, like the API."""

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's name
        pass


@pytest.fixture
def healthz_port() -> Iterator[int]:
    server = ThreadingHTTPServer((LOOPBACK, 0), _Healthz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _healthcheck(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_") and k != "HEALTHCHECK_URL"}
    return subprocess.run(
        [sys.executable, "-m", "streamrec.cli", "healthcheck"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_healthcheck_follows_the_configured_api_port(healthz_port: int) -> None:
    ok = _healthcheck(STREAMREC_API_PORT=str(healthz_port), STREAMREC_API_HOST="0.0.0.0")
    assert ok.returncode == 0, ok.stderr
    assert f"healthy: http://127.0.0.1:{healthz_port}/healthz answered 200" in ok.stdout
    # the image's old fixed URL (port 8000) would not see an API moved to another port
    moved = _healthcheck(STREAMREC_API_PORT=str(free_port()))
    assert moved.returncode == 1 and "unhealthy:" in moved.stderr


def test_healthcheck_url_overrides_and_a_non_2xx_answer_is_unhealthy(healthz_port: int) -> None:
    metrics = _healthcheck(
        HEALTHCHECK_URL=f"http://{LOOPBACK}:{healthz_port}/healthz", STREAMREC_API_PORT="1"
    )
    assert metrics.returncode == 0, metrics.stderr
    missing = _healthcheck(HEALTHCHECK_URL=f"http://{LOOPBACK}:{healthz_port}/metrics")
    assert missing.returncode == 1 and "404" in missing.stderr
    nonsense = _healthcheck(HEALTHCHECK_URL="not a url")
    assert nonsense.returncode == 1 and "unhealthy: not a url" in nonsense.stderr


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_image_builds_and_runs_api_and_worker_as_uid_10001(artifacts: Path) -> None:
    missing = [tool for tool in ("podman", "runc", "mmdebstrap") if not shutil.which(tool)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (Debian: apt-get install podman runc mmdebstrap)")
    if os.geteuid() != 0:
        pytest.skip("the image check runs podman and mmdebstrap as root")
    log_dir = artifacts / "image-check"
    check = subprocess.run(
        [sys.executable, "-m", "streamrec.devtools.image_check", "--log-dir", str(log_dir)],
        capture_output=True,
        text=True,
        timeout=1400,
    )
    report = check.stdout + check.stderr
    assert check.returncode == 0, report
    for step in (
        "build image",
        "processes run as uid 10001",
        "healthcheck",
        "packaged templates, static files, Lua scripts",
        "storefront and recommendations answer",
        "clean up",
    ):
        assert f"ok   {step}" in report, report
    assert "FAIL" not in report, report
