"""Ingress deployment: the HTTP API (FastAPI), validation, and the composition of the stages.

(No ``from __future__ import annotations`` here: FastAPI must see the real request types.)

    POST /v1/recommend  {"user_id": "1", "history": ["318"], "k": 10, "exclude": ["1"]}
    POST /v1/events     {"events": [{"user_id": "1", "item_id": "318", "timestamp": 1700000000}]}
                        → {"stored": 1} once every event is committed to the event store
    GET  /v1/model      version, creation time and offline metrics of the loaded model
    GET  /healthz       the process is alive
    GET  /readyz        the model is loaded, every stage answers and the event store can be read

Every error is JSON ``{"error": {"code": ..., "message": ...}}`` with a stable ``code``; a response
never carries a stack trace.
"""


import asyncio
import logging
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from distilrec.artifacts import read_manifest
from services import metrics

log = logging.getLogger("ray.serve")
MAX_HISTORY = 1000
MAX_EXCLUDE = 1000
MAX_EVENTS = 1000
MAX_ID_LEN = 256
MAX_TIMESTAMP = 4_102_444_800  # 2100-01-01 in unix seconds: catches milliseconds sent by mistake
RETRY_AFTER_S = 1


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: str | None = Field(None, min_length=1, max_length=256, description="the dataset's own user id")
    history: list[str] = Field(default_factory=list, max_length=MAX_HISTORY,
                               description="item ids the user just interacted with, oldest first")
    k: int = Field(10, ge=1, le=100, description="how many items to return")
    exclude: list[str] = Field(default_factory=list, max_length=MAX_EXCLUDE, description="item ids never to return")


class Item(BaseModel):
    item_id: str
    title: str
    score: float


class RecommendResponse(BaseModel):
    items: list[Item]
    model_version: str
    degraded: bool = Field(description="true when a fallback answered: a cheaper ranking, or a ranking without "
                                       "the user's stored events because the event store could not be read")
    cold_start: bool = Field(description="true when the user had no known history")


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: str = Field(min_length=1, max_length=MAX_ID_LEN, description="the dataset's own user id")
    item_id: str = Field(min_length=1, max_length=MAX_ID_LEN, description="a catalogue item id")
    timestamp: int | None = Field(None, ge=0, le=MAX_TIMESTAMP, description="unix seconds; default: now")
    type: str = Field("view", min_length=1, max_length=64, description="kind of interaction (stored, not yet "
                                                                       "used by the ranking)")


class EventsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    events: list[EventIn] = Field(min_length=1, max_length=MAX_EVENTS,
                                  description="stored all or nothing, in this order")


class EventsResponse(BaseModel):
    stored: int = Field(description="events committed to the event store (all of the request's)")


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        self.status, self.code, self.message, self.headers = status, code, message, headers


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


app = FastAPI(title="distilrec", version="0.1.0", description="Recommendations from a distilled student model.")
_STATUS_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


@app.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return _error(exc.status, exc.code, exc.message, exc.headers)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    parts = []
    for e in exc.errors()[:5]:
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        parts.append(f"{where or 'body'}: {e.get('msg')}")
    return _error(422, "invalid_request", "; ".join(parts))


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _error(exc.status_code, _STATUS_CODES.get(exc.status_code, "http_error"), str(exc.detail))


@app.exception_handler(Exception)
async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s", request.url.path)
    return _error(500, "internal", "internal error; see the service logs")


_METRICS: dict = {}


def _http_metrics() -> dict:
    # Created on first use inside the replica: Serve ships the FastAPI app to the replica separately
    # from this module, so state set up in Ingress.__init__ would not be the dict the middleware sees.
    if not _METRICS:
        _METRICS.update(requests=metrics.requests_total(), latency=metrics.request_latency())
    return _METRICS


_ROUTES = {"/v1/recommend", "/v1/events", "/v1/model", "/healthz", "/readyz"}


@app.middleware("http")
async def _count(request: Request, call_next):
    t0 = time.perf_counter()
    response = await call_next(request)
    route = request.url.path if request.url.path in _ROUTES else "other"  # bounded label values
    m = _http_metrics()
    m["requests"].inc(tags={"route": route, "code": str(response.status_code)})
    m["latency"].observe((time.perf_counter() - t0) * 1000, tags={"route": route})
    return response


@serve.deployment
@serve.ingress(app)
class Ingress:
    def __init__(self, encoder: DeploymentHandle, scorer: DeploymentHandle, ranker: DeploymentHandle,
                 model_uri: str):
        self.encoder, self.scorer, self.ranker = encoder, scorer, ranker
        self.manifest = read_manifest(model_uri)
        self.stage = metrics.stage_latency()
        self.cold_start = metrics.cold_start_total()

    async def _timed(self, stage: str, call):
        t0 = time.perf_counter()
        result = await call
        self.stage.observe((time.perf_counter() - t0) * 1000, tags={"stage": stage})
        return result

    @app.post("/v1/recommend", response_model=RecommendResponse,
              responses={422: {"model": ErrorResponse}})
    async def recommend(self, req: RecommendRequest) -> RecommendResponse:
        feats = await self._timed("encode", self.encoder.encode.remote(req.user_id, req.history, req.exclude))
        if feats["unknown_items"]:
            shown = ", ".join(repr(i) for i in feats["unknown_items"][:5])
            raise ApiError(422, "unknown_item", f"history has item ids not in the catalogue: {shown}")
        drop = sorted(set(feats["rows"]) | set(feats["exclude_rows"]))
        degraded = not feats["store_ok"]
        if not feats["rows"]:
            self.cold_start.inc()
            items = await self._timed("rank", self.ranker.popular.remote(drop, req.k))
            return RecommendResponse(items=items, model_version=self.manifest["version"], degraded=degraded,
                                     cold_start=True)
        cands = await self._timed("score", self.scorer.score.remote({"rows": feats["rows"], "n": req.k + len(drop)}))
        items = await self._timed("rank", self.ranker.rank.remote(cands, drop, req.k))
        return RecommendResponse(items=items, model_version=cands["model_version"], degraded=degraded,
                                 cold_start=False)

    @app.post("/v1/events", response_model=EventsResponse,
              responses={422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
    async def events(self, req: EventsRequest) -> EventsResponse:
        """Store interactions; a 2xx means every event is committed (fsynced) and the next
        ``/v1/recommend`` for its user reflects it. All or nothing: an unknown item id stores none."""
        now = int(time.time())
        batch = [{"user_id": e.user_id, "item_id": e.item_id, "type": e.type,
                  "timestamp": now if e.timestamp is None else e.timestamp} for e in req.events]
        result = await self._timed("store", self.encoder.append_events.remote(batch))
        if result.get("unknown_items"):
            shown = ", ".join(repr(i) for i in result["unknown_items"][:5])
            raise ApiError(422, "unknown_item", f"events name item ids not in the catalogue: {shown}; "
                                                "nothing was stored")
        if result.get("error") == "event_store_unavailable":
            raise ApiError(503, "event_store_unavailable", result["message"],
                           headers={"Retry-After": str(RETRY_AFTER_S)})
        if result.get("error"):
            raise ApiError(422, result["error"], result["message"])
        if result["stored"] != len(batch):  # never acknowledge what was not stored
            raise ApiError(500, "internal", "the event store stored a different number of events")
        return EventsResponse(stored=result["stored"])

    @app.get("/v1/model")
    async def model(self) -> dict:
        m = self.manifest
        return {"version": m["version"], "created_at": m["created_at"], "dataset": m.get("dataset"),
                "metrics": m.get("metrics"), "n_items": m.get("n_items")}

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(self):
        try:
            await asyncio.wait_for(self.encoder.encode.remote(None, []), timeout=5)
            await asyncio.wait_for(self.scorer.score.remote({"rows": [0], "n": 1}), timeout=5)
        except Exception as e:  # noqa: BLE001 - any failure means not ready
            return _error(503, "not_ready", f"a stage did not answer: {type(e).__name__}")
        try:
            await asyncio.wait_for(self.encoder.ping_store.remote(), timeout=5)
        except Exception as e:  # noqa: BLE001
            return _error(503, "not_ready", f"the event store cannot be read: {type(e).__name__}")
        return {"status": "ready", "model_version": self.manifest["version"]}
