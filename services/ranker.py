"""Ranker deployment: removes seen and excluded items, keeps the top k, attaches titles; and the
popularity ranking used for users with no history (cold start)."""

from __future__ import annotations

from ray import serve

from distilrec.artifacts import load_artifact
from distilrec.ranking import most_popular, popularity_counts, rank_candidates


@serve.deployment
class Ranker:
    def __init__(self, model_uri: str):
        art = load_artifact(model_uri)
        self.item_ids = art.items.item_ids
        self.titles = art.items.titles
        index = art.items.index
        self.popularity = popularity_counts(
            ([index[i] for i in items if i in index] for items in art.histories.values()), len(index))

    def _items(self, ranked: list[tuple[int, float]]) -> list[dict]:
        return [{"item_id": self.item_ids[r], "title": self.titles[r], "score": round(s, 6)} for r, s in ranked]

    def rank(self, candidates: dict, drop: list[int], k: int) -> list[dict]:
        return self._items(rank_candidates(candidates["rows"], candidates["scores"], drop, k))

    def popular(self, drop: list[int], k: int) -> list[dict]:
        return self._items(most_popular(self.popularity, drop, k))
