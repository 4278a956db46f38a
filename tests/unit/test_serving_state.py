"""Per-replica serving state without a cluster: the model scorer and the ingress's bundle built from a
real artifact (student and teacher), a request scored and ranked in process, new items from the store,
a version swap, a refused artifact, an artifact written before the ``attributes`` column existed, and a
text encoder loaded from a URI."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
import torch

from distilrec.artifacts import ItemTable, load_artifact, write_artifact
from distilrec.stores import NewItem, open_event_store
from distilrec.serving import ModelScorer, ScoreRequest, ServingBundle, rank, rank_with_query, user_features
from services.state import ServingState

N_ITEMS = 12  # the conftest fixtures' catalogue


@pytest.fixture
def out(tmp_path, text_emb, student, teacher):
    ids = [f"m{i}" for i in range(N_ITEMS)]
    genres = ["red", "blue", "green"]
    items = ItemTable(ids, [f"T{i}" for i in ids], [f"T{i}. genres: {genres[n % 3]}" for n, i in enumerate(ids)],
                      text_emb.numpy())
    hist = pd.DataFrame({"user_id": ["u1"] * 4 + ["u2"] * 3, "item_id": ["m0", "m1", "m2", "m3", "m1", "m2", "m4"],
                         "timestamp": range(7)})
    write_artifact(str(tmp_path / "out"), items=items, histories=hist, student=student, teacher=teacher,
                   dataset={"name": "toy"}, metrics={}, encoder=None, version="v1")
    return tmp_path / "out"


@pytest.fixture
def store(tmp_path):
    with open_event_store(f"sqlite://{tmp_path / 'events.db'}") as s:
        yield s


def _new(item_id: str, emb: np.ndarray) -> NewItem:
    return NewItem(item_id, item_id.upper(), "text", {"genres": ["red"]}, emb.astype(np.float32), "enc")


def _search(bundle: ModelScorer, history: list[str], n: int = N_ITEMS + 5) -> list[str]:
    from distilrec.models import pad_histories

    rows = [bundle.index[i] for i in history]
    with torch.no_grad():
        users = bundle.model.user_vector(pad_histories([rows], bundle.pad, bundle.max_len))
        _, top = bundle.retrieval.search(users, n)
    return [bundle.item_ids[r] for r in top[0].tolist()]


@pytest.mark.parametrize("which", ["student", "teacher"])
def test_scorer_serves_either_model_and_new_items_join(out, store, which, text_emb):
    state = ServingState(str(out), lambda art: ModelScorer.build(art, which, "exact"), store, poll_s=0,
                         with_teacher=which == "teacher")
    assert state.bundle.version == "v1" and len(_search(state.bundle, ["m0"])) == N_ITEMS
    # A new item with the text of m5 gets (about) m5's vector: it ranks right next to it.
    store.add_items([_new("fresh", text_emb[5].numpy())])
    state.sync(None)
    ranked = _search(state.bundle, ["m0", "m1"])
    assert "fresh" in ranked and abs(ranked.index("fresh") - ranked.index("m5")) <= 1
    state.sync(None)  # nothing new: nothing added twice
    assert _search(state.bundle, ["m0"]).count("fresh") == 1


def test_a_request_scored_and_ranked_in_process_never_returns_seen_or_excluded_items(out, store, text_emb):
    state = ServingState(str(out), ServingBundle.build, store, poll_s=0)
    b = state.bundle
    feats = user_features(b, store, "u1", ["m5"])
    assert feats.items == ["m0", "m1", "m2", "m3", "m5"] and feats.known_user and feats.store_ok
    reqs = [ScoreRequest(tuple(feats.items), tuple(feats.timestamps), 3, exclude=("m6",)),
            ScoreRequest(("m1",), None, N_ITEMS)]
    first, second = b.scorer.score(reqs)
    assert len(first.item_ids) == 3 and not set(first.item_ids) & {"m0", "m1", "m2", "m3", "m5", "m6"}
    assert first.scores == sorted(first.scores, reverse=True) and first.batch == 2
    assert len(second.item_ids) == N_ITEMS - 1 and "m1" not in second.item_ids  # all but the history
    items = rank(b.catalog, first.item_ids, first.scores, feats.items, ["m6"], k=2)
    assert [it["item_id"] for it in items] == first.item_ids[:2] and all(it["explanation"] for it in items)
    q = rank_with_query(b.catalog, text_emb[7].numpy(), "like m7", None, None, [], [], k=3)
    assert q[0]["item_id"] == "m7" and "like m7" in q[0]["explanation"]  # the query's own text comes first


def test_swap_to_a_newer_version_and_refuse_a_broken_one(out, store, student, teacher, text_emb):
    state = ServingState(str(out), ServingBundle.build, store, poll_s=0)
    store.add_items([_new("fresh", text_emb[0].numpy())])
    assert state.check() is False  # nothing newer
    old = state.bundle
    art = load_artifact(str(out))
    write_artifact(str(out), items=art.items, histories=pd.DataFrame({"user_id": ["u1"], "item_id": ["m0"],
                                                                       "timestamp": [1]}),
                   student=student, teacher=teacher, dataset={"name": "toy"}, metrics={}, encoder=None, version="v2")
    assert state.check() is True
    assert state.bundle.version == "v2" and old.version == "v1"
    assert "fresh" in state.bundle.catalog.index  # a new bundle gets every stored new item before the swap
    (out / "models" / "v3").mkdir()
    (out / "models" / "v3" / "manifest.json").write_text(json.dumps({"format": 1, "version": "v3"}))
    (out / "models" / "LATEST").write_text("v3")
    assert state.check() is False
    assert state.bundle.version == "v2"
    assert state.last_error["uri"].endswith("v3") and "ArtifactError" in state.last_error["reason"]
    assert state.status()["refused"][0]["uri"].endswith("v3")
    assert state.check() is False and state.check(force=True) is False  # polling skips it; force retries


def test_an_artifact_without_the_attributes_column_still_loads(out):
    items_path = out / "models" / "v1" / "items.parquet"
    table = pd.read_parquet(items_path)
    assert json.loads(table["attributes"][1]) == {"genres": ["blue"]}
    buf = io.BytesIO()
    table.drop(columns=["attributes"]).to_parquet(buf, index=False)
    items_path.write_bytes(buf.getvalue())
    art = load_artifact(str(out))
    assert art.items.attributes[1] == {"genres": ["blue"]}  # read back from the item text
    assert art.history_times["u1"] == [0, 1, 2, 3]


def test_the_loaded_bundle_is_out_of_the_collectors_view_and_a_swapped_out_one_is_freed(out, store, student,
                                                                                        teacher, monkeypatch):
    """A replica's heap is frozen once its bundle is built (no full GC pass over it mid-request), and a
    swap lets the old bundle go instead of pinning it in the frozen generation."""
    import gc
    import weakref

    monkeypatch.setenv("DISTILREC_FREEZE_HEAP", "1")  # opt-in (services.run.local_serve_env)
    gc.unfreeze()
    try:
        state = ServingState(str(out), ServingBundle.build, store, poll_s=0)
        assert gc.get_freeze_count() > 0
        old = weakref.ref(state.bundle)
        art = load_artifact(str(out))
        write_artifact(str(out), items=art.items, histories=pd.DataFrame({"user_id": ["u1"], "item_id": ["m0"],
                                                                           "timestamp": [1]}),
                       student=student, teacher=teacher, dataset={"name": "toy"}, metrics={}, encoder=None,
                       version="v2")
        assert state.check() is True
        assert old() is None, "the swapped-out bundle is still alive"
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_an_encoder_at_a_uri_loads_through_a_copy_that_is_removed(tiny_encoder, memory_uri, tmp_path, monkeypatch):
    """Each model version's encoder is copied from the object store to load it; the copy must not stay
    in /tmp (a size-limited emptyDir in the chart) or every model swap would add one."""
    import tempfile
    from pathlib import Path

    import fsspec

    from services.text_encoder import load_text_encoder

    fs, root = fsspec.core.url_to_fs(f"{memory_uri}/models/v1/encoder")
    for f in Path(tiny_encoder).iterdir():
        fs.pipe_file(f"{root}/{f.name}", f.read_bytes())
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    texts = ["a red car", "a haunted rocket"]
    remote = load_text_encoder(f"{memory_uri}/models/v1/encoder")
    assert list((tmp_path / "tmp").iterdir()) == []
    np.testing.assert_allclose(remote.encode(texts), load_text_encoder(tiny_encoder).encode(texts), atol=1e-6)
