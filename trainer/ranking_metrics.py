"""Offline ranking metrics: one implementation, used for every model in a run (pure functions)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Result:
    """One model's figures on one split."""

    model: str
    hr_at_10: float
    ndcg_at_10: float
    coverage: float
    seconds: float
    users: int
    tail_share: float = 0.0  # share of shown items with fewer than TAIL_SUPPORT training interactions

    def as_dict(self) -> dict[str, float | str | int]:
        """The figures as a JSON-ready dict, floats rounded to 6 places."""
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def hit_and_gain(ranked: Sequence[str], targets: Iterable[str], k: int) -> tuple[float, float]:
    """Whether a held-out item is in the top ``k``, and the NDCG of the best-placed one (one relevant item)."""
    wanted = set(targets)
    for position, item in enumerate(ranked[:k]):
        if item in wanted:
            return 1.0, 1.0 / math.log2(position + 2)
    return 0.0, 0.0


TAIL_SUPPORT = 5  # an item with fewer training interactions than this is in the long tail


def score_lists(
    model: str,
    lists: Mapping[str, Sequence[str]],
    targets: Mapping[str, Sequence[str]],
    n_items: int,
    seconds: float,
    k: int = 10,
    support: Mapping[str, int] | None = None,
) -> Result:
    """HR@k, NDCG@k, catalogue coverage and long-tail share of top-k lists; a user with no list is a miss.

    ``support`` is each item's number of training interactions; the long-tail share is the fraction of
    all shown items (every list, every position) with fewer than ``TAIL_SUPPORT`` of them.
    """
    hits = gain = 0.0
    shown: set[str] = set()
    slots = tail = 0
    for user, wanted in targets.items():
        ranked = list(lists.get(user, ()))[:k]
        shown.update(ranked)
        h, g = hit_and_gain(ranked, wanted, k)
        hits += h
        gain += g
        if support is not None:
            slots += len(ranked)
            tail += sum(1 for item in ranked if support.get(item, 0) < TAIL_SUPPORT)
    users = max(len(targets), 1)
    return Result(
        model,
        hits / users,
        gain / users,
        len(shown) / max(n_items, 1),
        seconds,
        len(targets),
        tail / slots if slots else 0.0,
    )


def tail_share(targets: Mapping[str, Sequence[str]], support: Mapping[str, int]) -> float:
    """The share of held-out items with fewer than ``TAIL_SUPPORT`` training interactions (the yardstick)."""
    held = [item for wanted in targets.values() for item in wanted]
    return sum(1 for item in held if support.get(item, 0) < TAIL_SUPPORT) / max(len(held), 1)


def table(results: Sequence[Result]) -> str:
    """A side-by-side Markdown table, best HR@10 first."""
    lines = [
        f"| model | HR@10 | NDCG@10 | coverage | tail<{TAIL_SUPPORT} | seconds |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(results, key=lambda r: (-r.hr_at_10, r.model)):
        lines.append(
            f"| {r.model} | {r.hr_at_10:.4f} | {r.ndcg_at_10:.4f} | {r.coverage:.3f} | {r.tail_share:.3f} "
            f"| {r.seconds:.1f} |"
        )
    return "\n".join(lines)
