"""A/B experiments on placements (issue 29): the document, the assignment of shoppers to variants, and the
recommendation ids that carry an answer's variant back to the worker. Pure: no I/O.

An experiment splits the requests for one placement that identify a shopper between variants, each
served with the placement its ``use`` names::

    {"placement": "home",
     "variants": [{"name": "control", "weight": 1, "use": "home"},
                  {"name": "personal", "weight": 1, "use": "home-personal"}],
     "state": "running"}

**Assignment** is weighted rendezvous hashing (Schindelhauer & Schomaker 2005, "Weighted distributed hash
tables"; the logarithmic form of Resch, "New hashing algorithms for data storage", 2015): every variant
``v`` draws ``u_v = H(experiment, v, shopper)`` uniform in (0, 1) and the shopper goes to the variant with
the smallest ``-ln(u_v) / weight_v``. The minimum of exponential variables with rates ``w_v`` falls on
``v`` with probability ``w_v / sum(w)``, so the weights are honoured exactly in expectation. It is sticky
(a pure function of the names and the id: the same in every process and after restarts) and moves as few
shoppers as possible when weights change: raising one variant's weight only moves shoppers into it,
lowering it only moves shoppers out of it, and adding a variant only moves shoppers into the new one
(as GrowthBook's and Optimizely's bucketing promise for ranges, but for any number of variants). ``H`` is
the first 52 bits of SHA-1 of experiment, variant and shopper joined by the unit separator (U+001F): the worker's credit script
computes the same assignment inside Redis (``redis.sha1hex``), where 52 bits are exact in a Lua number.

**Recommendation ids** of answers inside an experiment are
``<strategy>.<24 hex>.<run>.<experiment>.<variant>`` (at most 128 characters, the contract's bound):
``run`` tells a re-created experiment from an earlier one of the same name, so events citing the old
one's answers change nothing.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any

from streamrec.placements import PlacementError, name_problem

MAX_VARIANTS = 10
MAX_WEIGHT = 1_000_000.0
STATES = ("running", "stopped")
EXPERIMENT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,39}$"  # an experiment: 1-40
VARIANT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,31}$"  # a variant: 1-32
_NAME = re.compile(EXPERIMENT_NAME_PATTERN)
_VARIANT = re.compile(VARIANT_NAME_PATTERN)
_FIELDS = {"placement", "variants", "state", "description"}
_VARIANT_FIELDS = {"name", "weight", "use"}
# <strategy>.<token>[.<run>.<experiment>.<variant>]
EXPERIMENT_ID = re.compile(
    r"^([a-z_]{1,32})\.([0-9a-f]{8,64})\.([0-9]{1,12})\.([A-Za-z0-9][A-Za-z0-9_-]{0,39})"
    r"\.([A-Za-z0-9][A-Za-z0-9_-]{0,31})$"
)
HASH_BITS = 52
SEPARATOR = "\x1f"


def experiment_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name an experiment (1-40 of ``[A-Za-z0-9_-]``, a letter or digit first: it is
    part of recommendation ids and Redis hash tags); None if it can."""
    if not _NAME.match(name):
        return "an experiment name is 1-40 characters of A-Z a-z 0-9 _ - starting with a letter or digit"
    return None


@dataclass(frozen=True)
class Variant:
    """One arm: its name, its weight (> 0, relative) and the placement it is served with."""

    name: str
    weight: float
    use: str


@dataclass(frozen=True)
class Experiment:
    """A validated experiment document. ``run`` is given by the store when the name is created (kept
    when the document is replaced), 0 before it is stored."""

    name: str
    placement: str
    variants: tuple[Variant, ...]
    state: str = "running"
    description: str = ""
    run: int = 0

    @property
    def running(self) -> bool:
        """Whether requests are split (``state`` is ``running``)."""
        return self.state == "running"

    def document(self) -> dict[str, Any]:
        """The document as the API shows it (without ``run``)."""
        doc: dict[str, Any] = {
            "placement": self.placement,
            "variants": [{"name": v.name, "weight": v.weight, "use": v.use} for v in self.variants],
            "state": self.state,
        }
        if self.description:
            doc["description"] = self.description
        return doc

    def variant(self, name: str) -> Variant | None:
        """The variant called ``name``, or None."""
        return next((v for v in self.variants if v.name == name), None)


def _weight(x: Any, path: str) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        raise PlacementError(path, "a weight is a number")
    if not 0 < x <= MAX_WEIGHT:
        raise PlacementError(path, f"a weight is above 0 and at most {MAX_WEIGHT:g}")
    return float(x)


def parse_experiment(name: str, document: Any, run: int = 0) -> Experiment:
    """Validate an experiment document; raises ``PlacementError`` (its ``path`` is the JSON path of the
    wrong part) when it cannot be used. Whether the placements it names exist is the store's question."""
    problem = experiment_name_problem(name)
    if problem:
        raise PlacementError("$", problem)
    if not isinstance(document, dict):
        raise PlacementError("$", "an experiment is a JSON object")
    unknown = sorted(set(document) - _FIELDS)
    if unknown:
        raise PlacementError(f"$.{unknown[0]}", f"unknown field (allowed: {', '.join(sorted(_FIELDS))})")
    placement = document.get("placement")
    if not isinstance(placement, str) or name_problem(placement):
        raise PlacementError("$.placement", "the name of the placement whose requests are split")
    state = document.get("state", "running")
    if state not in STATES:
        raise PlacementError("$.state", f"one of {', '.join(STATES)}")
    description = document.get("description", "")
    if not isinstance(description, str) or len(description) > 500:
        raise PlacementError("$.description", "a text of at most 500 characters")
    raw = document.get("variants")
    if not isinstance(raw, list) or not 2 <= len(raw) <= MAX_VARIANTS:
        raise PlacementError("$.variants", f"a list of 2 to {MAX_VARIANTS} variants")
    variants, seen = [], set()
    for i, v in enumerate(raw):
        path = f"$.variants[{i}]"
        if not isinstance(v, dict):
            raise PlacementError(path, "a variant is an object with name, weight and use")
        extra = sorted(set(v) - _VARIANT_FIELDS)
        if extra:
            raise PlacementError(f"{path}.{extra[0]}", "unknown field (allowed: name, use, weight)")
        vname = v.get("name")
        if not isinstance(vname, str) or not _VARIANT.match(vname):
            raise PlacementError(
                f"{path}.name", "1-32 characters of A-Z a-z 0-9 _ - starting with a letter or digit"
            )
        if vname in seen:
            raise PlacementError(f"{path}.name", f"a second variant called {vname!r}")
        seen.add(vname)
        use = v.get("use")
        if not isinstance(use, str) or name_problem(use):
            raise PlacementError(f"{path}.use", "the name of the placement this variant is served with")
        variants.append(Variant(vname, _weight(v.get("weight", 1), f"{path}.weight"), use))
    return Experiment(name, placement, tuple(variants), state, description, run)


def unit_draw(experiment: str, variant: str, shopper: str) -> float:
    """``H(experiment, variant, shopper)``: the first 52 bits of SHA-1 of the three joined by U+001F,
    mapped to the open interval (0, 1)."""
    digest = hashlib.sha1(SEPARATOR.join((experiment, variant, shopper)).encode()).hexdigest()
    return (int(digest[: HASH_BITS // 4], 16) + 0.5) / 2**HASH_BITS


def assign(experiment: Experiment, shopper: str) -> Variant:
    """The variant ``shopper`` is in: weighted rendezvous hashing (module docstring). Deterministic."""
    return min(
        experiment.variants,
        key=lambda v: -math.log(unit_draw(experiment.name, v.name, shopper)) / v.weight,
    )


def shopper_digest(shopper: str) -> str:
    """What the exposure and buyer sets keep of a shopper: 16 hex digits (64 bits) of SHA-1 of the id.

    Not the id itself (an erased shopper's id is not kept in experiment counts), and 64 bits make a
    collision among 1,000,000 shoppers about 3 in 100 million likely: the distinct counts are exact in
    practice."""
    return hashlib.sha1(shopper.encode()).hexdigest()[:16]


def experiment_recommendation_id(strategy: str, token: str, experiment: Experiment, variant: Variant) -> str:
    """The recommendation_id of an answer served under ``variant`` (module docstring); ``token`` is a
    random hex string, cut to 24 digits."""
    return f"{strategy}.{token[:24]}.{experiment.run}.{experiment.name}.{variant.name}"


@dataclass(frozen=True)
class Cited:
    """What an experiment answer's recommendation_id names."""

    run: int
    experiment: str
    variant: str


def cited(recommendation_id: str | None) -> Cited | None:
    """The experiment run and variant a recommendation_id names, or None for any other id."""
    match = EXPERIMENT_ID.match(recommendation_id or "")
    if match is None:
        return None
    return Cited(int(match.group(3)), match.group(4), match.group(5))
