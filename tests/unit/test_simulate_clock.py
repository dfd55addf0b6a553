"""A live (paced) simulation never stamps an event ahead of the wall clock: receivers refuse a ``ts`` more
than STREAMREC_MAX_FUTURE_SKEW_MS ahead of theirs, and the simulated clock, made of sessions minutes long,
runs ahead of the pacing (by hours on a long run)."""

from __future__ import annotations

from streamrec.contract import DEFAULT_TIME_POLICY, Event, now_ms
from streamrec.producers.simulate import make_catalog, not_ahead_of_the_clock, simulate, simulate_events


class _ClockedPublisher:
    """Records each event with the wall clock at the moment it is published."""

    def __init__(self) -> None:
        self.failed = 0
        self.sent: list[tuple[Event, int]] = []

    def publish_item(self, item: object) -> None:
        pass

    def publish_event(self, event: Event) -> None:
        self.sent.append((event, now_ms()))

    def flush(self, timeout: float | None = None) -> None:
        pass


def test_a_paced_simulation_is_never_ahead_of_the_wall_clock() -> None:
    publisher = _ClockedPublisher()
    report = simulate(publisher, n_users=20, n_items=30, n_events=400, rate=4000, progress=False)  # type: ignore[arg-type]
    assert report.events == 400 == len(publisher.sent)
    assert all(event.ts <= published for event, published in publisher.sent)
    ts = [event.ts for event, _ in publisher.sent]
    assert ts == sorted(ts)
    assert all(DEFAULT_TIME_POLICY.problem(t) is None for t in ts)


def test_without_the_cap_the_simulated_clock_runs_ahead() -> None:
    # the reason for the cap: 400 events at 4,000 a second span 0.1 s of wall time but minutes of sessions
    start = now_ms()
    events = list(simulate_events(make_catalog(30, seed=0), 20, 400, 0, start, 100))
    assert max(e.ts for e in events) - start > 60_000
    capped = list(not_ahead_of_the_clock(iter(events)))
    assert [e.event_id for e in capped] == [e.event_id for e in events]
    assert max(e.ts for e in capped) <= now_ms()
