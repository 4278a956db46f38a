"""Popularity and EASE (Steck, WWW 2019) against values computed by hand / straight from the formula."""

from __future__ import annotations

import numpy as np
import pytest

from distilrec.baselines import EASE, EASE_LAMBDAS, Popularity, interaction_matrix

# 4 users x 3 items, unequal item popularity (3, 2, 2) so that a transposed B would differ.
HIST = [np.array([0, 1]), np.array([0]), np.array([0, 1, 2]), np.array([2])]
X = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 1]], dtype=np.float64)


def test_interaction_matrix_is_binary_and_counts_duplicates_once():
    m = interaction_matrix([np.array([0, 0, 2]), np.array([1])], n_items=3)
    assert m.shape == (2, 3)
    np.testing.assert_array_equal(m.toarray(), [[1, 0, 1], [0, 1, 0]])


def test_popularity_counts_and_scores():
    pop = Popularity.fit([np.array([0, 1]), np.array([1, 3]), np.array([1])], n_items=5)
    np.testing.assert_array_equal(pop.counts, [1, 3, 0, 1, 0])
    scores = pop.score([np.array([0]), np.array([2])])
    assert scores.shape == (2, 5)
    np.testing.assert_array_equal(scores[0], [1, 3, 0, 1, 0])
    np.testing.assert_array_equal(scores[1], [1, 3, 0, 1, 0])


def test_ease_two_items_by_hand():
    # X = [[1,1],[1,0],[0,1]]: XᵀX + I = [[3,1],[1,3]], P = [[3,-1],[-1,3]]/8, B_01 = -P_01/P_11 = 1/3.
    ease = EASE.fit([np.array([0, 1]), np.array([0]), np.array([1])], n_items=2, lam=1.0)
    np.testing.assert_allclose(ease.weights, [[0.0, 1 / 3], [1 / 3, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(ease.score([np.array([0])]), [[0.0, 1 / 3]], rtol=1e-6)


@pytest.mark.parametrize("lam", [0.5, 10.0])
def test_ease_matches_closed_form(lam):
    ease = EASE.fit(HIST, n_items=3, lam=lam)
    p = np.linalg.inv(X.T @ X + lam * np.eye(3))
    expected = np.empty((3, 3))
    for i in range(3):
        for j in range(3):
            expected[i, j] = 0.0 if i == j else -p[i, j] / p[j, j]
    assert ease.weights.shape == (3, 3)
    assert ease.lam == lam
    np.testing.assert_allclose(ease.weights, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(np.diag(ease.weights), 0.0)


def test_ease_solves_its_constrained_least_squares():
    # min ||X - XB||² + λ||B||² with diag(B) = 0: the gradient is zero off the diagonal, i.e.
    # ((XᵀX + λI) B - XᵀX)_ij = 0 for i != j.
    lam = 2.0
    b = EASE.fit(HIST, n_items=3, lam=lam).weights.astype(np.float64)
    grad = (X.T @ X + lam * np.eye(3)) @ b - X.T @ X
    off = grad[~np.eye(3, dtype=bool)]
    np.testing.assert_allclose(off, 0.0, atol=1e-5)


def test_ease_scores_are_history_times_b():
    ease = EASE.fit(HIST, n_items=3, lam=1.0)
    hist = [np.array([1]), np.array([0, 2])]
    x = np.array([[0, 1, 0], [1, 0, 1]], dtype=np.float64)
    np.testing.assert_allclose(ease.score(hist), x @ ease.weights, rtol=1e-6)


def test_ease_lambda_grid_is_the_protocols():
    assert tuple(EASE_LAMBDAS) == (10.0, 50.0, 200.0, 500.0)


def test_ease_refuses_a_catalogue_above_its_limit_with_the_reason():
    from distilrec.baselines import CatalogueTooLarge

    with pytest.raises(CatalogueTooLarge, match=r"EASE refused: 3 items is above its limit of 2 \(ease_max_items\)"):
        EASE.fit(HIST, n_items=3, lam=1.0, max_items=2)
    assert EASE.fit(HIST, n_items=3, lam=1.0, max_items=3).weights.shape == (3, 3)
