"""Training wrappers that hold the losses, so the bare models in :mod:`distilrec.models` serve unchanged.

Both train on every position of a user's sequence at once: the input is the sequence without its
last item, the target the sequence shifted by one (next-item prediction), with a full softmax over
the catalogue, or, for catalogues too large for one, a sampled softmax (:class:`NegativeSampler`:
in-batch and sampled negatives shared by the batch's positions, with the log-Q correction). Long histories are cropped to random windows
(:func:`crop_window`), and each input position carries its timestamp for the time-gap features.
By default the items already in a position's history are left out of its softmax
(:func:`history_index`), as they are left out of the ranking at evaluation and serving.

>>> import numpy as np
>>> inp, tgt = next_item_batch([np.array([3, 4, 5])], pad=9, max_len=4)
>>> inp.tolist(), tgt.tolist()
([[3, 4]], [[4, 5]])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

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


class _SoftmaxLoss(torch.autograd.Function):
    """``(1-α)·CE(s, target) + α·T²·KL(softmax(t/T) ‖ softmax(s/T))``, each averaged over the rows of the
    ``(N, n_items)`` logits ``s`` (plain cross-entropy without a teacher's logits ``t``), with its
    gradient ``[(1-α)(softmax(s) - onehot) + α·T·(softmax(s/T) - softmax(t/T))] / N`` written out
    (``t`` gets none, and is overwritten). With ``log_weight (n_items,)`` every softmax reads
    ``logits (/T) + log_weight`` instead (the sampled softmax's log-Q correction, added after the
    temperature so that each softmax over the sample estimates the one over the catalogue).

    The value and gradient of ``F.cross_entropy`` (plus ``F.kl_div`` on the two log-softmaxes), in
    fewer passes over the logits and at most two buffers. Why: these passes are most of a CPU training
    step, and autograd would keep every intermediate (each as large as the logits) and walk back
    through all of them."""

    @staticmethod
    def forward(ctx, s: torch.Tensor, target: torch.Tensor, t: torch.Tensor | None = None,
                temperature: float = 1.0, alpha: float = 0.0, log_weight: torch.Tensor | None = None) -> torch.Tensor:
        with torch.autocast(s.device.type, enabled=False):
            n, dtype = s.shape[0], s.dtype
            work = torch.promote_types(dtype, torch.float32)  # bf16 logits (autocast) are summed in fp32
            s = s.to(work)
            lw = None if log_weight is None else log_weight.to(work)
            rows = torch.arange(n, device=s.device)
            loss, grad = 0.0, None
            if t is not None and alpha > 0:
                t = t.to(work)
                s_t = s / temperature
                log_s_t = torch.log_softmax(s_t if lw is None else s_t.add_(lw), -1)
                t = t.mul_(1 / temperature) if lw is None else t.mul_(1 / temperature).add_(lw)
                log_p_t = torch.log_softmax(t, -1, out=torch.empty_like(s))
                p_t = torch.exp(log_p_t, out=t)
                # Σ p_t (log p_t - log p_s,T) as two dot products, with no (N, n_items) temporary; a
                # left-out entry adds 0 · (finite) = 0 to both.
                kl = torch.dot(p_t.view(-1), log_p_t.view(-1)) - torch.dot(p_t.view(-1), log_s_t.view(-1))
                loss = alpha * temperature ** 2 * kl
                grad = log_s_t.exp_().sub_(p_t).mul_(alpha * temperature / n)  # α·T·(p_s,T - p_t) / N
                log_s = torch.log_softmax(s if lw is None else s + lw, -1, out=log_p_t)
            else:
                log_s = torch.log_softmax(s if lw is None else s + lw, -1)
            loss = (loss - (1 - alpha) * log_s[rows, target].sum()) / n
            p_s = log_s.exp_()
            grad = p_s.mul_((1 - alpha) / n) if grad is None else grad.add_(p_s, alpha=(1 - alpha) / n)
            grad[rows, target] -= (1 - alpha) / n
            ctx.dtype = dtype
            ctx.save_for_backward(grad)
            return loss

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return (grad * grad_output).to(ctx.dtype), None, None, None, None, None


def softmax_loss(logits: torch.Tensor, target: torch.Tensor, teacher_logits: torch.Tensor | None = None,
                 temperature: float = 1.0, alpha: float = 0.0, log_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of ``logits (N, C)`` against ``target (N,)``; with ``teacher_logits (N, C)``
    and ``alpha > 0``, ``(1-α)·CE + α·T²·KL(teacher_T ‖ student_T)`` (KL averaged over the N rows, as
    ``F.kl_div(..., reduction="batchmean")``). ``teacher_logits`` is overwritten. ``log_weight (C,)``
    is added to every softmax's logits after the temperature (:func:`sampled_logits`' correction).

    >>> s, t, y = torch.randn(3, 5), torch.randn(3, 5), torch.tensor([0, 4, 2])
    >>> torch.allclose(softmax_loss(s, y, t.clone(), 2.0, 0.7), softmax_loss_reference(s, y, t, 2.0, 0.7))
    True
    >>> torch.allclose(softmax_loss(s, y), F.cross_entropy(s, y))
    True
    """
    return _SoftmaxLoss.apply(logits, target, teacher_logits, temperature, alpha, log_weight)


def softmax_loss_reference(logits: torch.Tensor, target: torch.Tensor, teacher_logits: torch.Tensor | None = None,
                           temperature: float = 1.0, alpha: float = 0.0,
                           log_weight: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`softmax_loss` through autograd and PyTorch's own losses: its definition, which the tests
    and ``distilrec bench step`` compare it with."""
    lw = 0.0 if log_weight is None else log_weight
    loss = F.cross_entropy(logits + lw, target)
    if teacher_logits is None or alpha == 0:
        return loss
    kl = F.kl_div(F.log_softmax(logits / temperature + lw, -1), F.log_softmax(teacher_logits / temperature + lw, -1),
                  log_target=True, reduction="batchmean")
    return (1 - alpha) * loss + alpha * temperature ** 2 * kl


@dataclass
class Candidates:
    """One batch's sampled softmax candidates, shared by all of its positions.

    ``items (C,)``: distinct catalogue rows, ascending; ``log_weight (C,)``: the log-Q correction of
    each, ``log(count) - log(expected count)`` (:meth:`NegativeSampler.__call__`), or zeros."""

    items: torch.Tensor
    log_weight: torch.Tensor

    @classmethod
    def whole(cls, n_items: int, device: torch.device | str = "cpu") -> "Candidates":
        """Every item once with no correction: the sampled softmax over these is the full softmax."""
        return cls(torch.arange(n_items, device=device), torch.zeros(n_items, device=device))


class NegativeSampler:
    """Draws a batch's negatives for the sampled softmax: the batch's own targets (in-batch negatives)
    plus ``negatives`` items drawn with replacement from ``q``, uniform over the catalogue or
    proportional to ``counts + 1`` (``sampler="popularity"``; the +1 keeps every item reachable).

    With ``logq`` (the default) each distinct candidate ``c`` gets ``log_weight = log(n_c) - log(E[n_c])``,
    where ``n_c`` is how often it was drawn and ``E[n_c] = (B - 1)·p(c) + K·q(c)`` over the ``B - 1``
    other positions' targets (drawn from the targets' frequency ``p``, ``counts`` normalised) and the
    ``K`` sampled ones. Then ``Σ_draws exp(s_c) / E[n_c]`` is an unbiased estimate of ``Σ_c exp(s_c)``
    over the catalogue (multiple importance sampling), so the sampled softmax's gradient approaches the
    full softmax's as the sample grows. Without ``logq`` the weight is ``log(n_c)`` (every draw its own
    column, as drawn), and items drawn often are over-penalised whatever the sample's size.

    ``counts (n_items,)``: each item's number of training interactions."""

    def __init__(self, counts: np.ndarray | torch.Tensor, negatives: int, sampler: str = "uniform",
                 in_batch: bool = True, logq: bool = True):
        if sampler not in ("uniform", "popularity"):
            raise ValueError(f"sampler must be 'uniform' or 'popularity', not {sampler!r}")
        if negatives < 0 or (negatives == 0 and not in_batch):
            raise ValueError("a sampled softmax needs negatives > 0 or in-batch negatives")
        counts = torch.as_tensor(np.asarray(counts), dtype=torch.float64)
        self.n_items = len(counts)
        self.p = counts / counts.sum().clamp(min=1)  # (n_items,) the targets' frequency
        self.uniform = sampler == "uniform"
        self.q = torch.full_like(counts, 1 / self.n_items) if self.uniform else (counts + 1) / (counts + 1).sum()
        self.negatives, self.in_batch, self.logq = negatives, in_batch, logq

    def __call__(self, targets: torch.Tensor, generator: torch.Generator | None = None) -> Candidates:
        """``targets (B,)`` → the batch's :class:`Candidates` (on ``targets``' device)."""
        device = targets.device
        drawn = []
        if self.in_batch:
            drawn.append(targets.reshape(-1).cpu())
        if self.negatives:
            if self.uniform:
                drawn.append(torch.randint(0, self.n_items, (self.negatives,), generator=generator))
            else:
                drawn.append(torch.multinomial(self.q, self.negatives, replacement=True, generator=generator))
        items, counts = torch.unique(torch.cat(drawn), return_counts=True)
        log_weight = counts.double().log()  # a distinct item drawn n times stands for its n draws
        if self.logq:
            b = max(len(targets) - 1, 0) if self.in_batch else 0
            # floored: an item no other draw could bring is a row's own target, left out of that row
            log_weight -= (b * self.p[items] + self.negatives * self.q[items]).clamp(min=1e-30).log()
        return Candidates(items.to(device), log_weight.float().to(device))


def item_counts(seqs: Sequence[np.ndarray], n_items: int) -> np.ndarray:
    """``(n_items,)`` int64: how often each item occurs in ``seqs`` (the sampler's ``counts``)."""
    if not len(seqs):
        return np.zeros(n_items, dtype=np.int64)
    return np.bincount(np.concatenate([np.asarray(s, dtype=np.int64) for s in seqs]), minlength=n_items)


def sampled_logits(hidden: torch.Tensor, item_rows: Callable[[torch.Tensor], torch.Tensor], targets: torch.Tensor,
                   cands: Candidates, seen: torch.Tensor | None, n_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The sampled softmax's logits: ``(N, 1 + C)``, column 0 each row's own target, then the ``C``
    candidates; and its ``log_weight (1 + C,)`` (0 for the target column, then ``cands.log_weight``).

    ``hidden (N, D)``; ``item_rows(rows) -> (..., D)`` gives item vectors; ``targets (N,)``; ``seen``:
    flat indices into ``(N, n_items)`` of the items left out (:func:`history_index`) or None. A
    candidate equal to a row's target (an accidental hit) or in its ``seen`` is left out of that row.
    With ``Candidates.whole(n_items)`` the result is the full softmax's logits, the target's column
    moved first."""
    pos = (hidden * item_rows(targets)).sum(-1, keepdim=True)           # (N, 1)
    logits = torch.cat([pos, hidden @ item_rows(cands.items).T], 1)      # (N, 1 + C)
    width, c = logits.shape[1], len(cands.items)
    rows = torch.arange(len(targets), device=targets.device)
    out = [_candidate_index(rows, targets, cands.items, width)]          # accidental hits
    if seen is not None:
        out.append(_candidate_index(seen // n_items, seen % n_items, cands.items, width))
    logits = _leave_out(logits, torch.cat(out))
    return logits, torch.cat([cands.log_weight.new_zeros(1), cands.log_weight])


def _candidate_index(rows: torch.Tensor, items: torch.Tensor, cands: torch.Tensor, width: int) -> torch.Tensor:
    """Flat indices into ``(N, width)`` sampled logits of the (row, item) pairs whose item is a
    candidate (``cands`` ascending; candidate ``j`` is column ``1 + j``)."""
    col = torch.searchsorted(cands, items).clamp(max=max(len(cands) - 1, 0))
    hit = cands[col] == items if len(cands) else torch.zeros_like(items, dtype=torch.bool)
    return (rows * width + 1 + col)[hit]


def _scores(model: Teacher | Student, hidden: torch.Tensor, targets: torch.Tensor, seen: torch.Tensor | None,
            cands: Candidates | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(logits, target column, log_weight)`` of ``hidden (N, D)``: the full catalogue's ``(N, n_items)``
    without ``cands``, else :func:`sampled_logits` (target column 0). Items in ``seen`` left out."""
    n_items = model.cfg.n_items
    if cands is None:
        logits = model.logits(hidden)
        if seen is not None:
            logits = _leave_out(logits, seen)
        return logits, targets, None
    logits, log_weight = sampled_logits(hidden, model.items.rows, targets, cands, seen, n_items)
    return logits, torch.zeros_like(targets), log_weight


class TeacherTrain(nn.Module):
    """``forward(inputs (B, L), targets (B, L), times (B, L)?) -> scalar`` cross-entropy over the full
    catalogue at every position, or with a ``sampler`` (:class:`NegativeSampler`) over the batch's
    sampled candidates; with ``mask_history`` (the default) over the items not yet in the position's
    history."""

    def __init__(self, teacher: Teacher, mask_history: bool = True, sampler: NegativeSampler | None = None):
        super().__init__()
        self.model = teacher
        self.mask_history = mask_history
        self.sampler = sampler

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor, times: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.model.encode(inputs, times)
        targets = targets[:, -hidden.shape[1]:]
        keep = targets != IGNORE
        y = targets[keep]
        seen = history_index(inputs, targets, self.model.cfg.n_items) if self.mask_history else None
        cands = self.sampler(y) if self.sampler is not None else None
        logits, column, log_weight = _scores(self.model, hidden[keep], y, seen, cands)
        return softmax_loss(logits, column, log_weight=log_weight)


class StudentTrain(nn.Module):
    """Distillation loss: ``(1-α)·CE(true next) + α·T²·KL(teacher_T ‖ student_T)`` at every position,
    over the full catalogue or, with a ``sampler``, over the student's sampled candidates (the teacher
    scores the same candidates; both softmaxes carry the same log-Q correction).

    The student reads at most its own ``max_len`` most recent items, so it trains on the last
    ``student.cfg.max_len`` positions of a batch; the teacher scores the same positions with its
    whole (longer) context. With ``teacher=None`` (or α = 0) this trains the same student without a
    teacher. With ``mask_history`` (the default) both softmaxes leave out the items already in the
    position's history, the teacher's reach of it included.
    """

    def __init__(self, student: Student, teacher: Teacher | None, temperature: float = 2.0, alpha: float = 0.9,
                 mask_history: bool = True, sampler: NegativeSampler | None = None):
        super().__init__()
        self.model = student
        self.mask_history = mask_history
        self.sampler = sampler
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
        y = targets[keep]
        seen = history_index(inputs, targets, self.model.cfg.n_items) if self.mask_history else None
        cands = self.sampler(y) if self.sampler is not None else None
        s_logits, column, log_weight = _scores(self.model, hidden[keep], y, seen, cands)
        if self.alpha == 0:
            return softmax_loss(s_logits, column, log_weight=log_weight)
        with torch.no_grad():  # the teacher scores the student's candidates, with the same items left out
            t_hidden = self.teacher.encode(inputs, times)[:, -length:]
            t_logits = _scores(self.teacher, t_hidden[keep], y, seen, cands)[0]
        return softmax_loss(s_logits, column, t_logits, self.t, self.alpha, log_weight)
