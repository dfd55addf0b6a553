"""`make up`'s install says nothing a newcomer should worry about: setuptools builds the package without a
warning (package data, editable installs). pip's own notes about this machine's index settings are pip's,
not the package's, and are not looked at."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]


def test_the_package_builds_without_a_setuptools_warning(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore:Editable installation"}  # as the Makefile installs
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "--wheel-dir",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    said = done.stdout + done.stderr
    # setuptools' warnings are "SomethingWarning: …", boxed in "!!" lines; pip's own are "WARNING: …"
    assert "Warning:" not in said and "!!" not in said, said
    assert [p.name for p in tmp_path.iterdir()] == ["streamrec-0.1.0-py3-none-any.whl"]
