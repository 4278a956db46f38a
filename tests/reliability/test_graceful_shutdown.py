"""Graceful shutdown: replicas that Serve stops while requests are in flight finish those requests, and
new requests go elsewhere instead of failing.

What sends the stop. In Kubernetes a pod's SIGTERM reaches ``ray start --block`` (the container's main
process), which does not drain anything; Ray 2.60 also turns a SIGTERM to a replica's own process
into an immediate ``sys.exit`` of that worker (``ray._private.worker``: "The process receives a
SIGTERM"), so requests in flight there are lost like in a crash (test_replica_loss.py covers that
case). The graceful path is Serve's own: when the controller stops a replica (a rolling update from
``helm upgrade`` / a new serve config, a downscale, a node drained by KubeRay's autoscaler,
``serve.delete`` / ``serve shutdown``), the proxies stop routing to it, it waits up to
``graceful_shutdown_timeout_s`` (20 s, Serve's default) for its requests in flight, and only then is it
killed. These tests put that path under load, on the session's (inline) application, where the Ingress
replicas take the HTTP requests and score them in process:

1. Rolling replacement of the Ingress (two replicas) under load, each waiting ``BATCH_WAIT_S`` to fill
   its in-process scoring batches (so that several requests sit in an old replica's batch queue when it
   is told to stop): every request gets a full 200, none is degraded or lost. Two replicas, because
   Serve's rolling update stops an old replica before it starts its successor
   (``deployment_state._check_and_stop_outdated_version_replicas``: no surge): with one, new requests
   have nowhere to go for the successor's start-up time, which is not the path under test; with two,
   they go to the other one.
2. Removing an Ingress replica (a downscale from two to one) under load: every request gets a full
   200; HAProxy routes new requests to the remaining replica.

The Scorer deployment's roll (``scorer: deployment``) is tests/integration/test_scorer_deployment.py's.

Not covered by a test, measured instead (docs/reliability.md): deleting a whole application under load
(``serve.delete``) refuses new requests at once with the proxy's 404, but in Ray 2.60 a request in
flight at that moment can get the proxy's plain-text 500 (1 of 8 in flight, and 2 of 462 sent during
the 23 s deletion, in one run): shut down or upgrade by rolling the replicas or switching clusters,
as KubeRay's RayService does, not by deleting the application under traffic.
"""

from __future__ import annotations

import copy
import threading
import time

import pytest

from cluster_fixtures import fixed_replicas
from reliability_helpers import (ACTOR_POLL_S, load_result, record, replica_actors,
                                 run_load_in_thread, wait_app_running, wait_replaced)

pytestmark = pytest.mark.integration

BATCH_WAIT_S = 0.3


# The load's client waits longer than the ingress's stage deadlines (30 s), so that a request that is
# merely slow on a busy machine ends as the ingress's answer (degraded or 5xx), not as a transport error.
CLIENT_TIMEOUT_S = 90.0


def _slow_ingress(cfg: dict, num_cpus: float | None = None, replicas: int | None = None) -> dict:
    """The ingress waits ``BATCH_WAIT_S`` for a scoring batch (requests pile up in its batch queue); its
    stage deadlines are 30 s, so that a busy machine's slowness is not taken for a lost request: a request
    lost by a stopped replica shows as an error (a degraded answer, a 5xx or a dropped connection), never
    as a timeout. ``num_cpus``: a changed resource request (Serve replaces the replicas); ``replicas``: a
    fixed number of Ingress replicas instead of the autoscaler's."""
    cfg = copy.deepcopy(cfg)
    for dep in cfg["applications"][0]["deployments"]:
        if dep["name"] == "Ingress":
            uc = dep.get("user_config", {})
            dep["user_config"] = {**uc, "batch_wait_timeout_s": BATCH_WAIT_S, "max_batch_size": 64,
                                  "deadline_ms": {**uc.get("deadline_ms", {}), "features": 30000, "score": 30000}}
            if num_cpus is not None:
                dep["ray_actor_options"] = {**dep.get("ray_actor_options", {}), "num_cpus": num_cpus}
    return cfg if replicas is None else fixed_replicas(cfg, "Ingress", replicas)


def _failures(load) -> dict:
    """What went wrong, for an assertion message: the status codes and the first few distinct errors
    (a transport error's text, or the body of a non-200), with when they were sent."""
    bad = [s for s in load.samples if s.status != 200]
    kinds: dict[str, list[float]] = {}
    for s in bad:
        kinds.setdefault(f"{s.status} {s.error or str(s.body)[:160]}", []).append(round(s.t, 1))
    return {"codes": load.codes(), "errors": {k: (len(v), v[0], v[-1]) for k, v in list(kinds.items())[:5]}}


def _restore(serve_config: dict) -> None:
    """Back to the session's app with one Ingress replica: a fixed single replica first (going from two
    fixed replicas straight to the autoscaler would keep the second one for its downscale delay)."""
    from services.run import deploy

    deploy(fixed_replicas(serve_config, "Ingress", 1))
    deadline = time.monotonic() + 120
    while len(replica_actors().get("Ingress", [])) != 1:
        assert time.monotonic() < deadline, "the ingress did not go back to one replica"
        time.sleep(ACTOR_POLL_S)
    deploy(serve_config)
    wait_app_running()


def _load(serve_url: str, users: list[str], stop: threading.Event):
    return run_load_in_thread(serve_url, 20.0, 600.0,
                              lambda i: ("POST", "/v1/recommend", {"user_id": users[i % len(users)], "k": 5}),
                              keep_body=True, stop=stop, timeout_s=CLIENT_TIMEOUT_S)


def test_ingress_replicas_replaced_under_load_finish_their_requests_in_flight(client, serve_url, serve_config,
                                                                             artifact):
    from services.run import deploy

    users = list(artifact.histories)
    deploy(_slow_ingress(serve_config, replicas=2))  # the same replica reconfigured, and a second one
    wait_app_running()
    old = replica_actors()["Ingress"]
    assert len(old) == 2, old
    stop = threading.Event()
    th, out = _load(serve_url, users, stop)
    try:
        time.sleep(3)
        t_roll = time.monotonic()
        deploy(_slow_ingress(serve_config, num_cpus=0.45, replicas=2))  # a new version: a rolling replacement
        t_gone = wait_replaced(old, "Ingress")
        time.sleep(3)
    finally:
        stop.set()
        th.join(timeout=CLIENT_TIMEOUT_S + 30)
        new = replica_actors()["Ingress"]
        _restore(serve_config)
    load = load_result(out)
    codes = load.codes()
    degraded = sum(1 for s in load.ok() if s.body["degraded"])
    in_flight = [s for s in load.samples if s.t <= t_gone - load.t0 <= s.t + s.latency_ms / 1000]
    record("graceful_replace_ingress", requests=len(load.samples), codes=codes, degraded=degraded,
           roll_s=t_gone - t_roll, p99_ms=load.p(99), in_flight_at_stop=len(in_flight))
    assert codes == {200: len(load.samples)}, _failures(load)
    assert degraded == 0, "a request was answered by the fallback while the ingress rolled"
    assert not {a["actor_id"] for a in new} & {a["actor_id"] for a in old}


def test_an_ingress_replica_removed_under_load_finishes_its_http_requests_in_flight(
        client, serve_url, serve_config, artifact):
    """Two Ingress replicas (the ones that hold the HTTP requests) under load, then one: Serve stops the
    other while requests are in flight on it (its batch wait keeps them there for 0.3 s). Every request
    gets a full 200."""
    from services.run import deploy

    users = list(artifact.histories)
    deploy(_slow_ingress(serve_config, replicas=2))
    two = replica_actors()["Ingress"]
    assert len(two) == 2
    stop = threading.Event()
    th, out = _load(serve_url, users, stop)
    try:
        time.sleep(3)
        t_stop = time.monotonic()
        deploy(_slow_ingress(serve_config, replicas=1))
        deadline = time.monotonic() + 90
        while len(replica_actors().get("Ingress", [])) != 1:
            assert time.monotonic() < deadline, "the second Ingress replica was not stopped"
            time.sleep(ACTOR_POLL_S)
        t_gone = time.monotonic()
        time.sleep(3)
    finally:
        stop.set()
        th.join(timeout=CLIENT_TIMEOUT_S + 30)
        deploy(serve_config)
    load = load_result(out)
    codes = load.codes()
    degraded = sum(1 for s in load.ok() if s.body["degraded"])
    in_flight = [s for s in load.samples if s.t <= t_stop - load.t0 <= s.t + s.latency_ms / 1000]
    record("graceful_ingress_downscale", requests=len(load.samples), codes=codes, degraded=degraded,
           stop_s=t_gone - t_stop, in_flight_at_stop=len(in_flight), p99_ms=load.p(99),
           errors=sorted({f"{s.status} {str(s.body)[:160]}" for s in load.samples if s.status != 200}))
    assert in_flight, "no request was in flight when the replica was told to stop"
    assert codes == {200: len(load.samples)}, _failures(load)
    assert degraded == 0
