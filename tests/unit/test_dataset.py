"""``Dataset.from_interactions`` and the leave-one-out ``Split`` of ``EVALUATION.md``."""

from __future__ import annotations

import numpy as np
import pytest

from distilrec.data.dataset import MIN_INTERACTIONS, Dataset, Split


def _items(ds: Dataset, u: int) -> list[str]:
    return [ds.item_ids[i] for i in ds.sequences[u]]


def test_users_with_fewer_than_three_interactions_are_dropped(toy_dataset):
    assert MIN_INTERACTIONS == 3
    assert toy_dataset.user_ids == ["u1", "u2", "u3"]
    assert toy_dataset.n_users == 3
    assert toy_dataset.n_interactions == 3 + 4 + 5


def test_catalogue_is_the_items_of_kept_users(toy_dataset):
    # "z" was only seen by the dropped user u4
    assert sorted(toy_dataset.item_ids) == ["a", "b", "c", "d", "e", "f"]
    assert toy_dataset.n_items == 6
    assert len(set(toy_dataset.item_ids)) == toy_dataset.n_items
    # titles and texts are aligned with the item rows
    assert toy_dataset.titles == [i.upper() for i in toy_dataset.item_ids]
    assert toy_dataset.texts == [f"{i.upper()} text" for i in toy_dataset.item_ids]


def test_sequences_are_in_time_order(toy_dataset):
    assert _items(toy_dataset, 0) == ["a", "b", "c"]
    assert _items(toy_dataset, 1) == ["b", "d", "a", "e"]
    assert _items(toy_dataset, 2) == ["a", "f", "b", "d", "c"]  # input order was c, a, f, b, d
    assert toy_dataset.timestamps[2].tolist() == [1, 2, 3, 4, 5]
    for seq in toy_dataset.sequences:
        assert seq.dtype == np.int64
        assert seq.min() >= 0 and seq.max() < toy_dataset.n_items


def test_timestamp_ties_keep_input_order():
    ds = Dataset.from_interactions(
        "ties",
        users=["u", "v", "u", "v", "u", "u", "v"],
        items=["x", "p", "y", "q", "w", "z", "r"],
        timestamps=[5, 7, 5, 7, 1, 5, 7],
        item_text={},
    )
    assert _items(ds, ds.user_ids.index("u")) == ["w", "x", "y", "z"]
    assert _items(ds, ds.user_ids.index("v")) == ["p", "q", "r"]


def test_missing_item_text_falls_back_to_the_id():
    ds = Dataset.from_interactions("t", ["u"] * 3, ["a", "b", "c"], [1, 2, 3], {"a": ("Alpha", "Alpha text")})
    row = {it: i for i, it in enumerate(ds.item_ids)}
    assert ds.titles[row["a"]] == "Alpha" and ds.texts[row["a"]] == "Alpha text"
    assert ds.titles[row["b"]] == "b" and ds.texts[row["b"]] == "b"


def test_ids_are_strings():
    ds = Dataset.from_interactions("n", [7, 7, 7], [1, 2, 3], [1, 2, 3], {})
    assert ds.user_ids == ["7"]
    assert sorted(ds.item_ids) == ["1", "2", "3"]


def test_summary(toy_dataset):
    assert toy_dataset.summary() == {"name": "toy", "users": 3, "items": 6, "interactions": 12}


def test_min_interactions_can_be_lowered():
    ds = Dataset.from_interactions("m", ["u", "u", "v"], ["a", "b", "a"], [1, 2, 3], {}, min_interactions=1)
    assert sorted(ds.user_ids) == ["u", "v"]


def test_empty_input_is_an_error():
    with pytest.raises(ValueError, match="no interactions"):
        Dataset.from_interactions("empty", [], [], [], {})


def test_no_user_with_enough_interactions_is_an_error():
    with pytest.raises(ValueError, match="at least 3"):
        Dataset.from_interactions("short", ["u", "u", "v"], ["a", "b", "c"], [1, 2, 3], {})


def test_mismatched_columns_are_an_error():
    with pytest.raises(ValueError, match="same length"):
        Dataset.from_interactions("bad", ["u", "u", "u"], ["a", "b"], [1, 2, 3], {})


# -------------------------------------------------------------------------------------------- Split

def test_leave_one_out_last_is_test_second_to_last_is_val(toy_dataset):
    split = Split.leave_one_out(toy_dataset)
    assert [toy_dataset.item_ids[i] for i in split.test_target] == ["c", "e", "c"]
    assert [toy_dataset.item_ids[i] for i in split.val_target] == ["b", "a", "d"]
    assert [[toy_dataset.item_ids[i] for i in h] for h in split.train] == [["a"], ["b", "d"], ["a", "f", "b"]]
    assert split.test_target.dtype == np.int64 and split.val_target.dtype == np.int64
    assert split.targets("test").tolist() == split.test_target.tolist()
    assert split.targets("val").tolist() == split.val_target.tolist()


def test_histories_val_is_train_and_test_is_train_plus_val_target(toy_dataset):
    split = Split.leave_one_out(toy_dataset)
    for h, tr in zip(split.histories("val"), split.train):
        assert h.tolist() == tr.tolist()
    for u, h in enumerate(split.histories("test")):
        assert h.tolist() == split.train[u].tolist() + [int(split.val_target[u])]
        # the test history is the whole sequence without its last item
        assert h.tolist() == toy_dataset.sequences[u][:-1].tolist()


def test_histories_unknown_stage_is_an_error(toy_dataset):
    with pytest.raises(ValueError, match="unknown stage"):
        Split.leave_one_out(toy_dataset).histories("train")


def test_validation_sample_is_fixed_and_only_when_there_are_many_users():
    split = Split(train=[np.arange(3)] * 50, val_target=np.arange(50), test_target=np.arange(50))
    assert split.val_sample(None) is None and split.val_sample(50) is None
    users = split.val_sample(20)
    assert len(users) == len(set(users.tolist())) == 20 and (np.diff(users) > 0).all()
    np.testing.assert_array_equal(users, split.val_sample(20))  # the same for every epoch and model
    assert not np.array_equal(users, split.val_sample(20, seed=1))
