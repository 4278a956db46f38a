"""The free-text query blend (distilrec.query) and its cold-start benchmark (distilrec.bench.query)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from distilrec.bench.query import full_ranks, paired_difference, run_query_bench
from distilrec.metrics import rank_of_targets
from distilrec.query import (QUERY_WEIGHT, blend_query, minmax01, popularity_base, query_sims,
                             query_text_from_attributes)


def test_blend_min_max_scales_the_base_over_the_pool():
    base = np.array([-3.0, 1.0, 5.0])
    sims = np.array([0.5, -0.5, 0.0])
    out = blend_query(base, sims, weight=0.25)
    np.testing.assert_allclose(out, 0.75 * np.array([0.0, 0.5, 1.0]) + 0.25 * sims)
    # the scale of the base does not matter, only its order and spacing
    np.testing.assert_allclose(blend_query(base * 1000 + 7, sims, 0.25), out)
    assert out.shape == (3,) and out.dtype == np.float64


def test_blend_constant_pool_is_ordered_by_the_query():
    sims = np.array([0.1, 0.7, 0.3])
    np.testing.assert_allclose(blend_query(np.full(3, 4.0), sims, 0.5), 0.5 * sims)
    np.testing.assert_allclose(minmax01(np.array([2.0])), [0.0])


def test_blend_nan_and_infinities():
    base = np.array([np.nan, 1.0, 3.0, -np.inf, np.inf])
    np.testing.assert_allclose(minmax01(base), [0.0, 0.0, 1.0, 0.0, 1.0])
    out = blend_query(base, np.zeros(5), 0.5)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(minmax01(np.array([np.nan, -np.inf])), [0.0, 0.0])


@pytest.mark.parametrize("weight", [-0.01, 1.01, float("nan"), float("inf")])
def test_blend_refuses_weights_outside_0_1(weight):
    with pytest.raises(ValueError, match="weight"):
        blend_query(np.zeros(2), np.zeros(2), weight)


def test_blend_weight_ends_and_shapes():
    base, sims = np.array([3.0, 1.0, 2.0]), np.array([-1.0, 1.0, 0.0])
    assert np.argsort(-blend_query(base, sims, 0.0)).tolist() == [0, 2, 1]   # the model's order
    np.testing.assert_allclose(blend_query(base, sims, 1.0), sims)          # the query alone
    assert 0.0 <= QUERY_WEIGHT <= 1.0
    with pytest.raises(ValueError, match="shape"):
        blend_query(np.zeros(3), np.zeros(2))


def test_popularity_base_is_log1p_and_keeps_the_order():
    counts = np.array([0, 3, 100, 1])
    np.testing.assert_allclose(popularity_base(counts), np.log1p(counts))
    assert np.argsort(-popularity_base(counts), kind="stable").tolist() == [2, 1, 3, 0]
    with pytest.raises(ValueError):
        popularity_base(np.array([1.0, -1.0]))


def test_query_sims_cosine_with_unnormalised_inputs():
    rng = np.random.default_rng(0)
    items = rng.normal(size=(5, 4))
    q = rng.normal(size=4)
    expected = items @ q / np.linalg.norm(items, axis=1) / np.linalg.norm(q)
    np.testing.assert_allclose(query_sims(3 * q, items), expected)
    items[2] = 0.0
    assert query_sims(q, items)[2] == 0.0
    np.testing.assert_allclose(query_sims(np.zeros(4), items), np.zeros(5))
    with pytest.raises(ValueError):
        query_sims(np.zeros(3), items)


def test_query_text_from_attributes():
    assert query_text_from_attributes({"genres": ["Comedy", " Drama "], "tags": ["x"]}) == "Comedy Drama"
    assert query_text_from_attributes({"tags": ["x"]}) == ""
    assert query_text_from_attributes({"genres": ["(no genres listed)"]}) == ""
    assert query_text_from_attributes({"genres": ["A"], "tags": ["b"]}, names=("genres", "tags")) == "A b"


def test_full_ranks_match_the_protocols_ranking():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 4, size=50).astype(float)   # many ties
    targets = rng.integers(0, 50, size=20)
    expected = rank_of_targets(np.broadcast_to(scores, (20, 50)), [[]] * 20, targets)
    assert full_ranks(scores, targets).tolist() == expected.tolist()


def test_paired_difference_interval_holds_the_difference():
    a = np.array([1.0, 0, 1, 1, 0, 1])
    out = paired_difference(a, a, resamples=100)
    assert out == {"diff": 0.0, "low": 0.0, "high": 0.0}
    b = np.zeros(6)
    out = paired_difference(a, b, resamples=300, seed=1)
    assert out["low"] <= out["diff"] <= out["high"] and out["diff"] == round(4 / 6, 4)


def test_run_query_bench_on_a_tiny_synthetic_dataset(tmp_path):
    out = tmp_path / "out"
    result = run_query_bench("synthetic:users=40,items=30,seed=0", "tiny", str(out), weights=(0.25, 1.0),
                             resamples=100, command="distilrec bench query (test)")
    saved = json.loads((out / "query.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert "query, w = 0.5 (default)" in (out / "query.md").read_text()
    assert result["dataset"]["users"] == 40 and result["dataset"]["items"] <= 30
    assert result["weights"] == [0.25, QUERY_WEIGHT, 1.0] and result["default_weight"] == QUERY_WEIGHT
    assert result["encoder"]["name"] == "tiny" and result["encoder"]["dim"] > 0
    assert result["machine"]["nproc"] >= 1
    assert result["date"] and result["command"] == "distilrec bench query (test)"
    for stage in ("test", "val"):
        s = result["stages"][stage]
        assert s["users_evaluated"] + s["users_skipped_no_genre"] == s["users"] == 40
        assert s["users_evaluated"] > 0 and s["distinct_queries"] > 0
        assert set(s["rows"]) == {"popularity", "query w=0.25", "query w=0.5", "query w=1"}
        for row in s["rows"].values():
            assert 0.0 <= row["hr@10"] <= 1.0 and 0.0 <= row["ndcg@10"] <= 1.0
            assert row["ndcg@10"] <= row["hr@10"]
            for d in row.get("minus_popularity", {}).values():
                assert d["low"] <= d["diff"] <= d["high"]
    assert result["weight_choice"]["default"] == QUERY_WEIGHT
    assert result["weight_choice"]["validation_best"] in result["weights"]
    assert "per_user" not in result["stages"]["test"]
    # the item embeddings are cached where the pipeline caches them (OUT/cache)
    assert list((out / "cache").glob("text-emb-*.npy"))
