"""The README's first command: ``streamrec up`` brings the stack up on real data or, with no datasets, on
the built-in shop, prints live recommendations, and Ctrl-C or SIGTERM leaves no process behind, however
it was started. Wrong input stops it in a second with one line, before any service starts."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from streamrec.devtools.localstack import free_port
from streamrec.settings import Settings, keys_of
from tests.conftest import needs_dataset, wait_until

pytestmark = [pytest.mark.e2e]

README = Path(__file__).resolve().parents[2] / "README.md"
FIRST_ANSWERS_S = 120  # the promise: live recommendations within two minutes of `make up`


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _descendants(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True, check=True).stdout
    rows = [tuple(int(x) for x in line.split()) for line in out.splitlines() if line.strip()]
    found, frontier = set(), {pid}
    while frontier:
        children = {p for p, pp in rows if pp in frontier} - found
        found |= children
        frontier = children
    return found


def _get(url: str) -> tuple[str, bytes]:
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback
        return resp.headers["Content-Type"], resp.read()


@dataclass
class Up:
    """One ``streamrec up`` child in its own session, its output collected line by line."""

    proc: subprocess.Popen[str]
    ports: dict[str, int]
    reader: threading.Thread | None = None
    lines: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float) -> float:
        """Seconds from the start until a line containing ``text`` was printed."""
        wait_until(lambda: text in self.output() or self.proc.poll() is not None, timeout, 0.2, repr(text))
        assert text in self.output(), self.output()
        return time.monotonic() - self.started


@pytest.fixture
def start_up(tmp_path: Path, artifacts: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Up]]:
    """Start ``streamrec up`` on free ports; afterwards kill its whole tree whatever the test did."""
    started: list[Up] = []

    def start(*args: str, env: dict[str, str] | None = None, ignore_sigint: bool = False) -> Up:
        ports = {"kafka": free_port(), "redis": free_port(), "api": free_port()}
        full_env = {
            **os.environ,
            "STREAMREC_KAFKA_BOOTSTRAP": f"127.0.0.1:{ports['kafka']}",
            "STREAMREC_REDIS_URL": f"redis://127.0.0.1:{ports['redis']}/0",
            "STREAMREC_API_PORT": str(ports["api"]),
            "STREAMREC_API_WORKERS": "1",
            **(env or {}),
        }
        # a background job of a non-interactive shell starts exactly like this: SIGINT ignored
        before = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamrec.cli", "up", *args],
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            preexec_fn=before,  # noqa: PLW1509 - only a signal disposition, before exec
        )
        up = Up(proc, ports)

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                up.lines.append(line)

        up.reader = threading.Thread(target=read, daemon=True)
        up.reader.start()
        started.append(up)
        return up

    yield start
    for n, up in enumerate(started):
        tree = _descendants(up.proc.pid) if up.proc.poll() is None else set()
        if up.proc.poll() is None:
            up.proc.kill()
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
        up.proc.wait(10)
        if up.reader is not None:
            up.reader.join(10)
        if up.proc.stdout is not None:
            up.proc.stdout.close()
        (artifacts / f"{request.node.name}-{n}.txt").write_text(up.output())


def _readme_curls(api_port: int) -> tuple[str, str]:
    """The README's HTTP API examples against this stack, in two parts: up to the category's popular
    list (catalog, events, reads), and the rest (deletions, odd ids, health)."""
    text = README.read_text()
    block = text[text.index("## HTTP API") :]
    block = block[block.index("```bash\n") + 8 :]
    block = block[: block.index("```")].replace("localhost:8000", f"127.0.0.1:{api_port}")
    split = block.index("\n", block.index("/v1/popular?k=10&category=shoes")) + 1
    return block[:split], block[split:]


def _bash(script: str) -> None:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _stops_cleanly(up: Up, sig: int) -> None:
    children = _descendants(up.proc.pid)
    assert len(children) >= 4, children  # broker, redis, worker, api (+ gunicorn workers)
    assert all(_listening(p) for p in up.ports.values())
    up.proc.send_signal(sig)
    assert up.proc.wait(60) == 0, up.output()
    wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in children), 5, what="no process left")
    assert not any(_listening(p) for p in up.ports.values())


def test_up_without_datasets_runs_the_built_in_shop_stops_on_an_ignored_sigint_and_reruns_on_kept_state(
    start_up: Callable[..., Up], tmp_path: Path
) -> None:
    empty = tmp_path / "no-datasets"
    empty.mkdir()
    data_dir = tmp_path / "stack"
    up = start_up("--data-dir", str(data_dir), env={"STREAMREC_DATASETS": str(empty)}, ignore_sigint=True)
    seconds = up.wait_for("Press Ctrl-C", FIRST_ANSWERS_S)
    output = up.output()
    print(f"first answers {seconds:.1f}s after 'streamrec up' started")
    notes = [line for line in output.splitlines() if line.startswith("no datasets in")]
    assert len(notes) == 1 and str(empty) in notes[0]
    assert "STREAMREC_DATASETS" in notes[0] and "--dataset" in notes[0]
    assert "simulated 10000 events over 300 catalog items" in output
    assert re.search(
        r"\n10,000 events folded into Redis [\d.]+s after the feed started \([\d,]+ events/s", output
    )
    assert "Popular now:" in output
    assert re.search(r"Recommended for user shopper-\d+ \(personalized", output)
    assert re.search(r"\n +sku-\d+  \w+", output)  # the shop's titles enrich the answers
    assert not re.search(r" INFO kafka", output)  # library chatter stays out of the demo
    assert "Traceback" not in output

    api = f"http://127.0.0.1:{up.ports['api']}"
    content_type, _ = _get(f"{api}/metrics")
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    first, rest = _readme_curls(up.ports["api"])
    _bash(first)

    def shoes() -> list[str]:
        return [
            i["item_id"]
            for i in json.loads(_get(f"{api}/v1/popular?k=10&category=shoes")[1])["data"]["items"]
        ]

    wait_until(
        lambda: shoes() == ["sku-42", "sku-43"], 10, 0.1, "the README's events under popular?category=shoes"
    )
    alice = json.loads(
        _get(f"{api}/v1/users/alice/recommendations?k=10&category=shoes&exclude=sku-7,sku-9&explain=true")[1]
    )["data"]
    assert [(i["item_id"], i["reason"]) for i in alice["items"]] == [
        ("sku-43", "bought together with sku-42")
    ]
    _bash(rest)  # the other examples run too (they delete sku-42 and erase alice)

    _stops_cleanly(up, signal.SIGINT)
    assert "every process stopped" in up.output()

    # the same again on the state Redis kept: the feed is not published twice, and the new broker's
    # offsets (from 0 again, below the last run's watermarks) do not make the workers skip new events
    again = start_up("--data-dir", str(data_dir), env={"STREAMREC_DATASETS": str(empty)})
    again.wait_for("Press Ctrl-C", FIRST_ANSWERS_S)
    output = again.output()
    assert "offset watermarks are forgotten, since this broker numbers records from 0 again" in output
    assert re.search(
        r"was already folded into this state \(10,0\d\d events\), so it is not published", output
    )
    assert "publishing" not in output and "events/s" not in output
    assert "Popular now:" in output
    api = f"http://127.0.0.1:{again.ports['api']}"
    request = urllib.request.Request(
        f"{api}/v1/events",
        data=b'{"event_id": "rerun-1", "type": "purchase", "user_id": "rerun", "item_id": "sku-00007"}',
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as resp:  # noqa: S310 - loopback
        assert resp.status == 202

    state = redis.Redis(port=again.ports["redis"])
    history = keys_of(Settings()).history("rerun")
    wait_until(lambda: state.llen(history) == 1, 10, 0.1, "the first event after a restart, folded")
    state.close()
    _stops_cleanly(again, signal.SIGINT)


@needs_dataset("movielens-100k")
def test_up_replays_movielens_prints_recommendations_and_sigterm_stops_it(
    start_up: Callable[..., Up],
) -> None:
    up = start_up("--limit", "3000")
    up.wait_for("Press Ctrl-C", 240)
    output = up.output()
    assert "no datasets" not in output
    assert "Recommended for user" in output and "Popular now:" in output
    assert re.search(
        r"\n +\d+  .+ \(\d{4}\)\n", output
    )  # MovieLens titles ("Title (1995)") enrich the answers
    _stops_cleanly(up, signal.SIGTERM)


def test_a_busy_port_is_one_line_and_nothing_starts(start_up: Callable[..., Up], tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        up = start_up("--data-dir", str(tmp_path / "stack"), env={"STREAMREC_API_PORT": str(port)})
        assert up.proc.wait(30) == 1
    lines = up.output().strip().splitlines()
    assert lines[-1] == f"error: port {port} is already in use; pick another with STREAMREC_API_PORT", lines
    assert "Traceback" not in up.output()
    assert not any(_listening(p) for p in (up.ports["kafka"], up.ports["redis"]))


def test_a_missing_dataset_is_one_line_before_any_service_starts(
    start_up: Callable[..., Up], tmp_path: Path
) -> None:
    empty = tmp_path / "no-datasets"
    empty.mkdir()
    up = start_up(
        "--dataset",
        "movielens-100k",
        "--data-dir",
        str(tmp_path / "stack"),
        env={"STREAMREC_DATASETS": str(empty)},
    )
    assert up.proc.wait(30) == 2
    assert up.output().splitlines() == [
        f"error: dataset movielens-100k is not in {empty}: set STREAMREC_DATASETS to the folder that holds "
        "the movielens-100k folder (or feed the built-in shop: --dataset shop)"
    ]
    assert not (tmp_path / "stack").exists()  # nothing was started, not even a log written
