"""Dataset readers on small hand-written files and on the real shared datasets, and their events."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from streamrec.contract import MIN_TS_MS, Event
from streamrec.datasets import (
    SYNTHETIC_STEP_MS,
    dataset_catalog,
    dataset_events,
    datasets_dir,
    read_baskets,
    read_item_views,
    read_movielens,
    read_movielens_items,
    read_seq,
    read_sessions,
)
from streamrec.event_types import EventType

BASE_TS = 1_700_000_000_000


def _real(name: str) -> Path:
    path = datasets_dir() / name
    if not path.is_dir():
        pytest.skip(f"shared dataset {name} not present at {path}")
    return path


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _by_user(events: list[Event]) -> dict[str, list[Event]]:
    out: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        out[e.user_id].append(e)
    return out


# ---------------------------------------------------------------- readers on small files


def test_read_seq_and_baskets_split_users_from_items(tmp_path: Path) -> None:
    path = _write(tmp_path / "seq.txt", "1 10 11 12\n2 11\n\n3 12 10\n")
    expected = [("1", ["10", "11", "12"]), ("2", ["11"]), ("3", ["12", "10"])]
    assert list(read_seq(path)) == expected
    assert list(read_baskets(path)) == expected


def test_read_movielens_skips_header_and_types_fields(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "ml.inter",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n196\t242\t3\t881250949\n186\t302\t4.5\t891717742\n",
    )
    assert list(read_movielens(path)) == [("196", "242", 3.0, 881250949), ("186", "302", 4.5, 891717742)]


def test_read_movielens_items_parses_by_header_and_tolerates_unknown_year(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "ml.item",
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "1\tToy Story\t1995\tAnimation Children's Comedy\n"
        "267\tunkonwn\tunkonwn\tunknown\n",
    )
    assert list(read_movielens_items(path)) == [
        ("1", "Toy Story", 1995, ["Animation", "Children's", "Comedy"]),
        ("267", "unkonwn", None, ["unknown"]),
    ]


def test_read_sessions_reads_epoch_seconds(tmp_path: Path) -> None:
    path = _write(tmp_path / "clicks.txt", "SessionId\tItemId\tTime\n1\t214536502\t1396860669.277\n")
    assert list(read_sessions(path)) == [("1", "214536502", 1396860669.277)]
    with pytest.raises(ValueError, match="header"):
        list(read_sessions(_write(tmp_path / "bad.txt", "1\t2\t3\n")))


def test_read_item_views_combines_day_and_timeframe(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "views.csv",
        "session_id;user_id;item_id;timeframe;eventdate\n1;NA;81766;526309;2016-05-09\n48;2;24764;8863;2016-04-09\n",
    )
    assert list(read_item_views(path)) == [
        ("1", None, "81766", 1_462_752_000_000 + 526_309),
        ("48", "2", "24764", 1_460_160_000_000 + 8_863),
    ]


# ---------------------------------------------------------------- real datasets


def test_beauty_counts_match_the_published_figures() -> None:
    rows = list(read_seq(_real("amazon-beauty") / "Beauty.txt"))
    assert len(rows) == 22_363
    assert sum(len(items) for _, items in rows) == 198_502
    assert len({i for _, items in rows for i in items}) == 12_101


def test_real_yelp_attributes_describe_nearly_every_item() -> None:
    path = _real("yelp")
    items = sorted({i for _, seq in read_seq(path / "Yelp.txt") for i in seq})
    catalog = dataset_catalog(path / "Yelp.txt", items)
    assert len(items) == 20_033
    assert [r.item_id for r in catalog] == items
    described = [r for r in catalog if r.attributes["attribute_ids"]]
    assert len(described) >= 20_000
    assert all(r.category == f"attr-{r.attributes['attribute_ids'][0]}" for r in described)


def test_movielens_counts() -> None:
    path = _real("movielens-100k")
    rows = list(read_movielens(path / "ml-100k.inter"))
    assert len(rows) == 100_000
    assert len({u for u, *_ in rows}) == 943
    assert len({i for _, i, *_ in rows}) == 1_682
    assert len(list(read_movielens_items(path / "ml-100k.item"))) == 1_682


def test_beibei_counts() -> None:
    path = _real("beibei")
    assert sum(len(items) for _, items in read_baskets(path / "train.txt")) == 282_860
    assert sum(len(items) for _, items in read_baskets(path / "cart.txt")) == 642_622


# ---------------------------------------------------------------- dataset_events


def _check_events(events: list[Event], base_ts: int) -> None:
    """Properties every dataset's events share: valid, ordered, unique ids, none after the base time."""
    assert events, "no events"
    assert all(isinstance(e, Event) for e in events)
    assert [e.ts for e in events] == sorted(e.ts for e in events)
    assert len({e.event_id for e in events}) == len(events)
    assert all(MIN_TS_MS <= e.ts <= base_ts for e in events)
    assert max(e.ts for e in events) == base_ts
    for user_events in _by_user(events).values():
        # Ids number each user's actions consecutively in the user's own order.
        seqs = [int(e.event_id.rsplit("-", 1)[1]) for e in user_events]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def test_small_beauty_folder_becomes_ordered_purchases(tmp_path: Path) -> None:
    folder = tmp_path / "amazon-beauty"
    _write(folder / "Beauty.txt", "1 1 2 3\n2 2 4\n3 3\n")
    _write(folder / "Beauty_item2attributes.json", '{"1": [173, 1], "2": [5], "3": [], "4": [9, 8]}')
    catalog, stream = dataset_events(folder, base_ts_ms=BASE_TS)
    events = list(stream)
    _check_events(events, BASE_TS)
    assert all(e.type is EventType.PURCHASE for e in events)
    users = _by_user(events)
    assert [e.item_id for e in users["1"]] == ["1", "2", "3"]
    assert [e.event_id for e in users["1"]] == ["amazon-beauty-0", "amazon-beauty-1", "amazon-beauty-2"]
    assert [b.ts - a.ts for a, b in zip(users["1"], users["1"][1:], strict=False)] == [SYNTHETIC_STEP_MS] * 2
    by_id = {item.item_id: item for item in catalog}
    assert set(by_id) == {"1", "2", "3", "4"}
    assert (by_id["1"].category, by_id["3"].category, by_id["4"].category) == ("attr-173", "", "attr-9")
    assert by_id["1"].title == "Beauty item 1"
    assert by_id["1"].image_url == "/static/img/1.svg"


def test_yelp_catalog_reads_the_s3rec_attribute_file(tmp_path: Path) -> None:
    folder = tmp_path / "yelp"
    _write(folder / "Yelp.txt", "1 1 2\n2 2 3\n")
    _write(folder / "Yelp_item2attributes.json", '{"1": [13, 1, 6], "2": [1], "3": []}')
    by_id = {r.item_id: r for r in dataset_catalog(folder / "Yelp.txt", ["1", "2", "3", "9"])}
    assert list(by_id) == ["1", "2", "3", "9"]
    assert by_id["1"].attributes == {"attribute_ids": [13, 1, 6]}
    assert [by_id[i].category for i in "1239"] == ["attr-13", "attr-1", "", ""]
    assert by_id["9"].attributes == {"attribute_ids": []}
    assert by_id["2"].title == "Yelp item 2"


def test_yelp_catalog_without_its_attribute_file_knows_only_ids(tmp_path: Path) -> None:
    folder = tmp_path / "yelp"
    _write(folder / "Yelp.txt", "1 1 2\n")
    assert [(r.item_id, r.category) for r in dataset_catalog(folder / "Yelp.txt", ["1", "2"])] == [
        ("1", ""),
        ("2", ""),
    ]


def test_limit_takes_whole_users_and_keeps_ids(tmp_path: Path) -> None:
    folder = tmp_path / "amazon-beauty"
    _write(folder / "Beauty.txt", "1 1 2 3\n2 2 4\n3 3\n")
    _, full = dataset_events(folder, base_ts_ms=BASE_TS)
    full_ids = {e.event_id: (e.user_id, e.item_id) for e in full}
    catalog, stream = dataset_events(folder, limit=4, base_ts_ms=BASE_TS)
    part = list(stream)
    assert sorted(e.user_id for e in part) == ["1", "1", "1"]
    assert {e.event_id: (e.user_id, e.item_id) for e in part}.items() <= full_ids.items()
    assert {i.item_id for i in catalog} == {"1", "2", "3"}
    _, tiny = dataset_events(folder, limit=2, base_ts_ms=BASE_TS)
    assert [e.item_id for e in tiny] == ["1", "2"]


def test_real_beauty_events_are_deterministic_with_a_fixed_base() -> None:
    _real("amazon-beauty")
    first = list(dataset_events("amazon-beauty", limit=2_000, base_ts_ms=BASE_TS)[1])
    again = list(dataset_events("amazon-beauty", limit=2_000, base_ts_ms=BASE_TS)[1])
    assert first == again
    assert 1_900 < len(first) <= 2_000
    _check_events(first, BASE_TS)


def test_movielens_views_with_purchases_for_high_ratings_shifted_to_now() -> None:
    path = _real("movielens-100k")
    catalog, stream = dataset_events("movielens-100k", limit=3_000, base_ts_ms=BASE_TS)
    events = list(stream)
    _check_events(events, BASE_TS)
    ratings: dict[tuple[str, str | None], float] = {
        (u, i): r for u, i, r, _ in read_movielens(path / "ml-100k.inter")
    }
    views = [e for e in events if e.type is EventType.VIEW]
    purchases = [e for e in events if e.type is EventType.PURCHASE]
    assert {e.type for e in events} == {EventType.VIEW, EventType.PURCHASE}
    assert len(purchases) == sum(ratings[(e.user_id, e.item_id)] >= 4 for e in views)
    assert all(ratings[(e.user_id, e.item_id)] >= 4 for e in purchases)
    # The shift keeps real gaps: the span equals the original span of the chosen users' ratings.
    chosen = {e.user_id for e in events}
    stamps = [ts for u, _, _, ts in read_movielens(path / "ml-100k.inter") if u in chosen]
    assert max(e.ts for e in events) - min(e.ts for e in events) == (max(stamps) - min(stamps)) * 1000
    movies = {m[0]: m for m in read_movielens_items(path / "ml-100k.item")}
    assert {item.item_id for item in catalog} == {e.item_id for e in events}
    for item in catalog:
        _, title, year, genres = movies[item.item_id]
        assert item.title == (f"{title} ({year})" if year else title)
        assert item.category == genres[0].lower()


def test_yoochoose_sessions_are_users_and_all_clicks_are_views() -> None:
    _real("yoochoose-100k")
    catalog, stream = dataset_events("yoochoose-100k", base_ts_ms=BASE_TS)
    events = list(stream)
    _check_events(events, BASE_TS)
    assert len(events) == 83_846
    assert len({e.user_id for e in events}) == 21_210
    assert len(catalog) == 2_933
    assert all(e.type is EventType.VIEW and e.session_id == e.user_id for e in events)


def test_beibei_carts_come_before_purchases_per_user() -> None:
    _real("beibei")
    _, stream = dataset_events("beibei", limit=5_000, base_ts_ms=BASE_TS)
    events = list(stream)
    _check_events(events, BASE_TS)
    for user_events in _by_user(events).values():
        types = [e.type for e in user_events]
        assert types == sorted(types, key=lambda t: t is EventType.PURCHASE)
        assert set(types) <= {EventType.ADD_TO_CART, EventType.PURCHASE}


def test_diginetica_views() -> None:
    _real("diginetica-sample")
    _, stream = dataset_events("diginetica-sample", base_ts_ms=BASE_TS)
    events = list(stream)
    _check_events(events, BASE_TS)
    assert len(events) == 12_391
    assert len({e.user_id for e in events}) == 2_986


def test_unknown_dataset_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset"):
        dataset_events("no-such-data")
    with pytest.raises(ValueError, match="unknown dataset"):
        dataset_events(tmp_path)


def test_datasets_dir_honours_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STREAMREC_DATASETS", str(tmp_path))
    assert datasets_dir() == tmp_path
    monkeypatch.delenv("STREAMREC_DATASETS")
    assert datasets_dir().name == "datasets"
