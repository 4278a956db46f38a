"""The training path for real: Ray Train DDP workers, checkpoints, evaluation and the artifact."""

from __future__ import annotations

import json

import pytest

from distilrec.artifacts import load_artifact

pytestmark = pytest.mark.integration

COST_KEYS = {"ndcg@10", "hr@10", "params", "macs_per_candidate", "score_ms_p50_1000", "score_ms_p99_1000",
             "score_ms_per_request_batched"}


def test_report_has_the_documented_layout(pipeline_output):
    report = json.loads((pipeline_output / "report.json").read_text())
    assert set(report["dataset"]) >= {"name", "users", "items", "interactions"}
    assert report["dataset"]["users"] == 300
    assert set(report["models"]) >= {"popularity", "ease", "teacher", "student"}
    for name, m in report["models"].items():
        assert COST_KEYS <= set(m), name
        assert 0.0 <= m["ndcg@10"] <= m["hr@10"] <= 1.0, name
    for name in ("teacher", "student"):
        m = report["models"][name]
        assert m["params"] > 0 and m["macs_per_candidate"] > 0 and m["score_ms_p50_1000"] > 0
    paired = report["comparisons"]["student / teacher"]  # the target, with its interval
    assert paired["ratio"] == pytest.approx(
        report["models"]["student"]["ndcg@10"] / report["models"]["teacher"]["ndcg@10"], abs=1e-4)
    assert paired["low"] <= paired["ratio"] <= paired["high"] and paired["users"] == 300


def test_report_says_where_the_time_went(pipeline_output):
    """Each stage's seconds, and each training stage's epochs as the training curves have them, with the
    arithmetic the workers chose from the report's config."""
    from distilrec.config import DistillConfig, TrainConfig
    from training.loop import uses_bf16

    report = json.loads((pipeline_output / "report.json").read_text())
    curves = json.loads((pipeline_output / "training_curves.json").read_text())
    run = report["run"]
    stages = {"data", "text_embeddings", "baselines", "ray_start", "teacher", "student", "scoring_cost", "artifact"}
    assert stages <= set(run["stage_s"])
    assert all(s >= 0 for s in run["stage_s"].values())
    assert sum(run["stage_s"].values()) <= run["wall_s"] + 0.05 * len(run["stage_s"])  # each rounded to 0.1 s
    assert run["resumed"] is False
    assert set(run["epochs"]) == set(curves)
    for name, epochs in run["epochs"].items():
        assert epochs["trained"] == len(curves[name])
        assert epochs["best"] == report["models"][name]["best_epoch"]
        assert epochs["best_val_ndcg@10"] == max(h["val_ndcg@10"] for h in curves[name])
        train = (TrainConfig if name == "teacher" else DistillConfig).model_validate(
            report["config"]["teacher_train" if name == "teacher" else "distill"])
        assert epochs["bf16_epochs"] == (epochs["trained"] if uses_bf16(train) else 0), name


def test_plots_are_written_as_png(pipeline_output):
    for name in ("training_curves.png", "quality_cost.png"):
        data = (pipeline_output / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name


def test_teacher_and_student_beat_popularity(pipeline_output):
    models = json.loads((pipeline_output / "report.json").read_text())["models"]
    pop = models["popularity"]["ndcg@10"]
    assert models["teacher"]["ndcg@10"] > pop
    assert models["student"]["ndcg@10"] > pop
    assert models["student"]["macs_per_candidate"] < models["teacher"]["macs_per_candidate"] / 10


def test_ray_train_checkpointed_every_run(pipeline_output):
    for run in ("teacher", "student"):
        run_id = (pipeline_output / "ray" / "LATEST_RUN").read_text().strip()
        ckpts = sorted(p for p in (pipeline_output / "ray" / run_id / run).glob("checkpoint_*") if p.is_dir())
        assert ckpts, f"no Ray Train checkpoint for {run}"
        assert (ckpts[-1] / "model.safetensors").exists()
        history = json.loads((ckpts[-1] / "history.json").read_text())
        assert [h["epoch"] for h in history] == list(range(len(history)))


def test_artifact_rebuilds_both_models(pipeline_output):
    report = json.loads((pipeline_output / "report.json").read_text())
    art = load_artifact(str(pipeline_output), with_teacher=True)
    assert art.uri == report["artifact"]
    assert len(art.items) == report["dataset"]["items"]
    assert art.student.cfg.n_items == art.teacher.cfg.n_items == len(art.items)
    assert sum(len(h) for h in art.histories.values()) == report["dataset"]["interactions"]


def test_a_gpu_run_on_a_cluster_without_gpus_is_refused_at_once(ray_cluster):
    """Ray Train would wait for ever for GPUs the cluster does not have; the pipeline says so instead."""
    from training.pipeline import NotEnoughGPUs, check_gpus, load_config

    check_gpus(load_config(None, workers=2))  # CPU training: nothing to check
    with pytest.raises(NotEnoughGPUs, match="0 GPUs and 1 Ray Train workers need one each .leave out --use-gpu"):
        check_gpus(load_config(None, use_gpu=True, workers=1))


def test_bench_train_on_gpus_the_cluster_lacks_is_refused_with_a_message(ray_cluster, tmp_path, capsys):
    from distilrec.cli import main

    assert main(["bench", "train", "--use-gpu", "--workers", "1", "--output", str(tmp_path)]) == 2
    assert "distilrec bench train: --use-gpu: the Ray cluster has 0 GPUs" in capsys.readouterr().err


def test_sparse_item_gradients_train_over_two_ddp_workers(ray_cluster, tmp_path):
    """The sampled softmax with the item table's sparse gradients, as a million-item catalogue trains on
    CPU workers: DDP all-reduces the sparse rows over gloo and the run learns."""
    import numpy as np

    from distilrec.baselines import Popularity
    from distilrec.config import TeacherConfig, TrainConfig
    from distilrec.data import Split, load_dataset
    from distilrec.metrics import evaluate_scores
    from training.teacher import train_teacher

    ds = load_dataset("synthetic:users=300,items=60,seed=3")
    split = Split.leave_one_out(ds)
    text_emb = np.random.default_rng(0).standard_normal((ds.n_items, 8)).astype(np.float32)
    tcfg = TeacherConfig(n_items=ds.n_items, text_dim=8, d_model=32, n_heads=2, n_layers=1, max_len=20)
    train = TrainConfig(epochs=6, patience=6, lr=3e-3, batch_size=32, num_workers=2, loss="sampled", negatives=16,
                        item_grads="sparse")
    run = train_teacher(split, text_emb, tcfg, train, str(tmp_path / "ray"), name="teacher_sparse")
    losses = [h["loss"] for h in run.history]
    assert len(losses) == 6 and all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert not run.model.items.id_emb.sparse  # the checkpoint rebuilds a plain serving model
    pop = evaluate_scores(Popularity.fit(split.train, ds.n_items).score, split.train, split.val_target)["ndcg@10"]
    assert run.best["val_ndcg@10"] > pop
