"""Candidate retrieval over item vectors: exact (one matrix product, every item scored) or faiss
(HNSW inner-product graph, for large catalogues). The scorer picks one by configuration
(``retrieval: exact | faiss``). No Ray.

>>> import torch
>>> r = make_retrieval("exact", torch.eye(3))
>>> scores, rows = r.search(torch.tensor([[0.1, 0.9, 0.0]]), 2)
>>> rows.tolist()
[[1, 0]]
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


class ExactRetrieval:
    """Scores every item: ``users (B, D) @ items (N, D).T`` then top-n."""

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
    (the old one is masked out)."""

    def __init__(self, items: torch.Tensor, m: int = 32, ef_search: int = 256):
        import faiss

        self.faiss = faiss
        d = int(items.shape[1])
        self.index = faiss.IndexHNSWFlat(d, m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efSearch = ef_search
        self.rows: list[int] = []  # faiss id -> catalogue row
        self.stale: set[int] = set()
        self._n = 0
        self.add(items)

    def __len__(self) -> int:
        return self._n

    def add(self, vectors: torch.Tensor) -> None:
        v = np.ascontiguousarray(vectors.detach().float().numpy())
        self.index.add(v)
        self.rows.extend(range(self._n, self._n + len(v)))
        self._n += len(v)

    def replace(self, row: int, vector: torch.Tensor) -> None:
        self.stale.update(i for i, r in enumerate(self.rows) if r == row)
        self.index.add(np.ascontiguousarray(vector.detach().float().numpy().reshape(1, -1)))
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
        for b in range(len(ids)):
            j = 0
            for s, i in zip(scores[b], ids[b]):
                if i < 0 or i in self.stale or self.rows[i] in dropped[b]:
                    continue
                out_s[b, j], out_r[b, j] = s, self.rows[i]
                j += 1
                if j == n:
                    break
            if j < n:  # fewer found than asked: the tail keeps -inf and is cut by the caller
                out_r[b, j:] = -1
        return torch.from_numpy(out_s), torch.from_numpy(out_r)


def make_retrieval(kind: str, items: torch.Tensor):
    if kind == "exact":
        return ExactRetrieval(items)
    if kind == "faiss":
        try:
            return FaissRetrieval(items)
        except ImportError:
            raise ValueError("retrieval: faiss needs faiss-cpu: pip install 'distilrec[faiss]'") from None
    raise ValueError(f"retrieval must be 'exact' or 'faiss', not {kind!r}")


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
