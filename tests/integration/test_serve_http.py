"""The Serve application through Ray Serve's real HTTP proxy."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from distilrec.cli import read_metrics

pytestmark = pytest.mark.integration


def test_health_and_readiness(client, artifact):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["model_version"] == artifact.version


def test_model_info(client, artifact):
    info = client.get("/v1/model").json()
    assert info["version"] == artifact.version
    assert info["n_items"] == len(artifact.items)
    assert info["metrics"]["student"]["ndcg@10"] >= 0


def test_known_user_gets_k_unseen_items(client, artifact):
    user, seen = next(iter(artifact.histories.items()))
    r = client.post("/v1/recommend", json={"user_id": user, "k": 7})
    assert r.status_code == 200, r.text
    body = r.json()
    ids = [it["item_id"] for it in body["items"]]
    assert len(ids) == 7 == len(set(ids))
    assert not set(ids) & set(seen)
    assert all(it["item_id"] in artifact.items.index for it in body["items"])
    assert [it["title"] for it in body["items"]] == [artifact.items.titles[artifact.items.index[i]] for i in ids]
    scores = [it["score"] for it in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert body["cold_start"] is False and body["degraded"] is False
    assert body["model_version"] == artifact.version


def test_request_history_and_exclude_are_honoured(client, artifact):
    user, seen = next(iter(artifact.histories.items()))
    first = client.post("/v1/recommend", json={"user_id": user, "k": 5}).json()["items"]
    extra = [first[0]["item_id"]]
    excluded = [first[1]["item_id"]]
    body = client.post("/v1/recommend", json={"user_id": user, "history": extra, "k": 5,
                                               "exclude": excluded}).json()
    ids = {it["item_id"] for it in body["items"]}
    assert not ids & (set(seen) | set(extra) | set(excluded))


def test_history_changes_the_ranking_of_an_anonymous_user(client, artifact):
    a = client.post("/v1/recommend", json={"history": [artifact.items.item_ids[0]], "k": 10}).json()
    b = client.post("/v1/recommend", json={"history": [artifact.items.item_ids[-1]], "k": 10}).json()
    assert a["cold_start"] is False
    assert [i["item_id"] for i in a["items"]] != [i["item_id"] for i in b["items"]]


def test_unknown_user_without_history_gets_cold_start(client):
    body = client.post("/v1/recommend", json={"user_id": "never-seen", "k": 3}).json()
    assert body["cold_start"] is True
    assert len(body["items"]) == 3


@pytest.mark.parametrize(
    "payload, code",
    [
        ({"user_id": "u1", "k": 0}, "invalid_request"),
        ({"user_id": "u1", "k": 1000}, "invalid_request"),
        ({"user_id": "u1", "k": "ten"}, "invalid_request"),
        ({"user_id": 12}, "invalid_request"),
        ({"user_id": "u1", "surprise": True}, "invalid_request"),
        ({"history": ["no-such-item"]}, "unknown_item"),
        ({"history": ["x"] * 10_000}, "invalid_request"),
        ([1, 2, 3], "invalid_request"),
    ],
)
def test_bad_input_is_a_json_4xx(client, payload, code):
    r = client.post("/v1/recommend", json=payload)
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]["code"] == code
    assert "Traceback" not in r.text


def test_malformed_json_and_unknown_route(client):
    r = client.post("/v1/recommend", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    r = client.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_service_answers_after_bad_input(client):
    for _ in range(5):
        client.post("/v1/recommend", content=b"\xff\xfe", headers={"content-type": "application/json"})
    assert client.post("/v1/recommend", json={"user_id": "u0", "k": 2}).status_code == 200


def test_openapi_is_served(client):
    spec = client.get("/openapi.json").json()
    assert "/v1/recommend" in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_concurrent_requests_are_batched_and_metrics_exported(serve_url, metrics_port, artifact):
    users = list(artifact.histories)[:64]

    async def burst():
        async with httpx.AsyncClient(base_url=serve_url, timeout=30) as c:
            return await asyncio.gather(*(c.post("/v1/recommend", json={"user_id": u, "k": 5}) for u in users))

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * len(users)

    def batched(lines):
        # (batches, batches of one request): Ray 2.60 exports a histogram's _sum from bucket midpoints
        # (a batch of 1 adds 0.5), so the bucket counts tell whether batches held several requests.
        count = sum(float(ln.rsplit(" ", 1)[1]) for ln in lines if ln.startswith("ray_distilrec_scorer_batch_size_count"))
        ones = sum(float(ln.rsplit(" ", 1)[1]) for ln in lines
                   if ln.startswith("ray_distilrec_scorer_batch_size_bucket") and 'le="1.0"' in ln)
        return count, ones

    names = ("ray_distilrec_requests_total", "ray_distilrec_request_latency_ms_count",
             "ray_distilrec_stage_latency_ms_count", "ray_distilrec_scorer_batch_size_count",
             "ray_distilrec_scorer_batch_size_bucket")
    deadline = time.monotonic() + 60  # Ray exports metrics every few seconds
    while True:
        lines = read_metrics(metrics_port, names, timeout_s=60)
        count, ones = batched(lines)
        if count > ones or time.monotonic() > deadline:
            break
        time.sleep(2)
    # Not every batch held a single request: some batches held several.
    assert count > ones and count > 0
    for stage in ("encode", "score", "rank"):
        assert any(f'stage="{stage}"' in ln for ln in lines if ln.startswith("ray_distilrec_stage_latency_ms_count"))
