"""Tune the streaming model's own settings on a validation split (``streamrec tune``).

Each candidate setting is folded through the worker's state script into a fresh keyspace and ranked by
the API's recommender (the ``streamrec-live`` model), on the split carved from the training data, so the
test items are never looked at.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import redis

from streamrec.keys import Keys
from streamrec.settings import ScoringSettings
from streamrec.trainer import evaluate
from streamrec.trainer.ranking_metrics import Result
from streamrec.trainer.splits import Split

# What was tried (see README "Quality"): each line is one axis of the grid, the current default first.
# A wider sweep of window, decays, alpha, seeds and shrinkage was first run on an in-memory copy of the
# same maths; this grid re-checks its front runners through the real script and recommender.
GRID: dict[str, Sequence[Any]] = {
    "neighbour_shrinkage": (100.0, 20.0, 0.0),
    "history_position_decay": (0.7, 0.85),
}
# Per-event-type weights, added to the grid where the data has that type besides purchases.
TYPE_GRID: dict[str, Sequence[Any]] = {
    "weight_add_to_cart": (3.0, 1.0),
    "weight_view": (1.0, 0.5),
}


def grid_for(split: Split, grid: Mapping[str, Sequence[Any]] = GRID) -> dict[str, Sequence[Any]]:
    """``grid`` plus the weight of each non-purchase event type the split's training data holds."""
    present = {str(t) for actions in split.train.values() for t, _, _ in actions}
    out = dict(grid)
    if "purchase" in present:
        out.update({name: values for name, values in TYPE_GRID.items() if name[len("weight_") :] in present})
    return out


def candidates(grid: Mapping[str, Sequence[Any]]) -> Iterator[dict[str, Any]]:
    """Every combination of the grid's values."""
    names = list(grid)
    for values in itertools.product(*(grid[n] for n in names)):
        yield dict(zip(names, values, strict=True))


def tune(
    split: Split,
    base: ScoringSettings,
    keyspace: Callable[[], AbstractContextManager[tuple[redis.Redis, Keys]]],
    grid: Mapping[str, Sequence[Any]] | None = None,
    say: Callable[[str], None] = print,
) -> list[tuple[dict[str, Any], Result]]:
    """Score every candidate on ``split.validation()``; returns them best first.

    The default grid is ``grid_for(split)``: ``GRID`` and, where the data has several event types, their
    weights.
    """
    valid = split.validation()
    rows = []
    for overrides in candidates(grid_for(split) if grid is None else grid):
        scoring = base.model_copy(update=overrides)
        with keyspace() as (client, keys):
            (result,) = evaluate.run(
                valid, client, keys, scoring, ["streamrec-live"], say=lambda _: None, bar=False
            )
        say(
            " ".join(f"{k}={v}" for k, v in overrides.items())
            + f": HR@10 {result.hr_at_10:.4f} NDCG@10 {result.ndcg_at_10:.4f}"
        )
        rows.append((overrides, result))
    rows.sort(key=lambda row: (-row[1].hr_at_10, -row[1].ndcg_at_10))
    return rows
