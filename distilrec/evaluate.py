"""Evaluation: Popularity, EASE, teacher and student in one table (``docs/evaluation.md``).

Quality is full-ranking NDCG@10 / HR@10 on the test targets; cost is parameters, multiply-accumulates
per scored candidate, and the time to score one request of 1,000 candidates on one CPU thread, alone
and within a batch of requests (as the scorer deployment batches them under load).
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import torch

from distilrec.baselines import EASE, EASE_LAMBDAS, CatalogueTooLarge, Popularity
from distilrec.data import Dataset, Split
from distilrec.metrics import evaluate_ranks, evaluate_scores, model_score_fn, paired_ratio, target_ranks
from distilrec.models import count_params, native_cpu_kernels
from distilrec.stats import percentile

MODEL_ORDER = ("popularity", "ease", "teacher", "student", "student_no_distill")

# The report's paired comparisons (model a, model b): a's NDCG@10 over b's, with a paired bootstrap interval.
COMPARISONS = (("teacher", "ease"), ("student", "teacher"), ("student", "student_no_distill"))


def evaluate_baselines(split: Split, n_items: int, lambdas: Sequence[float] = EASE_LAMBDAS,
                       ranks: dict[str, np.ndarray] | None = None, ease_max_items: int | None = None,
                       val_users: np.ndarray | None = None, skipped: dict[str, str] | None = None,
                       test_users: np.ndarray | None = None) -> dict[str, dict]:
    """Popularity and EASE on the test targets (of the users ``test_users``; None: every user), both
    fitted on every user's test history; EASE's λ is chosen on validation (of the users ``val_users``,
    :meth:`Split.val_sample`; None: every user). When ``ranks`` is given, each model's per-user test ranks
    are put in it under the model's name (for :func:`compare_models`).

    Above ``ease_max_items`` items EASE is not fitted (:class:`distilrec.baselines.CatalogueTooLarge`):
    it is left out of the result and its reason put in ``skipped["ease"]``. Popularity is always there."""
    test_h = split.histories("test")
    eval_h, eval_t, _ = eval_inputs(split, test_users)
    ranks = {} if ranks is None else ranks
    ranks["popularity"] = target_ranks(Popularity.fit(test_h, n_items).score, eval_h, eval_t)
    out = {"popularity": {**evaluate_ranks(ranks["popularity"]), **_no_cost()}}
    val_h, val_t = split.train, split.val_target
    if val_users is not None:
        val_h, val_t = [split.train[u] for u in val_users], val_t[val_users]
    try:
        val = {lam: evaluate_scores(EASE.fit(split.train, n_items, lam, ease_max_items).score, val_h, val_t)["ndcg@10"]
               for lam in lambdas}
    except CatalogueTooLarge as e:
        if skipped is not None:
            skipped["ease"] = str(e)
        return out
    best = max(val, key=val.get)
    ranks["ease"] = target_ranks(EASE.fit(test_h, n_items, best).score, eval_h, eval_t)
    out["ease"] = {**evaluate_ranks(ranks["ease"]), **_no_cost(), "lambda": best}
    return out


def _no_cost() -> dict:
    return {"params": None, "macs_per_candidate": None, "score_ms_p50_1000": None, "score_ms_p99_1000": None,
            "score_ms_per_request_batched": None}


def eval_inputs(split: Split, users: np.ndarray | None,
             stage: str = "test") -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray] | None]:
    """``(histories, targets, history times or None)`` of ``stage`` for the users ``users`` (indices, in
    that order; None: every user)."""
    h, t, times = split.histories(stage), split.targets(stage), split.history_times(stage)
    if users is None:
        return h, t, times
    return [h[u] for u in users], t[users], None if times is None else [times[u] for u in users]


def model_ranks(model: torch.nn.Module, split: Split, stage: str = "test",
                users: np.ndarray | None = None) -> np.ndarray:
    """Each user's rank of the ``stage`` target under ``model`` (full ranking over every item, history
    removed), for the users ``users`` (None: every user)."""
    h, t, times = eval_inputs(split, users, stage)
    return target_ranks(model_score_fn(model), h, t, times=times)


def evaluate_model(model: torch.nn.Module, split: Split, stage: str = "test") -> dict[str, float]:
    return evaluate_ranks(model_ranks(model, split, stage))


def compare_models(ranks: dict[str, np.ndarray], pairs: Sequence[tuple[str, str]] = COMPARISONS,
                   **kwargs) -> dict[str, dict]:
    """The report's ``comparisons``: for each pair ``(a, b)`` present in ``ranks``, a's NDCG@10 over
    b's with its paired bootstrap interval (:func:`distilrec.metrics.paired_ratio`, ``kwargs`` passed
    on), keyed ``"a / b"``."""
    return {f"{a} / {b}": {"a": a, "b": b, **paired_ratio(ranks[a], ranks[b], **kwargs)}
            for a, b in pairs if a in ranks and b in ranks}


def scoring_cost(model: torch.nn.Module, n_candidates: int = 1000, runs: int = 200, seed: int = 0) -> dict:
    """:func:`scoring_costs` of one model."""
    return scoring_costs({"model": model}, n_candidates, runs, seed)["model"]


BATCH = 32  # the scorer deployment's default max_batch_size (services/serve_config.yaml)


def scoring_costs(models: dict[str, torch.nn.Module], n_candidates: int = 1000, runs: int = 200,
                  seed: int = 0, batch: int = BATCH, block: int = 20) -> dict[str, dict]:
    """Parameters, MACs per candidate, and the milliseconds each model takes on one CPU thread to score
    full-length histories (timestamps a minute to an hour apart) against the same ``n_candidates``
    random candidates: p50 and p99 of one request alone (``runs`` timed runs after warm-up), and the
    p50 time per request when ``batch`` requests are scored together (``runs // 4`` timed runs); the
    percentiles by nearest rank (:func:`distilrec.stats.percentile`).

    Models are timed in turns, ``block`` requests at a time (model a's block, then b's, a's, …), so
    that a slower or busier stretch of a shared machine falls on all of them alike and their ratio
    holds. The first request of each block is not counted: it finds the caches filled by the other
    model, which a replica serving one model does not. ``block=1`` times every request right after
    the other model's (each model's data cold in the caches). PyTorch's own CPU kernels are used, as
    the scorer deployment uses them (:func:`distilrec.models.native_cpu_kernels`)."""
    if block < 1:
        raise ValueError(f"block={block}: a block holds at least one request")
    g = torch.Generator().manual_seed(seed)
    inputs = {}
    for name, model in models.items():
        model.cpu().eval()
        n, length = model.cfg.n_items, model.cfg.max_len
        hist = torch.randint(0, n, (batch, length), generator=g)
        stamps = torch.cumsum(torch.randint(60, 3600, (batch, length), generator=g), 1)
        inputs[name] = (hist, stamps, torch.randint(0, n, (n_candidates,), generator=g))

    def timed(requests: int, count: int) -> dict[str, list[float]]:
        """Milliseconds per request of ``count`` timed calls with ``requests`` histories, per model."""
        out: dict[str, list[float]] = {name: [] for name in models}
        uncounted = 1 if block > 1 else 0
        while min(len(v) for v in out.values()) < count:
            for name, model in models.items():
                hist, stamps, cands = inputs[name]
                for i in range(uncounted + min(block, count)):
                    t0 = time.perf_counter()
                    model.score(hist[:requests], cands, times=stamps[:requests])
                    if i >= uncounted:
                        out[name].append((time.perf_counter() - t0) * 1000 / requests)
        return {name: v[:count] for name, v in out.items()}

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    native = native_cpu_kernels(True)
    try:
        with torch.inference_mode():  # as the scorer deployment runs it
            timed(1, 10)  # warm-up: caches, allocator, the frozen models' cached tables
            times = timed(1, runs)
            batched = timed(batch, max(runs // 4, 1))
    finally:
        torch.set_num_threads(threads)
        native_cpu_kernels(native)
    return {name: {
        "params": count_params(model),
        "macs_per_candidate": round(float(model.macs_per_candidate(n_candidates)), 1),
        "score_ms_p50_1000": round(percentile(times[name], 50), 4),
        "score_ms_p99_1000": round(percentile(times[name], 99), 4),
        "score_ms_per_request_batched": round(percentile(batched[name], 50), 4),
    } for name, model in models.items()}


def build_report(ds: Dataset, models: dict[str, dict], extra: dict | None = None,
                 comparisons: dict[str, dict] | None = None) -> dict:
    """The ``report.json`` layout of ``DESIGN.md``, with ``comparisons`` (:func:`compare_models`)
    when given."""
    ordered = {k: models[k] for k in MODEL_ORDER if k in models}
    ordered.update({k: v for k, v in models.items() if k not in ordered})
    return {"dataset": ds.summary(), "models": ordered, **({"comparisons": comparisons} if comparisons else {}),
            **(extra or {})}


def format_table(report: dict) -> "rich.table.Table":  # noqa: F821
    """A printable table of ``report['models']``."""
    from rich.table import Table

    d, test = report["dataset"], report.get("test") or {}
    who = (f"test on a sample of {test['users']:,} users" if test.get("sample_seed") is not None else "test")
    table = Table(title=f"{d['name']}: {d['users']} users, {d['items']} items, {d['interactions']} interactions "
                        f"({who}, full ranking)")
    for col in ("model", "NDCG@10", "HR@10", "params", "MACs/cand.", "ms/1000 p50", "p99",
                f"ms/1000 in a batch of {BATCH}"):
        table.add_column(col, justify="left" if col == "model" else "right")

    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    for name, m in report["models"].items():
        table.add_row(
            name, f"{m['ndcg@10']:.4f}", f"{m['hr@10']:.4f}", fmt(m.get("params"), ","),
            fmt(m.get("macs_per_candidate"), ",.0f"), fmt(m.get("score_ms_p50_1000"), ".3f"),
            fmt(m.get("score_ms_p99_1000"), ".3f"), fmt(m.get("score_ms_per_request_batched"), ".3f"),
        )
    return table


def comparison_lines(report: dict[str, Any]) -> list[str]:
    """One line per paired comparison of ``report['comparisons']``, e.g.
    ``student / teacher: 0.96 × NDCG@10 (95% paired bootstrap interval 0.88 to 1.05, 610 users)``."""
    lines = []
    for key, c in (report.get("comparisons") or {}).items():
        ratio = "-" if c["ratio"] is None else f"{c['ratio']:.2f}"
        interval = ("no interval (too few users)" if c["low"] is None else
                    f"{c['level']:.0%} paired bootstrap interval {c['low']:.2f} to {c['high']:.2f}")
        lines.append(f"{key}: {ratio} × NDCG@10 ({interval}, {c['users']:,} users)")
    return lines


def time_line(run: dict[str, Any]) -> str:
    """``time: 24.2 min in all: text embeddings 54 s, teacher 8.4 min, …`` from a pipeline report's
    ``run`` (its wall-clock seconds in all and by stage), and ``; bf16 autocast: teacher, …`` naming
    the training stages that had epochs under bf16 autocast (the figures of a different arithmetic)."""
    def fmt(s: float) -> str:
        return f"{s / 60:.1f} min" if s >= 120 else f"{s:.0f} s"

    parts = ", ".join(f"{name.replace('_', ' ')} {fmt(s)}" for name, s in run["stage_s"].items())
    bf16 = [name.replace("_", " ") for name, e in run.get("epochs", {}).items() if e.get("bf16_epochs")]
    return f"time: {fmt(run['wall_s'])} in all: {parts}" + (f"; bf16 autocast: {', '.join(bf16)}" if bf16 else "")
