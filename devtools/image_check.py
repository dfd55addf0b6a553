"""``make image-check``: build the container image with podman and run it for real, one line per step.

No Docker engine is needed, nor Docker Hub: the base that the Dockerfile's ``FROM`` names is made from
Debian's mirror with mmdebstrap (bookworm, whose python3 is 3.11) and imported under that name. Then the
image is built (Docker format, so ``HEALTHCHECK`` is kept), and ``topics``, ``api`` and ``worker`` run
from it on the host network against a Tansu broker and a Redis server started here on loopback. The check
confirms that every process runs as uid 10001, that the healthcheck passes on a non-default API port,
that the image holds the storefront's templates and static files and the Lua scripts, that ``/shop/`` and
a recommendation answer, and that an event published through the API is folded in by the containerised
worker (a 202, then a changed answer).

Everything lives in a temporary podman store of its own (``--root``), so images and containers of other
podman users on the machine are neither seen nor touched, and it is all removed at the end, with the
broker and Redis. Needs root, and the Debian packages podman, runc and mmdebstrap. Exit status 0 when
every step passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from streamrec.devtools.localstack import LOOPBACK, free_port, start_broker, start_redis, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "localhost/streamrec:check"
DEBIAN_SOURCES = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
# what python:3.11-slim-bookworm provides that the Dockerfile uses: python (3.11) with venv, groupadd and
# useradd, CA certificates; no documentation
BASE_PACKAGES = "python3,python3-venv,python-is-python3,ca-certificates,passwd"
BASE_DPKG_OPTIONS = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/locale/*",
)
CA_BUNDLES = ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")
UID = 10001
NPROC_LIMIT = 32768
# inside the container: the packaged data files the API and the worker load at run time
LIST_PACKAGED = """
import json
from importlib.resources import files
print(json.dumps({
    "templates": sorted(p.name for p in files("streamrec.api.templates.storefront").iterdir() if p.name.endswith(".html")),
    "static": sorted(p.name for p in files("streamrec.api.static").iterdir() if p.suffix in (".js", ".css")),
    "lua": sorted(p.name for p in files("streamrec").iterdir() if p.name.endswith(".lua")),
}))
"""
# what the image's healthcheck command printed, the last run last
HEALTH_LOG = "{{range .State.Health.Log}}{{.Output}}{{end}}"
# inside the container: the uid that owns each process
PROCESS_UIDS = (
    "import os; print(sorted({os.stat(f'/proc/{p}').st_uid for p in os.listdir('/proc') if p.isdigit()}))"
)


class CheckFailed(Exception):
    """A step of the image check did not pass; the message says what was expected and what was seen."""


@dataclass
class Podman:
    """podman on a store of its own under ``work``, with the runtime and ulimits this machine needs.

    runc, because crun fails on this kind of machine's hybrid cgroups; nofile at most the host's hard limit
    and nproc at most 32768, because podman's defaults exceed what the host lets a container set. Every
    directory podman writes (images, state, volumes, network configs) is under ``work``, so that its
    ``system reset`` removes this store alone.
    """

    work: Path
    log: Path

    def configure(self) -> None:
        """Write the containers.conf that every call of this podman reads."""
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        nofile = 1048576 if hard == resource.RLIM_INFINITY else min(hard, 1048576)
        (self.work / "containers.conf").write_text(
            "[containers]\n"
            f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={NPROC_LIMIT}:{NPROC_LIMIT}"]\n'
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "none"\n'
            f'static_dir = "{self.work}/storage/libpod"\n'
            f'tmp_dir = "{self.work}/run/libpod"\n'
            f'volume_path = "{self.work}/storage/volumes"\n'
            "[network]\n"
            f'network_config_dir = "{self.work}/networks"\n'
        )

    def run(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``podman ARGS`` (its output appended to the log); raises CheckFailed on a non-zero exit if ``check``."""
        argv = ["podman", "--root", str(self.work / "storage"), "--runroot", str(self.work / "run"), *args]
        env = {**os.environ, "CONTAINERS_CONF": str(self.work / "containers.conf")}
        try:
            proc = subprocess.run(
                argv, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired as exc:
            raise CheckFailed(f"podman {args[0]} did not finish within {timeout:.0f}s") from exc
        with self.log.open("a") as log:
            log.write(f"$ podman {' '.join(args)}\n{proc.stdout}{proc.stderr}[exit {proc.returncode}]\n")
        if check and proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise CheckFailed(f"podman {args[0]} exited with {proc.returncode}: {last}")
        return proc


@dataclass
class Report:
    """Prints one line per step: ``ok``/``FAIL``, its name, its seconds and what it found."""

    started: float = field(default_factory=time.monotonic)
    failed: bool = False

    @contextmanager
    def step(self, name: str) -> Iterator[list[str]]:
        """Time the block; it appends what it found to the yielded list. Any error fails the step."""
        found: list[str] = []
        start = time.monotonic()
        try:
            yield found
        except Exception as exc:
            self.failed = True
            print(f"FAIL {name} ({time.monotonic() - start:.1f}s): {exc}", flush=True)
            raise CheckFailed(str(exc)) from exc
        detail = f": {'; '.join(found)}" if found else ""
        print(f"ok   {name} ({time.monotonic() - start:.1f}s){detail}", flush=True)


def base_image_name(dockerfile: Path) -> str:
    """The image the Dockerfile's first ``FROM`` names, in full as Docker reads it.

    ``python:3.11-slim-bookworm`` -> ``docker.io/library/python:3.11-slim-bookworm``.
    """
    match = re.search(r"^FROM\s+(\S+)", dockerfile.read_text(), re.MULTILINE)
    if not match:
        raise CheckFailed(f"{dockerfile} has no FROM line")
    name = match.group(1)
    first, _, rest = name.partition("/")
    if not rest:
        return f"docker.io/library/{name}"
    return name if "." in first or ":" in first or first == "localhost" else f"docker.io/{name}"


def ca_bundle() -> Path | None:
    """The CA bundle the host's pip trusts (a TLS-inspecting proxy's CA is in it), if any."""
    candidates = [os.environ.get(name) for name in CA_BUNDLES] + ["/etc/ssl/certs/ca-certificates.crt"]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


def expected_packaged() -> dict[str, list[str]]:
    """The data files in this checkout that the image must hold, by kind (same shape as LIST_PACKAGED)."""
    return {
        "templates": sorted(p.name for p in (ROOT / "api/templates/storefront").glob("*.html")),
        "static": sorted(p.name for p in (ROOT / "api/static").iterdir() if p.suffix in (".js", ".css")),
        "lua": sorted(p.name for p in (ROOT / "streamrec").glob("*.lua")),
    }


def http(method: str, url: str, body: object = None, timeout: float = 10) -> tuple[int, bytes]:
    """One HTTP request to a loopback URL; returns (status, body) for any status, raises OSError if none."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 - loopback URL we built
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_for(what: str, timeout: float, probe: Callable[[], object]) -> object:
    """Call ``probe`` until it returns something truthy (errors count as not yet); CheckFailed after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except OSError as exc:
            value, last = None, exc
        if value:
            return value
        time.sleep(0.25)
    raise CheckFailed(f"{what} not seen within {timeout:.0f}s" + (f" (last error: {last})" if last else ""))


def make_base(podman: Podman, name: str, work: Path, base_tar: Path | None) -> str:
    """Import a Debian bookworm root file system as ``name``; made by mmdebstrap unless ``base_tar`` exists."""
    tar = base_tar or work / "base.tar"
    made = ""
    if not tar.exists():
        argv = ["mmdebstrap", "--variant=minbase", f"--include={BASE_PACKAGES}"]
        argv += [f"--dpkgopt={option}" for option in BASE_DPKG_OPTIONS]
        argv += ["bookworm", str(tar), *DEBIAN_SOURCES]
        with podman.log.open("a") as log:
            log.write(f"$ {' '.join(argv)}\n")
            log.flush()
            proc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            tar.unlink(missing_ok=True)
            raise CheckFailed(f"mmdebstrap exited with {proc.returncode} (see {podman.log})")
        made = "made by mmdebstrap, "
    podman.run("import", "--change", "ENV LANG=C.UTF-8", "--change", 'CMD ["python3"]', str(tar), name)
    return f"{name} {made}{tar.stat().st_size / 1e6:.0f} MB"


def build_image(podman: Podman) -> list[str]:
    """Build IMAGE from the checkout (Docker format; the host's CA bundle as the pip-ca build secret)."""
    argv = ["build", "--format", "docker", "--network", "host", "--pull=never", "-t", IMAGE]
    ca = ca_bundle()
    if ca:
        argv += ["--secret", f"id=pip-ca,src={ca}"]
    index = os.environ.get("PIP_INDEX_URL", "")
    if index and not index.startswith("file:"):
        argv += ["--build-arg", f"PIP_INDEX_URL={index}"]
    podman.run(*argv, str(ROOT), timeout=900)
    size = int(podman.run("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout)
    return [IMAGE, f"{size / 1e6:.0f} MB", f"pip CA bundle {ca or 'none'}"]


@dataclass
class Run:
    """One run of the check: its podman store, the services and containers it started, its report."""

    podman: Podman
    log_dir: Path
    cleanup: ExitStack
    report: Report = field(default_factory=Report)
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    containers: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    keep_store: bool = False

    def container(self, name: str, *args: str, detach: bool = True, env: dict[str, str] | None = None) -> str:
        """``podman run`` IMAGE with ARGS on the host network and this run's settings; its name, or its output."""
        flags = [f"--env={key}={value}" for key, value in {**self.env, **(env or {})}.items()]
        if not detach:
            return self.podman.run("run", "--rm", "--network", "host", *flags, IMAGE, *args).stdout
        full = f"streamrec-check-{self.token}-{name}"
        self.containers.append(full)
        self.podman.run("run", "--detach", "--name", full, "--network", "host", *flags, IMAGE, *args)
        return full

    def remove_containers(self) -> None:
        """Save each container's log to ``log_dir``, then remove it."""
        for name in self.containers:
            logs = self.podman.run("logs", name, check=False)
            (self.log_dir / f"{name}.log").write_text(logs.stdout + logs.stderr)
            self.podman.run("rm", "--force", "--time", "5", name, check=False)
        self.containers.clear()

    def steps(self, base_tar: Path | None) -> None:
        """Every step in order; raises CheckFailed at the first that fails."""
        step, podman = self.report.step, self.podman
        with step("tools"):
            missing = [tool for tool in ("podman", "runc", "mmdebstrap") if not shutil.which(tool)]
            if missing:
                raise CheckFailed(f"missing {', '.join(missing)}: apt-get install podman runc mmdebstrap")
            if not (ROOT / "Dockerfile").is_file():
                raise CheckFailed(f"no Dockerfile in {ROOT}: run from a checkout (pip install -e .)")
            if os.geteuid() != 0:
                raise CheckFailed("needs root (rootful podman, mmdebstrap in root mode)")
            podman.configure()
            if not self.keep_store:
                self.cleanup.callback(self.reset_store)
        with step("base image") as found:
            found.append(make_base(podman, base_image_name(ROOT / "Dockerfile"), podman.work, base_tar))
        with step("build image") as found:
            found += build_image(podman)
        with step("image config") as found:
            inspect = "{{json .Config.User}}\n{{json .Config.Healthcheck}}"
            user, health = map(
                json.loads,
                podman.run("image", "inspect", "--format", inspect, IMAGE).stdout.strip().splitlines(),
            )
            test = (health or {}).get("Test")
            if user != "streamrec:streamrec" or not test:
                raise CheckFailed(f"expected user streamrec and a HEALTHCHECK, got {user!r}, {test!r}")
            found.append(f"user {user}, HEALTHCHECK {' '.join(test[1:])}")

        with step("Tansu and Redis on loopback") as found:
            broker = start_broker(free_port(), self.log_dir / "broker.log")
            self.cleanup.callback(broker.stop)
            redis = start_redis(
                free_port(), podman.work / "redis", self.log_dir / "redis.log", appendonly=False
            )
            self.cleanup.callback(redis.stop)
            self.cleanup.callback(self.remove_containers)  # before the services stop
            api_port = next(port for port in iter(free_port, None) if port != 8000)
            worker_port = free_port()
            self.env = {
                "STREAMREC_KAFKA_BOOTSTRAP": f"{LOOPBACK}:{broker.port}",
                "STREAMREC_REDIS_URL": f"redis://{LOOPBACK}:{redis.port}/0",
                "STREAMREC_TOPIC_PREFIX": f"check{self.token}",
                "STREAMREC_REDIS_PREFIX": f"check{self.token}",
                "STREAMREC_PARTITIONS": "2",
                # host network: listen on loopback only
                "STREAMREC_API_HOST": LOOPBACK,
                "STREAMREC_METRICS_HOST": LOOPBACK,
            }
            found.append(f"broker :{broker.port}, redis :{redis.port}")
        with step("topics (one-shot container)") as found:
            said = self.container("topics", "topics", detach=False).strip().splitlines()
            found.append(said[-1] if said else "done")
        with step("api and worker containers") as found:
            api = self.container(
                "api", "api", env={"STREAMREC_API_PORT": str(api_port), "STREAMREC_API_WORKERS": "1"}
            )
            worker = self.container(
                "worker",
                "worker",
                env={
                    "STREAMREC_WORKER_METRICS_PORT": str(worker_port),
                    "HEALTHCHECK_URL": f"http://{LOOPBACK}:{worker_port}/metrics",
                },
            )
            base = f"http://{LOOPBACK}:{api_port}"
            wait_for(
                "the API's /healthz from the container", 60, lambda: http("GET", f"{base}/healthz")[0] == 200
            )
            running = time.monotonic() - self.report.started
            wait_for_port(worker_port, 60)
            found.append(f"API on non-default port {api_port}, worker /metrics on {worker_port}")
            found.append(f"API container answering {running:.0f}s after the check started")
        with step("processes run as uid 10001") as found:
            for name in (api, worker):
                uids = podman.run("exec", name, "python", "-c", PROCESS_UIDS).stdout.strip()
                if uids != f"[{UID}]":
                    raise CheckFailed(f"{name}: processes owned by uids {uids}, expected only {UID}")
                found.append(f"{name.rsplit('-', 1)[1]} {uids}")
        with step("healthcheck") as found:
            for name in (api, worker):
                result = podman.run("healthcheck", "run", name, check=False)
                if result.returncode != 0:
                    said = podman.run("inspect", "--format", HEALTH_LOG, name, check=False).stdout.strip()
                    raise CheckFailed(f"podman healthcheck run {name}: {result.stdout.strip()}: {said}")
                found.append(f"{name.rsplit('-', 1)[1]} {result.stdout.strip() or 'healthy'}")
        with step("packaged templates, static files, Lua scripts") as found:
            held = json.loads(podman.run("exec", api, "python", "-c", LIST_PACKAGED).stdout)
            expected = expected_packaged()
            if held != expected:
                raise CheckFailed(f"the image holds {held}, the checkout has {expected}")
            found.append(", ".join(f"{len(names)} {kind}" for kind, names in held.items()))
        with step("storefront and recommendations answer") as found:
            self.serve_and_fold(base, found)

    def serve_and_fold(self, base: str, found: list[str]) -> None:
        """Catalog, /shop/, a recommendation; then events through the API until the worker changes it."""
        a, b = f"check-{self.token}-a", f"check-{self.token}-b"
        for item in (a, b):
            status, body = http(
                "PUT", f"{base}/v1/items/{item}", {"title": f"Check {item}", "category": "check"}
            )
            if status // 100 != 2:
                raise CheckFailed(f"PUT /v1/items/{item} answered {status}: {body[:200]!r}")
        status, body = http("GET", f"{base}/shop/")
        css, _ = http("GET", f"{base}/shop/static/shop.css")
        if status != 200 or css != 200:
            raise CheckFailed(f"/shop/ answered {status}, /shop/static/shop.css {css}: {body[:200]!r}")
        found.append(f"/shop/ 200 ({len(body)} bytes), shop.css 200")
        recs = f"{base}/v1/users/check-{self.token}-u2/recommendations?k=5"

        def recommended() -> list[str]:
            status, body = http("GET", recs)
            if status != 200:
                raise CheckFailed(f"recommendations answered {status}: {body[:200]!r}")
            return [row["item_id"] for row in json.loads(body)["data"]["items"]]

        before = recommended()
        u1, u2 = f"check-{self.token}-u1", f"check-{self.token}-u2"
        events = [
            {"event_id": f"{self.token}-1", "type": "view", "user_id": u1, "item_id": a},
            {"event_id": f"{self.token}-2", "type": "purchase", "user_id": u1, "item_id": b},
            {"event_id": f"{self.token}-3", "type": "view", "user_id": u2, "item_id": a},
        ]
        status, body = http("POST", f"{base}/v1/events", events)
        if status != 202:
            raise CheckFailed(f"POST /v1/events answered {status}, expected 202: {body[:200]!r}")

        def changed() -> list[str] | None:
            items = recommended()
            return items if b in items else None

        after = wait_for(f"{b} among {u2}'s recommendations", 90, changed)
        found.append(
            f"recommendation answered {before}; POST /v1/events 202; then {after} (worker folded it)"
        )

    def reset_store(self) -> None:
        """Remove this run's containers, then every image and layer of its podman store (and its mounts)."""
        self.remove_containers()
        self.podman.run("system", "reset", "--force", timeout=300, check=False)


def run(base_tar: Path | None, log_dir: Path, store: Path | None = None) -> int:
    """The whole check, then the clean-up; returns the exit status (0: every step passed).

    ``store``: a podman store kept between runs (its build cache makes a rebuild take seconds); by default
    a temporary one, removed at the end with everything in it.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    for old in [
        *log_dir.glob("streamrec-check-*.log"),
        *(log_dir / n for n in ("podman.log", "broker.log", "redis.log")),
    ]:
        old.unlink(missing_ok=True)
    if store:
        store.mkdir(parents=True, exist_ok=True)
    scratch = "/var/tmp" if Path("/var/tmp").is_dir() else None  # overlay layers want a real disk
    work = store or Path(tempfile.mkdtemp(prefix="streamrec-image-check-", dir=scratch))
    check = Run(Podman(work.resolve(), log_dir / "podman.log"), log_dir, ExitStack(), keep_store=bool(store))
    try:
        with check.cleanup:
            if not store:
                check.cleanup.callback(shutil.rmtree, work, ignore_errors=True)
            check.steps(base_tar)
    except CheckFailed:
        pass
    finally:
        if store:
            print(f"ok   clean up: containers, Tansu, Redis (podman store kept in {store})", flush=True)
        else:
            mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
            left = [target for target in mounts if target.startswith(str(work))]
            left += [str(work)] if work.exists() else []
            verdict = f"FAIL clean up (still there: {', '.join(left)})" if left else "ok   clean up"
            print(f"{verdict}: containers, podman store, Tansu, Redis", flush=True)
            check.report.failed |= bool(left)
    seconds = time.monotonic() - check.report.started
    print(f"image check {'FAILED' if check.report.failed else 'passed'} in {seconds:.0f}s (logs: {log_dir})")
    return 1 if check.report.failed else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m streamrec.devtools.image_check [--base-tar PATH] [--store DIR] [--log-dir DIR]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--base-tar",
        type=Path,
        help="keep the mmdebstrap base here and reuse it when it exists (default: made anew, then removed)",
    )
    parser.add_argument(
        "--store", type=Path, help="a podman store kept between runs (default: a temporary one, removed)"
    )
    parser.add_argument(
        "--log-dir", type=Path, default=Path(".streamrec/image-check"), help="podman, build and service logs"
    )
    args = parser.parse_args(argv)
    return run(args.base_tar, args.log_dir, args.store)


if __name__ == "__main__":
    sys.exit(main())
