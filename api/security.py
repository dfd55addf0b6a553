"""API keys, per-key rate limits of writes, and CORS for the HTTP API.

Keys come from ``STREAMREC_API_KEYS`` and/or the file named by ``STREAMREC_API_KEYS_FILE`` (a mounted
secret), one entry per comma or line: ``name=secret[:role]``. A role says what a key may do:

- ``events``: only ``POST /v1/events`` — a publishable key, safe to hand to a browser (the storefront);
- ``write`` (the default): events, catalog upserts and deletions, and user erasures;
- ``admin``: everything, including ``/v1/admin/...`` (model switch and rollback, placements).

Callers send ``Authorization: Bearer <secret>`` or ``X-API-Key: <secret>``; an ``Authorization`` header of
another scheme is refused (401), never passed over for ``X-API-Key``. A presented secret is
compared with every configured one by ``hmac.compare_digest``; secrets are never logged or echoed.
With no keys configured the writes are open (the local stack) and a warning says so at start; admin
actions then stay closed. Reads are never keyed.

Rate limits are token buckets per key (per client address while writes are open), kept in each API
process: writes go to Kafka and must not start failing because Redis is down, so the limiter does not
live in Redis. With N gunicorn workers a key may reach N times the configured rate.
"""

from __future__ import annotations

import hmac
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from flask import Flask, Response, current_app, g, jsonify, request

from streamrec.api.errors import FORBIDDEN, RATE_LIMITED, UNAUTHORIZED, error_body
from streamrec.settings import Settings

log = logging.getLogger("streamrec.api.security")

Role = Literal["events", "write", "admin"]
ROLES: tuple[Role, ...] = ("events", "write", "admin")
# What each protected endpoint needs, by Flask endpoint name; unlisted endpoints are open reads.
NEEDS: dict[str, Role] = {
    "v1.post_events": "events",
    "v1.put_item": "write",
    "v1.post_items": "write",
    "v1.delete_item": "write",
    "v1.delete_user": "write",
}
# Blueprints whose every endpoint needs an admin key (by Flask endpoint name prefix).
ADMIN_PREFIXES = ("admin.", "admin_placements.", "admin_experiments.")
GRANTS: dict[Role, set[Role]] = {
    "events": {"events"},
    "write": {"events", "write"},
    "admin": {"events", "write", "admin"},
}


class KeyConfigError(ValueError):
    """The configured keys cannot be read."""


@dataclass(frozen=True)
class ApiKey:
    """One configured key. ``repr`` leaves the secret out, so a key never lands in a log by accident."""

    name: str
    secret: str = field(repr=False)
    role: Role = "write"


def parse_keys(text: str, source: str = "STREAMREC_API_KEYS") -> list[ApiKey]:
    """Entries ``name=secret[:role]`` separated by commas or newlines; ``#`` starts a comment line."""
    keys: list[ApiKey] = []
    for n, line in enumerate(text.replace(",", "\n").splitlines(), 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        name, sep, rest = entry.partition("=")
        if not sep or not name.strip() or not rest.strip():
            raise KeyConfigError(f"{source} entry {n} is not 'name=secret[:role]'")
        head, _, tail = rest.strip().rpartition(":")
        secret, role = (head.strip(), tail) if head and tail in ROLES else (rest.strip(), "write")
        if len(secret) < 16:
            raise KeyConfigError(
                f"{source} entry {n} ({name.strip()}): a secret needs at least 16 characters"
            )
        keys.append(ApiKey(name.strip(), secret, role))  # type: ignore[arg-type]
    names = [k.name for k in keys]
    if len(set(names)) != len(names):
        raise KeyConfigError(f"{source}: key names must be unique")
    return keys


def load_keys(settings: Settings) -> list[ApiKey]:
    """The keys from the environment setting and from the secret file, if one is named."""
    keys = parse_keys(settings.api_keys.get_secret_value())
    if settings.api_keys_file:
        path = Path(settings.api_keys_file)
        try:
            text = path.read_text()
        except OSError as exc:
            raise KeyConfigError(f"STREAMREC_API_KEYS_FILE {path}: {exc.strerror}") from None
        keys += parse_keys(text, f"STREAMREC_API_KEYS_FILE {path}")
    names = [k.name for k in keys]
    if len(set(names)) != len(names):
        raise KeyConfigError("API key names must be unique across STREAMREC_API_KEYS and its file")
    return keys


class KeyRing:
    """Finds the key a request presents, in time that does not depend on where a guess goes wrong."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self.keys = keys

    def __bool__(self) -> bool:
        return bool(self.keys)

    def find(self, presented: str) -> ApiKey | None:
        """The configured key whose secret equals ``presented``, or None; every key is compared in constant time."""
        found = None
        given = presented.encode()
        for key in self.keys:  # every key is compared, so timing tells nothing about which matched
            if hmac.compare_digest(given, key.secret.encode()):
                found = key
        return found

    def publishable(self) -> ApiKey | None:
        """The first ``events`` key: the one a browser page may be given."""
        return next((k for k in self.keys if k.role == "events"), None)


class TokenBucket:
    """Per-name token buckets: ``rate`` tokens a second, holding at most ``burst``."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic, max_names: int = 10_000
    ) -> None:
        self.rate, self.burst, self.clock, self.max_names = rate, burst, clock, max_names
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, name: str) -> float:
        """Take one token; returns 0 if allowed, else the seconds until one is there."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(name, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1:
                self._remember(name, (tokens - 1, now))
                return 0.0
            self._remember(name, (tokens, now))
            return (1 - tokens) / self.rate

    def _remember(self, name: str, state: tuple[float, float]) -> None:
        if name not in self._buckets and len(self._buckets) >= self.max_names:
            self._buckets.pop(next(iter(self._buckets)))  # bounded: the oldest name goes (it refills anyway)
        self._buckets[name] = state


@dataclass
class Guard:
    """What the request hooks need: the keys, the limiter and the allowed CORS origins."""

    keys: KeyRing
    limiter: TokenBucket
    origins: set[str]


def _presented() -> str | None:
    """The secret the request presents. An ``Authorization`` header is credentials: one that is not a
    bearer token presents nothing (a 401), rather than being passed over for ``X-API-Key``."""
    auth = request.headers.get("Authorization")
    if auth is not None:
        return auth[7:].strip() if auth[:7].lower() == "bearer " else ""
    return request.headers.get("X-API-Key")


def _deny(status: int, code: int, msg: str, headers: dict[str, str] | None = None) -> Response:
    resp = jsonify(error_body(code, msg))
    resp.status_code = status
    resp.headers.update(headers or {})
    return resp


def _needs() -> Role | None:
    endpoint = request.endpoint or ""
    if endpoint.startswith(ADMIN_PREFIXES):
        return "admin"
    return NEEDS.get(endpoint)


def _check() -> Response | None:
    """Before a protected view: the key and its role, then the key's rate limit."""
    need = _needs()
    if need is None or request.method == "OPTIONS":
        return None
    guard: Guard = current_app.extensions["streamrec.security"]
    if not guard.keys:
        if need == "admin":
            return _deny(
                403, FORBIDDEN, "admin actions need an admin key; none is configured (STREAMREC_API_KEYS)"
            )
        who = f"addr:{request.remote_addr}"
    else:
        presented = _presented()
        if not presented:
            return _deny(
                401,
                UNAUTHORIZED,
                "this endpoint needs an API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                {"WWW-Authenticate": 'Bearer realm="streamrec"'},
            )
        key = guard.keys.find(presented)
        if key is None:
            return _deny(
                401,
                UNAUTHORIZED,
                "the API key is not valid",
                {"WWW-Authenticate": 'Bearer realm="streamrec"'},
            )
        if need not in GRANTS[key.role]:
            return _deny(
                403, FORBIDDEN, f"the key '{key.name}' (role {key.role}) may not do this; it needs {need}"
            )
        g.api_key = key.name
        who = f"key:{key.name}"
    wait = guard.limiter.take(who)
    if wait > 0:
        seconds = max(1, math.ceil(wait))
        return _deny(
            429,
            RATE_LIMITED,
            f"too many writes: at most {guard.limiter.rate:g} a second (burst {guard.limiter.burst}) per key; retry in {seconds}s",
            {"Retry-After": str(seconds)},
        )
    return None


# A header name is an RFC 9110 token; anything else in Access-Control-Request-Headers is not reflected.
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")
ALWAYS_ALLOWED = ("Content-Type", "Authorization", "X-API-Key")
# Names a page's script can never set (the Fetch standard's forbidden request-header names), so a
# preflight that asks for one is not a browser's: they are left out.
FORBIDDEN_HEADERS = frozenset(
    {
        "accept-charset",
        "accept-encoding",
        "access-control-request-headers",
        "access-control-request-method",
        "connection",
        "content-length",
        "cookie",
        "cookie2",
        "date",
        "dnt",
        "expect",
        "host",
        "keep-alive",
        "origin",
        "referer",
        "set-cookie",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "via",
    }
)
FORBIDDEN_PREFIXES = ("proxy-", "sec-")
MAX_REFLECTED = 32
EXPOSED = "Retry-After, X-Request-ID, ETag, Accept-Encoding"
PREFLIGHT_MAX_AGE_S = 600


def allowed_request_headers(requested: str) -> str:
    """The ``Access-Control-Allow-Headers`` for a preflight that asked for ``requested``: the API's own
    (content type and keys) and every other requested name that is a header name a page may set.

    A storefront's tracing (OpenTelemetry's ``traceparent``, ``tracestate``, ``baggage``; Sentry's
    ``sentry-trace``; Zipkin's ``b3``; Datadog's ``x-datadog-*``; request ids) adds headers the API does
    not read; refusing any of them makes the browser block the call. Allowing a header lets a page from an
    allowed origin send it, nothing more: keys are still checked on every write.
    """
    names: list[str] = list(ALWAYS_ALLOWED)
    seen = {n.lower() for n in names}
    for raw in requested.split(","):
        name = raw.strip().lower()
        if (
            name in seen
            or not HEADER_NAME.fullmatch(name)
            or name in FORBIDDEN_HEADERS
            or name.startswith(FORBIDDEN_PREFIXES)
        ):
            continue
        if len(names) >= len(ALWAYS_ALLOWED) + MAX_REFLECTED:
            break
        seen.add(name)
        names.append(name)
    return ", ".join(names)


def _cors(resp: Response) -> Response:
    """Let the configured origins (each compared exactly: scheme, host and port) read answers and send
    writes (with a key) from their pages; any other origin gets no CORS header at all."""
    guard: Guard = current_app.extensions["streamrec.security"]
    if not guard.origins:
        return resp
    preflight = request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers
    # the answer depends on these request headers whenever origins are configured: a shared cache must
    # not hand one origin's answer (with or without the grant) to another
    resp.vary.add("Origin")
    if preflight:
        resp.vary.update(("Access-Control-Request-Method", "Access-Control-Request-Headers"))
    origin = request.headers.get("Origin")
    if not origin or not ("*" in guard.origins or origin in guard.origins):
        return resp
    resp.headers["Access-Control-Allow-Origin"] = "*" if "*" in guard.origins else origin
    resp.headers["Access-Control-Expose-Headers"] = EXPOSED
    if preflight:
        resp.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, DELETE, OPTIONS"
        resp.headers["Access-Control-Allow-Headers"] = allowed_request_headers(
            request.headers.get("Access-Control-Request-Headers", "")
        )
        resp.headers["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE_S)
    return resp


def init_app(app: Flask, settings: Settings) -> None:
    """Read the keys (a bad configuration stops the start, loudly) and register the request hooks."""
    ring = KeyRing(load_keys(settings))
    if ring:
        log.info(
            "API keys: %d configured (%s)", len(ring.keys), ", ".join(f"{k.name}:{k.role}" for k in ring.keys)
        )
    else:
        log.warning(
            "no API keys configured (STREAMREC_API_KEYS): event and catalog writes are open to anyone who "
            "reaches this port, admin actions are closed; fine on loopback, not in front of a network"
        )
    # an Origin header is a serialised origin: lowercase scheme and host, no path, no trailing slash
    origins = {o.strip().rstrip("/").lower() for o in settings.cors_origins.split(",") if o.strip()}
    app.extensions["streamrec.security"] = Guard(
        ring, TokenBucket(settings.write_rate_per_s, settings.write_burst), origins
    )
    app.before_request(_check)
    app.after_request(_cors)

    @app.context_processor
    def _publishable_key() -> dict[str, str]:
        # the storefront's pages post events from the browser: they get the "events" key, which can do
        # nothing else (with no keys configured they need none)
        key = ring.publishable()
        return {"storefront_api_key": key.secret if key else ""}
