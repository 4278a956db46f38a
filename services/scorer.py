"""StudentScorer deployment: scores many concurrent requests as one tensor batch (``@serve.batch``).

It loads a :class:`distilrec.models.Student` from the artifact and calls it; it holds no model code.
Retrieval is exact: every catalogue item is scored against the user vector (item vectors are
precomputed once), and the top ``n`` rows go to the ranker.

Runtime knobs come through ``user_config`` (``max_batch_size``, ``batch_wait_timeout_s``) and
:meth:`reconfigure`, so they change without restarting the replica.
"""

from __future__ import annotations

import time

import torch
from ray import serve

from distilrec.artifacts import load_artifact
from distilrec.models import pad_histories
from services import metrics


@serve.deployment
class StudentScorer:
    def __init__(self, model_uri: str, threads: int = 1):
        torch.set_num_threads(threads)
        art = load_artifact(model_uri)
        self.version = art.version
        self.model = art.student.eval()
        self.pad, self.max_len = self.model.cfg.n_items, self.model.cfg.max_len
        with torch.no_grad():
            self.item_vectors = self.model.item_vectors().clone()  # (N, D)
        self.batch_size = metrics.batch_size()

    def reconfigure(self, config: dict) -> None:
        if "max_batch_size" in config:
            self.score.set_max_batch_size(int(config["max_batch_size"]))
        if "batch_wait_timeout_s" in config:
            self.score.set_batch_wait_timeout_s(float(config["batch_wait_timeout_s"]))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def score(self, requests: list[dict]) -> list[dict]:
        """Each request ``{"rows": [...], "n": int}`` → ``{"rows", "scores", "model_version", "batch"}``
        with the ``n`` best catalogue rows in descending score order."""
        t0 = time.perf_counter()
        self.batch_size.observe(len(requests))
        hist = pad_histories([r["rows"] for r in requests], self.pad, self.max_len)
        n = min(max(int(r["n"]) for r in requests), self.item_vectors.shape[0])
        with torch.no_grad():
            scores = self.model.user_vector(hist) @ self.item_vectors.T  # (B, N)
            top = torch.topk(scores, n, dim=1)
        ms = (time.perf_counter() - t0) * 1000
        return [
            {"rows": top.indices[i, : r["n"]].tolist(), "scores": top.values[i, : r["n"]].tolist(),
             "model_version": self.version, "batch": len(requests), "batch_ms": ms}
            for i, r in enumerate(requests)
        ]
