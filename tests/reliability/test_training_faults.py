"""Training faults: a Ray Train worker process is killed (SIGKILL) mid-run; the run goes on from its
last checkpoint and finishes with the quality of an undisturbed run.

The run is the session pipeline's teacher stage again (same dataset, split, text embeddings, config
and seed: ``tests/cluster_fixtures.py``), with 2 DDP workers, a checkpoint every epoch and
``FailureConfig(max_failures=2)`` (``training/loop.py``). Once Ray Train has registered a checkpoint, one
``RayTrainWorker`` actor's process is killed while the run goes on. Then:

* the run finishes and returns a model;
* it resumed, not restarted: the epochs recorded in the checkpoint read at the kill are the first
  epochs of the final history, the same to the last digit of their wall-clock timings (a run from
  scratch would have timed them again), and the history goes on past them;
* its test NDCG@10 is within noise of the undisturbed teacher the session pipeline trained (the
  artifact's): not lower by more than 3 standard errors of the difference of the two means over the
  test users (each model's per-user NDCG@10 varies; this is what two equal models can differ by on
  this test set), and far above Popularity.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cluster_fixtures import DATASET, pipeline_config
from reliability_helpers import live_actors, record

pytestmark = pytest.mark.integration


def _per_user_ndcg(model, split) -> np.ndarray:
    from distilrec.metrics import model_score_fn, rank_of_targets

    hist, targets, times = split.histories("test"), split.targets("test"), split.history_times("test")
    fn = model_score_fn(model)
    ranks = []
    for s in range(0, len(hist), 256):
        h = list(hist[s:s + 256])
        scores = fn(h) if times is None else fn(h, list(times[s:s + 256]))
        ranks.append(rank_of_targets(scores, h, targets[s:s + 256]))
    r = np.concatenate(ranks)
    return np.where(r < 10, 1.0 / np.log2(r + 2.0), 0.0)


def _committed_history(run_dir: Path) -> list[dict] | None:
    """The history in the latest checkpoint Ray Train has registered (its controller collects reports
    every 2 s and records them in ``checkpoint_manager_snapshot.json``; a checkpoint folder on disk that
    is not registered yet is not what a restarted run resumes from)."""
    try:
        snap = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
        latest = snap.get("latest_checkpoint_result")
        if not latest:
            return None
        return json.loads((run_dir / latest["checkpoint_dir_name"] / "history.json").read_text())
    except (OSError, ValueError, KeyError):  # not there yet, or being written
        return None


def test_a_killed_train_worker_resumes_from_its_checkpoint_with_the_same_quality(
        ray_cluster, pipeline_output, tmp_path):
    from distilrec.config import TeacherConfig
    from distilrec.data import Split, load_dataset
    from training.pipeline import item_embeddings
    from training.teacher import train_teacher

    cfg = pipeline_config()
    ds = load_dataset(DATASET)
    split = Split.leave_one_out(ds)
    text_emb, _ = item_embeddings(ds, cfg.encoder, Path(pipeline_output))  # the pipeline's cached embeddings
    tcfg = TeacherConfig(n_items=ds.n_items, text_dim=int(text_emb.shape[1]), **cfg.teacher)
    storage = tmp_path / "ray"
    out: dict = {}

    def train():
        try:
            out["result"] = train_teacher(split, text_emb, tcfg, cfg.teacher_train, str(storage), name="teacher_fault")
        except BaseException as e:  # noqa: BLE001 - re-raised below
            out["error"] = e

    t0 = time.monotonic()
    th = threading.Thread(target=train, daemon=True)
    th.start()
    seen = None
    while th.is_alive() and time.monotonic() - t0 < 300:
        seen = _committed_history(storage / "teacher_fault")
        if seen:
            break
        time.sleep(0.1)
    assert seen, f"no checkpoint before the run ended: {out.get('error')!r}"
    workers = [a for a in live_actors() if (a.class_name or "").endswith("RayTrainWorker")]
    assert workers, "no live Ray Train worker to kill"
    victim = workers[-1]
    assert th.is_alive(), "the run ended before a worker could be killed"
    os.kill(victim.pid, signal.SIGKILL)
    t_kill = time.monotonic() - t0
    th.join(timeout=600)
    assert "error" not in out, f"the run failed after a worker was killed: {out.get('error')!r}"
    result = out["result"]
    history = result.history
    epochs = [h["epoch"] for h in history]
    assert history[:len(seen)] == seen, "the run did not resume from the checkpoint taken before the kill"
    assert len(history) > len(seen), "no epoch after the kill"
    assert epochs == list(range(len(epochs)))

    disturbed = _per_user_ndcg(result.model, split)
    from distilrec.artifacts import load_artifact

    reference = _per_user_ndcg(load_artifact(str(pipeline_output), with_teacher=True).teacher, split)
    se = float(np.sqrt(disturbed.var(ddof=1) / len(disturbed) + reference.var(ddof=1) / len(reference)))
    report = json.loads((pipeline_output / "report.json").read_text())
    assert reference.mean() == pytest.approx(report["models"]["teacher"]["ndcg@10"], abs=1e-6)  # same measure
    popularity = report["models"]["popularity"]["ndcg@10"]
    record("training_faults", killed_after_epochs=len(seen), kill_at_s=t_kill, total_s=time.monotonic() - t0,
           epochs=len(history), ndcg_disturbed=float(disturbed.mean()), ndcg_undisturbed=float(reference.mean()),
           se_of_difference=se, popularity=popularity)
    assert disturbed.mean() >= reference.mean() - 3 * se, (disturbed.mean(), reference.mean(), se)
    assert disturbed.mean() > 2 * popularity
