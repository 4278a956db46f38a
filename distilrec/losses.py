"""Training wrappers that hold the losses, so the bare models in :mod:`distilrec.models` serve unchanged.

Both train on every position of a user's sequence at once: the input is the sequence without its
last item, the target the sequence shifted by one (next-item prediction), with a full softmax over
the catalogue (no sampled negatives). Long histories are cropped to random windows
(:func:`crop_window`), and each input position carries its timestamp for the time-gap features.
By default the items already in a position's history are left out of its softmax
(:func:`history_index`), as they are left out of the ranking at evaluation and serving.

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
# Logit of an item left out of a softmax: finite, so that a KL term over two masked distributions
# is 0 · (finite) = 0 there rather than 0 · (-inf + inf) = nan.
_LEFT_OUT = -1e9


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


def history_index(inputs: torch.Tensor, targets: torch.Tensor, pad: int) -> torch.Tensor:
    """Where the history lies in a batch's logits: flat indices into ``(N, pad)``, the logits of the
    positions that ``targets`` keeps, in ``hidden[targets != IGNORE]`` order (``targets`` covers the
    last ``targets.shape[1]`` positions of ``inputs``; ``inputs`` is left-padded with ``pad``, which is
    the catalogue's size). Each row lists the items at or before its position, less its own target,
    so a dataset where an item recurs keeps a finite loss.

    >>> inputs, targets = torch.tensor([[9, 3, 0]]), torch.tensor([[IGNORE, 0, 5]])
    >>> [(int(i) // 9, int(i) % 9) for i in history_index(inputs, targets, pad=9)]  # (row, item)
    [(0, 3), (1, 3), (1, 0)]
    """
    b, L = inputs.shape
    first = L - targets.shape[1]  # the first position that targets covers
    pos, upto = torch.tril_indices(L, L, device=inputs.device)  # each position, each one at or before it
    pos, upto = pos[pos >= first] - first, upto[pos >= first]
    keep = targets != IGNORE
    row = torch.full(keep.shape, -1, dtype=torch.long, device=inputs.device)
    row[keep] = torch.arange(int(keep.sum()), device=inputs.device)
    rows, items = row[:, pos], inputs[:, upto]  # (b, pairs)
    ok = (rows >= 0) & (items != pad) & (items != targets[:, pos])
    return (rows * pad + items)[ok]


def _leave_out(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``logits (N, n_items)`` with the entries at the flat ``index`` left out of their softmax, in place.

    The fill is kept out of autograd on purpose. A left-out entry's gradient through a softmax (the
    cross-entropy's, or the KL term's) is its probability, exp(-1e9 - logsumexp) = 0, so the gradient
    is exactly that of the masked loss, without the two ``(N, n_items)`` copies that a recorded fill
    makes (forward and backward). The logits come straight from a matrix product, which does not keep
    its output for the backward pass (autograd would raise if it did)."""
    with torch.no_grad():
        logits.view(-1)[index] = _LEFT_OUT
    return logits


class TeacherTrain(nn.Module):
    """``forward(inputs (B, L), targets (B, L), times (B, L)?) -> scalar`` cross-entropy over the full
    catalogue at every position; with ``mask_history`` (the default) over the items not yet in the
    position's history."""

    def __init__(self, teacher: Teacher, mask_history: bool = True):
        super().__init__()
        self.model = teacher
        self.mask_history = mask_history

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor, times: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.model.encode(inputs, times)
        targets = targets[:, -hidden.shape[1]:]
        keep = targets != IGNORE
        logits = self.model.logits(hidden[keep])
        if self.mask_history:
            logits = _leave_out(logits, history_index(inputs, targets, self.model.cfg.n_items))
        return F.cross_entropy(logits, targets[keep])


class StudentTrain(nn.Module):
    """Distillation loss: ``(1-α)·CE(true next) + α·T²·KL(teacher_T ‖ student_T)`` at every position.

    The student reads at most its own ``max_len`` most recent items, so it trains on the last
    ``student.cfg.max_len`` positions of a batch; the teacher scores the same positions with its
    whole (longer) context. With ``teacher=None`` (or α = 0) this trains the same student without a
    teacher. With ``mask_history`` (the default) both softmaxes leave out the items already in the
    position's history, the teacher's reach of it included.
    """

    def __init__(self, student: Student, teacher: Teacher | None, temperature: float = 2.0, alpha: float = 0.9,
                 mask_history: bool = True):
        super().__init__()
        self.model = student
        self.mask_history = mask_history
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
        targets = targets[:, -length:]
        keep = targets != IGNORE
        s_logits = self.model.logits(hidden[keep])
        seen = history_index(inputs, targets, self.model.cfg.n_items) if self.mask_history else None
        if seen is not None:
            s_logits = _leave_out(s_logits, seen)
        loss = F.cross_entropy(s_logits, targets[keep])
        if self.alpha > 0:
            with torch.no_grad():
                t_hidden = self.teacher.encode(inputs, times)[:, -length:]
                t_logits = self.teacher.logits(t_hidden[keep])
                if seen is not None:
                    t_logits = _leave_out(t_logits, seen)
            kl = F.kl_div(
                F.log_softmax(s_logits / self.t, -1), F.log_softmax(t_logits / self.t, -1),
                log_target=True, reduction="batchmean",
            )
            loss = (1 - self.alpha) * loss + self.alpha * self.t ** 2 * kl
        return loss
