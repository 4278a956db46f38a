"""``POST /v1/model/promote`` and ``POST /v1/model/rollback`` through Ray Serve's real HTTP proxy, on the
session's application and pipeline output (whose only trained version the offline gate published as
the first), and ``GET /v1/model``'s gate fields."""

from __future__ import annotations

import json
import shutil
import time
from datetime import datetime, timezone

import pytest

pytestmark = pytest.mark.integration


def _copy_version(pipeline_output, src: str, name: str, refused: bool = False) -> str:
    """A copy of version ``src`` named ``name``, created now; ``refused``: as the offline gate refused it."""
    models = pipeline_output / "models"
    shutil.copytree(models / src, models / name)
    manifest = json.loads((models / name / "manifest.json").read_text())
    manifest.update(version=name, created_at=datetime.now(timezone.utc).isoformat())
    if refused:
        manifest["gate"] = {**manifest["gate"], "published": False, "passed": False,
                            "reason": "validation NDCG@10 0.0100 is 0.050 × the serving version's 0.2000"}
    (models / name / "manifest.json").write_text(json.dumps(manifest))
    return name


def test_the_pipeline_reports_the_gate_and_records_the_publication(pipeline_output):
    report = json.loads((pipeline_output / "report.json").read_text())
    version = (pipeline_output / "models" / "LATEST").read_text().strip()
    gate = report["gate"]
    assert gate["published"] and gate["passed"] and gate["reason"] == "first version" and gate["min_ratio"] == 0.95
    assert 0 < gate["ndcg@10"] <= 1 and gate["users"] == report["validation"]["users"]
    assert json.loads((pipeline_output / "models" / version / "manifest.json").read_text())["gate"] == gate
    moves = json.loads((pipeline_output / "models" / "HISTORY.json").read_text())["moves"]
    assert [(m["version"], m["action"]) for m in moves][:1] == [(version, "published")]
    assert report["models"]["student"]["val_ndcg@10"] > 0


def test_promote_and_rollback_move_the_served_version(client, artifact, pipeline_output, admin):
    original = artifact.version
    info = client.get("/v1/model").json()
    assert info["version"] == original and info["gate"]["published"] is True
    assert info["gate"]["reason"] == "first version"
    good = _copy_version(pipeline_output, original, original + "-promoted")
    refused = _copy_version(pipeline_output, original, original + "-refused", refused=True)
    try:
        for route, body in (("/v1/model/promote", {"version": good}), ("/v1/model/rollback", None)):
            r = client.post(route, json=body, headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", r.text
        assert client.get("/v1/model").json()["gate_refused"] == {
            "version": refused, "created_at": json.loads(
                (pipeline_output / "models" / refused / "manifest.json").read_text())["created_at"],
            "reason": "validation NDCG@10 0.0100 is 0.050 × the serving version's 0.2000"}
        for body, status, code in (({"version": refused}, 409, "version_refused"),
                                   ({"version": "v-none"}, 404, "unknown_version"),
                                   ({"version": "../x"}, 422, "invalid_request"),
                                   ({"version": good, "force": "yes"}, 422, "invalid_request")):
            r = client.post("/v1/model/promote", json=body, headers=admin)
            assert r.status_code == status and r.json()["error"]["code"] == code, r.text
        assert client.get("/v1/model").json()["version"] == original

        r = client.post("/v1/model/promote", json={"version": good}, headers=admin, timeout=180)
        assert r.status_code == 200 and r.json()["version"] == good, r.text
        assert r.json()["moved"]["action"] == "promoted" and r.json()["moved"]["previous"] == original
        assert client.get("/v1/model").json()["version"] == good
        assert client.post("/v1/recommend", json={"user_id": next(iter(artifact.histories)), "k": 3}).json()[
            "model_version"] == good

        r = client.post("/v1/model/rollback", headers=admin, timeout=180)
        assert r.status_code == 200 and r.json()["version"] == original, r.text
        assert r.json()["moved"]["action"] == "rolled_back"
        r = client.post("/v1/model/rollback", headers=admin)
        assert r.status_code == 409 and r.json()["error"]["code"] == "no_previous_version", r.text
    finally:
        latest = pipeline_output / "models" / "LATEST"
        if latest.read_text().strip() != original:
            tmp = latest.with_suffix(".tmp")
            tmp.write_text(original)
            tmp.replace(latest)
    deadline = time.monotonic() + 60
    while client.get("/v1/model").json()["version"] != original:
        assert time.monotonic() < deadline, "the polling replicas did not go back to the original version"
        time.sleep(1)
