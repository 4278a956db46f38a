"""Graceful shutdown: replicas that Serve stops while requests are in flight finish those requests, and
an application that is shut down refuses new requests at once instead of hanging or failing them.

What sends the stop. In Kubernetes a pod's SIGTERM reaches ``ray start --block`` (the container's main
process), which does not drain anything; Ray 2.60 also turns a SIGTERM to a replica's own process
into an immediate ``sys.exit`` of that worker (``ray._private.worker``: "The process receives a
SIGTERM"), so requests in flight there are lost like in a crash (the replica-loss test covers that
case: degraded answers, no error). The graceful path is Serve's own: when the controller stops a
replica (a rolling update from ``helm upgrade`` / a new serve config, a downscale, a node drained by
KubeRay's autoscaler, ``serve.delete`` / ``serve shutdown``), the proxies stop routing to it, it waits
up to ``graceful_shutdown_timeout_s`` (20 s, Serve's default) for its requests in flight, and only
then is it killed. These tests put that path under load:

1. Rolling replacement of the scorer under load, with a 0.3 s batch wait (so that several requests sit
   in the old replica's batch queue when it is told to stop): every request gets a full 200, none is
   degraded (a request lost by the old replica would fall back to a degraded answer).
2. Shutting an application down under load (``serve.delete`` of a second application on its own route):
   requests sent before the shutdown began complete with 200; once it is gone, new requests get an
   immediate 404 JSON-free refusal from Serve's proxy (no hang, no 5xx, no connection reset).
"""

from __future__ import annotations

import copy
import threading
import time

import pytest

from reliability_helpers import record, replica_actors, run_load_in_thread

pytestmark = pytest.mark.integration

BATCH_WAIT_S = 0.3


def _slow_scorer(cfg: dict, app_index: int = 0, num_cpus: float | None = None) -> dict:
    """The scorer waits ``BATCH_WAIT_S`` for a batch (requests pile up in its queue); the ingress's stage
    deadlines are 30 s, so that a busy machine's slowness is not taken for a lost request: a request
    lost by a stopped replica shows as an error (a degraded answer, or a 5xx), never as a timeout."""
    cfg = copy.deepcopy(cfg)
    for dep in cfg["applications"][app_index]["deployments"]:
        if dep["name"] == "Ingress":
            dep["user_config"] = {**dep.get("user_config", {}),
                                  "deadline_ms": {"encode": 30000, "score": 30000, "rank": 30000}}
        if dep["name"] == "StudentScorer":
            dep["user_config"] = {**dep.get("user_config", {}), "batch_wait_timeout_s": BATCH_WAIT_S,
                                  "max_batch_size": 64}
            if num_cpus is not None:  # a changed resource request: Serve replaces the replica
                dep["ray_actor_options"] = {**dep.get("ray_actor_options", {}), "num_cpus": num_cpus}
    return cfg


def test_a_replica_replaced_under_load_finishes_its_requests_in_flight(client, serve_url, serve_config, artifact):
    from services.run import deploy

    users = list(artifact.histories)
    deploy(_slow_scorer(serve_config))  # user_config only: reconfigure(), the same replica
    old = replica_actors()["StudentScorer"]
    stop = threading.Event()
    th, out = run_load_in_thread(serve_url, 20.0, 600.0,
                                 lambda i: ("POST", "/v1/recommend", {"user_id": users[i % len(users)], "k": 5}),
                                 keep_body=True, stop=stop)
    try:
        time.sleep(3)
        t_roll = time.monotonic()
        deploy(_slow_scorer(serve_config, num_cpus=0.45))  # a new replica version: a rolling replacement
        deadline = time.monotonic() + 90
        while any(a["actor_id"] in {o["actor_id"] for o in old} for a in replica_actors().get("StudentScorer", [])):
            assert time.monotonic() < deadline, "the old scorer replica was not stopped"
            time.sleep(0.2)
        t_gone = time.monotonic()
        time.sleep(3)
    finally:
        stop.set()
        th.join(timeout=120)
        deploy(serve_config)
    assert "error" not in out, out.get("error")
    load = out["result"]
    codes = load.codes()
    degraded = sum(1 for s in load.ok() if s.body["degraded"])
    in_flight = [s for s in load.samples if s.t <= t_gone - load.t0 <= s.t + s.latency_ms / 1000]
    record("graceful_replace", requests=len(load.samples), codes=codes, degraded=degraded,
           roll_s=t_gone - t_roll, p99_ms=load.p(0.99), in_flight_at_stop=len(in_flight))
    assert codes == {200: len(load.samples)}, [s.body for s in load.samples if s.status != 200][:5]
    assert degraded == 0, "a request in flight on the stopped replica was lost (answered by the fallback)"
    assert replica_actors()["StudentScorer"] != old


def test_an_application_shut_down_under_load_finishes_requests_in_flight_and_refuses_new_ones(
        client, serve_config, artifact):
    from ray import serve

    from services.run import deploy

    app = copy.deepcopy(serve_config["applications"][0])
    app.update(name="distilrec-drain", route_prefix="/drain")
    both = copy.deepcopy(serve_config)
    both["applications"].append(app)
    deploy(_slow_scorer(both, app_index=1))
    users = list(artifact.histories)
    base = str(client.base_url).rstrip("/")
    stop = threading.Event()
    th, out = run_load_in_thread(base, 20.0, 600.0,
                                 lambda i: ("POST", "/drain/v1/recommend", {"user_id": users[i % len(users)], "k": 5}),
                                 keep_body=True, stop=stop)
    try:
        time.sleep(3)
        t_delete = time.monotonic()
        serve.delete("distilrec-drain")  # blocks until the application's replicas are stopped
        t_gone = time.monotonic()
        time.sleep(3)
    finally:
        stop.set()
        th.join(timeout=120)
        deploy(serve_config)
    assert "error" not in out, out.get("error")
    load = out["result"]
    d0, d1 = t_delete - load.t0, t_gone - load.t0
    before = [s for s in load.samples if s.t < d0]
    during = [s for s in load.samples if d0 <= s.t < d1]
    after = [s for s in load.samples if s.t >= d1 + 0.5]
    in_flight = [s for s in before if s.t + s.latency_ms / 1000 > d0]
    record("graceful_app_shutdown", shutdown_s=d1 - d0, sent_before=len(before), in_flight_at_shutdown=len(in_flight),
           codes_before=_codes(before), codes_during=_codes(during), codes_after=_codes(after),
           p99_after_ms=max((s.latency_ms for s in after), default=0.0),
           errors_during=sorted({f"{s.status} {str(s.body)[:160]}" for s in during if s.status >= 500}))
    assert in_flight, "no request was in flight when the shutdown began"
    assert all(s.status == 200 and not s.body["degraded"] for s in before), _codes(before)
    assert all(s.status in (200, 404, 503) for s in during), _codes(during)
    assert after and all(s.status == 404 for s in after), _codes(after)
    assert max(s.latency_ms for s in after) < 1000  # refused at once, not after a timeout


def _codes(samples) -> dict[int, int]:
    out: dict[int, int] = {}
    for s in samples:
        out[s.status] = out.get(s.status, 0) + 1
    return out
