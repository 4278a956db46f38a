"""Datasets: the synthetic generator, MovieLens loaders, and the leave-one-out split.

``load_dataset(spec)`` understands:

- ``synthetic`` or ``synthetic:users=5000,items=2000,seed=0``
- ``movielens:PATH`` (ml-latest-small / ml-25m CSV, ml-1m ``.dat``, ml-100k ``u.data``)
"""

from __future__ import annotations

from distilrec.data.dataset import Dataset, Split

__all__ = ["Dataset", "Split", "load_dataset"]

_SYNTHETIC_KEYS = {"users": int, "items": int, "seed": int, "min_len": int, "max_len": int,
                   "p_series": float, "p_topic": float}


def load_dataset(spec: str) -> Dataset:
    """Load the dataset that ``spec`` names; a bad spec raises ``ValueError`` naming it."""
    kind, _, rest = spec.partition(":")
    if kind == "synthetic":
        from distilrec.data import synthetic

        kwargs = {}
        for part in filter(None, rest.split(",")):
            key, eq, value = part.partition("=")
            if not eq or key not in _SYNTHETIC_KEYS:
                raise ValueError(
                    f"bad synthetic option {part!r} in {spec!r}; known: {', '.join(_SYNTHETIC_KEYS)}"
                )
            try:
                kwargs[key] = _SYNTHETIC_KEYS[key](value)
            except ValueError:
                raise ValueError(f"synthetic option {key}={value!r} is not a number") from None
        return synthetic.generate(**kwargs)
    if kind == "movielens":
        if not rest:
            raise ValueError("movielens needs a path: movielens:PATH")
        from distilrec.data import movielens

        return movielens.load(rest)
    raise ValueError(f"unknown dataset spec {spec!r} (expected 'synthetic[:k=v,...]' or 'movielens:PATH')")
