"""The experiment document, the assignment of shoppers to variants and the ids of experiment answers
(pure: no Redis)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from scipy.stats import chisquare

from streamrec import metrics
from streamrec.contract import Event
from streamrec.experiment_store import credits_of
from streamrec.experiments import (
    assign,
    cited,
    experiment_recommendation_id,
    parse_experiment,
)
from streamrec.placements import PlacementError

SHOPPERS = [f"shopper-{n}" for n in range(20_000)]


def _experiment(*weights: float, name: str = "home-ab"):  # type: ignore[no-untyped-def]
    variants = [{"name": f"v{i}", "weight": w, "use": "home"} for i, w in enumerate(weights)]
    return parse_experiment(name, {"placement": "home", "variants": variants}, run=3)


@pytest.mark.parametrize("weights", [(1, 1), (1, 3), (5, 3, 2)])
def test_weights_are_honoured_within_sampling_error(weights: tuple[float, ...]) -> None:
    e = _experiment(*weights)
    counts = {v.name: 0 for v in e.variants}
    for s in SHOPPERS:
        counts[assign(e, s).name] += 1
    expected = [len(SHOPPERS) * w / sum(weights) for w in weights]
    assert chisquare(list(counts.values()), expected).pvalue > 0.001


def test_assignment_is_sticky_in_a_fresh_interpreter() -> None:
    e = _experiment(1, 1)
    here = [assign(e, s).name for s in SHOPPERS[:200]]
    code = (
        "from streamrec.experiments import parse_experiment, assign\n"
        "e = parse_experiment('home-ab', {'placement': 'home', 'variants': ["
        "{'name': 'v0', 'weight': 1, 'use': 'home'}, {'name': 'v1', 'weight': 1, 'use': 'home'}]}, 3)\n"
        "print(','.join(assign(e, f'shopper-{n}').name for n in range(200)))"
    )
    # another process with another hash seed: nothing depends on Python's salted hash()
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": "7"}
    )
    assert out.stdout.strip().split(",") == here


def test_a_weight_change_moves_as_few_shoppers_as_it_must() -> None:
    before, after = _experiment(1, 1), _experiment(1, 3)
    moved = [(assign(before, s).name, assign(after, s).name) for s in SHOPPERS]
    changed = [m for m in moved if m[0] != m[1]]
    assert all(m == ("v0", "v1") for m in changed)  # only into the variant that grew
    assert abs(len(changed) / len(SHOPPERS) - 0.25) < 0.015  # 1/2 -> 1/4 of shoppers in v0: 1/4 move
    # a third variant only takes shoppers; nobody moves between the first two
    three = _experiment(1, 1, 1)
    moves = {(assign(before, s).name, assign(three, s).name) for s in SHOPPERS}
    assert moves == {("v0", "v0"), ("v1", "v1"), ("v0", "v2"), ("v1", "v2")}


def test_another_experiment_splits_independently() -> None:
    a, b = _experiment(1, 1), _experiment(1, 1, name="other")
    same = sum(assign(a, s).name == assign(b, s).name for s in SHOPPERS)
    assert abs(same / len(SHOPPERS) - 0.5) < 0.02


def test_recommendation_ids_carry_the_run_and_variant_and_stay_in_the_contract() -> None:
    e = _experiment(1, 1, name="a" * 40)
    v = e.variants[1].__class__("b" * 32, 1.0, "home")
    rec = experiment_recommendation_id("category_popular", "f" * 32, e, v)
    assert len(rec) <= 128
    assert cited(rec) is not None and (cited(rec).run, cited(rec).experiment, cited(rec).variant) == (  # type: ignore[union-attr]
        3,
        "a" * 40,
        "b" * 32,
    )
    assert metrics.strategy_of(rec) == "category_popular"
    assert cited("personalized." + "0" * 32) is None and cited(None) is None and cited("x.y.1.a.b") is None


def test_only_cited_events_of_credited_types_are_offered() -> None:
    rec = "popular." + "a" * 24 + ".3.home-ab.v0"
    events = [
        Event(
            event_id="1",
            type="purchase",
            user_id="u",
            item_id="i",
            recommendation_id=rec,
            price=2,
            quantity=3,
        ),
        Event(event_id="2", type="view", user_id="u", item_id="i", recommendation_id="popular." + "a" * 32),
        Event(event_id="3", type="view", user_id="u", item_id="i"),
        Event(event_id="4", type="search", user_id="u", query="socks", recommendation_id=rec),
        Event(event_id="5", type="add_to_cart", user_id="u", item_id="i", recommendation_id=rec),
    ]
    offered = credits_of(events, [(0, n) for n in range(5)])
    assert [(c.event.event_id, c.offset, c.revenue) for c in offered] == [("1", 0, 6.0), ("5", 4, 0.0)]


@pytest.mark.parametrize(
    ("document", "path"),
    [
        ([], "$"),
        ({"placement": "home"}, "$.variants"),
        ({"placement": "home", "variants": [{"name": "a", "use": "h"}] * 2}, "$.variants[1].name"),
        ({"placement": "home", "variants": [{"name": "a", "use": "h"}, {"name": "b"}]}, "$.variants[1].use"),
        ({"placement": "x y", "variants": []}, "$.placement"),
        ({"placement": "h", "variants": [{"name": "a", "use": "h"}] * 1, "state": "on"}, "$.state"),
        (
            {"placement": "h", "variants": [{"name": "a", "use": "h", "weight": -1}] * 2},
            "$.variants[0].weight",
        ),
        ({"placement": "h", "variants": [{"name": "a.b", "use": "h"}] * 2}, "$.variants[0].name"),
        ({"placement": "h", "variants": [], "colour": 1}, "$.colour"),
    ],
)
def test_bad_documents_name_the_path(document: object, path: str) -> None:
    with pytest.raises(PlacementError) as info:
        parse_experiment("ok", document)
    assert info.value.path == path
