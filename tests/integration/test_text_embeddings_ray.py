"""Item text embeddings as Ray Data batch inference (``training.embeddings``) on the session's Ray cluster,
against the in-process path (``distilrec.text.embed_texts``) with a tiny locally built encoder."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import distilrec.text as text_mod
import training.embeddings as emb_mod
from distilrec.text import EncoderLoadError, build_tiny_encoder, embed_texts, text_cache_path
from training.embeddings import embed_texts_ray

pytestmark = pytest.mark.integration

WORDS = "a red apple blue car the space rocket haunted house in with of dark night".split()


def _texts(n: int, seed: int = 0) -> list[str]:
    """``n`` texts of 1 to 40 words (some repeated), so that batches differ in padding."""
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 41)))) for _ in range(n)]
    return texts[:-3] + texts[:3]


TEXTS = _texts(300)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> str:
    return build_tiny_encoder(tmp_path_factory.mktemp("encoder") / "tiny", WORDS, dim=16, seed=0)


@pytest.fixture(scope="module")
def reference(encoder) -> np.ndarray:
    return embed_texts(TEXTS, encoder, cache_dir=None, progress=False)


def _no_encoding(monkeypatch) -> None:
    """Any attempt to load an encoder or to start Ray Data fails the test."""
    def boom(*args, **kwargs):
        raise AssertionError("the cache was not used")

    import ray.data

    monkeypatch.setattr(emb_mod, "encoder_dim", boom)
    monkeypatch.setattr(ray.data, "from_arrow", boom)
    monkeypatch.setattr(text_mod, "TextEncoder", boom)


def test_ray_data_path_gives_the_in_process_embeddings_in_order(ray_cluster, encoder, reference, tmp_path):
    emb, fig = embed_texts_ray(TEXTS, encoder, cache_dir=tmp_path, batch_size=32, concurrency=2)
    assert emb.shape == (300, 16) and emb.dtype == np.float32
    np.testing.assert_allclose(emb, reference, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(emb[-3:], emb[:3])  # the repeated texts
    assert (fig.path, fig.items, fig.cache_hit, fig.actors, fig.cpus, fig.gpus) == ("ray_data", 300, False, 2, 2.0, 0)
    assert 0 < fig.first_batch_s <= fig.seconds
    assert fig.items_per_s == pytest.approx(300 / fig.seconds, rel=0.01)
    assert fig.items_per_s_per_cpu == pytest.approx(fig.items_per_s / 2, rel=0.01)
    assert fig.items_per_s_per_gpu is None
    assert "items/s per CPU core" in fig.line()
    assert [p.name for p in tmp_path.iterdir()] == [text_cache_path(TEXTS, encoder, tmp_path).name]


def test_a_second_call_is_a_cache_hit_that_starts_no_encoder(ray_cluster, encoder, reference, tmp_path, monkeypatch):
    first, _ = embed_texts_ray(TEXTS, encoder, cache_dir=tmp_path, batch_size=64, concurrency=2)
    _no_encoding(monkeypatch)
    second, fig = embed_texts_ray(TEXTS, encoder, cache_dir=tmp_path, batch_size=64, concurrency=2)
    np.testing.assert_array_equal(second, first)
    assert fig.cache_hit and fig.actors == 0 and fig.items_per_s is None
    assert "from the cache" in fig.line()


def test_the_in_process_and_the_ray_data_path_share_the_cache(ray_cluster, encoder, reference, tmp_path, monkeypatch):
    texts = TEXTS[:120]
    in_process = embed_texts(texts, encoder, cache_dir=tmp_path / "a", progress=False)
    ray_made, _ = embed_texts_ray(TEXTS, encoder, cache_dir=tmp_path / "b", batch_size=64, concurrency=2)
    with monkeypatch.context() as m:
        _no_encoding(m)
        from_ray, fig = embed_texts_ray(texts, encoder, cache_dir=tmp_path / "a")
        assert fig.cache_hit
        np.testing.assert_array_equal(from_ray, in_process)
        np.testing.assert_array_equal(embed_texts(TEXTS, encoder, cache_dir=tmp_path / "b", progress=False), ray_made)


def test_no_texts(ray_cluster, encoder, tmp_path):
    emb, fig = embed_texts_ray([], encoder, cache_dir=tmp_path)
    assert emb.shape == (0, 16) and emb.dtype == np.float32
    assert (fig.items, fig.actors, fig.items_per_s) == (0, 0, None)
    assert embed_texts([], encoder, cache_dir=tmp_path, progress=False).shape == (0, 16)  # the same cache file


def test_an_encoder_that_cannot_be_loaded_is_named_rather_than_waited_for(ray_cluster, encoder, tmp_path):
    t0 = time.monotonic()
    with pytest.raises(EncoderLoadError, match=r"^cannot load the text encoder '/no/such/encoder': no such folder$"):
        embed_texts_ray(TEXTS, "/no/such/encoder", cache_dir=tmp_path)
    assert time.monotonic() - t0 < 5  # refused before Ray Data starts
    broken = tmp_path / "broken"  # its configuration and tokenizer, not its weights: the actors fail to load it
    broken.mkdir()
    for f in Path(encoder).iterdir():
        if f.name == "config.json" or f.name.startswith(("tokenizer", "vocab", "special")):
            shutil.copy(f, broken / f.name)
    with pytest.raises(EncoderLoadError) as e:
        embed_texts_ray(TEXTS, str(broken), cache_dir=tmp_path, batch_size=64, concurrency=2)
    message = str(e.value)
    assert message.startswith(f"cannot load the text encoder {str(broken)!r} (") and "\n" not in message
    assert message.endswith("(in a Ray Data actor)")
    assert time.monotonic() - t0 < 120
    assert list(tmp_path.glob("*.npy")) == []


def test_gpus_the_cluster_lacks_are_refused(ray_cluster, encoder, tmp_path):
    import ray

    if ray.cluster_resources().get("GPU"):
        pytest.skip("the cluster has a GPU")
    with pytest.raises(ValueError, match="no GPU"):
        embed_texts_ray(TEXTS, encoder, cache_dir=tmp_path, use_gpu=True)


def test_the_pipeline_takes_the_ray_data_path_from_its_threshold(ray_cluster, encoder, reference, tmp_path):
    from training import pipeline

    ds = SimpleNamespace(texts=TEXTS)
    small, big = {}, {}
    emb, name = pipeline.item_embeddings(ds, encoder, tmp_path / "a", small, ray_min_items=len(TEXTS) + 1)
    assert name == encoder and small["path"] == "in_process" and not small["cache_hit"]
    assert small["items"] == 300 and small["items_per_s_per_cpu"] > 0
    again, _ = pipeline.item_embeddings(ds, encoder, tmp_path / "b", big, ray_min_items=len(TEXTS))
    assert big["path"] == "ray_data" and big["actors"] >= 1 and big["items_per_s_per_cpu"] > 0
    np.testing.assert_allclose(emb, reference, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(again, reference, rtol=1e-5, atol=1e-6)


def test_bench_embed_smoke(ray_cluster, tmp_path):
    """``distilrec bench embed`` on a few synthetic titles: both paths side by side, the same embeddings."""
    import json

    from distilrec.cli import main

    out = tmp_path / "embed"
    assert main(["bench", "embed", "--output", str(out), "--items", "300", "--encoder", "tiny",
                 "--concurrency", "1", "--batch-size", "64"]) == 0
    result = json.loads((out / "embed.json").read_text())
    assert result["command"].startswith("distilrec bench embed --output ")
    assert [(r["path"], r["concurrency"]) for r in result["summary"]] == [("in_process", None), ("ray_data", 1)]
    for row in result["summary"]:
        assert row["items_per_s_per_cpu"] > 0
    assert result["summary"][1]["max_abs_diff"] < 1e-5
    table = (out / "embed.md").read_text()
    assert "| in process (torch threads) |" in table and "| Ray Data, concurrency 1 | 1 | 1 | 0 |" in table
    assert main(["bench", "embed", "--output", str(out), "--concurrency", "0"]) == 2
    assert main(["bench", "embed", "--output", str(out), "--encoder", "./nowhere", "--items", "10"]) == 2
    import ray

    assert ray.is_initialized()  # the session's cluster, which the benchmark did not start, still runs
