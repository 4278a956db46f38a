"""The teacher and the student. Bare models: no loss, no Ray; serving loads them unchanged.

Both score items of the catalogue (rows ``0 .. n_items-1``); a history is a left-padded
``LongTensor (B, L)`` whose padding value is ``n_items``. An item's vector is its id embedding plus
a linear projection of its text embedding, so an item with no trained id (a new one) can still be
scored from its text alone (:meth:`Student.text_item_vectors`).

>>> import torch
>>> from distilrec.config import StudentConfig
>>> m = Student(StudentConfig(n_items=10, text_dim=4), text_emb=torch.randn(10, 4))
>>> m.score(pad_histories([[1, 2, 3]], 10, m.cfg.max_len)).shape
torch.Size([1, 10])
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distilrec.config import StudentConfig, TeacherConfig


def pad_histories(histories: Sequence[Sequence[int]], pad: int, max_len: int) -> torch.Tensor:
    """Left-pad (and keep the most recent ``max_len`` of) each history: ``(B, L)`` with L ≤ max_len."""
    length = max(1, min(max_len, max((len(h) for h in histories), default=1)))
    out = np.full((len(histories), length), pad, dtype=np.int64)
    for i, h in enumerate(histories):
        h = np.asarray(h, dtype=np.int64)[-length:]
        if len(h):
            out[i, length - len(h):] = h
    return torch.from_numpy(out)


class _ItemTower(nn.Module):
    """Item vectors ``(N, D)``: id embedding + projected text embedding (a frozen buffer)."""

    def __init__(self, n_items: int, text_dim: int, d: int, text_emb: torch.Tensor | None):
        super().__init__()
        self.n_items = n_items
        self.id_emb = nn.Embedding(n_items + 1, d, padding_idx=n_items)
        nn.init.normal_(self.id_emb.weight, std=0.02)
        with torch.no_grad():
            self.id_emb.weight[n_items].zero_()
        self.text_proj = nn.Linear(text_dim, d, bias=False) if text_dim else None
        if text_dim:
            if text_emb is None or tuple(text_emb.shape) != (n_items, text_dim):
                raise ValueError(f"text_emb must have shape ({n_items}, {text_dim})")
            # Not persistent: the text embeddings live in the artifact's item table, not the weights.
            self.register_buffer("text_emb", text_emb.float(), persistent=False)

    def text_vectors(self, text_emb: torch.Tensor) -> torch.Tensor:
        """``(M, text_dim) -> (M, D)``: vectors for items known only by their text."""
        if self.text_proj is None:
            raise ValueError("this model was trained without text features")
        return self.text_proj(text_emb.float())

    def all(self) -> torch.Tensor:
        """``(N + 1, D)``: every catalogue item, then a zero padding row.

        In eval mode without autograd (serving, evaluation) the table is computed once and cached;
        switching to train mode, loading weights or moving the module drops the cache.
        """
        if not self.training and not torch.is_grad_enabled():
            if self._cache is None:
                self._cache = self._compute().detach()  # a plain tensor, never a Parameter
            return self._cache
        return self._compute()

    def _compute(self) -> torch.Tensor:
        v = self.id_emb.weight
        if self.text_proj is not None:
            v = v + F.pad(self.text_proj(self.text_emb), (0, 0, 0, 1))
        return v

    _cache: torch.Tensor | None = None

    def train(self, mode: bool = True) -> "_ItemTower":
        self._cache = None
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self._cache = None
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self._cache = None
        return super()._load_from_state_dict(*args, **kwargs)


class Teacher(nn.Module):
    """Causal transformer (pre-norm, SASRec-style) over the history; score = ⟨h_last, item⟩."""

    def __init__(self, cfg: TeacherConfig, text_emb: torch.Tensor | None = None):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.items = _ItemTower(cfg.n_items, cfg.text_dim, d, text_emb)
        self.pos_emb = nn.Embedding(cfg.max_len, d)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(_Block(d, cfg.n_heads, cfg.dropout) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(d)

    def encode(self, hist: torch.Tensor) -> torch.Tensor:
        """``(B, L) -> (B, L, D)``: hidden state after each position (causal)."""
        b, length = hist.shape
        if length > self.cfg.max_len:
            hist = hist[:, -self.cfg.max_len:]
            length = self.cfg.max_len
        table = self.items.all()
        x = table[hist] * (self.cfg.d_model ** 0.5)
        x = x + self.pos_emb.weight[self.cfg.max_len - length:]
        valid = hist != self.cfg.n_items
        x = self.drop(x) * valid.unsqueeze(-1)
        causal = torch.ones(length, length, dtype=torch.bool, device=hist.device).tril()
        # A query may attend to earlier real items, and always to itself (so no row is empty).
        mask = (causal & valid[:, None, :]) | torch.eye(length, dtype=torch.bool, device=hist.device)
        mask = mask.unsqueeze(1)
        for block in self.blocks:
            x = block(x, mask) * valid.unsqueeze(-1)
        return self.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(..., D) -> (..., N)``: scores of every catalogue item."""
        return hidden @ self.items.all()[:-1].T

    def user_vector(self, hist: torch.Tensor) -> torch.Tensor:
        """``(B, L) -> (B, D)``: the representation after the last (most recent) item."""
        return self.encode(hist)[:, -1]

    def score(self, hist: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, L) -> (B, N)``, or ``(B, C)`` for candidate rows ``(C,)``."""
        u = self.user_vector(hist)
        items = self.items.all()[:-1]
        if candidates is not None:
            items = items[candidates]
        return u @ items.T

    def macs_per_candidate(self, n_candidates: int = 1000) -> float:
        """Multiply-accumulates to score one full-length history against ``n_candidates``, per candidate."""
        d, length = self.cfg.d_model, self.cfg.max_len
        per_layer = length * 4 * d * d + 2 * length * length * d + length * 8 * d * d
        return (self.cfg.n_layers * per_layer) / n_candidates + d


class _Block(nn.Module):
    """Pre-norm self-attention + feed-forward block. ``(B, L, D) -> (B, L, D)``."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        if d % heads:
            raise ValueError(f"d_model={d} is not divisible by n_heads={heads}")
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * d, d))
        self.drop = nn.Dropout(dropout)
        self.p = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, length, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.p if self.training else 0.0)
        x = x + self.drop(self.out(a.transpose(1, 2).reshape(b, length, d)))
        return x + self.drop(self.ff(self.ln2(x)))


class Student(nn.Module):
    """Pooled-history user tower: a learned recency-weighted mean of the history's item vectors and the
    most recent item's vector go through a narrow MLP.

    ``pooled(t) = Σ_j w[t-j]·e_j / Σ_j w[t-j]`` over the real items ``j ≤ t``;
    ``user(t) = pooled(t) + MLP([pooled(t); e_t])``; score = ⟨user, item⟩.
    """

    def __init__(self, cfg: StudentConfig, text_emb: torch.Tensor | None = None):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.items = _ItemTower(cfg.n_items, cfg.text_dim, d, text_emb)
        self.recency = nn.Parameter(torch.zeros(cfg.max_len))  # log-weight by distance from the end
        self.mlp = nn.Sequential(
            nn.LayerNorm(2 * d), nn.Linear(2 * d, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, d),
        )

    def _tower(self, pooled: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        return pooled + self.mlp(torch.cat([pooled, last], -1))

    def user_vector(self, hist: torch.Tensor) -> torch.Tensor:
        """``(B, L) -> (B, D)`` for the whole history."""
        hist = hist[:, -self.cfg.max_len:]
        length = hist.shape[1]
        valid = (hist != self.cfg.n_items).float()
        w = torch.exp(self.recency[:length].flip(0)) * valid  # (B, L); position L-1 has distance 0
        e = self.items.all()[hist]
        pooled = (w.unsqueeze(-1) * e).sum(1) / w.sum(1, keepdim=True).clamp_min(1e-6)
        return self._tower(pooled, e[:, -1])

    def prefix_user_vectors(self, hist: torch.Tensor) -> torch.Tensor:
        """``(B, L) -> (B, L, D)``: the user vector after every prefix (for training on all positions)."""
        length = hist.shape[1]
        if length > self.cfg.max_len:
            raise ValueError(f"history longer than max_len={self.cfg.max_len}")
        valid = (hist != self.cfg.n_items).float()
        idx = torch.arange(length, device=hist.device)
        dist = idx[:, None] - idx[None, :]  # (L, L): t - j
        kernel = torch.exp(self.recency[dist.clamp_min(0)]) * (dist >= 0)
        w = kernel.unsqueeze(0) * valid.unsqueeze(1)  # (B, L, L)
        e = self.items.all()[hist]
        pooled = (w @ e) / w.sum(-1, keepdim=True).clamp_min(1e-6)
        return self._tower(pooled, e)

    def item_vectors(self) -> torch.Tensor:
        """``(N, D)``: vectors of the trained catalogue (precomputed once by serving)."""
        return self.items.all()[:-1]

    def text_item_vectors(self, text_emb: torch.Tensor) -> torch.Tensor:
        """``(M, text_dim) -> (M, D)``: vectors of items that have no trained id embedding."""
        return self.items.text_vectors(text_emb)

    def logits(self, users: torch.Tensor) -> torch.Tensor:
        return users @ self.item_vectors().T

    def score(self, hist: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, L) -> (B, N)``, or ``(B, C)`` for candidate rows ``(C,)``."""
        items = self.item_vectors()
        if candidates is not None:
            items = items[candidates]
        return self.user_vector(hist) @ items.T

    def macs_per_candidate(self, n_candidates: int = 1000) -> float:
        d, h, length = self.cfg.d_model, self.cfg.hidden, self.cfg.max_len
        user = length * d + 2 * d * h + h * d
        return user / n_candidates + d


MODELS = {"teacher": (Teacher, TeacherConfig), "student": (Student, StudentConfig)}


def count_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))
