"""``load_dataset(spec)`` parsing and the synthetic generator."""

from __future__ import annotations

import numpy as np
import pytest

from distilrec.data import load_dataset
from distilrec.data.synthetic import generate


def _same(a, b) -> bool:
    return (
        a.item_ids == b.item_ids and a.titles == b.titles and a.texts == b.texts and a.user_ids == b.user_ids
        and len(a.sequences) == len(b.sequences)
        and all(np.array_equal(x, y) for x, y in zip(a.sequences, b.sequences))
    )


def test_spec_options_reach_the_generator():
    ds = load_dataset("synthetic:users=30,items=40,seed=3,min_len=4,max_len=9,p_series=0.7,p_topic=0.2")
    assert _same(ds, generate(users=30, items=40, seed=3, min_len=4, max_len=9, p_series=0.7, p_topic=0.2))
    assert ds.n_users == 30
    assert ds.n_items <= 40
    assert all(3 <= len(s) <= 9 for s in ds.sequences)
    assert ds.name == "synthetic(users=30,items=40,seed=3)"


def test_plain_synthetic_uses_the_defaults():
    # "synthetic" and "synthetic:" both mean the defaults (1000 users, 300 items, seed 0)
    ds = load_dataset("synthetic")
    assert ds.n_users == 1000 and ds.n_items <= 300
    assert ds.name == "synthetic(users=1000,items=300,seed=0)"


@pytest.mark.parametrize("spec, named", [
    ("synthetic:user=10", "user=10"),
    ("synthetic:users=10,colour=red", "colour=red"),
    ("synthetic:users", "users"),
])
def test_bad_synthetic_option_names_it(spec, named):
    with pytest.raises(ValueError) as info:
        load_dataset(spec)
    msg = str(info.value)
    assert repr(named) in msg
    assert "users" in msg and "items" in msg  # says which options exist


def test_non_numeric_option_is_a_clear_error():
    with pytest.raises(ValueError, match=r"users='ten' is not a number"):
        load_dataset("synthetic:users=ten")


@pytest.mark.parametrize("spec", ["imdb:foo", "", "Synthetic"])
def test_unknown_kind_is_an_error(spec):
    with pytest.raises(ValueError, match="unknown dataset spec"):
        load_dataset(spec)


def test_movielens_without_path_is_an_error():
    with pytest.raises(ValueError, match="needs a path"):
        load_dataset("movielens:")


def test_movielens_missing_folder_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no MovieLens files"):
        load_dataset(f"movielens:{tmp_path}")


def test_synthetic_same_seed_same_data():
    assert _same(generate(users=40, items=30, seed=7), generate(users=40, items=30, seed=7))


def test_synthetic_different_seed_different_data():
    a, b = generate(users=40, items=30, seed=7), generate(users=40, items=30, seed=8)
    assert any(not np.array_equal(x, y) for x, y in zip(a.sequences, b.sequences))


def test_synthetic_users_never_repeat_an_item():
    ds = generate(users=60, items=25, seed=2, min_len=5, max_len=20)
    for seq in ds.sequences:
        assert len(np.unique(seq)) == len(seq)


def test_synthetic_is_time_ordered_and_has_text():
    ds = generate(users=20, items=30, seed=0)
    for ts in ds.timestamps:
        assert np.all(np.diff(ts) > 0)
    assert len(ds.texts) == ds.n_items
    assert all("genres:" in t for t in ds.texts)


def test_synthetic_rejects_degenerate_sizes():
    with pytest.raises(ValueError, match="users >= 1 and items >= 2"):
        generate(users=0, items=10)
    with pytest.raises(ValueError, match="users >= 1 and items >= 2"):
        load_dataset("synthetic:items=1")
