"""Teacher training with Ray Train (DDP over ``num_workers`` workers, CPU or GPU).

The full pipeline (teacher → distillation → evaluation → artifact) is ``training/pipeline.py``; this
module holds the teacher stage and is used by it. Launch the whole path as a RayJob entrypoint with::

    distilrec pipeline --dataset synthetic --output /tmp/out
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from distilrec.config import TeacherConfig, TrainConfig
from distilrec.data import Split
from distilrec.losses import NegativeSampler, TeacherTrain, item_counts
from distilrec.models import Teacher
from training.loop import TrainOutput, fit


def build_teacher(config: dict[str, Any]) -> Teacher:
    emb = config["text_emb"]
    return Teacher(TeacherConfig.model_validate(config["model"]),
                   torch.from_numpy(emb.copy()) if emb is not None else None)


def negative_sampler(model: Teacher, config: dict[str, Any]) -> NegativeSampler | None:
    """The sampled softmax's sampler for ``model``'s catalogue when the run's ``TrainConfig`` asks for one
    (:meth:`TrainConfig.sampled`), over the training sequences' item counts; else None (full softmax)."""
    tc = TrainConfig.model_validate(config["train"])
    n_items = model.cfg.n_items
    if not tc.sampled(n_items):
        return None
    return NegativeSampler(item_counts(config["train_seqs"], n_items), tc.negatives, tc.sampler,
                           in_batch=tc.in_batch_negatives)


def teacher_loss(model: Teacher, config: dict[str, Any]) -> TeacherTrain:
    return TeacherTrain(model, mask_history=TrainConfig.model_validate(config["train"]).mask_history,
                        sampler=negative_sampler(model, config))


def validation_subset(split: Split, users: np.ndarray | None) -> dict[str, Any]:
    """The train loop's validation inputs (``val_histories``, ``val_targets``, ``val_times``) for the
    users ``users`` (:meth:`Split.val_sample`); ``{}`` for every user, the loop's default."""
    if users is None:
        return {}
    times = split.history_times("val")
    return {"val_histories": [split.train[u] for u in users], "val_targets": split.val_target[users],
            "val_times": None if times is None else [times[u] for u in users]}


def train_teacher(split: Split, text_emb: np.ndarray | None, cfg: TeacherConfig, train: TrainConfig,
                  storage_path: str, name: str = "teacher", val_users: np.ndarray | None = None) -> TrainOutput:
    """Train the teacher on ``split.train``; early stopping and checkpoint choice on validation (of the
    users ``val_users``; None: every user)."""
    return fit(name, build_teacher, teacher_loss, train, split, storage_path, text_emb,
               extra={"model": cfg.model_dump(), **validation_subset(split, val_users)})
