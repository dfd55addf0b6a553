"""Leave-one-out evaluation splits read from interaction files in four formats.

A split holds each user's training actions (as contract event types, with times) and their held-out
items. Reading is pure: files in, plain data out. Any file in these formats works:

- ``seq``: ``user item1 item2 ...`` per line, in time order (the Amazon files). Every action is a purchase.
- ``movielens``: a RecBole ``.inter`` file (``user_id item_id rating timestamp``); a rating of 4 or
  more is a purchase, lower ratings are views.
- ``session``: TSV ``SessionId ItemId Time`` with a header (YooChoose); sessions are users, clicks are views.
- ``multi``: a Beibei-style folder (or its ``train.txt``): ``train.txt`` purchases, ``cart.txt`` cart adds,
  ``test.txt`` the held-out purchases, ``user item ...`` per line with no order.

For the first three the last action of each user with at least two is held out; everything else is
training, and the user's training items are excluded from their ranking. For ``multi`` the test file is
held out, and the user's training purchases are excluded (cart adds stay rankable: predicting which carted
item gets bought is the task).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from streamrec.datasets import (
    MOVIELENS_PURCHASE_RATING,
    SYNTHETIC_STEP_MS,
    dataset_catalog,
    group_sessions,
    read_baskets,
    read_movielens,
    read_seq,
    read_sessions,
    schedule,
)
from streamrec.event_types import EventType
from streamrec.trainer import features

Format = Literal["seq", "movielens", "session", "multi"]
FORMATS: tuple[str, ...] = ("seq", "movielens", "session", "multi")
Action = tuple[EventType, str, int]  # (type, item_id, ts_ms)
# Datasets without times are scheduled to end at this fixed instant, so two runs give the same figures.
SYNTHETIC_END_MS = 1_700_000_000_000


@dataclass
class Split:
    """Training actions per user, the held-out items per evaluated user, and what each user may not get."""

    name: str
    train: dict[str, list[Action]]
    targets: dict[str, list[str]]
    exclude: dict[str, set[str]]
    # ``multi``: only training actions of this type are excluded, and validation holds out the last one
    target_type: EventType | None = None
    items: list[str] = field(default_factory=list)  # the catalogue: every item in training or test
    # catalog feature tokens per item (``trainer.features``), where the data comes with a catalog
    features: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.items:
            seen = dict.fromkeys(i for acts in self.train.values() for _, i, _ in acts)
            seen.update(dict.fromkeys(i for ts in self.targets.values() for i in ts))
            self.items = list(seen)

    @property
    def n_events(self) -> int:
        """Events in the split: training actions plus held-out targets."""
        return sum(len(a) for a in self.train.values()) + sum(len(t) for t in self.targets.values())

    def everything(self) -> Split:
        """All the data, held-out items put back after each user's training actions: what production trains on."""
        train = {}
        for user, actions in self.train.items():
            last = actions[-1][2] if actions else SYNTHETIC_END_MS
            etype = self.target_type or (actions[-1][0] if actions else EventType.PURCHASE)
            train[user] = actions + [(etype, item, last + 1) for item in self.targets.get(user, ())]
        return Split(f"{self.name}:all", train, {}, {}, self.target_type, list(self.items), self.features)

    def validation(self) -> Split:
        """A split carved from the training data alone: each evaluated user's last training item held out.

        Model choices are made on this, never on the test items. Only leave-one-out splits can be carved
        this way; with a ``target_type`` the last training action of that type is held out.
        """
        train: dict[str, list[Action]] = {}
        targets: dict[str, list[str]] = {}
        exclude: dict[str, set[str]] = {}
        for user, actions in self.train.items():
            held = _last_index(actions, self.target_type) if self.target_type else len(actions) - 1
            if user not in self.targets or held is None or len(actions) < 2:
                train[user] = actions
                continue
            rest = actions[:held] + actions[held + 1 :]
            train[user] = rest
            targets[user] = [actions[held][1]]
            exclude[user] = {i for t, i, _ in rest if self.target_type in (None, t)}
        return Split(
            f"{self.name}:validation",
            train,
            targets,
            exclude,
            self.target_type,
            list(self.items),
            self.features,
        )


def _last_index(actions: list[Action], etype: EventType) -> int | None:
    for i in range(len(actions) - 1, -1, -1):
        if actions[i][0] == etype:
            return i
    return None


def leave_last_out(name: str, users: Iterable[tuple[str, list[Action]]]) -> Split:
    """Hold out each user's last action (users with fewer than two actions only train)."""
    train: dict[str, list[Action]] = {}
    targets: dict[str, list[str]] = {}
    exclude: dict[str, set[str]] = {}
    for user, actions in users:
        if not actions:
            continue
        if len(actions) < 2:
            train[user] = list(actions)
            continue
        train[user] = list(actions[:-1])
        targets[user] = [actions[-1][1]]
        exclude[user] = {i for _, i, _ in actions[:-1]}
    return Split(name, train, targets, exclude)


def load_split(path: str | Path, fmt: str) -> Split:
    """Read ``path`` in format ``fmt`` into a leave-one-out split (see the module docstring).

    Where ``path`` is in a known dataset's folder whose catalog knows more than ids (Amazon Beauty's and
    Yelp's attributes, MovieLens's genres and years), the split's ``features`` are those catalog records'
    tokens, the records a replay of that dataset publishes.
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    if not path.exists():
        raise ValueError(f"{path} does not exist")
    split = _read_split(path, fmt)
    records = dataset_catalog(path, split.items)
    split.features = features.from_records((r.item_id, r.category, r.attributes) for r in records)
    return split


def _read_split(path: Path, fmt: str) -> Split:
    label = f"{path.stem}:{fmt}"
    if fmt == "seq":
        users = [(u, [(EventType.PURCHASE, i, 0) for i in items]) for u, items in read_seq(path)]
        return leave_last_out(label, schedule(users, SYNTHETIC_END_MS))
    if fmt == "movielens":
        rows: dict[str, list[tuple[int, int, str, float]]] = {}
        for n, (user, item, rating, ts_s) in enumerate(read_movielens(path)):
            rows.setdefault(user, []).append((ts_s, n, item, rating))
        users = [
            (
                u,
                [
                    (EventType.PURCHASE if r >= MOVIELENS_PURCHASE_RATING else EventType.VIEW, i, ts * 1000)
                    for ts, _, i, r in sorted(rs)
                ],
            )
            for u, rs in rows.items()
        ]
        return leave_last_out(label, users)
    if fmt == "session":
        rows = ((session, item, round(seconds * 1000)) for session, item, seconds in read_sessions(path))
        return leave_last_out(label, group_sessions(rows))
    return _load_multi(path, label)


def _load_multi(path: Path, label: str) -> Split:
    folder = path if path.is_dir() else path.parent
    for needed in ("train.txt", "test.txt"):
        if not (folder / needed).exists():
            raise ValueError(f"the multi format needs {needed} in {folder}")
    purchases = dict(read_baskets(folder / "train.txt"))
    carts = dict(read_baskets(folder / "cart.txt")) if (folder / "cart.txt").exists() else {}
    users = [
        (
            u,
            [(EventType.ADD_TO_CART, i, 0) for i in carts.get(u, [])]
            + [(EventType.PURCHASE, i, 0) for i in purchases.get(u, [])],
        )
        for u in dict.fromkeys([*carts, *purchases])
    ]
    train = dict(schedule(users, SYNTHETIC_END_MS))
    targets: dict[str, list[str]] = {}
    for user, items in read_baskets(folder / "test.txt"):
        if items:
            targets.setdefault(user, []).extend(items)
    exclude = {u: set(purchases.get(u, [])) for u in targets}
    for user in targets:
        train.setdefault(user, [])
    return Split(label, train, targets, exclude, EventType.PURCHASE)


__all__ = ["FORMATS", "SYNTHETIC_STEP_MS", "Split", "load_split", "leave_last_out"]


def training_end(split: Split) -> int:
    """The newest training event's time in epoch ms (0 for no events): "now" for an offline run."""
    return max((ts for actions in split.train.values() for _, _, ts in actions), default=0)
