"""A synthetic shop whose shoppers have hidden tastes, so that recommendations have something to find.

The generator is pure and deterministic for a seed (tests check that tastes show through in the events);
``simulate`` is the thin edge that publishes what it generates. Items of one kind in one category (all
"headphones" in electronics) are related, search queries are made of catalog words, and each shopper
prefers a few categories and cheaper or dearer items, so co-occurrence, search terms and personal
preferences all carry signal.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, count

from streamrec.contract import CatalogItem, Event, now_ms
from streamrec.event_types import EventType
from streamrec.publisher import EventPublisher, PublishReport, publish_stream


@dataclass(frozen=True)
class CategoryWords:
    """The vocabulary of one category: what its items are, how they are described, who makes them."""

    kinds: tuple[str, ...]
    adjectives: tuple[str, ...]
    brands: tuple[str, ...]
    price_range: tuple[float, float]


CATEGORIES: dict[str, CategoryWords] = {
    "electronics": CategoryWords(
        ("headphones", "speaker", "charger", "keyboard", "mouse", "monitor", "camera", "tablet"),
        ("wireless", "portable", "bluetooth", "gaming", "compact", "smart", "noise-cancelling"),
        ("Voltix", "Sonora", "Pixelon", "Nordtek"),
        (15.0, 900.0),
    ),
    "books": CategoryWords(
        ("novel", "cookbook", "biography", "atlas", "thriller", "memoir", "anthology", "guidebook"),
        ("illustrated", "bestselling", "classic", "paperback", "hardcover", "annotated"),
        ("Penrose", "Inkwell", "Longshelf", "Marigold"),
        (5.0, 60.0),
    ),
    "beauty": CategoryWords(
        ("lipstick", "moisturizer", "serum", "shampoo", "perfume", "mascara", "sunscreen", "cleanser"),
        ("organic", "hydrating", "matte", "fragrance-free", "vegan", "nourishing"),
        ("Lumiere", "Velvetta", "Aquabloom", "Rosalie"),
        (4.0, 120.0),
    ),
    "home": CategoryWords(
        ("lamp", "blanket", "pillow", "mug", "vase", "candle", "rug", "curtain"),
        ("cozy", "ceramic", "linen", "minimalist", "handmade", "rustic"),
        ("Hearthly", "Oakmoor", "Nestwell", "Casabel"),
        (8.0, 300.0),
    ),
    "sports": CategoryWords(
        ("dumbbell", "racket", "sneakers", "backpack", "bottle", "helmet", "jersey", "treadmill"),
        ("lightweight", "breathable", "waterproof", "adjustable", "pro", "ergonomic"),
        ("Stridon", "Peakform", "Velocity", "Ironbark"),
        (10.0, 600.0),
    ),
    "toys": CategoryWords(
        ("puzzle", "robot", "doll", "blocks", "kite", "dinosaur", "racecar", "boardgame"),
        ("educational", "wooden", "colorful", "remote-control", "plush", "magnetic"),
        ("Tinkertot", "Playroo", "Wonderbox", "Jumbly"),
        (5.0, 150.0),
    ),
    "fashion": CategoryWords(
        ("jacket", "dress", "scarf", "jeans", "sweater", "boots", "hat", "handbag"),
        ("slim-fit", "cotton", "leather", "oversized", "striped", "woolen"),
        ("Maison Ardent", "Threadly", "Corvina", "Urbanelle"),
        (10.0, 400.0),
    ),
    "garden": CategoryWords(
        ("shovel", "planter", "hose", "seeds", "pruner", "birdhouse", "lantern", "composter"),
        ("galvanized", "solar", "heirloom", "raised", "weatherproof", "cedar"),
        ("Greenfold", "Mossway", "Terrabloom", "Fernhill"),
        (3.0, 250.0),
    ),
}

# How a session unfolds; tuned by eye so that every event type shows up and carts stay the minority.
P_EXPLORE = 0.1  # a session (or a step) wanders outside the shopper's liked categories
P_SEARCH = 0.35
P_RELATED = 0.55  # next view is the same kind of item as the last one
P_SAME_CATEGORY = 0.35  # ... else another item of the same category; the rest jumps category
P_CART = 0.18
P_REMOVE = 0.2
MEAN_VIEWS = 4.0
MAX_VIEWS = 12
STEP_SECONDS = (5, 90)
MEAN_SESSION_EVENTS = 4.6  # what one session yields on average (measured); sizes the gaps between sessions
DAY_MS = 86_400_000
SENSITIVITY_LEVELS = (0.0, 0.5, 1.0, 1.5)  # price sensitivity is bucketed so pick weights can be cached


def make_catalog(n_items: int, seed: int, ts_ms: int | None = None) -> list[CatalogItem]:
    """A deterministic catalog: categories and kinds rotate so each is present; words and prices are drawn."""
    rng = random.Random(seed)
    ts = now_ms() if ts_ms is None else ts_ms
    names = list(CATEGORIES)
    items = []
    for i in range(n_items):
        category = names[i % len(names)]
        words = CATEGORIES[category]
        kind = words.kinds[(i // len(names)) % len(words.kinds)]
        adjective = rng.choice(words.adjectives)
        brand = rng.choice(words.brands)
        low, high = words.price_range
        price = round(math.exp(rng.uniform(math.log(low), math.log(high))), 2)
        item_id = f"sku-{i:05d}"
        items.append(
            CatalogItem(
                item_id=item_id,
                title=f"{brand} {adjective.capitalize()} {kind.capitalize()}",
                description=f"{'An' if adjective[0] in 'aeiou' else 'A'} {adjective} {kind} by {brand}.",
                category=category,
                price=price,
                image_url=f"/static/img/{item_id}.svg",
                in_stock=rng.random() > 0.05,
                attributes={"brand": brand, "kind": kind, "style": adjective},
                ts=ts,
            )
        )
    return items


@dataclass(frozen=True)
class Shopper:
    """One simulated user and the taste they never tell anyone: liked categories and price sensitivity."""

    user_id: str
    taste: dict[str, float]
    price_sensitivity: float
    buy_propensity: float

    def pick_category(self, rng: random.Random, available: Sequence[str]) -> str:
        """Mostly a liked category (by weight); sometimes any category, which is how tastes get noisy."""
        liked = [c for c in self.taste if c in available]
        if not liked or rng.random() < P_EXPLORE:
            return rng.choice(list(available))
        return rng.choices(liked, weights=[self.taste[c] for c in liked])[0]


def make_shoppers(n_users: int, seed: int) -> list[Shopper]:
    """Deterministic shoppers, each liking one to three categories with uneven weights."""
    rng = random.Random(f"shoppers-{seed}")
    names = list(CATEGORIES)
    shoppers = []
    for u in range(n_users):
        liked = rng.sample(names, k=rng.choice((1, 2, 2, 3)))
        raw = [rng.gammavariate(1.0, 1.0) + 0.05 for _ in liked]
        total = sum(raw)
        shoppers.append(
            Shopper(
                user_id=f"shopper-{u:05d}",
                taste={c: w / total for c, w in zip(liked, raw, strict=True)},
                price_sensitivity=rng.choice(SENSITIVITY_LEVELS),
                buy_propensity=rng.uniform(0.2, 0.8),
            )
        )
    return shoppers


@dataclass
class ShopIndex:
    """The catalog arranged for picking: items by category and by (category, kind), with cached weights.

    An item's appeal (a fixed, skewed popularity drawn from its id) times a price factor that a sensitive
    shopper feels more, so some items are bestsellers and cheap-minded shoppers drift to cheap ones.
    """

    catalog: Sequence[CatalogItem]
    by_category: dict[str, list[CatalogItem]] = field(init=False)
    by_kind: dict[tuple[str, str], list[CatalogItem]] = field(init=False)
    _appeal: dict[str, float] = field(init=False)
    _rel_price: dict[str, float] = field(init=False)
    _cum: dict[tuple[str, str, float], list[float]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        if not self.catalog:
            raise ValueError("the simulated shop needs at least one item")
        self.by_category, self.by_kind = {}, {}
        for item in self.catalog:
            self.by_category.setdefault(item.category, []).append(item)
            self.by_kind.setdefault((item.category, _kind(item)), []).append(item)
        self._appeal = {i.item_id: random.Random(i.item_id).paretovariate(1.2) for i in self.catalog}
        self._rel_price = {}
        for items in self.by_category.values():
            prices = sorted(i.price for i in items if i.price)
            median = prices[len(prices) // 2] if prices else 1.0
            for i in items:
                self._rel_price[i.item_id] = (i.price or median) / median

    def categories(self) -> list[str]:
        """The catalog's categories, in first-seen order."""
        return list(self.by_category)

    def kinds(self, category: str) -> list[str]:
        """The product kinds (e.g. 'camera', 'lens') the catalog has in ``category``, sorted."""
        return sorted({k for c, k in self.by_kind if c == category})

    def pick(
        self, rng: random.Random, category: str, kind: str | None, sensitivity: float, avoid: str | None
    ) -> CatalogItem:
        """One item of the category (and kind), by appeal and price; tries once more to avoid a repeat."""
        pool = self.by_kind.get((category, kind), []) if kind is not None else []
        key = (category, kind or "", sensitivity)
        if not pool:
            pool = self.by_category[category]
            key = (category, "", sensitivity)
        cum = self._cum.get(key)
        if cum is None:
            weights = [self._appeal[i.item_id] * self._rel_price[i.item_id] ** -sensitivity for i in pool]
            cum = self._cum[key] = list(accumulate(weights))
        item = rng.choices(pool, cum_weights=cum)[0]
        if item.item_id == avoid and len(pool) > 1:
            item = rng.choices(pool, cum_weights=cum)[0]
        return item


def _kind(item: CatalogItem) -> str:
    return str(item.attributes.get("kind", ""))


def shopping_session(
    shopper: Shopper, index: ShopIndex, rng: random.Random, start_ts_ms: int, session_id: str
) -> list[Event]:
    """One visit: maybe a search, a few views that wander to related items, maybe a cart and a purchase."""
    events: list[Event] = []
    ts = start_ts_ms

    def emit(etype: EventType, item: CatalogItem | None = None, query: str | None = None) -> None:
        nonlocal ts
        if events:
            ts += rng.randint(*STEP_SECONDS) * 1000
        carted = etype in (EventType.ADD_TO_CART, EventType.REMOVE_FROM_CART, EventType.PURCHASE)
        events.append(
            Event(
                event_id=f"{session_id}-{len(events)}",
                type=etype,
                user_id=shopper.user_id,
                item_id=item.item_id if item else None,
                query=query,
                session_id=session_id,
                quantity=1.0 if carted else None,
                price=item.price if carted and item else None,
                ts=ts,
            )
        )

    available = index.categories()
    category = shopper.pick_category(rng, available)
    kind: str | None = None
    if rng.random() < P_SEARCH:
        kind = rng.choice(index.kinds(category)) or None
        words = CATEGORIES.get(category)
        if kind is None or words is None:
            query = category
        elif rng.random() < 0.4:
            query = f"{rng.choice(words.adjectives)} {kind}"
        else:
            query = kind
        emit(EventType.SEARCH, query=query)

    cart: list[CatalogItem] = []
    last: CatalogItem | None = None
    n_views = min(1 + int(rng.expovariate(1 / (MEAN_VIEWS - 1))), MAX_VIEWS)
    for _ in range(n_views):
        if last is not None:
            r = rng.random()
            if r < P_RELATED:
                kind = _kind(last)
            elif r < P_RELATED + P_SAME_CATEGORY:
                kind = None
            else:
                category, kind = shopper.pick_category(rng, available), None
        item = index.pick(rng, category, kind, shopper.price_sensitivity, last.item_id if last else None)
        emit(EventType.VIEW, item)
        last = item
        if item.in_stock and all(c.item_id != item.item_id for c in cart) and rng.random() < P_CART:
            emit(EventType.ADD_TO_CART, item)
            cart.append(item)

    kept = []
    for item in cart:
        if rng.random() < P_REMOVE:
            emit(EventType.REMOVE_FROM_CART, item)
        else:
            kept.append(item)
    if kept and rng.random() < shopper.buy_propensity:
        for item in kept:
            emit(EventType.PURCHASE, item)
    return events


def simulate_events(
    catalog: Sequence[CatalogItem],
    n_users: int,
    n_events: int,
    seed: int,
    start_ts_ms: int,
    span_ms: int = DAY_MS,
) -> Iterator[Event]:
    """Exactly ``n_events`` events (deterministic for a seed), ordered by ts, spread over about ``span_ms``.

    Sessions start in time order; an event is released once no session yet to start can precede it, so
    memory holds only the sessions in flight.
    """
    if n_users < 1:
        raise ValueError("the simulated shop needs at least one shopper")
    rng = random.Random(seed)
    index = ShopIndex(catalog)
    shoppers = make_shoppers(n_users, seed)
    sessions_per_user = max(n_events / (n_users * MEAN_SESSION_EVENTS), 1.0)
    mean_gap_ms = span_ms / sessions_per_user
    starts = [(start_ts_ms + int(rng.uniform(0, mean_gap_ms)), u) for u in range(n_users)]
    heapq.heapify(starts)
    session_no = [0] * n_users
    pending: list[tuple[int, int, Event]] = []
    tiebreak = count()
    emitted = 0
    while emitted < n_events:
        start, u = heapq.heappop(starts)
        while pending and pending[0][0] <= start:
            yield heapq.heappop(pending)[2]
            emitted += 1
            if emitted >= n_events:
                return
        shopper = shoppers[u]
        session_id = f"sim{seed}-{u}-{session_no[u]}"
        session_no[u] += 1
        events = shopping_session(shopper, index, rng, start, session_id)
        for event in events:
            heapq.heappush(pending, (event.ts, next(tiebreak), event))
        heapq.heappush(starts, (events[-1].ts + int(rng.expovariate(1 / mean_gap_ms)) + 1, u))


def simulate(
    publisher: EventPublisher,
    n_users: int = 200,
    n_items: int = 500,
    n_events: int = 10_000,
    rate: float | None = None,
    seed: int = 0,
    progress: bool = True,
) -> PublishReport:
    """Publish a simulated catalog, then its shoppers' events.

    With a ``rate`` the simulated clock runs alongside the wall clock from now (a live shop); without one
    the events fill the last day (a backfill), so decays and trending see recent activity either way.
    """
    start = now_ms()
    if rate:
        span_ms = int(n_events / rate * 1000)
    else:
        span_ms = DAY_MS
        start -= span_ms + span_ms // 20  # the span is only roughly span_ms: keep events in the past
    catalog = make_catalog(n_items, seed)
    events = simulate_events(catalog, n_users, n_events, seed, start, span_ms)
    if rate:
        events = not_ahead_of_the_clock(events)
    return publish_stream(publisher, catalog, events, rate, progress, total=n_events, desc="simulated")


def not_ahead_of_the_clock(events: Iterator[Event]) -> Iterator[Event]:
    """Each event as it is taken, stamped no later than the wall clock.

    Sessions last minutes whatever the span, so a paced simulation's own clock runs ahead of the wall
    clock (by hours on long runs), and receivers refuse a ``ts`` more than STREAMREC_MAX_FUTURE_SKEW_MS
    ahead of theirs. Time order is kept: a stamped event's ``ts`` is at most the next one's.
    """
    for event in events:
        now = now_ms()
        yield event if event.ts <= now else event.model_copy(update={"ts": now})
