"""Ingress deployment: the HTTP API (FastAPI), validation, and the composition of the stages.

(No ``from __future__ import annotations`` here: FastAPI must see the real request types.)

    POST /v1/recommend  {"user_id": "1", "history": ["318"], "k": 10, "exclude": ["1"],
                         "filters": {"genres": ["Comedy"]}, "diversity": 0.3}
    POST /v1/events     {"events": [{"user_id": "1", "item_id": "318", "timestamp": 1700000000}]}
                        → {"stored": 1} once every event is committed to the event store
    POST /v1/items      {"items": [{"item_id": "n1", "title": "…", "text": "…", "attributes": {…}}]}
                        (admin) → {"added": 1}; recommendable by the next request
    GET  /v1/model      version, creation time and offline metrics of the loaded model, reload errors
    POST /v1/model/reload  (admin) load the newest version under the model URI now
    GET  /healthz       the process is alive
    GET  /readyz        the model is loaded, every stage answers and the event store can be read

Every stage call has a deadline (``deadline_ms`` in the ingress's ``user_config``). When scoring fails,
is too slow or is overloaded, the answer comes from the ranker's co-occurrence / popularity ranking
with ``"degraded": true``; when the event store cannot be read the answer lacks the stored events and
is degraded too. Admin endpoints need ``Authorization: Bearer $DISTILREC_ADMIN_TOKEN`` when that
variable is set. Request bodies are limited to ``MAX_BODY_BYTES``. Every response carries Serve's
``X-Request-Id`` (the client's, when it sent one), which the replicas' JSON logs carry as
``request_id``. Every error is JSON ``{"error": {"code": ..., "message": ...}}`` with a stable
``code``; a response never carries a stack trace.
"""


import asyncio
import hmac
import logging
import os
import time
from typing import Annotated, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from distilrec.artifacts import resolve
from services import metrics
from services.autoscaling import CPU_METRIC, CpuMeter
from services.state import freeze_heap

log = logging.getLogger("ray.serve")
MAX_HISTORY = 1000
MAX_EXCLUDE = 1000
MAX_EVENTS = 1000
MAX_ID_LEN = 256
MAX_TIMESTAMP = 4_102_444_800  # 2100-01-01 in unix seconds: catches milliseconds sent by mistake
RETRY_AFTER_S = 1
MAX_BODY_BYTES = 1 << 20  # 1 MiB: 1,000 events or 100 new items fit with room to spare
MAX_NEW_ITEMS = 100
MAX_TEXT = 5000
ADMIN_TOKEN_ENV = "DISTILREC_ADMIN_TOKEN"
# Per stage, in milliseconds; the serve config's ingress user_config overrides them.
DEFAULT_DEADLINES_MS = {"encode": 1000, "score": 1000, "rank": 1000, "store": 10000, "items": 60000,
                        "info": 5000, "reload": 120000}


# Ids are text without NUL characters (SQLite's length() stops at the first one; they are never meant).
NO_NUL = r"^[^\x00]*$"
ItemId = Annotated[str, Field(min_length=1, max_length=MAX_ID_LEN, pattern=NO_NUL)]
AttributeValue = Annotated[str, Field(max_length=MAX_ID_LEN)]


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: str | None = Field(None, min_length=1, max_length=256, pattern=NO_NUL,
                                description="the dataset's own user id")
    history: list[ItemId] = Field(default_factory=list, max_length=MAX_HISTORY,
                               description="item ids the user just interacted with, oldest first")
    k: Optional[int] = Field(None, ge=1, le=100, description="how many items to return (default: the "
                                                                "ranker's default_k, 10)")
    exclude: list[ItemId] = Field(default_factory=list, max_length=MAX_EXCLUDE, description="item ids never to return")
    filters: dict[AttributeValue, list[AttributeValue]] = Field(default_factory=dict, max_length=10,
                                          description='keep items with one of these attribute values, e.g. '
                                                      '{"genres": ["Comedy", "Drama"]} (several attributes: all must match)')
    diversity: Optional[float] = Field(None, ge=0.0, le=1.0, description="MMR trade-off: 0 = pure relevance "
                                                                           "(default: the ranker's knob)")


class Item(BaseModel):
    item_id: str
    title: str
    score: float
    explanation: str = Field(description='why it is recommended, e.g. "because you watched X (often watched together)"')


class RecommendResponse(BaseModel):
    items: list[Item]
    model_version: str
    degraded: bool = Field(description="true when a fallback answered: a cheaper ranking, or a ranking without "
                                       "the user's stored events because the event store could not be read")
    cold_start: bool = Field(description="true when the user had no known history")


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: str = Field(min_length=1, max_length=MAX_ID_LEN, pattern=NO_NUL, description="the dataset's own user id")
    item_id: str = Field(min_length=1, max_length=MAX_ID_LEN, pattern=NO_NUL, description="a catalogue item id")
    timestamp: int | None = Field(None, ge=0, le=MAX_TIMESTAMP, description="unix seconds; default: now")
    type: str = Field("view", min_length=1, max_length=64, description="kind of interaction (stored, not yet "
                                                                       "used by the ranking)")


class EventsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    events: list[EventIn] = Field(min_length=1, max_length=MAX_EVENTS,
                                  description="stored all or nothing, in this order")


class EventsResponse(BaseModel):
    stored: int = Field(description="events committed to the event store (all of the request's)")


class NewItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    item_id: str = Field(min_length=1, max_length=MAX_ID_LEN, pattern=NO_NUL)
    title: str = Field(min_length=1, max_length=512)
    text: Optional[str] = Field(None, max_length=MAX_TEXT, description="description to encode (default: the title)")
    attributes: dict[str, list[str]] = Field(default_factory=dict, max_length=20,
                                             description='e.g. {"genres": ["Comedy"], "tags": ["road trip"]}')


class ItemsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    items: list[NewItemIn] = Field(min_length=1, max_length=MAX_NEW_ITEMS, description="stored all or nothing")


class ItemsResponse(BaseModel):
    added: int


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


_ERROR_DOCS = {
    400: "invalid_request: the body is not UTF-8",
    401: "unauthorized: an admin endpoint without the right Bearer token",
    409: "item_exists / model_refused / text_features_unavailable",
    413: "payload_too_large: the body is over 1 MiB",
    422: "invalid_request (bad JSON, wrong types, values out of range, unknown fields) or unknown_item",
    503: "event_store_unavailable / unavailable / not_ready: retry after Retry-After seconds; nothing was stored "
         "unless the message says the store did not answer or confirm in time (then a retry may store twice)",
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}


def _errors(*codes: int) -> dict:
    """OpenAPI ``responses`` for these error statuses: JSON ``ErrorResponse`` (503 with ``Retry-After``)."""
    return {c: {"model": ErrorResponse, "description": _ERROR_DOCS[c], **({"headers": _RETRY_AFTER} if c == 503 else {})}
            for c in codes}


# Every route may answer 400/413/422 (the body checks run before routing); the routes add their own.
app = FastAPI(title="distilrec", version="0.1.0", description="Recommendations from a distilled student model.",
              responses=_errors(400, 413, 422))
_STATUS_CODES = {400: "invalid_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


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


_ROUTES = {"/v1/recommend", "/v1/events", "/v1/items", "/v1/model", "/v1/model/reload", "/healthz", "/readyz"}


def _too_large(request: Request) -> bool:
    length = request.headers.get("content-length")
    if length is None:
        return False
    try:
        return int(length) > MAX_BODY_BYTES
    except ValueError:
        return True


@app.middleware("http")
async def _count(request: Request, call_next):
    t0 = time.perf_counter()
    if request.url.path in _ADMIN_ROUTES and request.method == "POST" and not _admin_ok(request):
        # Before the body is read or validated: an unauthenticated client learns nothing and costs little.
        response = _error(401, "unauthorized", _UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})
    elif _too_large(request):
        response = _error(413, "payload_too_large", f"request bodies are limited to {MAX_BODY_BYTES} bytes")
    elif request.method == "POST" and "content-length" not in request.headers and \
            len(await request.body()) > MAX_BODY_BYTES:  # chunked upload: read (once, cached) and measure
        response = _error(413, "payload_too_large", f"request bodies are limited to {MAX_BODY_BYTES} bytes")
    else:
        response = await call_next(request)
    route = request.url.path if request.url.path in _ROUTES else "other"  # bounded label values
    m = _http_metrics()
    m["requests"].inc(tags={"route": route, "code": str(response.status_code)})
    m["latency"].observe((time.perf_counter() - t0) * 1000, tags={"route": route})
    if response.status_code >= 500:
        log.warning("%s %s -> %d", request.method, request.url.path, response.status_code)
    return response


_ADMIN_ROUTES = {"/v1/items", "/v1/model/reload"}
_UNAUTHORIZED = "this endpoint needs Authorization: Bearer <admin token>"


def _admin_ok(request: Request) -> bool:
    """``Authorization: Bearer <token>`` when ``$DISTILREC_ADMIN_TOKEN`` is set (constant-time compare)."""
    token = os.environ.get(ADMIN_TOKEN_ENV)
    if not token:
        return True
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())


def _check_admin(request: Request) -> None:
    if not _admin_ok(request):
        raise ApiError(401, "unauthorized", _UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})


async def _awaitable(response):
    return await response


@serve.deployment
@serve.ingress(app)
class Ingress:
    def __init__(self, encoder: DeploymentHandle, scorer: DeploymentHandle, ranker: DeploymentHandle,
                 model_uri: str):
        self.encoder, self.scorer, self.ranker = encoder, scorer, ranker
        self.model_uri = model_uri
        self.deadlines_ms = dict(DEFAULT_DEADLINES_MS)
        self.stage = metrics.stage_latency()
        self.cold_start = metrics.cold_start_total()
        self.degraded = metrics.degraded_total()
        self.cpu, self.cpu_busy = CpuMeter(), metrics.ingress_cpu_busy()
        freeze_heap()  # see services.state.freeze_heap: no full GC pass over the libraries mid-request

    def reconfigure(self, config: dict) -> None:
        """``{"deadline_ms": {"encode": 500, "score": 300, …}}``."""
        for stage, ms in (config.get("deadline_ms") or {}).items():
            self.deadlines_ms[stage] = float(ms)

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's autoscaling metric of this replica: the share of a CPU it used since the last call.
        The ingress mostly waits on the other stages, so it scales on its CPU
        (``services.autoscaling.CpuBusyPolicy``), not on the requests it holds. The same figure is
        exported as ``distilrec_ingress_cpu_busy`` for the dashboard."""
        busy = self.cpu.sample()
        self.cpu_busy.set(busy)
        return {CPU_METRIC: busy}

    async def _timed(self, stage: str, response):
        """Await a stage call within its deadline; the call is cancelled when the deadline passes."""
        t0 = time.perf_counter()
        try:
            return await asyncio.wait_for(_awaitable(response), self.deadlines_ms.get(stage, 1000) / 1000)
        except asyncio.TimeoutError:
            response.cancel()
            raise
        finally:
            self.stage.observe((time.perf_counter() - t0) * 1000, tags={"stage": stage})

    def _degrade(self, reason: str) -> None:
        self.degraded.inc(tags={"reason": reason})

    @app.post("/v1/recommend", response_model=RecommendResponse, responses=_errors(503))
    async def recommend(self, req: RecommendRequest) -> RecommendResponse:
        """Top-k unseen items for a user (stored history + events + the request's ``history``), or the
        popular items for a cold start. ``degraded`` marks an answer given by a fallback."""
        reasons = []
        try:
            feats = await self._timed("encode", self.encoder.encode.remote(req.user_id, req.history, req.filters))
        except Exception as e:  # noqa: BLE001 - the encoder is down or slow: the request's history only
            reasons.append("encoder_timeout" if isinstance(e, asyncio.TimeoutError) else "encoder_error")
            log.warning("encode failed (%s); answering from the request's history", type(e).__name__)
            feats = {"items": list(req.history), "timestamps": [int(time.time())] * len(req.history),
                     "unknown_items": [], "unknown_filters": [], "store_ok": True, "sync": None, "known_user": False}
        if feats["unknown_items"]:
            shown = ", ".join(repr(i) for i in feats["unknown_items"][:5])
            raise ApiError(422, "unknown_item", f"history has item ids not in the catalogue: {shown}")
        if feats["unknown_filters"]:
            known = ", ".join(feats.get("attribute_names") or []) or "none"
            raise ApiError(422, "invalid_request", f"unknown filter attribute(s) {feats['unknown_filters']}; "
                                                   f"known: {known}")
        if not feats["store_ok"]:
            reasons.append("store_read")
        history, sync = feats["items"], feats["sync"]
        filters = req.filters or None
        try:
            if not history:
                self.cold_start.inc()
                ranked = await self._timed("rank", self.ranker.popular.remote(req.exclude, req.k, filters, sync))
                return self._answer(ranked, reasons, cold_start=True)
            try:
                cands = await self._timed("score", self.scorer.score.remote(
                    {"history": history, "timestamps": feats["timestamps"], "k": req.k,
                     "n_drop": len(history) + len(req.exclude),
                     "wide": bool(filters), "sync": sync}))
            except Exception as e:  # noqa: BLE001 - any scorer failure falls back to the cheap ranking
                reason = ("scorer_timeout" if isinstance(e, asyncio.TimeoutError) else
                          "scorer_overloaded" if isinstance(e, BackPressureError) else "scorer_error")
                log.warning("scoring failed (%s: %s); answering with the co-occurrence fallback", reason,
                            type(e).__name__)
                reasons.append(reason)
                ranked = await self._timed("rank", self.ranker.fallback.remote(history, req.exclude, req.k,
                                                                               filters, sync))
                return self._answer(ranked, reasons, cold_start=False)
            ranked = await self._timed("rank", self.ranker.rank.remote(cands, history, req.exclude, req.k, filters,
                                                                        req.diversity, sync))
            ranked["model_version"] = cands["model_version"]
            return self._answer(ranked, reasons, cold_start=False)
        except ApiError:
            raise
        except Exception as e:  # noqa: BLE001 - without the ranker there is no answer at all
            log.error("ranking failed: %s", type(e).__name__)
            raise ApiError(503, "unavailable", "the ranking stage did not answer; retry",
                           headers={"Retry-After": str(RETRY_AFTER_S)}) from None

    def _answer(self, ranked: dict, reasons: list[str], cold_start: bool) -> RecommendResponse:
        for r in reasons:
            self._degrade(r)
        return RecommendResponse(items=ranked["items"], model_version=ranked["model_version"],
                                 degraded=bool(reasons), cold_start=cold_start)

    @app.post("/v1/events", response_model=EventsResponse, responses=_errors(503))
    async def events(self, req: EventsRequest) -> EventsResponse:
        """Store interactions; a 2xx means every event is committed (fsynced) and the next
        ``/v1/recommend`` for its user reflects it. All or nothing: an unknown item id stores none."""
        now = int(time.time())
        batch = [{"user_id": e.user_id, "item_id": e.item_id, "type": e.type,
                  "timestamp": now if e.timestamp is None else e.timestamp} for e in req.events]
        try:
            result = await self._timed("store", self.encoder.append_events.remote(batch))
        except Exception as e:  # noqa: BLE001 - too slow, or the encoder replica died (restart, crash)
            # The write may still have committed: the client retries (events are a log; a retry may duplicate).
            log.warning("storing events failed: %s", type(e).__name__)
            what = "did not answer in time" if isinstance(e, asyncio.TimeoutError) else "is not reachable"
            raise ApiError(503, "event_store_unavailable", f"the event store {what}; the events may have been "
                           "stored (a retry may store them twice)",
                           headers={"Retry-After": str(RETRY_AFTER_S)}) from None
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

    @app.post("/v1/items", response_model=ItemsResponse, responses=_errors(401, 409, 503))
    async def items(self, req: ItemsRequest, request: Request) -> ItemsResponse:
        """Add items by their text (admin). They are encoded with the model's text encoder, stored in the
        event store, and recommendable by the next request on every replica, without retraining."""
        _check_admin(request)
        ids = [it.item_id for it in req.items]
        if len(set(ids)) != len(ids):
            raise ApiError(422, "invalid_request", "the same item_id twice in one request")
        payload = [it.model_dump() for it in req.items]
        try:
            result = await self._timed("items", self.encoder.add_items.remote(payload))
        except asyncio.TimeoutError:
            raise ApiError(503, "unavailable", "encoding the items took too long; retry",
                           headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        code = result.get("error")
        if code == "event_store_unavailable":
            raise ApiError(503, code, result["message"], headers={"Retry-After": str(RETRY_AFTER_S)})
        if code == "invalid_request":
            raise ApiError(422, code, result["message"])
        if code:
            raise ApiError(409, code, result["message"])
        return ItemsResponse(added=result["added"])

    async def _info(self) -> dict:
        return await self._timed("info", self.scorer.info.remote())

    @app.get("/v1/model", responses=_errors(503))
    async def model(self) -> dict:
        """The model the scorer serves: version, creation time, offline metrics, and the last refused
        artifact with its reason (``last_reload_error``)."""
        try:
            return await self._info()
        except Exception as e:  # noqa: BLE001
            raise ApiError(503, "unavailable", f"the scorer did not answer: {type(e).__name__}",
                           headers={"Retry-After": str(RETRY_AFTER_S)}) from None

    @app.post("/v1/model/reload", responses={**_errors(401, 409, 503), 202: {"description": "still loading"}})
    async def reload(self, request: Request):
        """Load the newest version under the model URI now (admin). Every replica loads it in the
        background and swaps it in between requests; ``200`` once the scorer serves it, ``409
        model_refused`` with the reason when it does not load (the old model keeps serving), ``202`` when
        it is still loading after the reload deadline."""
        _check_admin(request)
        try:
            target = await asyncio.to_thread(resolve, self.model_uri)
        except Exception as e:  # noqa: BLE001
            raise ApiError(409, "model_refused", f"no model artifact at the configured URI: {e}") from None
        try:
            before = await self._info()
        except Exception as e:  # noqa: BLE001 - the scorer is down or slow: nothing to swap yet
            raise ApiError(503, "unavailable", f"the scorer did not answer: {type(e).__name__}",
                           headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        if before["uri"] == target:
            return {"version": before["version"], "previous": before["version"], "changed": False}
        await self._timed("store", self.encoder.request_reload.remote())
        deadline = time.monotonic() + self.deadlines_ms["reload"] / 1000
        while time.monotonic() < deadline:
            info = await self._info()
            if info["uri"] == target:
                return {"version": info["version"], "previous": before["version"],
                        "changed": info["version"] != before["version"]}
            refused = {r["uri"]: r["reason"] for r in info.get("refused", [])}
            if target in refused and (info.get("last_reload_error") or {}).get("at", "") > \
                    (before.get("last_reload_error") or {}).get("at", ""):
                raise ApiError(409, "model_refused", f"{target} was refused, still serving {info['version']}: "
                                                     f"{refused[target]}"[:2000])
            await asyncio.sleep(0.5)
        return JSONResponse({"status": "loading", "target": target, "version": before["version"]}, status_code=202)

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.get("/readyz", responses=_errors(503))
    async def readyz(self):
        try:
            await asyncio.wait_for(_awaitable(self.encoder.encode.remote(None, [])), timeout=5)
            cands = await asyncio.wait_for(_awaitable(self.scorer.score.remote({"history": [], "k": 1})), timeout=5)
            await asyncio.wait_for(_awaitable(self.ranker.attribute_names.remote()), timeout=5)
        except Exception as e:  # noqa: BLE001 - any failure means not ready
            return _error(503, "not_ready", f"a stage did not answer: {type(e).__name__}")
        try:
            await asyncio.wait_for(_awaitable(self.encoder.ping_store.remote()), timeout=5)
        except Exception as e:  # noqa: BLE001
            return _error(503, "not_ready", f"the event store cannot be read: {type(e).__name__}")
        return {"status": "ready", "model_version": cands["model_version"]}

