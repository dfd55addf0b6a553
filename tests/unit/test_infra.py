"""The operations files: promtool checks and rule unit tests, the generated dashboards, the compose file
(validated by a real compose implementation) and the image's commands against the real CLI."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from streamrec.cli.main import app as cli_app
from streamrec.settings import ScoringSettings, Settings, describe

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "infra" / "prometheus"
GRAFANA = ROOT / "infra" / "grafana"


def tool(name: str, package: str) -> str:
    found = shutil.which(name)
    assert found, f"{name} is missing: install the Debian package {package} (listed in .ci/apt-packages)"
    return found


def run(*argv: str, cwd: Path = ROOT) -> str:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(argv)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


# --- Prometheus ------------------------------------------------------------------------------------


def test_promtool_accepts_the_config_and_its_rule_files() -> None:
    out = run(tool("promtool", "prometheus"), "check", "config", str(PROM / "prometheus.yml"))
    assert "SUCCESS: 2 rule files found" in out


def test_promtool_accepts_the_rules() -> None:
    out = run(
        tool("promtool", "prometheus"),
        "check",
        "rules",
        str(PROM / "alerts.yml"),
        str(PROM / "recording.yml"),
    )
    assert out.count("SUCCESS") == 2


def test_promtool_rule_unit_tests_pass() -> None:
    out = run(tool("promtool", "prometheus"), "test", "rules", "tests/rules_test.yml", cwd=PROM)
    assert "SUCCESS" in out


def test_every_alert_is_unit_tested_and_documented() -> None:
    alerts = [r for g in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"] for r in g["rules"]]
    tests = (PROM / "tests" / "rules_test.yml").read_text()
    for rule in alerts:
        assert f"alertname: {rule['alert']}" in tests, f"{rule['alert']} has no promtool test"
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]


# --- Grafana -----------------------------------------------------------------------------------------


def _builder() -> Any:
    spec = importlib.util.spec_from_file_location("build_dashboards", GRAFANA / "build_dashboards.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_dashboards_in_the_repo_are_what_the_generator_writes() -> None:
    rendered = _builder().render()
    on_disk = {p.name: p.read_text() for p in (GRAFANA / "dashboards").glob("*.json")}
    assert on_disk == rendered, "run: python infra/grafana/build_dashboards.py"


def test_dashboards_use_the_provisioned_datasource_and_unique_panels() -> None:
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    uids = set()
    for path in (GRAFANA / "dashboards").glob("*.json"):
        board = json.loads(path.read_text())
        uids.add(board["uid"])
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), path.name
        for panel in board["panels"]:
            assert panel["targets"], f"{path.name}: {panel['title']} has no query"
            assert panel["datasource"]["uid"] == uid
            assert all(t["datasource"]["uid"] == uid for t in panel["targets"])
    assert uids == {"streamrec-pipeline", "streamrec-api", "streamrec-quality", "streamrec-redis"}


# --- docker-compose and the image --------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file as a real compose implementation resolves it (it fails on an invalid file)."""
    out = run(tool("docker-compose", "docker-compose"), "-f", "docker-compose.yml", "config")
    resolved: dict[str, Any] = yaml.safe_load(out)
    return resolved


def _command(argv: list[str]) -> Any:
    """Parse argv as the streamrec CLI would, without running it: unknown commands or options raise."""
    group = typer.main.get_command(cli_app)
    name, *rest = argv
    command = group.get_command(group.make_context("streamrec", list(argv)), name)  # type: ignore[attr-defined]
    assert command is not None, f"'streamrec {name}' is not a streamrec subcommand"
    return command.make_context(name, list(rest))


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of a service's volumes (short "source:target[:mode]" or long form)."""
    out = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        out[target] = source
    return out


def test_compose_runs_the_whole_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"kafka", "redis", "worker", "api", "simulator", "prometheus", "grafana", "redis-exporter"} <= set(
        services
    )
    kafka = services["kafka"]["environment"]
    assert "controller" in kafka["KAFKA_PROCESS_ROLES"] and "KAFKA_ZOOKEEPER_CONNECT" not in kafka  # KRaft
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    assert "/data" in _mounts(services["redis"])
    grafana_mounts = _mounts(services["grafana"])
    assert grafana_mounts["/etc/grafana/provisioning"] == str(GRAFANA / "provisioning")
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "streamrec.yml").read_text())
    assert grafana_mounts[provider["providers"][0]["options"]["path"]] == str(GRAFANA / "dashboards")
    prom_mounts = _mounts(services["prometheus"])
    assert prom_mounts["/etc/prometheus"] == str(PROM)
    for name, service in services.items():
        for dep in service.get("depends_on", {}):
            assert dep in services, f"{name} depends on a service that does not exist: {dep}"


def test_compose_commands_are_real_streamrec_subcommands(compose: dict[str, Any]) -> None:
    ours = {n: s for n, s in compose["services"].items() if str(s.get("image", "")).startswith("streamrec:")}
    assert {"topics", "worker", "api", "simulator"} <= set(ours)
    for name, service in ours.items():
        ctx = _command(service["command"])
        assert ctx.info_name == service["command"][0], name


def test_compose_settings_are_real_settings_and_ports_match_the_scrape_config(
    compose: dict[str, Any],
) -> None:
    known = {var for model in (Settings(), ScoringSettings()) for var, _, _ in describe(model)}
    for name, service in compose["services"].items():
        for var in service.get("environment", {}):
            if var.startswith("STREAMREC_"):
                assert var in known, f"{name}: {var} is not a streamrec setting"
    env = {n: s.get("environment", {}) for n, s in compose["services"].items()}
    scrape = {
        job["job_name"]: job
        for job in yaml.safe_load((PROM / "prometheus.yml").read_text())["scrape_configs"]
    }

    def discovered(job: str) -> tuple[str, int]:
        sd = scrape[job]["dns_sd_configs"][0]
        return sd["names"][0], int(sd["port"])

    assert discovered("streamrec-worker") == ("worker", int(env["worker"]["STREAMREC_WORKER_METRICS_PORT"]))
    assert discovered("streamrec-api") == ("api", int(env["api"]["STREAMREC_API_PORT"]))
    assert discovered("streamrec-producer") == (
        "simulator",
        int(env["simulator"]["STREAMREC_PRODUCER_METRICS_PORT"]),
    )


def _instructions(dockerfile: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", dockerfile)
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in joined.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_image_is_multi_stage_non_root_with_a_healthcheck_and_runs_the_cli() -> None:
    steps = _instructions((ROOT / "Dockerfile").read_text())
    kinds = [k for k, _ in steps]
    assert kinds.count("FROM") >= 2 and any("--from=build" in arg for k, arg in steps if k == "COPY")
    assert "slim" in next(arg for k, arg in steps if k == "FROM")
    user = [arg for k, arg in steps if k == "USER"]
    assert user and not user[-1].startswith(("root", "0"))
    assert "HEALTHCHECK" in kinds
    entrypoint = json.loads(next(arg for k, arg in steps if k == "ENTRYPOINT"))
    cmd = json.loads(next(arg for k, arg in steps if k == "CMD"))
    assert entrypoint == ["streamrec"]
    _command(cmd)
    # the console script the entrypoint names is the one pyproject installs
    assert 'streamrec = "streamrec.cli.main:main"' in (ROOT / "pyproject.toml").read_text()


def test_commands_that_do_not_exist_are_refused() -> None:
    with pytest.raises(AssertionError, match="is not a streamrec subcommand"):
        _command(["no-such-command"])
    with pytest.raises(Exception, match="No such option"):
        _command(["simulate", "--no-such-option", "1"])
