"""Readers for the shared public datasets, and their translation into contract events.

Replay publishes these events now and offline evaluation reads the same files later, so the readers are
pure generators over local files (no Kafka, nothing read at import). Ids stay the dataset's own, so that
offline numbers and online answers speak of the same users and items: replay one dataset per stack
(or per topic and Redis prefix).
"""

from __future__ import annotations

import heapq
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson

from streamrec.contract import CatalogItem, Event, now_ms
from streamrec.event_types import EventType

# Datasets without timestamps get synthetic ones: a user's actions this far apart, users spread over a
# window ending at "now", so decays and trending see recent, interleaved activity.
SYNTHETIC_STEP_MS = 60_000
SYNTHETIC_WINDOW_MS = 7 * 86_400_000
# MovieLens: a rating this high also counts as a purchase (the strong, "would buy it" signal).
MOVIELENS_PURCHASE_RATING = 4.0

Action = tuple[EventType, str, int]  # (type, item_id, ts_ms): one user's action, before timing is final
UserLog = tuple[str, list[Action]]  # (user_id, actions in the user's order)
Describe = Callable[[Iterable[str], int], list[CatalogItem]]  # (item ids, ts) -> their catalog records


def datasets_dir() -> Path:
    """Where the shared datasets live: ``$STREAMREC_DATASETS``, else ``<repo>/../shared/datasets``."""
    env = os.environ.get("STREAMREC_DATASETS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"


class DatasetNotFound(ValueError):
    """A known dataset name whose folder is not in ``datasets_dir()`` (a clone without ``../shared``)."""


def find_dataset(name_or_path: str | Path) -> tuple[str, Path]:
    """``(dataset name, its folder)``, checked without reading a file, so callers can fail before any I/O.

    Raises ``DatasetNotFound`` when a known name's folder is missing (the message says how to point
    ``STREAMREC_DATASETS`` at it) and ``ValueError`` for a name or folder that is no known dataset.
    """
    name, directory = _resolve(name_or_path)
    if not directory.is_dir():
        raise DatasetNotFound(
            f"dataset {name} is not in {directory.parent}: set STREAMREC_DATASETS to the folder that holds "
            f"the {name} folder"
        )
    return name, directory


# ---------------------------------------------------------------- readers (raw files -> plain tuples)


def read_seq(path: str | Path) -> Iterator[tuple[str, list[str]]]:
    """Amazon-style sequences: ``user item1 item2 ...`` per line, items in time order."""
    yield from _read_user_lines(path)


def read_baskets(path: str | Path) -> Iterator[tuple[str, list[str]]]:
    """Beibei-style baskets: ``user item1 item2 ...`` per line; the item order carries no meaning."""
    yield from _read_user_lines(path)


def _read_user_lines(path: str | Path) -> Iterator[tuple[str, list[str]]]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if parts:
                # Interning shares the few thousand distinct item ids across hundreds of thousands of tokens.
                yield parts[0], [sys.intern(p) for p in parts[1:]]


def read_movielens(inter_path: str | Path) -> Iterator[tuple[str, str, float, int]]:
    """RecBole ``ml-100k.inter`` rows as ``(user, item, rating, ts_seconds)``, in file order."""
    for row in _read_tsv_with_header(inter_path):
        yield row["user_id"], sys.intern(row["item_id"]), float(row["rating"]), int(float(row["timestamp"]))


def read_movielens_items(item_path: str | Path) -> Iterator[tuple[str, str, int | None, list[str]]]:
    """RecBole ``ml-100k.item`` rows as ``(item_id, title, year or None, genres)``."""
    for row in _read_tsv_with_header(item_path):
        year = row.get("release_year", "")
        yield (
            row["item_id"],
            row.get("movie_title", ""),
            int(year) if year.isdigit() else None,
            row.get("class", "").split(),
        )


def read_sessions(path: str | Path) -> Iterator[tuple[str, str, float]]:
    """Yoochoose clicks (TSV ``SessionId ItemId Time``, epoch seconds) as ``(session, item, seconds)``."""
    with open(path, encoding="utf-8") as f:
        header = f.readline().split()
        if header[:2] != ["SessionId", "ItemId"]:
            raise ValueError(f"{path}: expected a 'SessionId ItemId Time' header, got {header}")
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                yield parts[0], sys.intern(parts[1]), float(parts[2])


def read_item_views(path: str | Path) -> Iterator[tuple[str, str | None, str, int]]:
    """Diginetica views (``session_id;user_id;item_id;timeframe;eventdate``) as ``(session, user, item, ms)``.

    ``timeframe`` is milliseconds since the session began and ``eventdate`` its day, so the event time is
    that day's midnight UTC plus the timeframe; ``user`` is None for anonymous sessions ("NA").
    """
    with open(path, encoding="utf-8") as f:
        header = f.readline().strip().split(";")
        if header[:3] != ["session_id", "user_id", "item_id"]:
            raise ValueError(f"{path}: expected a 'session_id;user_id;item_id;...' header, got {header}")
        for line in f:
            parts = line.strip().split(";")
            if len(parts) < 5:
                continue
            day = datetime.strptime(parts[4], "%Y-%m-%d").replace(tzinfo=UTC)
            ts_ms = int(day.timestamp() * 1000) + int(parts[3])
            yield parts[0], None if parts[1] in ("", "NA") else parts[1], sys.intern(parts[2]), ts_ms


def _read_tsv_with_header(path: str | Path) -> Iterator[dict[str, str]]:
    """Rows of a RecBole atomic file, keyed by the header's field names without their ``:type`` suffix."""
    with open(path, encoding="utf-8") as f:
        names = [field.split(":", 1)[0] for field in f.readline().rstrip("\n").split("\t")]
        for line in f:
            values = line.rstrip("\n").split("\t")
            if len(values) == len(names):
                yield dict(zip(names, values, strict=True))


# ---------------------------------------------------------------- datasets -> (catalog, events)


@dataclass(frozen=True)
class _Loaded:
    """A dataset's users in canonical order, whether its times are real, and how to describe its items."""

    users: Iterator[UserLog]
    real_times: bool
    sessions: bool  # users are really sessions: their id is also the event's session_id
    describe: Describe


def dataset_events(
    name_or_path: str | Path, limit: int | None = None, base_ts_ms: int | None = None
) -> tuple[list[CatalogItem], Iterator[Event]]:
    """A dataset as ``(catalog, events)``: events globally ordered by time, each user's in their own order.

    ``limit`` caps the events by taking whole users in the dataset's order while they fit (a first user
    longer than the cap is cut, so a small limit still yields something). ``event_id`` is
    ``"<dataset>-<n>"`` with n the action's position in the full dataset, so replaying the same data again,
    with any limit, is deduplicated downstream. Times end at ``base_ts_ms`` (default: now): real
    timestamps are shifted by one constant so the newest lands there, and datasets without timestamps get
    synthetic ones. The catalog holds exactly the items the events mention. Raises what ``find_dataset``
    raises.
    """
    name, directory = find_dataset(name_or_path)
    base = now_ms() if base_ts_ms is None else base_ts_ms
    loaded = _LOADERS[name](directory)
    users = _take_users(loaded.users, limit)
    timed = _shift_to(users, base) if loaded.real_times else schedule(users, base)
    item_ids = dict.fromkeys(item for _, actions in timed for _, item, _ in actions)
    catalog = loaded.describe(item_ids, base)
    return catalog, merge_events(name, timed, loaded.sessions)


def dataset_names() -> list[str]:
    """The dataset names ``dataset_events`` understands."""
    return list(_LOADERS)


def _resolve(name_or_path: str | Path) -> tuple[str, Path]:
    """A known name maps into ``datasets_dir()``; a path must be a folder named after a known dataset."""
    if isinstance(name_or_path, str) and name_or_path in _LOADERS:
        return name_or_path, datasets_dir() / name_or_path
    path = Path(name_or_path)
    if path.name in _LOADERS and path.is_dir():
        return path.name, path
    raise ValueError(
        f"unknown dataset {str(name_or_path)!r}: use one of {', '.join(_LOADERS)} or such a folder"
    )


def _take_users(users: Iterator[UserLog], limit: int | None) -> list[UserLog]:
    if limit is None:
        return list(users)
    taken: list[UserLog] = []
    total = 0
    for user, actions in users:
        if total + len(actions) > limit:
            if not taken and limit > 0:
                taken.append((user, actions[:limit]))
            break
        taken.append((user, actions))
        total += len(actions)
    return taken


def _shift_to(users: list[UserLog], base_ts_ms: int) -> list[UserLog]:
    """Move real times by one constant so the newest lands at ``base_ts_ms``; gaps and order are kept."""
    newest = max((ts for _, actions in users for _, _, ts in actions), default=base_ts_ms)
    shift = base_ts_ms - newest
    return [(user, [(t, item, ts + shift) for t, item, ts in actions]) for user, actions in users]


def schedule(users: list[UserLog], base_ts_ms: int) -> list[UserLog]:
    """Synthetic times: each user's actions a minute apart, users' starts spread over a window ending at base.

    Users start in dataset order, the last one finishing exactly at ``base_ts_ms``, so replay interleaves
    users the way a live shop would.
    """
    out: list[UserLog] = []
    last = max(len(users) - 1, 1)
    for k, (user, actions) in enumerate(users):
        span = max(len(actions) - 1, 0) * SYNTHETIC_STEP_MS
        earliest = base_ts_ms - max(SYNTHETIC_WINDOW_MS, span)
        latest = base_ts_ms - span
        start = earliest + (latest - earliest) * k // last if len(users) > 1 else latest
        out.append(
            (user, [(t, item, start + i * SYNTHETIC_STEP_MS) for i, (t, item, _) in enumerate(actions)])
        )
    return out


def merge_events(dataset: str, users: list[UserLog], sessions: bool) -> Iterator[Event]:
    """Build events lazily, merging the users' sorted streams by (ts, n) so memory stays per user."""

    def stream(
        user: str, actions: list[Action], first_n: int
    ) -> Iterator[tuple[int, int, str, EventType, str]]:
        for i, (etype, item, ts) in enumerate(actions):
            yield ts, first_n + i, user, etype, item

    streams = []
    n = 0
    for user, actions in users:
        streams.append(stream(user, actions, n))
        n += len(actions)
    for ts, seq, user, etype, item in heapq.merge(*streams):
        yield Event(
            event_id=f"{dataset}-{seq}",
            type=etype,
            user_id=user,
            item_id=item,
            session_id=user if sessions else None,
            ts=ts,
        )


def _plain_catalog(label: str) -> Describe:
    """Catalog records for datasets that know nothing about their items but the id."""

    def describe(item_ids: Iterable[str], ts_ms: int) -> list[CatalogItem]:
        return [_item(i, f"{label} item {i}", "", ts_ms, {}) for i in item_ids]

    return describe


def _item(item_id: str, title: str, category: str, ts_ms: int, attributes: dict[str, object]) -> CatalogItem:
    return CatalogItem(
        item_id=item_id,
        title=title,
        category=category,
        image_url=f"/static/img/{item_id}.svg",
        attributes=attributes,
        ts=ts_ms,
    )


# ---------------------------------------------------------------- one loader per dataset


def _load_amazon_beauty(directory: Path) -> _Loaded:
    """Every review is a purchase, in the file's (time) order; the first attribute id is the category."""
    users = (
        (user, [(EventType.PURCHASE, item, 0) for item in items])
        for user, items in read_seq(directory / "Beauty.txt")
    )
    return _Loaded(users, real_times=False, sessions=False, describe=_beauty_catalog(directory))


def _beauty_catalog(directory: Path) -> Describe:
    """Beauty's S3-Rec item attributes (``Beauty_item2attributes.json``)."""
    return _s3rec_catalog(directory / "Beauty_item2attributes.json", "Beauty")


def _yelp_catalog(directory: Path) -> Describe:
    """Yelp's S3-Rec item attributes (``Yelp_item2attributes.json``: the businesses' category ids)."""
    return _s3rec_catalog(directory / "Yelp_item2attributes.json", "Yelp")


def _s3rec_catalog(attrs_path: Path, label: str) -> Describe:
    """Records from an S3-Rec ``<Name>_item2attributes.json`` (``{"item": [attribute ids]}``): the ids are
    the ``attribute_ids`` attribute and the first one is the category; an item the file omits (or a missing
    file) gets neither."""

    def describe(item_ids: Iterable[str], ts_ms: int) -> list[CatalogItem]:
        attrs: dict[str, list[int]] = orjson.loads(attrs_path.read_bytes()) if attrs_path.exists() else {}
        out = []
        for i in item_ids:
            ids = attrs.get(i, [])
            category = f"attr-{ids[0]}" if ids else ""
            out.append(_item(i, f"{label} item {i}", category, ts_ms, {"attribute_ids": ids}))
        return out

    return describe


def _load_movielens(directory: Path) -> _Loaded:
    """Every rating is a view; a rating of 4 or more is also a purchase right after it (same time)."""
    by_user: dict[str, list[tuple[int, int, str, float]]] = {}
    for line_no, (user, item, rating, ts_s) in enumerate(read_movielens(directory / "ml-100k.inter")):
        by_user.setdefault(user, []).append((ts_s, line_no, item, rating))

    def users() -> Iterator[UserLog]:
        for user, rows in by_user.items():
            actions: list[Action] = []
            for ts_s, _, item, rating in sorted(rows):
                actions.append((EventType.VIEW, item, ts_s * 1000))
                if rating >= MOVIELENS_PURCHASE_RATING:
                    actions.append((EventType.PURCHASE, item, ts_s * 1000))
            yield user, actions

    return _Loaded(users(), real_times=True, sessions=False, describe=_movielens_catalog(directory))


def _movielens_catalog(directory: Path) -> Describe:
    """Titles, years and genres from ``ml-100k.item``; the first genre is the category."""

    def describe(item_ids: Iterable[str], ts_ms: int) -> list[CatalogItem]:
        movies = {m[0]: m for m in read_movielens_items(directory / "ml-100k.item")}
        out = []
        for i in item_ids:
            _, title, year, genres = movies.get(i, (i, f"Movie {i}", None, []))
            shown = f"{title} ({year})" if year else title
            category = genres[0].lower() if genres else ""
            out.append(_item(i, shown, category, ts_ms, {"year": year, "genres": genres}))
        return out

    return describe


def group_sessions(rows: Iterable[tuple[str, str, int]]) -> Iterator[UserLog]:
    """Sessions as users, in order of first appearance, each session's views sorted by time."""
    sessions: dict[str, list[tuple[int, int, str]]] = {}
    for n, (session, item, ts_ms) in enumerate(rows):
        sessions.setdefault(session, []).append((ts_ms, n, item))
    for session, views in sessions.items():
        yield session, [(EventType.VIEW, item, ts) for ts, _, item in sorted(views)]


def _load_yoochoose(directory: Path) -> _Loaded:
    """Clicks are views and sessions are users; the train and test slices together make the 100k clicks."""
    files = sorted(directory.glob("*train*.txt")) + sorted(directory.glob("*test*.txt"))
    rows = (
        (session, item, round(seconds * 1000))
        for path in files
        for session, item, seconds in read_sessions(path)
    )
    return _Loaded(group_sessions(rows), real_times=True, sessions=True, describe=_plain_catalog("Yoochoose"))


def _load_diginetica(directory: Path) -> _Loaded:
    """Views, with sessions as users (most sessions are anonymous)."""
    rows = (
        (session, item, ts_ms)
        for path in sorted(directory.glob("*.csv"))
        for session, _, item, ts_ms in read_item_views(path)
    )
    return _Loaded(
        group_sessions(rows), real_times=True, sessions=True, describe=_plain_catalog("Diginetica")
    )


def _load_beibei(directory: Path) -> _Loaded:
    """Each user's cart adds, then their purchases (train.txt); test.txt stays held out for evaluation."""
    purchases = dict(read_baskets(directory / "train.txt"))

    def users() -> Iterator[UserLog]:
        seen: set[str] = set()
        for user, carts in read_baskets(directory / "cart.txt"):
            seen.add(user)
            bought = purchases.get(user, [])
            yield (
                user,
                [(EventType.ADD_TO_CART, i, 0) for i in carts] + [(EventType.PURCHASE, i, 0) for i in bought],
            )
        for user, bought in purchases.items():
            if user not in seen:
                yield user, [(EventType.PURCHASE, i, 0) for i in bought]

    return _Loaded(users(), real_times=False, sessions=False, describe=_plain_catalog("Beibei"))


_LOADERS: dict[str, Callable[[Path], _Loaded]] = {
    "amazon-beauty": _load_amazon_beauty,
    "movielens-100k": _load_movielens,
    "yoochoose-100k": _load_yoochoose,
    "beibei": _load_beibei,
    "diginetica-sample": _load_diginetica,
}
# the datasets whose catalog knows more than ids (the rest get ``_plain_catalog``)
_CATALOGS: dict[str, Callable[[Path], Describe]] = {
    "amazon-beauty": _beauty_catalog,
    "movielens-100k": _movielens_catalog,
    "yelp": _yelp_catalog,  # read by evaluation (``dataset_catalog``); Yelp has no replay loader
}


def dataset_catalog(path: str | Path, item_ids: Iterable[str]) -> list[CatalogItem]:
    """The catalog records a replay of the dataset at ``path`` (a known dataset's folder, or a file in it)
    publishes for ``item_ids``, stamped now; [] when that dataset's catalog knows nothing but ids, or
    ``path`` is in no known dataset's folder. Reads the dataset's item file."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    make = _CATALOGS.get(folder.name)
    return make(folder)(item_ids, now_ms()) if make else []
