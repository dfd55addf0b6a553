"""Placements, the pure core: documents refused with the JSON path of the wrong part; compiled filters
against a plain-Python reference evaluator on random catalogs (records encoded exactly as the worker
stores them); the published JSON Schema against the validator; each rule's effect on a small catalog."""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import jsonschema_rs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamrec.contract import CatalogItem
from streamrec.fold import catalog_fields
from streamrec.placements import (
    MAX_DEPTH,
    Placement,
    PlacementError,
    apply_placement,
    compile_filter,
    is_usable,
    parse_placement,
    placement_json_schemas,
)

# --- refusals ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "path", "says"),
    [
        ({"filter": {"price": {"$regex": "^a"}}}, "$.filter.price.$regex", "unknown operator $regex"),
        ({"filter": {"$where": "1"}}, "$.filter.$where", "unknown operator $where"),
        ({"filter": {"colour": "red"}}, "$.filter.colour", "unknown field colour"),
        ({"filter": {"attributes": {"brand": "x"}}}, "$.filter.attributes", "attributes.<name>"),
        ({"filter": {"price": "20"}}, "$.filter.price.$eq", "expected a number, got a string"),
        ({"filter": {"price": {"$lte": True}}}, "$.filter.price.$lte", "expected a number, got a boolean"),
        ({"filter": {"category": ["a", "b"]}}, "$.filter.category", "$in"),
        ({"filter": {"category": None}}, "$.filter.category", "$exists"),
        ({"filter": {"in_stock": {"$gt": False}}}, "$.filter.in_stock.$gt", "in_stock is a boolean"),
        ({"filter": {"price": {}}}, "$.filter.price", "at least one operator"),
        ({"filter": {"price": {"amount": 3}}}, "$.filter.price.amount", "is not an operator"),
        ({"filter": {"$or": []}}, "$.filter.$or", "non-empty list"),
        (
            {"filter": {"$and": [{"price": 1}, {"attributes.brand": {"$nin": "Rival"}}]}},
            '$.filter.$and[1]["attributes.brand"].$nin',
            "takes a list",
        ),
        ({"filter": {"$not": [1]}}, "$.filter.$not", "a JSON object"),
        ({"filter": {"title": {"$not": "x"}}}, "$.filter.title.$not", "operator object"),
        ({"filter": {"attributes.size": {"$gt": None}}}, '$.filter["attributes.size"].$gt', "got null"),
        ({"filter": {"price": {"$in": [1, "2"]}}}, "$.filter.price.$in[1]", "expected a number"),
        ({"filter": {"price": {"$exists": 1}}}, "$.filter.price.$exists", "true or false"),
        ({"filter": {"price": 1e16}}, "$.filter.price.$eq", "within"),
        ({"strategy": "random"}, "$.strategy", "personal, similar, popular, trending"),
        ({"colour": "red"}, "$.colour", "unknown field colour"),
        ({"boost": [{"if": {}, "multiply": 0}]}, "$.boost[0].multiply", "above 0"),
        ({"boost": [{"if": {"price": {"$foo": 1}}, "multiply": 2}]}, "$.boost[0].if.price.$foo", "$foo"),
        ({"boost": [{"multiply": 2}]}, "$.boost[0]", "needs if"),
        ({"boost": {"if": {}}}, "$.boost", "a list"),
        ({"pin": [{"item_id": " sku", "position": 1}]}, "$.pin[0].item_id", "whitespace"),
        ({"pin": [{"item_id": "sku", "position": 0}]}, "$.pin[0].position", "from 1 to"),
        ({"pin": [{"item_id": "sku", "position": 1, "x": 1}]}, "$.pin[0].x", "unknown field x"),
        ({"promote": {"if": {}, "share": 0}}, "$.promote.share", "above 0"),
        ({"promote": {"if": {}, "share": 1.5}}, "$.promote.share", "at most 1"),
        ({"diversity": {"field": "brand", "max_per_value": 2}}, "$.diversity.field", "attributes.<name>"),
        ({"diversity": {"field": "category", "max_per_value": 0}}, "$.diversity.max_per_value", "from 1"),
        ([], "$", "a JSON object"),
    ],
)
def test_a_bad_document_is_refused_with_the_path_of_the_wrong_part(
    document: Any, path: str, says: str
) -> None:
    with pytest.raises(PlacementError) as info:
        parse_placement("shelf", document)
    assert info.value.path == path
    assert says in info.value.problem
    assert str(info.value).startswith(f"{path}: ")
    assert isinstance(info.value, ValueError)


def test_the_issues_example_is_refused_as_the_issue_words_it() -> None:
    with pytest.raises(PlacementError, match=r"^\$\.filter\.price\.\$regex: unknown operator \$regex"):
        parse_placement("shelf", {"filter": {"price": {"$regex": "1"}}})


def test_names_and_depth_are_bounded() -> None:
    with pytest.raises(PlacementError, match="^name: "):
        parse_placement("has space", {})
    deep: dict[str, Any] = {"price": 1}
    for _ in range(MAX_DEPTH + 1):
        deep = {"$not": deep}
    with pytest.raises(PlacementError, match="nest at most"):
        compile_filter(deep)
    compile_filter({"$not": {"$not": {"price": 1}}})


def test_the_issues_example_document_parses() -> None:
    p = parse_placement(
        "home-shelf",
        {
            "strategy": "popular",
            "filter": {"price": {"$lte": 20}, "attributes.brand": {"$nin": ["Rival"]}},
            "boost": [{"if": {"category": "socks"}, "multiply": 1.5}],
            "pin": [{"item_id": "sku-1", "position": 1}],
            "promote": {"if": {"attributes.brand": "House"}, "share": 0.2},
            "diversity": {"field": "category", "max_per_value": 2},
        },
    )
    assert p.strategy == "popular" and p.pinned_items == ("sku-1",)
    assert p.record_fields == {"price", "attributes", "category"}
    assert p.filter is not None and p.filter.fields == {"price", "attributes.brand"}


# --- filters against a reference evaluator ------------------------------------------------------------

NOTHING = object()
CATEGORIES = ["", "socks", "shoes", "hats"]
TITLES = ["", "Red sock", "blue shoe", "Hat"]
PRICES = [0.0, 5.0, 9.99, 10.0, 20.0, 20.5, 100.0]
ATTR_NAMES = ["brand", "size", "tags", "eco"]
ATTR_SCALARS = ["House", "Rival", "", "42", 1, 2.5, 42, 0, True, False]
ORDER = {"$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt, "$lte": operator.le}


def _kind(x: Any) -> str:
    if isinstance(x, bool):
        return "bool"
    if isinstance(x, int | float):
        return "number"
    if isinstance(x, str):
        return "string"
    return "other"


def ref_value(item: dict[str, Any], name: str) -> Any:
    if name == "price":
        return NOTHING if item["price"] is None else item["price"]
    if name in ("category", "title", "in_stock"):
        return item[name]
    key = name.split(".", 1)[1]
    return item["attributes"].get(key, NOTHING)


def ref_holds(value: Any, check: Any) -> bool:
    """Whether a present value (or, for a list, one of its elements) passes ``check``."""
    if value is NOTHING:
        return False
    elements = value if type(value) is list else [value]
    return any(check(e) for e in elements)


def ref_equal(a: Any, b: Any) -> bool:
    return _kind(a) == _kind(b) and _kind(a) != "other" and a == b


def ref_ops(value: Any, ops: dict[str, Any]) -> bool:
    results = []
    for op, x in ops.items():
        if op == "$eq":
            results.append(ref_holds(value, lambda e, x=x: ref_equal(e, x)))
        elif op == "$ne":
            results.append(not ref_holds(value, lambda e, x=x: ref_equal(e, x)))
        elif op in ORDER:
            results.append(ref_holds(value, lambda e, x=x, op=op: _kind(e) == _kind(x) and ORDER[op](e, x)))
        elif op == "$in":
            results.append(any(ref_holds(value, lambda e, y=y: ref_equal(e, y)) for y in x))
        elif op == "$nin":
            results.append(not any(ref_holds(value, lambda e, y=y: ref_equal(e, y)) for y in x))
        elif op == "$exists":
            results.append((value is not NOTHING) is x)
        elif op == "$not":
            results.append(not ref_ops(value, x))
        else:
            raise AssertionError(op)
    return all(results)


def ref_match(item: dict[str, Any], doc: dict[str, Any]) -> bool:
    for key, cond in doc.items():
        if key == "$and":
            ok = all(ref_match(item, d) for d in cond)
        elif key == "$or":
            ok = any(ref_match(item, d) for d in cond)
        elif key == "$not":
            ok = not ref_match(item, cond)
        elif isinstance(cond, dict):
            ok = ref_ops(ref_value(item, key), cond)
        else:
            ok = ref_ops(ref_value(item, key), {"$eq": cond})
        if not ok:
            return False
    return True


attr_values = st.one_of(
    st.sampled_from(ATTR_SCALARS),
    st.none(),
    st.lists(st.sampled_from(ATTR_SCALARS), max_size=3),
    st.just({"nested": 1}),
)
items = st.fixed_dictionaries(
    {
        "price": st.none() | st.sampled_from(PRICES),
        "category": st.sampled_from(CATEGORIES),
        "title": st.sampled_from(TITLES),
        "in_stock": st.booleans(),
        "attributes": st.dictionaries(st.sampled_from(ATTR_NAMES), attr_values, max_size=4),
    }
)
catalogs = st.lists(items, min_size=1, max_size=20)

OPERANDS = {
    "price": st.sampled_from([*PRICES, 0, 10, 20, 15.5, -1]),
    "category": st.sampled_from([*CATEGORIES, "Socks"]),
    "title": st.sampled_from(TITLES),
    "in_stock": st.booleans(),
    **{f"attributes.{n}": st.sampled_from(ATTR_SCALARS) for n in ATTR_NAMES},
}


def operator_objects(name: str, depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    x = OPERANDS[name]
    ordered = x.filter(lambda v: not isinstance(v, bool))
    choices: dict[str, st.SearchStrategy[Any]] = {
        "$eq": x,
        "$ne": x,
        "$in": st.lists(x, max_size=3),
        "$nin": st.lists(x, max_size=3),
        "$exists": st.booleans(),
    }
    if name != "in_stock":
        choices.update({op: ordered for op in ORDER})
    if depth < 2:
        choices["$not"] = st.deferred(lambda: operator_objects(name, depth + 1))
    return st.sets(st.sampled_from(sorted(choices)), min_size=1, max_size=3).flatmap(
        lambda ops: st.fixed_dictionaries({op: choices[op] for op in ops})
    )


def conditions(name: str) -> st.SearchStrategy[Any]:
    return OPERANDS[name] | operator_objects(name)


field_documents = st.sets(st.sampled_from(sorted(OPERANDS)), max_size=3).flatmap(
    lambda names: st.fixed_dictionaries({n: conditions(n) for n in names})
)
filter_documents = st.recursive(
    field_documents,
    lambda inner: st.one_of(
        st.builds(lambda ds: {"$and": ds}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda ds: {"$or": ds}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda d: {"$not": d}, inner),
        st.builds(lambda d, e: {**d, **e}, field_documents, inner),
    ),
    max_leaves=8,
)


def stored(item: dict[str, Any], n: int) -> dict[str, str]:
    """The item's catalog record exactly as the worker writes it to Redis."""
    return catalog_fields(CatalogItem(item_id=f"i{n}", **item))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(catalog=catalogs, document=filter_documents)
def test_a_compiled_filter_agrees_with_the_reference_evaluator(
    catalog: list[dict[str, Any]], document: dict[str, Any]
) -> None:
    compiled = compile_filter(document)
    for n, item in enumerate(catalog):
        assert compiled.matches(stored(item, n)) == ref_match(item, document), (item, document)


@given(document=filter_documents)
def test_a_missing_record_has_every_field_missing(document: dict[str, Any]) -> None:
    nothing = {"price": None, "category": NOTHING, "title": NOTHING, "in_stock": NOTHING, "attributes": {}}
    assert compile_filter(document).matches({}) == ref_match(nothing, document)


def test_semantics_of_missing_fields_and_mismatched_types() -> None:
    record = stored({"price": None, "attributes": {"size": "42", "tags": ["a", 3]}}, 0)
    yes = [
        {"price": {"$ne": 5}},
        {"price": {"$nin": [5]}},
        {"price": {"$exists": False}},
        {"price": {"$not": {"$gt": 5}}},
        {"attributes.size": {"$ne": 42}},  # a string is not the number 42
        {"attributes.size": "42"},
        {"attributes.tags": 3},
        {"attributes.tags": {"$in": ["a"]}},
        {"attributes.tags": {"$gt": 2}},
        {"title": ""},  # an empty title is present
        {"in_stock": True},
    ]
    no = [
        {"price": {"$lt": 5}},
        {"price": {"$eq": 0}},
        {"attributes.size": {"$lt": 50}},
        {"attributes.size": 42},
        {"attributes.tags": {"$nin": ["a"]}},
        {"attributes.colour": {"$exists": True}},
    ]
    assert [compile_filter(d).matches(record) for d in yes] == [True] * len(yes)
    assert [compile_filter(d).matches(record) for d in no] == [False] * len(no)
    assert compile_filter({"price": 20}).matches(stored({"price": 20.0}, 1))  # numbers as numbers
    assert not compile_filter({"attributes.eco": 1}).matches(stored({"attributes": {"eco": True}}, 2))


# --- the JSON Schema says what the validator says -----------------------------------------------------


def _validator() -> Any:
    schemas = placement_json_schemas("#/$defs/{model}")
    return jsonschema_rs.Draft202012Validator({"$defs": schemas, "$ref": "#/$defs/Placement"})


SCHEMA = _validator()
loose_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([0.5, 1e16, -1e16, 2.0]),
    st.sampled_from(["", "a", "House"]),
)
loose_keys = st.sampled_from(
    ["price", "category", "in_stock", "title", "attributes.brand", "attributes.", "attributes", "colour"]
    + ["$eq", "$ne", "$gt", "$lte", "$in", "$nin", "$exists", "$not", "$and", "$or", "$regex"]
)
loose_json = st.recursive(
    loose_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(loose_keys, inner, max_size=3),
    max_leaves=10,
)
loose_placements = st.one_of(
    st.fixed_dictionaries({"filter": loose_json}),
    st.fixed_dictionaries({"filter": filter_documents}),
    st.fixed_dictionaries(
        {},
        optional={
            "strategy": st.sampled_from(["popular", "similar", "random", 1]),
            "boost": st.lists(
                st.fixed_dictionaries(
                    {"if": filter_documents | loose_json},
                    optional={"multiply": st.sampled_from([0, -1, 0.5, 1, 1.5, 2e6, "2", True])},
                ),
                max_size=2,
            ),
            "pin": st.lists(
                st.fixed_dictionaries(
                    {"item_id": st.sampled_from(["sku-1", "sku-2", "", " x", 7])},
                    optional={"position": st.sampled_from([0, 1, 2, 2.0, 2.5, 1000, 1001, True])},
                ),
                max_size=3,
            ),
            "promote": st.fixed_dictionaries(
                {"if": filter_documents}, optional={"share": st.sampled_from([0, 0.2, 1, 1.01, "1"])}
            ),
            "diversity": st.fixed_dictionaries(
                {"field": st.sampled_from(["category", "attributes.brand", "brand", "attributes."])},
                optional={"max_per_value": st.sampled_from([0, 1, 2, 1000, 1001, 1.5])},
            ),
            "colour": st.just("red"),
        },
    ),
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=loose_placements)
def test_the_json_schema_accepts_exactly_what_the_validator_accepts(document: Any) -> None:
    try:
        parse_placement("shelf", document)
        accepted = True
    except PlacementError:
        accepted = False
    assert SCHEMA.is_valid(document) == accepted, document


# --- each rule on a small known catalog ---------------------------------------------------------------


@dataclass(frozen=True)
class Cand:
    item_id: str
    score: float
    reason: str = "popular right now"
    source: str = "popular"


# id: (price, category, brand); ranked a..j, scores 10, 9, ..., 1
SHOP = {
    "a": (35.0, "shoes", "Rival"),
    "b": (12.0, "socks", "Acme"),
    "c": (8.0, "socks", "House"),
    "d": (50.0, "hats", "Acme"),
    "e": (15.0, "socks", "Acme"),
    "f": (19.99, "hats", "House"),
    "g": (25.0, "shoes", "House"),
    "h": (5.0, "socks", "Acme"),
    "i": (9.0, "shoes", "Acme"),
    "j": (60.0, "hats", "House"),
    "pinned": (99.0, "coats", "Acme"),
}
RECORDS = {
    i: stored({"price": p, "category": c, "attributes": {"brand": b}}, n)
    for n, (i, (p, c, b)) in enumerate(SHOP.items())
}
RANKED = [Cand(i, 10.0 - n) for n, i in enumerate("abcdefghij")]


def place(document: dict[str, Any], k: int = 5, usable: dict[str, bool] | None = None, ranked=RANKED):  # type: ignore[no-untyped-def]
    placement = parse_placement("shelf", document)
    return apply_placement(placement, ranked, RECORDS, k, usable or {})


def ids(placed: Any) -> list[str]:
    return [i.item_id for i in placed.items]


def test_no_rules_keep_the_ranking() -> None:
    out = place({})
    assert ids(out) == list("abcde") and all(i.rules == () for i in out.items)
    assert not out.needs_more
    assert ids(apply_placement(None, RANKED, RECORDS, 3, {})) == list("abc")


def test_a_price_filter() -> None:
    out = place({"filter": {"price": {"$lt": 20}}})
    assert ids(out) == list("bcefh")
    assert all(i.rules == ("filtered in by placement shelf",) for i in out.items)
    assert all(float(RECORDS[i]["price"]) < 20 for i in ids(out))


def test_a_promoted_share() -> None:
    # ceil(0.4 * 5) = 2 House items; the natural top 5 holds one (c): f, the best-ranked House item
    # further down, takes the slot of e, the lowest-ranked chosen item that is not House
    out = place({"promote": {"if": {"attributes.brand": "House"}, "share": 0.4}})
    assert ids(out) == list("abcdf")
    assert [i.rules for i in out.items] == [(), (), (), (), ("promoted",)]
    assert not out.needs_more
    # share 1: every slot; only 4 House items exist in the pool, so the pool is short of one
    out = place({"promote": {"if": {"attributes.brand": "House"}, "share": 1}})
    assert ids(out) == ["a", "c", "f", "g", "j"]
    assert out.promoted_short_by == 1 and out.needs_more


def test_a_diversity_cap() -> None:
    out = place({"diversity": {"field": "category", "max_per_value": 1}})
    assert ids(out) == ["a", "b", "d"]  # one each of shoes, socks, hats: the pool has no fourth category
    assert out.short_by == 2 and out.needs_more
    out = place({"diversity": {"field": "category", "max_per_value": 2}}, k=6)
    assert ids(out) == list("abcdfg")  # e, a third sock, is skipped


def test_a_pin_at_position_1() -> None:
    out = place({"pin": [{"item_id": "pinned", "position": 1}]}, usable={"pinned": True})
    assert ids(out) == ["pinned", "a", "b", "c", "d"]
    assert out.items[0].rules == ("pinned",) and out.items[0].source == "pinned"
    # whatever the filter, but not when the item is not usable
    out = place(
        {"pin": [{"item_id": "pinned", "position": 1}], "filter": {"price": {"$lt": 10}}},
        usable={"pinned": True},
    )
    assert ids(out)[0] == "pinned"
    out = place({"pin": [{"item_id": "pinned", "position": 1}]}, usable={"pinned": False})
    assert ids(out) == list("abcde")


def test_pins_resolve_clashes_in_list_order() -> None:
    pins = [
        {"item_id": "c", "position": 2},
        {"item_id": "pinned", "position": 2},  # taken: moves to 3
        {"item_id": "c", "position": 5},  # c is pinned already
        {"item_id": "j", "position": 9},  # beyond k: j competes as any other
    ]
    out = place({"pin": pins}, usable={"c": True, "pinned": True, "j": True})
    assert ids(out) == ["a", "c", "pinned", "b", "d"]
    assert [i.rules for i in out.items][1:3] == [("pinned",), ("pinned",)]
    assert out.items[1].score == 8.0  # a pinned candidate keeps its score


def test_a_boost_that_reorders() -> None:
    out = place({"boost": [{"if": {"category": "hats"}, "multiply": 3}]})
    # d: 7 * 3 = 21, f: 5 * 3 = 15, j: 1 * 3 = 3
    assert ids(out) == ["d", "f", "a", "b", "c"]
    assert out.items[0].rules == ("boosted ×3",) and out.items[0].score == 21.0
    both = place(
        {
            "boost": [
                {"if": {"category": "hats"}, "multiply": 1.5},
                {"if": {"attributes.brand": "House"}, "multiply": 2},
            ]
        }
    )
    # c: 8 * 2 = 16, f: 5 * 1.5 * 2 = 15, d: 7 * 1.5 = 10.5, a: 10
    assert ids(both) == ["c", "f", "d", "a", "b"]
    assert [i.rules for i in both.items][:3] == [("boosted ×2",), ("boosted ×3",), ("boosted ×1.5",)]


def test_a_rare_filter_asks_for_more_candidates() -> None:
    out = place({"filter": {"attributes.brand": "House", "category": "hats"}}, k=5)
    assert ids(out) == ["f", "j"] and out.short_by == 3 and out.needs_more
    assert out.passed == 2 and out.candidates == 10
    assert out.next_pool(5) >= 20


def test_every_rule_together() -> None:
    out = place(
        {
            "filter": {"price": {"$lte": 40}},
            "boost": [{"if": {"category": "socks"}, "multiply": 1.5}],
            "pin": [{"item_id": "pinned", "position": 1}],
            "promote": {"if": {"attributes.brand": "House"}, "share": 0.6},
            "diversity": {"field": "category", "max_per_value": 2},
        },
        usable={"pinned": True},
    )
    # filter drops d, j; boosted: b 13.5, c 12, e 9, h 4.5; order b c a e f g h i; diversity (2 per
    # category) drops e and h; chosen 4 of b c a f g i: b c a f has one more House item (f) besides c,
    # ceil(0.6 * 5) = 3 wants g too, in the place of a
    assert ids(out) == ["pinned", "b", "c", "f", "g"]
    assert out.items[4].rules == ("promoted", "filtered in by placement shelf")
    assert out.items[1].rules == ("boosted ×1.5", "filtered in by placement shelf")


def test_an_ad_hoc_filter_is_anded() -> None:
    placement = parse_placement("shelf", {"filter": {"category": "socks"}})
    out = apply_placement(placement, RANKED, RECORDS, 5, {}, compile_filter({"price": {"$gt": 10}}))
    assert ids(out) == ["b", "e"]
    assert out.items[0].rules == ("filtered in by placement shelf", "filtered in by the request's filter")


def test_usability_of_a_record() -> None:
    assert is_usable({"in_stock": "1"}) and not is_usable(None)
    assert not is_usable({"in_stock": "0"}) and not is_usable({"deleted": "1"})


def test_a_placement_round_trips_as_json() -> None:
    document = {"filter": {"price": {"$lte": 20}}, "pin": [{"item_id": "x", "position": 2}]}
    assert isinstance(parse_placement("p", document), Placement)
    assert (
        parse_placement("p", document).to_json()
        == b'{"filter":{"price":{"$lte":20}},"pin":[{"item_id":"x","position":2}]}'
    )
