"""Full-ranking NDCG@10 / HR@10 with the user's history removed, as ``EVALUATION.md`` defines them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distilrec.metrics import evaluate_scores, model_score_fn, ndcg_hr, rank_of_targets, target_ranks


SCORES = np.array([[0.5, 0.9, 0.5, 0.1, 0.5]])


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (0, 0),  # item 1 (0.9) is in the history, so nothing outranks item 0
        (2, 1),  # tie at 0.5 with items 0 and 4: the lower row (0) ranks first
        (4, 2),  # tie at 0.5: items 0 and 2 both rank ahead of row 4
        (3, 3),  # lowest score, after the three 0.5s
    ],
)
def test_rank_removes_history_and_breaks_ties_toward_lower_row(target, expected):
    ranks = rank_of_targets(SCORES, histories=[[1]], targets=np.array([target]))
    assert ranks.tolist() == [expected]


def test_rank_without_history_counts_higher_scores():
    ranks = rank_of_targets(SCORES, histories=[[]], targets=np.array([0]))
    assert ranks.tolist() == [1]  # item 1 (0.9) is not removed this time


def test_rank_is_per_user_and_does_not_modify_scores():
    scores = np.array([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    before = scores.copy()
    ranks = rank_of_targets(scores, histories=[[0, 1], []], targets=np.array([2, 0]))
    # user 0: items 0, 1 removed -> item 2 is first; user 1: item 0 is last of 4
    assert ranks.tolist() == [0, 3]
    np.testing.assert_array_equal(scores, before)


def test_ndcg_hr_hand_values():
    ranks = np.array([0, 1, 9, 10, 50])
    ndcg, hr = ndcg_hr(ranks, k=10)
    expected = (1.0 + 1.0 / math.log2(3) + 1.0 / math.log2(11)) / 5
    assert ndcg == pytest.approx(expected)
    assert hr == pytest.approx(3 / 5)


def test_ndcg_hr_k_boundary():
    assert ndcg_hr(np.array([9]), k=10) == pytest.approx((1 / math.log2(11), 1.0))
    assert ndcg_hr(np.array([10]), k=10) == (0.0, 0.0)
    assert ndcg_hr(np.array([0, 1]), k=1) == pytest.approx((0.5, 0.5))


def test_evaluate_scores_batches_and_matches_hand_value():
    n_items = 20
    # Item j scores -j for every user: the ranking is 0, 1, 2, ... with history removed.
    calls = []

    def score_fn(histories):
        calls.append(len(histories))
        return np.tile(-np.arange(n_items, dtype=float), (len(histories), 1))

    histories = [np.array([0, 1]), np.array([5]), np.array([], dtype=np.int64), np.array([3]), np.array([0])]
    targets = np.array([2, 15, 9, 12, 1])
    # ranks: user0 target 2 -> 0; user1 15 -> 14 (item 5 removed); user2 9 -> 9;
    #        user3 12 -> 11; user4 1 -> 0
    out = evaluate_scores(score_fn, histories, targets, k=10, batch_size=2)
    assert calls == [1, 2, 2]  # the first chunk, one user, tells the catalogue's size
    assert set(out) == {"ndcg@10", "hr@10"}
    expected_ndcg = (1.0 + 0.0 + 1.0 / math.log2(11) + 0.0 + 1.0) / 5
    assert out["ndcg@10"] == pytest.approx(expected_ndcg)
    assert out["hr@10"] == pytest.approx(3 / 5)
    assert evaluate_scores(score_fn, histories, targets, k=10, batch_size=256) == pytest.approx(out)


def test_evaluate_scores_key_names_follow_k():
    out = evaluate_scores(lambda h: np.ones((len(h), 4)), [np.array([0])], np.array([3]), k=5)
    assert set(out) == {"ndcg@5", "hr@5"}


def test_model_score_fn_returns_numpy_in_eval_mode(student):
    student.train()
    fn = model_score_fn(student)
    out = fn([np.array([1, 2]), np.array([3])])
    assert isinstance(out, np.ndarray)
    assert out.shape == (2, student.cfg.n_items)
    assert not student.training
    from distilrec.models import pad_histories

    with torch.no_grad():
        ref = student.score(pad_histories([[1, 2], [3]], student.cfg.n_items, student.cfg.max_len))
    np.testing.assert_allclose(out, ref.numpy(), rtol=1e-6, atol=1e-6)


def test_paired_ratio_is_the_ratio_of_means_with_a_paired_interval():
    from distilrec.metrics import paired_ratio

    rng = np.random.default_rng(1)
    b = rng.integers(0, 30, size=600)  # model b's ranks of 600 users' targets
    a = np.where(rng.random(600) < 0.3, np.maximum(b - 3, 0), b)  # a ranks some targets a little higher
    out = paired_ratio(a, b, resamples=1000)
    assert out["ratio"] == pytest.approx(ndcg_hr(a)[0] / ndcg_hr(b)[0], abs=1e-4)
    assert 1.0 < out["low"] < out["ratio"] < out["high"]  # a never ranks lower, so the interval stays above 1
    assert out["users"] == 600 and out["resamples"] == 1000 and out["level"] == 0.95
    # Pairing: the same users' difference is tighter than the two figures' own spread. Shuffling a's users
    # (the same figure, unpaired) widens the interval.
    unpaired = paired_ratio(rng.permutation(a), b, resamples=1000)
    assert unpaired["ratio"] == out["ratio"]
    assert unpaired["high"] - unpaired["low"] > 2 * (out["high"] - out["low"])
    assert paired_ratio(a, b, resamples=1000) == out  # seeded: the same interval every time


def test_paired_ratio_refuses_different_users_and_says_when_b_scores_nothing():
    from distilrec.metrics import paired_ratio

    with pytest.raises(ValueError, match="same users"):
        paired_ratio(np.zeros(5, int), np.zeros(6, int))
    out = paired_ratio(np.zeros(4, int), np.full(4, 50))  # b never hits the top 10
    assert out["ratio"] is None and out["low"] is None and out["high"] is None


def _ranks_in_memory(scores, histories, targets):
    """The ranking by its definition, all users at once: history scores set to -inf, then a stable
    descending sort (the lower row first among equal scores)."""
    s = np.array(scores, dtype=np.float64, copy=True)
    for i, h in enumerate(histories):
        h = np.asarray(h, dtype=np.int64)
        s[i, h[h != targets[i]]] = -np.inf
    order = np.argsort(-s, axis=1, kind="stable")
    return np.argmax(order == np.asarray(targets)[:, None], axis=1)


def test_chunked_ranking_equals_the_in_memory_one():
    rng = np.random.default_rng(0)
    users, n_items = 37, 50
    # rounded scores: many ties, which the rows' order must break the same way in both
    scores = np.round(rng.normal(size=(users, n_items)), 1).astype(np.float32)
    histories = [rng.choice(n_items, size=rng.integers(0, 12), replace=True) for _ in range(users)]
    targets = rng.integers(0, n_items, size=users)
    histories[0] = np.append(histories[0], targets[0])  # a target that recurs in its own history
    calls = []

    def score_fn(h):
        start = sum(calls)
        calls.append(len(h))
        return scores[start:start + len(h)]

    want = _ranks_in_memory(scores, histories, targets)
    got = target_ranks(score_fn, histories, targets, chunk_scores=3 * n_items)
    assert calls == [1] + [3] * 12  # chunks of chunk_scores // n_items users
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(rank_of_targets(scores, histories, targets), want)
