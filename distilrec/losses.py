"""Training wrappers that hold the losses, so the bare models in :mod:`distilrec.models` serve unchanged.

Both train on every position of a user's sequence at once: the input is the sequence without its
last item, the target the sequence shifted by one (next-item prediction), with a full softmax over
the catalogue (no sampled negatives).

>>> import numpy as np
>>> inp, tgt = next_item_batch([np.array([3, 4, 5])], pad=9, max_len=4)
>>> inp.tolist(), tgt.tolist()
([[3, 4]], [[4, 5]])
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distilrec.models import Student, Teacher, pad_histories

IGNORE = -100


def next_item_batch(seqs: Sequence[np.ndarray], pad: int, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences → left-padded ``(inputs, targets)``, both ``(B, L)``; padded targets are ``IGNORE``."""
    inputs = pad_histories([s[:-1] for s in seqs], pad, max_len)
    targets = pad_histories([s[1:] for s in seqs], pad, max_len)
    targets[inputs == pad] = IGNORE
    return inputs, targets


class TeacherTrain(nn.Module):
    """``forward(inputs (B, L), targets (B, L)) -> scalar`` cross-entropy over the full catalogue."""

    def __init__(self, teacher: Teacher):
        super().__init__()
        self.model = teacher

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        hidden = self.model.encode(inputs)
        keep = targets != IGNORE
        return F.cross_entropy(self.model.logits(hidden[keep]), targets[keep])


class StudentTrain(nn.Module):
    """Distillation loss: ``(1-α)·CE(true next) + α·T²·KL(teacher_T ‖ student_T)`` at every position.

    With ``teacher=None`` (or α = 0) this trains the same student without a teacher.
    """

    def __init__(self, student: Student, teacher: Teacher | None, temperature: float = 2.0, alpha: float = 0.5):
        super().__init__()
        self.model = student
        self.teacher = teacher
        if teacher is not None:
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
        self.t = temperature
        self.alpha = alpha if teacher is not None else 0.0

    def train(self, mode: bool = True) -> "StudentTrain":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher's soft targets never see dropout
        return self

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        keep = targets != IGNORE
        s_logits = self.model.logits(self.model.prefix_user_vectors(inputs)[keep])
        loss = F.cross_entropy(s_logits, targets[keep])
        if self.alpha > 0:
            with torch.no_grad():
                t_logits = self.teacher.logits(self.teacher.encode(inputs)[keep])
            kl = F.kl_div(
                F.log_softmax(s_logits / self.t, -1), F.log_softmax(t_logits / self.t, -1),
                log_target=True, reduction="batchmean",
            )
            loss = (1 - self.alpha) * loss + self.alpha * self.t ** 2 * kl
        return loss
