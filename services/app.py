"""``build_app(args)``: the one place that binds the deployments together.

Ray Serve calls it from ``services/serve_config.yaml`` (``import_path: services.app:build_app``), both
locally (``distilrec serve``) and in the chart's RayService (``serveConfigV2``)::

    args:
      model_uri: /models/out        # a pipeline output folder, a version folder, or s3://…
      model_poll_s: 30              # look for a newer version under model_uri (0 = off)
      event_store: sqlite:///tmp/distilrec/events.db   # or redis://host:6379/0
      scorer: inline                # or deployment (the Scorer deployment: a GPU, the teacher)
      scorer_model: student         # or teacher
      retrieval: auto               # exact | faiss | auto: faiss (HNSW) from faiss_min_items items on
      faiss_min_items: 100000

The graph: ``Ingress`` (HTTP, features, in-process scoring, ranking) with a handle to ``TextEncoder``
(item and query text) and, with ``scorer: deployment``, to ``Scorer``. The Scorer deployment is only
built in that mode, so the serve config lists it (to override its options) only then.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from ray.serve import Application

from distilrec.retrieval import FAISS_MIN_ITEMS, RetrievalChoice
from distilrec.stores import REDIS_SCHEMES, parse_store_uri
from services.ingress import Ingress
from services.scorer import Scorer
from services.text_encoder import TextEncoder


DEFAULT_EVENT_STORE = "sqlite:///tmp/distilrec/events.db"


class AppArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_uri: str = Field(description="pipeline output folder, artifact version folder, or fsspec URI")
    model_poll_s: float = Field(30.0, ge=0, description="seconds between looks for a newer version (0 = off)")
    scorer_threads: int = Field(1, ge=1, description="torch threads per replica that scores")
    scorer: Literal["inline", "deployment"] = Field(
        "inline", description="inline: the ingress scores in process (no handle call); deployment: the Scorer "
                              "deployment scores (one handle call; a GPU or scaling of its own)")
    scorer_model: Literal["student", "teacher"] = Field("student", description="the model that scores")
    retrieval: Literal["exact", "faiss", "auto"] = Field(
        "auto", description="candidate retrieval over item vectors: exact (score every item), faiss (an HNSW "
                            "index), auto (faiss from faiss_min_items items on when faiss is installed, else exact)")
    faiss_min_items: int = Field(FAISS_MIN_ITEMS, ge=0, description="retrieval: auto takes faiss from this many "
                                                                     "items on")
    event_store: str = Field(
        DEFAULT_EVENT_STORE,
        description="events and new items: sqlite:///ABS/PATH.db[?timeout=S], a file path (parent folders are "
                    "created), or redis://[:password@]host:port/db[?prefix=P] / rediss://… (shared by many pods; "
                    "password also from $DISTILREC_REDIS_PASSWORD)")

    @field_validator("event_store")
    @classmethod
    def _known_store(cls, uri: str) -> str:
        # A clear deploy error for an unsupported scheme, before any replica starts. A relative path would
        # resolve against each Ray worker's own working directory, so it is refused.
        scheme, location, _ = parse_store_uri(uri)
        if scheme in REDIS_SCHEMES:
            return uri
        if not os.path.isabs(os.path.expanduser(location)):
            raise ValueError(f"event_store needs an absolute path, got {location!r}")
        return uri


def deployments_of(args: dict) -> set[str]:
    """The deployment names ``build_app(args)`` builds (a serve config may list options for these only).

    >>> sorted(deployments_of({"model_uri": "/m"})), sorted(deployments_of({"model_uri": "/m", "scorer": "deployment"}))
    (['Ingress', 'TextEncoder'], ['Ingress', 'Scorer', 'TextEncoder'])
    """
    a = AppArgs.model_validate(args)
    return {"Ingress", "TextEncoder"} | ({"Scorer"} if a.scorer == "deployment" else set())


def build_app(args: dict) -> Application:
    a = AppArgs.model_validate(args)
    text = TextEncoder.bind(a.model_uri)
    retrieval = RetrievalChoice(a.retrieval, a.faiss_min_items)
    scorer = None
    if a.scorer == "deployment":
        scorer = Scorer.bind(a.model_uri, a.event_store, scorer_model=a.scorer_model, retrieval=retrieval,
                             threads=a.scorer_threads, model_poll_s=a.model_poll_s)
    return Ingress.bind(text, scorer, a.model_uri, a.event_store, scorer_model=a.scorer_model,
                        retrieval=retrieval, threads=a.scorer_threads, model_poll_s=a.model_poll_s)
