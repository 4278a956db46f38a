"""In-memory interaction datasets and the leave-one-out split of ``EVALUATION.md``.

A :class:`Dataset` holds the item catalogue (ids, titles, text) and, per user, the item rows they
interacted with in time order. Item rows index the catalogue: row ``i`` is ``item_ids[i]``.

>>> ds = Dataset.from_interactions(
...     "toy", users=["u", "u", "u", "v"], items=["a", "b", "c", "a"], timestamps=[3, 1, 2, 1],
...     item_text={"a": ("A", "A text"), "b": ("B", "B text"), "c": ("C", "C text")})
>>> ds.user_ids, [ds.item_ids[i] for i in ds.sequences[0]]
(['u'], ['b', 'c', 'a'])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

MIN_INTERACTIONS = 3


@dataclass
class Dataset:
    """A catalogue and time-ordered per-user interaction sequences (item rows)."""

    name: str
    item_ids: list[str]
    titles: list[str]
    texts: list[str]
    user_ids: list[str]
    sequences: list[np.ndarray]
    timestamps: list[np.ndarray] = field(default_factory=list)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_interactions(self) -> int:
        return int(sum(len(s) for s in self.sequences))

    def summary(self) -> dict:
        return {
            "name": self.name,
            "users": self.n_users,
            "items": self.n_items,
            "interactions": self.n_interactions,
        }

    @classmethod
    def from_interactions(
        cls,
        name: str,
        users: Sequence,
        items: Sequence,
        timestamps: Sequence,
        item_text: Mapping[str, tuple[str, str]],
        min_interactions: int = MIN_INTERACTIONS,
    ) -> "Dataset":
        """Build a dataset from parallel interaction columns.

        Applies the protocol: users with fewer than ``min_interactions`` are dropped, each user's
        interactions are ordered by timestamp with ties kept in input order (stable sort), and the
        catalogue is the set of items that the kept users interacted with, ordered by first
        appearance. ``item_text`` maps an item id to ``(title, text)``; missing items get their id.
        """
        users = np.asarray([str(u) for u in users], dtype=object)
        items = np.asarray([str(i) for i in items], dtype=object)
        ts = np.asarray(timestamps, dtype=np.int64)
        if not (len(users) == len(items) == len(ts)):
            raise ValueError("users, items and timestamps must have the same length")
        if len(users) == 0:
            raise ValueError(f"dataset {name!r} has no interactions")

        # Group by user, keeping file order inside each group.
        order = np.argsort(users, kind="stable")
        users_s, items_s, ts_s = users[order], items[order], ts[order]
        boundaries = np.flatnonzero(users_s[1:] != users_s[:-1]) + 1
        starts = np.concatenate([[0], boundaries])
        ends = np.concatenate([boundaries, [len(users_s)]])

        item_row: dict[str, int] = {}
        user_ids: list[str] = []
        sequences: list[np.ndarray] = []
        stamps: list[np.ndarray] = []
        for s, e in zip(starts, ends):
            if e - s < min_interactions:
                continue
            by_time = np.argsort(ts_s[s:e], kind="stable")
            seq_items = items_s[s:e][by_time]
            rows = np.empty(len(seq_items), dtype=np.int64)
            for j, it in enumerate(seq_items):
                rows[j] = item_row.setdefault(it, len(item_row))
            user_ids.append(users_s[s])
            sequences.append(rows)
            stamps.append(ts_s[s:e][by_time])
        if not user_ids:
            raise ValueError(
                f"dataset {name!r} has no user with at least {min_interactions} interactions"
            )
        item_ids = list(item_row)
        titles, texts = [], []
        for it in item_ids:
            title, text = item_text.get(it, (it, it))
            titles.append(title)
            texts.append(text)
        return cls(name, item_ids, titles, texts, user_ids, sequences, stamps)


@dataclass
class Split:
    """Leave-one-out by time: the last item is the test target, the one before validation.

    ``train[u]`` is user u's history without the last two items; ``val_history(u)`` adds nothing
    (validation sees train), ``test_history(u)`` is train + the validation target.
    """

    train: list[np.ndarray]
    val_target: np.ndarray
    test_target: np.ndarray

    @classmethod
    def leave_one_out(cls, ds: Dataset) -> "Split":
        return cls(
            train=[s[:-2] for s in ds.sequences],
            val_target=np.array([s[-2] for s in ds.sequences], dtype=np.int64),
            test_target=np.array([s[-1] for s in ds.sequences], dtype=np.int64),
        )

    def histories(self, stage: str) -> list[np.ndarray]:
        """The histories a model sees when it is evaluated on ``stage`` ("val" or "test")."""
        if stage == "val":
            return self.train
        if stage == "test":
            return [np.append(h, t) for h, t in zip(self.train, self.val_target)]
        raise ValueError(f"unknown stage {stage!r} (expected 'val' or 'test')")

    def targets(self, stage: str) -> np.ndarray:
        return {"val": self.val_target, "test": self.test_target}[stage]
