"""docker-compose.cluster.yml, the Redis Cluster variant, as a real compose implementation resolves it on
top of docker-compose.yml (as tests/unit/test_infra.py validates the base file)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from streamrec.settings import ScoringSettings, Settings, describe
from tests.unit.test_infra import _command, _mounts, run, tool

NODES = ["redis", "redis-2", "redis-3", "redis-4", "redis-5", "redis-6"]


@pytest.fixture(scope="module")
def cluster_compose() -> dict[str, Any]:
    out = run(
        tool("docker-compose", "docker-compose"),
        "-f",
        "docker-compose.yml",
        "-f",
        "docker-compose.cluster.yml",
        "config",
    )
    resolved: dict[str, Any] = yaml.safe_load(out)
    return resolved


def _server_args(service: dict[str, Any]) -> str:
    """The node's redis-server command line, with compose's ``$$`` and the node's variables filled in."""
    shell, flag, script = service["command"]
    assert (shell, flag) == ("sh", "-c") and script.startswith("exec redis-server ")
    env = service["environment"]
    return re.sub(r"\$\$\{?(\w+)\}?", lambda m: str(env[m.group(1)]), script)


def test_six_cluster_nodes_each_with_its_own_volume_and_announced_name(
    cluster_compose: dict[str, Any],
) -> None:
    services = cluster_compose["services"]
    volumes = set()
    for name in NODES:
        args = _server_args(services[name]).split()
        assert args[args.index("--cluster-enabled") + 1] == "yes", name
        assert args[args.index("--cluster-announce-hostname") + 1] == name, name
        assert args[args.index("--cluster-preferred-endpoint-type") + 1] == "hostname", name
        assert args[args.index("--appendonly") + 1] == "yes", name
        assert args[args.index("--maxmemory-policy") + 1] == "noeviction", name
        assert services[name]["healthcheck"]["test"][-1] == "ping", name
        volumes.add(_mounts(services[name])["/data"])
    assert len(volumes) == len(NODES), "two nodes share a data volume (and so a nodes.conf)"


def test_the_one_shot_forms_three_masters_with_a_replica_each_from_every_node(
    cluster_compose: dict[str, Any],
) -> None:
    init = cluster_compose["services"]["redis-cluster"]
    assert init["restart"] == "no"
    script = init["command"][0]
    assert "redis-cli --cluster create" in script and "--cluster-replicas 1" in script
    assert "--cluster-yes" in script  # no prompt in a container
    listed = re.search(r"for n in ([\w\- ]+);", script)
    assert listed and listed.group(1).split() == NODES
    assert set(init["depends_on"]) == set(NODES)
    assert all(d["condition"] == "service_healthy" for d in init["depends_on"].values())


def test_the_programs_that_use_redis_run_in_cluster_mode_after_the_cluster_formed(
    cluster_compose: dict[str, Any],
) -> None:
    services = cluster_compose["services"]
    known = {var for model in (Settings(), ScoringSettings()) for var, _, _ in describe(model)}
    for name in ("worker", "api"):
        env = services[name]["environment"]
        assert env["STREAMREC_REDIS_CLUSTER"] == "1", name
        host = re.match(r"redis://([\w\-]+):6379", env["STREAMREC_REDIS_URL"])
        assert host and host.group(1) in NODES, f"{name}: STREAMREC_REDIS_URL names no cluster node"
        assert services[name]["depends_on"]["redis-cluster"]["condition"] == "service_completed_successfully"
        _command(services[name]["command"])
    for name, service in services.items():
        for var in service.get("environment", {}):
            if var.startswith("STREAMREC_"):
                assert var in known, f"{name}: {var} is not a streamrec setting"
        for dep in service.get("depends_on", {}):
            assert dep in services, f"{name} depends on a service that does not exist: {dep}"
    assert services["redis-exporter"]["environment"]["REDIS_EXPORTER_IS_CLUSTER"] == "true"


def test_the_base_file_alone_stays_one_redis() -> None:
    base = yaml.safe_load(run(tool("docker-compose", "docker-compose"), "-f", "docker-compose.yml", "config"))
    assert not set(NODES[1:]) & set(base["services"])
    for service in base["services"].values():
        assert service.get("environment", {}).get("STREAMREC_REDIS_CLUSTER") in (None, "0")
