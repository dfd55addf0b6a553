"""Compressed request bodies (``Content-Encoding``): gzip, deflate and zstd are decoded as they are read,
with the decoded size bounded; any other coding is a 415 naming the ones taken (RFC 7694).

Every endpoint that reads a body reads it through ``request.stream`` (``get_data``, ``get_json``), so the
rule holds wherever a body is taken: ``DecodingRequest`` is the app's request class.

- Codings are case-insensitive; ``x-gzip`` is ``gzip`` (RFC 9110 §8.4.1.3); ``identity`` is no coding.
- ``deflate`` is the zlib format (RFC 9110); raw deflate, which some browsers and clients send under
  that name, is recognised by its missing zlib header and taken too.
- Stacked codings (``gzip, zstd``) are decoded in reverse order of listing, at most ``MAX_CODINGS``.
- Each layer's decoded output is bounded by the request's ``max_content_length`` (the 4 MiB of a plain
  body): an inflation bomb is read only until it passes the bound, in chunks of ``CHUNK`` bytes, and is
  answered 413 without holding more than the bound. What is left of the (compressed) body is then read
  and dropped, at most the same bound, so the client sees the 413 rather than a reset connection.
- A body that is not valid in its coding is a 400 (``INVALID_BODY_ENCODING``).
"""

from __future__ import annotations

import abc
import io
import zlib
from collections.abc import Callable
from typing import IO, Any

from flask import Request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.utils import cached_property
from werkzeug.wsgi import get_input_stream

from streamrec.api.errors import INVALID_BODY_ENCODING, UNSUPPORTED_MEDIA, ApiError

try:  # zstd needs the zstandard package; without it the coding is refused like any unknown one
    import zstandard
except ImportError:  # pragma: no cover - it is a dependency; this keeps a slim install honest
    zstandard = None

CHUNK = 64 * 1024
MAX_CODINGS = 3
# RFC 8878 §3.1.1.1.2: a decoder should accept windows up to 8 MiB; a frame asking for more is refused
# rather than allocated
ZSTD_MAX_WINDOW = 8 * 1024 * 1024
ALIASES = {"x-gzip": "gzip"}


def supported() -> tuple[str, ...]:
    """The content codings this server decodes, in the order ``Accept-Encoding`` lists them."""
    return ("gzip", "deflate", "zstd") if zstandard is not None else ("gzip", "deflate")


def accept_encoding() -> str:
    """The ``Accept-Encoding`` value a 415 carries (RFC 7694 §3)."""
    return ", ".join(supported())


def parse(header: str | None) -> list[str]:
    """The codings of a ``Content-Encoding`` value in the order they were applied, ``identity`` left out;
    raises ApiError 415 (with ``Accept-Encoding``) for a coding this server does not decode."""
    names = [ALIASES.get(n, n) for n in (p.strip().lower() for p in (header or "").split(",")) if n]
    codings = [n for n in names if n != "identity"]
    unknown = [n for n in codings if n not in supported()]
    if unknown or len(codings) > MAX_CODINGS:
        what = (
            f"the content coding {unknown[0][:40]!r} is not supported"
            if unknown
            else f"more than {MAX_CODINGS} stacked content codings"
        )
        raise ApiError(
            415,
            UNSUPPORTED_MEDIA,
            f"{what}; send the body as it is or with Content-Encoding {', '.join(supported())}",
            {"accept_encoding": list(supported())},
            headers={"Accept-Encoding": accept_encoding()},
        )
    return codings


def _corrupt(coding: str, problem: str) -> ApiError:
    return ApiError(400, INVALID_BODY_ENCODING, f"the body is not valid {coding}: {problem}")


class _Decoded(io.RawIOBase):
    """One decoding layer over ``source``: at most ``limit`` bytes come out, then a 413."""

    def __init__(self, source: IO[bytes], coding: str, limit: int) -> None:
        self.source, self.coding, self.limit, self.produced = source, coding, limit, 0

    def readable(self) -> bool:
        """A decoded body is read once, front to back."""
        return True

    def readinto(self, buffer: Any) -> int:
        """Decode up to ``len(buffer)`` bytes into ``buffer``; 0 at the end of the body."""
        view = memoryview(buffer).cast("B")
        data = self._produce(min(len(view), CHUNK))
        self.produced += len(data)
        if self.produced > self.limit:
            raise RequestEntityTooLarge(f"the decoded body is larger than {self.limit} bytes")
        view[: len(data)] = data
        return len(data)

    @abc.abstractmethod
    def _produce(self, n: int) -> bytes:
        """At most ``n`` more decoded bytes; empty at the end of the body."""


class _Zlib(_Decoded):
    """gzip (one member or several) and deflate (zlib, or raw deflate), through zlib with ``max_length``,
    so one call never makes more than asked for."""

    def __init__(self, source: IO[bytes], coding: str, limit: int) -> None:
        super().__init__(source, coding, limit)
        self._inflate: Any = None  # the current stream's decompressor; None between gzip members
        self._pending = b""
        self._ended = False
        self._members = 0

    def _fill(self, at_least: int) -> bool:
        """Read source until ``_pending`` holds ``at_least`` bytes; False if the body ended first."""
        while len(self._pending) < at_least:
            chunk = self.source.read(CHUNK)
            if not chunk:
                return False
            self._pending += chunk
        return True

    def _start(self) -> None:
        if self.coding == "gzip":
            wbits = 16 + zlib.MAX_WBITS
        else:  # a zlib header is 2 bytes whose first names method 8 and whose value is a multiple of 31
            self._fill(2)
            head = self._pending[:2]
            zlib_header = len(head) == 2 and head[0] & 0x0F == 8 and int.from_bytes(head, "big") % 31 == 0
            wbits = zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS
        self._inflate = zlib.decompressobj(wbits)
        self._members += 1

    def _produce(self, n: int) -> bytes:
        while not self._ended:
            if not self._pending and not self._fill(1):
                if self._inflate is not None:
                    raise _corrupt(self.coding, "it ends before its compressed data does (truncated)")
                self._ended = True
                break
            if self._inflate is None:
                if self._members and self.coding != "gzip":
                    raise _corrupt(self.coding, "there is data after the end of the compressed data")
                self._start()
            try:
                out = self._inflate.decompress(self._pending, n)
            except zlib.error as exc:
                raise _corrupt(self.coding, str(exc)) from None
            if self._inflate.eof:
                self._pending = self._inflate.unused_data
                self._inflate = None  # a gzip body may hold another member (RFC 1952 §2.2)
            else:
                self._pending = self._inflate.unconsumed_tail
            if out:
                return bytes(out)
        return b""


class _Zstd(_Decoded):
    """zstd (RFC 8878), frames one after another, through zstandard's stream reader, which never makes
    more than asked for."""

    def __init__(self, source: IO[bytes], coding: str, limit: int) -> None:
        super().__init__(source, coding, limit)
        assert zstandard is not None
        self._reader = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW).stream_reader(
            source, read_size=CHUNK, read_across_frames=True, closefd=False
        )

    def _produce(self, n: int) -> bytes:
        try:
            return bytes(self._reader.read(n))
        except zstandard.ZstdError as exc:
            raise _corrupt(self.coding, str(exc)) from None


_LAYERS: dict[str, Callable[[IO[bytes], str, int], _Decoded]] = {
    "gzip": _Zlib,
    "deflate": _Zlib,
    "zstd": _Zstd,
}


class _Draining(io.RawIOBase):
    """The outermost layer: when decoding fails (413, 400), the rest of the raw body is read and dropped
    (it is bounded by the request's size limit), so the server answers a client still sending."""

    def __init__(self, decoded: IO[bytes], raw: IO[bytes]) -> None:
        self.decoded, self.raw = decoded, raw

    def readable(self) -> bool:
        """A decoded body is read once, front to back."""
        return True

    def readinto(self, buffer: Any) -> int:
        """Read decoded bytes into ``buffer``; on a decoding failure, drain the raw body and re-raise."""
        try:
            return self.decoded.readinto(buffer)  # type: ignore[attr-defined, no-any-return]
        except (RequestEntityTooLarge, ApiError):
            try:
                while self.raw.read(CHUNK):
                    pass
            except Exception:  # noqa: BLE001, S110 - the answer is decided; draining is a courtesy
                pass
            raise


def decoding_stream(raw: IO[bytes], header: str | None, limit: int | None) -> IO[bytes]:
    """``raw`` (the body as sent) decoded through the codings ``header`` names, each layer's output bounded
    by ``limit`` bytes (None: the 4 MiB default of a plain body); ``raw`` itself when there is none."""
    codings = parse(header)
    if not codings:
        return raw
    bound = limit if limit is not None else 4 * 1024 * 1024
    stream: IO[bytes] = raw
    for coding in reversed(codings):
        stream = _LAYERS[coding](stream, coding, bound)  # type: ignore[assignment]
    return _Draining(stream, raw)  # type: ignore[return-value]


class DecodingRequest(Request):
    """Flask's request whose ``stream`` (and so ``get_data`` and ``get_json``) is the decoded body."""

    @cached_property
    def stream(self) -> IO[bytes]:  # type: ignore[override]
        """The body, decoded from its ``Content-Encoding`` and bounded by ``max_content_length``."""
        raw = get_input_stream(self.environ, max_content_length=self.max_content_length)
        return decoding_stream(raw, self.headers.get("Content-Encoding"), self.max_content_length)
