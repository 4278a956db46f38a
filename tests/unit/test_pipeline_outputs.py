"""Where the pipeline writes: a local folder or any fsspec URI (``s3://…``; ``memory://`` here)."""

from __future__ import annotations

import fsspec

from training.pipeline import output_locations, training_storage


def test_local_output_is_made_absolute_and_is_its_own_work_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out, work = output_locations("runs/out")
    assert out == str(tmp_path / "runs" / "out") and work == tmp_path / "runs" / "out" and work.is_dir()


def test_uri_output_stays_a_uri_with_a_local_work_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILREC_CACHE_DIR", str(tmp_path / "cache"))
    out, work = output_locations("memory://bucket/models/")
    assert out == "memory://bucket/models"
    assert work.is_dir() and tmp_path / "cache" in work.parents
    assert output_locations("memory://bucket/models")[1] == work  # the same URI, the same cache


def test_training_storage_on_a_uri_resumes_the_latest_run():
    out = "memory://pipeline-test/out"
    first = training_storage(out, resume=False)
    assert first.startswith(f"{out}/ray/run-")
    assert fsspec.open(f"{out}/ray/LATEST_RUN", "rb").open().read().decode() == first.rsplit("/", 1)[1]
    assert training_storage(out, resume=True) == first
