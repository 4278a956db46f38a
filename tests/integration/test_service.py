"""The recommendation service beyond the basics, through Ray Serve's real HTTP proxy: a table of bad
inputs, filters / diversity / explanations, new items, hot reload under load, admin auth, runtime knobs
and the metrics the dashboards use. (Autoscaling and Redis: test_service_scaling; the Scorer deployment
of ``scorer: deployment``, its loss included: test_scorer_deployment.)"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import uuid

import httpx
import pytest

from distilrec.cli import read_metrics

pytestmark = pytest.mark.integration


def _ids(body: dict) -> list[str]:
    return [it["item_id"] for it in body["items"]]


def _rec(client, **payload) -> dict:
    r = client.post("/v1/recommend", json=payload)
    assert r.status_code == 200, r.text
    return r.json()


def _replica_ids(app: str = "distilrec") -> dict[str, set[str]]:
    """``{deployment: {replica actor names}}`` of the live replicas (Serve names them
    ``SERVE_REPLICA::{app}#{deployment}#{replica id}`` in the ``serve`` namespace)."""
    import ray

    out: dict[str, set[str]] = {}
    for a in ray.util.list_named_actors(all_namespaces=True):
        name = a["name"]
        if a["namespace"] == "serve" and name.startswith(f"SERVE_REPLICA::{app}#"):
            out.setdefault(name.split("#")[1], set()).add(name)
    return out


def _bad_inputs(item: str) -> list[tuple[str, object, int, str]]:
    """(route, body, status, code); a body of bytes is sent as it is."""
    huge = json.dumps({"events": [{"user_id": "u", "item_id": item, "type": "x" * 60}] * 20_000}).encode()
    return [
        ("/v1/recommend", b"{not json", 422, "invalid_request"),
        ("/v1/recommend", b"\xff\xfe\x00", 400, "invalid_request"),  # not UTF-8
        ("/v1/recommend", {"user_id": "u", "k": 0}, 422, "invalid_request"),
        ("/v1/recommend", {"user_id": "u", "k": 1000}, 422, "invalid_request"),
        ("/v1/recommend", {"user_id": "u", "k": 2.5}, 422, "invalid_request"),
        ("/v1/recommend", {"user_id": ["u"]}, 422, "invalid_request"),
        ("/v1/recommend", {"history": "i1"}, 422, "invalid_request"),
        ("/v1/recommend", {"history": [item] * 10_000}, 422, "invalid_request"),
        ("/v1/recommend", {"history": ["no-such-item", item]}, 422, "unknown_item"),
        ("/v1/recommend", {"history": ["ünïcødé-电影"]}, 422, "unknown_item"),
        ("/v1/recommend", {"exclude": [item], "diversity": 2}, 422, "invalid_request"),
        ("/v1/recommend", {"filters": {"genres": "drama"}}, 422, "invalid_request"),
        ("/v1/recommend", {"filters": {"no_such_attribute": ["x"]}}, 422, "invalid_request"),
        ("/v1/recommend", None, 422, "invalid_request"),
        ("/v1/events", huge, 413, "payload_too_large"),
        ("/v1/events", {"events": [{"user_id": "u", "item_id": "no-such-item"}]}, 422, "unknown_item"),
        ("/v1/items", {"items": []}, 422, "invalid_request"),
        ("/v1/items", {"items": [{"item_id": "x"}]}, 422, "invalid_request"),
        ("/v1/items", {"items": [{"item_id": "x", "title": "t", "text": "y" * 6000}]}, 422, "invalid_request"),
        ("/v1/items", {"items": [{"item_id": "x", "title": "t", "attributes": {"genres": "a"}}]}, 422,
         "invalid_request"),
        ("/v1/items", {"items": [{"item_id": "d", "title": "t"}, {"item_id": "d", "title": "u"}]}, 422,
         "invalid_request"),
        ("/v1/items", {"items": [{"item_id": item, "title": "a trained item"}]}, 409, "item_exists"),
    ]


def test_bad_inputs_are_json_4xx_and_no_replica_dies(client, artifact, admin):
    before = _replica_ids()
    item = artifact.items.item_ids[0]
    for route, body, status, code in _bad_inputs(item):
        if isinstance(body, bytes):
            r = client.post(route, content=body, headers={"content-type": "application/json", **admin})
        else:
            r = client.post(route, json=body, headers=admin)
        shown = (route, body if len(str(body)) < 200 else f"<{len(str(body))} chars>")
        assert r.status_code == status, (shown, r.status_code, r.text[:300])
        assert r.json()["error"]["code"] == code, (shown, r.text[:300])
        assert "Traceback" not in r.text and 'File "' not in r.text
    # A body sent in chunks, without Content-Length, is measured too.
    r = client.post("/v1/events", content=iter([b'{"events": [' + b'{"user_id": "u", "item_id": "x"},' * 40_000]),
                    headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large", r.text[:300]
    # Non-ASCII ids and text are ordinary strings.
    body = _rec(client, user_id="ユーザー-ñ", k=3)
    assert body["cold_start"] is True and len(body["items"]) == 3
    assert _replica_ids() == before  # the same replicas, none restarted
    assert client.get("/readyz").status_code == 200


def test_filters_diversity_and_explanations(client, artifact):
    user, seen = next(iter(artifact.histories.items()))

    def genres_of(item_id: str) -> set[str] | None:
        """The trained item's genres; ``None`` for an item other tests added (not in the artifact)."""
        row = artifact.items.index.get(item_id)
        return None if row is None else set(artifact.items.attributes[row].get("genres", []))

    genre = sorted(genres_of(seen[-1]))[0]
    body = _rec(client, user_id=user, k=5, filters={"genres": [genre.upper()]})
    assert len(body["items"]) == 5 and not set(_ids(body)) & set(seen)
    assert all(genre in (genres_of(i) or {genre}) for i in _ids(body))
    assert all(it["explanation"] for it in body["items"])
    titles = {artifact.items.titles[artifact.items.index[i]] for i in seen}
    assert any(any(t in it["explanation"] for t in titles) for it in body["items"])  # names a watched item
    plain = _rec(client, user_id=user, k=8)
    diverse = _rec(client, user_id=user, k=8, diversity=0.9)
    assert _ids(plain) != _ids(diverse)

    def n_genres(b):
        return len(set().union(*(genres_of(i) or set() for i in _ids(b))))
    assert n_genres(diverse) >= n_genres(plain)
    # A cold-start answer honours filters too.
    cold = _rec(client, user_id=f"new-{uuid.uuid4().hex[:8]}", k=3, filters={"genres": [genre]})
    assert cold["cold_start"] and all(genre in (genres_of(i) or {genre}) for i in _ids(cold))


def test_a_new_item_is_recommended_to_users_whose_history_it_matches(client, artifact, admin):
    """A new item (a new id, no trained embedding) whose text is that of the item a user's history
    points to next (the user's top recommendation before) lands in that user's top 10 for most users,
    and only after it was added. (A copy of the item just watched is not what a sequence model
    predicts next: users rarely watch the same thing twice.)"""
    users = list(artifact.histories.items())[10:15]
    hits = 0
    for user, seen in users:
        new_id = f"new-item-{uuid.uuid4().hex[:8]}"
        before = _rec(client, user_id=user, k=10)
        assert new_id not in _ids(before)
        match = artifact.items.index[_ids(before)[0]]
        r = client.post("/v1/items", headers=admin, json={"items": [{
            "item_id": new_id, "title": f"{artifact.items.titles[match]} (remastered)",
            "text": artifact.items.texts[match]}]})
        assert r.status_code == 200 and r.json() == {"added": 1}, r.text
        after = _rec(client, user_id=user, k=10)
        hits += new_id in _ids(after)
    assert hits >= 3, f"the new item was in the top 10 of {hits} of {len(users)} users"
    # A new item can be an event's item at once, and is then never recommended to that user again.
    user = f"new-{uuid.uuid4().hex[:8]}"
    assert client.post("/v1/events", json={"events": [{"user_id": user, "item_id": new_id}]}).json() == \
        {"stored": 1, "new": 1}
    body = _rec(client, user_id=user, k=20)
    assert body["cold_start"] is False and new_id not in _ids(body)


def test_admin_endpoints_need_the_token(client):
    item = {"items": [{"item_id": f"n-{uuid.uuid4().hex[:6]}", "title": "x"}]}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic dGVzdA=="}):
        for route, body in (("/v1/items", item), ("/v1/model/reload", None)):
            r = client.post(route, json=body, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", r.text
            assert r.headers["www-authenticate"] == "Bearer"


def _copy_version(pipeline_output, src: str, name: str, break_weights: bool = False) -> str:
    models = pipeline_output / "models"
    shutil.copytree(models / src, models / name)
    manifest = json.loads((models / name / "manifest.json").read_text())
    manifest["version"] = name
    (models / name / "manifest.json").write_text(json.dumps(manifest))
    if break_weights:
        (models / name / "student" / "model.safetensors").write_bytes(b"not safetensors")
    return name


def _set_latest(pipeline_output, version: str) -> None:
    tmp = pipeline_output / "models" / "LATEST.tmp"
    tmp.write_text(version)
    tmp.replace(pipeline_output / "models" / "LATEST")


def test_model_swap_under_load_fails_no_request_and_a_broken_artifact_is_refused(
        client, serve_url, artifact, pipeline_output, admin):
    original = artifact.version
    newer = _copy_version(pipeline_output, original, original + "-b")
    broken = _copy_version(pipeline_output, original, original + "-broken", break_weights=True)
    users = list(artifact.histories)[:40]
    seen_versions: set[str] = set()

    async def load(stop: asyncio.Event) -> list[int]:
        codes = []
        async with httpx.AsyncClient(base_url=serve_url, timeout=30) as c:
            while not stop.is_set():
                rs = await asyncio.gather(*(c.post("/v1/recommend", json={"user_id": u, "k": 5}) for u in users[:8]))
                for r in rs:
                    codes.append(r.status_code)
                    if r.status_code == 200:
                        assert r.json()["degraded"] is False
                        seen_versions.add(r.json()["model_version"])
        return codes

    async def swap() -> tuple[list[int], httpx.Response]:
        stop = asyncio.Event()
        task = asyncio.create_task(load(stop))
        await asyncio.sleep(1.0)
        _set_latest(pipeline_output, newer)
        async with httpx.AsyncClient(base_url=serve_url, timeout=180) as c:
            r = await c.post("/v1/model/reload", headers=admin)
        await asyncio.sleep(1.0)
        stop.set()
        return await task, r

    try:
        codes, r = asyncio.run(swap())
        # "changed" is false when the replicas' own polling (model_poll_s: 3) found the version first.
        assert r.status_code == 200 and r.json()["version"] == newer, r.text
        assert r.json()["changed"] is True or r.json()["previous"] == newer, r.text
        assert codes and set(codes) == {200}, f"{len([c for c in codes if c != 200])} of {len(codes)} failed"
        assert newer in seen_versions
        assert client.get("/v1/model").json()["version"] == newer
        # A fresh request is answered by the new version.
        assert _rec(client, user_id=users[0], k=3)["model_version"] == newer

        _set_latest(pipeline_output, broken)
        r = client.post("/v1/model/reload", headers=admin, timeout=180)
        assert r.status_code == 409 and r.json()["error"]["code"] == "model_refused", r.text
        assert "Traceback" not in r.text
        info = client.get("/v1/model").json()
        assert info["version"] == newer
        assert info["last_reload_error"]["uri"].endswith(broken) and info["last_reload_error"]["reason"]
        assert _rec(client, user_id=users[0], k=3)["model_version"] == newer
    finally:
        # Back to the session's version, found by polling this time (model_poll_s: 3).
        _set_latest(pipeline_output, original)
    deadline = time.monotonic() + 60
    while client.get("/v1/model").json()["version"] != original or \
            _rec(client, user_id=users[0], k=3)["model_version"] != original:
        assert time.monotonic() < deadline, "the polling replicas did not go back to the original version"
        time.sleep(1)


def test_the_local_cluster_gives_its_only_proxy_longer_health_checks(ray_cluster):
    """Every process of the session's local cluster (the Serve controller included) starts with the proxy
    health-check timeout of ``services.run.local_serve_env`` (30 s unless this environment sets its own):
    Serve reads it as it imports, so a task started now sees what the controller saw."""
    import os

    @ray_cluster.remote(num_cpus=0)
    def timeout_s() -> float:
        from ray.serve._private import constants

        return constants.PROXY_HEALTH_CHECK_TIMEOUT_S

    expected = float(os.environ["RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S"])  # set by ensure_ray, or by the user
    assert ray_cluster.get(timeout_s.remote(), timeout=120) == expected


def test_runtime_knobs_change_without_restarting_replicas(client, serve_config, artifact):
    """The ingress's user_config (default_k, the in-process scorer's batch size and candidates, the
    scoring deadline) changes on the running replicas (``reconfigure()``)."""
    import copy

    from services.run import deploy

    user = next(iter(artifact.histories))
    before = _replica_ids()
    knobs = copy.deepcopy(serve_config)
    for dep in knobs["applications"][0]["deployments"]:
        if dep["name"] == "Ingress":
            uc = dep.get("user_config", {})
            dep["user_config"] = {**uc, "default_k": 3, "max_batch_size": 1, "candidates": 20,
                                  "deadline_ms": {**uc.get("deadline_ms", {}), "score": 0.001}}
    deploy(knobs)
    try:
        body = _rec(client, user_id=user)
        assert len(body["items"]) == 3
        # No model answers within 1 µs: the co-occurrence fallback does, marked degraded.
        assert body["degraded"] is True and not set(_ids(body)) & set(artifact.histories[user])
        scorer = client.get("/v1/model").json()["scorer"]
        assert scorer["mode"] == "inline" and scorer["max_batch_size"] == 1 and scorer["candidates"] == 20, scorer
        assert _replica_ids() == before  # reconfigure(), not new replicas
    finally:
        deploy(serve_config)
    body = _rec(client, user_id=user)
    assert len(body["items"]) == 10 and body["degraded"] is False
    assert client.get("/v1/model").json()["scorer"]["max_batch_size"] == 32


def test_service_metrics_are_exported(client, artifact, metrics_port):
    """The service's own metrics, as exported on the Ray metrics port. The degraded, reload and
    new-item counters exist once the tests above made them count (they run first, in file order: the
    knob test's 1 µs scoring deadline gave degraded answers)."""
    user = f"new-{uuid.uuid4().hex[:8]}"
    assert client.post("/v1/events", json={"events": [{"user_id": user, "item_id": artifact.items.item_ids[4]}]}
                       ).status_code == 200
    _rec(client, user_id=user, k=3)
    names = ("ray_distilrec_model_info", "ray_distilrec_model_created_timestamp_seconds",
             "ray_distilrec_candidates_per_request_count", "ray_distilrec_event_to_effect_seconds_count",
             "ray_distilrec_degraded_total", "ray_distilrec_model_reloads_total", "ray_distilrec_items_added_total")
    lines = read_metrics(metrics_port, names, timeout_s=90)
    assert any('version="' in ln for ln in lines if ln.startswith("ray_distilrec_model_info"))
    assert any('reason="scorer_timeout"' in ln for ln in lines if ln.startswith("ray_distilrec_degraded_total"))
    assert not any(user in ln for ln in lines)
