"""The Ray Train loop shared by teacher training and distillation.

Each worker builds the model from its typed config, wraps the loss module with ``prepare_model``
(DDP), reads users through ``prepare_data_loader`` (a ``DistributedSampler``), and after every epoch
rank 0 measures validation NDCG@10; the figure is broadcast so every worker stops early at the same
epoch. Every epoch is checkpointed through ``ray.train.report`` (weights, optimizer, history), so a
restarted run resumes from the latest checkpoint, and the best one by validation NDCG@10 is kept.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from distilrec.artifacts import model_from_bytes, model_to_bytes
from distilrec.config import TrainConfig
from distilrec.data import Split
from distilrec.losses import crop_window, next_item_batch
from distilrec.metrics import evaluate_scores, model_score_fn

VAL_METRIC = "val_ndcg@10"


@dataclass
class TrainOutput:
    """What a finished run gives back: the best model (CPU, eval mode) and per-epoch history."""

    model: torch.nn.Module
    history: list[dict[str, float]]
    best: dict[str, float]
    checkpoint_path: str


class _Users(torch.utils.data.Dataset):
    """One item per user: ``(item rows, unix seconds)``, users with at least two items."""

    def __init__(self, seqs: list[np.ndarray], times: list[np.ndarray] | None):
        times = times if times else [np.zeros(len(s), dtype=np.int64) for s in seqs]
        self.users = [(s, t) for s, t in zip(seqs, times) if len(s) >= 2]

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.users[i]


class _Collate:
    """Crops each user to a training window (:func:`crop_window`) and builds the padded batch
    ``(inputs, targets, times)``. ``window``: the positions the trained model reads; ``context``: the
    history length of the batch (longer than ``window`` when a teacher with a longer reach scores the
    student's positions)."""

    def __init__(self, pad: int, window: int, context: int, seed: int):
        self.pad, self.window, self.context = pad, window, context
        self.rng = np.random.default_rng(seed)

    def __call__(self, users: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, ...]:
        seqs, times = [], []
        for s, t in users:
            s, t = crop_window(s, t, self.window, self.rng, context=self.context)
            seqs.append(s)
            times.append(t)
        return next_item_batch(seqs, self.pad, self.context, times)


def _quiet_report_logs() -> None:
    """Ray Train logs every report at INFO from a logger named by its file; the epoch line says it all."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def _epoch_gauges() -> dict[str, Any]:
    """Per-epoch gauges through Ray's metrics API (exported as ``ray_distilrec_train_*`` on the node's
    metrics port while the worker lives; read by dashboards/training.py). ``stage`` is the run's name."""
    from ray.util.metrics import Gauge

    return {
        "loss": Gauge("distilrec_train_loss", "Mean training loss of the last epoch (rank 0).", tag_keys=("stage",)),
        "val": Gauge("distilrec_train_val_ndcg", "Validation NDCG@10 after the last epoch.", tag_keys=("stage",)),
        "sps": Gauge("distilrec_train_samples_per_second", "Users per second of this worker's last epoch.",
                     tag_keys=("stage", "rank")),
        "epoch_s": Gauge("distilrec_train_epoch_seconds", "Seconds of the last epoch's training pass.",
                         tag_keys=("stage",)),
    }


def cpu_bf16_instructions() -> list[str]:
    """The bf16 instruction sets of this CPU that PyTorch reports (``avx512_bf16``, ``amx_bf16``, Arm's ``bf16``)."""
    caps = torch.cpu.get_capabilities()
    return [name for name in ("avx512_bf16", "amx_bf16", "bf16") if caps.get(name)]


def uses_bf16(tc: TrainConfig) -> bool:
    """Whether this worker's training steps run under bf16 autocast: as ``tc.bf16`` says; by default
    (``None``) with GPUs, and on CPUs with AVX-512 BF16 (which CPUs with AMX have too), where bf16 steps are
    faster at the same validation quality (``distilrec bench step --compare bf16`` times the step).
    Each worker decides on its own machine, so a cluster's CPU nodes of different kinds each do what pays."""
    if tc.bf16 is not None:
        return tc.bf16
    return tc.use_gpu or "avx512_bf16" in cpu_bf16_instructions()


def step_autocast(tc: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """The context of a training step: bf16 autocast when :func:`uses_bf16`, else none.
    tests/unit/test_losses.py runs both losses under it on the CPU; validation runs outside it."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if uses_bf16(tc) else contextlib.nullcontext()


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars turned into Python numbers, containers rebuilt as dicts and lists."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class SparseAndDense:
    """Adam over the dense weights and SparseAdam over the item id tables that train with sparse gradients
    (:func:`distilrec.models.sparse_item_tables`), zeroed, stepped, saved and restored as one optimiser.
    Its ``state_dict`` is ``{"dense": ..., "sparse": ...}``. With ``world`` > 1 workers, ``step`` first
    averages the tables' sparse gradients over them (:func:`average_sparse_grads`): DDP leaves the tables
    out (:func:`sparse_tables`) and all-reduces the dense weights as usual."""

    def __init__(self, dense: torch.optim.Optimizer, sparse: torch.optim.Optimizer, world: int = 1):
        self.parts = {"dense": dense, "sparse": sparse}
        self.world = world

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.parts.values():
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        if self.world > 1:
            average_sparse_grads(self.parts["sparse"].param_groups[0]["params"], self.world)
        for opt in self.parts.values():
            opt.step()

    def state_dict(self) -> dict[str, Any]:
        return {name: opt.state_dict() for name, opt in self.parts.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != set(self.parts):
            raise ValueError("the checkpoint's optimiser state was saved with item_grads of another kind "
                             f"({sorted(state)[:3]} …); resume with the run's own item_grads")
        for name, opt in self.parts.items():
            opt.load_state_dict(state[name])


def average_sparse_grads(tables: list[torch.nn.Parameter], world: int) -> None:
    """Replace each table's sparse gradient by the mean of the ``world`` workers' (the rows any of them read),
    with dense ``all_gather`` calls on the default process group: each worker's row count, then its rows and
    their values padded to the largest count. A table without a gradient counts as no rows."""
    import torch.distributed as dist

    for p in tables:
        g = p.grad.coalesce() if p.grad is not None else torch.sparse_coo_tensor(
            torch.zeros((1, 0), dtype=torch.long, device=p.device), p.new_zeros((0, p.shape[1])), p.shape)
        rows, values = g.indices()[0], g.values()
        count = torch.tensor([rows.numel()], dtype=torch.long, device=p.device)
        counts = [torch.zeros_like(count) for _ in range(world)]
        dist.all_gather(counts, count)
        sizes = [int(c) for c in counts]
        width = max(sizes)
        rows = torch.cat([rows, rows.new_zeros(width - rows.numel())])
        values = torch.cat([values, values.new_zeros((width - values.shape[0], values.shape[1]))])
        all_rows = [torch.empty_like(rows) for _ in range(world)]
        all_values = [torch.empty_like(values) for _ in range(world)]
        dist.all_gather(all_rows, rows)
        dist.all_gather(all_values, values)
        rows = torch.cat([r[:n] for r, n in zip(all_rows, sizes)])
        values = torch.cat([v[:n] for v, n in zip(all_values, sizes)]) / world
        p.grad = torch.sparse_coo_tensor(rows.unsqueeze(0), values, p.shape, check_invariants=True).coalesce()


def sparse_tables(loss_module: torch.nn.Module, tc: TrainConfig, n_items: int,
                  device: torch.device) -> list[torch.nn.Parameter]:
    """Switch ``loss_module``'s item id tables to sparse gradients when ``tc`` asks for them on ``device``
    (:meth:`TrainConfig.sparse_item_grads`) and return them; ``[]`` otherwise. Call it before DDP wraps
    the module: the tables are marked for DDP to leave out (their rows are averaged over the workers by
    :class:`SparseAndDense` with plain all-gathers, which every backend runs, rather than by DDP's sparse
    all-reduce)."""
    from distilrec.models import sparse_item_tables

    if not tc.sparse_item_grads(n_items, device.type):
        return []
    tables = sparse_item_tables(loss_module)
    ids = {id(t) for t in tables}
    names = [name for name, p in loss_module.named_parameters() if id(p) in ids]
    torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(loss_module, names)
    return tables


def make_optimizer(loss_module: torch.nn.Module, tc: TrainConfig, tables: list[torch.nn.Parameter],
                   world: int = 1) -> torch.optim.Optimizer | SparseAndDense:
    """Adam (``tc.lr``, ``tc.weight_decay``) over ``loss_module``'s trainable weights; the sparse ``tables``
    (from :func:`sparse_tables`) go to SparseAdam instead, which updates only the rows a step read, after
    their gradients are averaged over the ``world`` workers."""
    sparse = {id(t) for t in tables}
    dense = [p for p in loss_module.parameters() if p.requires_grad and id(p) not in sparse]
    adam = torch.optim.Adam(dense, lr=tc.lr, weight_decay=tc.weight_decay)
    return SparseAndDense(adam, torch.optim.SparseAdam(tables, lr=tc.lr), world) if tables else adam


def save_train_state(path: str | Path, model: torch.nn.Module, opt: torch.optim.Optimizer | SparseAndDense,
                     epoch: int, history: list[dict[str, Any]], best: float, stale: int) -> None:
    """Write the resumable training state to ``path``: the model's and the optimizer's state dicts (tensors
    and plain values), ``epoch``, ``history`` (a list of metric dicts), ``best`` and ``stale``; nothing that
    :func:`load_train_state` would refuse."""
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": int(epoch),
                "history": _plain(history), "best": float(best), "stale": int(stale)}, path)


def load_train_state(path: str | Path) -> dict[str, Any]:
    """Read what :func:`save_train_state` wrote, onto the CPU, with ``weights_only=True``: tensors, numbers,
    strings and containers only, so a checkpoint on shared storage cannot run code in the workers that resume
    from it. A file that names any other object raises ``pickle.UnpicklingError``."""
    return torch.load(path, weights_only=True, map_location="cpu")


def users_loader(model: torch.nn.Module, config: dict[str, Any], batch_size: int, seed: int,
                 shuffle: bool = True) -> torch.utils.data.DataLoader:
    """The training users of ``config`` (``train_seqs``, ``train_times``) in batches of ``batch_size``,
    cropped to ``model``'s window with ``config["context_len"]`` items of context (default the window)."""
    window = model.cfg.max_len
    return torch.utils.data.DataLoader(
        _Users(config["train_seqs"], config.get("train_times")), batch_size=max(1, batch_size), shuffle=shuffle,
        collate_fn=_Collate(model.cfg.n_items, window, max(window, config.get("context_len", window)), seed=seed),
    )


def train_epoch(loss_module: torch.nn.Module, opt: torch.optim.Optimizer | SparseAndDense, loader,
                device: torch.device, amp: contextlib.AbstractContextManager, max_steps: int | None = None,
                max_s: float | None = None) -> tuple[float, int, int, float]:
    """One training pass over ``loader`` (stopped after ``max_steps`` batches or once ``max_s`` seconds
    have passed): forward under ``amp``, backward and an optimiser step per batch. Returns ``(summed loss,
    steps, samples, seconds)``; the time covers data loading, forward, backward and the optimiser, nothing
    else."""
    loss_module.train()
    t0, total, n, samples = time.perf_counter(), 0.0, 0, 0
    for inputs, targets, times in loader:
        inputs, targets, times = inputs.to(device), targets.to(device), times.to(device)
        with amp:
            loss = loss_module(inputs, targets, times)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach())
        n += 1
        samples += int(inputs.shape[0])
        if (max_steps is not None and n >= max_steps) or (max_s is not None and time.perf_counter() - t0 >= max_s):
            break
    return total, n, samples, time.perf_counter() - t0


# The train loop config's entries that grow with the data: put once into the object store by :func:`fit`
# (sequences packed into flat arrays, which workers on a node then read from shared memory without a copy),
# so that neither Ray Train's controller nor each worker holds a pickled copy of the whole log.
SHARED = ("train_seqs", "train_times", "text_emb", "teacher")


def pack(seqs: list[np.ndarray] | None) -> tuple[np.ndarray, np.ndarray] | None:
    """Sequences as ``(flat (T,), offsets (n + 1,) int64)``, sequence i being ``flat[offsets[i]:offsets[i + 1]]``;
    None stays None."""
    if seqs is None:
        return None
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum(np.fromiter((len(x) for x in seqs), dtype=np.int64, count=len(seqs)), out=offsets[1:])
    flat = np.concatenate(seqs) if len(seqs) else np.zeros(0, dtype=np.int64)
    return flat, offsets


def unpack(packed: tuple[np.ndarray, np.ndarray] | None) -> list[np.ndarray] | None:
    """:func:`pack`'s inverse: a list of views into the flat array (no copy)."""
    if packed is None:
        return None
    flat, offsets = packed
    return [flat[a:b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]


def share_data(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with its :data:`SHARED` entries replaced by one object-store reference (``"shared"``)."""
    import ray

    shared = {k: config[k] for k in SHARED if k in config}
    for k in ("train_seqs", "train_times"):
        if k in shared:
            shared[k] = pack(shared[k])
    return {**{k: v for k, v in config.items() if k not in SHARED}, "shared": ray.put(shared)}


def shared_data(config: dict[str, Any]) -> dict[str, Any]:
    """:func:`share_data`'s inverse, in a worker: the entries read back from the object store."""
    import ray

    if "shared" not in config:
        return config
    shared = ray.get(config["shared"])
    for k in ("train_seqs", "train_times"):
        if k in shared:
            shared[k] = unpack(shared[k])
    return {**{k: v for k, v in config.items() if k != "shared"}, **shared}


def worker_loop(config: dict[str, Any]) -> None:
    """``train_loop_per_worker`` for ``TorchTrainer``. ``config`` keys: see :func:`fit`."""
    import ray.train
    import ray.train.torch

    config = shared_data(config)

    _quiet_report_logs()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    tc = TrainConfig.model_validate(config["train"])
    torch.manual_seed(tc.seed + rank)
    torch.set_num_threads(max(1, int(config.get("threads_per_worker", 1))))
    device = ray.train.torch.get_device()

    model: torch.nn.Module = config["build_model"](config)
    loss_module = config["build_loss"](model, config)
    tables = sparse_tables(loss_module, tc, model.cfg.n_items, device)
    # The models' buffers (the item text embeddings, N × text_dim) are constants that every worker builds from
    # the same config: broadcasting them from rank 0 before every forward, DDP's default, would send them each step.
    loss_module = ray.train.torch.prepare_model(loss_module, parallel_strategy_kwargs={"broadcast_buffers": False})
    if world > 1:  # DDP leaves the sparse tables out, its start-up broadcast of rank 0's weights too
        for table in tables:
            torch.distributed.broadcast(table.data, src=0)
    opt = make_optimizer(loss_module, tc, tables, world)

    loader = users_loader(model, config, tc.batch_size // world, seed=tc.seed * 1000 + rank)
    loader = ray.train.torch.prepare_data_loader(loader)

    start_epoch, history, best, stale = 0, [], -1.0, 0
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:  # resume after a failure or from a previous run
        with ckpt.as_directory() as d:
            state = load_train_state(Path(d) / "train_state.pt")
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            start_epoch, history, best, stale = state["epoch"] + 1, state["history"], state["best"], state["stale"]

    gauges = _epoch_gauges()
    amp, bf16 = step_autocast(tc, device), uses_bf16(tc)
    for epoch in range(start_epoch, tc.epochs):
        if stale >= tc.patience:
            break
        if world > 1 and hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        total, n, samples, epoch_s = train_epoch(loss_module, opt, loader, device, amp)

        val = torch.zeros(1, device=device)
        if rank == 0:
            val[0] = evaluate_scores(model_score_fn(model), config["val_histories"], config["val_targets"],
                                     times=config["val_times"])["ndcg@10"]
        if world > 1:
            torch.distributed.broadcast(val, src=0)
        val_ndcg = float(val[0])
        improved = val_ndcg > best
        best, stale = (val_ndcg, 0) if improved else (best, stale + 1)
        metrics = {"epoch": epoch, "loss": total / max(n, 1), VAL_METRIC: val_ndcg,
                   "epoch_s": epoch_s, "samples_per_s": samples / max(epoch_s, 1e-9), "rank": rank,
                   "bf16": bf16}
        history.append(metrics)
        stage = {"stage": config["name"]}
        gauges["sps"].set(metrics["samples_per_s"], tags={**stage, "rank": str(rank)})
        if rank == 0:
            gauges["loss"].set(metrics["loss"], tags=stage)
            gauges["val"].set(val_ndcg, tags=stage)
            gauges["epoch_s"].set(epoch_s, tags=stage)
            print(f"[{config['name']}] epoch {epoch + 1}/{tc.epochs}  loss {metrics['loss']:.4f}  "
                  f"val NDCG@10 {val_ndcg:.4f}{' *' if improved else ''}  ({epoch_s:.1f}s, "
                  f"{metrics['samples_per_s']:.0f} users/s/worker)", flush=True)
            with tempfile.TemporaryDirectory() as d:
                save_train_state(Path(d) / "train_state.pt", model, opt, epoch, history, best, stale)
                cfg_bytes, weights = model_to_bytes(model)
                (Path(d) / "config.json").write_bytes(cfg_bytes)
                (Path(d) / "model.safetensors").write_bytes(weights)
                (Path(d) / "history.json").write_text(json.dumps(history))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)


def fit(
    name: str,
    build_model: Callable[[dict], torch.nn.Module],
    build_loss: Callable[[torch.nn.Module, dict], torch.nn.Module],
    train: TrainConfig,
    split: Split,
    storage_path: str,
    text_emb: np.ndarray | None,
    extra: dict[str, Any] | None = None,
) -> TrainOutput:
    """Run ``worker_loop`` on ``train.num_workers`` Ray Train workers; return the best model.

    A run with the same ``name`` and ``storage_path`` that finds earlier checkpoints resumes from the
    latest one. ``FailureConfig(max_failures=2)`` restarts lost workers from the latest checkpoint.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    if extra and "model" in extra:  # a config that no worker could run is refused here, not retried by Ray Train
        train.sparse_item_grads(int(extra["model"]["n_items"]), "cuda" if train.use_gpu else "cpu")
    config = {
        "name": name, "build_model": build_model, "build_loss": build_loss, "train": train.model_dump(),
        "train_seqs": split.train, "train_times": split.history_times("val"),
        "val_histories": split.histories("val"), "val_targets": split.targets("val"),
        "val_times": split.history_times("val"),
        "text_emb": text_emb, "threads_per_worker": max(1, (os.cpu_count() or 1) // train.num_workers),
        **(extra or {}),
    }
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config=share_data(config),
        scaling_config=ray.train.ScalingConfig(num_workers=train.num_workers, use_gpu=train.use_gpu),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=str(Path(storage_path).resolve()) if "://" not in storage_path else storage_path,
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute=VAL_METRIC, checkpoint_score_order="max"),
            failure_config=ray.train.FailureConfig(max_failures=2),
        ),
    )
    result = trainer.fit()
    best_ckpt = result.get_best_checkpoint(VAL_METRIC, "max")
    if best_ckpt is None:
        raise RuntimeError(f"{name}: training finished without a checkpoint")
    with best_ckpt.as_directory() as d:
        model = model_from_bytes((Path(d) / "config.json").read_bytes(),
                                 (Path(d) / "model.safetensors").read_bytes(), text_emb)
    with result.checkpoint.as_directory() as d:
        history = json.loads((Path(d) / "history.json").read_text())
    best = max(history, key=lambda m: m[VAL_METRIC])
    return TrainOutput(model, history, best, best_ckpt.path)
