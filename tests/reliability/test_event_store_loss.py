"""Event store loss: a stream of events (one request per event, each with its own user, item, timestamp
and type, so each can be found again) while the store goes away and comes back.

* Redis: ``redis-server`` (appendonly, appendfsync always) is stopped for a few seconds and started
  again. Afterwards every event that got a 2xx is in Redis with its item, timestamp and type (count and
  content); every event sent while it was down got a 503 ``event_store_unavailable`` with
  ``Retry-After``, and none of those is stored (never a false 2xx, never a silent write).
* SQLite (the embedded store): the FeatureEncoder replica processes, the ones that write the file, are
  killed (SIGKILL) mid-stream and Serve starts new ones. Every 2xx event is in the file afterwards with its
  content; the requests that reached the dead replica got a 503 with ``Retry-After``.
"""

from __future__ import annotations

import copy
import os
import signal
import threading
import time
import uuid

import pytest

from cluster_fixtures import fixed_replicas
from reliability_helpers import (ACTOR_POLL_S, load_result, record, replica_actors,
                                 run_load_in_thread, wait_app_running, wait_ready)

pytestmark = pytest.mark.integration

RATE = 20.0


def _event(prefix: str, items: list[str], i: int) -> dict:
    return {"user_id": f"{prefix}-{i}", "item_id": items[i % len(items)], "timestamp": 1_700_000_000 + i,
            "type": ("view", "click", "buy")[i % 3]}


def _check_stream(load, store, prefix: str, items: list[str]) -> dict:
    """Every 2xx event is stored with its content; every other answer is a 503 with Retry-After, and its
    event is not stored when the 503 says "nothing was stored" (it may be when the store's answer went
    missing, and the 503 says so). Returns counts."""
    acked, refused, maybe = [], [], []
    for s in load.samples:
        i = int(round(s.t * RATE))
        if s.status == 200:
            assert s.body == {"stored": 1}, s.body
            acked.append(i)
        else:
            assert s.status == 503, (s.status, s.body, s.error)
            assert s.body["error"]["code"] == "event_store_unavailable", s.body
            assert s.retry_after and int(s.retry_after) >= 1, "503 without Retry-After"
            (maybe if "may have been stored" in s.body["error"]["message"] else refused).append(i)
    for i in acked:
        e = _event(prefix, items, i)
        got = [(x.item_id, x.timestamp, x.type) for x in store.events(e["user_id"])]
        assert got == [(e["item_id"], e["timestamp"], e["type"])], (i, got)
    stored_refused = [i for i in refused if store.events(_event(prefix, items, i)["user_id"])]
    stored_maybe = [i for i in maybe if store.events(_event(prefix, items, i)["user_id"])]
    return {"sent": len(load.samples), "acked": len(acked), "refused_503": len(refused) + len(maybe),
            "refused_but_stored": len(stored_refused), "maybe_stored_503": len(maybe),
            "maybe_and_stored": len(stored_maybe)}


def test_redis_stopped_and_started_during_a_stream_of_events_loses_no_acknowledged_event(
        client, serve_config, redis_server, artifact):
    from ray import serve

    from distilrec.stores import open_event_store
    from services.run import deploy

    prefix = f"rel{uuid.uuid4().hex[:6]}"
    app = copy.deepcopy(serve_config["applications"][0])
    app.update(name="distilrec-redis-loss", route_prefix="/redis-loss")
    # A short store timeout: a write to a dead Redis fails in about a second (503), not after 5.
    app["args"]["event_store"] = redis_server.url(with_password=False) + f"?prefix={prefix}&timeout=1"
    app["runtime_env"]["env_vars"]["DISTILREC_REDIS_PASSWORD"] = redis_server.password
    both = copy.deepcopy(serve_config)
    both["applications"].append(app)
    deploy(both)
    items = artifact.items.item_ids
    try:
        wait_ready(client, path="/redis-loss/readyz")
        stop = threading.Event()
        th, out = run_load_in_thread(client.base_url.__str__().rstrip("/"), RATE, 600.0,
                                     lambda i: ("POST", "/redis-loss/v1/events", {"events": [_event(prefix, items, i)]}),
                                     keep_body=True, stop=stop)
        try:
            time.sleep(3)
            t_down = time.monotonic()
            redis_server.stop()
            time.sleep(4)
            redis_server.start()
            t_up = time.monotonic()
            time.sleep(6)
        finally:
            stop.set()
            th.join(timeout=120)
        load = load_result(out)
        with open_event_store(redis_server.url() + f"?prefix={prefix}") as store:
            counts = _check_stream(load, store, prefix, items)
            assert store.count() == counts["acked"] + counts["maybe_and_stored"]
        down = [s for s in load.samples if t_down - load.t0 + 0.5 <= s.t <= t_up - load.t0 - 0.5]
        after = [s for s in load.samples if s.t >= t_up - load.t0 + 3]
        record("event_store_loss_redis", down_s=t_up - t_down, **counts,
               sent_while_down=len(down), acked_while_down=sum(s.status == 200 for s in down))
        assert counts["refused_but_stored"] == 0  # "nothing was stored" is true
        assert down and all(s.status == 503 for s in down)  # no false 2xx while Redis is down
        assert after and all(s.status == 200 for s in after)  # and writes work again once it is back
    finally:
        if redis_server.proc is None:
            redis_server.start()
        deploy(serve_config)
    deadline = time.monotonic() + 60
    while "distilrec-redis-loss" in serve.status().applications and time.monotonic() < deadline:
        time.sleep(0.5)


def _pinned(serve_config: dict) -> dict:
    """The session's app with one FeatureEncoder replica, the autoscaler's range 1..1.

    While the encoder restarts, every event waits up to the 10 s store deadline. Serve's default
    policy, which counts those waiting requests, asked for 4 Ingress and 2 encoder replicas (with a
    busy loop on one of this machine's two vCPUs, the likely story of CI's failure on 2026-12-02:
    docs/reliability.md); their start-ups starved the encoder's own restart, /readyz stayed 503 for more
    than 90 s, and the proxy missed its health checks. The ingress now scales on its CPU
    (services/autoscaling.py) and keeps the session's config here; the encoder keeps Serve's policy
    (more encoders help a slow remote store), and this test, about the events a dying writer
    acknowledged, holds it still (a lightweight update: the same replica)."""
    return fixed_replicas(serve_config, "FeatureEncoder", 1)


def test_sqlite_store_keeps_every_acknowledged_event_when_the_writer_process_dies(
        client, serve_url, serve_config, event_store_path, artifact):
    from distilrec.stores import open_event_store
    from services.run import deploy

    prefix = f"rel{uuid.uuid4().hex[:6]}"
    items = artifact.items.item_ids
    deploy(_pinned(serve_config))
    encoder = replica_actors()["FeatureEncoder"]
    assert len(encoder) == 1, encoder
    stop = threading.Event()
    th, out = run_load_in_thread(serve_url, RATE, 600.0,
                                 lambda i: ("POST", "/v1/events", {"events": [_event(prefix, items, i)]}),
                                 keep_body=True, stop=stop)
    try:
        time.sleep(3)
        t_kill = time.monotonic()
        for replica in encoder:
            os.kill(replica["pid"], signal.SIGKILL)
        old = {r["actor_id"] for r in encoder}
        deadline, ingress_max = t_kill + 60, 1
        while time.monotonic() < deadline:
            actors = replica_actors()
            ingress_max = max(ingress_max, len(actors.get("Ingress", [])))  # not pinned: scales on its CPU
            now = actors.get("FeatureEncoder", [])
            if now and not old & {r["actor_id"] for r in now}:
                break
            time.sleep(ACTOR_POLL_S)
        wait_ready(client)
        t_back = time.monotonic()
        time.sleep(5)
    finally:
        stop.set()
        th.join(timeout=120)
    wait_app_running()  # Serve itself reports the encoder HEALTHY again, not only the HTTP path
    deploy(serve_config)  # the autoscaler's ranges back (the same replicas)
    load = load_result(out)
    with open_event_store(str(event_store_path)) as store:
        counts = _check_stream(load, store, prefix, items)
    after = [s for s in load.samples if s.t >= t_back - load.t0 + 1]
    record("event_store_loss_sqlite", restart_s=t_back - t_kill, ingress_replicas_max=ingress_max, **counts)
    # A 503 here may come after the dead process committed (the write and the answer are not atomic):
    # the client was told to retry, and a retry may duplicate; what must never happen is a lost 2xx.
    assert counts["acked"] > 0 and after and all(s.status == 200 for s in after)
