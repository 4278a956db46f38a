"""``scorer: deployment``: the Scorer deployment scores instead of the ingress (one typed handle call per
request), for a model that needs hardware or scaling of its own.

One second application, ``scorer-mode`` on route ``/scorer-mode``, built from the same serve config as the
session's (``services.run.load_config`` with ``app_args={"scorer": "deployment"}``, which adds the
Scorer's entry), runs beside the session's inline application for this module and is deleted at its end.
It reads the session's event store (so both see the same events and new items) and serves a copy of the
session's model version from a folder of its own, so that its model swaps do not touch the session's
application. Through Ray Serve's real HTTP proxy:

* its answers are the inline application's answers (same items, scores, explanations, flags);
* a model swap and rollback under load fail no request and degrade none;
* the Scorer scales up under sustained load and back down (Serve's policy on the requests it holds);
* a Scorer replica killed (SIGKILL) under load gives degraded answers (200, ``degraded: true``), never an
  error, and full answers are back within ``RECOVERY_S`` once Serve has replaced it;
* the Scorer rolled under load (a new version of its two replicas, Serve's graceful stop) loses no request
  in flight: every answer is a full 200.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import threading
import time

import httpx
import pytest

from cluster_fixtures import SCORER_MODE_APP, SCORER_MODE_PREFIX, scorer_mode_config
from reliability_helpers import (ACTOR_POLL_S, AfterKill, load_result, record, replica_actors, run_load_in_thread,
                                 wait_app_running, wait_ready, wait_replaced)

pytestmark = pytest.mark.integration

APP, PREFIX = SCORER_MODE_APP, SCORER_MODE_PREFIX
RECOVERY_S = 30.0
RATE = 20.0  # requests per second of the loss and roll tests
BATCH_WAIT_S = 0.3
# The client waits longer than the stage deadlines of the roll test (30 s), so that a request that is
# merely slow on a busy machine ends as the ingress's answer, not as a transport error.
CLIENT_TIMEOUT_S = 90.0


@pytest.fixture(scope="module")
def mode(serve_config, serve_url, client, artifact, pipeline_output, tmp_path_factory):
    """The ``scorer-mode`` application, deployed beside the session's: ``{"models": its models folder,
    "model_uri", "config"}``. Deleted afterwards (the session's config applied alone)."""
    from ray import serve

    from services.run import deploy

    out = tmp_path_factory.mktemp("scorer-mode")
    shutil.copytree(pipeline_output / "models" / artifact.version, out / "models" / artifact.version)
    (out / "models" / "LATEST").write_text(artifact.version)
    cfg = scorer_mode_config(serve_config, str(out))
    deploy(cfg)
    try:
        wait_ready(client, path=f"{PREFIX}/readyz")
        yield {"models": out / "models", "model_uri": str(out), "config": cfg}
    finally:
        deploy(serve_config)  # the declarative config without it: the application is deleted
        deadline = time.monotonic() + 60
        while APP in serve.status().applications and time.monotonic() < deadline:
            time.sleep(0.5)
    assert APP not in serve.status().applications


def _ids(body: dict) -> list[str]:
    return [it["item_id"] for it in body["items"]]


def _failures(load) -> list:
    """The first few answers that were not a 200, for an assertion message."""
    return [(round(s.t, 2), s.status, s.error or str(s.body)[:200]) for s in load.samples if s.status != 200][:5]


def test_the_scorer_deployment_answers_as_the_inline_ingress_does(mode, client, artifact):
    info = client.get(f"{PREFIX}/v1/model").json()
    assert info["scorer"]["mode"] == "deployment" and info["version"] == artifact.version, info
    assert info["scorer"]["max_batch_size"] >= 1, info["scorer"]
    # The ingress's knobs too: its own batch, the candidates and the default k it answers with.
    assert info["scorer"]["ingress_max_batch_size"] >= 1 and info["scorer"]["candidates"] >= 1, info["scorer"]
    assert info["scorer"]["default_k"] >= 1 and info["scorer"]["retrieval"] == "exact", info["scorer"]
    assert client.get("/v1/model").json()["scorer"]["mode"] == "inline"
    users = list(artifact.histories.items())
    (u0, seen0), (u1, _), (u2, _) = users[20], users[21], users[22]
    genre = sorted(artifact.items.attributes[artifact.items.index[seen0[-1]]].get("genres", ["drama"]))[0]
    payloads = [
        {"user_id": u0, "k": 7},
        {"user_id": u1, "k": 10, "diversity": 0.5},
        {"user_id": u2, "k": 5, "history": [artifact.items.item_ids[3]], "exclude": [artifact.items.item_ids[4]]},
        {"user_id": u0, "k": 5, "filters": {"genres": [genre]}},
        {"history": [artifact.items.item_ids[0], artifact.items.item_ids[9]], "k": 6},
        {"user_id": "scorer-mode-never-seen", "k": 4},
        {"user_id": u1, "k": 5, "query": "a ghost story"},
    ]
    for payload in payloads:
        inline = client.post("/v1/recommend", json=payload)
        deployed = client.post(f"{PREFIX}/v1/recommend", json=payload)
        assert inline.status_code == deployed.status_code == 200, (payload, inline.text, deployed.text)
        a, b = inline.json(), deployed.json()
        assert set(a) == set(b) and not b["degraded"], (payload, b)
        flags = ("model_version", "cold_start", "degraded")
        assert [a[f] for f in flags] == [b[f] for f in flags], (payload, a, b)
        assert _ids(a) == _ids(b), (payload, _ids(a), _ids(b))
        for x, y in zip(a["items"], b["items"]):
            assert set(x) == set(y) and (x["title"], x["explanation"]) == (y["title"], y["explanation"])
            assert x["score"] == pytest.approx(y["score"], rel=1e-4, abs=1e-4), (payload, x, y)
    bad = client.post(f"{PREFIX}/v1/recommend", json={"user_id": u0, "k": 0})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"


def _degraded_reasons(metrics_port: int) -> list[str]:
    """The ``scorer-mode`` ingress's ``distilrec_degraded_total`` series (by reason), for a failure message."""
    from distilrec.cli import read_metrics

    try:
        lines = read_metrics(metrics_port, ("ray_distilrec_degraded_total",), timeout_s=20)
    except RuntimeError as e:  # none yet
        return [str(e)]
    return [ln for ln in lines if f'application="{APP}"' in ln]


def _set_latest(models, version: str) -> None:
    tmp = models / "LATEST.tmp"
    tmp.write_text(version)
    tmp.replace(models / "LATEST")


def _recommend_load(users: list[str], k: int = 5):
    return lambda i: ("POST", f"{PREFIX}/v1/recommend", {"user_id": users[i % len(users)], "k": k})


def test_a_model_swap_and_rollback_under_load_fail_no_request(mode, client, serve_url, artifact, admin):
    """``POST /v1/model/reload`` swaps the Scorer's model and the ingress's catalogue, each in the
    background; requests during the swap are answered by either version, never degraded or failed."""
    models, original = mode["models"], artifact.version
    newer = original + "-scorer-mode-b"
    shutil.copytree(models / original, models / newer)
    manifest = json.loads((models / newer / "manifest.json").read_text())
    manifest["version"] = newer
    (models / newer / "manifest.json").write_text(json.dumps(manifest))
    stop = threading.Event()
    th, out = run_load_in_thread(serve_url, 15.0, 600.0, _recommend_load(list(artifact.histories)),
                                 keep_body=True, stop=stop)
    steps = []
    try:
        time.sleep(1.5)
        for version in (newer, original):
            _set_latest(models, version)
            t0 = time.monotonic()
            r = client.post(f"{PREFIX}/v1/model/reload", headers=admin, timeout=180)
            steps.append({"to": version, "status": r.status_code, "seconds": round(time.monotonic() - t0, 2)})
            assert r.status_code == 200 and r.json()["version"] == version, r.text
            assert client.get(f"{PREFIX}/v1/model").json()["version"] == version
            body = client.post(f"{PREFIX}/v1/recommend", json={"user_id": next(iter(artifact.histories)), "k": 3})
            assert body.json()["model_version"] == version, body.text
            time.sleep(1.5)  # some load on the new state before the next step
    finally:
        stop.set()
        th.join(timeout=120)
        _set_latest(models, original)
    load = load_result(out)
    codes = load.codes()
    versions = {s.body["model_version"] for s in load.ok()}
    degraded = sum(1 for s in load.ok() if s.body["degraded"])
    record("scorer_mode_model_swap", requests=len(load.samples), codes=codes, degraded=degraded, steps=steps,
           p99_ms=load.p(99), versions_seen=sorted(versions))
    assert codes == {200: len(load.samples)}, _failures(load)
    assert degraded == 0
    assert versions == {original, newer}
    assert client.get("/v1/model").json()["version"] == original  # the session's application did not swap


def _running_scorers() -> int:
    from ray import serve

    dep = serve.status().applications[APP].deployments["Scorer"]
    return int(dep.replica_states.get("RUNNING", 0))


def test_the_scorer_scales_up_under_sustained_load_and_back_down(mode, client, serve_config, serve_url, artifact):
    """Serve's default policy on the requests the Scorer holds, in a test config with short delays (the
    Scorer's own wait 10 s up, 120 s down): 16 clients without pause keep more than one request per Scorer
    replica in flight, so Serve adds the second replica; when the load stops it goes back to one."""
    from services.run import deploy

    scaling = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1, "upscale_delay_s": 1,
               "downscale_delay_s": 4, "metrics_interval_s": 0.5, "look_back_period_s": 2}
    deploy(scorer_mode_config(serve_config, mode["model_uri"], scorer={"autoscaling_config": scaling}))
    users = list(artifact.histories)
    stop = threading.Event()
    codes: list[int] = []

    async def worker(c: httpx.AsyncClient, n: int) -> None:
        while not stop.is_set():
            r = await c.post(f"{PREFIX}/v1/recommend", json={"user_id": users[n % len(users)], "k": 10})
            codes.append(r.status_code)
            if r.status_code == 503:  # back-pressure on an overloaded machine: what a client sees
                assert r.json()["error"]["code"] == "unavailable" and r.headers["retry-after"]
            n += 16

    async def load() -> None:
        async with httpx.AsyncClient(base_url=serve_url, timeout=60) as c:
            await asyncio.gather(*(worker(c, i) for i in range(16)))

    thread = threading.Thread(target=lambda: asyncio.run(load()), daemon=True)
    try:
        assert _running_scorers() == 1
        t0 = time.monotonic()
        thread.start()
        deadline, peak = t0 + 120, 1
        while peak < 2 and time.monotonic() < deadline:
            peak = max(peak, _running_scorers())
            time.sleep(0.5)
        t_up = time.monotonic()
        stop.set()
        thread.join(timeout=60)
        assert peak == 2, "the Scorer did not scale up under load"
        # Every request is answered: 200, or (while a replica starts on a saturated machine) a 503 with
        # Retry-After; never a 500.
        assert codes and set(codes) <= {200, 503}, set(codes)
        assert codes.count(200) >= 0.95 * len(codes), f"{codes.count(503)} of {len(codes)} were 503"
        deadline = time.monotonic() + 120
        while _running_scorers() != 1 and time.monotonic() < deadline:
            time.sleep(0.5)
        record("scorer_mode_scaling", up_after_s=t_up - t0, down_after_s=time.monotonic() - t_up,
               requests=len(codes), codes={c: codes.count(c) for c in set(codes)})
        assert _running_scorers() == 1, "the Scorer did not scale back down after the load"
    finally:
        stop.set()
        deploy(mode["config"])  # one Scorer replica (the range 1..1: a lightweight update)
        wait_app_running(APP)
        deadline = time.monotonic() + 60
        while len(replica_actors(APP).get("Scorer", [])) != 1 and time.monotonic() < deadline:
            time.sleep(ACTOR_POLL_S)  # a replica stopped by the downscale may still be finishing


def test_a_killed_scorer_replica_gives_degraded_answers_then_full_ones(mode, client, serve_url, artifact):
    """SIGKILL to the only Scorer replica's process (as the OOM killer or a lost node would) under a steady
    open-loop load: no request gets an error; while the Scorer is gone the ingress answers from the
    co-occurrence fallback (``degraded: true``, still k unseen items); Serve starts a new replica and full
    answers are back within ``RECOVERY_S`` of the kill and stay."""
    users = list(artifact.histories)
    scorers = replica_actors(APP)["Scorer"]
    assert len(scorers) == 1 and scorers[0]["pid"], scorers
    stop = threading.Event()
    th, out = run_load_in_thread(serve_url, RATE, 600.0, _recommend_load(users), keep_body=True, stop=stop)
    try:
        time.sleep(3)
        t_kill = time.monotonic()
        os.kill(scorers[0]["pid"], signal.SIGKILL)
        # Keep the load on until the successor runs, then 8 s more (full answers must be back and stay).
        deadline = t_kill + RECOVERY_S + 15
        while time.monotonic() < deadline:
            now = replica_actors(APP).get("Scorer", [])
            if now and now[0]["actor_id"] != scorers[0]["actor_id"]:
                break
            time.sleep(ACTOR_POLL_S)
        time.sleep(8)
    finally:
        stop.set()
        th.join(timeout=120)
    load = load_result(out)
    k = AfterKill.of(load, t_kill)
    record("scorer_mode_replica_loss", **k.figures(load))
    assert load.codes() == {200: len(load.samples)}, _failures(load)
    assert k.degraded, "no degraded answer: the kill did not take the Scorer away"
    assert k.recovered_s <= RECOVERY_S, f"degraded answers until {k.recovered_s:.1f} s after the kill"
    assert len(k.tail) >= 20 and not any(s.body["degraded"] for s in k.tail)
    for s in load.ok():  # degraded or not: k items the user has not seen
        user = users[int(round(s.t * RATE)) % len(users)]
        assert len(s.body["items"]) == 5 and not set(_ids(s.body)) & set(artifact.histories[user]), s.body
    assert replica_actors(APP)["Scorer"][0]["actor_id"] != scorers[0]["actor_id"]
    wait_app_running(APP)


def test_the_scorer_rolled_under_load_finishes_its_requests_in_flight(mode, client, serve_url, serve_config,
                                                                     artifact, metrics_port):
    """Two Scorer replicas that wait ``BATCH_WAIT_S`` to fill a batch (requests sit in an old replica's
    queue when it is told to stop), then a new version of the Scorer (another CPU request): Serve's rolling
    update stops the old replicas one at a time, each after its requests in flight. Every request gets a
    full 200 (a request lost by an old replica would have been answered by the fallback, degraded). The
    ingress's stage deadlines are 30 s here, so that a busy machine's slowness is not taken for a loss."""
    from services.run import deploy

    slow = {"user_config": {"max_batch_size": 64, "batch_wait_timeout_s": BATCH_WAIT_S}}
    deadlines = {"deadline_ms": {"features": 30000, "score": 30000, "query": 30000, "store": 30000}}
    deploy(scorer_mode_config(serve_config, mode["model_uri"], scorers=2, scorer=slow,
                              ingress_user_config=deadlines))
    wait_app_running(APP)
    old = replica_actors(APP)["Scorer"]
    assert len(old) == 2, old
    stop = threading.Event()
    th, out = run_load_in_thread(serve_url, RATE, 600.0, _recommend_load(list(artifact.histories)),
                                 keep_body=True, stop=stop, timeout_s=CLIENT_TIMEOUT_S)
    try:
        time.sleep(3)
        t_roll = time.monotonic()
        deploy(scorer_mode_config(serve_config, mode["model_uri"], scorers=2, ingress_user_config=deadlines,
                                  scorer={**slow, "ray_actor_options": {"num_cpus": 0.45}}))
        t_gone = wait_replaced(old, "Scorer", APP)
        time.sleep(3)
    finally:
        stop.set()
        th.join(timeout=CLIENT_TIMEOUT_S + 30)
    new = replica_actors(APP)["Scorer"]
    load = load_result(out)
    codes = load.codes()
    degraded = sum(1 for s in load.ok() if s.body["degraded"])
    in_flight = [s for s in load.samples if s.t <= t_gone - load.t0 <= s.t + s.latency_ms / 1000]
    when = [round(s.t - (t_roll - load.t0), 2) for s in load.ok() if s.body["degraded"]]
    record("scorer_mode_graceful_roll", requests=len(load.samples), codes=codes, degraded=degraded,
           degraded_from_to_s=[when[0], when[-1]] if when else None, roll_s=t_gone - t_roll,
           p99_ms=load.p(99), in_flight_at_stop=len(in_flight))
    assert codes == {200: len(load.samples)}, _failures(load)
    assert degraded == 0, ("a request in flight on a stopped Scorer replica was lost (answered by the fallback); "
                           f"the ingress's degraded answers by reason: {_degraded_reasons(metrics_port)}")
    assert not {a["actor_id"] for a in new} & {a["actor_id"] for a in old}
