"""Item text embeddings as Ray Data batch inference: the text encoder runs in actors that a cluster
spreads over its nodes (one GPU each where there are GPUs, else a CPU each), for catalogues where one
process would take hours (a transformer encoder embeds some hundreds of texts per second per CPU core).

    emb, figures = embed_texts_ray(texts, encoder_folder, cache_dir="out/work/cache")
    figures.items_per_s_per_cpu   # the stage's rate per CPU core the actors held

Both paths here return ``(M, dim)`` float32 in the order of ``texts`` and the same figures
(:class:`EmbedFigures`), and share :func:`distilrec.text.text_cache_path`'s cache: a catalogue embedded
by either path is a cache hit for both. :func:`embed_in_process` is :func:`distilrec.text.embed_texts`
timed (one process, torch's own threads).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from distilrec.text import (
    EncoderLoadError,
    TextEncoder,
    embed_texts,
    encoder_dim,
    save_cached,
    text_cache_path,
)

DEFAULT_BATCH = 256      # texts per encoder call in an actor
BLOCKS_PER_ACTOR = 4     # at least this many input blocks per actor, so that actors finishing early take more


@dataclass
class EmbedFigures:
    """What one embedding call cost. ``path``: ``"ray_data"`` or ``"in_process"``; ``seconds``: the
    whole call (a cache hit's is the hashing and the load); ``first_batch_s``: until the first batch
    came back (Ray Data's start-up and the actors' model loading; None for the in-process path), and
    ``after_first_items_per_s_per_cpu`` the rate per core of the items that came after it (the rate once
    started, which a catalogue large enough to make the start-up negligible approaches);
    ``cpus`` / ``gpus``: what the encoding held (actors × CPUs per actor, or torch's threads in
    process); the rates are None for a cache hit or for no texts."""

    path: str
    items: int
    cache_hit: bool
    seconds: float
    actors: int = 0
    cpus: float = 0.0
    gpus: int = 0
    batch_size: int = DEFAULT_BATCH
    first_batch_s: float | None = None
    items_per_s: float | None = None
    items_per_s_per_cpu: float | None = None
    items_per_s_per_gpu: float | None = None
    after_first_items_per_s_per_cpu: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        """One console line: the path, the items, the seconds and the rate per core (or per GPU)."""
        where = "Ray Data" if self.path == "ray_data" else "in process"
        if self.cache_hit:
            return f"text embeddings ({where}): {self.items:,} items from the cache in {self.seconds:.1f} s"
        if not self.items_per_s:
            return f"text embeddings ({where}): {self.items:,} items in {self.seconds:.1f} s"
        def n(count: float, what: str) -> str:
            return f"{count:g} {what}" + ("" if count == 1 else "s")

        held = n(self.actors, "actor") + ", " if self.path == "ray_data" else ""
        held += n(self.gpus, "GPU") if self.gpus else n(self.cpus, "CPU")
        rate = (f"{self.items_per_s_per_gpu:,.0f} items/s per GPU" if self.gpus
                else f"{self.items_per_s_per_cpu:,.1f} items/s per CPU core")
        after = ("" if self.gpus or self.after_first_items_per_s_per_cpu is None
                 else f" ({self.after_first_items_per_s_per_cpu:,.1f} after the first batch)")
        return (f"text embeddings ({where}): {self.items:,} items in {self.seconds:.1f} s on {held}: "
                f"{self.items_per_s:,.1f} items/s, {rate}{after}")


def _rates(fig: EmbedFigures, first_rows: int = 0) -> EmbedFigures:
    if fig.items and fig.seconds > 0 and not fig.cache_hit:
        fig.items_per_s = round(fig.items / fig.seconds, 1)
        fig.items_per_s_per_cpu = round(fig.items_per_s / fig.cpus, 1) if fig.cpus else None
        fig.items_per_s_per_gpu = round(fig.items_per_s / fig.gpus, 1) if fig.gpus else None
        after_s = fig.seconds - (fig.first_batch_s or 0.0)
        if fig.first_batch_s is not None and fig.cpus and fig.items > first_rows and after_s > 0:
            fig.after_first_items_per_s_per_cpu = round((fig.items - first_rows) / after_s / fig.cpus, 1)
    return fig


def embed_in_process(texts: Sequence[str], encoder: str, cache_dir: str | Path | None,
                     progress: bool = True) -> tuple[np.ndarray, EmbedFigures]:
    """:func:`distilrec.text.embed_texts` (this process, torch's intra-op threads) and its figures."""
    import torch

    t0 = time.perf_counter()
    cached = text_cache_path(texts, encoder, cache_dir)
    hit = cached is not None and cached.exists()
    emb = embed_texts(texts, encoder, cache_dir=cache_dir, progress=progress)
    fig = EmbedFigures(path="in_process", items=len(texts), cache_hit=hit, seconds=round(time.perf_counter() - t0, 2),
                       cpus=0 if hit else torch.get_num_threads(), batch_size=64)
    return emb, _rates(fig)


class _EncodeBatch:
    """Ray Data's callable class: loads the encoder once per actor (on its GPU when it holds one) and
    embeds a batch ``{"row": (B,) int64, "text": (B,) str}`` into ``{"row": (B,), "emb": (B, dim) float32}``."""

    def __init__(self, encoder: str, batch_size: int, use_gpu: bool, threads: int):
        import torch

        torch.set_num_threads(max(1, threads))
        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.encoder = TextEncoder(encoder, batch_size=batch_size, device=device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"row": batch["row"], "emb": self.encoder.encode([str(t) for t in batch["text"]])}


def default_concurrency(use_gpu: bool, cpus_per_actor: float = 1.0) -> int:
    """Actors for the cluster Ray is connected to: one per free GPU with ``use_gpu``, else one per
    ``cpus_per_actor`` free CPUs; at least 1. A local instance (no ``RAY_ADDRESS``) counts at most this
    machine's cores, since its logical CPUs may outnumber them (``ensure_ray`` leaves room for Serve)."""
    import ray

    free = ray.available_resources()
    if use_gpu:
        return max(1, int(free.get("GPU", 0)))
    n = int(free.get("CPU", 1) // cpus_per_actor)
    if not os.environ.get("RAY_ADDRESS"):
        n = min(n, int((os.cpu_count() or 1) // cpus_per_actor))
    return max(1, n)


def _blocks(texts: Sequence[str], concurrency: int, batch_size: int) -> list:
    """The texts as Arrow tables ``(row int64, text string)``, sorted by length so that a batch holds texts
    of similar length (little padding), at least ``BLOCKS_PER_ACTOR`` blocks per actor where there are
    enough texts, at most 4 batches a block."""
    import pyarrow as pa

    order = np.argsort(np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts)), kind="stable")
    rows = max(1, min(4 * batch_size, math.ceil(len(texts) / (BLOCKS_PER_ACTOR * concurrency))))
    return [pa.table({"row": pa.array(order[s:s + rows], pa.int64()),
                      "text": pa.array([texts[i] for i in order[s:s + rows]], pa.string())})
            for s in range(0, len(texts), rows)]


def _actor_load_error(err: Exception) -> EncoderLoadError | None:
    """An actor that died loading the encoder: its :class:`EncoderLoadError` again, in one line (Ray's
    message carries the actor's whole traceback); None for any other actor failure."""
    import re

    found = re.findall(r"EncoderLoadError: (cannot load the text encoder [^\n]*)", str(err))
    return EncoderLoadError(f"{found[-1]} (in a Ray Data actor)") if found else None


def embed_texts_ray(texts: Sequence[str], encoder: str, cache_dir: str | Path | None,
                    batch_size: int = DEFAULT_BATCH, concurrency: int | None = None, use_gpu: bool | None = None,
                    cpus_per_actor: float = 1.0, progress: bool = False) -> tuple[np.ndarray, EmbedFigures]:
    """Embed ``texts`` with ``encoder`` (a local folder or a hub id every node can load) as Ray Data batch
    inference; return ``(M, dim)`` float32 in the order of ``texts`` and the stage's figures.

    A cache hit (:func:`distilrec.text.text_cache_path`, shared with the in-process path) loads the file
    and starts nothing. Otherwise ``concurrency`` actors (default :func:`default_concurrency`) each load
    the encoder once and embed batches of ``batch_size`` texts; ``use_gpu`` (default: whether the cluster
    has a GPU) gives each actor one GPU. The results are written by row into one preallocated array as
    they arrive (memory: the output and the blocks in flight), then cached. Connects to (or starts) Ray
    if it is not running.

    Raises :class:`distilrec.text.EncoderLoadError` before any actor starts when the encoder's
    configuration cannot be read (after the actors' failed start when its weights cannot), and ``ValueError`` for ``use_gpu=True`` on a cluster without GPUs
    (the actors would wait for one for ever).
    """
    import ray

    t0 = time.perf_counter()
    cached = text_cache_path(texts, encoder, cache_dir)
    if cached is not None and cached.exists():
        return np.load(cached), EmbedFigures(path="ray_data", items=len(texts), cache_hit=True,
                                             seconds=round(time.perf_counter() - t0, 2), batch_size=batch_size)
    dim = encoder_dim(encoder)
    if not ray.is_initialized():
        ray.init()
    gpus_free = int(ray.available_resources().get("GPU", 0))
    if use_gpu is None:
        use_gpu = gpus_free > 0
    elif use_gpu and not ray.cluster_resources().get("GPU", 0):
        raise ValueError("use_gpu=True, but the Ray cluster has no GPU")
    n = concurrency if concurrency is not None else default_concurrency(use_gpu, cpus_per_actor)
    if n < 1:
        raise ValueError(f"concurrency {n}: need at least 1 actor")
    n = min(n, max(1, math.ceil(len(texts) / batch_size)))  # no actor without a batch to embed
    emb = np.empty((len(texts), dim), dtype=np.float32)
    first, first_rows = None, 0
    if texts:
        from ray.data import DataContext

        ctx = DataContext.get_current()
        bars = ctx.enable_progress_bars
        ctx.enable_progress_bars = progress
        try:
            ds = ray.data.from_arrow(_blocks(texts, n, batch_size)).map_batches(
                _EncodeBatch, batch_format="numpy", batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=n),
                fn_constructor_kwargs={"encoder": encoder, "batch_size": batch_size, "use_gpu": bool(use_gpu),
                                       "threads": max(1, int(cpus_per_actor))},
                num_cpus=cpus_per_actor, num_gpus=1 if use_gpu else 0,
            )
            seen = 0
            for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
                if first is None:
                    first, first_rows = round(time.perf_counter() - t0, 2), len(out["row"])
                emb[out["row"]] = out["emb"]
                seen += len(out["row"])
        except ray.exceptions.RayActorError as e:
            load = _actor_load_error(e)
            if load is None:
                raise
            raise load from e
        finally:
            ctx.enable_progress_bars = bars
        if seen != len(texts):
            raise RuntimeError(f"Ray Data returned {seen} embeddings for {len(texts)} texts")
    if cached is not None:
        save_cached(cached, emb)
    fig = EmbedFigures(path="ray_data", items=len(texts), cache_hit=False, seconds=round(time.perf_counter() - t0, 2),
                       actors=n if texts else 0, cpus=(n * cpus_per_actor) if texts else 0.0,
                       gpus=n if texts and use_gpu else 0, batch_size=batch_size, first_batch_s=first)
    return emb, _rates(fig, first_rows)
