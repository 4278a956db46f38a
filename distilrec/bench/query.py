"""``distilrec bench query``: a free-text query for a user without history, against popularity.

    distilrec bench query --dataset movielens:ml-latest-small --encoder minilm \
        --output bench-out
    # → bench-out/query.json, query.md

On the leave-one-out split of ``docs/evaluation.md`` (:func:`training.pipeline.load_split`, the pipeline's),
every user is treated as a cold start: no history is given, so nothing is removed and every item of
the catalogue is ranked. The user's query is the genres of their held-out item (``"Comedy Drama"``,
from the item text by :func:`distilrec.catalog.parse_attributes`); users whose held-out item has no
genre are skipped and counted. Two rankings are compared on the same users:

- **popularity**: the items' interaction counts in the histories the stage allows (train +
  validation for the test, train for the validation), ties to the lower item row;
- **query**: :func:`distilrec.query.blend_query` of :func:`~distilrec.query.popularity_base` of those
  counts and :func:`~distilrec.query.query_sims` of the query's embedding to the items' text
  embeddings, at the default weight :data:`~distilrec.query.QUERY_WEIGHT` and a few others.

HR@10 and NDCG@10 follow ``docs/evaluation.md``; each query row carries the paired bootstrap interval of its
difference to popularity (users resampled with replacement, the same users for both rankings). The
query is made from the held-out item's own genres, so the figures say how well the blend finds an
item that matches a stated taste, an optimistic stand-in for a user's own words.

Item text embeddings come from :func:`training.pipeline.item_embeddings` (``embed_texts`` with its
content-hash cache under ``WORKDIR/cache``, as the pipeline caches them under ``OUT/cache``: a
pipeline's output folder as ``--workdir`` reuses its embeddings); the queries are embedded by the same
encoder (:class:`distilrec.text.TextEncoder`).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from distilrec.query import QUERY_WEIGHT, blend_query, popularity_base, query_sims, query_text_from_attributes

K = 10
WEIGHTS = (0.25, 0.5, 0.75, 1.0)
STAGES = ("test", "val")


def paired_difference(a: np.ndarray, b: np.ndarray, resamples: int = 1000, seed: int = 0,
                      level: float = 0.95) -> dict[str, float]:
    """Mean of ``a`` minus mean of ``b`` (per-user figures of the same users, e.g. hits) with a paired
    bootstrap percentile interval: each resample draws users with replacement, the same for both.
    Returns ``{"diff", "low", "high"}``.

    >>> out = paired_difference(np.array([1.0, 1, 0, 1]), np.array([0.0, 1, 0, 0]), resamples=200)
    >>> out["diff"], out["low"] >= 0
    (0.5, True)
    """
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.ndim != 1 or not len(d):
        raise ValueError(f"paired_difference needs per-user figures of the same users: got {np.shape(a)}, {np.shape(b)}")
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, resamples, 100):  # 100 resamples at a time bounds the memory
        idx = rng.integers(0, len(d), size=(min(100, resamples - start), len(d)))
        means.append(d[idx].mean(1))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(np.concatenate(means), [tail, 100 - tail])
    return {"diff": round(float(d.mean()), 4), "low": round(float(low), 4), "high": round(float(high), 4)}


def full_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each target when every item is ranked by ``scores`` ``(N,)``, higher first
    (nothing removed; ties: the lower item row first, as :func:`distilrec.metrics.rank_of_targets`).
    One stable sort, whatever the number of targets. ``scores`` must not hold NaN.

    >>> full_ranks(np.array([0.1, 0.9, 0.5, 0.9]), np.array([3, 0, 1])).tolist()
    [1, 3, 0]
    """
    scores = np.asarray(scores, dtype=np.float64)
    position = np.empty(len(scores), dtype=np.int64)
    position[np.argsort(-scores, kind="stable")] = np.arange(len(scores))
    return position[np.asarray(targets, dtype=np.int64)]


def user_queries(titles: Sequence[str], texts: Sequence[str], targets: np.ndarray) -> list[str]:
    """Each user's query: the genres of their target item (``""`` where it has none)."""
    from distilrec.catalog import parse_attributes

    return [query_text_from_attributes(parse_attributes(titles[t], texts[t])) for t in np.asarray(targets).tolist()]


def evaluate_stage(split, stage: str, titles: Sequence[str], texts: Sequence[str], item_emb: np.ndarray,
                   encode, weights: Sequence[float], resamples: int, seed: int) -> dict[str, Any]:
    """Popularity and the query blend at each weight on one stage's targets ("test" or "val"), every
    user without history; ``encode(texts) -> (M, d)`` embeds the queries."""
    from distilrec.baselines import Popularity
    from distilrec.metrics import user_ndcg

    n_items = len(item_emb)
    targets = split.targets(stage)
    counts = Popularity.fit(split.histories(stage), n_items).counts.astype(np.float64)
    queries = user_queries(titles, texts, targets)
    keep = np.array([bool(q) for q in queries], dtype=bool)
    users = np.flatnonzero(keep)
    targets = targets[users]
    queries = [queries[u] for u in users]
    unique = sorted(set(queries))
    q_emb = encode(unique) if unique else np.zeros((0, item_emb.shape[1]), np.float32)
    index = {q: j for j, q in enumerate(unique)}
    which = np.array([index[q] for q in queries], dtype=np.int64)

    def figures(ranks: np.ndarray) -> dict[str, np.ndarray]:
        return {f"hr@{K}": (ranks < K).astype(np.float64), f"ndcg@{K}": user_ndcg(ranks, K)}

    pop = figures(full_ranks(counts, targets))
    rows: dict[str, dict[str, Any]] = {
        "popularity": {"ranking": "popularity", "weight": None,
                       **{m: round(float(v.mean()), 4) if len(v) else None for m, v in pop.items()}}}
    base = popularity_base(counts)
    kept = {}
    ranks = {float(w): np.zeros(len(targets), dtype=np.int64) for w in weights}
    for j in range(len(unique)):  # one query at a time: its similarities, then every weight
        members = np.flatnonzero(which == j)
        sims = query_sims(q_emb[j], item_emb)
        for w in weights:
            ranks[float(w)][members] = full_ranks(blend_query(base, sims, w), targets[members])
    for w in weights:
        per_user = kept[float(w)] = figures(ranks[float(w)])
        row: dict[str, Any] = {"ranking": "query", "weight": float(w),
                               **{m: round(float(v.mean()), 4) if len(v) else None for m, v in per_user.items()}}
        if len(targets):
            row["minus_popularity"] = {m: paired_difference(per_user[m], pop[m], resamples, seed) for m in per_user}
        rows[f"query w={w:g}"] = row
    return {"users": int(len(split.train)), "users_evaluated": int(len(users)),
            "users_skipped_no_genre": int((~keep).sum()), "distinct_queries": len(unique),
            "example_queries": unique[:5], "rows": rows, "per_user": kept}


def weight_choice(stage: dict[str, Any], default: float, resamples: int, seed: int) -> dict[str, Any]:
    """The reported weight with the best validation NDCG@10 (ties: the default, then the lower
    weight), and its paired difference to the default weight on the validation users. It says whether
    the validation split argues for another default; the default itself is not changed here."""
    rows = {r["weight"]: r for r in stage["rows"].values() if r["weight"] is not None}
    best = max(rows, key=lambda w: (rows[w][f"ndcg@{K}"] or 0.0, w == default, -w))
    out: dict[str, Any] = {"default": default, "validation_best": best}
    if stage["per_user"] and best != default:
        a, b = stage["per_user"][best], stage["per_user"][default]
        out["best_minus_default_val"] = {m: paired_difference(a[m], b[m], resamples, seed) for m in a}
    return out


def run_query_bench(dataset: str, encoder: str, output: str, weights: Sequence[float] = WEIGHTS,
                    resamples: int = 1000, seed: int = 0, workdir: str | None = None,
                    command: str = "") -> dict[str, Any]:
    """Evaluate the query blend against popularity for users without history (module docstring) on
    ``dataset`` (a ``load_dataset`` spec) with the text ``encoder`` (``minilm``, ``tiny``, a folder
    or a hub id). Writes ``OUTPUT/query.json`` and ``OUTPUT/query.md``; returns the result.

    ``weights`` are the query weights reported (:data:`~distilrec.query.QUERY_WEIGHT` is always
    among them); ``resamples`` and ``seed`` set the paired bootstrap; ``workdir`` holds the embedding
    cache (``WORKDIR/cache``; default: ``output`` when local). Raises
    :class:`training.pipeline.DatasetError` for a dataset that cannot be read,
    :class:`distilrec.text.EncoderLoadError` for an encoder that cannot be loaded, ``ValueError`` for a
    weight outside [0, 1]."""
    from distilrec.bench.report import write_tables
    from distilrec.bench.serve import machine_info
    from distilrec.config import cache_home
    from distilrec.text import TextEncoder
    from training.pipeline import item_embeddings, load_split

    weights = sorted({float(w) for w in weights} | {QUERY_WEIGHT})
    bad = [w for w in weights if not 0.0 <= w <= 1.0]
    if bad:
        raise ValueError(f"query weights must be in [0, 1]: {bad}")
    info = machine_info()
    if workdir is None:
        workdir = str(cache_home() / "bench-query") if "://" in output else output
    work = Path(workdir).expanduser().resolve()
    work.mkdir(parents=True, exist_ok=True)
    ds, split = load_split(dataset)
    t0 = time.perf_counter()
    item_emb, encoder_path = item_embeddings(ds, encoder, work)
    item_s = time.perf_counter() - t0
    item_emb = item_emb / np.clip(np.linalg.norm(item_emb, axis=1, keepdims=True), 1e-12, None)
    t0 = time.perf_counter()
    enc = TextEncoder(encoder_path)
    load_s = time.perf_counter() - t0
    stages = {stage: evaluate_stage(split, stage, ds.titles, ds.texts, item_emb, enc.encode, weights, resamples, seed)
              for stage in STAGES}
    choice = weight_choice(stages["val"], QUERY_WEIGHT, resamples, seed)
    for s in stages.values():
        s.pop("per_user")
    result = {
        "benchmark": "query", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command, "machine": info,
        "dataset": {"name": ds.name, "users": ds.n_users, "items": ds.n_items, "interactions": ds.n_interactions},
        "encoder": {"name": encoder, "path": encoder_path, "dim": int(item_emb.shape[1]),
                    "item_embedding_s": round(item_s, 1), "load_s": round(load_s, 1)},
        "protocol": "leave-one-out by time (docs/evaluation.md); no history given, every item ranked; the query is the "
                    "genres of the user's held-out item; popularity counts from the stage's histories "
                    "(train + validation for the test, train for the validation)",
        "k": K, "default_weight": QUERY_WEIGHT, "weights": weights,
        "bootstrap": {"resamples": resamples, "seed": seed, "level": 0.95, "of": "query minus popularity, paired"},
        "stages": stages, "weight_choice": choice,
    }
    write_tables(output, "query", render_query_markdown(result), result)
    return result


def _row_line(name: str, row: dict[str, Any], default: float) -> str:
    def cell(metric: str) -> str:
        v = row[metric]
        return "-" if v is None else f"{v:.4f}"

    def diff(metric: str) -> str:
        d = row.get("minus_popularity", {}).get(metric)
        return "" if d is None else f"{d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"

    label = "popularity" if row["weight"] is None else \
        f"query, w = {row['weight']:g}" + (" (default)" if row["weight"] == default else "")
    return f"| {label} | {cell(f'hr@{K}')} | {diff(f'hr@{K}')} | {cell(f'ndcg@{K}')} | {diff(f'ndcg@{K}')} |"


def render_query_markdown(result: dict[str, Any]) -> str:
    """The Markdown tables of a :func:`run_query_bench` result (test, then validation)."""
    d, e, m, b = result["dataset"], result["encoder"], result["machine"], result["bootstrap"]
    lines = [f"# Free-text query for a user without history: {d['name']}", "",
             f"`{result['command']}`" if result["command"] else "", "",
             f"{result['date']}; {m.get('cpu_model', '?')}, nproc {m.get('nproc')}; encoder {e['name']} "
             f"({e['dim']} dims); {d['users']:,} users, {d['items']:,} items. {result['protocol']}. "
             f"Intervals: paired bootstrap {int(b['level'] * 100)} % over users ({b['resamples']} resamples, "
             f"seed {b['seed']}) of query minus popularity.", ""]
    for stage, title in (("test", "Test"), ("val", "Validation")):
        s = result["stages"][stage]
        lines += [f"## {title} ({s['users_evaluated']:,} users evaluated, {s['users_skipped_no_genre']} skipped: "
                  f"held-out item without genre; {s['distinct_queries']} distinct queries)", "",
                  f"| ranking | HR@{K} | query − popularity | NDCG@{K} | query − popularity |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [_row_line(name, row, result["default_weight"]) for name, row in s["rows"].items()]
        lines.append("")
    c = result.get("weight_choice")
    if c:
        line = (f"Weight: the default w = {c['default']:g} was fixed before measuring. Among the reported weights, "
                f"validation NDCG@{K} is best at w = {c['validation_best']:g}")
        d = c.get("best_minus_default_val")
        if d:
            line += "; its paired difference to the default on the validation users: " + ", ".join(
                f"{m.upper()} {v['diff']:+.4f} [{v['low']:+.4f}, {v['high']:+.4f}]" for m, v in d.items())
        lines += [line + ".", ""]
    return "\n".join(lines)
