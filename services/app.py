"""``build_app(args)``: the one place that binds the deployments together.

Ray Serve calls it from ``services/serve_config.yaml`` (``import_path: services.app:build_app``), both
locally (``distilrec serve``) and in the chart's RayService (``serveConfigV2``)::

    args:
      model_uri: /models/out        # a pipeline output folder, a version folder, or s3://…
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application

from services.feature_encoder import FeatureEncoder
from services.ingress import Ingress
from services.ranker import Ranker
from services.scorer import StudentScorer


class AppArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_uri: str = Field(description="pipeline output folder, artifact version folder, or fsspec URI")
    scorer_threads: int = Field(1, ge=1, description="torch threads per scorer replica")


def build_app(args: dict) -> Application:
    a = AppArgs.model_validate(args)
    encoder = FeatureEncoder.bind(a.model_uri)
    scorer = StudentScorer.bind(a.model_uri, threads=a.scorer_threads)
    ranker = Ranker.bind(a.model_uri)
    return Ingress.bind(encoder, scorer, ranker, a.model_uri)
