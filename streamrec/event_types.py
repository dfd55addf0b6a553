"""The event types and everything streamrec knows about each one, in one table.

A type's default weight (preferences, popularity and co-occurrence; overridable per deployment through
``ScoringSettings``), its strength when it seeds "bought together" candidates, the reason an answer gives
for it, and whether it counts for online quality when it cites a ``recommendation_id`` are all read from
``TYPES``, so adding a type is one row here (and one in the contract's union of event shapes).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class EventType(StrEnum):
    """What a shopper did. The wire value is the enum's value."""

    SEARCH = "search"
    VIEW = "view"
    ADD_TO_CART = "add_to_cart"
    REMOVE_FROM_CART = "remove_from_cart"
    PURCHASE = "purchase"


@dataclass(frozen=True)
class TypeInfo:
    """What one event type means to the state and to answers.

    ``weight``: default weight in preferences, popularity and co-occurrence (negative: feedback that lowers
    a preference only; 0: no effect on item state). ``strength``: rank when one item was acted on in
    several ways (a purchase seeds harder than a view). ``reason``: the explanation template for a
    candidate seeded by this type (``{}`` is the seed's id). ``repeat_reason``: what an answer says when it
    offers the user's own item of this type back. ``attributed``: an action on a recommended item that
    counts for online quality (a click, a cart add, a conversion).
    """

    weight: float
    strength: int
    reason: str | None = None
    repeat_reason: str | None = None
    attributed: bool = False
    needs_item: bool = True


TYPES: dict[EventType, TypeInfo] = {
    EventType.SEARCH: TypeInfo(weight=0.0, strength=0, needs_item=False),
    EventType.VIEW: TypeInfo(weight=1.0, strength=1, reason="viewed together with {}", attributed=True),
    EventType.ADD_TO_CART: TypeInfo(
        weight=3.0,
        strength=2,
        reason="often added to cart with {}",
        repeat_reason="still in your cart",
        attributed=True,
    ),
    EventType.REMOVE_FROM_CART: TypeInfo(weight=-1.0, strength=0),
    EventType.PURCHASE: TypeInfo(
        weight=5.0,
        strength=3,
        reason="bought together with {}",
        repeat_reason="buy it again",
        attributed=True,
    ),
}

DEFAULT_REASON = "viewed together with {}"
DEFAULT_REPEAT_REASON = "you looked at this"
EVENT_TYPE_NAMES = tuple(t.value for t in EventType)
ATTRIBUTED_TYPES = tuple(t.value for t, info in TYPES.items() if info.attributed)


_BY_NAME: dict[str, TypeInfo] = {t.value: row for t, row in TYPES.items()}  # every answer looks types up


def info(type_name: str) -> TypeInfo | None:
    """The table row of a type given by its wire name, or None for a name streamrec does not know."""
    return _BY_NAME.get(type_name)


def strength(type_name: str) -> int:
    """How strongly an action of this type seeds candidates (0 for unknown names)."""
    row = info(type_name)
    return row.strength if row else 0


def reason(type_name: str) -> str:
    """The explanation template of a candidate seeded by an action of this type."""
    row = info(type_name)
    return (row.reason if row else None) or DEFAULT_REASON


def repeat_reason(type_name: str) -> str:
    """What an answer says when it offers the user's own item, last acted on with this type, back."""
    row = info(type_name)
    return (row.repeat_reason if row else None) or DEFAULT_REPEAT_REASON
