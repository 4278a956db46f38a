"""The teacher and the student. Bare models: no loss, no Ray; serving loads them unchanged.

Both are causal transformers over the user's history and score items of the catalogue (rows
``0 .. n_items-1``); a history is a left-padded ``LongTensor (B, L)`` whose padding value is
``n_items``, optionally with the unix seconds of each item ``(B, L)`` for the time-gap features. An
item's vector is its id embedding plus a linear projection of its text embedding, so an item with no
trained id (a new one) can still be scored from its text alone (:meth:`Student.text_item_vectors`).

>>> import torch
>>> from distilrec.config import StudentConfig
>>> m = Student(StudentConfig(n_items=10, text_dim=4), text_emb=torch.randn(10, 4))
>>> hist = pad_histories([[1, 2, 3]], 10, m.cfg.max_len)
>>> times = pad_histories([[1_700_000_000, 1_700_000_060, 1_700_086_400]], 0, m.cfg.max_len)
>>> m.score(hist, times=times).shape
torch.Size([1, 10])
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distilrec.config import StudentConfig, TeacherConfig


def native_cpu_kernels(enabled: bool = True) -> bool:
    """Score with PyTorch's own CPU kernels instead of oneDNN's (``enabled=True``) or go back to oneDNN
    (``False``), for this whole process; returns whether PyTorch's were in use before.

    For these models the choice only changes the GELU: oneDNN's has a fixed set-up cost per call that
    dominates a single request's small inputs, and is faster on large batches. Scores agree to float
    rounding.
    The scorer deployment, which mostly scores one or a few requests at a time, calls this when it
    starts; :func:`distilrec.evaluate.scoring_costs` measures under the same setting. Training keeps
    PyTorch's default.
    """
    before = not torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = not enabled
    return before


def pad_histories(histories: Sequence[Sequence[int]], pad: int, max_len: int) -> torch.Tensor:
    """Left-pad (and keep the most recent ``max_len`` of) each history: ``(B, L)`` with L ≤ max_len.
    Timestamps are padded the same way (``pad=0``) so that they stay aligned with the items."""
    length = max(1, min(max_len, max((len(h) for h in histories), default=1)))
    out = np.full((len(histories), length), pad, dtype=np.int64)
    for i, h in enumerate(histories):
        h = np.asarray(h, dtype=np.int64)[-length:]
        if len(h):
            out[i, length - len(h):] = h
    return torch.from_numpy(out)


def _affine(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, weight, bias)``; for one vector ``x`` (one request's last position) a matrix-vector
    product, cheaper per call on one CPU thread than ``linear``'s matrix product.
    Under autocast ``x`` may be bf16 while the weights are not: ``linear`` casts them, ``addmv`` would
    refuse (the CPU's autocast does not cover it), so mixed dtypes go to ``linear``."""
    return torch.addmv(bias, weight, x) if x.dim() == 1 and x.dtype == weight.dtype else F.linear(x, weight, bias)


class _EvalCache(nn.Module):
    """A module that keeps tensors derived from its weights while it is *frozen* (eval mode without
    autograd: serving and evaluation) and drops them when it switches mode, loads weights or moves
    (``.to``, ``.double()``, …). Weights changed in place while frozen are not noticed: training
    happens in train mode."""

    _cache: dict | None = None

    def _frozen(self) -> bool:
        return not self.training and not torch.is_grad_enabled()

    def _cached(self, key, make):
        if self._cache is None:
            self._cache = {}
        if key not in self._cache:
            # Made once for every later call, so in the weights' own dtype even if this call runs under
            # autocast (a bf16 copy would then be used outside it too).
            with torch.autocast(next(self.parameters()).device.type, enabled=False):
                self._cache[key] = make()
        return self._cache[key]

    def train(self, mode: bool = True):
        self._cache = None
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self._cache = None
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self._cache = None
        return super()._load_from_state_dict(*args, **kwargs)


class _ItemTower(_EvalCache):
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
        return self._table() if self._frozen() else self._compute()

    def trained(self) -> torch.Tensor:
        """``(N, D)``: :meth:`all` without the padding row, the view cached with the table."""
        return self._cached("trained", lambda: self._table()[:-1]) if self._frozen() else self._compute()[:-1]

    def embed(self, rows: torch.Tensor, scale: float) -> torch.Tensor:
        """``(B, L) -> (B, L, D)``: the vectors of ``rows`` (padding gives zeros) times ``scale``. When
        the table is cached, a request costs one gather from it and one multiply (no scaled copy of the
        table: at a million items that would be another ``N × D`` floats per model)."""
        if self._frozen():
            return F.embedding(rows, self._table()) * scale  # a gather, faster than table[rows]
        return self.rows(rows) * scale

    def rows(self, rows: torch.Tensor) -> torch.Tensor:
        """``(...) -> (..., D)``: the vectors of ``rows`` (padding gives zeros), computed for those rows
        alone, so that a training step costs what its batch reads, not the catalogue's size."""
        v = self.id_emb(rows)
        if self.text_proj is not None:
            real = rows < self.n_items
            text = F.embedding(rows.clamp(max=self.n_items - 1), self.text_emb)
            v = v + self.text_proj(text) * real.unsqueeze(-1)
        return v

    def _table(self) -> torch.Tensor:
        # a plain tensor, never a Parameter; one table per model (embed scales what it gathers)
        return self._cached("table", lambda: self._compute().detach())

    def _compute(self) -> torch.Tensor:
        v = self.id_emb.weight
        if self.text_proj is not None:
            v = v + F.pad(self.text_proj(self.text_emb), (0, 0, 0, 1))
        return v


def sparse_item_tables(module: nn.Module) -> list[nn.Parameter]:
    """Switch every item tower in ``module`` (a model or a training wrapper) whose id table trains to
    sparse gradients, and return those tables' weights (for a sparse optimiser). A step's gradient then
    holds only the rows it read (its histories, targets and sampled negatives), so the sampled softmax's
    step costs what it reads, not the catalogue's size. Only the sampled path may then train the table:
    the full softmax reads the whole table, whose dense gradient a sparse optimiser refuses."""
    tables = []
    for m in module.modules():
        if isinstance(m, _ItemTower) and m.id_emb.weight.requires_grad:
            m.id_emb.sparse = True
            tables.append(m.id_emb.weight)
    return tables


def time_gap_buckets(times: torch.Tensor, valid: torch.Tensor | None, n_buckets: int) -> torch.Tensor:
    """``(B, L)`` unix seconds → ``(B, L)`` buckets of the time since the previous real item.

    Bucket ``1 + floor(log2(gap + 1))`` (capped at ``n_buckets - 1``), so 1 is "the same second" and
    each further bucket doubles the gap; 0 means "no previous item" (the first item, padding, or a
    position whose time is unknown). A negative gap (clock skew) counts as 0 seconds.
    ``valid=None`` means that every position holds a real item.

    >>> t = torch.tensor([[0, 100, 100, 107, 1000]])
    >>> time_gap_buckets(t, torch.tensor([[False, True, True, True, True]]), 24).tolist()
    [[0, 0, 1, 4, 10]]
    >>> time_gap_buckets(t, None, 24).tolist()
    [[0, 7, 1, 4, 10]]
    """
    # 1 + floor(log2(gap + 1)) = 1 + the number of k >= 1 with gap >= 2**k - 1 (negative gaps: bucket 1);
    # the bounds start with the lowest int64, which every gap reaches: that is the 1 +.
    if times.dtype != torch.long:
        times = times.long()
    buckets = torch.bucketize(times.diff(dim=1), _gap_bounds(n_buckets, times.device), right=True)
    buckets = F.pad(buckets, (1, 0))  # the first position has no previous item
    if valid is None:
        return buckets
    return torch.where(valid & F.pad(valid[:, :-1], (1, 0), value=False), buckets, 0)


def _padding_columns(valid: torch.Tensor) -> tuple[int, bool]:
    """``valid (B, L)`` → (how many leading columns are padding in every row, whether the rest has no
    padding at all). A batch without any padding never gets here: ``encode`` finds it with one ``max``."""
    first = int(valid.any(0).int().argmax()) if valid.shape[1] > 1 else 0
    return first, bool(valid[:, first:].all())


@functools.lru_cache(maxsize=8)
def _gap_bounds(n_buckets: int, device: torch.device) -> torch.Tensor:
    return torch.tensor([torch.iinfo(torch.long).min] + [2 ** k - 1 for k in range(1, n_buckets - 1)],
                        dtype=torch.long, device=device)


class _SequenceModel(_EvalCache):
    """Causal transformer (pre-norm, SASRec-style) over the history; score = ⟨h_last, item⟩.

    The input at each position is the item's vector (id embedding + projected text), a position
    embedding (counted from the most recent item), and, with ``cfg.time_buckets``, an embedding of the
    time since the previous interaction. ``times`` is a ``(B, L)`` tensor of unix seconds aligned with
    ``hist`` (any value at padding); without it every time bucket is 0 ("unknown").
    """

    def __init__(self, cfg: TeacherConfig | StudentConfig, text_emb: torch.Tensor | None = None):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.items = _ItemTower(cfg.n_items, cfg.text_dim, d, text_emb)
        self.pos_emb = nn.Embedding(cfg.max_len, d)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        self.gap_emb = nn.Embedding(cfg.time_buckets, d) if cfg.time_buckets else None
        if self.gap_emb is not None:
            nn.init.normal_(self.gap_emb.weight, std=0.02)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(_Block(d, cfg.n_heads, cfg.dropout) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(d)

    def encode(self, hist: torch.Tensor, times: torch.Tensor | None = None, last_only: bool = False) -> torch.Tensor:
        """``(B, L) -> (B, L, D)``: hidden state after each position (causal). Only the most recent
        ``max_len`` positions are read. ``last_only=True`` gives ``(B, 1, D)``, the last position
        alone, and the last layer then computes only what that position needs (keys and values of
        every position, the query, attention and feed-forward of one): the scoring path."""
        cfg = self.cfg
        if hist.shape[1] > cfg.max_len:
            hist = hist[:, -cfg.max_len:]
        frozen = self._frozen()
        pos_w, gap_w, norm, blocks = self._cached("weights", self._weights) if frozen else self._weights()
        # The scoring path: when there is no padding at all (a single request's history: rows are
        # 0 .. n_items - 1, padding is n_items), attention needs no mask and the positions no validity;
        # columns that are padding in every row change nothing for the last position (their positions
        # are masked and position embeddings count from the most recent item), so they are cut. Full
        # encodings (training, the teacher's targets) keep the mask and read nothing back from the device.
        scoring = last_only and not self.training
        dense = scoring and int(hist.max()) < cfg.n_items
        if dense and frozen:
            # The serving hot path, in the fewest operations. It computes what the path below computes,
            # to float rounding (one request's products are matrix-vector ones: ``_affine``).
            x = self._inputs(hist, times, None, pos_w, gap_w)
            for block in blocks[:-1]:
                x = block(x, None)
            # one request: an (L, D) matrix and (D,) vectors, not a batch of one (no reshape in any op)
            x = blocks[-1].last_position(x[0] if x.shape[0] == 1 else x, None)
            return F.layer_norm(x, *norm).view(hist.shape[0], 1, -1)
        valid = None if dense else hist != cfg.n_items
        if scoring and not dense:
            first, dense = _padding_columns(valid)
            if first:
                hist, valid = hist[:, first:], valid[:, first:]
        x = self._inputs(hist, times, None if dense else valid, pos_w, gap_w)
        if self.training:  # dropout; in eval mode it is the identity, and not even called
            x = self.drop(x)
        length = hist.shape[1]
        if dense:
            mask = None  # full causal attention, and the last query sees every position
        else:
            x = x * valid.unsqueeze(-1)
            # A query may attend to earlier real items, and always to itself (so no row is empty).
            if last_only and cfg.n_layers == 1:  # the last query alone sees every position: no causal mask
                mask = (valid | (torch.arange(length, device=hist.device) == length - 1))[:, None, None, :]
            else:
                causal = torch.ones(length, length, dtype=torch.bool, device=hist.device).tril()
                mask = (causal & valid[:, None, :]) | torch.eye(length, dtype=torch.bool, device=hist.device)
                mask = mask.unsqueeze(1)
        last = cfg.n_layers - 1
        for i, block in enumerate(blocks):
            if last_only and i == last:
                x = block(x, mask, last_only=True)
                valid = valid[:, -1:] if valid is not None else None
            else:
                x = block(x, mask)
            if not dense:
                x = x * valid.unsqueeze(-1)
        return F.layer_norm(x, *norm)

    def _inputs(self, hist: torch.Tensor, times: torch.Tensor | None, valid: torch.Tensor | None,
                pos_w: torch.Tensor, gap_w: torch.Tensor | None) -> torch.Tensor:
        """``(B, L)`` rows (and their unix seconds) → ``(B, L, D)``: the item's vector times √D, plus its
        position's embedding and its time gap's (``valid=None``: no padding anywhere)."""
        length = hist.shape[1]
        x = self.items.embed(hist, self.cfg.d_model ** 0.5) + pos_w[pos_w.shape[0] - length:]
        if gap_w is not None and times is not None:
            if times.shape[1] != length:
                times = times[:, -length:]
            x = x + F.embedding(time_gap_buckets(times, valid, gap_w.shape[0]), gap_w)
        elif gap_w is not None:
            x = x + gap_w[0]
        return x

    def _weights(self) -> tuple:
        """``(position embeddings, time-gap embeddings or None, the final layer norm's arguments, the
        blocks)``, as ``encode`` reads them; cached while frozen (one lookup instead of eight attribute
        lookups)."""
        n = self.norm
        return (self.pos_emb.weight, self.gap_emb.weight if self.gap_emb is not None else None,
                (n.normalized_shape, n.weight, n.bias, n.eps), tuple(self.blocks))

    def item_vectors(self) -> torch.Tensor:
        """``(N, D)``: vectors of the trained catalogue (serving precomputes them once)."""
        return self.items.trained()

    def text_item_vectors(self, text_emb: torch.Tensor) -> torch.Tensor:
        """``(M, text_dim) -> (M, D)``: vectors of items that have no trained id embedding."""
        return self.items.text_vectors(text_emb)

    def item_id_vectors(self) -> torch.Tensor:
        """``(N, D)``: the learnt id component of each trained item's vector (its vector less its text
        vector), a view of the weights (no copy)."""
        return self.items.id_emb.weight.detach()[:-1]

    def item_text_embeddings(self) -> torch.Tensor | None:
        """``(N, text_dim)``: the item text embeddings the model was built with (its own buffer, no copy),
        or ``None`` without text features."""
        return self.items.text_emb if self.cfg.text_dim else None

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(..., D) -> (..., N)``: scores of every catalogue item."""
        return hidden @ self.item_vectors().T

    def user_vector(self, hist: torch.Tensor, times: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, L) -> (B, D)``: the representation after the last (most recent) item."""
        return self.encode(hist, times, last_only=True)[:, -1]

    def score(self, hist: torch.Tensor, candidates: torch.Tensor | None = None,
              times: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, L) -> (B, N)``, or ``(B, C)`` for candidate rows ``(C,)``."""
        items = self.item_vectors()
        if candidates is not None:
            items = items.index_select(0, candidates)
        return F.linear(self.user_vector(hist, times), items)  # user @ items.T, in one call

    def macs_per_candidate(self, n_candidates: int = 1000) -> float:
        """Multiply-accumulates to score one full-length history against ``n_candidates``, per candidate:
        the user tower shared by the candidates, plus one ``d``-wide dot product each. Every layer but
        the last costs, per position, the projections ``4·d²``, the feed-forward ``8·d²`` and the
        attention ``2·L·d``; the last computes the last position alone (its attention with the
        projections folded, ``_Block._last_query_attention``): the folded query ``H·d²``, scores and
        weighted sum ``2·H·L·d``, the folded value and output ``H·d²`` and the feed-forward ``8·d²``."""
        d, length, heads = self.cfg.d_model, self.cfg.max_len, self.cfg.n_heads
        full_layer = length * 12 * d * d + 2 * length * length * d
        last_layer = 2 * heads * d * d + 2 * heads * length * d + 8 * d * d
        return ((self.cfg.n_layers - 1) * full_layer + last_layer) / n_candidates + d


class Teacher(_SequenceModel):
    """The teacher (:class:`TeacherConfig`: 2 layers of width 64 over the last 200 items by default)."""


class Student(_SequenceModel):
    """The student (:class:`StudentConfig`: 1 layer of width 64 over the last 100 items by default).

    It learns from the teacher's softened scores and the true next item (``distilrec.losses``); at
    serving time its user vector is computed once per request and each candidate costs one dot product.
    """


class _Block(_EvalCache):
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

    def forward(self, x: torch.Tensor, mask: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """``mask (B, 1, L, L)``, or ``None`` for plain causal attention (no padding anywhere);
        ``last_only=True`` returns ``(B, 1, D)`` for the last position alone.

        The sub-modules hold the weights (and name them in the state dict); the computation calls the
        functional ops on them directly, and dropout only in training, because on the scoring path (one
        request, one thread) each module call's and each attribute lookup's fixed cost counts."""
        b, length, d = x.shape
        frozen = self._frozen()
        ln1w, ln1b, wqkv, bqkv, wo, bo, ln2w, ln2b, wup, bup, wdown, bdown, eps = (
            self._cached("weights", self._weights) if frozen else self._weights())
        h, dh, p = F.layer_norm(x, (d,), ln1w, ln1b, eps), d // self.heads, self.p if self.training else 0.0
        if last_only and frozen:
            return self.last_position(x, mask, h).unsqueeze(1)
        else:
            if last_only:
                q = F.linear(h[:, -1:], wqkv[:d], bqkv[:d]).view(b, 1, self.heads, dh).transpose(1, 2)
                k, v = F.linear(h, wqkv[d:], bqkv[d:]).view(b, length, 2, self.heads, dh).permute(2, 0, 3, 1, 4)
                x = x[:, -1:]
                if mask is not None:
                    mask = mask[:, :, -1:]  # a (B, 1, 1, L) mask stays as it is
            else:
                q, k, v = F.linear(h, wqkv, bqkv).view(b, length, 3, self.heads, dh).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and not last_only,
                                               dropout_p=p)
            a = F.linear(a.transpose(1, 2).reshape(b, x.shape[1], d), wo, bo)
        x = x + (F.dropout(a, p) if p else a)
        f = F.gelu(F.linear(F.layer_norm(x, (d,), ln2w, ln2b, eps), wup, bup))
        f = F.linear(F.dropout(f, p) if p else f, wdown, bdown)
        return x + (F.dropout(f, p) if p else f)

    def last_position(self, x: torch.Tensor, mask: torch.Tensor | None, h: torch.Tensor | None = None) -> torch.Tensor:
        """``x (B, L, D)`` → ``(B, D)``, or ``(L, D)`` → ``(D,)`` for one request: ``forward(x, mask,
        last_only=True)`` of a frozen block, without the position axis (``h``: ``x`` after the first
        layer norm, when the caller has it). The attention of the last position with the projections
        folded (:meth:`_last_query_attention`), then the feed-forward of that position alone."""
        ln1w, ln1b, _, _, _, _, ln2w, ln2b, wup, bup, wdown, bdown, eps = self._cached("weights", self._weights)
        d = x.shape[-1]
        if h is None:
            h = F.layer_norm(x, (d,), ln1w, ln1b, eps)
        x = x.select(-2, -1) + self._last_query_attention(h, mask)
        return x + _affine(F.gelu(_affine(F.layer_norm(x, (d,), ln2w, ln2b, eps), wup, bup)), wdown, bdown)

    def _weights(self) -> tuple:
        """The weights in the order ``forward`` reads them, then the eps of both layer norms (built
        alike). While frozen they are cached: a request looks up one tuple, not thirteen attributes."""
        up, down = self.ff[0], self.ff[3]  # Linear, GELU, Dropout, Linear
        return (self.ln1.weight, self.ln1.bias, self.qkv.weight, self.qkv.bias, self.out.weight, self.out.bias,
                self.ln2.weight, self.ln2.bias, up.weight, up.bias, down.weight, down.bias, self.ln1.eps)

    def _last_query_attention(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``h (B, L, D)`` normalised inputs → ``(B, D)`` (``(L, D)`` → ``(D,)``): the attention output
        (after the output projection) of the last position, with the projections folded into the keys'
        side.

        For one query the projections need not touch every position. Head ``j``'s score of position
        ``i`` is ``q_j · (Wk_j h_i + bk_j) / √dh = h_i · (Wk_jᵀ q_j) / √dh + const``, and the constant
        cancels in the softmax; its output ``Σ_i p_i (Wv_j h_i + bv_j) = Wv_j (Σ_i p_i h_i) + bv_j``, as
        the weights sum to 1. So the query and key projections fold into one ``(H·D, D)`` matrix, the
        value and output projections into one ``(D, H·D)``, and the positions are read twice, by
        ``D``-wide products, instead of being projected to keys and values (for the student's 50
        positions and 2 heads, 29 k multiply-accumulates instead of 424 k)."""
        *lead, _, d = h.shape
        qk, qk_bias, vo, vo_bias = self._cached("folded", self._fold)
        q = _affine(h.select(-2, -1), qk, qk_bias).view(*lead, self.heads, d)  # (B, H, D): Wk_jᵀ q_j / √dh
        scores = torch.matmul(q, h.transpose(-1, -2))                    # (B, H, L)
        if mask is not None:                                             # (B, 1, L, L) or (B, 1, 1, L)
            scores = scores.masked_fill(~mask[:, :, -1], float("-inf"))
        context = torch.matmul(torch.softmax(scores, -1), h)             # (B, H, D): Σ_i p_i h_i per head
        return _affine(context.view(*lead, self.heads * d), vo, vo_bias)

    def _fold(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        d, heads = self.out.weight.shape[0], self.heads
        dh = d // heads
        wq, wk, wv = self.qkv.weight.detach().view(3, heads, dh, d)      # head j: (dh, D) each
        bq, _, bv = self.qkv.bias.detach().view(3, heads, dh)
        scale = dh ** -0.5
        qk = (wk.transpose(1, 2) @ wq).reshape(heads * d, d) * scale     # row block j: Wk_jᵀ Wq_j
        qk_bias = (wk.transpose(1, 2) @ bq.unsqueeze(-1)).reshape(heads * d) * scale
        wo = self.out.weight.detach().view(d, heads, dh).transpose(0, 1)  # head j: (D, dh)
        vo = (wo @ wv).transpose(0, 1).reshape(d, heads * d)             # column block j: Wo_j Wv_j
        vo_bias = self.out.weight.detach() @ bv.reshape(d) + self.out.bias.detach()
        return qk.contiguous(), qk_bias.contiguous(), vo.contiguous(), vo_bias


MODELS = {"teacher": (Teacher, TeacherConfig), "student": (Student, StudentConfig)}


def count_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))
