"""Ranker deployment: removes seen and excluded items, applies attribute filters, re-ranks for
diversity (MMR over the items' text embeddings; ``diversity`` 0 = off), keeps the top k and explains
each item ("because you watched X", from the co-occurrence item graph or shared attributes). It also
answers without the model: the popularity ranking for cold start, and the co-occurrence fallback
when scoring fails or is too slow.

Runtime knobs through ``user_config`` / :meth:`reconfigure`: ``default_k``, ``diversity``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ray import serve

from distilrec.artifacts import Artifact
from distilrec.catalog import Catalog
from distilrec.ranking import cooccurrence_ranking, explain, mmr, most_popular, passes
from distilrec.stores import NewItem, open_event_store
from services import metrics
from services.state import ServingState

DEFAULT_K = 10
MMR_POOL = 5  # MMR picks k items from the best k * MMR_POOL candidates


@dataclass
class RankerBundle:
    version: str
    manifest: dict
    catalog: Catalog

    @classmethod
    def build(cls, art: Artifact) -> "RankerBundle":
        index = art.items.index
        histories = [[index[i] for i in items if i in index] for items in art.histories.values()]
        cat = Catalog(art.items.item_ids, art.items.titles, art.items.attributes, art.items.text_emb, histories)
        return cls(art.version, art.manifest, cat)

    def add_items(self, items: list[NewItem]) -> None:
        for it in items:
            self.catalog.add(it.item_id, it.title, it.attributes, it.embedding)


@serve.deployment
class Ranker:
    def __init__(self, model_uri: str, event_store: str, model_poll_s: float = 30.0):
        self.store = open_event_store(event_store)
        self.state = ServingState(model_uri, RankerBundle.build, self.store, model_poll_s)
        self.default_k, self.diversity = DEFAULT_K, 0.0
        self.candidates = metrics.candidates_per_request()

    def reconfigure(self, config: dict) -> None:
        if "default_k" in config:
            self.default_k = min(100, max(1, int(config["default_k"])))
        if "diversity" in config:
            self.diversity = min(1.0, max(0.0, float(config["diversity"])))

    def _items(self, cat: Catalog, ranked: list[tuple[int, float]], history: list[int], cold: bool) -> list[dict]:
        return [{"item_id": cat.item_ids[r], "title": cat.titles[r], "score": round(float(s), 6),
                 "explanation": "popular with everyone" if cold else
                 explain(r, history, cat.graph, cat.attributes, cat.titles)}
                for r, s in ranked]

    def rank(self, candidates: dict, history: list[str], exclude: list[str], k: int | None,
             filters: dict | None, diversity: float | None, sync=None) -> dict:
        """``candidates`` from the scorer (``item_ids``, ``scores``, descending) → ``{"items": [...],
        "model_version"}``: the top ``k`` unseen, unexcluded, filtered items, MMR re-ranked; topped
        up from the co-occurrence / popularity ranking when filters leave fewer than ``k``."""
        self.state.sync(sync)
        b = self.state.bundle
        cat = b.catalog
        k = k or self.default_k
        div = self.diversity if diversity is None else diversity
        hist = cat.rows(history)
        drop = set(hist) | set(cat.rows(exclude))
        self.candidates.observe(len(candidates["item_ids"]))
        pool = []
        for item, s in zip(candidates["item_ids"], candidates["scores"]):
            r = cat.index.get(item)
            if r is not None and r not in drop and passes(cat.attributes[r], filters):
                pool.append((r, float(s)))
                if len(pool) == k * (MMR_POOL if div > 0 else 1):
                    break
        ranked = mmr(pool, cat.text_emb, k, div)
        if len(ranked) < k:
            taken = drop | {r for r, _ in ranked}
            low = min((s for _, s in ranked), default=0.0)
            more = cooccurrence_ranking(hist, cat.graph, cat.popularity, taken, k - len(ranked),
                                        keep=lambda r: passes(cat.attributes[r], filters))
            ranked += [(r, low - 1e-3 * (i + 1)) for i, (r, _) in enumerate(more)]  # below every model score
        return {"items": self._items(cat, ranked, hist, cold=False), "model_version": b.version}

    def popular(self, exclude: list[str], k: int | None, filters: dict | None, sync=None) -> dict:
        """Cold start: the most popular items (share of all interactions), filtered."""
        self.state.sync(sync)
        b = self.state.bundle
        cat = b.catalog
        k = k or self.default_k
        drop = set(cat.rows(exclude))
        if filters:
            ranked = cooccurrence_ranking([], cat.graph, cat.popularity, drop, k,
                                          keep=lambda r: passes(cat.attributes[r], filters))
        else:
            ranked = most_popular(cat.popularity, drop, k)
        return {"items": self._items(cat, ranked, [], cold=True), "model_version": b.version}

    def fallback(self, history: list[str], exclude: list[str], k: int | None, filters: dict | None,
                 sync=None) -> dict:
        """Without the model: items often watched with the user's recent history, then popular ones."""
        self.state.sync(sync)
        b = self.state.bundle
        cat = b.catalog
        k = k or self.default_k
        hist = cat.rows(history)
        ranked = cooccurrence_ranking(hist, cat.graph, cat.popularity, set(hist) | set(cat.rows(exclude)), k,
                                      keep=(lambda r: passes(cat.attributes[r], filters)) if filters else None)
        return {"items": self._items(cat, ranked, hist, cold=False), "model_version": b.version}

    def attribute_names(self) -> list[str]:
        cat = self.state.bundle.catalog
        return sorted({n for a in cat.attributes for n in a})
