"""Candidate retrieval over item vectors: exact (one matrix product, every item scored) or faiss
(HNSW inner-product graph, for large catalogues). The scorer picks one by configuration
(``retrieval: exact | faiss | auto``; ``auto``, the default, takes faiss from ``faiss_min_items`` items
on when faiss is installed, else exact). No Ray.

>>> import torch
>>> r = make_retrieval("exact", torch.eye(3))
>>> scores, rows = r.search(torch.tensor([[0.1, 0.9, 0.0]]), 2)
>>> rows.tolist()
[[1, 0]]
>>> make_retrieval("auto", torch.eye(3)).kind
'exact'
"""

from __future__ import annotations

import logging
from array import array
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)

KINDS = ("exact", "faiss", "auto")
# The catalogue size from which ``auto`` takes HNSW: below it one exact batched search costs about as
# much as the graph's and finds every item (distilrec bench scale measures both against catalogue size).
FAISS_MIN_ITEMS = 100_000


@dataclass(frozen=True, slots=True)
class RetrievalChoice:
    """What the serve config asks for: ``kind`` ``exact`` | ``faiss`` | ``auto``, and for ``auto`` the
    catalogue size ``faiss_min_items`` from which faiss is used. A plain string ``kind`` means the same
    with the default threshold (:meth:`of`)."""

    kind: str = "auto"
    faiss_min_items: int = FAISS_MIN_ITEMS

    @classmethod
    def of(cls, value: "str | RetrievalChoice") -> "RetrievalChoice":
        choice = value if isinstance(value, RetrievalChoice) else cls(str(value))
        if choice.kind not in KINDS:
            raise ValueError(f"retrieval must be 'exact', 'faiss' or 'auto', not {choice.kind!r}")
        if choice.faiss_min_items < 0:
            raise ValueError(f"faiss_min_items must be at least 0, not {choice.faiss_min_items}")
        return choice


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


_warned_no_faiss = False


def resolve_kind(choice: "str | RetrievalChoice", n_items: int) -> str:
    """The retrieval that ``choice`` gives a catalogue of ``n_items``: ``exact`` or ``faiss``. ``auto``
    takes faiss from ``faiss_min_items`` items on when faiss is importable, else exact, with one warning
    per process.

    >>> resolve_kind("auto", 10), resolve_kind(RetrievalChoice("auto", 5), 4), resolve_kind("faiss", 10)
    ('exact', 'exact', 'faiss')
    """
    global _warned_no_faiss
    choice = RetrievalChoice.of(choice)
    if choice.kind != "auto":
        return choice.kind
    if n_items < choice.faiss_min_items:
        return "exact"
    if faiss_available():
        return "faiss"
    if not _warned_no_faiss:
        _warned_no_faiss = True
        log.warning("retrieval: auto: %d items would use faiss (from %d on), but faiss is not installed "
                    "(pip install 'distilrec[faiss]'); scoring every item instead", n_items, choice.faiss_min_items)
    return "exact"


class ExactRetrieval:
    """Scores every item: ``users (B, D) @ items (N, D).T`` then top-n. ``items`` is kept as given when
    it is a contiguous float32 tensor (the model's own cached table: no copy)."""

    kind = "exact"

    def __init__(self, items: torch.Tensor):
        self.items = items.detach().float().contiguous()

    def __len__(self) -> int:
        return int(self.items.shape[0])

    def add(self, vectors: torch.Tensor) -> None:
        self.items = torch.cat([self.items, vectors.detach().float()])

    def replace(self, row: int, vector: torch.Tensor) -> None:
        self.items = self.items.clone()
        self.items[row] = vector.detach().float()

    def search(self, users: torch.Tensor, n: int,
               drop: Sequence[Sequence[int]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores (B, n), rows (B, n))`` in descending score order; ``drop[b]``: rows never returned
        for user ``b`` (its history: masked before the top-n, so no candidate is spent on them). Fewer
        rows than ``n`` left: the tail has score ``-inf`` and row ``-1``."""
        n = max(1, min(int(n), len(self)))
        scores = users.float() @ self.items.T  # (B, N)
        for b, rows in enumerate(drop or ()):
            if len(rows):
                scores[b, torch.as_tensor(rows, dtype=torch.long, device=scores.device)] = -torch.inf
        top = torch.topk(scores, n, dim=1)
        return top.values, torch.where(torch.isfinite(top.values), top.indices, -1)


class FaissRetrieval:
    """Approximate inner-product search (``faiss.IndexHNSWFlat``, ``M`` links per node). Rows added
    later (new items) join the same index; a replaced row is found through its newest vector
    (the old one is masked out). The index keeps its own copy of the vectors."""

    kind = "faiss"

    def __init__(self, items: torch.Tensor, m: int = 32, ef_search: int = 256):
        import faiss

        self.faiss = faiss
        d = int(items.shape[1])
        self.index = faiss.IndexHNSWFlat(d, m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efSearch = ef_search
        self.rows = array("q")  # faiss id -> catalogue row (8 bytes an id, no object per row)
        self.stale: set[int] = set()
        self._n = 0
        self.add(items)

    def __len__(self) -> int:
        return self._n

    def add(self, vectors: torch.Tensor) -> None:
        v = np.ascontiguousarray(vectors.detach().float().cpu().numpy())
        self.index.add(v)
        self.rows.extend(range(self._n, self._n + len(v)))
        self._n += len(v)

    def replace(self, row: int, vector: torch.Tensor) -> None:
        ids = np.flatnonzero(np.frombuffer(self.rows, dtype=np.int64) == row)
        self.stale.update(ids.tolist())
        self.index.add(np.ascontiguousarray(vector.detach().float().cpu().numpy().reshape(1, -1)))
        self.rows.append(row)

    def search(self, users: torch.Tensor, n: int,
               drop: Sequence[Sequence[int]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`ExactRetrieval.search`; dropped rows are fetched and then left out, so the graph is
        asked for ``n`` plus the longest ``drop`` list."""
        n = max(1, min(int(n), len(self)))
        dropped = [set(d) for d in drop] if drop else [set() for _ in range(len(users))]
        want = min(n + len(self.stale) + max((len(d) for d in dropped), default=0), self.index.ntotal)
        self.index.hnsw.efSearch = max(self.index.hnsw.efSearch, want)
        scores, ids = self.index.search(np.ascontiguousarray(users.detach().float().numpy()), want)
        out_s = np.full((len(ids), n), -np.inf, dtype=np.float32)
        out_r = np.zeros((len(ids), n), dtype=np.int64)
        rows, stale = self.rows, self.stale
        for b in range(len(ids)):
            j = 0
            for s, i in zip(scores[b].tolist(), ids[b].tolist()):
                if i < 0 or i in stale or rows[i] in dropped[b]:
                    continue
                out_s[b, j], out_r[b, j] = s, rows[i]
                j += 1
                if j == n:
                    break
            if j < n:  # fewer found than asked: the tail keeps -inf and is cut by the caller
                out_r[b, j:] = -1
        return torch.from_numpy(out_s), torch.from_numpy(out_r)


def make_retrieval(kind: "str | RetrievalChoice", items: torch.Tensor):
    """Retrieval over ``items (N, D)``: ``exact``, ``faiss``, or ``auto`` (:func:`resolve_kind`); a
    :class:`RetrievalChoice` carries ``auto``'s threshold. Its ``kind`` attribute says which it is."""
    if isinstance(kind, str) and kind not in KINDS:
        raise ValueError(f"retrieval must be 'exact', 'faiss' or 'auto', not {kind!r}")
    kind = resolve_kind(kind, int(items.shape[0]))
    if kind == "exact":
        return ExactRetrieval(items)
    try:
        return FaissRetrieval(items)
    except ImportError:
        raise ValueError("retrieval: faiss needs faiss-cpu: pip install 'distilrec[faiss]'") from None


def recall_at(approx, exact, users: torch.Tensor, n: int = 100, batch: int = 256) -> float:
    """Recall@``n`` of retrieval ``approx`` against ``exact`` over the same items: the share of the exact
    top ``n`` of each user vector (``users (B, D)``) that ``approx`` also returns in its top ``n``,
    averaged over the users. 1.0 for two exact searches.

    >>> import torch
    >>> items = torch.eye(4)
    >>> recall_at(make_retrieval("exact", items), make_retrieval("exact", items), torch.ones(2, 4), n=2)
    1.0
    """
    hits, total = 0, 0
    for lo in range(0, len(users), batch):
        u = users[lo:lo + batch]
        _, truth = exact.search(u, n)
        _, found = approx.search(u, n)
        for t, f in zip(truth.tolist(), found.tolist()):
            want = {r for r in t if r >= 0}
            hits += len(want & set(f))
            total += len(want)
    return hits / total if total else 1.0


def impute_item_vectors(text_vectors: torch.Tensor, text_emb: torch.Tensor, trained_text_emb: torch.Tensor,
                        trained_id_part: torch.Tensor, neighbours: int = 5, temperature: float = 0.05) -> torch.Tensor:
    """Vectors ``(M, D)`` for items that have only text: the model's text vector ``text_vectors (M, D)``
    plus the learnt id component of the ``neighbours`` trained items whose text is the most similar
    (cosine over ``text_emb (M, t)`` / ``trained_text_emb (N, t)``, softmax weights at ``temperature``).
    ``trained_id_part (N, D)`` is each trained item's vector minus its own text vector. Nothing but the
    new item's text is used; ``neighbours = 0`` gives the bare text vector.

    >>> tv, e = torch.zeros(1, 2), torch.tensor([[1.0, 0.0]])
    >>> impute_item_vectors(tv, e, torch.eye(2), torch.tensor([[5.0, 0.0], [0.0, 5.0]]), neighbours=1)
    tensor([[5., 0.]])
    """
    if neighbours <= 0 or trained_text_emb.shape[0] == 0:
        return text_vectors
    k = min(neighbours, trained_text_emb.shape[0])
    sims = torch.nn.functional.normalize(text_emb.float(), dim=1) @ \
        torch.nn.functional.normalize(trained_text_emb.float(), dim=1).T
    top = torch.topk(sims, k, dim=1)
    w = torch.softmax(top.values / temperature, dim=1)
    return text_vectors + (w.unsqueeze(-1) * trained_id_part[top.indices]).sum(1)
