"""In-memory interaction datasets and the leave-one-out split of ``docs/evaluation.md``.

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
import pandas as pd

MIN_INTERACTIONS = 3


@dataclass
class Dataset:
    """A catalogue and time-ordered per-user interaction sequences (item rows).

    ``skipped_rows`` counts the malformed input rows a loader dropped (``on_bad_rows="skip"``).
    """

    name: str
    item_ids: list[str]
    titles: list[str]
    texts: list[str]
    user_ids: list[str]
    sequences: list[np.ndarray]
    timestamps: list[np.ndarray] = field(default_factory=list)
    skipped_rows: int = 0

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
        users = _as_str(users, "user")
        items = _as_str(items, "item")
        ts = np.asarray(timestamps, dtype=np.int64)
        if not (len(users) == len(items) == len(ts)):
            raise ValueError("users, items and timestamps must have the same length")
        if len(users) == 0:
            raise ValueError(f"dataset {name!r} has no interactions")

        # Vectorised (ml-25m has 25M rows): users in sorted id order, each user's rows by time, ties
        # in input order (two stable sorts), then the users with too few interactions dropped.
        user_codes, user_uniques = pd.factorize(users, sort=True)
        counts = np.bincount(user_codes, minlength=len(user_uniques))
        by_time = np.argsort(ts, kind="stable")
        order = by_time[np.argsort(user_codes[by_time], kind="stable")]
        kept_users = counts >= min_interactions
        order = order[kept_users[user_codes[order]]]
        if len(order) == 0:
            raise ValueError(
                f"dataset {name!r} has no user with at least {min_interactions} interactions"
            )
        # Item rows in order of first appearance along the concatenated sequences.
        item_codes, item_uniques = pd.factorize(items.take(order))
        bounds = np.cumsum(counts[kept_users])[:-1]
        user_ids = [str(u) for u in np.asarray(user_uniques)[kept_users]]
        sequences = np.split(item_codes.astype(np.int64), bounds)
        stamps = np.split(ts[order], bounds)
        item_ids = [str(i) for i in item_uniques]
        titles, texts = [], []
        for it in item_ids:
            title, text = item_text.get(it, (it, it))
            titles.append(title)
            texts.append(text)
        return cls(name, item_ids, titles, texts, user_ids, sequences, stamps)


    @classmethod
    def from_codes(
        cls,
        name: str,
        users: np.ndarray,
        items: np.ndarray,
        timestamps: np.ndarray,
        item_text: Mapping[str, tuple[str, str]],
        min_interactions: int = MIN_INTERACTIONS,
    ) -> "Dataset":
        """:meth:`from_interactions` for integer ids (``users``, ``items``: ``(M,)`` integer arrays), without
        a Python object per interaction: columnar, so tens of millions of rows take a few bytes each.

        The same protocol, with users in ascending id order; sequences are int32 views of one array (the
        catalogue must have under 2³¹ items). User and item ids become their decimal strings, and
        ``item_text`` is keyed by those."""
        users = np.asarray(users)
        items = np.asarray(items)
        ts = np.asarray(timestamps, dtype=np.int64)
        if not (len(users) == len(items) == len(ts)):
            raise ValueError("users, items and timestamps must have the same length")
        if len(users) == 0:
            raise ValueError(f"dataset {name!r} has no interactions")
        order = np.lexsort((ts, users))  # by user, then time; a stable sort keeps ties in input order
        user_sorted = users[order]
        starts = np.flatnonzero(np.r_[True, user_sorted[1:] != user_sorted[:-1]])
        counts = np.diff(np.r_[starts, len(order)])
        kept = counts >= min_interactions
        if not kept.any():
            raise ValueError(f"dataset {name!r} has no user with at least {min_interactions} interactions")
        order = order[np.repeat(kept, counts)]
        user_ids = [str(u) for u in user_sorted[starts[kept]].tolist()]
        del user_sorted
        codes, uniques = pd.factorize(items[order])  # item rows in order of first appearance
        codes = codes.astype(np.int32)
        bounds = np.cumsum(counts[kept])[:-1]
        item_ids = [str(i) for i in np.asarray(uniques).tolist()]
        titles, texts = [], []
        for it in item_ids:
            title, text = item_text.get(it, (it, it))
            titles.append(title)
            texts.append(text)
        return cls(name, item_ids, titles, texts, user_ids, np.split(codes, bounds), np.split(ts[order], bounds))


def _as_str(values: Sequence, what: str) -> pd.Series:
    """``values`` as a pandas Series of strings (ids are strings whatever the input type)."""
    series = values.reset_index(drop=True) if isinstance(values, pd.Series) else pd.Series(values, dtype=object)
    if series.isna().any():
        raise ValueError(f"{what} ids contain missing values")
    return series.astype(str)


@dataclass
class Split:
    """Leave-one-out by time: the last item is the test target, the one before validation.

    ``train[u]`` is user u's history without the last two items; ``histories("val")`` is train,
    ``histories("test")`` is train + the validation target. ``times[u]`` holds the unix seconds of
    user u's whole sequence (empty when the dataset has none); ``history_times(stage)`` aligns them
    with ``histories(stage)``.
    """

    train: list[np.ndarray]
    val_target: np.ndarray
    test_target: np.ndarray
    times: list[np.ndarray] = field(default_factory=list)

    @classmethod
    def leave_one_out(cls, ds: Dataset) -> "Split":
        return cls(
            train=[s[:-2] for s in ds.sequences],
            val_target=np.array([s[-2] for s in ds.sequences], dtype=np.int64),
            test_target=np.array([s[-1] for s in ds.sequences], dtype=np.int64),
            times=list(ds.timestamps),
        )

    def val_sample(self, max_users: int | None, seed: int = 0) -> np.ndarray | None:
        """The users that validation reads when there are many: ``None`` (every user) when there are at
        most ``max_users`` (or ``max_users`` is None), else ``max_users`` user indices drawn without
        replacement, ascending, fixed by ``seed`` alone, so every epoch and every model reads the same."""
        n = len(self.train)
        if max_users is None or n <= max_users:
            return None
        return np.sort(np.random.default_rng(seed).choice(n, size=max_users, replace=False))

    def subset(self, users: np.ndarray | None) -> "Split":
        """The split of the users ``users`` (indices, e.g. :meth:`val_sample`'s), in that order; itself
        when ``users`` is None."""
        if users is None:
            return self
        return Split([self.train[u] for u in users], self.val_target[users], self.test_target[users],
                     [self.times[u] for u in users] if self.times else [])

    def histories(self, stage: str) -> list[np.ndarray]:
        """The histories a model sees when it is evaluated on ``stage`` ("val" or "test")."""
        if stage == "val":
            return self.train
        if stage == "test":
            return [np.append(h, t) for h, t in zip(self.train, self.val_target)]
        raise ValueError(f"unknown stage {stage!r} (expected 'val' or 'test')")

    def history_times(self, stage: str) -> list[np.ndarray] | None:
        """Timestamps aligned with ``histories(stage)``; ``None`` when the dataset has none."""
        if not self.times:
            return None
        drop = {"val": 2, "test": 1}.get(stage)
        if drop is None:
            raise ValueError(f"unknown stage {stage!r} (expected 'val' or 'test')")
        return [t[:-drop] for t in self.times]

    def targets(self, stage: str) -> np.ndarray:
        return {"val": self.val_target, "test": self.test_target}[stage]
