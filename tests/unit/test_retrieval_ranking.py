"""Serving-side core without Ray: retrieval (exact and faiss agree), attributes, the item graph,
filters, diversity, explanations and the co-occurrence fallback."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distilrec.catalog import Catalog, HistoryLog, ItemGraph, StringColumn, parse_attributes
from distilrec.ranking import cooccurrence_ranking, explain, mmr, passes
from distilrec.retrieval import RetrievalChoice, make_retrieval, recall_at


def test_faiss_finds_what_exact_finds():
    pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(0)
    items, users = torch.randn(500, 16, generator=g), torch.randn(8, 16, generator=g)
    exact, approx = make_retrieval("exact", items), make_retrieval("faiss", items)
    _, e = exact.search(users, 10)
    s, a = approx.search(users, 10)
    overlap = np.mean([len(set(e[b].tolist()) & set(a[b].tolist())) / 10 for b in range(8)])
    assert overlap >= 0.9
    assert torch.all(s[:, :-1] >= s[:, 1:])
    # New items join the index; a replaced row is found by its new vector only.
    for r in (exact, approx):
        r.add(users[:1] * 100)
        assert r.search(users[:1], 1)[1].tolist() == [[500]]
        r.replace(500, -users[0] * 100)
        assert 500 not in r.search(users[:1], 5)[1][0].tolist()


def test_unknown_retrieval_is_refused():
    with pytest.raises(ValueError, match="'exact', 'faiss' or 'auto'"):
        make_retrieval("annoy", torch.eye(2))
    with pytest.raises(ValueError, match="'exact', 'faiss' or 'auto'"):
        make_retrieval(RetrievalChoice("annoy"), torch.eye(2))


def test_auto_takes_faiss_from_the_threshold_on():
    pytest.importorskip("faiss")
    items = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    assert make_retrieval("auto", items).kind == "exact"  # the default threshold, 100,000 items
    assert make_retrieval(RetrievalChoice("auto", faiss_min_items=51), items).kind == "exact"
    assert make_retrieval(RetrievalChoice("auto", faiss_min_items=50), items).kind == "faiss"
    assert make_retrieval(RetrievalChoice("exact", faiss_min_items=0), items).kind == "exact"
    assert make_retrieval("faiss", items).kind == "faiss"


def test_auto_without_faiss_scores_every_item_and_warns_once(monkeypatch, caplog):
    import distilrec.retrieval as retrieval

    monkeypatch.setattr(retrieval, "faiss_available", lambda: False)
    monkeypatch.setattr(retrieval, "_warned_no_faiss", False)
    items = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    with caplog.at_level("WARNING", logger="distilrec.retrieval"):
        kinds = [make_retrieval(RetrievalChoice("auto", 10), items).kind for _ in range(2)]
    assert kinds == ["exact", "exact"]
    assert [r.message for r in caplog.records if "faiss is not installed" in r.message] and \
        len([r for r in caplog.records if "faiss is not installed" in r.message]) == 1


def test_recall_of_hnsw_against_exact():
    pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(1)
    items, users = torch.randn(2000, 16, generator=g), torch.randn(20, 16, generator=g)
    exact = make_retrieval("exact", items)
    assert recall_at(exact, exact, users, n=100) == 1.0
    assert 0.9 <= recall_at(make_retrieval("faiss", items), exact, users, n=100) <= 1.0


def test_attributes_from_item_text():
    assert parse_attributes("Dr. No (1962)", "Dr. No (1962). genres: Action, Thriller. tags: bond, 007") == {
        "genres": ["Action", "Thriller"], "tags": ["bond", "007"]}
    assert parse_attributes("Plain", "Plain") == {}


def _catalog() -> Catalog:
    titles = ["A", "B", "C", "D"]
    attrs = [{"genres": ["Comedy"]}, {"genres": ["Drama"]}, {"genres": ["Comedy", "Drama"]}, {"genres": ["Horror"]}]
    emb = np.eye(4, dtype=np.float32)
    return Catalog(["a", "b", "c", "d"], titles, attrs, emb, histories=[[0, 1], [0, 1], [1, 3]])


def test_catalog_graph_popularity_and_new_items():
    cat = _catalog()
    assert cat.popularity.tolist() == [2, 3, 0, 1]
    assert cat.graph.weight(0, 1) == 2 and cat.graph.weight(1, 3) == 1 and cat.graph.weight(0, 3) == 0
    assert cat.add("a", "A2", {}, np.ones(4)) is None  # a trained id stays as trained
    assert cat.add("n", "New", {"genres": ["Horror"]}, np.ones(4)) == 4
    assert cat.add("n", "Newer", {"genres": ["Comedy"]}, np.ones(4)) == 4 and cat.titles[4] == "Newer"
    assert cat.add("w", "Wrong width", {}, np.ones(3)) is None
    assert len(cat) == 5 and np.isclose(np.linalg.norm(cat.text_emb[4]), 1.0)


def test_filters_and_diversity():
    cat = _catalog()
    keep = [r for r in range(4) if passes(cat.attributes[r], {"genres": ["comedy"]})]
    assert keep == [0, 2]
    assert passes(cat.attributes[3], {"genres": ["Horror"], "tags": ["x"]}) is False
    vecs = np.array([[1, 0], [0.99, 0.14], [0, 1], [0.7, 0.7]], dtype=np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    cands = [(0, 1.0), (1, 0.95), (2, 0.5), (3, 0.4)]
    assert [r for r, _ in mmr(cands, vecs, 3, 0.0)] == [0, 1, 2]
    assert [r for r, _ in mmr(cands, vecs, 2, 0.5)] == [0, 2]  # the near-duplicate 1 is passed over
    assert dict(mmr(cands, vecs, 4, 0.5)) == dict(cands)  # scores are the model's


def test_explanations_and_fallback():
    cat = _catalog()
    assert explain(1, [0], cat.graph, cat.attributes, cat.titles) == "because you watched A (often watched together)"
    assert explain(2, [3, 0], cat.graph, cat.attributes, cat.titles) == \
        "because you watched A (shared genres: comedy)"
    assert explain(3, [2], cat.graph, cat.attributes, cat.titles) == "recommended from your history"
    assert explain(3, [], cat.graph, cat.attributes, cat.titles) == "popular with everyone"
    ranked = cooccurrence_ranking([0], cat.graph, cat.popularity, drop={0}, k=3)
    assert [r for r, _ in ranked] == [1, 3, 2]  # the neighbour, then popularity
    comedy = cooccurrence_ranking([0], cat.graph, cat.popularity, drop={0}, k=3,
                                  keep=lambda r: passes(cat.attributes[r], {"genres": ["Comedy"]}))
    assert [r for r, _ in comedy] == [2]


def test_item_graph_keeps_the_strongest_neighbours():
    g = ItemGraph.from_histories([[0, 1]] * 3 + [[0, 2]], n_items=3, window=1, top=1)
    assert g.neighbours[0] == {1: 3.0}


def test_item_graph_from_a_log_equals_the_pairs_counted_one_by_one():
    rng = np.random.default_rng(0)
    hists = [rng.integers(0, 30, rng.integers(0, 12)).tolist() for _ in range(60)]
    g = ItemGraph.from_histories(HistoryLog.from_lists(hists), n_items=30, window=3, top=5)
    counts: dict[tuple[int, int], float] = {}
    for h in hists:  # every pair within 3 positions of one user's history, both ways, not an item with itself
        for i in range(len(h)):
            for j in range(i + 1, min(len(h), i + 4)):
                if h[i] != h[j]:
                    counts[h[i], h[j]] = counts.get((h[i], h[j]), 0) + 1
                    counts[h[j], h[i]] = counts.get((h[j], h[i]), 0) + 1
    for r in range(30):
        mine = sorted(((c, w) for (a, c), w in counts.items() if a == r), key=lambda x: (-x[1], x[0]))[:5]
        assert g.neighbours[r] == dict(mine), r
    g.extend(32)
    assert len(g) == 32 and g.row(31) == ([], []) and g.row(99) == ([], [])


def test_catalog_holds_titles_and_shared_attributes_compactly():
    attrs = [{"genres": ["Comedy"]}, {"genres": ["Comedy"]}, {"genres": ["Drama"]}]
    cat = Catalog(["a", "b", "c"], ["Á", "B", "C"], attrs, np.eye(3, dtype=np.float32), [[0, 1, 2]])
    assert isinstance(cat.titles, StringColumn) and list(cat.titles) == ["Á", "B", "C"]
    assert cat.attributes == attrs and cat.attributes[0] is cat.attributes[1]  # one dict for equal attributes
    assert cat.values[0] is cat.values[1] and cat.values[2] == frozenset({("genres", "drama")})
    assert cat.attribute_names() == {"genres"}
    assert cat.add("n", "N", {"tags": ["x"]}, np.ones(3)) == 3 and cat.attribute_names() == {"genres", "tags"}
    assert cat.add("n", "N2", {"genres": ["Drama"]}, np.ones(3)) == 3
    assert cat.titles[3] == "N2" and cat.attributes[3] is cat.attributes[2] and cat.values[3] is cat.values[2]
    with pytest.raises(IndexError):
        cat.titles[0] = "no"
