"""Every ``streamrec`` failure a user can cause is one line on stderr and a non-zero exit, in seconds,
never a traceback: a bad option or setting, an unknown or missing dataset, no broker, no Redis.

Nothing listens on the addresses these commands are pointed at (free loopback ports)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamrec.devtools.localstack import free_port

FAST_S = 15.0  # the broker check gives up after 3 s; the rest is Python starting


def streamrec(*args: str, **env: str) -> tuple[int, str, str, float]:
    """Run the command with nothing listening at its broker and Redis; (status, stdout, stderr, seconds)."""
    full_env = {
        **os.environ,
        "STREAMREC_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "STREAMREC_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        **env,
    }
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "streamrec.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
    )
    return done.returncode, done.stdout, done.stderr, time.monotonic() - started


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and "Traceback" not in stderr
    return lines[0]


def test_an_unknown_dataset_fails_at_once_before_kafka_is_touched() -> None:
    code, _, err, seconds = streamrec("replay", "nosuch")
    assert code == 2 and seconds < FAST_S
    line = one_line(err)
    assert "unknown dataset 'nosuch'" in line and "movielens-100k" in line
    assert "Kafka" not in line


def test_a_missing_dataset_folder_names_streamrec_datasets(tmp_path: Path) -> None:
    code, _, err, _ = streamrec("replay", "movielens-100k", STREAMREC_DATASETS=str(tmp_path))
    assert code == 2
    assert one_line(err) == (
        f"error: dataset movielens-100k is not in {tmp_path}: set STREAMREC_DATASETS to the folder that "
        "holds the movielens-100k folder"
    )


@pytest.mark.parametrize(
    "args",
    [("simulate", "--events", "10"), ("topics",), ("train",)],
    ids=["simulate", "topics", "train"],
)
def test_no_broker_is_one_line_naming_the_address_within_seconds(args: tuple[str, ...]) -> None:
    port = free_port()
    code, _, err, seconds = streamrec(*args, STREAMREC_KAFKA_BOOTSTRAP=f"127.0.0.1:{port}")
    assert code == 1 and seconds < FAST_S
    assert one_line(err).startswith(
        f"error: no Kafka broker answers at 127.0.0.1:{port} (STREAMREC_KAFKA_BOOTSTRAP)"
    )


def test_no_broker_for_a_replay_of_a_dataset_that_is_there(tmp_path: Path) -> None:
    (tmp_path / "movielens-100k").mkdir()
    code, _, err, seconds = streamrec("replay", "movielens-100k", STREAMREC_DATASETS=str(tmp_path))
    assert code == 1 and seconds < FAST_S
    assert "no Kafka broker answers at 127.0.0.1:" in one_line(err)


def test_no_redis_is_one_line() -> None:
    port = free_port()
    code, _, err, seconds = streamrec("model", "list", STREAMREC_REDIS_URL=f"redis://127.0.0.1:{port}/0")
    assert code == 1 and seconds < FAST_S
    line = one_line(err)
    assert line.startswith("error: Redis does not answer") and f"127.0.0.1:{port}" in line


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("up", "--no-such-option"), "error: No such option: --no-such-option (see 'streamrec up --help')"),
        (("up", "--workers", "0"), "error: Invalid value for '--workers'"),
        (("replay",), "error: Missing argument 'dataset' (see 'streamrec replay --help')"),
        (("no-such-command",), "error: No such command 'no-such-command'"),
    ],
    ids=["unknown-option", "bad-value", "missing-argument", "unknown-command"],
)
def test_a_bad_option_is_one_line_and_status_2(args: tuple[str, ...], says: str) -> None:
    code, _, err, _ = streamrec(*args)
    assert code == 2
    assert one_line(err).startswith(says)


def test_a_bad_setting_names_its_environment_variable() -> None:
    code, _, err, _ = streamrec("up", STREAMREC_API_PORT="eighty")
    assert code == 1
    assert one_line(err).startswith(
        "error: invalid setting: STREAMREC_API_PORT: Input should be a valid integer"
    )


def test_help_still_works() -> None:
    code, out, err, _ = streamrec("up", "--help")
    assert code == 0 and "--dataset" in out and not err
