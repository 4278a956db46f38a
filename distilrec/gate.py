"""The offline gate: whether a newly trained version is published (``OUT/models/LATEST`` moved to it).

A new version is published when

1. its scores are finite: its student, and its teacher when there is one, score the first
   :data:`FINITE_USERS` validation users against the whole catalogue without a NaN or an infinity; and
2. its student's validation NDCG@10 is at least ``min_ratio`` × the serving version's, both measured
   now on the same validation users of this run's split (:meth:`Split.val_sample`): the serving
   version's student is loaded from ``OUT`` and ranks this run's validation targets in its own
   catalogue. Its stored figures came from other data, so they are not compared.

Items the serving version does not know are left out of its histories, and a user whose validation
target it does not know counts as a miss for it: that is what serving it would give this run's users,
so a retrain that adds items is not held back by them. Without a published version the gate passes
("first version"); ``min_ratio == 0`` keeps the finite check alone. A refused version is still written,
with the verdict in its manifest (``gate``), and ``LATEST`` stays; ``force`` publishes it anyway.

    uri, gate = write_gated("out", items=..., histories=..., student=s, teacher=t, dataset=..., metrics=...,
                            encoder=None, split=split, val_users=None, min_ratio=0.95)
    gate["published"], gate["reason"]
"""

from __future__ import annotations

import posixpath
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from distilrec.artifacts import ArtifactError, ItemTable, _fs, _proto, load_artifact, read_latest, write_artifact
from distilrec.data import Split
from distilrec.evaluate import model_ranks
from distilrec.metrics import evaluate_ranks, model_score_fn

FINITE_USERS = 256  # validation users whose full score rows must be finite
_SCORES_PER_CHUNK = 1 << 24  # bounds the finite check's memory (64 MiB of float32 scores) on large catalogues


def nonfinite(models: dict[str, torch.nn.Module | None], split: Split, users: int = FINITE_USERS) -> str | None:
    """The reason when a model's scores of the first ``users`` users of ``split`` (their validation
    histories, the whole catalogue) hold a NaN or an infinity; None when all are finite. ``None`` models
    are skipped."""
    n = min(users, len(split.train))
    times = split.history_times("val")
    for name, model in models.items():
        if model is None:
            continue
        score = model_score_fn(model)
        step = max(1, min(n, _SCORES_PER_CHUNK // max(1, model.cfg.n_items)))
        bad = 0
        for start in range(0, n, step):
            hist = split.train[start:start + step]
            scores = score(hist, None if times is None else times[start:start + step])
            bad += int((~np.isfinite(scores).all(axis=1)).sum())
        if bad:
            return f"non-finite scores: the {name} scored {bad} of {n} validation users with NaN or infinity"
    return None


def in_catalogue(split: Split, item_ids: Sequence[str], index: dict[str, int]) -> tuple[Split, np.ndarray]:
    """``split`` in another catalogue (``index``: item id → that catalogue's row): ``(the split of the
    users whose validation target that catalogue knows, with their histories' unknown items left out
    (their timestamps too), those users' positions in split)``. Its test targets are not mapped (0)."""
    rows = np.array([index.get(i, -1) for i in item_ids], dtype=np.int64)
    known = np.flatnonzero(rows[split.val_target] >= 0)
    train, times = [], []
    for u in known:
        mapped = rows[split.train[u]]
        keep = mapped >= 0
        train.append(mapped[keep])
        if split.times:
            t = split.times[u]
            times.append(np.concatenate([t[:-2][keep], t[-2:]]))  # history_times("val") drops the last two
    return Split(train, rows[split.val_target[known]], np.zeros(len(known), dtype=np.int64), times), known


def serving_ndcg(model: torch.nn.Module, index: dict[str, int], item_ids: Sequence[str], split: Split) -> float:
    """Validation NDCG@10 over every user of ``split`` of a model whose catalogue is ``index`` (item id →
    row); a user whose target it does not know counts as a miss."""
    mapped, known = in_catalogue(split, item_ids, index)
    ranks = np.full(len(split.train), np.iinfo(np.int64).max // 2, dtype=np.int64)  # a miss at any k
    if len(known):
        ranks[known] = model_ranks(model, mapped, "val")
    return evaluate_ranks(ranks)["ndcg@10"]


def offline_gate(out_uri: str, *, student: torch.nn.Module, teacher: torch.nn.Module | None,
                 item_ids: Sequence[str], split: Split, val_users: np.ndarray | None, min_ratio: float,
                 force: bool = False) -> dict[str, Any]:
    """The verdict on a new version (``student``, ``teacher``, catalogue ``item_ids`` = the split's item
    rows) against the version published under ``out_uri`` (see the module docstring):

    ``{"published", "passed", "forced", "reason", "ndcg@10", "serving_version", "serving_ndcg@10",
    "ratio", "min_ratio", "users"}``: ``passed`` is the gate's own answer, ``published`` also holds with
    ``force``, ``forced`` says that ``force`` published a version the gate refused; NDCG@10 figures are
    validation figures on the same ``users``, ``ratio`` is None when the serving version scores 0."""
    val = split.subset(val_users)
    verdict: dict[str, Any] = {"published": False, "passed": False, "forced": False, "reason": "",
                               "ndcg@10": None, "serving_version": None, "serving_ndcg@10": None, "ratio": None,
                               "min_ratio": min_ratio, "users": len(val.train)}

    def decide(passed: bool, reason: str) -> dict[str, Any]:
        verdict.update(passed=passed, published=passed or force, forced=force and not passed, reason=reason)
        return verdict

    fs, root = _fs(out_uri)
    models = posixpath.join(root, "models")
    version = verdict["serving_version"] = read_latest(fs, models)
    bad = nonfinite({"student": student, "teacher": teacher}, val)
    if bad:
        return decide(False, bad)
    ndcg = evaluate_ranks(model_ranks(student, val, "val"))["ndcg@10"]
    verdict["ndcg@10"] = round(ndcg, 6)
    if version is None:
        return decide(True, "first version")
    if min_ratio <= 0:
        return decide(True, "NDCG@10 not compared (gate_min_ratio 0); scores finite")
    try:
        serving = load_artifact(f"{_proto(out_uri)}{posixpath.join(models, version)}", with_histories=False)
    except ArtifactError as e:  # serving cannot load it either: nothing to hold the new version to
        return decide(True, f"the serving version {version} cannot be loaded to compare with ({e})")
    old = serving_ndcg(serving.student, serving.items.index, item_ids, val)
    ratio = ndcg / old if old > 0 else None
    verdict.update({"serving_ndcg@10": round(old, 6), "ratio": None if ratio is None else round(ratio, 4)})
    passed = ndcg >= min_ratio * old
    share = "-" if ratio is None else f"{ratio:.3f}"
    return decide(passed, f"validation NDCG@10 {ndcg:.4f} is {share} × the serving version {version}'s {old:.4f} "
                          f"on the same {len(val.train):,} users, {'not below' if passed else 'below'} the "
                          f"minimum {min_ratio:g}")


def write_gated(out_uri: str, *, items: ItemTable, histories: pd.DataFrame, student: torch.nn.Module,
                teacher: torch.nn.Module | None, dataset: dict, metrics: dict, encoder: str | None, split: Split,
                val_users: np.ndarray | None, min_ratio: float, force: bool = False,
                version: str | None = None) -> tuple[str, dict[str, Any]]:
    """Judge the new version (:func:`offline_gate`), write it with the verdict in its manifest, and
    move ``LATEST`` to it when it is published; returns ``(its URI, the verdict)``."""
    verdict = offline_gate(out_uri, student=student, teacher=teacher, item_ids=items.item_ids, split=split,
                           val_users=val_users, min_ratio=min_ratio, force=force)
    uri = write_artifact(out_uri, items=items, histories=histories, student=student, teacher=teacher,
                         dataset=dataset, metrics=metrics, encoder=encoder, version=version, gate=verdict,
                         publish=verdict["published"])
    return uri, verdict


def verdict_line(verdict: dict[str, Any]) -> str:
    """One line for the console and the logs: ``published: first version``, ``refused (LATEST stays at
    v1): validation NDCG@10 …``, ``published with --force, the gate refused it: …``."""
    if verdict["forced"]:
        return f"published with --force, the gate refused it: {verdict['reason']}"
    if verdict["published"]:
        return f"published: {verdict['reason']}"
    stays = f" (LATEST stays at {verdict['serving_version']})" if verdict["serving_version"] else ""
    return f"refused{stays}: {verdict['reason']}; distilrec pipeline --force or distilrec model promote --force publishes it"
