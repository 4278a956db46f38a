"""Model swap: swaps and rollbacks under a steady open-loop load fail no request, and an artifact that is
corrupt (weights that are not safetensors) or incompatible (a config that does not fit its weights and
catalogue) is refused while the old model keeps serving.

Sequence, all under load: original → B (swap) → original (rollback, ``models/LATEST`` moved back) →
B again → corrupt (refused, B serves) → incompatible (refused, B serves) → original (rollback). Each step
goes through ``POST /v1/model/reload`` as an operator would; the replicas also poll every 3 s, so the
reload may find the version already loaded. (tests/integration/test_service.py keeps the shorter
swap test whose counters the metrics test there reads.)"""

from __future__ import annotations

import json
import shutil
import time

import pytest

from reliability_helpers import load_result, record, run_load_in_thread

pytestmark = pytest.mark.integration


def _copy_version(pipeline_output, src: str, name: str) -> str:
    models = pipeline_output / "models"
    if not (models / name).exists():
        shutil.copytree(models / src, models / name)
    manifest = json.loads((models / name / "manifest.json").read_text())
    manifest["version"] = name
    (models / name / "manifest.json").write_text(json.dumps(manifest))
    return name


def _set_latest(pipeline_output, version: str) -> None:
    tmp = pipeline_output / "models" / "LATEST.tmp"
    tmp.write_text(version)
    tmp.replace(pipeline_output / "models" / "LATEST")


def test_swaps_and_rollbacks_under_load_fail_no_request_and_bad_artifacts_are_refused(
        client, serve_url, artifact, pipeline_output, admin):
    original = artifact.version
    models = pipeline_output / "models"
    b = _copy_version(pipeline_output, original, original + "-rel-b")
    corrupt = _copy_version(pipeline_output, original, original + "-rel-corrupt")
    (models / corrupt / "student" / "model.safetensors").write_bytes(b"\x00" * 64 + b"not safetensors")
    incompatible = _copy_version(pipeline_output, original, original + "-rel-incompatible")
    cfg_path = models / incompatible / "student" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(n_items=cfg["n_items"] + 7, d_model=cfg["d_model"] * 2)
    cfg_path.write_text(json.dumps(cfg))

    users = list(artifact.histories)
    stop_flag = __import__("threading").Event()
    th, out = run_load_in_thread(serve_url, 15.0, 600.0,
                                 lambda i: ("POST", "/v1/recommend", {"user_id": users[i % len(users)], "k": 5}),
                                 keep_body=True, stop=stop_flag)
    steps = []

    def reload_to(version: str, expect_refused: bool = False) -> None:
        _set_latest(pipeline_output, version)
        t0 = time.monotonic()
        r = client.post("/v1/model/reload", headers=admin, timeout=180)
        took = time.monotonic() - t0
        steps.append({"to": version.rsplit("-", 1)[-1] if "-rel-" in version else "original",
                      "status": r.status_code, "seconds": round(took, 2)})
        if expect_refused:
            assert r.status_code == 409 and r.json()["error"]["code"] == "model_refused", r.text
            assert "Traceback" not in r.text
        else:
            assert r.status_code == 200 and r.json()["version"] == version, r.text
        time.sleep(1.5)  # some load on the new state before the next step

    try:
        time.sleep(1.5)
        reload_to(b)
        reload_to(original)   # rollback
        reload_to(b)
        reload_to(corrupt, expect_refused=True)
        info = client.get("/v1/model").json()
        assert info["version"] == b and info["last_reload_error"]["uri"].endswith(corrupt)
        reload_to(incompatible, expect_refused=True)
        info = client.get("/v1/model").json()
        assert info["version"] == b and info["last_reload_error"]["uri"].endswith(incompatible)
        assert info["last_reload_error"]["reason"]
        reload_to(original)   # rollback from B after the refusals
    finally:
        stop_flag.set()
        th.join(timeout=120)
        _set_latest(pipeline_output, original)
    load = load_result(out)
    codes = load.codes()
    versions = {s.body["model_version"] for s in load.ok()}
    degraded = sum(1 for s in load.ok() if s.body["degraded"])
    record("model_swap", requests=len(load.samples), codes=codes, degraded=degraded, steps=steps,
           p99_ms=load.p(99), versions_seen=len(versions))
    assert codes == {200: len(load.samples)}, [s.body for s in load.samples if s.status != 200][:5]
    assert degraded == 0
    assert versions == {original, b}  # never the refused ones
    deadline = time.monotonic() + 60
    while client.get("/v1/model").json()["version"] != original:
        assert time.monotonic() < deadline
        time.sleep(1)
