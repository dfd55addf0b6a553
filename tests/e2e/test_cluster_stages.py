"""The cluster schedule on a real Redis Cluster, without Kafka: a batch cut short after any of its stages
(a worker killed between two script calls) and then delivered again, even inside a larger batch, must
leave the state exactly as one clean pass does: the same keys, the same counters, the same popularity
copies, every neighbour list back within its bound."""

from __future__ import annotations

import gc
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from streamrec.contract import CatalogItem, Event, ItemDeletion
from streamrec.devtools.localstack import LocalCluster
from streamrec.fold import Source, StateWriter, redis_client
from streamrec.keys import Keys
from streamrec.producers.simulate import make_catalog, simulate_events
from streamrec.settings import ScoringSettings
from streamrec.state import applied_events, read_stats
from tests.state_snapshot import snapshot, state_only

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

START = 1_760_000_000_000
N_EVENTS = 400


@pytest.fixture(scope="module")
def shop() -> tuple[list[CatalogItem], list[Event]]:
    catalog = make_catalog(40, seed=3, ts_ms=START)
    return catalog, list(simulate_events(catalog, 50, N_EVENTS, seed=3, start_ts_ms=START))


@pytest.fixture
def client(redis_cluster: LocalCluster) -> Iterator[Any]:
    c = redis_client(redis_cluster.url, cluster=True)
    yield c
    c.close()


def _writer(client: Any, scoring: ScoringSettings | None = None) -> StateWriter:
    return StateWriter(client, Keys(f"s{uuid.uuid4().hex[:8]}"), scoring or ScoringSettings(), cluster=True)


def _fold(writer: StateWriter, events: Sequence[Event], first_offset: int, stages: int | None = None) -> int:
    """Fold ``events`` (partition 0, offsets from ``first_offset``); stop after ``stages`` steps of the
    schedule, as a worker killed there would. Returns the number of steps run."""
    sources = [Source(0, first_offset + n) for n in range(len(events))]
    plan = writer.events_plan(events, sources)
    replies: list[Any] | None = None
    steps = 0
    try:
        while stages is None or steps < stages:
            calls = plan.send(replies) if replies is not None else next(plan)
            replies = [writer._one(call) for call in calls]
            steps += 1
    except StopIteration:
        pass
    return steps


def _state(client: Any, keys: Keys) -> dict[bytes, Any]:
    snap = state_only(snapshot(client, keys.pattern()), keys)
    return {k[len(keys.prefix) :]: v for k, v in snap.items()}


def _clean(client: Any, shop: tuple[list[CatalogItem], list[Event]], halves: int) -> StateWriter:
    catalog, events = shop
    writer = _writer(client)
    writer.upsert_items(catalog)
    step = len(events) // halves
    for start in range(0, len(events), step):
        _fold(writer, events[start : start + step], start)
    return writer


@pytest.mark.parametrize("stages", [1, 2, 3, 4])
def test_a_batch_cut_after_any_stage_and_delivered_again_equals_a_clean_pass(
    client: Any, shop: tuple[list[CatalogItem], list[Event]], stages: int
) -> None:
    catalog, events = shop
    clean = _clean(client, shop, halves=2)
    want = _state(client, clean.keys)

    cut = _writer(client)
    cut.upsert_items(catalog)
    half = len(events) // 2
    # the first half's batch dies after `stages` of its 5 steps (user; item; copies and count reads;
    # trims and stats; acks)
    assert _fold(cut, events[:half], 0, stages) == stages
    # the broker delivers from the last committed offset again: the first half and the second in one batch
    total_steps = _fold(cut, events, 0)
    assert total_steps == 5, "the schedule's steps changed: review which cuts this test covers"
    got = _state(client, cut.keys)

    assert applied_events(client, cut.keys) == applied_events(client, clean.keys) == len(events)
    assert got.keys() == want.keys()
    differing = sorted(k for k in want if want[k] != got[k])
    assert not differing, f"{len(differing)} keys differ after a cut after step {stages}: {differing[:5]}"
    assert not list(client.scan_iter(match=cut.keys.outbox("*"))), "outbox entries were left behind"


def test_neighbour_lists_cut_before_their_trim_are_trimmed_when_delivered_again(
    client: Any, shop: tuple[list[CatalogItem], list[Event]]
) -> None:
    catalog, events = shop
    scoring = ScoringSettings(neighbours_max=3, neighbours_slack=1)
    cut = _writer(client, scoring)
    cut.upsert_items(catalog)
    _fold(cut, events, 0, stages=2)  # user and item stages ran; the trims of over-full lists did not
    names = list(client.scan_iter(match=cut.keys.neighbours("*")))
    assert max(client.zcard(n) for n in names) > 4, "no list went past its bound: the test proves nothing"
    _fold(cut, events, 0)
    assert max(client.zcard(n) for n in names) <= 4  # the bound: neighbours_max + neighbours_slack
    assert applied_events(client, cut.keys) == len(events)


# redis-py's asyncio RedisCluster can leave a socket of a connection it tore down while (re)learning the
# layout to the garbage collector (a ResourceWarning, raised as unraisable wherever the collector runs):
# collected inside this test, and not an error of the fold
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning", "ignore::ResourceWarning")
def test_a_batch_touching_hundreds_of_slots_folds_on_the_worker_client(redis_cluster: LocalCluster) -> None:
    """The worker's asyncio client: a 600-event batch of 600 shoppers is 600 user-stage calls at once,
    past redis-py's 100 connections per node unless the writer bounds the calls in flight."""
    import asyncio

    from streamrec.event_types import EventType
    from streamrec.fold import AsyncStateWriter, async_redis_client

    events = [
        Event(
            event_id=f"wide-{n}", type=EventType.VIEW, user_id=f"wide-{n}", item_id=f"i{n % 50}", ts=START + n
        )
        for n in range(600)
    ]
    keys = Keys(f"w{uuid.uuid4().hex[:8]}")

    async def fold() -> int:
        client = async_redis_client(redis_cluster.url, cluster=True)
        try:
            writer = AsyncStateWriter(client, keys, ScoringSettings(), cluster=True)
            result = await writer.apply(events, [Source(0, n) for n in range(len(events))])
            return result.applied
        finally:
            await client.aclose()

    assert asyncio.run(fold()) == len(events)
    gc.collect()
    sync = redis_client(redis_cluster.url, cluster=True)
    assert applied_events(sync, keys) == len(events)
    sync.close()


def _catalog_changes(catalog: Sequence[CatalogItem]) -> list[CatalogItem | ItemDeletion]:
    """Records that change what is counted and where copies are filed: re-categorised items, deletions
    (of items with activity: their copies must leave) and new items, all later than the first records."""
    later = START + 10_000_000
    moved = [c.model_copy(update={"category": "moved-here", "ts": later}) for c in catalog[:10]]
    gone: list[CatalogItem | ItemDeletion] = [
        ItemDeletion(item_id=c.item_id, deleted=True, ts=later) for c in catalog[10:15]
    ]
    new = [CatalogItem(item_id=f"new-{n}", title=f"new {n}", category="fresh", ts=later) for n in range(5)]
    return [*moved, *gone, *new]


@pytest.mark.parametrize("steps", [1, 2])
def test_catalog_records_cut_after_any_step_and_delivered_again_count_once(
    client: Any, shop: tuple[list[CatalogItem], list[Event]], steps: int
) -> None:
    """A worker killed after the catalog stage's ``citem`` calls (1) or after its copies and stats (2),
    before the outbox is dropped: delivered again inside a larger batch, every item is counted once and
    every copy moved, as in a clean pass; no outbox field is left behind."""
    catalog, events = shop
    changes = _catalog_changes(catalog)
    more = [CatalogItem(item_id=f"more-{n}", category="fresh", ts=START + 10_000_001) for n in range(3)]
    first = list(range(len(catalog)))
    offsets = list(range(len(catalog), len(catalog) + len(changes) + len(more)))

    def start() -> StateWriter:
        writer = _writer(client)
        writer.upsert_items(catalog, 0, first)
        _fold(writer, events, 0)
        return writer

    clean, cut = start(), start()
    clean.upsert_items([*changes, *more], 0, offsets)
    plan = cut.catalog_plan(changes, 0, offsets[: len(changes)])
    replies: list[Any] | None = None
    for _ in range(steps):  # then the worker dies
        calls = plan.send(replies) if replies is not None else next(plan)
        replies = [cut._one(call) for call in calls]
    cut.upsert_items([*changes, *more], 0, offsets)  # the broker delivers from the last committed offset

    assert _state(client, cut.keys) == _state(client, clean.keys)
    counted = read_stats(client, cut.keys, ("it",))
    assert counted == read_stats(client, clean.keys, ("it",)) == {"items": len(catalog) - 5 + 5 + 3}
    outbox = {f for key in client.scan_iter(match=f"{cut.keys.prefix}*}}:wm") for f in client.hkeys(key)}
    assert not [f for f in outbox if f.startswith(b"co:")], "catalog outbox fields were left behind"
    assert not outbox or {b"c:0"} <= outbox, "the catalog stage kept no watermark"


def test_catalog_records_without_offsets_are_folded_and_counted(
    client: Any, shop: tuple[list[CatalogItem], list[Event]]
) -> None:
    """Records folded without Kafka (no offsets) are counted as they come, and leave no outbox."""
    catalog, _ = shop
    writer = _writer(client)
    writer.upsert_items(catalog)
    writer.upsert_items(_catalog_changes(catalog))
    assert read_stats(client, writer.keys, ("it",)) == {"items": len(catalog)}
    outbox = {f for key in client.scan_iter(match=f"{writer.keys.prefix}*}}:wm") for f in client.hkeys(key)}
    assert not [f for f in outbox if f.startswith(b"co:")]


def test_a_users_state_read_in_one_multi_has_the_same_shapes_as_single_reads(
    client: Any, shop: tuple[list[CatalogItem], list[Event]]
) -> None:
    """``StateReader.user`` reads a user's keys in one MULTI. On RESP2, redis-py 8.1's cluster MULTI left
    ``ZRANGE … WITHSCORES`` unpaired (a flat list), which broke every personal answer on a cluster; so
    a cluster client keeps redis-py's default protocol (``fold.redis_client``)."""
    from streamrec.state import StateReader

    catalog, events = shop
    writer = _writer(client)
    writer.upsert_items(catalog)
    _fold(writer, events, 0)
    user = max({e.user_id for e in events}, key=lambda u: sum(e.user_id == u for e in events))
    state = StateReader(client, writer.keys, ScoringSettings()).user(user, START)
    pairs = client.zrange(writer.keys.prefs(user), 0, -1, withscores=True)  # outside any MULTI
    assert pairs and set(state.preferences) == {m.decode() for m, _ in pairs}
    assert all(isinstance(v, float) for v in state.preferences.values())
    assert state.history and state.version > 0


def test_a_cached_answers_stamp_on_a_cluster(
    client: Any, shop: tuple[list[CatalogItem], list[Event]]
) -> None:
    """On a cluster the catalog generation and the active model live in slots of their own, read in a
    pipeline right after the user's MULTI: the catalog stage moves the generation once its records are
    written, and a stamp read on the cluster sees it, the user's version and when that count started."""
    from streamrec.state import StateReader

    catalog, events = shop
    writer = _writer(client)
    writer.upsert_items(catalog)
    _fold(writer, events, 0)
    reader = StateReader(client, writer.keys, ScoringSettings())
    user = events[0].user_id
    before = reader.user_reply(user, stamp=True)
    assert before.stamp is not None and before.stamp[0] > 0 and before.stamp[1] > 0 and before.stamp[2] >= 1
    assert reader.user_reply(user).stamp is None  # not asked for: not read
    writer.upsert_items(_catalog_changes(catalog)[:1])
    after = reader.user_reply(user, stamp=True)
    assert after.stamp == (before.version, before.since, before.generation + 1, None)  # type: ignore[operator]
