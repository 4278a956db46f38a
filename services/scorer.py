"""Scorer deployment (``scorer: deployment``): the model on replicas of its own, for a model that needs
hardware or scaling of its own (the teacher, a GPU). With the default ``scorer: inline`` the ingress
scores in process and this deployment is not built.

It holds a :class:`distilrec.serving.ModelScorer` (the same class the ingress uses in process) and the
new items; the ingress sends one handle call per batch of its requests, a list of typed
:class:`~distilrec.serving.ScoreRequest`, and gets one :class:`~distilrec.serving.ScoreResult` each.
Concurrent calls become one tensor batch (``@serve.batch``). Runtime knobs through ``user_config`` / :meth:`reconfigure`: ``max_batch_size``
(1 = no batching), ``batch_wait_timeout_s``. Hot reload and new items: :mod:`services.state`.
"""

from __future__ import annotations

import torch
from ray import serve

from distilrec.models import native_cpu_kernels
from distilrec.retrieval import RetrievalChoice
from distilrec.serving import ModelScorer, ScoreRequest, ScoreResult
from distilrec.stores import open_event_store
from services import metrics
from services.state import ServingState, close_replica


@serve.deployment(
    health_check_period_s=2, max_ongoing_requests=64, max_queued_requests=256,
    autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 16,
                        "upscale_delay_s": 10, "downscale_delay_s": 120},
    ray_actor_options={"num_cpus": 0.5},
)
class Scorer:
    def __init__(self, model_uri: str, event_store: str, scorer_model: str = "student",
                 retrieval: str | RetrievalChoice = "auto", threads: int = 1, model_poll_s: float = 30.0):
        torch.set_num_threads(threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"  # a GPU when ray_actor_options gives one
        native_cpu_kernels(True)  # PyTorch's own CPU kernels: a request's small ops pay less set-up
        self.store = open_event_store(event_store)
        self.state = ServingState(
            model_uri, lambda art: ModelScorer.build(art, scorer_model, retrieval, device), self.store, model_poll_s,
            with_teacher=scorer_model == "teacher", with_histories=False)
        self.knobs: dict = {"max_batch_size": 32, "batch_wait_timeout_s": 0.0}
        self.batch_size = metrics.batch_size()

    def reconfigure(self, config: dict) -> None:
        if "max_batch_size" in config:
            self.score.set_max_batch_size(max(1, int(config["max_batch_size"])))
        if "batch_wait_timeout_s" in config:
            self.score.set_batch_wait_timeout_s(max(0.0, float(config["batch_wait_timeout_s"])))
        self.knobs = {**self.knobs, **config}

    def info(self) -> dict:
        """The loaded model (``GET /v1/model``), with the runtime knobs."""
        self.state.sync(None)
        b = self.state.bundle
        return {**self.state.status(), "new_items": len(b.item_ids) - b.n_trained,
                "scorer": {**self.knobs, "retrieval": b.retrieval.kind}}

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
    async def score(self, calls: list[list[ScoreRequest]]) -> list[list[ScoreResult]]:
        """Each call is one ingress replica's batch of requests; the calls that wait together are scored
        as one tensor batch (``max_batch_size`` counts calls). The newest ``sync`` of the batch is applied
        first, and one model version scores it."""
        requests = [r for call in calls for r in call]
        syncs = [r.sync for r in requests if r.sync is not None]
        if syncs:
            self.state.sync(max(syncs))
        self.batch_size.observe(len(requests))
        results = self.state.bundle.score(requests) if requests else []
        out, start = [], 0
        for call in calls:
            out.append(results[start:start + len(call)])
            start += len(call)
        return out

    def __del__(self):
        close_replica(self)
