"""Ingress deployment: the HTTP API (FastAPI) and, in process, the whole recommendation of a known user.

(No ``from __future__ import annotations`` here: FastAPI must see the real request types.)

    POST /v1/recommend  {"user_id": "1", "history": ["318"], "k": 10, "exclude": ["1"],
                         "filters": {"genres": ["Comedy"]}, "diversity": 0.3, "query": "space opera"}
    POST /v1/events     {"events": [{"user_id": "1", "item_id": "318", "timestamp": 1700000000,
                                     "event_id": "c0ffee-1", "recommendation_id": "9f…"}]}
                        → {"stored": 1, "new": 1} once every event is committed to the event store
                        (with "feedback": {"hits", …} when an event names the recommendation it follows)
    POST /v1/items      {"items": [{"item_id": "n1", "title": "…", "text": "…", "attributes": {…}}]}
                        (admin) → {"added": 1}; recommendable by the next request
    GET  /v1/model      version, creation time and offline metrics of the loaded model, reload errors
    POST /v1/model/reload  (admin) load the newest version under the model URI now
    POST /v1/model/promote {"version": "v…", "force": false}  (admin) move models/LATEST to a version, reload
    POST /v1/model/rollback  (admin) move models/LATEST back to the version published before, reload
    GET  /healthz       the process is alive
    GET  /readyz        the model is loaded, the scorer answers and the event store can be read

A request is answered by one of the experiment's A/B arms (``experiment`` / ``arms`` in ``user_config``,
:mod:`services.arms`): a user id is assigned to an arm by a stable hash, a request without one at random;
each arm serves a model version and scorer model of its own (arms that share both share one
:class:`ServingState`). Every answer carries its ``arm`` and a ``recommendation_id``; what it showed is
kept in the event store after the answer is sent (batched, off the response path), so that an event that
names the ``recommendation_id`` counts as a hit for that arm at the item's rank (per-arm metrics).
A shadow arm (``shadow: true``) never answers: after an answer is sent, the replica scores the request with
it too, within ``shadow_deadline_ms`` and at most ``shadow_max_in_flight`` at once, and records the overlap
of the two lists. A canary arm (``canary`` in ``user_config``, :mod:`services.canary`) moves up in steps
of traffic while its errors, degraded answers and p99 stay within bounds of the stable arms', or is rolled
back by itself; its state is shared through the event store, so every replica serves the same weights.

A known user's request makes no handle call: ``POST /v1/recommend`` skips FastAPI's routing (see
:class:`_App`); the requests waiting on a replica together (``@serve.batch`` on
:meth:`Ingress.score_batch`) share one trip to a store thread for their histories (artifact + event
store, off the event loop) and one tensor batch of the model in process; each is then ranked and
answered (:mod:`distilrec.serving`). With ``scorer: deployment`` the scoring step of a batch is one typed
handle call to the Scorer deployment instead (a model that needs hardware or scaling of its own). The
TextEncoder deployment embeds new items' text and a request's ``query``.

Every step has a deadline (``deadline_ms`` in the ingress's ``user_config``). When scoring fails, is too
slow or is overloaded, the answer comes from the co-occurrence / popularity ranking with
``"degraded": true``; when the event store cannot be read the answer lacks the stored events and is
degraded too; a query whose text cannot be embedded is answered without it, degraded. Admin endpoints
need ``Authorization: Bearer <token>`` when a token is set (``services.security``: the environment variable
or a mounted file). Request bodies are
limited to ``MAX_BODY_BYTES`` (a larger body is read and dropped before the 413, so that a client that
sends it all before reading still gets the answer). Every response carries Serve's ``X-Request-Id``,
which the replicas' JSON logs carry as ``request_id``. Every error is JSON ``{"error": {"code": ...,
"message": ...}}`` with a stable ``code``; a response never carries a stack trace.
"""


import asyncio
import dataclasses
import hmac
import logging
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import to_json
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

import numpy as np

from distilrec import versions
from distilrec.artifacts import resolve
from distilrec.catalog import compose_text, parse_attributes
from distilrec.query import QUERY_WEIGHT
from distilrec.retrieval import RetrievalChoice
from distilrec.serving import (DEFAULT_CANDIDATES, DEFAULT_K, Features, ScoreRequest, ScoreResult, ServingBundle,
                               candidates_wanted, fallback, popular, rank, rank_with_query, user_features)
from distilrec.stores import EventStoreError, Impression, NewItem, open_event_store
from services import metrics
from services.arms import Arm, Experiment, default_experiment, parse_experiment, previous_version, version_uri
from services.autoscaling import CPU_METRIC, CpuMeter
from services.canary import (REASONS, ROLLED_BACK, STATUSES, CanaryConfig, Figures, Rollout, judge, parse_canary,
                             state_key, weights)
from services.security import admin_token
from services.state import ServingState, close_replica, freeze_heap

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
MAX_QUERY = 1000
DRAIN_LIMIT_BYTES = 64 << 20  # an oversized body is read and dropped up to this much before the 413
SEEN_USERS = 100_000  # users whose last reflected event this replica remembers (event-to-effect metric)
IMPRESSION_FLUSH_S = 0.1  # answers' impressions and arm metrics are written this long after the first waits
IMPRESSION_BATCH = 256  # ... or at once when this many wait
MAX_PENDING_IMPRESSIONS = 20_000  # beyond this (a store too slow to keep up) impressions are dropped, counted
MAX_RECOMMENDATION_ID = 64
SHADOW_DEADLINE_MS = 50.0  # a shadow arm's scoring budget after the answer (user_config shadow_deadline_ms)
SHADOW_MAX_IN_FLIGHT = 4  # shadow scorings running at once per replica; more are dropped (shadow_max_in_flight)
CANARY_TICK_S = 1.0  # how often a replica reads the canary's shared state (at most; interval_s / 4 when shorter)
# Per stage, in milliseconds; the serve config's ingress user_config overrides them.
DEFAULT_DEADLINES_MS = {"features": 1000, "score": 1000, "query": 1000, "store": 10000, "items": 60000,
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
                                                                "ingress's default_k, 10)")
    exclude: list[ItemId] = Field(default_factory=list, max_length=MAX_EXCLUDE, description="item ids never to return")
    filters: dict[AttributeValue, list[AttributeValue]] = Field(default_factory=dict, max_length=10,
                                          description='keep items with one of these attribute values, e.g. '
                                                      '{"genres": ["Comedy", "Drama"]} (several attributes: all must match)')
    diversity: Optional[float] = Field(None, ge=0.0, le=1.0, description="MMR trade-off: 0 = pure relevance "
                                                                           "(default: the ingress's knob)")
    query: Optional[str] = Field(None, min_length=1, max_length=MAX_QUERY, pattern=NO_NUL,
                                 description="free text, e.g. \"a space opera with robots\": the ranking blends the "
                                             "model's score with the query's similarity to the items' text "
                                             "(query_weight in the ingress's user_config)")


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
    arm: str = Field(description="the A/B arm that answered (\"default\" without arms in the ingress's user_config); "
                                 "a user id stays on its arm")
    recommendation_id: str = Field(description="this answer's id: send it with the events that follow it "
                                               "(POST /v1/events) to count them as hits for its arm")


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: str = Field(min_length=1, max_length=MAX_ID_LEN, pattern=NO_NUL, description="the dataset's own user id")
    item_id: str = Field(min_length=1, max_length=MAX_ID_LEN, pattern=NO_NUL, description="a catalogue item id")
    timestamp: int | None = Field(None, ge=0, le=MAX_TIMESTAMP, description="unix seconds; default: now")
    type: str = Field("view", min_length=1, max_length=64, description="kind of interaction (stored, not yet "
                                                                       "used by the ranking)")
    event_id: str | None = Field(None, min_length=1, max_length=128, pattern=NO_NUL,
                                 description="the client's id of the event: an event whose id is already stored "
                                             "is not stored again, so a retry is safe")
    recommendation_id: str | None = Field(None, min_length=1, max_length=MAX_RECOMMENDATION_ID, pattern=NO_NUL,
                                          description="the recommendation_id of the answer the event follows: when "
                                                      "that answer showed the item, a hit for its arm at that rank; "
                                                      "an unknown or expired id is counted unmatched, not refused")


class EventsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    events: list[EventIn] = Field(min_length=1, max_length=MAX_EVENTS,
                                  description="stored all or nothing, in this order")


class Feedback(BaseModel):
    hits: int = Field(description="events on an item their recommendation showed")
    not_shown: int = Field(description="events on an item their recommendation did not show")
    unmatched: int = Field(description="events whose recommendation_id is unknown or expired")
    duplicate: int = Field(description="events not counted because their event_id was stored before")
    lookup_failed: int = Field(description="events not counted because the recommendations could not be read "
                                           "(the events are stored)")


class EventsResponse(BaseModel):
    stored: int = Field(description="events of the request that are in the event store (all of them)")
    new: int = Field(description="of those, events stored by this request (the others' event_id was stored before)")
    feedback: Feedback | None = Field(None, description="only when an event carries a recommendation_id: what "
                                                        "those events counted for their arms")


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


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    version: str = Field(max_length=128, pattern=versions.VERSION_NAME.pattern,
                         description="a version folder's name under the model URI (distilrec model list)")
    force: bool = Field(False, description="promote a version the offline gate refused")


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
    404: "unknown_version: promote names no version folder under the model URI",
    409: "item_exists / model_refused / text_features_unavailable / version_refused (promote without force) / "
         "version_incomplete / no_previous_version (rollback) / not_a_model_output",
    413: "payload_too_large: the body is over 1 MiB",
    422: "invalid_request (bad JSON, wrong types, values out of range, unknown fields) or unknown_item",
    503: "event_store_unavailable / unavailable / not_ready: retry after Retry-After seconds; nothing was stored "
         "unless the message says the store did not answer or confirm in time (then a retry of events with an "
         "event_id stores each once; without one it may store twice)",
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}


def _errors(*codes: int) -> dict:
    """OpenAPI ``responses`` for these error statuses: JSON ``ErrorResponse`` (503 with ``Retry-After``)."""
    return {c: {"model": ErrorResponse, "description": _ERROR_DOCS[c], **({"headers": _RETRY_AFTER} if c == 503 else {})}
            for c in codes}


class _App(FastAPI):
    """FastAPI, but ``POST /v1/recommend``, the hot route, goes straight to the replica's
    :meth:`Ingress._recommend_asgi` through the same guard as every route (auth, body size, metrics),
    without FastAPI's middleware stack, routing and dependency solving."""

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and _route(scope) == "/v1/recommend":
            return await serve.get_replica_context().servable_object.guarded_recommend(scope, receive, send)
        await super().__call__(scope, receive, send)


def _route(scope) -> str:
    """The request's path below the application's route prefix (Serve's ``root_path``)."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


# Every route may answer 400/413/422 (the body checks run before routing); the routes add their own.
app = _App(title="distilrec", version="0.1.0", description="Recommendations from a distilled student model.",
              responses=_errors(400, 413, 422))
_STATUS_CODES = {400: "invalid_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


@app.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return _error(exc.status, exc.code, exc.message, exc.headers)


def _invalid(errors: list[dict]) -> JSONResponse:
    """The 422 of a body that fails validation: its first five errors, ``"field.path: message"``."""
    parts = []
    for e in errors[:5]:
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        parts.append(f"{where or 'body'}: {e.get('msg')}")
    return _error(422, "invalid_request", "; ".join(parts))


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return _invalid(exc.errors())


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


_ROUTES = {"/v1/recommend", "/v1/events", "/v1/items", "/v1/model", "/v1/model/reload", "/v1/model/promote",
           "/v1/model/rollback", "/healthz", "/readyz"}


class _Guard:
    """Pure ASGI middleware (no per-request task group, as Starlette's ``BaseHTTPMiddleware`` has): the
    admin token of admin POSTs before their body is read, the body size limit, and the request metrics.

    A body over ``MAX_BODY_BYTES`` (by ``Content-Length``, or counted while a chunked upload is read) is
    read and dropped up to ``DRAIN_LIMIT_BYTES`` before the 413: a client that sends a whole body before
    it reads would otherwise see the connection reset instead of the answer."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        path, method = scope["path"], scope["method"]
        headers = {k.lower(): v for k, v in scope["headers"] if k.lower() in (b"content-length", b"authorization")}
        status = 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        early = None
        length = headers.get(b"content-length")
        if path in _ADMIN_ROUTES and method == "POST" and not _token_ok(headers.get(b"authorization", b"").decode()):
            # Before the body is read or validated: an unauthenticated client learns nothing and costs little.
            early = _error(401, "unauthorized", _UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})
        elif length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            await _drain(receive, 0)
            early = _too_large()
        elif length is None and method == "POST":  # chunked upload: read it here, measure, replay
            body, over, done = await _read_body(receive)
            if over:
                if not done:
                    await _drain(receive, len(body))
                early = _too_large()
            else:
                receive = _replay(body)
        try:
            await (early or self.app)(scope, receive, send_status)
        finally:
            route = path if path in _ROUTES else "other"  # bounded label values
            m = _http_metrics()
            m["requests"].inc(tags={"route": route, "code": str(status)})
            m["latency"].observe((time.perf_counter() - t0) * 1000, tags={"route": route})
            if status >= 500:
                log.warning("%s %s -> %d", method, path, status)


def _too_large() -> JSONResponse:
    return _error(413, "payload_too_large", f"request bodies are limited to {MAX_BODY_BYTES} bytes")


async def _read_body(receive) -> tuple[bytes, bool, bool]:
    """The body of a request without ``Content-Length``, read until it ends or passes ``MAX_BODY_BYTES``:
    ``(body, over the limit, the body has ended)``."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False, True
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        done = not message.get("more_body", False)
        if size > MAX_BODY_BYTES or done:
            return b"".join(chunks), size > MAX_BODY_BYTES, done


def _replay(body: bytes):
    """An ASGI ``receive`` that gives ``body`` once, then waits for the disconnect like the server's."""
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the server's receive blocks until the client goes away
        return {"type": "http.disconnect"}

    return receive


async def _drain(receive, seen: int) -> None:
    """Read and drop the rest of the body, up to ``DRAIN_LIMIT_BYTES`` in all."""
    try:
        while seen <= DRAIN_LIMIT_BYTES:
            message = await receive()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return
    except Exception:  # noqa: BLE001 - the client went away: nothing to answer
        pass


app.add_middleware(_Guard)


_ADMIN_ROUTES = {"/v1/items", "/v1/model/reload", "/v1/model/promote", "/v1/model/rollback"}
_UNAUTHORIZED = "this endpoint needs Authorization: Bearer <admin token>"


def _token_ok(authorization: str) -> bool:
    """``Authorization: Bearer <token>`` when ``$DISTILREC_ADMIN_TOKEN`` is set (constant-time compare)."""
    token = admin_token()
    if not token:
        return True
    scheme, _, value = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())


def _check_admin(request: Request) -> None:
    if not _token_ok(request.headers.get("authorization", "")):
        raise ApiError(401, "unauthorized", _UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})


def _refusal(what: str, e: EventStoreError, on_retry: str) -> str:
    """The client's message for a write the store refused: whether anything was stored."""
    if e.outcome_unknown:
        return f"the event store did not confirm {what} in time; they may have been stored ({on_retry})"
    return f"the event store did not accept {what}; nothing was stored, retry later"



STORE_THREADS = 4  # event store reads and writes run here, off the event loop


@dataclass
class _Job:
    """One request's part of the replica's batched step: whose history, the request's own history and
    exclusions, ``n`` candidates wanted, and the serving ``state`` of the request's arm (its model)."""

    user_id: str | None
    history: list[str]
    exclude: tuple[str, ...]
    n: int
    state: ServingState


@dataclass(frozen=True)
class _Arms:
    """The experiment and one serving state per ``(model, scorer_model)`` its arms need, swapped together
    in one assignment (a request reads ``Ingress.arms`` once)."""

    experiment: Experiment
    states: dict[tuple[str, str], ServingState]

    def route(self, user_id: str | None) -> tuple[Arm, ServingState]:
        arm = self.experiment.assign(user_id)
        return arm, self.states[arm.key]


@dataclass
class _Answered:
    """What the background flush records of one answer: the arm's metrics and, when it showed items,
    its impression."""

    arm: str
    ms: float
    degraded: bool
    impression: Impression | None


@dataclass
class _Scored:
    """A request's history (``feats``, read from ``bundle``) and, scored in process, its candidates
    (``result``; ``None`` when there was nothing to score or ``failure`` says why: ``scorer_timeout`` |
    ``scorer_overloaded`` | ``scorer_error``)."""

    bundle: ServingBundle
    feats: Features
    result: ScoreResult | None
    failure: str | None


class _Budgeted:
    """A :class:`~distilrec.serving.ModelScorer` held to an arm's own budget (``score_deadline_ms``):
    :meth:`score` raises ``TimeoutError`` when the model step took longer than ``ms`` (a step cannot be
    interrupted: its result is dropped, as past the ``score`` deadline). Every other attribute is the
    scorer's."""

    def __init__(self, scorer, ms: float):
        self._scorer, self._ms = scorer, float(ms)

    def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        t0 = time.perf_counter()
        out = self._scorer.score(requests)
        ms = (time.perf_counter() - t0) * 1000
        if ms > self._ms:
            raise TimeoutError(f"the arm's model took {ms:.2f} ms, over its {self._ms:g} ms budget")
        return out

    def __getattr__(self, name: str):
        return getattr(self._scorer, name)


@serve.deployment
@serve.ingress(app)
class Ingress:
    """One replica: the catalogue, the users' histories and (``scorer="inline"``) the model, held once.

    ``text_encoder``: the TextEncoder deployment (new items' text, queries); ``scorer``: the Scorer
    deployment when ``scorer="deployment"``, else ``None``; ``scorer_model``: ``student`` | ``teacher``;
    ``retrieval``: ``exact`` | ``faiss`` | ``auto`` or a :class:`~distilrec.retrieval.RetrievalChoice`
    (``auto``: faiss from its ``faiss_min_items`` on); ``threads``: torch threads for in-process scoring."""

    def __init__(self, text_encoder: DeploymentHandle, scorer: DeploymentHandle | None, model_uri: str,
                 event_store: str, scorer_model: str = "student", retrieval: str | RetrievalChoice = "auto",
                 threads: int = 1, model_poll_s: float = 30.0):
        self.text_encoder, self.scorer = text_encoder, scorer
        self.model_uri = model_uri
        self.inline = scorer is None
        self.scorer_model, self.retrieval, self.model_poll_s = scorer_model, retrieval, model_poll_s
        if self.inline:
            import torch

            from distilrec.models import native_cpu_kernels

            torch.set_num_threads(threads)
            native_cpu_kernels(True)  # PyTorch's own CPU kernels: a request's small ops pay less set-up
        self.io = ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="store")
        self.store = open_event_store(event_store)
        which = scorer_model if self.inline else None
        self.state = ServingState(model_uri, lambda art: ServingBundle.build(art, which, retrieval), self.store,
                                  model_poll_s, with_teacher=which == "teacher", with_histories=True)
        # The default arm: the latest version with the deployment's scorer model, this state.
        self.arms = _Arms(default_experiment(scorer_model), {("latest", scorer_model): self.state})
        self.arms_error: dict | None = None  # the last arms config refused, with the reason
        self.pending: list[_Answered] = []  # answers not yet flushed (impressions, arm metrics)
        self.pending_impressions = 0
        self.backlog_dropped = 0
        self.flusher: asyncio.Task | None = None
        self.flush_wake: asyncio.Event | None = None
        self.m_arm = {"requests": metrics.arm_requests_total(), "latency": metrics.arm_latency(),
                      "degraded": metrics.arm_degraded_total(), "impressions": metrics.arm_impressions_total(),
                      "hits": metrics.arm_hits_total(), "rank_sum": metrics.arm_hit_rank_sum_total(),
                      "feedback": metrics.feedback_events_total(), "dropped": metrics.impressions_dropped_total()}
        self.deadlines_ms = dict(DEFAULT_DEADLINES_MS)
        self.candidates, self.default_k, self.diversity, self.query_weight = DEFAULT_CANDIDATES, DEFAULT_K, 0.0, QUERY_WEIGHT
        self.knobs: dict = {"max_batch_size": 32, "batch_wait_timeout_s": 0.0}
        self.batch_wait_s, self.steps = 0.0, 0  # the batch wait; scoring steps running (queued or not)
        self.stage = metrics.stage_latency()
        self.cold_start = metrics.cold_start_total()
        self.degraded = metrics.degraded_total()
        self.batch_size = metrics.batch_size()
        self.n_candidates = metrics.candidates_per_request()
        self.events_stored = metrics.events_stored_total()
        self.items_added = metrics.items_added_total()
        self.store_errors = metrics.event_store_errors()
        self.effect = metrics.event_to_effect()
        self.started = time.time()
        self.reflected: OrderedDict[str, int] = OrderedDict()  # user -> last event seq reflected here
        self.cpu, self.cpu_busy = CpuMeter(), metrics.ingress_cpu_busy()
        self.guarded_recommend = _Guard(self._recommend_asgi)  # the direct route of _App
        self._init_rollout()
        freeze_heap()  # see services.state.freeze_heap: no full GC pass over the libraries mid-request

    async def reconfigure(self, config: dict) -> None:
        """``{"deadline_ms": {"score": 300, …}, "max_batch_size": 32, "batch_wait_timeout_s": 0.0,
        "candidates": 200, "default_k": 10, "diversity": 0.0, "query_weight": 0.5, "experiment": "x",
        "arms": [{"name", "model", "scorer_model", "weight", "shadow", "score_deadline_ms"}, …],
        "canary": {"arm", "start_weight", "step", "interval_s", "max_weight", "bounds"},
        "shadow_deadline_ms": 50, "shadow_max_in_flight": 4}`` (arms: :mod:`services.arms`, canary:
        :mod:`services.canary`; a model an arm adds is loaded off the event loop before this returns). A bad
        ``arms`` config is refused with an error log and shown in ``GET /v1/model`` (``arms_error``); the
        arms before it keep serving. A bad ``canary`` block likewise (``canary_error``)."""
        for stage, ms in (config.get("deadline_ms") or {}).items():
            self.deadlines_ms[stage] = float(ms)
        if "max_batch_size" in config:
            self.score_batch.set_max_batch_size(max(1, int(config["max_batch_size"])))
        if "batch_wait_timeout_s" in config:
            self.batch_wait_s = max(0.0, float(config["batch_wait_timeout_s"]))
            self.score_batch.set_batch_wait_timeout_s(self.batch_wait_s)
        if "candidates" in config:
            self.candidates = max(1, int(config["candidates"]))
        if "default_k" in config:
            self.default_k = min(100, max(1, int(config["default_k"])))
        if "diversity" in config:
            self.diversity = min(1.0, max(0.0, float(config["diversity"])))
        if "query_weight" in config:
            self.query_weight = min(1.0, max(0.0, float(config["query_weight"])))
        self.knobs = {**self.knobs, **{k: v for k, v in config.items()
                                       if k not in ("deadline_ms", "experiment", "arms", "canary")}}
        await self._set_arms(config)
        self._set_rollout(config)

    async def _set_arms(self, config: dict) -> None:
        """Swap in the arms of ``config`` (see :meth:`reconfigure`): states of ``(model, scorer_model)``
        pairs already held are kept, new ones loaded, those no arm needs any more closed."""
        old = self.arms
        created: list[ServingState] = []
        try:
            exp = parse_experiment(config, self.scorer_model, self.inline)
            states = {}
            for key in sorted(exp.keys):
                if key in old.states:
                    states[key] = old.states[key]
                elif key == ("latest", self.scorer_model):
                    states[key] = self.state
                else:
                    states[key] = await asyncio.to_thread(self._arm_state, *key)
                    created.append(states[key])
        except Exception as e:  # noqa: BLE001 - a bad config never takes the replica down
            for state in created:
                state.close()
            self.arms_error = {"reason": f"{type(e).__name__}: {e}"[:2000], "config": {
                k: config.get(k) for k in ("experiment", "arms")}}
            log.error("arms config refused, still serving experiment %s with arms %s: %s", old.experiment.name,
                      [a.name for a in old.experiment.arms], self.arms_error["reason"])
            return
        self.arms, self.arms_error = _Arms(exp, states), None
        kept = set(map(id, states.values())) | {id(self.state)}
        for state in old.states.values():
            if id(state) not in kept:
                state.close()
        if len(exp.arms) > 1 or old.experiment != exp:
            log.info("experiment %s: %s", exp.name, ", ".join(
                f"{a['name']} ({a['model']}, {a['scorer_model']}, {a['share']:.1%})" for a in exp.describe()["arms"]))

    def _arm_state(self, model: str, scorer_model: str, score_ms: float | None = None) -> ServingState:
        """A serving state of its own for an arm (runs off the event loop): ``latest`` follows
        ``models/LATEST``, ``previous`` the version published before it, a version name is pinned;
        ``score_ms``: the arm's own model-step budget (:class:`_Budgeted`)."""
        resolver, uri, poll = resolve, self.model_uri, self.model_poll_s
        if model == "previous":
            resolver = previous_version
        elif model != "latest":
            uri, poll = version_uri(self.model_uri, model), 0.0

        def build(art):
            b = ServingBundle.build(art, scorer_model, self.retrieval)
            return b if score_ms is None or b.scorer is None else dataclasses.replace(
                b, scorer=_Budgeted(b.scorer, score_ms))

        return ServingState(uri, build, self.store, poll, with_teacher=scorer_model == "teacher",
                            with_histories=True, resolver=resolver)

    def _states(self) -> list[ServingState]:
        """Every serving state this replica holds, the deployment's own first."""
        return [self.state] + [s for s in self.arms.states.values() if s is not self.state]

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's autoscaling metric of this replica: the share of a CPU it used since the last call
        (``services.autoscaling.CpuBusyPolicy``), also exported as ``distilrec_ingress_cpu_busy``."""
        busy = self.cpu.sample()
        self.cpu_busy.set(busy)
        return {CPU_METRIC: busy}

    # ------------------------------------------------------------------------------------ helpers

    async def _timed(self, stage: str, awaitable):
        """Await one step within its deadline (``TimeoutError`` past it; a handle call is
        cancelled)."""
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(self.deadlines_ms.get(stage, 1000) / 1000):  # no extra task, unlike wait_for
                return await awaitable
        except TimeoutError:
            cancel = getattr(awaitable, "cancel", None)
            if cancel is not None:
                cancel()
            raise
        finally:
            self.stage.observe((time.perf_counter() - t0) * 1000, tags={"stage": stage})

    def _in_thread(self, stage: str, fn, *args):
        """``fn(*args)`` on the store threads, within the stage's deadline."""
        return self._timed(stage, asyncio.get_running_loop().run_in_executor(self.io, fn, *args))

    def _sync(self) -> tuple[bool, tuple[int, int] | None]:
        """Catch up with the store's new items and reload requests; ``(store readable, sync state)``."""
        try:
            sync = tuple(self.store.sync_state())
        except EventStoreError as e:
            log.warning("event store sync read failed: %s", e)
            self.store_errors.inc(tags={"op": "read"})
            return False, None
        for state in self._states():
            state.sync(sync)
        return True, sync

    def _features(self, jobs: list[_Job]) -> list[tuple[ServingBundle, Features, tuple | None]]:
        """Runs on a store thread: sync once, then each user's history, from one bundle per arm's state."""
        ok, sync = self._sync()
        bundles: dict[int, ServingBundle] = {}
        out = []
        for job in jobs:
            user_id, history = job.user_id, job.history
            b = bundles.get(id(job.state))
            if b is None:
                b = bundles[id(job.state)] = job.state.bundle
            feats = user_features(b, self.store, user_id, history, store_ok=ok)
            if ok and not feats.store_ok:
                log.warning("event store read failed; answering without stored events")
                self.store_errors.inc(tags={"op": "read"})
            if user_id is not None and feats.stored:
                self._observe_effect(user_id, feats.stored)
            out.append((b, feats, sync))
        return out

    def _observe_effect(self, user_id: str, stored) -> None:
        """``distilrec_event_to_effect_seconds`` for events no earlier recommendation here reflected."""
        last = self.reflected.get(user_id, 0)
        fresh = [e for e in stored if e.seq > last and e.committed >= self.started]
        if fresh:
            self.effect.observe(max(0.0, time.time() - min(e.committed for e in fresh)))
        self.reflected[user_id] = max(last, max(e.seq for e in stored))
        self.reflected.move_to_end(user_id)
        while len(self.reflected) > SEEN_USERS:
            self.reflected.popitem(last=False)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0, max_concurrent_batches=2)
    async def score_batch(self, jobs: list[_Job]) -> list[_Scored]:
        """The requests that reached this replica's queue together share one :meth:`_step`
        (``max_batch_size`` / ``batch_wait_timeout_s`` in ``user_config``; 1 = no batching)."""
        return await self._step(jobs)

    async def _step(self, jobs: list[_Job]) -> list[_Scored]:
        """One trip to a store thread (the jobs' histories, one sync read) and one scoring step: one
        tensor batch of the model in process, or one handle call to the Scorer deployment. A store read
        past the ``features`` deadline is answered without the stored events; a scoring step past
        ``score``, or failing, from the co-occurrence fallback."""
        self.steps += 1
        try:
            return await self._read_then_score(jobs)
        finally:
            self.steps -= 1

    async def _read_then_score(self, jobs: list[_Job]) -> list[_Scored]:
        self.batch_size.observe(len(jobs))
        try:
            read = await self._in_thread("features", self._features, jobs)
        except TimeoutError:
            log.warning("reading the users' histories took too long; answering from the artifact's and the "
                        "requests' histories")
            read = [(j.state.bundle, user_features(j.state.bundle, None, j.user_id, j.history, store_ok=False), None)
                    for j in jobs]
        # One scoring step per bundle (arm state) in the batch: one with a single arm.
        groups: dict[int, tuple[ServingBundle, list[tuple[int, ScoreRequest]]]] = {}
        for i, ((b, f, sync), j) in enumerate(zip(read, jobs)):
            if f.items and not f.unknown_items:
                groups.setdefault(id(b), (b, []))[1].append(
                    (i, ScoreRequest(tuple(f.items), tuple(f.timestamps), j.n, sync, j.exclude)))
        results: list[ScoreResult | None] = [None] * len(jobs)
        failures: list[str | None] = [None] * len(jobs)
        for b, todo in groups.values():
            try:
                scored = await self._score([r for _, r in todo], b)
                for (i, _), res in zip(todo, scored):
                    results[i] = res
            except Exception as e:  # noqa: BLE001 - these requests fall back to the co-occurrence ranking
                failure = ("scorer_timeout" if isinstance(e, TimeoutError) else
                           "scorer_overloaded" if isinstance(e, BackPressureError) else "scorer_error")
                log.warning("scoring failed (%s: %s)", failure, type(e).__name__)
                for i, _ in todo:
                    failures[i] = failure
        return [_Scored(b, f, res, failures[i]) for i, ((b, f, _), res) in enumerate(zip(read, results))]

    async def _score(self, requests: list[ScoreRequest], b: ServingBundle) -> list[ScoreResult]:
        """One scoring step within the ``score`` deadline (``TimeoutError`` past it): in process, a
        model step that ends late is refused too (it cannot be interrupted)."""
        if not self.inline:
            return await self._timed("score", self.scorer.score.remote(requests))
        if b.scorer is None:  # cannot happen with scorer: inline; a clear error, not AttributeError
            raise RuntimeError("this replica has no in-process model")
        t0 = time.perf_counter()
        out = b.scorer.score(requests)
        ms = (time.perf_counter() - t0) * 1000
        self.stage.observe(ms, tags={"stage": "score"})
        if ms > self.deadlines_ms["score"]:
            raise TimeoutError(f"the model took {ms:.1f} ms")
        return out

    async def _read_and_score(self, req: RecommendRequest, n: int, state: ServingState) -> _Scored:
        """One request's part of a :meth:`_step` with its arm's ``state``, its wait bounded by the
        ``features`` + ``score`` deadlines (an overloaded replica's queue: the fallback answers from the
        artifact's and the request's history). A request that finds no step running and the batch wait at
        0 is a batch of one (what the queue would make of it) and takes its step at once, without the
        queue's task."""
        job = _Job(req.user_id, list(req.history), tuple(req.exclude), n, state)
        try:
            async with asyncio.timeout((self.deadlines_ms["features"] + self.deadlines_ms["score"]) / 1000):
                if self.steps == 0 and self.batch_wait_s == 0:
                    return (await self._step([job]))[0]
                return await self.score_batch(job)
        except TimeoutError:
            b = state.bundle
            return _Scored(b, user_features(b, None, req.user_id, req.history, store_ok=False), None,
                           "scorer_timeout")

    def _degrade(self, reasons: list[str]) -> None:
        for r in reasons:
            self.degraded.inc(tags={"reason": r})

    # -------------------------------------------------------------------------------- endpoints

    async def _recommend_asgi(self, scope, receive, send) -> None:
        """``POST /v1/recommend`` without FastAPI's routing, dependency solving and response class:
        pydantic validates the JSON bytes in one call and the answer is written as bytes; the same errors
        and codes as the FastAPI route."""
        body = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before the body ended: nothing to answer
            body.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        try:
            text = b"".join(body).decode("utf-8")
        except UnicodeDecodeError:
            return await _error(400, "invalid_request", "the body is not UTF-8")(scope, receive, send)
        body = None
        try:
            req = RecommendRequest.model_validate_json(text)
            body = await self._recommend(req)
            response = Response(to_json(body), media_type="application/json")
        except ValidationError as e:
            errors = e.errors(include_url=False, include_context=False)
            if errors and errors[0]["type"] == "json_invalid" and "recursion" in errors[0]["msg"]:
                # As FastAPI's routes answer a body its JSON parser cannot hold: 400, not a validation 422.
                response = _error(400, "invalid_request", "the body could not be parsed: it nests too deeply")
            else:
                response = _invalid(errors)
        except ApiError as e:
            response = _error(e.status, e.code, e.message, e.headers)
        except Exception:  # noqa: BLE001 - a request never crashes the replica; the client gets the JSON 500
            log.exception("unhandled error on /v1/recommend")
            response = _error(500, "internal", "internal error; see the service logs")
        await response(scope, receive, send)
        if body is not None and self.arms.experiment.shadows:
            try:
                self._shadow(req, body)  # after the answer is sent: tasks only, no wait here
            except Exception:  # noqa: BLE001 - the answer is out; a shadow never fails a request
                log.exception("shadow arms not started")

    @app.post("/v1/recommend", response_model=RecommendResponse, responses=_errors(503))
    async def recommend(self, req: RecommendRequest) -> JSONResponse:
        """Top-k unseen items for a user (stored history + events + the request's ``history``), or the
        popular items for a cold start; with ``query``, blended with the query's similarity to the items'
        text. ``degraded`` marks an answer given by a fallback. (Served by :class:`_App`'s direct route;
        this FastAPI route defines the OpenAPI schema.)"""
        return JSONResponse(await self._recommend(req))

    async def _recommend(self, req: RecommendRequest) -> dict:
        """The ``RecommendResponse`` body of one request (``ApiError`` for a 4xx), answered by the
        request's arm, with its ``arm`` and a new ``recommendation_id``. Its impression and the arm's
        metrics are queued for :meth:`_flush_loop` (a list append here)."""
        t0 = time.perf_counter()
        arm, state = self.arms.route(req.user_id)
        try:
            body = await self._recommend_with(req, state)
        except Exception as e:
            if not isinstance(e, ApiError) or e.status >= 500:
                self._rollout_error(arm.name)
            raise
        body["arm"] = arm.name
        body["recommendation_id"] = rid = uuid.uuid4().hex
        shown = tuple(it["item_id"] for it in body["items"])
        self._note(_Answered(arm.name, (time.perf_counter() - t0) * 1000, body["degraded"],
                             Impression(rid, arm.name, req.user_id, shown, time.time()) if shown else None))
        return body

    async def _recommend_with(self, req: RecommendRequest, state: ServingState) -> dict:
        """The answer's body from one arm's serving ``state`` (without ``arm`` and ``recommendation_id``)."""
        reasons: list[str] = []
        k = req.k or self.default_k
        div = self.diversity if req.diversity is None else req.diversity
        filters = req.filters or None
        n = candidates_wanted(self.candidates, k, bool(filters))
        step = await self._read_and_score(req, n, state)
        b, feats = step.bundle, step.feats
        cat = b.catalog
        if feats.unknown_items:
            shown = ", ".join(repr(i) for i in feats.unknown_items[:5])
            raise ApiError(422, "unknown_item", f"history has item ids not in the catalogue: {shown}")
        unknown_filters = sorted(set(req.filters) - b.attribute_names)
        if unknown_filters:
            known = ", ".join(sorted(b.attribute_names)) or "none"
            raise ApiError(422, "invalid_request", f"unknown filter attribute(s) {unknown_filters}; known: {known}")
        if not feats.store_ok:
            reasons.append("store_read")
        history = feats.items
        qvec = await self._query_vector(req.query, b, reasons) if req.query else None
        if not history:
            self.cold_start.inc()
            items = (rank_with_query(cat, qvec, req.query, None, None, [], req.exclude, k, filters, div,
                                     self.query_weight) if qvec is not None else popular(cat, req.exclude, k, filters))
            return self._answer(items, b.version, reasons, cold_start=True)
        result, failure = step.result, step.failure
        if failure or result is None:
            reasons.append(failure or "scorer_error")
            log.warning("answering with the co-occurrence fallback (%s)", reasons[-1])
            return self._answer(fallback(cat, history, req.exclude, k, filters), b.version, reasons, cold_start=False)
        self.n_candidates.observe(len(result.item_ids))
        if qvec is not None:
            items = rank_with_query(cat, qvec, req.query, result.item_ids, result.scores, history, req.exclude, k,
                                    filters, div, self.query_weight, self.candidates)
        else:
            items = rank(cat, result.item_ids, result.scores, history, req.exclude, k, filters, div)
        return self._answer(items, result.model_version, reasons, cold_start=False)

    async def _query_vector(self, query: str, b: ServingBundle, reasons: list[str]) -> np.ndarray | None:
        """The query's text embedding ``(text_dim,)``, or ``None`` (with a degraded reason) when the
        text encoder fails or is too slow. A model without text features refuses queries (409)."""
        if not b.text_dim or not b.encoder_uri:
            raise ApiError(409, "text_features_unavailable", "the loaded model was trained without text "
                                                             "features; queries need them")
        try:
            emb = await self._timed("query", self.text_encoder.encode.remote([query], b.encoder_uri))
        except Exception as e:  # noqa: BLE001 - answer without the query rather than not at all
            log.warning("query encoding failed: %s", type(e).__name__)
            reasons.append("query_timeout" if isinstance(e, asyncio.TimeoutError) else "query_error")
            return None
        emb = np.asarray(emb, dtype=np.float32)
        if emb.shape != (1, b.text_dim):
            log.error("the text encoder gives %s, the model reads %d dimensions", emb.shape, b.text_dim)
            reasons.append("query_error")
            return None
        return emb[0]

    def _answer(self, items: list[dict], version: str, reasons: list[str], cold_start: bool) -> dict:
        """The ``RecommendResponse`` body: its fields are built by this module, so it is not validated
        again (``response_model`` is kept for the OpenAPI schema)."""
        self._degrade(reasons)
        return {"items": items, "model_version": version, "degraded": bool(reasons), "cold_start": cold_start}

    # --------------------------------------------------------------------- impressions and feedback

    def _note(self, answered: _Answered) -> None:
        """Queue one answer for :meth:`_flush_loop` (started by the first answer, on this event loop)."""
        if answered.impression is not None:
            if self.pending_impressions >= MAX_PENDING_IMPRESSIONS:  # the store does not keep up
                answered.impression = None
                self.backlog_dropped += 1
            else:
                self.pending_impressions += 1
        self.pending.append(answered)
        if self.flusher is None:
            self.flush_wake = asyncio.Event()
            self.flusher = asyncio.get_running_loop().create_task(self._flush_loop())
        self.flush_wake.set()

    async def _flush_loop(self) -> None:
        """Off the response path, ``IMPRESSION_FLUSH_S`` after an answer (at once when
        ``IMPRESSION_BATCH`` wait): the arms' metrics of the answers since the last flush, and their
        impressions in one store write on a store thread. Runs as long as the replica."""
        loop = asyncio.get_running_loop()
        while True:
            await self.flush_wake.wait()
            self.flush_wake.clear()
            if len(self.pending) < IMPRESSION_BATCH:
                await asyncio.sleep(IMPRESSION_FLUSH_S)
            batch, self.pending = self.pending, []
            impressions = [a.impression for a in batch if a.impression is not None]
            try:
                self._export_answers(batch)
                if impressions:
                    await loop.run_in_executor(self.io, self._write_impressions, impressions)
            except Exception:  # noqa: BLE001 - the flush goes on with the next answers
                log.exception("answers not flushed")
            finally:
                self.pending_impressions -= len(impressions)

    def _export_answers(self, batch: list[_Answered]) -> None:
        """The arms' request, latency and degraded metrics of these answers."""
        m = self.m_arm
        count: dict[str, int] = {}
        degraded: dict[str, int] = {}
        for a in batch:
            count[a.arm] = count.get(a.arm, 0) + 1
            if a.degraded:
                degraded[a.arm] = degraded.get(a.arm, 0) + 1
            m["latency"].observe(a.ms, tags={"arm": a.arm})
        for arm, n in count.items():
            m["requests"].inc(n, tags={"arm": arm})
        for arm, n in degraded.items():
            m["degraded"].inc(n, tags={"arm": arm})
        self._rollout_observe(batch)
        if self.backlog_dropped:
            n, self.backlog_dropped = self.backlog_dropped, 0
            log.warning("%d impressions dropped: the event store does not keep up", n)
            m["dropped"].inc(n, tags={"reason": "backlog"})

    def _write_impressions(self, impressions: list[Impression]) -> None:
        """Runs on a store thread: keep the impressions (one write); a failure drops them, counted."""
        try:
            self.store.record_impressions(impressions)
        except Exception as e:  # noqa: BLE001 - an impression is never worth more than a count
            log.warning("%d impressions not kept: %s: %s", len(impressions), type(e).__name__, e)
            self.store_errors.inc(tags={"op": "impressions"})
            self.m_arm["dropped"].inc(len(impressions), tags={"reason": "store_error"})
            return
        per_arm: dict[str, int] = {}
        for imp in impressions:
            per_arm[imp.arm] = per_arm.get(imp.arm, 0) + 1
        for arm, n in per_arm.items():
            self.m_arm["impressions"].inc(n, tags={"arm": arm})

    # ------------------------------------------------------------------- shadow arms and the canary

    def _init_rollout(self) -> None:
        """The shadow arms' and the canary's state on this replica (see :meth:`_shadow`, :meth:`_canary_tick`)."""
        self.shadow_deadline_ms, self.shadow_max = SHADOW_DEADLINE_MS, SHADOW_MAX_IN_FLIGHT
        self.shadow_in_flight = 0
        self.shadow_tasks: set[asyncio.Task] = set()
        self.m_shadow = {"overlap": metrics.shadow_overlap(), "latency": metrics.shadow_latency(),
                         "dropped": metrics.shadow_dropped_total()}
        self.canary: CanaryConfig | None = None
        self.canary_base: Experiment | None = None  # the arms as configured, before the canary's share
        self.canary_error: dict | None = None  # the last canary block refused, with the reason
        self.rollout: Rollout | None = None  # the shared state as last read or written here
        self.rollout_wait: str | None = None  # why the last due decision waited
        self.window: dict[str, Figures] = {}  # per arm, since the rollout's last change seen here
        self.canary_task: asyncio.Task | None = None
        self.m_canary = {"weight": metrics.canary_weight(), "status": metrics.canary_status(),
                         "rollbacks": metrics.canary_rollbacks_total(), "steps": metrics.canary_steps_total()}

    def _set_rollout(self, config: dict) -> None:
        """The shadow knobs (``shadow_deadline_ms``, ``shadow_max_in_flight``) and the ``canary`` block of
        ``config`` (:mod:`services.canary`), after :meth:`_set_arms`. A bad block is refused with an error
        log and shown in ``GET /v1/model`` (``canary_error``); the canary before it goes on while its arm is
        still the last served one. With the arms config refused, nothing changes here."""
        if "shadow_deadline_ms" in config:
            self.shadow_deadline_ms = max(0.001, float(config["shadow_deadline_ms"]))
        if "shadow_max_in_flight" in config:
            self.shadow_max = max(0, int(config["shadow_max_in_flight"]))
        if self.arms_error is not None:
            return
        base, old = self.arms.experiment, self.canary
        try:
            cfg = parse_canary(config, base)
        except Exception as e:  # noqa: BLE001 - a bad config never takes the replica down
            self.canary_error = {"reason": f"{type(e).__name__}: {e}"[:2000], "config": config.get("canary")}
            try:
                cfg = parse_canary({"canary": old.raw}, base) if old is not None else None
            except Exception:  # noqa: BLE001 - the old canary does not fit the new arms
                cfg = None
            log.error("canary config refused, %s: %s", f"canary {cfg.arm} goes on" if cfg else "no canary",
                      self.canary_error["reason"])
        else:
            self.canary_error = None
        if old is not None and (cfg is None or cfg.arm != old.arm):  # no stale rolled_back left behind
            self.m_canary["weight"].set(0.0, tags={"arm": old.arm})
            for status in STATUSES:
                self.m_canary["status"].set(0.0, tags={"arm": old.arm, "status": status})
        self.canary, self.canary_base = cfg, base
        if cfg is None:
            self.rollout, self.window = None, {}
            return
        if self.rollout is not None and self.rollout.config == cfg.fingerprint and self.rollout.arm == cfg.arm:
            self._apply_rollout(self.rollout, cfg)  # the same rollout over the arms as configured now
        else:
            self.rollout = None  # no traffic to the canary until the shared state is read (the next tick)
            self._apply_weights(cfg, 0.0)
        if self.canary_task is None:
            self.canary_task = asyncio.get_running_loop().create_task(self._canary_loop())

    async def _canary_loop(self) -> None:
        """Every ``CANARY_TICK_S`` (``interval_s / 4`` when shorter): :meth:`_canary_tick`, then the canary
        gauges. Runs as long as the replica; a tick that fails is logged and the next one tries again."""
        while True:
            cfg = self.canary
            if cfg is not None:
                try:
                    await self._canary_tick(cfg)
                except Exception:  # noqa: BLE001 - the store may be away: the next tick tries again
                    log.exception("canary tick failed; the canary keeps its weight")
                self._export_canary()
            await asyncio.sleep(min(CANARY_TICK_S, cfg.interval_s / 4) if cfg is not None else CANARY_TICK_S)

    async def _canary_tick(self, cfg: CanaryConfig) -> None:
        """Read the canary's shared state (a store thread); start it when it is absent or follows another
        canary block; apply it when another replica moved it; when a decision is due, judge this replica's
        figures since the last change (:func:`services.canary.judge`) and write the next state by
        compare-and-set: the replica that writes first decides, the others apply it at their next tick."""
        loop = asyncio.get_running_loop()
        key = state_key(self.canary_base.name, cfg.arm)
        shared = await loop.run_in_executor(self.io, self.store.read_state, key)
        now = time.time()
        try:
            current = Rollout.of(shared.value, shared.generation) if shared.value else None
        except (KeyError, TypeError):
            current = None  # written by another build: start over
        if current is None or current.config != cfg.fingerprint or current.arm != cfg.arm:
            if await self._write_rollout(key, shared.generation, Rollout.start(cfg, now), cfg):
                log.info("canary %s started at %.1f%% of the traffic (ladder %s, every %g s)", cfg.arm,
                         cfg.ladder[0] * 100, list(cfg.ladder), cfg.interval_s)
            return
        if self.rollout is None or self.rollout.generation != current.generation:
            self._apply_rollout(current, cfg)
            return
        if not current.due(cfg, now):
            return
        stable = Figures()
        for arm in self.canary_base.served:
            if arm.name != cfg.arm and arm.name in self.window:
                stable.merge(self.window[arm.name])
        verdict, reason, detail = judge(cfg.bounds, self.window.get(cfg.arm, Figures()), stable)
        if verdict == "wait":
            self.rollout_wait = detail
            return
        nxt = current.decide(cfg, verdict, reason, detail, now)
        if not await self._write_rollout(key, current.generation, nxt, cfg):
            return  # another replica decided first: its state is read at the next tick
        if verdict == "rollback":
            self.m_canary["rollbacks"].inc(tags={"arm": cfg.arm, "reason": reason if reason in REASONS else "other"})
            log.warning("canary %s rolled back (%s): %s", cfg.arm, reason, detail)
        else:
            self.m_canary["steps"].inc(tags={"arm": cfg.arm})
            log.info("canary %s moved to %.1f%% of the traffic (%s): %s", cfg.arm, nxt.weight * 100, nxt.status,
                     detail)

    async def _write_rollout(self, key: str, generation: int, rollout: Rollout, cfg: CanaryConfig) -> bool:
        """Compare-and-set ``rollout`` as the state after ``generation``; applied here when written."""
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(self.io, self.store.compare_and_set_state, key, generation,
                                          rollout.value()):
            return False
        self._apply_rollout(dataclasses.replace(rollout, generation=generation + 1), cfg)
        return True

    def _apply_rollout(self, rollout: Rollout, cfg: CanaryConfig) -> None:
        """Serve ``rollout``'s share for the canary and start a new figures window."""
        before = self.rollout
        self.rollout, self.window, self.rollout_wait = rollout, {}, None
        self._apply_weights(cfg, rollout.weight)
        if before is not None and before.generation != rollout.generation and before.status != rollout.status \
                and rollout.status == ROLLED_BACK:
            log.warning("canary %s is rolled back (%s): %s", cfg.arm, rollout.reason, rollout.detail)

    def _apply_weights(self, cfg: CanaryConfig, share: float) -> None:
        """Swap in the configured arms with the canary at ``share`` of the traffic (one assignment; the
        serving states are the same, so nothing loads)."""
        base, table = self.canary_base, self.arms
        if [a.name for a in table.experiment.arms] != [a.name for a in base.arms]:
            return  # the arms changed since: the next reconfigure sets the canary again
        self.arms = _Arms(base.with_weights(weights(base, cfg.arm, share)), table.states)
        self._export_canary()

    def _export_canary(self) -> None:
        """The canary gauges (set again every tick: Ray stops exporting a gauge that is not set)."""
        cfg, r = self.canary, self.rollout
        if cfg is None:
            return
        share = next((a.weight for a in self.arms.experiment.arms if a.name == cfg.arm), 0.0)
        self.m_canary["weight"].set(share, tags={"arm": cfg.arm})
        for status in STATUSES:
            self.m_canary["status"].set(float(r is not None and r.status == status),
                                        tags={"arm": cfg.arm, "status": status})

    def _rollout_observe(self, batch: list[_Answered]) -> None:
        """Off the response path (the flush): the answers' figures for the canary's window."""
        if self.canary is None:
            return
        for a in batch:
            fig = self.window.get(a.arm)
            if fig is None:
                fig = self.window[a.arm] = Figures()
            fig.add(a.ms, a.degraded)

    def _rollout_error(self, arm: str) -> None:
        """A request of ``arm`` that failed (5xx) counts as an error in the canary's window."""
        if self.canary is not None:
            self.window.setdefault(arm, Figures()).add(None, error=True)

    def _rollout_status(self) -> dict:
        """``GET /v1/model``'s ``canary`` (config, shared state, this replica's figures since its last
        change; ``null`` without one), ``canary_error`` and the ``shadow`` knobs."""
        cfg, r = self.canary, self.rollout
        canary = None
        if cfg is not None:
            canary = {**cfg.describe(), **(r.describe() if r is not None else {"status": "pending"}),
                      "waiting": self.rollout_wait,
                      "window": {arm: fig.summary() for arm, fig in sorted(self.window.items())}}
        return {"canary": canary, "canary_error": self.canary_error,
                "shadow": {"deadline_ms": self.shadow_deadline_ms, "max_in_flight": self.shadow_max,
                           "in_flight": self.shadow_in_flight}}

    def _shadow(self, req: RecommendRequest, body: dict) -> None:
        """After ``body`` was sent: one background scoring per shadow arm (:meth:`_shadow_score`) for a
        known user's answer with items and without ``query``. At most ``shadow_max_in_flight`` run at once
        on a replica; past that the shadow is dropped and counted (``reason="cap"``), so shadows never queue
        behind each other. Only creates tasks: no wait, no handle call, no thread trip here."""
        if body["cold_start"] or not body["items"] or req.query:
            return
        table = self.arms
        served = [it["item_id"] for it in body["items"]]
        loop = asyncio.get_running_loop()
        for arm in table.experiment.shadows:
            if self.shadow_in_flight >= self.shadow_max:
                self.m_shadow["dropped"].inc(tags={"arm": arm.name, "reason": "cap"})
                continue
            self.shadow_in_flight += 1
            task = loop.create_task(self._shadow_score(arm.name, table.states[arm.key], req, served))
            self.shadow_tasks.add(task)
            task.add_done_callback(self.shadow_tasks.discard)

    async def _shadow_score(self, arm: str, state: ServingState, req: RecommendRequest, served: list[str]) -> None:
        """Score ``req`` with a shadow arm's ``state`` in a :meth:`_step` of its own, within
        ``shadow_deadline_ms``, rank it as the answer was ranked, and record its overlap@k with ``served``
        (shared items / items served). Never raises: a step past its budget or failing is counted."""
        t0 = time.perf_counter()
        budget = self.shadow_deadline_ms
        try:
            k = req.k or self.default_k
            job = _Job(req.user_id, list(req.history), tuple(req.exclude),
                       candidates_wanted(self.candidates, k, bool(req.filters)), state)
            async with asyncio.timeout(budget / 1000):
                scored = (await self._step([job]))[0]
            ms = (time.perf_counter() - t0) * 1000
            if ms > budget or scored.failure == "scorer_timeout":
                self.m_shadow["dropped"].inc(tags={"arm": arm, "reason": "timeout"})
                return
            if scored.result is None:
                self.m_shadow["dropped"].inc(tags={"arm": arm, "reason": "error"})
                return
            div = self.diversity if req.diversity is None else req.diversity
            items = rank(scored.bundle.catalog, scored.result.item_ids, scored.result.scores, scored.feats.items,
                         req.exclude, k, req.filters or None, div)
            shared = len({it["item_id"] for it in items}.intersection(served))
            self.m_shadow["overlap"].observe(shared / len(served), tags={"arm": arm})
            self.m_shadow["latency"].observe(ms, tags={"arm": arm})
        except TimeoutError:
            self.m_shadow["dropped"].inc(tags={"arm": arm, "reason": "timeout"})
        except Exception as e:  # noqa: BLE001 - a shadow never takes anything down
            log.warning("shadow arm %s failed: %s: %s", arm, type(e).__name__, e)
            self.m_shadow["dropped"].inc(tags={"arm": arm, "reason": "error"})
        finally:
            self.shadow_in_flight -= 1

    def _feedback(self, refs: list[tuple[str, str, bool]], duplicates: int) -> dict:
        """Runs on a store thread after the events are stored: ``refs`` is ``(recommendation_id, item_id,
        has event_id)`` per event that names a recommendation. A hit for the impression's arm at the item's
        rank when it showed the item. With ``duplicates`` (events stored before) the events with an
        ``event_id`` are not counted (any of them may be a resend). Never raises."""
        out = dict.fromkeys(Feedback.model_fields, 0)
        if duplicates:
            out["duplicate"] = sum(1 for _, _, has_id in refs if has_id)
            refs = [r for r in refs if not r[2]]
        try:
            found = self.store.impressions([rid for rid, _, _ in refs]) if refs else {}
        except Exception as e:  # noqa: BLE001 - the events are stored; only their count is lost
            log.warning("feedback lookup failed for %d events: %s: %s", len(refs), type(e).__name__, e)
            self.store_errors.inc(tags={"op": "read"})
            out["lookup_failed"] = len(refs)
            refs = []
        m = self.m_arm
        for rid, item, _ in refs:
            imp = found.get(rid)
            rank = imp.rank(item) if imp is not None else None
            if imp is None:
                out["unmatched"] += 1
            elif rank is None:
                out["not_shown"] += 1
            else:
                out["hits"] += 1
                m["hits"].inc(tags={"arm": imp.arm, "rank": metrics.rank_bucket(rank)})
                m["rank_sum"].inc(rank, tags={"arm": imp.arm})
        for result, n in out.items():
            if n:
                m["feedback"].inc(n, tags={"result": "hit" if result == "hits" else result})
        return out

    def _append(self, batch: list[dict], refs: list[tuple[str, str, bool]] | None = None) -> dict:
        """Runs on a store thread: ``{"stored", "new"[, "feedback"]}``, ``{"unknown_items"}`` or
        ``{"error", "message"}``. ``refs``: see :meth:`_feedback`, matched once the events are stored."""
        self._sync()
        index = self.state.bundle.catalog.index
        unknown = [e["item_id"] for e in batch if e["item_id"] not in index]
        if unknown:
            return {"unknown_items": list(dict.fromkeys(unknown))}
        try:
            res = self.store.append(batch)
        except EventStoreError as e:
            log.warning("event store write failed: %s", e)
            self.store_errors.inc(tags={"op": "write"})
            return {"error": "event_store_unavailable",
                    "message": _refusal("the events", e, "a retry of events with an event_id stores each once")}
        except ValueError as e:
            return {"error": "invalid_request", "message": str(e)}
        if res.new:
            self.events_stored.inc(res.new)
        out = {"stored": res.accepted, "new": res.new}
        if refs:
            out["feedback"] = self._feedback(refs, res.duplicates)
        return out

    @app.post("/v1/events", response_model=EventsResponse, response_model_exclude_none=True,
              responses=_errors(503))
    async def events(self, req: EventsRequest) -> EventsResponse:
        """Store interactions; a 2xx means every event is committed (fsynced) and the next
        ``/v1/recommend`` for its user reflects it. All or nothing: an unknown item id stores none. An
        event whose ``event_id`` is already stored is acknowledged and not stored again (``new`` counts
        the ones this request stored). An event with a ``recommendation_id`` is, once stored, matched to
        the answer that id names: a hit for its arm when the answer showed the item (``feedback``)."""
        now = int(time.time())
        batch = [{"user_id": e.user_id, "item_id": e.item_id, "type": e.type, "event_id": e.event_id,
                  "timestamp": now if e.timestamp is None else e.timestamp} for e in req.events]
        refs = [(e.recommendation_id, e.item_id, e.event_id is not None) for e in req.events if e.recommendation_id]
        try:
            result = await self._in_thread("store", self._append, batch, refs)
        except asyncio.TimeoutError:
            log.warning("storing events took longer than the store deadline")
            raise ApiError(503, "event_store_unavailable", "the event store did not answer in time; the events "
                           "may have been stored (a retry of events with an event_id stores each once)",
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
        return EventsResponse(stored=result["stored"], new=result["new"],
                              feedback=Feedback(**result["feedback"]) if "feedback" in result else None)

    @app.post("/v1/items", response_model=ItemsResponse, responses=_errors(401, 409, 503))
    async def items(self, req: ItemsRequest, request: Request) -> ItemsResponse:
        """Add items by their text (admin). They are encoded with the model's text encoder, stored in the
        event store, and recommendable by the next request on every replica, without retraining."""
        _check_admin(request)
        ids = [it.item_id for it in req.items]
        if len(set(ids)) != len(ids):
            raise ApiError(422, "invalid_request", "the same item_id twice in one request")
        b = self.state.bundle
        trained = [i for i in ids if b.is_trained(i)]
        if trained:
            shown = ", ".join(repr(i) for i in trained[:5])
            raise ApiError(409, "item_exists", f"trained catalogue items cannot be replaced: {shown}")
        if not b.text_dim or not b.encoder_uri:
            raise ApiError(409, "text_features_unavailable",
                           "the loaded model was trained without text features; new items need them")
        texts = [compose_text(it.title, it.text, it.attributes) for it in req.items]
        try:
            emb = await self._timed("items", self.text_encoder.encode.remote(texts, b.encoder_uri))
        except asyncio.TimeoutError:
            raise ApiError(503, "unavailable", "encoding the items took too long; retry",
                           headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        except Exception as e:  # noqa: BLE001 - a missing or broken encoder is a clear refusal
            log.error("text encoder unavailable: %s", e)
            raise ApiError(409, "text_features_unavailable",
                           "the model's text encoder could not be loaded; see the service logs") from None
        emb = np.asarray(emb, dtype=np.float32)
        if emb.shape != (len(texts), b.text_dim):
            raise ApiError(409, "text_features_unavailable",
                           f"the text encoder gives {emb.shape[-1]} dimensions, the model reads {b.text_dim}")
        name = str((b.manifest.get("encoder") or {}).get("name_or_path"))
        # Attributes given, or read from the text as for trained items ("title. genres: a, b").
        new = [NewItem(it.item_id, it.title, text, dict(it.attributes or parse_attributes(it.title, it.text or "")),
                       e, name) for it, text, e in zip(req.items, texts, emb)]
        result = await self._in_thread("store", self._add_items, new)
        if result.get("error") == "event_store_unavailable":
            raise ApiError(503, "event_store_unavailable", result["message"], headers={"Retry-After": str(RETRY_AFTER_S)})
        if result.get("error"):
            raise ApiError(422, result["error"], result["message"])
        return ItemsResponse(added=result["added"])

    def _add_items(self, new: list[NewItem]) -> dict:
        """Runs on a store thread: store the items, then apply them here at once."""
        try:
            self.store.add_items(new)
        except EventStoreError as e:
            log.warning("event store write (items) failed: %s", e)
            self.store_errors.inc(tags={"op": "write"})
            return {"error": "event_store_unavailable", "message": _refusal("the items", e, "a retry replaces them")}
        except ValueError as e:  # the store refused a value (nothing stored)
            return {"error": "invalid_request", "message": str(e)}
        self.items_added.inc(len(new))
        self.state.sync(None)
        return {"added": len(new)}

    def _status(self) -> dict:
        b = self.state.bundle
        return {**self.state.status(), "new_items": len(b.catalog) - b.catalog.n_trained,
                "scorer": {"mode": "inline" if self.inline else "deployment", **self.knobs,
                           "candidates": self.candidates, "default_k": self.default_k,
                           "diversity": self.diversity, "query_weight": self.query_weight,
                           **({"retrieval": b.scorer.retrieval.kind} if b.scorer is not None else {})}}

    async def _info(self) -> dict:
        """The model that scores: this replica's (inline) or the Scorer deployment's."""
        if self.inline:
            return self._status()
        info = await self._timed("info", self.scorer.info.remote())
        # The Scorer's batch knobs, with the ingress's own knobs beside them (its batch: ingress_*).
        mine = {k: v for k, v in self._status()["scorer"].items() if k != "mode"}
        ingress = {f"ingress_{k}" if k in ("max_batch_size", "batch_wait_timeout_s") else k: v for k, v in mine.items()}
        return {**info, "scorer": {**ingress, **info.get("scorer", {}), "mode": "deployment"}}

    def _experiment(self) -> dict:
        """The experiment's name and arms (model, scorer model, weight, share, and the version this
        replica serves for each), and the last refused arms config (``arms_error``)."""
        table = self.arms
        out = table.experiment.describe()
        for arm, spec in zip(out["arms"], table.experiment.arms):
            state = table.states[spec.key]
            arm["version"] = state.bundle.version
            if state is not self.state and state.last_error is not None:
                arm["last_reload_error"] = state.last_error
        return {**out, "arms_error": self.arms_error, **self._rollout_status()}

    @app.get("/v1/model", responses=_errors(503))
    async def model(self) -> dict:
        """The model that scores: version, creation time, offline metrics, the offline gate's verdict on it
        (``gate``), the last refused artifact with its reason (``last_reload_error``), the newest version
        the offline gate refused since (``gate_refused``, null when none), the scoring knobs, and the A/B
        ``experiment`` (its arms, each with the version it serves)."""
        try:
            info = await self._info()
        except Exception as e:  # noqa: BLE001
            raise ApiError(503, "unavailable", f"the scorer did not answer: {type(e).__name__}",
                           headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        info["experiment"] = self._experiment()
        info["gate_refused"] = None
        try:
            info["gate_refused"] = await self._in_thread("info", versions.newer_refused, self.model_uri,
                                                         info["version"])
        except versions.VersionError:  # model_uri names one version's folder: no other versions
            pass
        except Exception as e:  # noqa: BLE001 - a listing that fails leaves the rest of the answer
            log.warning("refused versions not listed: %s: %s", type(e).__name__, e)
        return info

    @app.post("/v1/model/reload", responses={**_errors(401, 409, 503), 202: {"description": "still loading"}})
    async def reload(self, request: Request):
        """Load the newest version under the model URI now (admin). Every replica loads it in the
        background and swaps it in between requests; ``200`` once the model that scores serves it, ``409
        model_refused`` with the reason when it does not load (the old model keeps serving), ``202`` when
        it is still loading after the reload deadline."""
        _check_admin(request)
        body, status = await self._reload_latest()
        return body if status == 200 else JSONResponse(body, status_code=status)

    async def _reload_latest(self) -> tuple[dict, int]:
        """``POST /v1/model/reload``'s work, ``(answer, status)``: this replica loads what ``models/LATEST``
        names now, and the store's reload request tells the other replicas."""
        try:
            target = await asyncio.to_thread(resolve, self.model_uri)
        except Exception as e:  # noqa: BLE001
            raise ApiError(409, "model_refused", f"no model artifact at the configured URI: {e}") from None
        try:
            before = await self._info()
        except Exception as e:  # noqa: BLE001 - the scorer is down or slow: nothing to swap yet
            raise ApiError(503, "unavailable", f"the scorer did not answer: {type(e).__name__}",
                           headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        if before["uri"] == target and self.state.uri == target:
            return {"version": before["version"], "previous": before["version"], "changed": False}, 200
        await self._in_thread("store", self.store.request_reload)  # every other replica, at its next request
        loading = asyncio.get_running_loop().run_in_executor(None, self.state.check, True)
        deadline = time.monotonic() + self.deadlines_ms["reload"] / 1000
        while time.monotonic() < deadline:
            info = await self._info()
            if info["uri"] == target and self.state.uri == target:
                return {"version": info["version"], "previous": before["version"],
                        "changed": info["version"] != before["version"]}, 200
            refused = {r["uri"]: r["reason"] for r in info.get("refused", [])}
            if target in refused and (info.get("last_reload_error") or {}).get("at", "") > \
                    (before.get("last_reload_error") or {}).get("at", ""):
                raise ApiError(409, "model_refused", f"{target} was refused, still serving {info['version']}: "
                                                     f"{refused[target]}"[:2000])
            await asyncio.sleep(0.2 if loading.done() else 0.5)
        return {"status": "loading", "target": target, "version": before["version"]}, 202

    _VERSION_ERRORS = {"unknown_version": 404}  # other versions.VersionError codes answer 409

    async def _move_latest(self, move, *args):
        """Move ``models/LATEST`` with ``versions.promote`` / ``versions.rollback`` (off the event loop),
        then reload as ``POST /v1/model/reload`` does; the reload's answer with ``moved`` (the recorded move)."""
        try:
            moved = await asyncio.to_thread(move, self.model_uri, *args)
        except versions.VersionError as e:
            raise ApiError(self._VERSION_ERRORS.get(e.code, 409), e.code, str(e)[:2000]) from None
        body, status = await self._reload_latest()
        body["moved"] = moved
        return body if status == 200 else JSONResponse(body, status_code=status)

    @app.post("/v1/model/promote", responses={**_errors(401, 404, 409, 503), 202: {"description": "still loading"}})
    async def promote(self, request: Request, body: PromoteRequest):
        """Publish ``version`` (admin): ``models/LATEST`` moves to it, recorded in ``models/HISTORY.json``,
        and the replicas load it as after ``POST /v1/model/reload``. ``404 unknown_version``; ``409
        version_refused`` for a version the offline gate refused, unless ``force``."""
        _check_admin(request)
        return await self._move_latest(versions.promote, body.version, body.force)

    @app.post("/v1/model/rollback", responses={**_errors(401, 409, 503), 202: {"description": "still loading"}})
    async def rollback(self, request: Request):
        """Go back to the version published before the serving one (admin), as ``distilrec model rollback``;
        ``409 no_previous_version`` when the history has none."""
        _check_admin(request)
        return await self._move_latest(versions.rollback)

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.get("/readyz", responses=_errors(503))
    async def readyz(self):
        """Ready when the model that scores answers and the event store can be read."""
        try:
            info = await asyncio.wait_for(self._info(), timeout=5)
        except Exception as e:  # noqa: BLE001 - any failure means not ready
            return _error(503, "not_ready", f"the scorer did not answer: {type(e).__name__}")
        try:
            await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(self.io, self.store.ping), timeout=5)
        except Exception as e:  # noqa: BLE001
            return _error(503, "not_ready", f"the event store cannot be read: {type(e).__name__}")
        return {"status": "ready", "model_version": info["version"]}

    def __del__(self):
        for state in self._states()[1:] if hasattr(self, "arms") else []:
            state.close()
        close_replica(self)
