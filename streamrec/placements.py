"""Placements (issue 28, "Shop controls I"): a page slot's named rule set, parsed, compiled and applied.

Pure: no I/O. ``parse_placement`` validates a document and compiles its filter documents once;
``apply_placement`` applies the rules to a ranked candidate list; ``placement_json_schemas`` is the same
language as JSON Schema (for the OpenAPI document). Storage lives in ``streamrec.placement_store``.

**A placement document** (every field optional)::

    {"strategy": "personal | similar | popular | trending",
     "filter":   {"price": {"$lte": 20}, "attributes.brand": {"$nin": ["Rival"]}},
     "boost":    [{"if": {"category": "socks"}, "multiply": 1.5}],
     "pin":      [{"item_id": "sku-1", "position": 1}],
     "promote":  {"if": {"attributes.brand": "House"}, "share": 0.2},
     "diversity": {"field": "category", "max_per_value": 2}}

**Filter documents** (MongoDB query operators, as Pinecone's and Chroma's metadata filters):

- fields ``price`` (a number), ``category`` and ``title`` (strings), ``in_stock`` (a boolean) and
  ``attributes.<name>`` (any JSON value of the record's ``attributes`` object; ``<name>`` is one key,
  dots included, 1-128 characters);
- operators ``$eq $ne $gt $gte $lt $lte $in $nin $exists`` and ``$not`` (an operator object) per field;
  ``$and``, ``$or`` (non-empty lists of filter documents) and ``$not`` (a filter document) at the top;
- a bare value means ``$eq``; several fields, or several operators of one field, are ANDed; ``{}``
  matches every item.

Operands are strings, numbers or booleans as the field allows (``price``: numbers; ``category``,
``title``: strings; ``in_stock``: booleans, and no ordering operators; attributes: any of the three,
ordering operators on strings and numbers only). Numbers are at most 1e15 in size; strings at most 1024
characters; ``$in``/``$nin`` lists at most ``MAX_LIST`` values; documents nest at most ``MAX_DEPTH``.

**Semantics on a catalog record** (the Redis hash of ``fold.catalog_fields``: strings; ``price`` as a
number's text or ``""`` for none, ``in_stock`` ``"1"``/``"0"``, ``attributes`` JSON), MongoDB's:

- a field is *missing* when the record lacks it (no record at all: every field is missing; ``price ""``:
  no price; ``attributes`` unreadable: every attribute missing). An empty ``title`` or ``category`` is
  present (the empty string);
- ``$eq``, ``$gt``, ``$gte``, ``$lt``, ``$lte``, ``$in`` are false for a missing field; ``$ne``, ``$nin``
  are their negations, so true for a missing field; ``$exists: true`` is presence (an attribute whose value
  is ``null`` is present); ``$not`` negates, so ``{"price": {"$not": {"$gt": 5}}}`` matches an item
  without a price;
- values compare only with operands of their own kind: numbers as numbers (``20`` equals ``20.0``),
  strings by Unicode code point, booleans only by equality. A type mismatch (an attribute ``"20"`` against
  ``$lt: 30``) is not a match, so ``$ne``/``$nin`` are true for it; ``null`` and objects equal nothing;
- an attribute holding a list matches when any element does (``$ne``/``$nin``: when none equals).

Errors: every problem raises ``PlacementError`` (a ``ValueError``) whose ``path`` is the JSON path of the
wrong part (``$.filter.price.$regex``) and whose message names it (``unknown operator $regex``).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from streamrec.contract import ID_PATTERN, id_problem

STRATEGIES = ("personal", "similar", "popular", "trending")
FIELDS = ("price", "category", "in_stock", "title")  # and attributes.<name>
ATTRIBUTE_PREFIX = "attributes."
# What each field holds; attributes hold any JSON value ("any").
FIELD_KINDS = {"price": "number", "category": "string", "title": "string", "in_stock": "boolean"}
# The record field (of the catalog hash) each filter field reads.
_RECORD_FIELD = {"price": "price", "category": "category", "title": "title", "in_stock": "in_stock"}

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$"  # a placement's name, as it appears in a URL
ATTRIBUTE_PATTERN = r"^attributes\.[^\x00-\x1f\x7f]{1,128}$"
DIVERSITY_FIELD_PATTERN = r"^(?:price|category|in_stock|title|attributes\.[^\x00-\x1f\x7f]{1,128})$"
MAX_DEPTH = 32  # $and/$or/$not (top-level and per field) nested at most this deep
MAX_LIST = 1000  # values of one $in/$nin; filter documents of one $and/$or
MAX_STRING = 1024
MAX_NUMBER = 1e15
MAX_BOOSTS = 32
MAX_MULTIPLY = 1e6
MAX_PINS = 100
MAX_POSITION = 1000
MAX_PER_VALUE = 1000

_NAME = re.compile(NAME_PATTERN)
_ATTRIBUTE = re.compile(ATTRIBUTE_PATTERN)
_DIVERSITY_FIELD = re.compile(DIVERSITY_FIELD_PATTERN)
_PLAIN_KEY = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*$")
_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "$gt": operator.gt,
    "$gte": operator.ge,
    "$lt": operator.lt,
    "$lte": operator.le,
}
FIELD_OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists", "$not")
LOGICAL_OPERATORS = ("$and", "$or", "$not")
PLACEMENT_FIELDS = ("strategy", "filter", "boost", "pin", "promote", "diversity")


class PlacementError(ValueError):
    """A placement or filter document that cannot be used: ``path`` is the JSON path of the wrong part
    (``$`` is the document), ``problem`` says what is wrong; ``str()`` is ``"<path>: <problem>"``."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = path, problem


def _at(path: str, key: str | int) -> str:
    """``path`` one step down: ``.key`` for a plain key, ``["key"]`` (a JSON string) otherwise, ``[n]``
    for a list index."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if _PLAIN_KEY.match(key):
        return f"{path}.{key}"
    return f"{path}[{orjson.dumps(key).decode()}]"


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a placement (1-64 of ``[A-Za-z0-9_.:-]``, a letter or digit first);
    None if it can."""
    if not _NAME.match(name):
        return "a placement name is 1-64 characters of A-Z a-z 0-9 _ . : - starting with a letter or digit"
    return None


# ------------------------------------------------------------------------------------ record values

MISSING: Any = type("Missing", (), {"__repr__": lambda self: "MISSING"})()


class Row:
    """One catalog record as filters read it: each field's value, decoded once (``MISSING`` if absent).

    ``record`` is the Redis hash of the item's catalog record (``dict[str, str]``), or ``{}`` for none.
    """

    __slots__ = ("_attributes", "_record")

    def __init__(self, record: Mapping[str, str]) -> None:
        self._record = record
        self._attributes: Any = None

    def value(self, name: str) -> Any:
        """The value of filter field ``name``: a float (price), str, bool, any JSON value (an
        attribute), or ``MISSING``."""
        if name.startswith(ATTRIBUTE_PREFIX):
            attributes = self._attributes
            if attributes is None:
                try:
                    attributes = orjson.loads(self._record.get("attributes") or "{}")
                except orjson.JSONDecodeError:
                    attributes = {}
                self._attributes = attributes = attributes if isinstance(attributes, dict) else {}
            return attributes.get(name[len(ATTRIBUTE_PREFIX) :], MISSING)
        raw = self._record.get(name)
        if raw is None:
            return MISSING
        if name == "price":
            try:
                price = float(raw)
            except ValueError:
                return MISSING
            return price if math.isfinite(price) else MISSING
        if name == "in_stock":
            return {"1": True, "0": False}.get(raw, MISSING)
        return raw


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _same_kind(v: Any, x: Any) -> bool:
    if isinstance(x, bool):
        return isinstance(v, bool)
    if isinstance(x, str):
        return isinstance(v, str)
    return _is_number(v)


Test = Callable[[Row], bool]
Scalar = Callable[[Any], bool]


def _any(get: Callable[[Row], Any], scalar: Scalar) -> Test:
    """True when the field is present and its value (or, for a list, any element) passes ``scalar``."""

    def test(row: Row) -> bool:
        v = get(row)
        if v is MISSING:
            return False
        if isinstance(v, list):
            return any(scalar(e) for e in v)
        return scalar(v)

    return test


def _getter(name: str) -> Callable[[Row], Any]:
    return lambda row: row.value(name)


# --------------------------------------------------------------------------------- filter compiling


def _operand(kind: str, x: Any, path: str, ordering: bool = False) -> Any:
    """``x`` checked as an operand for a field of ``kind`` (``ordering``: of $gt, $gte, $lt, $lte)."""
    allowed = {"number": "a number", "string": "a string", "boolean": "a boolean"}
    if ordering:
        if kind == "boolean":
            raise PlacementError(path, "in_stock is a boolean: it takes $eq, $ne, $in, $nin, $exists, $not")
        want = "a string or a number" if kind == "any" else allowed[kind]
        ok = (kind in ("string", "any") and isinstance(x, str)) or (
            kind in ("number", "any") and _is_number(x)
        )
    else:
        want = "a string, a number or a boolean" if kind == "any" else allowed[kind]
        ok = (
            (kind in ("string", "any") and isinstance(x, str))
            or (kind in ("number", "any") and _is_number(x))
            or (kind in ("boolean", "any") and isinstance(x, bool))
        )
    if not ok:
        raise PlacementError(path, f"expected {want}, got {_json_kind(x)}")
    if isinstance(x, str) and len(x) > MAX_STRING:
        raise PlacementError(path, f"a string operand has at most {MAX_STRING} characters")
    if _is_number(x):
        try:
            big = not abs(float(x)) <= MAX_NUMBER
        except OverflowError:
            big = True
        if big:
            raise PlacementError(path, f"a number operand is within ±{MAX_NUMBER:g}")
    return x


def _json_kind(x: Any) -> str:
    if x is None:
        return "null"
    if isinstance(x, bool):
        return "a boolean"
    if isinstance(x, str):
        return "a string"
    if isinstance(x, int | float):
        return "a number"
    if isinstance(x, list):
        return "a list"
    if isinstance(x, dict):
        return "an object"
    return type(x).__name__


def _membership(values: list[Any]) -> Scalar:
    """A test for ``v in values`` that keeps kinds apart (``True`` is not ``1``) in O(1)."""
    strings = {x for x in values if isinstance(x, str)}
    numbers = {x for x in values if _is_number(x)}
    bools = {x for x in values if isinstance(x, bool)}

    def member(v: Any) -> bool:
        if isinstance(v, bool):
            return v in bools
        if isinstance(v, str):
            return v in strings
        if _is_number(v):
            return v in numbers
        return False

    return member


def _field_ops(name: str, kind: str, ops: dict[str, Any], path: str, depth: int) -> Test:
    """The AND of one field's operator object."""
    if not ops:
        raise PlacementError(path, "an operator object needs at least one operator ($eq, $gt, $in, ...)")
    get = _getter(name)
    tests: list[Test] = []
    for op, x in ops.items():
        here = _at(path, op)
        if op in ("$eq", "$ne"):
            x = _operand(kind, x, here)
            eq = _any(get, lambda v, x=x: _same_kind(v, x) and v == x)
            tests.append(eq if op == "$eq" else (lambda row, eq=eq: not eq(row)))
        elif op in _COMPARISONS:
            x = _operand(kind, x, here, ordering=True)
            cmp = _COMPARISONS[op]
            tests.append(_any(get, lambda v, x=x, cmp=cmp: _same_kind(v, x) and cmp(v, x)))
        elif op in ("$in", "$nin"):
            if not isinstance(x, list):
                raise PlacementError(here, f"{op} takes a list, got {_json_kind(x)}")
            if len(x) > MAX_LIST:
                raise PlacementError(here, f"{op} takes at most {MAX_LIST} values")
            values = [_operand(kind, v, _at(here, i)) for i, v in enumerate(x)]
            inside = _any(get, _membership(values))
            tests.append(inside if op == "$in" else (lambda row, inside=inside: not inside(row)))
        elif op == "$exists":
            if not isinstance(x, bool):
                raise PlacementError(here, f"$exists takes true or false, got {_json_kind(x)}")
            tests.append(lambda row, want=x: (get(row) is not MISSING) == want)
        elif op == "$not":
            if depth >= MAX_DEPTH:
                raise PlacementError(here, f"filters nest at most {MAX_DEPTH} deep")
            if not isinstance(x, dict):
                raise PlacementError(here, f"$not takes an operator object, got {_json_kind(x)}")
            inner = _field_ops(name, kind, x, here, depth + 1)
            tests.append(lambda row, inner=inner: not inner(row))
        elif op.startswith("$"):
            raise PlacementError(here, f"unknown operator {op}; a field takes {' '.join(FIELD_OPERATORS)}")
        else:
            raise PlacementError(
                here, f"{op} is not an operator: a field takes a bare value or an object of operators"
            )
    return _all(tests)


def _all(tests: list[Test]) -> Test:
    if len(tests) == 1:
        return tests[0]
    return lambda row: all(t(row) for t in tests)


def _field(key: str, path: str) -> tuple[str, str]:
    """The field a filter key names and its kind; raises for an unknown one."""
    if key in FIELD_KINDS:
        return key, FIELD_KINDS[key]
    if _ATTRIBUTE.match(key):
        return key, "any"
    if key.startswith(ATTRIBUTE_PREFIX) or key == "attributes":
        raise PlacementError(path, "an attribute is attributes.<name>, a name of 1-128 characters")
    raise PlacementError(
        path, f"unknown field {key}; the fields are {', '.join(FIELDS)} and attributes.<name>"
    )


def _document(doc: Any, path: str, depth: int, used: set[str]) -> Test:
    if not isinstance(doc, dict):
        raise PlacementError(path, f"a filter document is a JSON object, got {_json_kind(doc)}")
    tests: list[Test] = []
    for key, value in doc.items():
        here = _at(path, key)
        if key in ("$and", "$or"):
            if depth >= MAX_DEPTH:
                raise PlacementError(here, f"filters nest at most {MAX_DEPTH} deep")
            if not isinstance(value, list) or not value:
                raise PlacementError(here, f"{key} takes a non-empty list of filter documents")
            if len(value) > MAX_LIST:
                raise PlacementError(here, f"{key} takes at most {MAX_LIST} filter documents")
            parts = [_document(d, _at(here, i), depth + 1, used) for i, d in enumerate(value)]
            tests.append(_all(parts) if key == "$and" else (lambda row, ps=parts: any(p(row) for p in ps)))
        elif key == "$not":
            if depth >= MAX_DEPTH:
                raise PlacementError(here, f"filters nest at most {MAX_DEPTH} deep")
            inner = _document(value, here, depth + 1, used)
            tests.append(lambda row, inner=inner: not inner(row))
        elif key.startswith("$"):
            raise PlacementError(
                here,
                f"unknown operator {key}; a filter document takes {' '.join(LOGICAL_OPERATORS)} and fields",
            )
        else:
            name, kind = _field(key, here)
            used.add(name)
            if isinstance(value, dict):
                tests.append(_field_ops(name, kind, value, here, depth))
            elif isinstance(value, list) or value is None:
                raise PlacementError(
                    here,
                    f"a bare value is a string, a number or a boolean, got {_json_kind(value)} "
                    '(a list of values is {"$in": [...]}; no value is {"$exists": false})',
                )
            else:
                tests.append(_field_ops(name, kind, {"$eq": value}, here, depth))
    if not tests:
        return lambda row: True
    return _all(tests)


@dataclass(frozen=True)
class Filter:
    """A compiled filter document. ``test(row)`` on a ``Row``; ``matches(record)`` on a catalog record
    (``dict[str, str]`` as stored, ``{}`` for an item without one). ``fields`` are the filter fields it
    reads; ``document`` is the document it was compiled from."""

    document: dict[str, Any]
    test: Test = field(repr=False, compare=False)
    fields: frozenset[str] = frozenset()

    def matches(self, record: Mapping[str, str]) -> bool:
        """Whether the catalog record passes the filter (the module docstring gives the semantics)."""
        return self.test(Row(record))


def compile_filter(document: Any, path: str = "$") -> Filter:
    """Validate and compile a filter document once; ``path`` is its JSON path for error messages.

    Raises ``PlacementError`` naming the path of the wrong part and any unknown operator or field.
    """
    used: set[str] = set()
    test = _document(document, path, 0, used)
    return Filter(document, test, frozenset(used))


def record_fields(filter_fields: frozenset[str] | set[str]) -> frozenset[str]:
    """The catalog-hash fields to read for filters on ``filter_fields`` (``attributes`` for every
    ``attributes.<name>``)."""
    return frozenset(
        "attributes" if f.startswith(ATTRIBUTE_PREFIX) else _RECORD_FIELD.get(f, f) for f in filter_fields
    )


# -------------------------------------------------------------------------------------- placements


@dataclass(frozen=True)
class Boost:
    """Multiply the score of items matching ``when`` by ``multiply`` (> 0)."""

    when: Filter
    multiply: float


@dataclass(frozen=True)
class Pin:
    """Show ``item_id`` at the 1-based ``position`` whenever it is usable."""

    item_id: str
    position: int


@dataclass(frozen=True)
class Promote:
    """At least ``ceil(share * k)`` of the slots go to the best-ranked items matching ``when``."""

    when: Filter
    share: float


@dataclass(frozen=True)
class Diversity:
    """At most ``max_per_value`` items of an answer share one value of ``field`` (a filter field)."""

    field: str
    max_per_value: int


@dataclass(frozen=True)
class Placement:
    """A parsed placement: its name, the document as sent, and its compiled rules (see the module)."""

    name: str
    document: dict[str, Any]
    strategy: str | None = None
    filter: Filter | None = None
    boost: tuple[Boost, ...] = ()
    pin: tuple[Pin, ...] = ()
    promote: Promote | None = None
    diversity: Diversity | None = None

    @property
    def pinned_items(self) -> tuple[str, ...]:
        """The pinned item ids, each once: the caller says which are usable (``apply_placement``)."""
        return tuple(dict.fromkeys(p.item_id for p in self.pin))

    @property
    def record_fields(self) -> frozenset[str]:
        """The catalog-hash fields the rules read (``attributes`` when any rule reads an attribute)."""
        used: set[str] = set()
        for f in (self.filter, self.promote and self.promote.when, *(b.when for b in self.boost)):
            if f:
                used |= f.fields
        if self.diversity:
            used.add(self.diversity.field)
        return record_fields(used)

    def to_json(self) -> bytes:
        """The document as compact JSON (what is stored, and what GET returns)."""
        return orjson.dumps(self.document)


def _number(x: Any, path: str, what: str) -> float:
    """``x`` as a float; NaN for a number too large for one (so every range check refuses it)."""
    if not _is_number(x):
        raise PlacementError(path, f"{what} is a number, got {_json_kind(x)}")
    try:
        return float(x)
    except OverflowError:
        return math.nan


def _integer(x: Any, path: str, lo: int, hi: int) -> int:
    if isinstance(x, float) and x.is_integer():
        x = int(x)
    if not isinstance(x, int) or isinstance(x, bool):
        raise PlacementError(path, f"expected an integer, got {_json_kind(x)}")
    if not lo <= x <= hi:
        raise PlacementError(path, f"expected an integer from {lo} to {hi}, got {x}")
    return x


def _object(x: Any, path: str, required: tuple[str, ...], what: str) -> dict[str, Any]:
    if not isinstance(x, dict):
        raise PlacementError(path, f"{what} is a JSON object, got {_json_kind(x)}")
    for key in x:
        if key not in required:
            raise PlacementError(_at(path, key), f"unknown field {key}; {what} has {', '.join(required)}")
    for key in required:
        if key not in x:
            raise PlacementError(path, f"{what} needs {key}")
    return x


def parse_placement(name: str, document: Any) -> Placement:
    """Validate a placement document (parsed JSON) and compile it, its filters once.

    Raises ``PlacementError`` (a ``ValueError``) with the JSON path of the wrong part, for a bad name
    (path ``name``) or any bad part of the document (``$...``).
    """
    problem = name_problem(name)
    if problem:
        raise PlacementError("name", problem)
    if not isinstance(document, dict):
        raise PlacementError("$", f"a placement is a JSON object, got {_json_kind(document)}")
    for key in document:
        if key not in PLACEMENT_FIELDS:
            raise PlacementError(
                _at("$", key), f"unknown field {key}; a placement has {', '.join(PLACEMENT_FIELDS)}"
            )
    out: dict[str, Any] = {}
    if "strategy" in document:
        strategy = document["strategy"]
        if not isinstance(strategy, str) or strategy not in STRATEGIES:
            raise PlacementError("$.strategy", f"a strategy is one of {', '.join(STRATEGIES)}")
        out["strategy"] = strategy
    if "filter" in document:
        out["filter"] = compile_filter(document["filter"], "$.filter")
    if "boost" in document:
        rules = document["boost"]
        if not isinstance(rules, list) or len(rules) > MAX_BOOSTS:
            raise PlacementError("$.boost", f"boost is a list of at most {MAX_BOOSTS} rules")
        boosts = []
        for i, rule in enumerate(rules):
            here = _at("$.boost", i)
            _object(rule, here, ("if", "multiply"), "a boost rule")
            multiply = _number(rule["multiply"], _at(here, "multiply"), "multiply")
            if not 0 < multiply <= MAX_MULTIPLY:
                raise PlacementError(
                    _at(here, "multiply"), f"multiply is above 0 and at most {MAX_MULTIPLY:g}"
                )
            boosts.append(Boost(compile_filter(rule["if"], _at(here, "if")), multiply))
        out["boost"] = tuple(boosts)
    if "pin" in document:
        pins = document["pin"]
        if not isinstance(pins, list) or len(pins) > MAX_PINS:
            raise PlacementError("$.pin", f"pin is a list of at most {MAX_PINS} pins")
        parsed = []
        for i, pin in enumerate(pins):
            here = _at("$.pin", i)
            _object(pin, here, ("item_id", "position"), "a pin")
            item = pin["item_id"]
            if not isinstance(item, str):
                raise PlacementError(_at(here, "item_id"), f"an item id is a string, got {_json_kind(item)}")
            problem = id_problem(item)
            if problem:
                raise PlacementError(_at(here, "item_id"), f"an item id {problem}")
            position = _integer(pin["position"], _at(here, "position"), 1, MAX_POSITION)
            parsed.append(Pin(item, position))
        out["pin"] = tuple(parsed)
    if "promote" in document:
        promote = _object(document["promote"], "$.promote", ("if", "share"), "promote")
        share = _number(promote["share"], "$.promote.share", "share")
        if not 0 < share <= 1:
            raise PlacementError("$.promote.share", "share is above 0 and at most 1")
        out["promote"] = Promote(compile_filter(promote["if"], "$.promote.if"), share)
    if "diversity" in document:
        div = _object(document["diversity"], "$.diversity", ("field", "max_per_value"), "diversity")
        on = div["field"]
        if not isinstance(on, str) or not _DIVERSITY_FIELD.match(on):
            raise PlacementError(
                "$.diversity.field", f"a field is one of {', '.join(FIELDS)} or attributes.<name>"
            )
        cap = _integer(div["max_per_value"], "$.diversity.max_per_value", 1, MAX_PER_VALUE)
        out["diversity"] = Diversity(on, cap)
    return Placement(name, document, **out)


# -------------------------------------------------------------------------------------- applying


class Candidate(Protocol):
    """One ranked candidate as the recommender makes it (``recommend.Ranked`` fits): unitless ``score``,
    higher first, with the reason and source an answer shows."""

    @property
    def item_id(self) -> str: ...  # noqa: D102
    @property
    def score(self) -> float: ...  # noqa: D102
    @property
    def reason(self) -> str | None: ...  # noqa: D102
    @property
    def source(self) -> str | None: ...  # noqa: D102


@dataclass(frozen=True)
class PlacedItem:
    """One item of a placed answer: its score after boosts (None for a pinned item that was not a
    candidate), the candidate's reason and source (``"pinned"`` for such an item), and the rules that
    placed or moved it, most decisive first: ``"pinned"``, ``"promoted"``, ``"boosted ×1.5"``,
    ``"filtered in by placement X"``, ``"filtered in by the request's filter"``."""

    item_id: str
    score: float | None
    reason: str | None
    source: str | None
    rules: tuple[str, ...] = ()


@dataclass(frozen=True)
class Placed:
    """What ``apply_placement`` made of a pool of candidates.

    ``items``: at most k. ``short_by``: slots of k left empty; ``promoted_short_by``: promoted slots the
    share asks for that the pool could not give. Either above 0 means the pool was too small: the caller
    pages further down its ranking (``next_pool`` says how far) and applies again, until neither is or the
    ranking ends. ``candidates``: candidates looked at; ``passed``: those that passed the filters.
    """

    items: list[PlacedItem]
    short_by: int
    promoted_short_by: int
    candidates: int
    passed: int

    @property
    def needs_more(self) -> bool:
        """Whether more candidates could change the answer: it is short, or short of promoted items."""
        return self.short_by > 0 or self.promoted_short_by > 0

    def next_pool(self, k: int) -> int:
        """How many candidates to try next: enough for k at the pass rate seen so far, with a quarter more,
        at least twice as many as this time (a pool where none passed: 1.25·k times as many)."""
        seen = max(self.candidates, 1)
        return max(2 * seen, math.ceil(1.25 * seen * k / max(self.passed, 1)))


def is_usable(record: Mapping[str, str] | None) -> bool:
    """A catalog record's usability as the answers judge it: a record that is neither deleted nor out of
    stock (a pinned item without a record is not shown: nothing could be shown of it)."""
    return record is not None and record.get("deleted") != "1" and record.get("in_stock") != "0"


def _key(v: Any) -> Any:
    """A value as a dict key: scalars as they are (``1`` and ``1.0`` are one), others as their JSON."""
    if isinstance(v, bool):
        return ("b", v)
    if isinstance(v, str | int | float):
        return v
    return ("j", orjson.dumps(v, option=orjson.OPT_SORT_KEYS))


def _boosted(score: float, multiply: float) -> float:
    """A boost raises a score whatever its sign (a negative score is divided)."""
    return score * multiply if score >= 0 else score / multiply


def apply_placement(
    placement: Placement | None,
    ranked: Sequence[Candidate],
    records: Mapping[str, Mapping[str, str]],
    k: int,
    pinned_usable: Mapping[str, bool],
    extra_filter: Filter | None = None,
) -> Placed:
    """Apply a placement's rules (and an ad hoc filter, ANDed) to a pool of ranked candidates.

    ``ranked``: candidates in rank order (already outside the request's exclusions and usable: in stock,
    not deleted), any repeat of an item ignored. ``records``: catalog records (``dict[str, str]`` as stored,
    with the fields of ``placement.record_fields``) of the candidates and of the pinned items; a candidate
    without one is judged with every field missing. ``k``: slots (>= 1). ``pinned_usable``: item id ->
    whether that pinned item may be shown (``is_usable`` of its record is the answers' rule; an item left
    out counts as not usable).

    The rules run in this order:

    1. pins are set aside: a usable pinned item is taken out of the pool (it is shown at its position,
       whatever the filter). Pins go in list order: a later pin of an item already pinned is ignored, one
       whose position is taken moves to the next free one; a pin beyond k, or of an unusable item, is
       ignored (the item, if a candidate, competes as any other);
    2. filter: only candidates passing the placement's filter and ``extra_filter`` stay;
    3. boost: each score is multiplied by every matching rule's ``multiply``, and the pool is sorted again
       by the boosted scores (ties, and every item when no boost matched, keep their rank order);
    4. diversity: walking the pool in order, an item whose value of the field is already held by
       ``max_per_value`` items before it (the shown pins included) is dropped; items without the field are
       never dropped;
    5. promote: the first ``k - pins`` items are chosen; when fewer than ``ceil(share·k)`` of them (and
       of the shown pins) match, the lowest-ranked chosen items that do not match give their slots to the
       best-ranked matching items further down, which stay in rank order ("promoted");
    6. pins are put at their 1-based positions (at the end, when fewer items come before them).

    Returns ``Placed``; when ``Placed.needs_more``, a longer pool (``Placed.next_pool(k)``) may fill it.
    """
    name = placement.name if placement else ""
    pins: dict[int, Pin] = {}
    pinned: set[str] = set()
    if placement:
        for pin in placement.pin:
            if pin.item_id in pinned or pin.position > k or not pinned_usable.get(pin.item_id, False):
                continue
            position = pin.position
            while position in pins:
                position += 1
            if position > k:
                continue
            pins[position] = pin
            pinned.add(pin.item_id)
    own = placement.filter.test if placement and placement.filter else None
    extra = extra_filter.test if extra_filter else None
    boosts = placement.boost if placement else ()
    empty: Mapping[str, str] = {}

    # 2, 3: (rank, candidate, row, boosted score, multiplier) of every candidate that passes
    pool: list[tuple[int, Candidate, Row, float, float]] = []
    seen: set[str] = set()
    looked = 0
    for rank, c in enumerate(ranked):
        if c.item_id in seen:
            continue
        seen.add(c.item_id)
        looked += 1
        if c.item_id in pinned:
            continue
        row = Row(records.get(c.item_id, empty))
        if (own and not own(row)) or (extra and not extra(row)):
            continue
        multiply = 1.0
        for b in boosts:
            if b.when.test(row):
                multiply *= b.multiply
        pool.append((rank, c, row, _boosted(c.score, multiply), multiply))
    passed = len(pool)
    if any(m != 1.0 for *_, m in pool):
        pool.sort(key=lambda p: -p[3])  # stable: ties keep their rank order

    # 4: diversity, counting the shown pins first
    pin_rows = {p.item_id: Row(records.get(p.item_id, empty)) for p in pins.values()}
    if placement and placement.diversity:
        on, cap = placement.diversity.field, placement.diversity.max_per_value
        held: dict[Any, int] = {}
        for row in pin_rows.values():
            v = row.value(on)
            if v is not MISSING:
                held[_key(v)] = held.get(_key(v), 0) + 1
        kept = []
        for entry in pool:
            v = entry[2].value(on)
            if v is not MISSING:
                key = _key(v)
                if held.get(key, 0) >= cap:
                    continue
                held[key] = held.get(key, 0) + 1
            kept.append(entry)
        pool = kept

    # 5: promote
    free = k - len(pins)
    chosen = pool[:free]
    promoted: set[str] = set()
    promoted_short = 0
    promote = placement.promote if placement else None
    if promote:
        test = promote.when.test
        matching_pins = sum(1 for row in pin_rows.values() if test(row))
        need = min(math.ceil(promote.share * k - 1e-9), matching_pins + free)
        have = matching_pins + sum(1 for e in chosen if test(e[2]))
        if have < need:
            # chosen holds all free slots here (a shorter pool has nothing further down); at least
            # need - have of them do not match, so every matching item found further down gets a slot
            further = [e for e in pool[free:] if test(e[2])][: need - have]
            losers = [i for i in range(len(chosen) - 1, -1, -1) if not test(chosen[i][2])][: len(further)]
            chosen = [e for i, e in enumerate(chosen) if i not in set(losers)] + further
            promoted = {e[1].item_id for e in further}
            promoted_short = need - have - len(further)

    # 6: rules, then pins at their positions
    out: list[PlacedItem] = []
    for _, c, _, score, multiply in chosen:
        rules = []
        if c.item_id in promoted:
            rules.append("promoted")
        if multiply != 1.0:
            rules.append(f"boosted ×{multiply:g}")
        if own:
            rules.append(f"filtered in by placement {name}")
        if extra:
            rules.append("filtered in by the request's filter")
        out.append(PlacedItem(c.item_id, score, c.reason, c.source, tuple(rules)))
    by_id = {c.item_id: c for c in ranked if c.item_id in pinned}
    for position in sorted(pins):
        item = pins[position].item_id
        c = by_id.get(item)
        placed = PlacedItem(
            item, c.score if c else None, c.reason if c else None, c.source if c else "pinned", ("pinned",)
        )
        out.insert(min(position - 1, len(out)), placed)
    return Placed(out, k - len(out), promoted_short, looked, passed)


# ------------------------------------------------------------------------------------- JSON Schema


def placement_json_schemas(ref: str = "#/components/schemas/{model}") -> dict[str, Any]:
    """The placement document and its filter language as JSON Schema (2020-12, as OpenAPI 3.1 takes
    it): ``{"Placement", "PlacementFilter", ...}`` by name, referring to each other through ``ref``
    (``{model}`` is replaced by a name). What it cannot say: filters nest at most ``MAX_DEPTH`` deep."""
    r = lambda name: {"$ref": ref.format(model=name)}  # noqa: E731
    number = {"type": "number", "minimum": -MAX_NUMBER, "maximum": MAX_NUMBER}
    string = {"type": "string", "maxLength": MAX_STRING}
    boolean = {"type": "boolean"}
    scalar = {"anyOf": [string, number, boolean]}

    def ops(name: str, value: dict[str, Any], ordered: dict[str, Any] | None) -> dict[str, Any]:
        props: dict[str, Any] = {
            "$eq": value,
            "$ne": value,
            "$in": {"type": "array", "maxItems": MAX_LIST, "items": value},
            "$nin": {"type": "array", "maxItems": MAX_LIST, "items": value},
            "$exists": boolean,
            "$not": r(name),
        }
        if ordered is not None:
            props.update({op: ordered for op in _COMPARISONS})
        return {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": False,
            "properties": props,
            "description": "operators, ANDed; $not negates an operator object",
        }

    filters = {"type": "array", "minItems": 1, "maxItems": MAX_LIST, "items": r("PlacementFilter")}
    return {
        "PlacementFilter": {
            "type": "object",
            "description": "A MongoDB-style filter document: fields price, category, in_stock, title and "
            "attributes.<name>, each a bare value ($eq) or an object of operators $eq $ne $gt $gte $lt $lte "
            "$in $nin $exists $not; $and, $or (lists of filter documents) and $not (a filter document); "
            "several fields are ANDed, {} matches every item. A comparison with a missing field is false "
            "($ne, $nin: true); values compare only with operands of their own kind; an attribute list "
            f"matches when any element does. Nested at most {MAX_DEPTH} deep.",
            "properties": {
                "$and": filters,
                "$or": filters,
                "$not": r("PlacementFilter"),
                "price": {"anyOf": [number, r("NumberOperators")]},
                "category": {"anyOf": [string, r("StringOperators")]},
                "title": {"anyOf": [string, r("StringOperators")]},
                "in_stock": {"anyOf": [boolean, r("BooleanOperators")]},
            },
            "patternProperties": {ATTRIBUTE_PATTERN: {"anyOf": [*scalar["anyOf"], r("AttributeOperators")]}},
            "additionalProperties": False,
        },
        "NumberOperators": ops("NumberOperators", number, number),
        "StringOperators": ops("StringOperators", string, string),
        "BooleanOperators": ops("BooleanOperators", boolean, None),
        "AttributeOperators": ops("AttributeOperators", scalar, {"anyOf": [string, number]}),
        "Placement": {
            "type": "object",
            "additionalProperties": False,
            "description": "A page slot's named rule set; every field is optional (docs/integrate/placements.md).",
            "properties": {
                "strategy": {"enum": list(STRATEGIES), "description": "by default the endpoint's own"},
                "filter": r("PlacementFilter"),
                "boost": {
                    "type": "array",
                    "maxItems": MAX_BOOSTS,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["if", "multiply"],
                        "properties": {
                            "if": r("PlacementFilter"),
                            "multiply": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_MULTIPLY},
                        },
                    },
                },
                "pin": {
                    "type": "array",
                    "maxItems": MAX_PINS,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["item_id", "position"],
                        "properties": {
                            "item_id": {
                                "type": "string",
                                "minLength": 1,
                                "maxLength": 128,
                                "pattern": ID_PATTERN,
                            },
                            "position": {"type": "integer", "minimum": 1, "maximum": MAX_POSITION},
                        },
                    },
                },
                "promote": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["if", "share"],
                    "properties": {
                        "if": r("PlacementFilter"),
                        "share": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                    },
                },
                "diversity": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["field", "max_per_value"],
                    "properties": {
                        "field": {"type": "string", "pattern": DIVERSITY_FIELD_PATTERN},
                        "max_per_value": {"type": "integer", "minimum": 1, "maximum": MAX_PER_VALUE},
                    },
                },
            },
        },
    }
