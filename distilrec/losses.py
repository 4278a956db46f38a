"""Training wrappers that hold the losses, so the bare models in :mod:`distilrec.models` serve unchanged.

Both train on every position of a user's sequence at once: the input is the sequence without its
last item, the target the sequence shifted by one (next-item prediction), with a full softmax over
the catalogue (no sampled negatives). Long histories are cropped to random windows
(:func:`crop_window`), and each input position carries its timestamp for the time-gap features.

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


def next_item_batch(seqs: Sequence[np.ndarray], pad: int, max_len: int,
                    times: Sequence[np.ndarray] | None = None) -> tuple[torch.Tensor, ...]:
    """Sequences → left-padded ``(inputs, targets)``, both ``(B, L)``; padded targets are ``IGNORE``.

    With ``times`` (each aligned with its sequence) a third ``(B, L)`` tensor holds the inputs' unix
    seconds (0 at padding)."""
    inputs = pad_histories([s[:-1] for s in seqs], pad, max_len)
    targets = pad_histories([s[1:] for s in seqs], pad, max_len)
    targets[inputs == pad] = IGNORE
    if times is None:
        return inputs, targets
    return inputs, targets, pad_histories([t[:-1] for t in times], 0, max_len)


def crop_window(seq: np.ndarray, times: np.ndarray, window: int, rng: np.random.Generator,
                context: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Training augmentation for histories longer than a model reads. A model trains on the last
    ``window`` positions of a batch; a longer history is cut to end, half of the time, at its most
    recent item and otherwise at a random earlier point, so that every part of it is trained on over
    the epochs (the most recent part most often). The cut keeps up to ``context`` (default
    ``window``) items of history before each trained position.

    >>> rng = np.random.default_rng(0)
    >>> crop_window(np.arange(5), np.arange(5), window=8, rng=rng)[0].tolist()  # short: unchanged
    [0, 1, 2, 3, 4]
    >>> len(crop_window(np.arange(50), np.arange(50), window=8, rng=rng)[0])
    9
    >>> len(crop_window(np.arange(500), np.arange(500), window=8, rng=rng, context=100)[0])
    101
    """
    context = max(window, context or window)
    if len(seq) <= window + 1:
        return seq, times
    end = len(seq) if rng.random() < 0.5 else int(rng.integers(window + 1, len(seq) + 1))
    start = max(0, end - context - 1)
    return seq[start:end], times[start:end]


class TeacherTrain(nn.Module):
    """``forward(inputs (B, L), targets (B, L), times (B, L)?) -> scalar`` cross-entropy over the full
    catalogue at every position."""

    def __init__(self, teacher: Teacher):
        super().__init__()
        self.model = teacher

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor, times: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.model.encode(inputs, times)
        targets = targets[:, -hidden.shape[1]:]
        keep = targets != IGNORE
        return F.cross_entropy(self.model.logits(hidden[keep]), targets[keep])


class StudentTrain(nn.Module):
    """Distillation loss: ``(1-α)·CE(true next) + α·T²·KL(teacher_T ‖ student_T)`` at every position.

    The student reads at most its own ``max_len`` most recent items, so it trains on the last
    ``student.cfg.max_len`` positions of a batch; the teacher scores the same positions with its
    whole (longer) context. With ``teacher=None`` (or α = 0) this trains the same student without a
    teacher.
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

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor, times: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.model.encode(inputs, times)  # (B, L', D), L' = min(L, student max_len)
        length = hidden.shape[1]
        keep = targets[:, -length:] != IGNORE
        s_logits = self.model.logits(hidden[keep])
        loss = F.cross_entropy(s_logits, targets[:, -length:][keep])
        if self.alpha > 0:
            with torch.no_grad():
                t_hidden = self.teacher.encode(inputs, times)[:, -length:]
                t_logits = self.teacher.logits(t_hidden[keep])
            kl = F.kl_div(
                F.log_softmax(s_logits / self.t, -1), F.log_softmax(t_logits / self.t, -1),
                log_target=True, reduction="batchmean",
            )
            loss = (1 - self.alpha) * loss + self.alpha * self.t ** 2 * kl
        return loss
