"""``distilrec bench train``: teacher training samples/s with 1 and 2 Ray Train workers (and on a GPU).

    distilrec bench train --output bench-out                       # synthetic data, CPU, 1 and 2 workers
    distilrec bench train --dataset movielens:ml-latest-small --encoder minilm \
        --output bench-out
    distilrec bench train --use-gpu --output bench-out             # on a machine with a GPU
    # → bench-out/train.json, train.md

Each worker count trains the teacher of the default ``PipelineConfig`` shape for a fixed number of epochs
(no early stop) through the real path (:func:`training.teacher.train_teacher`: ``TorchTrainer``, DDP,
``prepare_model``/``prepare_data_loader``). ``training/loop.py`` times each epoch's training steps
(data loading, forward, backward, optimiser; not start-up, validation or checkpointing) and reports the
users per second of each worker; the figure here is the median over the epochs after the first (a
warm-up) times the number of workers (each DDP worker takes an equal share of the users).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

DEFAULT_DATASET = "synthetic:users=2000,items=500,seed=0"
GPU_NOT_MEASURED = ("GPU: not measured: this run had no GPU (run `distilrec bench train --use-gpu` on a machine "
                    "with one; the teacher then trains with bf16 autocast).")


@dataclass
class TrainBenchConfig:
    """Knobs of one ``bench train`` run."""

    output: str
    dataset: str = DEFAULT_DATASET
    encoder: str = "tiny"          # text encoder for the item embeddings ("minilm" for the real figures)
    workers: tuple[int, ...] = (1, 2)
    epochs: int = 3                # per worker count; the first is warm-up when there are more than one
    batch_size: int = 32           # users per optimiser step over all workers (the PipelineConfig default)
    use_gpu: bool = False


def measured_epochs(epochs: int) -> list[int]:
    """Epoch indices that count: all but the first (warm-up), or the only one.

    >>> measured_epochs(3), measured_epochs(1)
    ([1, 2], [0])
    """
    return list(range(1, epochs)) if epochs > 1 else [0]


def summarize_history(history: list[dict[str, float]], workers: int, epochs: int) -> dict[str, float]:
    """Median samples/s per worker and epoch time over :func:`measured_epochs` of rank 0's history."""
    keep = [h for h in history if int(h["epoch"]) in measured_epochs(epochs)] or history
    per_worker = statistics.median(h["samples_per_s"] for h in keep)
    return {"samples_per_s_per_worker": per_worker, "samples_per_s": per_worker * workers,
            "epoch_s": statistics.median(h["epoch_s"] for h in keep), "epochs_measured": len(keep)}


def run_train_bench(cfg: TrainBenchConfig, command: str = "") -> dict[str, Any]:
    """Train the teacher with each worker count; write ``train.json`` and ``train.md`` under
    ``cfg.output``; return the result."""
    import os

    from distilrec.bench.report import render_train_markdown
    from distilrec.bench.serve import cpu_pressure, machine_info
    from distilrec.config import PipelineConfig, TeacherConfig, TrainConfig
    from training.pipeline import ensure_ray, item_embeddings, load_split, require_gpus
    from training.teacher import train_teacher

    info = machine_info()
    out = Path(cfg.output).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    ds, split = load_split(cfg.dataset)  # a bad dataset or encoder is refused before Ray's start
    text_emb, _ = item_embeddings(ds, cfg.encoder, out / "work")
    ensure_ray(max(cfg.workers))
    if cfg.use_gpu:
        require_gpus(max(cfg.workers))
    tcfg = TeacherConfig(n_items=ds.n_items, text_dim=int(text_emb.shape[1]), **PipelineConfig().teacher)
    runs = []
    for w in cfg.workers:
        train = TrainConfig(epochs=cfg.epochs, patience=cfg.epochs + 1, batch_size=cfg.batch_size, num_workers=w,
                            use_gpu=cfg.use_gpu)
        t0 = time.monotonic()
        res = train_teacher(split, text_emb, tcfg, train, str(out / "ray" / f"w{w}-{int(time.time())}"),
                            name=f"bench_teacher_w{w}")
        runs.append({"workers": w, **summarize_history(res.history, w, cfg.epochs),
                     "threads_per_worker": max(1, (os.cpu_count() or 1) // w),
                     "wall_s": round(time.monotonic() - t0, 1), "history": res.history})
        print(f"[bench train] {w} worker(s): {runs[-1]['samples_per_s']:.0f} samples/s", flush=True)
    info["cpu_pressure_end"] = cpu_pressure()
    result = {
        "benchmark": "train", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command, "machine": info,
        "device": "GPU" if cfg.use_gpu else "CPU",
        "dataset": {"name": ds.name, "users": ds.n_users, "items": ds.n_items,
                    "train_users": len(split.train)},
        "teacher": json.loads(tcfg.model_dump_json()), "epochs": cfg.epochs,
        "measured_epochs": [e + 1 for e in measured_epochs(cfg.epochs)],
        "config": asdict(cfg), "runs": runs,
        "gpu_note": None if cfg.use_gpu else GPU_NOT_MEASURED,
    }
    (out / "train.json").write_text(json.dumps(result, indent=1))
    (out / "train.md").write_text(render_train_markdown(result))
    return result
