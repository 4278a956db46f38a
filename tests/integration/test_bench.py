"""Smoke versions of ``distilrec bench serve``, ``bench train`` and ``bench paths`` (seconds per step, tiny
rates), so that the benchmarks cannot rot. They use the session's Ray cluster and artifact; the serving smoke runs its four
applications under their own names and route prefixes behind the session's proxy, beside the session's
application, which must come out of it untouched (same replicas, still answering)."""

from __future__ import annotations

import json

import httpx
import pytest

pytestmark = pytest.mark.integration


def _replicas(app: str) -> set[str]:
    import ray

    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == "serve" and a["name"].startswith(f"SERVE_REPLICA::{app}#")}


def test_bench_train_smoke(ray_cluster, tmp_path):
    from distilrec.bench.train import TrainBenchConfig, run_train_bench

    out = tmp_path / "train"
    res = run_train_bench(TrainBenchConfig(output=str(out), dataset="synthetic:users=120,items=40,seed=1",
                                           workers=(1, 2), epochs=1))
    assert [r["workers"] for r in res["runs"]] == [1, 2]
    for r in res["runs"]:
        assert r["samples_per_s"] > 0 and r["epoch_s"] > 0
        assert r["samples_per_s"] == pytest.approx(r["samples_per_s_per_worker"] * r["workers"])
    assert json.loads((out / "train.json").read_text())["runs"][1]["workers"] == 2
    md = (out / "train.md").read_text()
    assert "| 2 |" in md and "GPU: not measured" in md


# Two of the benchmark's applications: the others are the shipped config with app args or knobs changed
# (tests/unit/test_bench_report.py); the teacher in the ingress with batching off is deployed beside the
# session's application by tests/integration/test_service_scaling.py, and ``scorer: deployment`` by
# tests/integration/test_scorer_deployment.py. Each application costs ~40 s here.
SMOKE_APPS = ("distilrec", "floor")


def test_bench_serve_smoke_beside_the_session_app(ray_cluster, pipeline_output, serve_url, tmp_path):
    from ray import serve

    from distilrec.bench.serve import TITLES, ServeBenchConfig, run_serve_bench

    session = _replicas("distilrec")
    assert session
    out = tmp_path / "serve"
    port = int(serve_url.rsplit(":", 1)[1])
    res = run_serve_bench(ServeBenchConfig(
        model=str(pipeline_output), output=str(out), duration_s=1.0, warmup_s=0.5, start_rate=2.0, factor=2.0,
        max_rate=4.0, concurrency=4, n_bodies=50, max_total_s=240, port=port, retry_failed=False,
        fixed_rates=(2.0,), min_requests=0, apps=SMOKE_APPS), command="smoke")

    written = json.loads((out / "serve.json").read_text())
    assert set(written["apps"]) == set(SMOKE_APPS) and written["order"][0] == "distilrec"
    for name, a in written["apps"].items():
        assert a["search"]["steps"], name
        assert a["fixed"] and a["closed"], name
        assert a["throughput_at_slo"] >= 0
        assert sum(s["sent"] for s in a["search"]["steps"] + a["fixed"] + a["closed"]) > 0, name
        # no 4xx/5xx in a smoke run at 2-4 req/s, and real answers: the apps really answered
        assert not any(k.startswith("status_") for s in a["fixed"] + a["closed"] for k in s["errors"]), \
            (name, a["fixed"], a["closed"])
        assert sum(s["ok"] for s in a["fixed"]) > 0 and a["fixed"][0]["p50_ms"] > 0, name
    assert written["body_bytes"] > 100 and written["fixed_rates"]
    # The targets of the applications that ran (the floor's share, the half-load p99), measured; the
    # ones of the applications left out of the smoke (batching off, the teacher, scorer: deployment) absent.
    targets = {t["target"]: t["verdict"] for t in written["targets"]}
    assert len(targets) == 2 and "not measured" not in targets.values(), targets
    assert any("floor" in t for t in targets), targets
    md = (out / "serve.md").read_text()
    for title in [TITLES[name] for name in SMOKE_APPS] + list(targets):
        assert title in md, title
    assert (out / "serve_latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert res["apps"].keys() == written["apps"].keys()

    # The bench's applications are gone; the session's application is as it was and still answers.
    assert set(serve.status().applications) == {"distilrec"}
    assert _replicas("distilrec") == session
    assert httpx.get(f"{serve_url}/readyz", timeout=30).status_code == 200


def test_bench_paths_smoke(tmp_path):
    """A variant starts a Ray instance of its own in a child process (beside the session's cluster). One
    variant, the one distilrec ships (each costs a Ray start); the table's ratios are unit-tested."""
    from distilrec.bench.paths import HOPS, run_paths

    res = run_paths(str(tmp_path / "paths"), requests=5, warmup=1, variants=("haproxy",))
    assert list(res["variants"]) == ["haproxy"]
    results = res["variants"]["haproxy"]["results"]
    assert [f"bare, {h} handle calls" for h in HOPS] == list(results)
    assert all(r["n"] == 5 and 0 < r["p50_ms"] <= r["p99_ms"] for r in results.values())
    assert "| bare, 3 handle calls |" in (tmp_path / "paths" / "paths.md").read_text()


def test_bench_scale_smoke(tmp_path):
    """``distilrec bench scale --smoke`` through the CLI: both parts at tiny sizes, each point in a process of
    its own, under CI's minute. The catalogue sizes straddle the smoke's faiss threshold (1,000 items), so
    ``retrieval: auto`` takes exact at the first and HNSW at the second."""
    from distilrec.cli import main

    out = tmp_path / "scale"
    assert main(["bench", "scale", "--smoke", "--output", str(out), "--data-dir", str(tmp_path / "data")]) == 0
    res = json.loads((out / "scale.json").read_text())
    assert [(p["interactions_asked"], p["items"]) for p in res["train"]] == [(4_000, 300), (8_000, 300)]
    for p in res["train"]:
        assert p["users"] > 0 and p["interactions"] > 0 and p["peak_rss_mib"] > 0
        for stage in ("teacher", "distill"):
            s = p["stages"][stage]
            assert s["epoch_s"] > 0 and s["steps"] == s["measured_steps"] and not s["extrapolated"]
            assert s["peak_rss_mib"] > 0 and s["val_s_per_1000_users"] > 0
    assert [(r["items_asked"], r["model"]) for r in res["serve"]] == [
        (400, "student"), (400, "teacher"), (1_500, "student"), (1_500, "teacher")]
    kinds = {r["items"]: r["retrieval"] for r in res["serve"]}
    pytest.importorskip("faiss")
    assert kinds == {400: "exact", 1_500: "faiss"}
    for r in res["serve"]:
        assert r["rss_mib"] > 0 and r["build_s"] >= 0
        assert 0 < r["score_ms"]["batch_32_per_request"]["p50"] and 0 < r["score_ms"]["batch_1"]["p50"]
        if r["model"] == "student":
            assert r["search"]["exact"]["batch_1"]["p50"] > 0 and r["search"]["hnsw"]["batch_1"]["p50"] > 0
            assert 0.9 <= r["search"]["recall_at_100"] <= 1.0
    assert any("1/5 of the teacher" in t["target"] for t in res["targets"])
    md = (out / "scale.md").read_text()
    assert "| 1,500 | student | faiss |" in md and "recall@100" in md and "Command: `distilrec bench scale" in md
    for png in ("scale_train.png", "scale_serve.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
