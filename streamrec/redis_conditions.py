"""What a Redis error means: a condition to wait out, or a refusal — decided by meaning, not by class.

redis-py raises a full Redis (``OOM``), a replica during a failover (``READONLY``), a cluster that is
resharding or lost a master (``TRYAGAIN``, ``CLUSTERDOWN``, ``MASTERDOWN``) as subclasses of
``ResponseError``, the same class as "this script refused its input"; and an error raised inside a Lua
script reaches the client as a generic ``ERR Error running script … @user_script: 12: OOM command not
allowed …``. So the condition is read from the error's code wherever it stands in the message, and only an
error that is none of these is a refusal (DESIGN.md, "State at scale": Redis errors).

The worker waits out a transient condition with ``tenacity`` (exponential backoff with jitter, never
giving up: giving up would lose events), and says so on ``/metrics`` and in its log.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from redis import exceptions as rex
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_never, wait_exponential_jitter

# Redis error codes that mean "not now": the server is full, loading, busy, failing over or resharding.
TRANSIENT_CODES = (
    "OOM",
    "READONLY",
    "LOADING",
    "BUSY",
    "MASTERDOWN",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "MISCONF",
    "NOREPLICAS",
    "MOVED",
    "ASK",
)
CONDITIONS = ("connection", "timeout", *(c.lower() for c in TRANSIENT_CODES), "dead_letter_topic")
# the code at the start, or after ": " or "-" (a script's error quotes a refused call as ": -OOM ...")
_CODE = re.compile(r"(?:^|: |-)(" + "|".join(TRANSIENT_CODES) + r") ")

log = logging.getLogger("streamrec.redis")


def condition(exc: BaseException) -> str | None:
    """The transient condition ``exc`` stands for (one of ``CONDITIONS``), or None for a refusal.

    Connection loss and timeouts (including ``OSError`` from the socket) are transient; a
    ``ResponseError`` is transient when its error code (``status_code``, which redis-py strips from the
    message) or its message carries one of ``TRANSIENT_CODES`` (at the start, or after ``": "`` where a
    script's error quotes it); cluster routing errors that
    redis-py could not resolve (``ClusterDownError``, ``SlotNotCoveredError``, ``TryAgainError``, unhandled
    ``MOVED``/``ASK``) are transient too.
    """
    code = getattr(exc, "status_code", None)  # redis-py keeps the code it strips from the message
    if code in TRANSIENT_CODES:
        return str(code).lower()
    if isinstance(exc, rex.TimeoutError):
        return "timeout"
    if isinstance(exc, rex.BusyLoadingError):
        return "loading"
    if isinstance(exc, rex.ConnectionError | OSError):
        return "connection"
    for cls, name in (
        (rex.OutOfMemoryError, "oom"),
        (rex.ReadOnlyError, "readonly"),
        (rex.MasterDownError, "masterdown"),
        (rex.ClusterDownError, "clusterdown"),
        (rex.SlotNotCoveredError, "clusterdown"),
        (rex.TryAgainError, "tryagain"),
        (rex.MovedError, "moved"),
        (rex.AskError, "ask"),
    ):
        if isinstance(exc, cls):
            return name
    if isinstance(exc, rex.RedisError):
        found = _CODE.search(str(exc))
        if found:
            return found.group(1).lower()
        if isinstance(exc, rex.ClusterError):
            return "clusterdown"
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a condition to wait out (see ``condition``)."""
    return condition(exc) is not None


def waiting(
    what: str,
    on_wait: Callable[[str, BaseException, float], None],
    transient: Callable[[BaseException], str | None] = condition,
    max_wait_s: float = 5.0,
) -> AsyncRetrying:
    """A tenacity policy that retries ``what`` while ``transient`` names a condition, forever.

    Waits grow exponentially from 0.1 s to ``max_wait_s`` with jitter (so workers do not retry in step).
    ``on_wait(condition, exc, seconds)`` is called before each wait: the caller marks itself blocked.
    Anything else (a refusal, a bug) is raised at once.
    """

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if exc is None:
            return
        seconds = state.next_action.sleep if state.next_action else 0.0
        on_wait(transient(exc) or "other", exc, seconds)
        log.warning(
            "%s blocked: %s (%s); retry %d in %.1fs",
            what,
            transient(exc),
            exc,
            state.attempt_number,
            seconds,
            extra={"condition": transient(exc)},
        )

    return AsyncRetrying(
        retry=retry_if_exception(lambda e: transient(e) is not None),
        wait=wait_exponential_jitter(initial=0.1, max=max_wait_s, jitter=0.5),
        stop=stop_never,
        before_sleep=before_sleep,
        reraise=True,
    )


async def call_waiting(
    what: str,
    action: Callable[[], Any],
    on_wait: Callable[[str, BaseException, float], None],
    transient: Callable[[BaseException], str | None] = condition,
) -> Any:
    """Await ``action()`` until it succeeds, waiting out every transient condition (``waiting``)."""
    async for attempt in waiting(what, on_wait, transient):
        with attempt:
            return await action()
    raise AssertionError("unreachable: the policy never stops")  # pragma: no cover
