"""What one serving replica does with a request, as plain library calls (no Ray).

The ingress replica holds one :class:`ServingBundle` per model version: the catalogue (titles,
attributes, text embeddings, popularity, co-occurrence graph), the users' histories from the
artifact, and, when it scores in process, a :class:`ModelScorer`. A request then runs

1. :func:`user_features`: the user's history (artifact, then the event store, then the request),
2. :meth:`ModelScorer.score`: one tensor batch for many concurrent requests, retrieval of candidates,
3. :func:`rank` / :func:`popular` / :func:`fallback`: drop seen and excluded items, filters, MMR
   diversity, explanations, and the co-occurrence / popularity answers that need no model.

A :class:`ModelScorer` is also what the optional Scorer deployment holds; calls to it carry
:class:`ScoreRequest` and return :class:`ScoreResult`. Both exchange item **ids**, never model rows, so
a scorer and an ingress that are on different model versions for the moment of a swap still give a
valid answer (an id one side does not know is left out).

>>> import numpy as np
>>> from distilrec.catalog import Catalog
>>> cat = Catalog(["a", "b", "c"], ["A", "B", "C"], [{}, {}, {}], np.eye(3, dtype=np.float32), [[0, 1], [0, 1], [2]])
>>> [it["item_id"] for it in popular(cat, exclude=["a"], k=2)]
['b', 'c']
>>> [it["item_id"] for it in rank(cat, ["a", "c", "b"], [3.0, 2.0, 1.0], history=["a"], exclude=[], k=2)]
['c', 'b']
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch

from distilrec.artifacts import Artifact
from distilrec.catalog import Catalog, HistoryLog
from distilrec.models import pad_histories
from distilrec.query import QUERY_WEIGHT, blend_query, popularity_base, query_sims
from distilrec.ranking import Explainer, cooccurrence_ranking, mmr, most_popular, passes
from distilrec.retrieval import ExactRetrieval, RetrievalChoice, impute_item_vectors, make_retrieval
from distilrec.stores import EventStore, EventStoreError, NewItem, StoredEvent

DEFAULT_CANDIDATES = 50  # items retrieved per request (k * MMR_POOL: what MMR picks from at k = 10)
DEFAULT_K = 10
MMR_POOL = 5  # MMR picks k items from the best k * MMR_POOL candidates
WIDE = 20  # with filters, 20 times more candidates: the filters drop most of them
STORED_HISTORY_LIMIT = 1000  # stored events read per request (all of them are dropped as seen)
RECENT = 50  # the most recent history items that explanations and the co-occurrence fallback read


# ----------------------------------------------------------------------------------------- scoring

@dataclass(frozen=True, slots=True)
class ScoreRequest:
    """One request to score: ``history`` item ids, oldest first; ``timestamps`` unix seconds aligned with
    them (``None``: no time features); ``n`` candidates wanted besides the history and ``exclude``
    (item ids never returned: neither are among the candidates); ``sync`` the event store's
    ``(items_seq, reload_generation)`` the caller saw (a scorer that is behind catches up first)."""

    history: tuple[str, ...]
    timestamps: tuple[int, ...] | None
    n: int
    sync: tuple[int, int] | None = None
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ScoreResult:
    """Candidates in descending score order: ``item_ids`` and ``scores`` (the model's, same length);
    ``model_version`` of the model that scored; ``batch`` requests scored together, ``batch_ms`` the
    batch's time in milliseconds."""

    item_ids: list[str]
    scores: list[float]
    model_version: str
    batch: int = 1
    batch_ms: float = 0.0


@dataclass
class ModelScorer:
    """A model (student or teacher) and retrieval over its item vectors, with the items added at
    serving time. Holds no model code: it calls ``user_vector``, ``item_vectors`` and
    ``text_item_vectors`` of the artifact's model.

    New items (``POST /v1/items``) get a vector from their text alone: the model's text vector plus the
    learnt id component of the trained items nearest in text (:func:`distilrec.retrieval.impute_item_vectors`,
    ``neighbours`` of them). They join retrieval but are left out of a history the model reads (they
    have no trained row)."""

    version: str
    manifest: dict
    model: torch.nn.Module
    item_ids: list[str]
    index: dict[str, int]
    retrieval: object
    n_trained: int
    text_dim: int
    pad: int
    max_len: int
    trained_text_emb: torch.Tensor | None = None  # (N, text_dim)
    trained_id_part: torch.Tensor | None = None   # (N, D): item vector minus its text vector
    neighbours: int = 5
    device: str = "cpu"
    skipped: list[str] = field(default_factory=list)

    @classmethod
    def build(cls, art: Artifact, which: str = "student", retrieval: str | RetrievalChoice = "auto",
              device: str = "cpu") -> "ModelScorer":
        """From an artifact; ``which``: ``student`` | ``teacher``; ``retrieval``: ``exact`` | ``faiss`` |
        ``auto`` or a :class:`~distilrec.retrieval.RetrievalChoice` (``auto``: faiss from its
        ``faiss_min_items`` on; ``retrieval.kind`` says which was taken); ``device``: a torch device
        (``cuda`` for a Scorer replica with a GPU; faiss search stays on the CPU). Raises ``ValueError``
        when the artifact lacks the model or the model gives non-finite scores.

        The item vectors are held once: exact retrieval searches the model's own cached table, and new
        items are imputed from the model's text embeddings and id weights (views, no copies)."""
        model = art.teacher if which == "teacher" else art.student
        if model is None:
            raise ValueError(f"the artifact has no {which} model")
        model = model.eval().to(device)
        with torch.no_grad():
            vectors = model.item_vectors()  # (N, D), the model's cached table
            first = pad_histories([[0]], model.cfg.n_items, model.cfg.max_len).to(device)
            probe = model.user_vector(first) @ vectors.T
        if not torch.isfinite(probe).all() or not torch.isfinite(vectors).all():
            raise ValueError("the model produces non-finite scores")
        ids = list(art.items.item_ids)
        text_dim = int(getattr(model.cfg, "text_dim", 0))
        emb = model.item_text_embeddings() if text_dim else None
        id_part = model.item_id_vectors() if text_dim else None
        search = make_retrieval(retrieval, vectors)  # faiss copies the vectors into its index, on the CPU
        return cls(art.version, art.manifest, model, ids, dict(art.items.index), search,
                   len(ids), text_dim, model.cfg.n_items, model.cfg.max_len, emb, id_part, device=device)

    def _search_device(self, x: torch.Tensor) -> torch.Tensor:
        return x if isinstance(self.retrieval, ExactRetrieval) else x.cpu()

    def add_items(self, items: list[NewItem]) -> None:
        """Give new items a vector from their text embedding and add them to retrieval."""
        if not self.text_dim:
            self.skipped.extend(it.item_id for it in items)
            return
        fresh = [it for it in items if it.embedding.shape == (self.text_dim,)
                 and not (it.item_id in self.index and self.index[it.item_id] < self.n_trained)]
        if not fresh:
            return
        emb = torch.from_numpy(np.stack([it.embedding for it in fresh]).astype(np.float32)).to(self.device)
        with torch.no_grad():
            vecs = self._search_device(impute_item_vectors(self.model.text_item_vectors(emb), emb,
                                                           self.trained_text_emb, self.trained_id_part,
                                                           self.neighbours))
        for it, v in zip(fresh, vecs):
            row = self.index.get(it.item_id)
            if row is None:
                self.index[it.item_id] = len(self.item_ids)
                self.item_ids.append(it.item_id)
                self.retrieval.add(v.unsqueeze(0))
            else:
                self.retrieval.replace(row, v)

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        """Score ``B`` requests as one ``(B, L)`` tensor batch and retrieve each one's best ``n``
        candidates (at most the catalogue), none of them in its history or ``exclude``. The model reads
        the history items it has a row for (items added at serving time have none)."""
        t0 = time.perf_counter()
        rows, stamps, want, drop = [], [], [], []
        index, trained, max_len = self.index, self.n_trained, self.max_len
        for r in requests:
            seen = [index.get(i, -1) for i in r.history]  # one lookup per item; -1: not in the catalogue
            drop.append(list({*seen, *(index.get(i, -1) for i in r.exclude)} - {-1}))
            times = r.timestamps or (0,) * len(r.history)
            # The model reads the last max_len trained items: walk back from the end, stop there.
            kept_rows, kept_times = [], []
            for j in range(len(seen) - 1, -1, -1):
                if 0 <= seen[j] < trained:
                    kept_rows.append(seen[j])
                    kept_times.append(times[j])
                    if len(kept_rows) == max_len:
                        break
            rows.append(kept_rows[::-1])
            stamps.append(kept_times[::-1])
            want.append(max(1, min(int(r.n), len(self.retrieval))))
        hist = pad_histories(rows, self.pad, self.max_len).to(self.device)
        times = pad_histories(stamps, 0, self.max_len).to(self.device)
        with torch.inference_mode():  # no autograd bookkeeping on the request path
            users = self.model.user_vector(hist, times)  # (B, D)
            scores, top = self.retrieval.search(self._search_device(users), max(want), drop)
            scores, top = scores.cpu(), top.cpu()
        ms = (time.perf_counter() - t0) * 1000
        out = []
        ids = self.item_ids
        for i, n in enumerate(want):
            s, t = scores[i, :n].tolist(), top[i, :n].tolist()
            keep = [(ids[r], v) for r, v in zip(t, s) if r >= 0 and math.isfinite(v)]
            out.append(ScoreResult([k for k, _ in keep], [v for _, v in keep], self.version, len(requests), ms))
        return out


def candidates_wanted(candidates: int, k: int, filtered: bool) -> int:
    """Candidates to retrieve for a request besides its history and exclusions: ``max(candidates, k)``,
    ``WIDE`` times more with filters (they drop most).

    >>> candidates_wanted(50, 10, False), candidates_wanted(50, 10, True)
    (50, 1000)
    """
    return max(candidates, k) * (WIDE if filtered else 1)


# ----------------------------------------------------------------------------------------- bundle

class UserHistories(Mapping[str, list[str]]):
    """Each known user's trained history, ``{user_id: [item id, …]}`` oldest first, held as catalogue
    rows (:class:`~distilrec.catalog.HistoryLog`, 4 bytes an interaction) and unix seconds (int64, 8
    bytes); a user's list of ids is made when it is read. :attr:`times` is the same users' seconds.

    >>> h = UserHistories.build({"u": ["b", "x", "a"]}, {"u": [1, 2, 3]}, {"a": 0, "b": 1}, ["a", "b"])
    >>> h["u"], h.times["u"], "u" in h, len(h)
    (['b', 'a'], [1, 3], True, 1)
    """

    def __init__(self, users: dict[str, int], log: HistoryLog, seconds: np.ndarray, item_ids: Sequence[str]):
        self.users, self.log, self.seconds, self.item_ids = users, log, seconds, item_ids
        self.times = _UserTimes(self)

    @classmethod
    def build(cls, histories: Mapping[str, Sequence[str]], times: Mapping[str, Sequence[int]] | None,
              index: Mapping[str, int], item_ids: Sequence[str]) -> "UserHistories":
        """From ``{user: [item id, …]}`` and ``{user: [unix s, …]}`` (missing: 0); ids not in ``index``
        (the catalogue's rows) are left out."""
        import itertools

        times = times or {}
        users = {u: k for k, u in enumerate(histories)}
        lengths = np.fromiter((len(h) for h in histories.values()), dtype=np.int64, count=len(users))
        total = int(lengths.sum())
        rows = np.fromiter((index.get(i, -1) for h in histories.values() for i in h), dtype=np.int64, count=total)
        seconds = np.fromiter(itertools.chain.from_iterable(  # each user's seconds, 0 where missing
            itertools.islice(itertools.chain(times.get(u) or (), itertools.repeat(0)), len(h))
            for u, h in histories.items()), dtype=np.int64, count=total)
        kept = rows >= 0
        before = np.zeros(total + 1, dtype=np.int64)
        np.cumsum(kept, out=before[1:])
        ends = np.cumsum(lengths)
        starts = np.zeros(len(users) + 1, dtype=np.int64)
        starts[1:] = before[ends]  # kept positions before each user's end
        return cls(users, HistoryLog(rows[kept].astype(np.int32), starts), seconds[kept], item_ids)

    def _span(self, user: str) -> tuple[int, int]:
        k = self.users[user]
        return int(self.log.starts[k]), int(self.log.starts[k + 1])

    def __getitem__(self, user: str) -> list[str]:
        lo, hi = self._span(user)
        ids = self.item_ids
        return [ids[r] for r in self.log.rows[lo:hi].tolist()]

    def __contains__(self, user: object) -> bool:
        return user in self.users

    def __iter__(self) -> Iterator[str]:
        return iter(self.users)

    def __len__(self) -> int:
        return len(self.users)


class _UserTimes(Mapping[str, list[int]]):
    def __init__(self, histories: UserHistories):
        self.h = histories

    def __getitem__(self, user: str) -> list[int]:
        lo, hi = self.h._span(user)
        return self.h.seconds[lo:hi].tolist()

    def __contains__(self, user: object) -> bool:
        return user in self.h.users

    def __iter__(self) -> Iterator[str]:
        return iter(self.h.users)

    def __len__(self) -> int:
        return len(self.h.users)


@dataclass
class ServingBundle:
    """Everything the ingress needs of one model version, held once per replica.

    ``histories`` / ``times``: each user's trained history (item ids, unix seconds), oldest first, items
    outside the catalogue removed (:class:`UserHistories`: arrays, read as lists); ``scorer``: the
    in-process :class:`ModelScorer`, or ``None`` when a Scorer deployment scores; ``encoder_uri``: the
    artifact's text encoder (for ``POST /v1/items`` and queries, loaded by the TextEncoder deployment);
    ``text_dim``: width of its embeddings (0 = none)."""

    version: str
    manifest: dict
    catalog: Catalog
    histories: Mapping[str, list[str]]
    times: Mapping[str, list[int]]
    attribute_names: set[str]
    scorer: ModelScorer | None
    encoder_uri: str | None
    text_dim: int

    @classmethod
    def build(cls, art: Artifact, scorer_model: str | None = "student",
              retrieval: str | RetrievalChoice = "auto") -> "ServingBundle":
        """From an artifact (``with_histories=True``); ``scorer_model=None``: no in-process model;
        ``retrieval``: as :meth:`ModelScorer.build`. Nothing of ``art`` is kept but what serving reads
        (the item ids, the model that scores), so the rest is freed with it."""
        ids = art.items.item_ids
        hist = UserHistories.build(art.histories, art.history_times, art.items.index, ids)
        cat = Catalog(ids, art.items.titles, art.items.attributes, art.items.text_emb, hist.log)
        hist.item_ids = cat.item_ids  # its first rows are the artifact's, never replaced
        scorer = ModelScorer.build(art, scorer_model, retrieval) if scorer_model else None
        text_dim = int(art.items.text_emb.shape[1]) if art.items.text_emb.ndim == 2 else 0
        return cls(art.version, art.manifest, cat, hist, hist.times, cat.attribute_names(), scorer,
                   art.encoder_uri, text_dim)

    def add_items(self, items: list[NewItem]) -> None:
        for it in items:
            self.catalog.add(it.item_id, it.title, it.attributes, it.embedding)
            self.attribute_names.update(it.attributes)
        if self.scorer is not None:
            self.scorer.add_items(items)

    def is_trained(self, item_id: str) -> bool:
        row = self.catalog.index.get(item_id)
        return row is not None and row < self.catalog.n_trained


# --------------------------------------------------------------------------------------- features

@dataclass
class Features:
    """A user's history for one request: ``items`` (ids, time order) with ``timestamps`` (unix s;
    request items get now); ``unknown_items`` of the request's history (never silently dropped);
    ``store_ok`` false when the event store could not be read (the answer lacks the stored events and
    is degraded); ``stored``: the user's stored events as read (for the event-to-effect metric)."""

    items: list[str]
    timestamps: list[int]
    known_user: bool
    unknown_items: list[str]
    store_ok: bool
    stored: list[StoredEvent]


def user_features(bundle: ServingBundle, store: EventStore | None, user_id: str | None,
                  history: Sequence[str], store_ok: bool = True, limit: int = STORED_HISTORY_LIMIT) -> Features:
    """The history from the artifact, then the user's most recent ``limit`` stored events (items that
    left the catalogue skipped), then the request's ``history``. ``store=None`` or ``store_ok=False``
    skips the store (and the answer is degraded)."""
    cat = bundle.catalog
    items = list(bundle.histories.get(user_id, ())) if user_id is not None else []
    times = list(bundle.times.get(user_id, ())) if user_id is not None else []
    known = user_id is not None and user_id in bundle.histories
    stored: list[StoredEvent] = []
    if user_id is not None and store is not None and store_ok:
        try:
            stored = store.events(user_id, limit)
        except EventStoreError:
            store_ok = False
        kept = [e for e in stored if e.item_id in cat.index]
        items += [e.item_id for e in kept]
        times += [e.timestamp for e in kept]
        known = known or bool(stored)
    now = int(time.time())
    unknown = []
    for item in history:
        if item in cat.index:
            items.append(item)
            times.append(now)
        else:
            unknown.append(item)
    return Features(items, times, known, unknown, store_ok, stored)


# ---------------------------------------------------------------------------------------- ranking

def _items(cat: Catalog, ranked: list[tuple[int, float]], history: list[int], reason: str | None = None) -> list[dict]:
    """``{"item_id", "title", "score", "explanation"}`` per ranked row; ``reason`` replaces the
    history-based explanation (cold start, query)."""
    why = None if reason else Explainer(history, cat.graph, cat.attributes, cat.titles, values=cat.values)
    return [{"item_id": cat.item_ids[r], "title": cat.titles[r], "score": round(float(s), 6),
             "explanation": reason or why(r)} for r, s in ranked]


def _top_up(cat: Catalog, ranked: list[tuple[int, float]], hist: list[int], drop: set[int], k: int,
            filters: dict | None) -> list[tuple[int, float]]:
    """Fill ``ranked`` up to ``k`` from the co-occurrence / popularity ranking, below every score in it."""
    if len(ranked) >= k:
        return ranked
    taken = drop | {r for r, _ in ranked}
    low = min((s for _, s in ranked), default=0.0)
    more = cooccurrence_ranking(hist, cat.graph, cat.popularity, taken, k - len(ranked),
                                keep=lambda r: passes(cat.attributes[r], filters))
    return ranked + [(r, low - 1e-3 * (i + 1)) for i, (r, _) in enumerate(more)]


def rank(cat: Catalog, item_ids: Sequence[str], scores: Sequence[float], history: Sequence[str],
         exclude: Sequence[str], k: int, filters: dict | None = None, diversity: float = 0.0) -> list[dict]:
    """Candidates (``item_ids`` with ``scores``, descending) → the top ``k`` unseen, unexcluded,
    filtered items, MMR re-ranked for ``diversity`` (0 = off), explained; topped up from the
    co-occurrence / popularity ranking when filters leave fewer than ``k``."""
    seen = set(history).union(exclude)  # the scorer left them out already; a version swap may differ
    pool = []
    limit = k * (MMR_POOL if diversity > 0 else 1)
    for item, s in zip(item_ids, scores):
        r = cat.index.get(item)
        if r is not None and item not in seen and (not filters or passes(cat.attributes[r], filters)):
            pool.append((r, float(s)))
            if len(pool) == limit:
                break
    ranked = mmr(pool, cat.text_emb, k, diversity)
    recent = cat.rows(history[-RECENT:])  # what the explanations and the top-up read
    if len(ranked) < k:
        ranked = _top_up(cat, ranked, recent, set(cat.rows(seen)), k, filters)
    return _items(cat, ranked, recent)


def popular(cat: Catalog, exclude: Sequence[str], k: int, filters: dict | None = None) -> list[dict]:
    """Cold start: the most popular items (share of all interactions), filtered."""
    drop = set(cat.rows(exclude))
    if filters:
        ranked = cooccurrence_ranking([], cat.graph, cat.popularity, drop, k,
                                      keep=lambda r: passes(cat.attributes[r], filters))
    else:
        ranked = most_popular(cat.popularity, drop, k)
    return _items(cat, ranked, [], reason="popular with everyone")


def fallback(cat: Catalog, history: Sequence[str], exclude: Sequence[str], k: int,
             filters: dict | None = None) -> list[dict]:
    """Without the model: items often watched with the user's recent history, then popular ones."""
    hist = cat.rows(history)
    ranked = cooccurrence_ranking(hist, cat.graph, cat.popularity, set(hist) | set(cat.rows(exclude)), k,
                                  keep=(lambda r: passes(cat.attributes[r], filters)) if filters else None)
    return _items(cat, ranked, hist)


def rank_with_query(cat: Catalog, query_vec: np.ndarray, query: str, item_ids: Sequence[str] | None,
                    scores: Sequence[float] | None, history: Sequence[str], exclude: Sequence[str], k: int,
                    filters: dict | None = None, diversity: float = 0.0, weight: float = QUERY_WEIGHT,
                    pool: int = DEFAULT_CANDIDATES) -> list[dict]:
    """A free-text query blended with the model (:func:`distilrec.query.blend_query`, ``weight`` on the
    query): the pool is the model's candidates (``item_ids`` / ``scores``) and the ``pool`` items most
    similar to the query; without model candidates (no history) the base score is popularity over the
    whole catalogue. ``query_vec`` ``(text_dim,)`` is the query's text embedding."""
    sims_all = query_sims(np.asarray(query_vec, dtype=np.float32), cat.text_emb)  # (N,)
    hist = cat.rows(history)
    drop = set(hist) | set(cat.rows(exclude))
    if item_ids is None:
        rows = np.arange(len(cat))
        base = popularity_base(cat.popularity)
    else:
        model = {cat.index[i]: float(s) for i, s in zip(item_ids, scores or ()) if i in cat.index}
        near = np.argpartition(-sims_all, min(pool, len(sims_all) - 1))[:pool] if len(sims_all) else []
        rows = np.array(sorted(set(model) | {int(r) for r in near}), dtype=np.int64)
        base = np.array([model.get(int(r), -np.inf) for r in rows], dtype=np.float64)
    blended = blend_query(base, sims_all[rows], weight)
    order = np.argsort(-blended, kind="stable")
    limit = k * (MMR_POOL if diversity > 0 else 1)
    ranked = []
    for j in order.tolist():
        r = int(rows[j])
        if r not in drop and (not filters or passes(cat.attributes[r], filters)):
            ranked.append((r, float(blended[j])))
            if len(ranked) == limit:
                break
    ranked = _top_up(cat, mmr(ranked, cat.text_emb, k, diversity), hist, drop, k, filters)
    reason = f"matches your query {query[:60]!r}"
    return _items(cat, ranked, hist, reason=None if hist else reason)
