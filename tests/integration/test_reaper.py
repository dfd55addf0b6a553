"""The conftest's safety net: what a test started is found by the tag in its environment and killed with
its process group, even orphaned in a session of its own; the shared broker and Redis carry no tag."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from streamrec.devtools.localstack import ManagedProcess
from tests.conftest import TEST_TAG, reap, tagged_processes, wait_until


def test_the_shared_services_carry_no_tests_tag(broker: ManagedProcess, redis_server: ManagedProcess) -> None:
    mine = tagged_processes(os.environ[TEST_TAG])
    assert broker.proc.pid not in mine and redis_server.proc.pid not in mine


def test_an_orphan_in_its_own_session_is_found_and_killed_with_its_group(tmp_path: Path) -> None:
    # a parent that starts a grandchild in a new session, prints its pid and exits: the grandchild is
    # orphaned, outside pytest's process group, as a stack's services are when `up` dies
    script = (
        "import subprocess, sys; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], start_new_session=True, "
        "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
        "print(p.pid)"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=30
    )
    orphan = int(out.stdout.strip())
    try:
        assert orphan in tagged_processes(os.environ[TEST_TAG])
        assert orphan in reap(os.environ[TEST_TAG])
        wait_until(lambda: not _running(orphan), 5, what="the orphan to die")
    finally:
        if _running(orphan):
            os.kill(orphan, 9)


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie is init's to reap, not ours)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
