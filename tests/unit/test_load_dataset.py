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


def _series_share(seqs, topic_of, position) -> float:
    """The share of consecutive pairs where the next item is one of the next 3 of the last one's series."""
    hits = total = 0
    for s in seqs:
        a, b = s[:-1], s[1:]
        step = position[b] - position[a]
        hits += int(((topic_of[a] == topic_of[b]) & (step >= 1) & (step <= 3)).sum())
        total += len(a)
    return hits / total


def test_chunked_synthetic_is_written_once_as_integer_parquet_and_keeps_the_structure(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from distilrec.data import synthetic

    monkeypatch.setenv("DISTILREC_DATA_DIR", str(tmp_path))
    spec = "synthetic:users=1500,items=400,seed=4,min_len=6,max_len=20,chunked=1"
    ds = load_dataset(spec)
    folder = next((tmp_path / "synthetic").iterdir())
    table = pq.read_table(folder / synthetic.INTERACTIONS_FILE)
    assert [str(t) for t in table.schema.types] == ["int32", "int32", "int64"]
    assert ds.name == "synthetic(users=1500,items=400,seed=4)" and ds.n_users == 1500
    assert ds.sequences[0].dtype == np.int32 and len(ds.timestamps[0]) == len(ds.sequences[0])
    assert all(len(set(s.tolist())) == len(s) and 3 <= len(s) <= 20 for s in ds.sequences)  # no repeats
    assert all((np.diff(t) > 0).all() for t in ds.timestamps)
    assert ds.texts[0].startswith(ds.titles[0] + ". genres: ")
    mtime = (folder / synthetic.INTERACTIONS_FILE).stat().st_mtime_ns
    again = load_dataset(spec)  # read back, not written again
    assert (folder / synthetic.INTERACTIONS_FILE).stat().st_mtime_ns == mtime and _same(ds, again)
    # the same sequential structure as the in-memory generator: about p_series of the steps continue a
    # series (a few more: popular picks of the same topic land there too)
    cat = synthetic._catalogue(400, np.random.default_rng([4, 0]))
    rows = np.array([int(i) for i in ds.item_ids])
    chunked_share = _series_share([rows[s] for s in ds.sequences], cat["topic_of"], cat["position"])
    small = generate(users=1500, items=400, seed=4, min_len=6, max_len=20)
    topic = {t: k for k, t in enumerate(dict.fromkeys(x.split("genres: ")[1] for x in small.texts))}
    topic_of = np.array([topic[x.split("genres: ")[1]] for x in small.texts])
    # positions: the series order is the item id's order within its topic (ids are i<row>)
    ids = np.array([int(i[1:]) for i in small.item_ids])
    position = np.empty(len(ids), dtype=np.int64)
    for t in range(len(topic)):
        m = np.flatnonzero(topic_of == t)
        position[m[np.argsort(ids[m])]] = np.arange(len(m))
    memory_share = _series_share(small.sequences, topic_of, position)
    assert 0.5 < chunked_share < 0.7 and abs(chunked_share - memory_share) < 0.05, (chunked_share, memory_share)


def test_large_synthetic_specs_go_chunked(monkeypatch, tmp_path):
    from distilrec.data import synthetic

    monkeypatch.setenv("DISTILREC_DATA_DIR", str(tmp_path))
    seen = []
    monkeypatch.setattr(synthetic, "write_parquet", lambda folder, **kw: seen.append(kw) or _stop())
    with pytest.raises(_Stop):
        load_dataset(f"synthetic:users={synthetic.CHUNKED_ABOVE_USERS + 1},items=10")
    with pytest.raises(_Stop):
        load_dataset(f"synthetic:users=10,items={synthetic.CHUNKED_ABOVE_ITEMS + 1}")
    assert load_dataset("synthetic:users=10,items=20,chunked=0").n_users == 10 and len(seen) == 2


class _Stop(Exception):
    pass


def _stop():
    raise _Stop
