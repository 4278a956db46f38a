"""``distilrec bench scale``: training and serving cost against the log's and the catalogue's size.

    distilrec bench scale --output bench-out                        # the default sizes (hours on 2 CPUs)
    distilrec bench scale --output bench-out --parts serve --serve  # + Serve throughput at the SLO
    distilrec bench scale --output bench-out --smoke                # seconds: what CI runs
    # → bench-out/scale.json, scale.md, scale_train.png, scale_serve.png

**Training** (``--interactions`` × ``--items``, default 1M, 5M, 20M × 10k, 100k, 1M): for each point, in a
process of its own (so that its peak RSS is its own), the synthetic dataset of that size
(``synthetic:users=interactions/24,items=N``: histories of 8-40 items, read back from Parquet in bounded
memory) is split leave-one-out and one epoch of the pipeline's own training pass runs over it
(:func:`training.loop.train_epoch` on :func:`training.loop.users_loader`, with the pipeline's teacher and
loss builders and optimiser, ``loss: sampled``): the teacher, then distillation (the student learning from
that teacher). ``--item-grads`` names how the item id table trains, each point once per kind in turns
(``sparse``: the rows a step read, SparseAdam; ``dense``: every row, Adam; ``auto``: the pipeline's choice,
sparse on CPUs), so that their ratio comes from one run. One process with every CPU's thread stands for
the pipeline's Ray Train workers on one node; an epoch's cost depends on the shapes, not on what the
weights have learnt, so the weights start random and the item text embeddings are random vectors of the
tiny encoder's width (the text encoder's own cost is the pipeline's item-embedding stage, not an epoch's). ``--max-epoch-s`` stops a long epoch early and
extrapolates from its steps (the result says so). Validation is timed on ``--val-users`` users (the
pipeline validates ``val_max_users`` per epoch; the figure scales with users × items).

**Serving** (``--serve-items``, default 10k, 100k, 1M): an artifact with random-weight teacher and student
of the pipeline's shapes, ``--serve-users`` users with histories of 8-40 items (a skewed popularity) and
item text embeddings drawn around 1,000 random centres (items of a kind lie near each other, as real
text does; HNSW's recall depends on that). For each model, in a process of its own: the replica's
resident memory after :class:`~distilrec.serving.ServingBundle` is built (steady, and the peak while
loading), the build's time, and :meth:`~distilrec.serving.ModelScorer.score` per request alone and in
batches of 32 (retrieval of 50 candidates included, one thread, as a replica scores), with the retrieval
``retrieval: auto`` takes at that size; for the student also the search alone, exact against HNSW, and
HNSW's recall@100 against exact (:func:`distilrec.retrieval.recall_at`). With ``--serve``, ``bench
serve``'s machinery (:func:`distilrec.bench.serve.run_serve_bench`) measures the student-served and the
teacher-served applications behind the proxy for each artifact: throughput at the SLO, p99, replica RSS.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import statistics
import time
import traceback
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from distilrec.bench.serve import psi_cpu

MEAN_HISTORY = 24  # the synthetic generator's histories: 8 to 40 items, uniformly
TEXT_DIM = 32      # the tiny test encoder's width
CANDIDATES = 50    # items a request retrieves (the ingress's default ``candidates``)
RECALL_AT = 100
SCORER_RATIO = 5.0  # the student's scorer time per request (batched, retrieval included) ≤ 1/5 of the teacher's
LINEAR_SLOPE = 1.1  # "at most linear": the log-log slope of epoch time against interactions


@dataclass
class ScaleBenchConfig:
    """Knobs of one ``bench scale`` run; sizes are counts."""

    output: str
    parts: tuple[str, ...] = ("train", "serve")
    interactions: tuple[int, ...] = (1_000_000, 5_000_000, 20_000_000)
    items: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    serve_items: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    serve_users: int = 100_000
    stages: tuple[str, ...] = ("teacher", "distill")
    item_grads: tuple[str, ...] = ("auto",)  # TrainConfig.item_grads of each training point, in turns
    max_epoch_s: float | None = None  # stop an epoch after this long and extrapolate from its steps
    val_users: int = 1000
    batch_size: int = 32               # users per step (the pipeline's, over all its workers)
    negatives: int = 2048
    threads: int = 0                   # torch threads for training (0: every CPU)
    requests: int = 200                # timed requests (batch 1) and batches (of 32) per model
    recall_users: int = 500
    faiss_min_items: int = 100_000
    serve: bool = False
    serve_duration_s: float = 5.0
    serve_max_total_s: float = 900.0   # per artifact
    seed: int = 0
    data_dir: str | None = None        # where the synthetic datasets are written (default: the data cache)


SMOKE = dict(interactions=(4_000, 8_000), items=(300,), serve_items=(400, 1_500), serve_users=300,
             val_users=50, requests=20, recall_users=50, faiss_min_items=1_000, negatives=64, serve_duration_s=1.0)


def parse_sizes(text: str) -> tuple[int, ...]:
    """``"10k,100k,1M"`` → ``(10000, 100000, 1000000)`` (k = 10³, M = 10⁶, plain integers too).

    >>> parse_sizes("10k, 1.5M,300")
    (10000, 1500000, 300)
    """
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        mult = {"k": 1_000, "m": 1_000_000}.get(part[-1].lower(), 1)
        value = float(part[:-1] if mult > 1 else part)
        if value <= 0:
            raise ValueError(f"sizes are positive, got {part!r}")
        out.append(int(round(value * mult)))
    if not out:
        raise ValueError("no sizes given")
    return tuple(out)


def size_label(n: int) -> str:
    """``1000000`` → ``"1M"``, ``20000`` → ``"20k"``, ``1500`` → ``"1.5k"``.

    >>> [size_label(n) for n in (1_000_000, 20_000, 1_500, 300)]
    ['1M', '20k', '1.5k', '300']
    """
    for unit, div in (("M", 1_000_000), ("k", 1_000)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


# ----------------------------------------------------------------------------------------- isolation

def _child(conn, fn: Callable[..., dict], args: tuple) -> None:
    try:
        conn.send({"ok": fn(*args)})
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which records it
        conn.send({"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
    finally:
        conn.close()


def isolated(fn: Callable[..., dict], *args: Any, timeout_s: float | None = None) -> dict:
    """``fn(*args)`` in a fresh process (spawned: its memory is its own); its result, or ``{"error"}``
    when it raised, died (killed for memory, say) or ran past ``timeout_s``."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, fn, args), daemon=True)
    proc.start()
    child.close()
    got: dict | None = None
    if parent.poll(timeout_s):
        try:
            got = parent.recv()
        except EOFError:
            got = None
    proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join()
    if got is None:
        return {"error": f"the measuring process ended without a result (exit code {proc.exitcode})"
                         + (f" or ran past {timeout_s:g} s" if timeout_s else "")}
    if "error" in got:
        print(got.get("traceback", ""), flush=True)
        return {"error": got["error"]}
    return got["ok"]


def _rss_mib() -> float | None:
    from distilrec.resources import _status_kib

    kib = _status_kib("self", "VmRSS")
    return None if kib is None else round(kib / 1024, 1)


class CpuClock:
    """Context manager: this process's CPU seconds (all its threads) while open, and the share (%) of the
    wall time in which some task on the machine waited for a CPU (``cpu_wait_pct``; other work on a shared
    machine shows here). CPU seconds move less than wall seconds when the machine is shared."""

    def __enter__(self) -> "CpuClock":
        self._t, self._c, self._p = time.perf_counter(), time.process_time(), psi_cpu("total")
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self._t
        self.cpu_s = time.process_time() - self._c
        p = psi_cpu("total")
        self.cpu_wait_pct = None if p is None or self._p is None or wall <= 0 else \
            round(100 * (p - self._p) / 1e6 / wall, 1)


def _ms_stats(values: list[float]) -> dict[str, float]:
    from distilrec.stats import percentile

    return {"p50": round(statistics.median(values), 4), "p99": round(percentile(values, 99), 4)}


# ------------------------------------------------------------------------------------------ training

def clustered_text(n: int, dim: int, seed: int, centres: int = 1000, spread: float = 0.5) -> np.ndarray:
    """``(n, dim)`` float32 stand-ins for item text embeddings: ``centres`` random unit directions, each
    item one of them plus Gaussian noise of ``spread`` (items of a kind near each other)."""
    rng = np.random.default_rng([seed, 7])
    c = rng.standard_normal((min(centres, n), dim)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    out = c[rng.integers(0, len(c), n)]
    out += rng.standard_normal((n, dim), dtype=np.float32) * (spread / np.sqrt(dim))
    return out


def train_point(interactions: int, items: int, cfg: ScaleBenchConfig, item_grads: str = "auto") -> dict[str, Any]:
    """One training point (run it :func:`isolated`): data, then one epoch per stage, the item table
    trained with ``item_grads`` (:attr:`TrainConfig.item_grads`)."""
    import torch

    from distilrec.config import DistillConfig, PipelineConfig, StudentConfig, TeacherConfig, TrainConfig
    from distilrec.data import synthetic
    from distilrec.data.dataset import Split
    from distilrec.resources import PeakMemory
    from training.distill import build_student, student_loss
    from training.loop import make_optimizer, sparse_tables, step_autocast, train_epoch, users_loader
    from training.teacher import build_teacher, teacher_loss

    if cfg.data_dir:
        os.environ["DISTILREC_DATA_DIR"] = cfg.data_dir
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    torch.manual_seed(cfg.seed)
    users = max(10, int(round(interactions / MEAN_HISTORY)))
    out: dict[str, Any] = {"interactions_asked": interactions, "items": items, "item_grads": item_grads,
                           "threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    with PeakMemory() as peak:
        ds = synthetic.load(users=users, items=items, seed=cfg.seed, chunked=1)
        split = Split.leave_one_out(ds)
        del ds
        gc.collect()
    out.update(users=len(split.train), interactions=int(sum(len(s) for s in split.train)) + 2 * len(split.train),
               train_interactions=int(sum(len(s) for s in split.train)), data_s=round(time.perf_counter() - t0, 2),
               data_peak_rss_mib=peak.result()["process_mib"])
    text_emb = clustered_text(items, TEXT_DIM, cfg.seed)
    device = torch.device("cpu")
    base = {"text_emb": text_emb, "train_seqs": split.train, "train_times": split.history_times("val")}
    pipeline = PipelineConfig()
    tcfg = TeacherConfig(n_items=items, text_dim=TEXT_DIM, **pipeline.teacher)
    teacher_train = TrainConfig(loss="sampled", negatives=cfg.negatives, batch_size=cfg.batch_size, num_workers=1,
                                item_grads=item_grads)
    stages: dict[str, Any] = {}
    teacher = None
    for stage in ("teacher", "distill"):
        if stage not in cfg.stages:
            continue
        if stage == "teacher":
            conf = {**base, "model": tcfg.model_dump(), "train": teacher_train.model_dump()}
            model = build_teacher(conf)
            loss_module = teacher_loss(model, conf)
            tc = teacher_train
        else:
            from distilrec.artifacts import model_to_bytes

            dc = DistillConfig(loss="sampled", negatives=cfg.negatives, batch_size=cfg.batch_size, num_workers=1,
                               item_grads=item_grads)
            tc = TrainConfig.model_validate(dc.model_dump(exclude={"temperature", "alpha", "init_from_teacher"}))
            scfg = StudentConfig(n_items=items, text_dim=TEXT_DIM, **pipeline.student)
            teacher = teacher if teacher is not None else build_teacher({**base, "model": tcfg.model_dump()})
            conf = {**base, "model": scfg.model_dump(), "train": tc.model_dump(), "teacher": model_to_bytes(teacher),
                    "temperature": dc.temperature, "alpha": dc.alpha, "init_from_teacher": dc.init_from_teacher,
                    "context_len": max(scfg.max_len, tcfg.max_len)}
            model = build_student(conf)
            loss_module = student_loss(model, conf)
        tables = sparse_tables(loss_module, tc, items, device)
        opt = make_optimizer(loss_module, tc, tables)
        loader = users_loader(model, conf, tc.batch_size, seed=cfg.seed)
        steps_per_epoch = len(loader)
        with PeakMemory() as peak, CpuClock() as clock:
            total, steps, samples, secs = train_epoch(loss_module, opt, loader, device, step_autocast(tc, device),
                                                      max_s=cfg.max_epoch_s)
        scale_up = steps_per_epoch / max(steps, 1)
        row = {"epoch_s": round(secs * scale_up, 2), "cpu_s": round(clock.cpu_s * scale_up, 2),
               "cpu_wait_pct": clock.cpu_wait_pct, "steps": steps_per_epoch, "measured_steps": steps,
               "extrapolated": steps < steps_per_epoch, "users_per_s": round(samples / max(secs, 1e-9), 1),
               "loss": round(total / max(steps, 1), 4), "peak_rss_mib": peak.result()["process_mib"],
               "sparse_item_grads": bool(tables)}
        if cfg.val_users:
            from distilrec.metrics import evaluate_scores, model_score_fn

            n_val = min(cfg.val_users, len(split.train))
            pick = np.random.default_rng(cfg.seed).choice(len(split.train), n_val, replace=False)
            times = split.history_times("val")
            model.eval()
            t0 = time.perf_counter()
            evaluate_scores(model_score_fn(model), [split.train[u] for u in pick], split.val_target[pick],
                            times=None if times is None else [times[u] for u in pick])
            row["val_s_per_1000_users"] = round((time.perf_counter() - t0) * 1000 / n_val, 2)
        stages[stage] = row
        if stage == "teacher":
            teacher = model.eval()
        del loss_module, opt, loader, tables
        gc.collect()
        print(f"[bench scale] train {size_label(interactions)} interactions × {size_label(items)} items, {stage} "
              f"({'sparse' if row['sparse_item_grads'] else 'dense'} item gradients): "
              f"{row['epoch_s']:.1f} s per epoch{' (extrapolated)' if row['extrapolated'] else ''}, "
              f"peak RSS {row['peak_rss_mib']} MiB", flush=True)
    out["stages"] = stages
    out["peak_rss_mib"] = max([out["data_peak_rss_mib"] or 0] + [s["peak_rss_mib"] or 0 for s in stages.values()])
    return out


# ------------------------------------------------------------------------------------------- serving

def write_serving_artifact(folder: Path, items: int, users: int, seed: int = 0) -> str:
    """An artifact at ``folder`` (made once, reused): random-weight teacher and student of the pipeline's
    shapes over ``items`` items (ids ``i0`` …, titles, a genre of 50), :func:`clustered_text` embeddings,
    ``users`` users (``u0`` …) with 8-40 distinct items each, drawn with a skewed popularity."""
    import pandas as pd
    import torch

    from distilrec.artifacts import ItemTable, write_artifact
    from distilrec.config import PipelineConfig, StudentConfig, TeacherConfig
    from distilrec.models import Student, Teacher

    folder = Path(folder)
    if (folder / "models" / "LATEST").exists():
        return str(folder)
    rng = np.random.default_rng([seed, 11])
    genres = [f"genre{k}" for k in range(50)]
    genre = rng.integers(0, len(genres), items)
    ids = [f"i{k}" for k in range(items)]
    titles = [f"Item {k}" for k in range(items)]
    texts = [f"Item {k}. genres: {genres[g]}" for k, g in enumerate(genre)]
    emb = clustered_text(items, TEXT_DIM, seed)
    table = ItemTable(ids, titles, texts, emb, [{"genres": [genres[g]]} for g in genre])
    lengths = rng.integers(8, 41, users)
    weights = 1.0 / (np.arange(items) + 10.0) ** 0.8
    perm = rng.permutation(items)
    drawn = perm[rng.choice(items, int(lengths.sum()), p=weights / weights.sum())]
    user_of = np.repeat(np.arange(users), lengths)
    hist = pd.DataFrame({"user_id": pd.Series(user_of).map(lambda u: f"u{u}"),
                         "item_id": pd.Series(drawn).map(lambda i: f"i{i}"),
                         "timestamp": 1_700_000_000 + np.arange(len(drawn), dtype=np.int64) * 60})
    hist = hist.drop_duplicates(["user_id", "item_id"])  # users do not repeat items
    torch.manual_seed(seed)
    pipeline, e = PipelineConfig(), torch.from_numpy(emb)
    teacher = Teacher(TeacherConfig(n_items=items, text_dim=TEXT_DIM, **pipeline.teacher), e)
    student = Student(StudentConfig(n_items=items, text_dim=TEXT_DIM, **pipeline.student), e)
    tmp = folder.with_name(folder.name + ".tmp")
    write_artifact(str(tmp), items=table, histories=hist, student=student, teacher=teacher,
                   dataset={"name": f"bench-scale(items={items},users={users})", "users": users, "items": items,
                            "interactions": len(hist)},
                   metrics={}, encoder=None, version="v1")
    tmp.rename(folder)
    return str(folder)


def _timed(fn: Callable[[], Any], runs: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def serve_point(artifact: str, which: str, cfg: ScaleBenchConfig) -> dict[str, Any]:
    """One model's replica at one catalogue size (run it :func:`isolated`): memory, build time, scoring
    cost; for the student the search alone (exact against HNSW) and HNSW's recall@100."""
    import torch

    from distilrec.artifacts import load_artifact
    from distilrec.models import pad_histories
    from distilrec.resources import PeakMemory
    from distilrec.retrieval import ExactRetrieval, FaissRetrieval, RetrievalChoice, faiss_available, recall_at
    from distilrec.serving import ScoreRequest, ServingBundle

    torch.set_num_threads(1)  # a replica scores on one thread (scorer_threads: 1)
    t0 = time.perf_counter()
    with PeakMemory() as peak:
        art = load_artifact(artifact, with_teacher=which == "teacher")
        load_s = time.perf_counter() - t0
        bundle = ServingBundle.build(art, which, RetrievalChoice("auto", cfg.faiss_min_items))
        del art
        gc.collect()
    build_s = time.perf_counter() - t0 - load_s
    scorer = bundle.scorer
    n_items = scorer.n_trained
    out: dict[str, Any] = {"model": which, "items": n_items, "retrieval": scorer.retrieval.kind,
                           "rss_mib": _rss_mib(), "peak_rss_mib": peak.result()["process_mib"],
                           "load_s": round(load_s, 2), "build_s": round(build_s, 2)}
    if faiss_available():
        import faiss

        faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(cfg.seed)
    users = list(bundle.histories)
    pick = [users[i] for i in rng.choice(len(users), min(len(users), max(cfg.requests, 32 * 8)), replace=False)]
    reqs = [ScoreRequest(tuple(bundle.histories[u]), tuple(bundle.times[u]), CANDIDATES) for u in pick]
    it1 = iter(range(10 ** 9))
    one = _timed(lambda: scorer.score([reqs[next(it1) % len(reqs)]]), cfg.requests)
    it32 = iter(range(10 ** 9))

    def batch() -> None:
        k = next(it32) % max(1, len(reqs) // 32)
        scorer.score(reqs[32 * k:32 * k + 32])

    many = [ms / 32 for ms in _timed(batch, max(10, cfg.requests // 4))]
    out["score_ms"] = {"batch_1": _ms_stats(one), "batch_32_per_request": _ms_stats(many)}
    if which == "student":
        model = scorer.model
        vectors = model.item_vectors()
        rows = [[scorer.index[i] for i in r.history][-scorer.max_len:] for r in reqs]
        with torch.inference_mode():
            uvec = model.user_vector(pad_histories(rows, scorer.pad, scorer.max_len))
        exact = ExactRetrieval(vectors)
        search: dict[str, Any] = {}
        hnsw = scorer.retrieval if scorer.retrieval.kind == "faiss" else None
        if hnsw is None and faiss_available():
            import faiss

            faiss.omp_set_num_threads(os.cpu_count() or 1)  # built as a replica builds it
            t1 = time.perf_counter()
            hnsw = FaissRetrieval(vectors)
            search["hnsw_build_s"] = round(time.perf_counter() - t1, 2)
            faiss.omp_set_num_threads(1)
        else:
            search["hnsw_build_s"] = None  # inside the bundle's build_s
        for name, r in (("exact", exact), ("hnsw", hnsw)):
            if r is None:
                continue
            k1, k32 = iter(range(10 ** 9)), iter(range(10 ** 9))
            b1 = _timed(lambda: (lambda i: r.search(uvec[i:i + 1], CANDIDATES, [rows[i]]))(next(k1) % len(rows)),
                        cfg.requests)
            b32 = [ms / 32 for ms in _timed(
                lambda: (lambda k: r.search(uvec[32 * k:32 * k + 32], CANDIDATES, rows[32 * k:32 * k + 32]))(
                    next(k32) % max(1, len(rows) // 32)), max(10, cfg.requests // 4))]
            search[name] = {"batch_1": _ms_stats(b1), "batch_32_per_request": _ms_stats(b32)}
        if hnsw is not None:
            n_rec = min(cfg.recall_users, len(uvec))
            search["recall_at_100"] = round(recall_at(hnsw, exact, uvec[:n_rec], RECALL_AT), 4)
            search["recall_users"] = n_rec
        out["search"] = search
    print(f"[bench scale] serve {size_label(n_items)} items, {which}: {out['retrieval']}, RSS {out['rss_mib']} MiB, "
          f"{out['score_ms']['batch_32_per_request']['p50']:.3f} ms per request in a batch of 32", flush=True)
    return out


def serve_apps(artifact: str, out: Path, cfg: ScaleBenchConfig) -> dict[str, Any]:
    """``bench serve``'s student-served (``distilrec``) and teacher-served applications on ``artifact``."""
    from distilrec.bench.serve import ServeBenchConfig, run_serve_bench

    res = run_serve_bench(ServeBenchConfig(
        model=artifact, output=str(out), apps=("distilrec", "teacher"), duration_s=cfg.serve_duration_s,
        warmup_s=min(5.0, cfg.serve_duration_s), max_total_s=cfg.serve_max_total_s, seed=cfg.seed))
    summary: dict[str, Any] = {}
    for name, a in res["apps"].items():
        at = a["throughput_at_slo"]
        step = next((s for s in reversed(a["search"]["steps"]) if s.get("rate") == at), None)
        closed = a["closed"][0] if a["closed"] else None
        summary[name] = {"throughput_at_slo": at, "p99_ms_at_slo": step["p99_ms"] if step else None,
                         "closed_rps": closed["goodput_rps"] if closed else None,
                         "closed_p99_ms": closed["p99_ms"] if closed else None,
                         "replica_rss_mib": (a.get("memory") or {}).get("rss_mib")}
    return {"apps": summary, "serve_json": str(Path(out) / "serve.json")}


# -------------------------------------------------------------------------------------------- report

def scale_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets that this run measured: the student's scorer time per request at most 1/5 of
    the teacher's (batched, retrieval included) per catalogue size, and epoch time at most linear in
    interactions per catalogue size and stage: the least-squares slope of log time against log
    interactions at most ``LINEAR_SLOPE`` (CPU seconds where every point has them, else wall seconds)."""
    out = []
    for n, pair in sorted(_by_items(result.get("serve") or []).items()):
        s, t = pair.get("student"), pair.get("teacher")
        if not s or not t or "score_ms" not in s or "score_ms" not in t:
            continue
        a = s["score_ms"]["batch_32_per_request"]["p50"]
        b = t["score_ms"]["batch_32_per_request"]["p50"]
        r = a / b if b else None
        out.append({"target": f"student scorer time per request ≤ 1/5 of the teacher's at {size_label(n)} items "
                              "(batch 32, retrieval included)",
                    "measured": f"{a:.3f} / {b:.3f} ms = 1/{(b / a) if a else float('inf'):.1f}",
                    "verdict": "met" if r is not None and r <= 1 / SCORER_RATIO else "missed"})
    train = [p for p in result.get("train") or [] if "stages" in p]
    for n, grads in sorted({(p["items"], _kind(p)) for p in train}):
        pts = sorted((p for p in train if p["items"] == n and _kind(p) == grads), key=lambda p: p["interactions"])
        for stage in ("teacher", "distill"):
            have = [p for p in pts if stage in p["stages"]]
            if len(have) < 2:
                continue
            key = "cpu_s" if all(p["stages"][stage].get("cpu_s") for p in have) else "epoch_s"
            x = np.log([p["interactions"] for p in have])
            y = np.log([p["stages"][stage][key] for p in have])
            slope = float(np.polyfit(x, y, 1)[0])  # time ∝ interactions ** slope
            per = [p["stages"][stage][key] / p["interactions"] * 1e6 for p in have]
            span = f"{size_label(have[0]['interactions'])}→{size_label(have[-1]['interactions'])}"
            what = "CPU s" if key == "cpu_s" else "s"
            out.append({"target": f"{stage} epoch time at most linear in interactions at {size_label(n)} items ({span}; "
                                  f"{grads} item gradients)",
                        "measured": f"{what} ∝ interactions^{slope:.2f}; {what} per 1M interactions: "
                                    + ", ".join(f"{v:.1f}" for v in per),
                        "verdict": "met" if slope <= LINEAR_SLOPE else "missed"})
    return out


def _by_items(rows: list[dict[str, Any]]) -> dict[int, dict[str, dict]]:
    out: dict[int, dict[str, dict]] = {}
    for r in rows:
        out.setdefault(r["items_asked"], {})[r["model"]] = r
    return out


def _f(x: Any, spec: str = ",.1f") -> str:
    return "-" if x is None else format(x, spec)


def _kind(point: dict[str, Any]) -> str:
    """How a training point's item table trained: ``"sparse"`` or ``"dense"``."""
    return "sparse" if any(s.get("sparse_item_grads") for s in (point.get("stages") or {}).values()) else "dense"


def _grads(point: dict[str, Any]) -> str:
    """:func:`_kind`, with an asked ``auto`` noted: the table's label."""
    return f"{_kind(point)} (auto)" if point.get("item_grads") == "auto" else _kind(point)


def _grads_ratios(train: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: each point's dense epoch time over its sparse one, where the run timed both."""
    by: dict[tuple[int, int], dict[str, dict]] = {}
    for p in train:
        if "stages" in p:
            by.setdefault((p["interactions"], p["items"]), {})[_kind(p)] = p["stages"]
    lines = []
    for (i, n), kinds in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if {"dense", "sparse"} <= set(kinds):
            ratios = [f"{stage} {kinds['dense'][stage]['epoch_s'] / kinds['sparse'][stage]['epoch_s']:.1f} ×"
                      for stage in ("teacher", "distill") if stage in kinds["dense"] and stage in kinds["sparse"]
                      and kinds["sparse"][stage]["epoch_s"]]
            if ratios:
                lines.append(f"- {size_label(i)} interactions × {size_label(n)} items: dense / sparse item gradients, "
                             f"epoch time: {', '.join(ratios)}")
    return ["", *lines] if lines else []


def render_scale_markdown(result: dict[str, Any]) -> str:
    """The ``scale.md`` of a ``bench scale`` result."""
    m = result["machine"]
    lines = [f"Scale benchmark, {result['date']}: {m.get('nproc')} CPUs ({m.get('cpu_model', '?')}), "
             f"{m.get('mem_gib', '?')} GiB, load average {', '.join(f'{x:.1f}' for x in (m.get('loadavg') or []))} "
             f"at the start" + (f", CPU pressure {m['cpu_pressure']:.0f} %" if m.get("cpu_pressure") is not None
                                else "") + f"; wall {result.get('wall_s', 0):,.0f} s.", ""]
    if result.get("command"):
        lines += [f"Command: `{result['command']}`", ""]
    train = result.get("train") or []
    if train:
        lines += ["Training, one epoch per stage (sampled softmax, random weights, one process with "
                  f"{train[0].get('threads', '?')} threads; data: synthetic, read from Parquet):", "",
                  "| interactions | items | item gradients | users | data s | teacher epoch s (CPU s) | teacher users/s "
                  "| teacher peak RSS MiB | distill epoch s (CPU s) | distill peak RSS MiB | validation s / 1,000 users "
                  "(teacher) | CPU wait % |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for p in train:
            if "error" in p:
                lines.append(f"| {size_label(p['interactions_asked'])} | {size_label(p['items'])} | "
                             f"{p.get('item_grads', 'auto')} | failed: {p['error'][:120]} | | | | | | | | |")
                continue
            t, d = p["stages"].get("teacher", {}), p["stages"].get("distill", {})

            def ep(s: dict) -> str:
                if not s:
                    return "-"
                cpu = f" ({s['cpu_s']:,.0f})" if s.get("cpu_s") is not None else ""
                return f"{s['epoch_s']:,.1f}{cpu}" + (" *" if s.get("extrapolated") else "")

            waits = [s["cpu_wait_pct"] for s in (t, d) if s.get("cpu_wait_pct") is not None]
            lines.append(f"| {p['interactions']:,} | {p['items']:,} | {_grads(p)} | {p['users']:,} | "
                         f"{p['data_s']:,.1f} | {ep(t)} | "
                         f"{_f(t.get('users_per_s'), ',.0f')} | {_f(t.get('peak_rss_mib'), ',.0f')} | {ep(d)} | "
                         f"{_f(d.get('peak_rss_mib'), ',.0f')} | {_f(t.get('val_s_per_1000_users'), ',.2f')} | "
                         f"{_f(max(waits) if waits else None, '.0f')} |")
        if any(s.get("extrapolated") for p in train for s in (p.get("stages") or {}).values()):
            lines += ["", "\\* extrapolated from the steps measured within `--max-epoch-s` (the result's "
                          "`measured_steps` of `steps`)."]
        lines += _grads_ratios(train)
        lines += ["", "CPU s: the process's CPU time (all its threads) over the epoch; CPU wait: the share of the "
                      "epoch's wall time in which some task on the machine waited for a CPU (Linux PSI; other work on "
                      "a shared machine), the larger of the two stages'."]
        lines.append("")
    serve = result.get("serve") or []
    if serve:
        lines += [f"Serving, in process (one thread; {CANDIDATES} candidates retrieved per request; random-weight "
                  f"models of the pipeline's shapes; {result['config']['serve_users']:,} users; "
                  f"`retrieval: auto`, faiss from {result['config']['faiss_min_items']:,} items):", "",
                  "| items | model | retrieval | replica RSS MiB (steady / peak while loading) | load + build s | "
                  "ms per request alone p50 / p99 | ms per request in a batch of 32 p50 / p99 |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in serve:
            if "error" in r:
                lines.append(f"| {size_label(r['items_asked'])} | {r['model']} | failed: {r['error'][:120]} | | | | |")
                continue
            a, b = r["score_ms"]["batch_1"], r["score_ms"]["batch_32_per_request"]
            lines.append(f"| {r['items']:,} | {r['model']} | {r['retrieval']} | {_f(r['rss_mib'], ',.0f')} / "
                         f"{_f(r['peak_rss_mib'], ',.0f')} | {r['load_s'] + r['build_s']:,.1f} | "
                         f"{a['p50']:.3f} / {a['p99']:.3f} | {b['p50']:.3f} / {b['p99']:.3f} |")
        users = max((r["search"].get("recall_users", 0) for r in serve if r.get("search")), default=0)
        lines += ["", "Retrieval alone (the student's vectors; ms per request; HNSW: M 32, efSearch 256; recall@100 "
                      f"against exact over {users:,} sampled users):", "",
                  "| items | exact alone | exact in a batch of 32 | HNSW alone | HNSW in a batch of 32 | HNSW build s | "
                  "recall@100 |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in serve:
            s = r.get("search")
            if not s:
                continue
            e, h = s.get("exact", {}), s.get("hnsw", {})

            def ms(x: dict, key: str) -> str:
                return "-" if not x else f"{x[key]['p50']:.3f}"

            build = s.get("hnsw_build_s")
            lines.append(f"| {r['items']:,} | {ms(e, 'batch_1')} | {ms(e, 'batch_32_per_request')} | {ms(h, 'batch_1')} | "
                         f"{ms(h, 'batch_32_per_request')} | "
                         f"{'in the build' if build is None and h else _f(build, ',.1f')} | "
                         f"{_f(s.get('recall_at_100'), '.4f')} |")
        lines.append("")
    apps = result.get("serve_apps") or {}
    if apps:
        lines += ["Through the proxy (`bench serve`'s machinery; student-served = `distilrec`, teacher-served = "
                  "`teacher`):", "",
                  "| items | application | throughput at SLO req/s | p99 ms there | closed loop req/s | p99 ms | "
                  "replicas' RSS MiB |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for n, got in sorted(apps.items(), key=lambda kv: int(kv[0])):
            if "error" in got:
                lines.append(f"| {int(n):,} | failed: {got['error'][:160]} | | | | | |")
                continue
            for name, a in got["apps"].items():
                lines.append(f"| {int(n):,} | {name} | {a['throughput_at_slo']:g} | {_f(a['p99_ms_at_slo'])} | "
                             f"{_f(a['closed_rps'])} | {_f(a['closed_p99_ms'])} | {_f(a['replica_rss_mib'], ',.0f')} |")
        lines.append("")
    targets = result.get("targets") or []
    if targets:
        lines += ["| target | measured | verdict |", "| --- | --- | --- |"]
        lines += [f"| {t['target']} | {t['measured']} | {t['verdict']} |" for t in targets]
    return "\n".join(lines).rstrip() + "\n"


def _log_axes(axes: tuple[tuple[Any, str], ...], xlabel: str) -> None:
    """A log x axis labelled ``xlabel``, the y label, a grid and a legend on each ``(axes, y label)``."""
    for ax, what in axes:
        ax.set_xscale("log")
        ax.set(xlabel=xlabel, ylabel=what)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)


def plot_scale(result: dict[str, Any], train_path: str | Path, serve_path: str | Path) -> list[str]:
    """``train_path``: seconds per epoch and peak RSS against interactions, a line per catalogue size and
    stage; ``serve_path``: ms per request (batch 32) and replica RSS against catalogue size, student and
    teacher, with exact and HNSW search alone. Returns the paths written (a part without figures: none)."""
    from distilrec.plots import _save, plt

    written = []
    train = [p for p in result.get("train") or [] if "stages" in p]
    if train:
        fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
        lines = sorted({(p["items"], _kind(p)) for p in train})
        colours = {n: f"C{i}" for i, n in enumerate(sorted({n for n, _ in lines}))}
        for n, kind in lines:
            pts = sorted((p for p in train if p["items"] == n and _kind(p) == kind),
                         key=lambda p: p["interactions"])
            for stage, style in (("teacher", "-o"), ("distill", "--s")):
                have = [p for p in pts if stage in p["stages"]]
                if have:
                    x, label = [p["interactions"] for p in have], f"{stage}, {size_label(n)} items, {kind}"
                    alpha = 0.45 if kind == "dense" else 1.0
                    ax_t.plot(x, [p["stages"][stage]["epoch_s"] for p in have], style, color=colours[n],
                              alpha=alpha, label=label)
                    ax_m.plot(x, [p["stages"][stage]["peak_rss_mib"] / 1024 for p in have], style,
                              color=colours[n], alpha=alpha, label=label)
        _log_axes(((ax_t, "seconds per epoch"), (ax_m, "peak RSS (GiB)")), "interactions")
        ax_t.set_yscale("log")
        ax_t.set_title("one training epoch (sampled softmax)")
        ax_m.set_title("peak resident memory of the process")
        fig.tight_layout()
        written.append(_save(fig, train_path))
    serve = [r for r in result.get("serve") or [] if "score_ms" in r]
    if serve:
        fig, (ax_s, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
        for i, model in enumerate(("student", "teacher")):
            rows = sorted((r for r in serve if r["model"] == model), key=lambda r: r["items"])
            if rows:
                x = [r["items"] for r in rows]
                ax_s.plot(x, [r["score_ms"]["batch_32_per_request"]["p50"] for r in rows], "-o", color=f"C{i}",
                          label=f"{model}: score + retrieve (auto)")
                ax_m.plot(x, [r["rss_mib"] / 1024 for r in rows], "-o", color=f"C{i}", label=f"{model} replica")
        rows = sorted((r for r in serve if r.get("search")), key=lambda r: r["items"])
        for kind, style in (("exact", ":^"), ("hnsw", ":v")):
            have = [r for r in rows if r["search"].get(kind)]
            if have:
                ax_s.plot([r["items"] for r in have], [r["search"][kind]["batch_32_per_request"]["p50"] for r in have],
                          style, color="grey", label=f"{kind} search alone")
        _log_axes(((ax_s, "ms per request, batch of 32 (p50)"), (ax_m, "resident memory (GiB)")), "catalogue items")
        ax_s.set_yscale("log")
        ax_s.set_title("in-process scoring cost per request")
        ax_m.set_title("one replica's memory after its build")
        fig.tight_layout()
        written.append(_save(fig, serve_path))
    return written


# ----------------------------------------------------------------------------------------------- run

def run_scale_bench(cfg: ScaleBenchConfig, command: str = "") -> dict[str, Any]:
    """Run the parts of ``cfg``; write ``scale.json``, ``scale.md`` and the plots under ``cfg.output`` after
    every point (a long run that stops keeps what it measured); return the result."""
    from distilrec.bench.report import write_tables
    from distilrec.bench.serve import cpu_pressure, machine_info

    out = Path(cfg.output).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    result: dict[str, Any] = {"benchmark": "scale", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "command": command, "machine": machine_info(), "config": asdict(cfg),
                              "train": [], "serve": [], "serve_apps": {}}

    def save() -> None:
        result["wall_s"] = round(time.monotonic() - t_start, 1)
        result["machine"]["cpu_pressure_end"] = cpu_pressure()
        result["targets"] = scale_targets(result)
        write_tables(str(out), "scale", render_scale_markdown(result), result)
        plot_scale(result, out / "scale_train.png", out / "scale_serve.png")

    if "train" in cfg.parts:
        for n in cfg.items:
            for i in cfg.interactions:
                for grads in cfg.item_grads:
                    print(f"[bench scale] train: {size_label(i)} interactions × {size_label(n)} items, item_grads "
                          f"{grads} ...", flush=True)
                    got = isolated(train_point, i, n, cfg, grads)
                    result["train"].append(got if "error" not in got else
                                           {"interactions_asked": i, "items": n, "item_grads": grads, **got})
                    save()
    if "serve" in cfg.parts:
        for n in cfg.serve_items:
            folder = out / "artifacts" / f"items-{n}-users-{cfg.serve_users}"
            print(f"[bench scale] serve: {size_label(n)} items: artifact {folder} ...", flush=True)
            made = isolated(_artifact_point, str(folder), n, cfg.serve_users, cfg.seed)
            if "error" in made:
                result["serve"] += [{"items_asked": n, "model": m, **made} for m in ("student", "teacher")]
                save()
                continue
            for which in ("student", "teacher"):
                got = isolated(serve_point, made["artifact"], which, cfg)
                result["serve"].append({"items_asked": n, "model": which, **got})
                save()
            if cfg.serve:
                try:
                    result["serve_apps"][str(n)] = serve_apps(made["artifact"], out / f"serve-{n}", cfg)
                except Exception as e:  # noqa: BLE001 - an application that did not start is a figure too
                    result["serve_apps"][str(n)] = {"error": f"{type(e).__name__}: {e}"}
                save()
    save()
    return result


def _artifact_point(folder: str, items: int, users: int, seed: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    path = write_serving_artifact(Path(folder), items, users, seed)
    return {"artifact": path, "write_s": round(time.perf_counter() - t0, 1)}


def config_from_args(args: Any) -> ScaleBenchConfig:
    """The run's config from ``distilrec bench scale``'s arguments (``ValueError`` on a bad value)."""
    cfg = ScaleBenchConfig(output=args.output)
    if args.smoke:
        cfg = replace(cfg, **SMOKE)
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    if not parts or set(parts) - {"train", "serve"}:
        raise ValueError(f"--parts {args.parts!r}: train, serve or both")
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    if not stages or set(stages) - {"teacher", "distill"}:
        raise ValueError(f"--stages {args.stages!r}: teacher, distill or both")
    grads = tuple(g.strip() for g in (getattr(args, "item_grads", None) or "auto").split(",") if g.strip())
    if not grads or set(grads) - {"auto", "dense", "sparse"}:
        raise ValueError(f"--item-grads {args.item_grads!r}: auto, dense, sparse or a list of them")
    changes: dict[str, Any] = {"parts": parts, "stages": stages, "serve": args.serve, "item_grads": grads}
    for name in ("interactions", "items", "serve_items"):
        text = getattr(args, name)
        if text:
            changes[name] = parse_sizes(text)
    for name, low in (("serve_users", 10), ("val_users", 0), ("requests", 10), ("recall_users", 1),
                      ("faiss_min_items", 0)):
        value = getattr(args, name)
        if value is not None:
            if value < low:
                raise ValueError(f"--{name.replace('_', '-')} {value}: at least {low}")
            changes[name] = value
    if args.max_epoch_s is not None:
        if args.max_epoch_s <= 0:
            raise ValueError(f"--max-epoch-s {args.max_epoch_s:g}: positive")
        changes["max_epoch_s"] = args.max_epoch_s
    if args.data_dir:
        changes["data_dir"] = str(Path(args.data_dir).expanduser().resolve())
    return replace(cfg, **changes)


def scale_command(args: Any, command: str) -> int:
    """``distilrec bench scale``: parse, run, print the table; 2 on a bad argument."""
    import sys

    try:
        cfg = config_from_args(args)
    except ValueError as e:
        print(f"distilrec bench scale: {e}", file=sys.stderr)
        return 2
    own_ray = False
    if cfg.serve and "serve" in cfg.parts:
        import ray

        own_ray = not ray.is_initialized() and not os.environ.get("RAY_ADDRESS")
    try:
        result = run_scale_bench(cfg, command=command)
    finally:
        if own_ray:
            import ray
            from ray import serve

            serve.shutdown()
            ray.shutdown()
    print((Path(cfg.output) / "scale.md").read_text())
    failed = [r for r in result["train"] + result["serve"] if "error" in r]
    return 1 if failed else 0

