"""Simulated shoppers who react to the answers they are shown, so that an A/B experiment can run end to
end on the local stack (issue 29).

The core is pure and deterministic for a seeded ``random.Random``: ``react`` turns one answer into the
views, cart adds and purchases of one ``Shopper`` (``producers.simulate``), drawn from the same hidden
taste that drives the shopper's ordinary sessions. Those sessions are the warm-up history, so a strategy
that learns a shopper's categories from their history shows them what they react to, and one that does
not (popular only) shows them what they mostly pass over.

**The reaction model.** For a shopper ``s`` shown an item of category ``c`` at position ``i`` (0 = first):

- ``pick(s, c) = (1 - P_EXPLORE) * taste_s(c) + P_EXPLORE / len(CATEGORIES)``: the chance that a step of
  ``s``'s own sessions lands in ``c`` (``Shopper.pick_category``), so their history shows exactly this;
- ``category_affinity(s, c) = pick(s, c) / max over c' of pick(s, c')``, in (0, 1]: 1 for the favourite
  category, about ``P_EXPLORE / 8 / 0.9`` (a few per cent) for a category ``s`` does not like;
- ``price_factor(s, r) = max(PRICE_FLOOR, min(1, r ** -price_sensitivity))``, in [PRICE_FLOOR, 1], where
  ``r`` is the item's price over the median price of its category in the simulated catalog (1 when
  unknown): a price-sensitive shopper passes over dear items, and cheap ones are never more than liked;
- ``affinity = category_affinity * price_factor``, in (0, 1];
- ``P(view) = P_VIEW_TOP * affinity * POSITION_DECAY ** i``, at most ``P_VIEW_TOP``;
- ``P(cart | view) = P_CART_TOP * affinity``, at most ``P_CART_TOP``; 0 for an item out of stock or
  without a known price;
- ``P(buy | cart) = s.buy_propensity`` (0.2 to 0.8, as in the shopper's sessions), per carted item;
- a cart add and its purchase carry the same ``quantity`` (2 with ``P_TWO``, else 1) and ``price`` (the
  answer's, else the simulated catalog's), so a purchase is worth ``price * quantity``.

Every event cites the answer's ``recommendation_id``. The thin edge, ``run_reactions``, publishes the
warm-up (``simulate``), asks the API for each shopper's answer in rounds, reacts and publishes the
reactions to Kafka, and keeps a ``Tally`` per experiment variant.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import quote

import requests

from streamrec.contract import CatalogItem, Event, now_ms
from streamrec.event_types import EventType
from streamrec.producers.simulate import CATEGORIES, P_EXPLORE, Shopper, make_catalog, make_shoppers, simulate
from streamrec.publisher import EventPublisher, PublishReport

P_VIEW_TOP = 0.6  # P(view) of the first item for a shopper's favourite category at a price they like
POSITION_DECAY = 0.85  # each position further down is seen this much less (k=10: the last at 0.23x)
P_CART_TOP = 0.35  # P(cart | view) at affinity 1
P_TWO = 0.2  # a cart add is of two, not one
PRICE_FLOOR = 0.2  # the least a dear price lowers an item's appeal (a factor)
NO_VARIANT = "-"  # the variant of an answer outside any experiment


@dataclass(frozen=True)
class ShownItem:
    """One item of an answer as the API shows it: id, category (None: unknown), price (None: unknown)."""

    item_id: str
    category: str | None = None
    price: float | None = None
    in_stock: bool = True


@dataclass(frozen=True)
class Shown:
    """One answer: its ``recommendation_id``, its items in order, the experiment variant it was served
    under (``NO_VARIANT`` outside an experiment) and the strategy that made it."""

    recommendation_id: str
    items: tuple[ShownItem, ...]
    variant: str = NO_VARIANT
    strategy: str = ""


def read_answer(body: Any) -> Shown:
    """The ``Shown`` of a recommendations envelope ``{"code": 0, "msg": "ok", "data": {...}}``.

    ``data.experiment.variant`` names the variant (absent: ``NO_VARIANT``). Raises ``ValueError`` naming
    what is missing when the body is not such an answer.
    """
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise ValueError("the answer has no 'data' object")
    rec_id = data.get("recommendation_id")
    if not isinstance(rec_id, str) or not rec_id:
        raise ValueError("the answer has no 'recommendation_id'")
    rows = data.get("items")
    if not isinstance(rows, list):
        raise ValueError("the answer has no 'items' list")
    items = []
    for row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("item_id"), str):
            raise ValueError(f"an answer item has no 'item_id': {row!r}")
        price = row.get("price")
        items.append(
            ShownItem(
                item_id=row["item_id"],
                category=row.get("category") if isinstance(row.get("category"), str) else None,
                price=float(price) if isinstance(price, int | float) and price >= 0 else None,
                in_stock=row.get("in_stock") is not False,
            )
        )
    experiment = data.get("experiment")
    variant = experiment.get("variant") if isinstance(experiment, dict) else None
    return Shown(
        recommendation_id=rec_id,
        items=tuple(items),
        variant=str(variant) if variant not in (None, "") else NO_VARIANT,
        strategy=str(data.get("strategy") or ""),
    )


@dataclass(frozen=True)
class PriceBook:
    """What the simulated catalog says of prices: ``price`` by item id, and ``ratio``, an item's price over
    the median price of its category (how dear it is where it is sold). Empty: nothing is known."""

    price: Mapping[str, float] = field(default_factory=dict)
    ratio: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, catalog: Iterable[CatalogItem]) -> PriceBook:
        """The book of ``catalog`` (items without a price have no entry)."""
        by_category: dict[str, list[CatalogItem]] = {}
        for item in catalog:
            if item.price:
                by_category.setdefault(item.category, []).append(item)
        price, ratio = {}, {}
        for items in by_category.values():
            prices = sorted(float(i.price or 0.0) for i in items)
            median = prices[len(prices) // 2]
            for i in items:
                price[i.item_id] = float(i.price or 0.0)
                ratio[i.item_id] = float(i.price or 0.0) / median
        return cls(price, ratio)


def category_affinity(shopper: Shopper, category: str | None) -> float:
    """How much ``shopper`` cares for ``category`` (None: unknown), in (0, 1]: the chance a step of their
    sessions lands there, over that of their favourite category (see the module docstring)."""
    n = len(CATEGORIES)

    def pick(c: str | None) -> float:
        return (1 - P_EXPLORE) * shopper.taste.get(c or "", 0.0) + P_EXPLORE / n

    best = max((pick(c) for c in shopper.taste), default=P_EXPLORE / n)
    return min(pick(category) / best, 1.0)


def price_factor(shopper: Shopper, ratio: float | None) -> float:
    """How a price ``ratio`` times its category's median appeals to ``shopper``, in [PRICE_FLOOR, 1]:
    ``ratio ** -price_sensitivity``, capped at 1; an unknown ratio (None, or not positive) is 1."""
    if ratio is None or ratio <= 0:
        return 1.0
    return max(PRICE_FLOOR, min(1.0, ratio**-shopper.price_sensitivity))


def affinity(shopper: Shopper, item: ShownItem, book: PriceBook) -> float:
    """``category_affinity * price_factor``, in (0, 1]."""
    return category_affinity(shopper, item.category) * price_factor(shopper, book.ratio.get(item.item_id))


def view_probability(shopper: Shopper, item: ShownItem, position: int, book: PriceBook) -> float:
    """P(``shopper`` views ``item`` shown at ``position``, 0-based) = P_VIEW_TOP * affinity *
    POSITION_DECAY ** position, in [0, P_VIEW_TOP]. Raises ``ValueError`` for a negative position."""
    if position < 0:
        raise ValueError(f"position must be 0 or more, got {position}")
    return P_VIEW_TOP * affinity(shopper, item, book) * POSITION_DECAY**position


def _price(item: ShownItem, book: PriceBook) -> float | None:
    return item.price if item.price is not None else book.price.get(item.item_id)


def cart_probability(shopper: Shopper, item: ShownItem, book: PriceBook) -> float:
    """P(``shopper`` adds ``item`` to the cart | viewed it) = P_CART_TOP * affinity, in [0, P_CART_TOP];
    0 when it is out of stock or its price is unknown (nothing to pay)."""
    if not item.in_stock or _price(item, book) is None:
        return 0.0
    return P_CART_TOP * affinity(shopper, item, book)


def buy_probability(shopper: Shopper) -> float:
    """P(``shopper`` buys a carted item | carted it): their ``buy_propensity``, in [0, 1]."""
    return min(max(shopper.buy_propensity, 0.0), 1.0)


def react(
    shopper: Shopper,
    shown: Shown,
    rng: random.Random,
    ts_ms: int,
    event_prefix: str,
    book: PriceBook | None = None,
) -> list[Event]:
    """What ``shopper`` does with one answer: views (in the answer's order), each followed by its cart add
    if any, then the purchases; drawn from ``rng`` with the module's probabilities.

    Every event cites ``shown.recommendation_id``, is stamped ``ts_ms + n`` (epoch ms, n = its index, so
    the events keep their order and stay within a few ms of ``ts_ms``) and has the id
    ``f"{event_prefix}-{n}"`` (``event_prefix`` must make it unique: at most 56 characters) and the session
    ``event_prefix``. No items, no events. ``book`` (default: empty) gives prices and price ratios the
    answer lacks.
    """
    book = book or PriceBook()
    events: list[Event] = []

    def emit(
        etype: EventType, item: ShownItem, quantity: float | None = None, price: float | None = None
    ) -> None:
        events.append(
            Event(
                event_id=f"{event_prefix}-{len(events)}",
                type=etype,
                user_id=shopper.user_id,
                item_id=item.item_id,
                session_id=event_prefix,
                recommendation_id=shown.recommendation_id,
                quantity=quantity,
                price=price,
                ts=ts_ms + len(events),
            )
        )

    carted: list[tuple[ShownItem, float, float]] = []
    for position, item in enumerate(shown.items):
        if rng.random() >= view_probability(shopper, item, position, book):
            continue
        emit(EventType.VIEW, item)
        if rng.random() < cart_probability(shopper, item, book):
            quantity = 2.0 if rng.random() < P_TWO else 1.0
            price = _price(item, book)
            assert price is not None  # cart_probability is 0 without one
            emit(EventType.ADD_TO_CART, item, quantity, price)
            carted.append((item, quantity, price))
    for item, quantity, price in carted:
        if rng.random() < buy_probability(shopper):
            emit(EventType.PURCHASE, item, quantity, price)
    return events


@dataclass
class VariantTally:
    """What one variant's answers were shown and brought: shoppers (ids), answers, items shown, events by
    type, revenue (sum of price * quantity of purchases, in the catalog's currency)."""

    shoppers: set[str] = field(default_factory=set)
    answers: int = 0
    shown: int = 0
    events: Counter[str] = field(default_factory=Counter)
    revenue: float = 0.0


@dataclass
class Tally:
    """Answers and reactions per experiment variant (``NO_VARIANT`` outside an experiment)."""

    variants: dict[str, VariantTally] = field(default_factory=dict)

    def add(self, user_id: str, shown: Shown, events: Sequence[Event]) -> None:
        """Count one answer to ``user_id`` and the reactions to it."""
        v = self.variants.setdefault(shown.variant, VariantTally())
        v.shoppers.add(user_id)
        v.answers += 1
        v.shown += len(shown.items)
        for e in events:
            v.events[e.type.value] += 1
            if e.type is EventType.PURCHASE:
                v.revenue += (e.price or 0.0) * (e.quantity or 0.0)

    def events(self) -> Counter[str]:
        """Events sent by type, over every variant."""
        total: Counter[str] = Counter()
        for v in self.variants.values():
            total.update(v.events)
        return total

    def revenue(self) -> float:
        """Revenue sent, over every variant."""
        return sum(v.revenue for v in self.variants.values())

    def crossed(self) -> int:
        """Shoppers who were answered under more than one variant (0 when the split is per shopper)."""
        seen = Counter(u for v in self.variants.values() for u in v.shoppers)
        return sum(1 for n in seen.values() if n > 1)

    def lines(self) -> list[str]:
        """A table for a person: per variant, shoppers, answers, views, carts, purchases, revenue and
        revenue per answer; then the shoppers answered under more than one variant, if any."""
        head = f"{'variant':<16} {'shoppers':>8} {'answers':>8} {'views':>7} {'carts':>6} {'purchases':>9} "
        out = [head + f"{'revenue':>11} {'rev/answer':>10}"]
        for name in sorted(self.variants):
            v = self.variants[name]
            per = v.revenue / v.answers if v.answers else 0.0
            out.append(
                f"{name:<16} {len(v.shoppers):>8} {v.answers:>8} {v.events['view']:>7} "
                f"{v.events['add_to_cart']:>6} {v.events['purchase']:>9} {v.revenue:>11.2f} {per:>10.2f}"
            )
        if crossed := self.crossed():
            out.append(f"{crossed} shoppers were answered under more than one variant")
        return out


class ReactError(RuntimeError):
    """The API could not be reached or did not give an answer; the message is one line for a person."""


class RecommendationsApi:
    """``GET {base_url}/v1/users/{user_id}/recommendations?k=…&placement=…`` over HTTP, as ``Shown``.

    Thread-safe: each thread has its own ``requests.Session``. Raises ``ReactError`` when the API does
    not answer within ``timeout_s`` seconds, answers an error status, or answers something that is not an
    answer.
    """

    def __init__(self, base_url: str, placement: str | None = None, k: int = 10, timeout_s: float = 10.0):
        self.base_url = base_url.rstrip("/")
        self.params: dict[str, str | int] = {"k": k, **({"placement": placement} if placement else {})}
        self.timeout_s = timeout_s
        self._local = threading.local()

    def _get(self, path: str, params: Mapping[str, str | int] | None = None) -> Any:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        url = f"{self.base_url}{path}"
        try:
            resp = session.get(url, params=params, timeout=self.timeout_s)
        except (
            requests.exceptions.InvalidURL,
            requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema,
        ):
            raise ReactError(
                f"{self.base_url!r} is not an API address such as http://127.0.0.1:8000"
            ) from None
        except requests.RequestException as exc:
            raise ReactError(
                f"the API does not answer at {self.base_url} ({type(exc).__name__}); start the local stack "
                "with 'streamrec up' or point --api at a running API"
            ) from None
        try:
            body = resp.json()
        except ValueError:
            body = None
        if resp.status_code != 200:
            said = body.get("msg") if isinstance(body, dict) else None
            raise ReactError(f"the API answered {resp.status_code} to GET {resp.url}: {said or resp.reason}")
        return body

    def check(self) -> None:
        """Raise ``ReactError`` unless the API answers ``/healthz`` and knows the placement (asked of
        ``/v1/popular``, which names no shopper, so no experiment counts the check as an answer)."""
        self._get("/healthz")
        if "placement" in self.params:
            self._get("/v1/popular", {"k": 1, "placement": self.params["placement"]})

    def __call__(self, user_id: str) -> Shown:
        """The API's answer for ``user_id``."""
        body = self._get(f"/v1/users/{quote(user_id, safe='')}/recommendations", self.params)
        try:
            return read_answer(body)
        except ValueError as exc:
            raise ReactError(
                f"the API's answer for {user_id} is not a recommendation answer: {exc}"
            ) from None


class AckedOffsets:
    """Passes events and catalog records through to an ``EventPublisher`` and keeps, per partition of the
    events topic, the highest offset the broker acknowledged (what ``FoldWatch`` waits for: Tansu's
    "latest offset" answer is wrong, so the topic's end is not asked of the broker)."""

    def __init__(self, publisher: EventPublisher) -> None:
        self.publisher = publisher
        self._last: dict[int, int] = {}
        self._lock = threading.Lock()

    @property
    def failed(self) -> int:
        """Records the broker never acknowledged, as the publisher counts them."""
        return self.publisher.failed

    def publish_event(self, event: Event) -> Any:
        """Publish ``event``; its offset is kept once the broker acknowledges it. Returns the future."""
        future = self.publisher.publish_event(event)
        future.add_callback(self._acked)
        return future

    def publish_item(self, item: CatalogItem) -> Any:
        """Publish a catalog record (its offset, on the items topic, is not kept)."""
        return self.publisher.publish_item(item)

    def flush(self, timeout: float | None = None) -> None:
        """Block until everything queued so far is acknowledged or has failed."""
        self.publisher.flush(timeout)

    def offsets(self) -> dict[int, int]:
        """Partition of the events topic -> the highest offset acknowledged so far."""
        with self._lock:
            return dict(self._last)

    def _acked(self, metadata: Any) -> None:
        with self._lock:
            self._last[metadata.partition] = max(self._last.get(metadata.partition, -1), metadata.offset)


class FoldWatch:
    """Waits until the workers have folded given offsets of the events topic, read from the offsets the
    fold writes with the state it changes (``watermarks.event_watermarks``): exact, and duplicates (a
    warm-up published again) count as folded. ``redis_client`` is a Redis or RedisCluster.

    It waits at most ``timeout_s`` seconds, and gives up sooner when nothing was folded for ``stall_s``
    seconds (no worker running, or one that is stuck): a run without workers is not minutes of waiting.
    """

    def __init__(
        self,
        redis_client: Any,
        keys: Any,
        timeout_s: float = 120.0,
        stall_s: float = 30.0,
        interval_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.redis, self.keys = redis_client, keys
        self.timeout_s, self.stall_s, self.interval_s = timeout_s, stall_s, interval_s
        self._clock, self._sleep = clock, sleep

    def behind(self, offsets: Mapping[int, int]) -> int:
        """Records up to ``offsets`` (partition -> last offset) that are not folded yet."""
        from streamrec.watermarks import event_watermarks

        marks = event_watermarks(self.redis, self.keys)
        return sum(max(0, last - marks.get(p, -1)) for p, last in offsets.items())

    def __call__(self, offsets: Mapping[int, int]) -> int:
        """Wait until every record up to ``offsets`` is folded, ``timeout_s`` passed, or nothing was folded
        for ``stall_s``; return the records still not folded (0: none)."""
        now = self._clock()
        deadline, moved, before = now + self.timeout_s, now, None
        while left := self.behind(offsets):
            now = self._clock()
            if before is None or left < before:
                moved, before = now, left
            if now >= deadline or now - moved >= self.stall_s:
                break
            self._sleep(self.interval_s)
        return left


@dataclass(frozen=True)
class ReactReport:
    """What ``run_reactions`` did: the warm-up's publish report, the tally of answers and reactions,
    reaction records the broker did not acknowledge, and records still unfolded at the last wait."""

    warmup: PublishReport
    tally: Tally
    failed: int
    behind: int
    seconds: float


def run_reactions(
    publisher: EventPublisher,
    fetch: Callable[[str], Shown],
    n_users: int,
    n_items: int,
    n_events: int,
    seed: int = 0,
    rounds: int = 3,
    rate: float | None = None,
    wait_folded: Callable[[Mapping[int, int]], int] | None = None,
    concurrency: int = 8,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> ReactReport:
    """Publish the shoppers' warm-up sessions (``simulate``), then ``rounds`` times ask ``fetch`` for every
    shopper's answer (``concurrency`` at a time), react (``react``) and publish the reactions.

    ``wait_folded`` (None: no wait) is called after the warm-up and after each round with the offsets
    published so far (partition of the events topic -> last offset), so that the next answers are made
    from what was sent; it returns the records still unfolded (``FoldWatch``). ``say`` gets a line per
    round. Errors of ``fetch`` (``ReactError``) propagate at once: nothing more is asked or published.
    """
    if concurrency < 1 or rounds < 1:
        raise ValueError("rounds and concurrency must be at least 1")
    started = time.monotonic()
    tracked = AckedOffsets(publisher)
    # AckedOffsets publishes through to ``publisher``: simulate() only calls what it passes on
    warmup = simulate(
        cast(EventPublisher, tracked), n_users, n_items, n_events, rate=rate, seed=seed, progress=progress
    )
    failed_before = publisher.failed
    behind = wait_folded(tracked.offsets()) if wait_folded else 0
    if behind:
        say(f"warning: {behind} warm-up records were not folded yet; asking anyway")
    shoppers = make_shoppers(n_users, seed)
    book = PriceBook.of(make_catalog(n_items, seed, ts_ms=now_ms()))
    run = uuid.uuid4().hex[:8]  # reactions are new events on every run, whatever the seed
    tally = Tally()
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="react")
    try:
        for r in range(rounds):
            sent: Counter[str] = Counter()
            for u, (shopper, shown) in enumerate(
                zip(shoppers, pool.map(fetch, [s.user_id for s in shoppers]), strict=True)
            ):
                rng = random.Random(f"react-{seed}-{shopper.user_id}-{r}")
                events = react(shopper, shown, rng, now_ms(), f"rx{seed}-{run}-{u}-{r}", book)
                for event in events:
                    tracked.publish_event(event)
                tally.add(shopper.user_id, shown, events)
                sent.update(e.type.value for e in events)
            tracked.flush()
            behind = wait_folded(tracked.offsets()) if wait_folded else 0
            say(
                f"round {r + 1}/{rounds}: {len(shoppers)} answers, {sent['view']} views, "
                f"{sent['add_to_cart']} cart adds, {sent['purchase']} purchases"
                + (f" ({behind} records not folded yet)" if behind else "")
            )
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return ReactReport(
        warmup=warmup,
        tally=tally,
        failed=publisher.failed - failed_before,
        behind=behind,
        seconds=time.monotonic() - started,
    )
