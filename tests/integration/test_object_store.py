"""The pipeline and the serving side on S3, as the chart's ``artifacts.type: objectStore`` runs them:
``distilrec pipeline --output s3://…`` (Ray Train's checkpoints, the artifact, the report and the plots),
``--resume`` from the checkpoints there, and the replicas' loading, text encoder and model polling from
the same URI. The endpoint is moto's S3 server (``s3_endpoint`` in ``tests/cluster_fixtures.py``),
reached over HTTP by the driver and by Ray Train's worker processes alike. ``--resume`` on a local folder
runs the same code (fsspec and Ray Train's pyarrow filesystem), so this is also the resume test."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.integration

SPEC = "synthetic:users=80,items=30,seed=7"


@pytest.fixture
def s3_out(s3_endpoint, ray_cluster, tmp_path, monkeypatch):
    if isinstance(s3_endpoint, str):
        pytest.skip(s3_endpoint)
    from cluster_fixtures import S3_BUCKET

    monkeypatch.setenv("DISTILREC_CACHE_DIR", str(tmp_path / "cache"))  # the local work folder
    return f"s3://{S3_BUCKET}/{tmp_path.name}/out"


def _cfg(epochs: int):
    from distilrec.config import DistillConfig, PipelineConfig, TrainConfig

    return PipelineConfig(encoder="tiny", teacher_train=TrainConfig(epochs=epochs, patience=10),
                          distill=DistillConfig(epochs=epochs, patience=10), student_without_teacher=False)


def test_the_pipeline_writes_resumes_and_serves_from_s3(s3_out, tmp_path):
    import fsspec

    from distilrec.artifacts import load_artifact
    from distilrec.serving import ModelScorer, ScoreRequest, ServingBundle
    from distilrec.stores import open_event_store
    from services.state import ServingState
    from services.text_encoder import load_text_encoder
    from training.pipeline import run_pipeline

    fs, root = fsspec.core.url_to_fs(s3_out)
    report = run_pipeline(SPEC, s3_out, _cfg(2))
    assert json.loads(fs.cat_file(f"{root}/report.json")) == json.loads(json.dumps(report))
    assert set(json.loads(fs.cat_file(f"{root}/training_curves.json"))) == {"teacher", "student"}
    for png in ("training_curves.png", "quality_cost.png"):
        assert fs.cat_file(f"{root}/{png}")[:8] == b"\x89PNG\r\n\x1a\n", png
    assert report["artifact"].startswith(s3_out + "/models/")

    # Ray Train kept its checkpoints in the bucket, under the run that LATEST_RUN names.
    run_id = fs.cat_file(f"{root}/ray/LATEST_RUN").decode().strip()

    def teacher_history() -> list[dict]:  # s3fs caches listings: this one must be read afresh
        ckpts = sorted(e["name"] for e in fs.ls(f"{root}/ray/{run_id}/teacher", detail=True, refresh=True)
                       if e["type"] == "directory" and e["name"].rsplit("/", 1)[1].startswith("checkpoint_"))
        assert ckpts and fs.exists(f"{ckpts[-1]}/model.safetensors")
        return json.loads(fs.cat_file(f"{ckpts[-1]}/history.json"))

    first = teacher_history()
    assert [h["epoch"] for h in first] == [0, 1]

    # A replica of each kind builds its state from the URI alone: the ingress (catalogue, histories and the
    # in-process student), the Scorer deployment's model, and the TextEncoder's encoder copied from the bucket.
    with open_event_store(f"sqlite://{tmp_path / 'events.db'}") as store:
        ingress = ServingState(s3_out, lambda art: ServingBundle.build(art, "student", "exact"), store, poll_s=0)
        scorer = ServingState(s3_out, lambda art: ModelScorer.build(art, "student", "exact"), store, poll_s=0,
                              with_histories=False)
        version = report["artifact"].rsplit("/", 1)[1]
        assert ingress.bundle.version == scorer.bundle.version == version
        assert ingress.bundle.encoder_uri.startswith(s3_out)
        emb = load_text_encoder(ingress.bundle.encoder_uri).encode(["a new film about the sea"])
        assert emb.shape == (1, ingress.bundle.text_dim)
        assert len(scorer.bundle.item_ids) == report["dataset"]["items"] == len(ingress.bundle.catalog)
        watched = next(iter(ingress.bundle.histories.values()))
        [result] = ingress.bundle.scorer.score([ScoreRequest(tuple(watched), None, 5)])
        assert len(result.item_ids) == 5 and result.model_version == version

        # --resume continues the same run from the bucket's checkpoints and writes a new model version,
        # which a polling replica finds and swaps in.
        resumed = run_pipeline(SPEC, s3_out, _cfg(3), resume=True)
        assert fs.cat_file(f"{root}/ray/LATEST_RUN").decode().strip() == run_id
        history = teacher_history()
        assert [h["epoch"] for h in history] == [0, 1, 2]
        assert history[:2] == first  # the first two epochs were not trained again
        assert resumed["artifact"] != report["artifact"] and resumed["run"]["resumed"] is True
        assert scorer.check() is True and ingress.check() is True
        assert scorer.bundle.version == ingress.bundle.version == resumed["artifact"].rsplit("/", 1)[1]
        for state in (ingress, scorer):  # their gauge threads stop: the load tests share this process
            state.close()

    art = load_artifact(s3_out, with_teacher=True)
    assert art.uri == resumed["artifact"] and art.teacher is not None
    assert len(art.items) == resumed["dataset"]["items"]


def test_an_output_bucket_that_does_not_exist_is_refused_before_any_work(s3_endpoint, capsys):
    """``--output`` is tried with a write first: a missing bucket (or missing credentials) is a one-line
    error naming the value within seconds, not a stack trace after the data and the baselines."""
    if isinstance(s3_endpoint, str):
        pytest.skip(s3_endpoint)
    from distilrec.cli import main

    assert main(["pipeline", "--dataset", "synthetic:users=80,items=30", "--output", "s3://no-such-bucket/out"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("distilrec pipeline: --output 's3://no-such-bucket/out': cannot write there (")
    assert "NoSuchBucket" in err or "does not exist" in err, err
