"""Distillation with Ray Train: the student learns the teacher's ranking and the true next item.

Used by ``training/pipeline.py``; launch the whole path with::

    distilrec pipeline --dataset synthetic --output /tmp/out

Every worker rebuilds the frozen teacher from its config and safetensors weights (shipped in the
train loop config), and computes the teacher's soft targets on the fly: over the full catalogue, or
over the student's sampled candidates when the run trains with the sampled softmax.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from distilrec.artifacts import model_from_bytes, model_to_bytes
from distilrec.config import DistillConfig, StudentConfig, TrainConfig
from distilrec.data import Split
from distilrec.losses import StudentTrain
from distilrec.models import Student, Teacher
from training.loop import TrainOutput, fit
from training.teacher import negative_sampler, validation_subset


def build_student(config: dict[str, Any]) -> Student:
    emb = config["text_emb"]
    return Student(StudentConfig.model_validate(config["model"]),
                   torch.from_numpy(emb.copy()) if emb is not None else None)


def student_loss(model: Student, config: dict[str, Any]) -> StudentTrain:
    teacher = None
    if config.get("teacher") is not None:
        teacher = model_from_bytes(*config["teacher"], config["text_emb"])
        teacher = teacher.to(next(model.parameters()).device)
        if config.get("init_from_teacher") and teacher.cfg.d_model == model.cfg.d_model:
            # The student starts in the teacher's item space (a resumed run loads its checkpoint over it).
            model.items.load_state_dict(teacher.items.state_dict())
    return StudentTrain(model, teacher, temperature=config["temperature"], alpha=config["alpha"],
                        mask_history=TrainConfig.model_validate(config["train"]).mask_history,
                        sampler=negative_sampler(model, config))


def distill(split: Split, text_emb: np.ndarray | None, teacher: Teacher | None, cfg: StudentConfig,
            train: DistillConfig, storage_path: str, name: str = "student",
            val_users: np.ndarray | None = None) -> TrainOutput:
    """Train the student; with ``teacher=None`` the same student learns from the true next item alone.
    Validation reads the users ``val_users`` (None: every user)."""
    return fit(
        name, build_student, student_loss, TrainConfig.model_validate(
            train.model_dump(exclude={"temperature", "alpha", "init_from_teacher"})),
        split, storage_path, text_emb,
        extra={"model": cfg.model_dump(), "temperature": train.temperature, "alpha": train.alpha,
               "init_from_teacher": train.init_from_teacher,
               "teacher": model_to_bytes(teacher) if teacher is not None else None,
               # The batch carries the teacher's whole reach, so that it scores the student's positions
               # with all the history it was trained on.
               "context_len": max(cfg.max_len, teacher.cfg.max_len if teacher is not None else 0),
               **validation_subset(split, val_users)},
    )
