"""StudentScorer deployment: scores many concurrent requests as one tensor batch (``@serve.batch``).

It loads the model from the artifact (``scorer_model: student``, or ``teacher`` for the benchmark of
a teacher-served variant) and calls it through the generic interface (``user_vector``, item vectors,
text item vectors); it holds no model code. Candidates come from retrieval over the item vectors:
``exact`` (every item scored) or ``faiss`` (HNSW, for large catalogues). Items added at serving time
(``POST /v1/items``) get their vector from their text alone: the model's text vector
(``text_item_vectors``) plus the learnt id component of the trained items nearest in text
(:func:`distilrec.retrieval.impute_item_vectors`, 5 neighbours),
and join the retrieval index; they cannot be part of a history the model reads (they have no trained row), so a
history item the model does not know is left out of the user vector (it is still never recommended).

Runtime knobs come through ``user_config`` and :meth:`reconfigure` without restarting the replica:
``max_batch_size`` (1 turns batching off), ``batch_wait_timeout_s``, ``candidates`` (how many items
go to the ranker besides the ones it will drop). Hot reload: :mod:`services.state`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from ray import serve

from distilrec.artifacts import Artifact
from distilrec.models import native_cpu_kernels, pad_histories
from distilrec.retrieval import impute_item_vectors, make_retrieval
from distilrec.stores import NewItem, open_event_store
from services import metrics
from services.state import ServingState

DEFAULT_CANDIDATES = 200


@dataclass
class ScorerBundle:
    version: str
    manifest: dict
    model: torch.nn.Module
    item_ids: list[str]
    index: dict[str, int]
    retrieval: object
    n_trained: int
    text_dim: int
    pad: int
    max_len: int
    trained_text_emb: torch.Tensor | None = None  # (N, text_dim)
    trained_id_part: torch.Tensor | None = None   # (N, D): item vector minus its text vector
    neighbours: int = 5
    skipped: list[str] = field(default_factory=list)

    @classmethod
    def build(cls, art: Artifact, which: str, retrieval: str) -> "ScorerBundle":
        model = (art.teacher if which == "teacher" else art.student)
        if model is None:
            raise ValueError(f"the artifact has no {which} model")
        model = model.eval()
        with torch.no_grad():
            vectors = model.item_vectors().detach().clone()  # (N, D)
            probe = model.user_vector(pad_histories([[0]], model.cfg.n_items, model.cfg.max_len)) @ vectors.T
        if not torch.isfinite(probe).all() or not torch.isfinite(vectors).all():
            raise ValueError("the model produces non-finite scores")
        ids = list(art.items.item_ids)
        text_dim = int(getattr(model.cfg, "text_dim", 0))
        emb = id_part = None
        if text_dim:
            emb = torch.from_numpy(np.asarray(art.items.text_emb, dtype=np.float32))
            with torch.no_grad():
                id_part = vectors - model.text_item_vectors(emb)
        return cls(art.version, art.manifest, model, ids, dict(art.items.index), make_retrieval(retrieval, vectors),
                   len(ids), text_dim, model.cfg.n_items, model.cfg.max_len, emb, id_part)

    def add_items(self, items: list[NewItem]) -> None:
        """Give new items a vector from their text embedding and add them to retrieval."""
        if not self.text_dim:
            self.skipped.extend(it.item_id for it in items)
            return
        fresh = [it for it in items if it.embedding.shape == (self.text_dim,)
                 and not (it.item_id in self.index and self.index[it.item_id] < self.n_trained)]
        if not fresh:
            return
        emb = torch.from_numpy(np.stack([it.embedding for it in fresh]).astype(np.float32))
        with torch.no_grad():
            vecs = impute_item_vectors(self.model.text_item_vectors(emb), emb, self.trained_text_emb,
                                       self.trained_id_part, self.neighbours)
        for it, v in zip(fresh, vecs):
            row = self.index.get(it.item_id)
            if row is None:
                self.index[it.item_id] = len(self.item_ids)
                self.item_ids.append(it.item_id)
                self.retrieval.add(v.unsqueeze(0))
            else:
                self.retrieval.replace(row, v)


@serve.deployment
class StudentScorer:
    def __init__(self, model_uri: str, event_store: str, scorer_model: str = "student", retrieval: str = "exact",
                 threads: int = 1, model_poll_s: float = 30.0):
        torch.set_num_threads(threads)
        native_cpu_kernels(True)  # PyTorch's own CPU kernels: a request's small ops pay less set-up
        self.store = open_event_store(event_store)
        self.state = ServingState(
            model_uri, lambda art: ScorerBundle.build(art, scorer_model, retrieval), self.store, model_poll_s,
            with_teacher=scorer_model == "teacher", with_histories=False)
        self.candidates = DEFAULT_CANDIDATES
        self.knobs: dict = {}
        self.batch_size = metrics.batch_size()

    def reconfigure(self, config: dict) -> None:
        if "max_batch_size" in config:
            self.score.set_max_batch_size(int(config["max_batch_size"]))
        if "batch_wait_timeout_s" in config:
            self.score.set_batch_wait_timeout_s(float(config["batch_wait_timeout_s"]))
        if "candidates" in config:
            self.candidates = max(1, int(config["candidates"]))
        self.knobs = {**self.knobs, **config}

    def info(self) -> dict:
        """The loaded model (``GET /v1/model``), with the runtime knobs."""
        self.state.sync(None)
        b = self.state.bundle
        return {**self.state.status(), "new_items": len(b.item_ids) - b.n_trained,
                "scorer": {**self.knobs, "candidates": self.candidates}}

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def score(self, requests: list[dict]) -> list[dict]:
        """Each request ``{"history": [item ids, oldest first], "timestamps": [unix s, aligned] | None,
        "k": int | None, "n_drop": int,
        "wide": bool, "sync": [items_seq, reload_gen] | None}`` → ``{"item_ids", "scores",
        "model_version", "batch", "batch_ms"}``: the best candidates in descending score order,
        ``max(candidates, k) + n_drop`` of them (20× more when ``wide``: the ranker filters)."""
        t0 = time.perf_counter()
        syncs = [r.get("sync") for r in requests if r.get("sync") is not None]
        if syncs:
            self.state.sync(max(tuple(s) for s in syncs))
        b = self.state.bundle  # one version for the whole batch
        self.batch_size.observe(len(requests))
        rows, stamps = [], []
        for r in requests:
            # the model reads trained items only; each keeps its timestamp (the time-gap features)
            times = r.get("timestamps") or [0] * len(r["history"])
            kept = [(b.index[i], t) for i, t in zip(r["history"], times) if b.index.get(i, b.n_trained) < b.n_trained]
            rows.append([row for row, _ in kept])
            stamps.append([t for _, t in kept])
        want = []
        for r in requests:
            n = max(self.candidates, int(r.get("k") or 0)) * (20 if r.get("wide") else 1) + int(r.get("n_drop", 0))
            want.append(min(n, len(b.retrieval)))
        hist = pad_histories(rows, b.pad, b.max_len)
        times = pad_histories(stamps, 0, b.max_len)
        with torch.inference_mode():  # no autograd bookkeeping on the request path
            users = b.model.user_vector(hist, times)  # (B, D)
            scores, top = b.retrieval.search(users, max(want))
        ms = (time.perf_counter() - t0) * 1000
        out = []
        for i, n in enumerate(want):
            s, t = scores[i, :n].tolist(), top[i, :n].tolist()
            keep = [(b.item_ids[r], v) for r, v in zip(t, s) if r >= 0 and math.isfinite(v)]
            out.append({"item_ids": [k for k, _ in keep], "scores": [v for _, v in keep],
                        "model_version": b.version, "batch": len(requests), "batch_ms": ms})
        return out
