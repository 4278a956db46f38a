"""Floor applications for the serving benchmark: the best a Ray Serve application can do on a machine.

``build_app``: one deployment that answers every HTTP request with one fixed JSON body (a real
``POST /v1/recommend`` answer captured by ``distilrec bench serve``, so the bytes on the wire are the
same) and does nothing else: no body parsing, no handle calls, no model. Its latency and throughput are
those of the proxy, one replica and the client; ``bench serve`` states distilrec's as a share of them.

``build_hop_app``: the same, but each request first makes one handle call to a ``@serve.batch``
deployment that returns at once: the floor of any design with one handle call on the request path
(``scorer: deployment`` is measured against it)::

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
from ray.serve.handle import DeploymentHandle
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


@serve.deployment
class Echo:
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
    async def echo(self, xs: list[int]) -> list[int]:
        return xs


@serve.deployment
class HopFloor:
    def __init__(self, body: str, echo: DeploymentHandle):
        self.body, self.echo = body.encode(), echo

    async def __call__(self, request: Request) -> Response:
        await self.echo.echo.remote(1)
        return Response(self.body, media_type="application/json")


def build_app(args: dict) -> Application:
    a = FloorArgs.model_validate(args)
    return Floor.bind(a.body)


def build_hop_app(args: dict) -> Application:
    a = FloorArgs.model_validate(args)
    return HopFloor.bind(a.body, Echo.bind())
