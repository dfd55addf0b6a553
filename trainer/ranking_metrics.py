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

    def as_dict(self) -> dict[str, float | str | int]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def hit_and_gain(ranked: Sequence[str], targets: Iterable[str], k: int) -> tuple[float, float]:
    """Whether a held-out item is in the top ``k``, and the NDCG of the best-placed one (one relevant item)."""
    wanted = set(targets)
    for position, item in enumerate(ranked[:k]):
        if item in wanted:
            return 1.0, 1.0 / math.log2(position + 2)
    return 0.0, 0.0


def score_lists(
    model: str,
    lists: Mapping[str, Sequence[str]],
    targets: Mapping[str, Sequence[str]],
    n_items: int,
    seconds: float,
    k: int = 10,
) -> Result:
    """HR@k, NDCG@k and catalogue coverage of top-k lists; a user with no list counts as a miss."""
    hits = gain = 0.0
    shown: set[str] = set()
    for user, wanted in targets.items():
        ranked = list(lists.get(user, ()))[:k]
        shown.update(ranked)
        h, g = hit_and_gain(ranked, wanted, k)
        hits += h
        gain += g
    users = max(len(targets), 1)
    return Result(model, hits / users, gain / users, len(shown) / max(n_items, 1), seconds, len(targets))


def table(results: Sequence[Result]) -> str:
    """A side-by-side Markdown table, best HR@10 first."""
    lines = [
        "| model | HR@10 | NDCG@10 | coverage | seconds |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in sorted(results, key=lambda r: (-r.hr_at_10, r.model)):
        lines.append(
            f"| {r.model} | {r.hr_at_10:.4f} | {r.ndcg_at_10:.4f} | {r.coverage:.3f} | {r.seconds:.1f} |"
        )
    return "\n".join(lines)
