"""Floor deployment for the serving benchmark: the best any Ray Serve application can do on a machine.

It answers every HTTP request with one fixed JSON body (a real ``POST /v1/recommend`` answer captured
by ``distilrec bench serve``, so the bytes on the wire are the same) and does nothing else: no body
parsing, no handle calls, no model. Latency and throughput of this application are those of the
proxy, one replica hop and the client; ``bench serve`` states distilrec's as a share of them::

    applications:
      - name: bench-floor
        route_prefix: /bench-floor
        import_path: services.floor:build_app
        args: {body: '{"items": [...], "model_version": "...", "degraded": false, "cold_start": false}'}
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application
from starlette.requests import Request
from starlette.responses import Response


class FloorArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    body: str = Field(min_length=2, description="the JSON body every request gets (a real answer)")


@serve.deployment
class Floor:
    def __init__(self, body: str):
        self.body = body.encode()

    async def __call__(self, request: Request) -> Response:
        return Response(self.body, media_type="application/json")


def build_app(args: dict) -> Application:
    a = FloorArgs.model_validate(args)
    return Floor.bind(a.body)
