"""``build_app(args)``: the one place that binds the deployments together.

Ray Serve calls it from ``services/serve_config.yaml`` (``import_path: services.app:build_app``), both
locally (``distilrec serve``) and in the chart's RayService (``serveConfigV2``)::

    args:
      model_uri: /models/out        # a pipeline output folder, a version folder, or s3://…
      event_store: sqlite:///tmp/distilrec/events.db   # shared by every replica on the node
"""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field, field_validator
from ray.serve import Application

from distilrec.stores import parse_store_uri
from services.feature_encoder import FeatureEncoder
from services.ingress import Ingress
from services.ranker import Ranker
from services.scorer import StudentScorer


DEFAULT_EVENT_STORE = "sqlite:///tmp/distilrec/events.db"


class AppArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_uri: str = Field(description="pipeline output folder, artifact version folder, or fsspec URI")
    scorer_threads: int = Field(1, ge=1, description="torch threads per scorer replica")
    event_store: str = Field(
        DEFAULT_EVENT_STORE,
        description="where POST /v1/events writes and the encoder reads: sqlite:///ABS/PATH.db[?timeout=S] "
                    "or a file path (parent folders are created; redis:// is reserved for a shared backend)")

    @field_validator("event_store")
    @classmethod
    def _known_store(cls, uri: str) -> str:
        # A clear deploy error for an unsupported scheme, before any replica starts. A relative path would
        # resolve against each Ray worker's own working directory, so it is refused.
        _, location, _ = parse_store_uri(uri)
        if not os.path.isabs(os.path.expanduser(location)):
            raise ValueError(f"event_store needs an absolute path, got {location!r}")
        return uri


def build_app(args: dict) -> Application:
    a = AppArgs.model_validate(args)
    encoder = FeatureEncoder.bind(a.model_uri, a.event_store)
    scorer = StudentScorer.bind(a.model_uri, threads=a.scorer_threads)
    ranker = Ranker.bind(a.model_uri)
    return Ingress.bind(encoder, scorer, ranker, a.model_uri)
