"""Placements in Redis, and the compiled copy each API process keeps.

``PlacementStore`` keeps every placement's document in one hash (``Keys.placements``) beside a version
counter (``Keys.placements_version``); both carry the ``{pl}`` hash tag, so a change and its version bump
are one script on one slot, on one Redis and on a cluster alike. Bounded: at most ``MAX_PLACEMENTS``
placements of at most ``MAX_DOCUMENT_BYTES`` of compact JSON each.

``PlacementCache`` is one API process's compiled placements. It reads the version (one GET) at most once
every ``CHECK_EVERY_S`` (250 ms), on the request that needs a placement, and recompiles every placement
(one HGETALL) when the version moved. So a change is in effect in every API process within 250 ms plus
one Redis round trip of being acknowledged: any request that starts 250 ms after the change reads the
version itself or follows a read made after the change. A document is compiled once per change, never
per request or per item.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import orjson

from streamrec.keys import Keys
from streamrec.placements import Placement, PlacementError, parse_placement

log = logging.getLogger("streamrec.placements")

MAX_PLACEMENTS = 1000
MAX_DOCUMENT_BYTES = 64 * 1024
CHECK_EVERY_S = 0.25

# KEYS: docs, version (one slot). ARGV: name, document, most placements.
# Returns {1 if created else 0, new version}, or {-1, version} when full and the name is new.
_PUT = """
local existed = redis.call('HEXISTS', KEYS[1], ARGV[1])
if existed == 0 and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  return {-1, tonumber(redis.call('GET', KEYS[2]) or '0')}
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return {1 - existed, redis.call('INCR', KEYS[2])}
"""
# KEYS: docs, version. ARGV: name. Returns the new version, or 0 when there was no such placement.
_DELETE = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
return redis.call('INCR', KEYS[2])
"""


class PlacementsFull(Exception):
    """The store holds ``MAX_PLACEMENTS`` placements already and the name is new."""


class DocumentTooLarge(PlacementError):
    """A placement document longer than ``MAX_DOCUMENT_BYTES`` as compact JSON (path ``$``)."""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class PlacementStore:
    """The placements of one deployment (one key prefix) in Redis.

    ``client`` is a ``redis.Redis`` or a ``redis.cluster.RedisCluster``. Redis errors propagate
    (``redis.exceptions.RedisError``); documents are validated by ``placements.parse_placement`` before
    they are stored, and again when read back.
    """

    def __init__(self, client: Any, keys: Keys, max_placements: int = MAX_PLACEMENTS) -> None:
        self.client, self.keys, self.max_placements = client, keys, max_placements
        self._put = client.register_script(_PUT)
        self._delete = client.register_script(_DELETE)

    def _keys(self) -> list[str]:
        return [self.keys.placements(), self.keys.placements_version()]

    def put(self, placement: Placement) -> tuple[bool, int]:
        """Create or replace ``placement``; returns (created, the new version).

        Raises ``DocumentTooLarge`` (a ``PlacementError``) for a document over ``MAX_DOCUMENT_BYTES``, and
        ``PlacementsFull`` when ``max_placements`` exist and ``placement.name`` is not one of them.
        """
        document = placement.to_json()
        if len(document) > MAX_DOCUMENT_BYTES:
            raise DocumentTooLarge(
                "$", f"a placement document is at most {MAX_DOCUMENT_BYTES} bytes as compact JSON"
            )
        created, version = self._put(keys=self._keys(), args=[placement.name, document, self.max_placements])
        if created == -1:
            raise PlacementsFull(
                f"there are {self.max_placements} placements already, the most one deployment keeps; "
                "delete one first"
            )
        return bool(created), int(version)

    def get(self, name: str) -> dict[str, Any] | None:
        """The stored document of placement ``name``, or None."""
        raw = self.client.hget(self.keys.placements(), name)
        return None if raw is None else orjson.loads(raw)  # type: ignore[no-any-return]

    def delete(self, name: str) -> bool:
        """Delete placement ``name``; False when there was none."""
        return bool(self._delete(keys=self._keys(), args=[name]))

    def all(self) -> dict[str, dict[str, Any]]:
        """Every placement's document by name, sorted by name."""
        raw = self.client.hgetall(self.keys.placements())
        return {_text(n): orjson.loads(d) for n, d in sorted(raw.items())}

    def version(self) -> int:
        """How many changes the placements have had (0: never changed)."""
        return int(self.client.get(self.keys.placements_version()) or 0)


T = TypeVar("T")


class DocumentCache(Generic[T]):
    """One API process's compiled documents (placements, experiments), current within ``check_every_s``
    of a change.

    ``store`` has ``version()`` and ``all()`` (name -> stored document); ``parse(name, stored)`` compiles
    one and raises ``PlacementError`` for a document it does not accept. ``get`` reads the store's version
    when the last read is ``check_every_s`` old or older and, when it moved, reads and compiles every
    document again. Thread-safe (gthread workers share one). Redis errors propagate from the read that
    needed Redis. A stored document the code no longer accepts (written by another version of it) is
    logged and left out, as if it did not exist.
    """

    def __init__(
        self,
        store: Any,
        parse: Callable[[str, Any], T],
        check_every_s: float = CHECK_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store, self.parse, self.check_every_s, self.clock = store, parse, check_every_s, clock
        self._documents: dict[str, T] = {}
        self._version = -1
        self._checked: float | None = None
        self._lock = threading.Lock()

    @property
    def version(self) -> int:
        """The store version the compiled placements are of (-1 before the first read); an answer that
        depends on a placement can carry it in its cache key."""
        return self._version

    def _refresh(self) -> None:
        now = self.clock()
        if self._checked is not None and now - self._checked < self.check_every_s:
            return
        with self._lock:
            if self._checked is not None and now - self._checked < self.check_every_s:
                return
            version = self.store.version()  # first: the documents read next are at least this new
            if version != self._version:
                compiled = {}
                for name, document in self.store.all().items():
                    try:
                        compiled[name] = self.parse(name, document)
                    except PlacementError as exc:
                        log.error("stored document %r is not valid here and is left out: %s", name, exc)
                self._documents, self._version = compiled, version
                self._compiled(compiled)
            self._checked = now

    def _compiled(self, compiled: dict[str, T]) -> None:
        """Called (under the lock) after every recompilation, for what a subclass derives from it."""

    def get(self, name: str) -> T | None:
        """The compiled document ``name`` as of at most ``check_every_s`` ago, or None if unknown."""
        self._refresh()
        return self._documents.get(name)

    def all(self) -> dict[str, T]:
        """Every compiled document by name, as ``get`` sees them."""
        self._refresh()
        return dict(self._documents)


class PlacementCache(DocumentCache[Placement]):
    """One API process's compiled placements (``DocumentCache`` of ``parse_placement``)."""

    def __init__(
        self,
        store: PlacementStore,
        check_every_s: float = CHECK_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(store, parse_placement, check_every_s, clock)
