"""``distilrec bench step``: the time of one training step, two ways in turns: with the written-out
softmax losses (:func:`distilrec.losses.softmax_loss`) against autograd through PyTorch's own
(:func:`distilrec.losses.softmax_loss_reference`), or (``--compare bf16``) in float32 against bf16
autocast, as the pipeline's workers run it with ``TrainConfig.bf16`` (:func:`training.loop.step_autocast`).

    distilrec bench step --output bench-out                 # → bench-out/step.json, step.md
    distilrec bench step --output bench-out --compare bf16  # float32 against bf16 autocast

A step is what each Ray Train worker runs: the forward pass of the training wrapper, its backward pass and
Adam, for ``batch_size / num_workers`` users (the default :class:`~distilrec.config.PipelineConfig`: 16)
with full-length histories, on one thread, with the default shapes and distillation settings over a
catalogue of ``--items`` items (9,724 by default, ml-latest-small's) with random weights, and with
PyTorch's huge pages as the pipeline has them (:func:`distilrec.cli.huge_pages_default`; run it with
``THP_MEM_ALLOC_ENABLE=0`` for 4 kB pages). Three stages: the teacher, the distilled student and the
student alone. Each stage is timed both ways in alternating blocks of ``--block`` steps, so that a busier
stretch of a shared machine falls on both, and the figure is the ratio of the two medians. The step's
cost depends on the shapes only (not on what the weights have learnt), so random weights and histories
measure it. bf16 pays only on a CPU with bf16 instructions; the result records whether this one has them.
"""

from __future__ import annotations

import contextlib
import copy
import os
import statistics
import time
from typing import Any, Callable, Iterator

import numpy as np
import torch

from distilrec import losses
from distilrec.bench.report import write_tables
from distilrec.config import PipelineConfig, StudentConfig, TeacherConfig, TrainConfig
from distilrec.losses import StudentTrain, TeacherTrain, next_item_batch
from distilrec.models import Student, Teacher

IMPLEMENTATIONS = {"written-out": losses.softmax_loss, "autograd": losses.softmax_loss_reference}


@contextlib.contextmanager
def _loss(name: str) -> Iterator[None]:
    """The training wrappers call ``losses.softmax_loss``; this swaps the implementation they find."""
    before = losses.softmax_loss
    losses.softmax_loss = IMPLEMENTATIONS[name]
    try:
        yield
    finally:
        losses.softmax_loss = before


def _autocast(on: bool) -> contextlib.AbstractContextManager:
    """The pipeline's own step context (:func:`training.loop.step_autocast`), with bf16 asked for or not."""
    from training.loop import step_autocast

    return step_autocast(TrainConfig(bf16=on), torch.device("cpu"))


# Each comparison: {way: the context of a step's forward pass}, the way under test first, the reference second.
COMPARISONS: dict[str, dict[str, Callable[[], contextlib.AbstractContextManager]]] = {
    "losses": {"written-out": lambda: _loss("written-out"), "autograd": lambda: _loss("autograd")},
    "bf16": {"bf16-autocast": lambda: _autocast(True), "float32": lambda: _autocast(False)},
}


def ratio_key(compare: str) -> str:
    """The result's key of a comparison's ratio, the reference's time over the tested way's:
    ``autograd_over_written_out``, ``float32_over_bf16_autocast``."""
    tested, reference = COMPARISONS[compare]
    return f"{reference}_over_{tested}".replace("-", "_")


def _batch(n_items: int, users: int, length: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Random full-length histories of distinct items, a minute to an hour apart."""
    rng = np.random.default_rng(seed)
    seqs = [rng.choice(n_items, size=length + 1, replace=n_items <= length) for _ in range(users)]
    times = [np.cumsum(rng.integers(60, 3600, size=length + 1)) for _ in range(users)]
    return next_item_batch(seqs, n_items, length, times)


def _stages(cfg: PipelineConfig, n_items: int, text_dim: int, seed: int) -> dict[str, tuple[torch.nn.Module, int]]:
    """``{stage: (training wrapper, batch length)}`` for the teacher, the distilled student and the student
    alone, built as the pipeline builds them (the student starts in the teacher's item space). The
    distilled student gets a copy of the teacher, which its wrapper freezes."""
    torch.manual_seed(seed)
    text = torch.randn(n_items, text_dim)
    teacher = Teacher(TeacherConfig(n_items=n_items, text_dim=text_dim, **cfg.teacher), text)
    scfg = StudentConfig(n_items=n_items, text_dim=text_dim, **cfg.student)
    distilled, alone = Student(scfg, text), Student(scfg, text)
    distilled.items.load_state_dict(teacher.items.state_dict())
    d = cfg.distill
    # The distillation batch carries the teacher's reach (training/distill.py); the student alone reads its own.
    return {
        "teacher": (TeacherTrain(teacher, cfg.teacher_train.mask_history), teacher.cfg.max_len),
        "student": (StudentTrain(distilled, copy.deepcopy(teacher), d.temperature, d.alpha, d.mask_history),
                    max(scfg.max_len, teacher.cfg.max_len)),
        "student_no_distill": (StudentTrain(alone, None, mask_history=d.mask_history), scfg.max_len),
    }


def run_step_bench(items: int = 9724, text_dim: int = 384, steps: int = 30, block: int = 5, seed: int = 0,
                   cfg: PipelineConfig | None = None, compare: str = "losses") -> dict[str, Any]:
    """Milliseconds per training step, median over ``steps`` timed steps per way and stage (after one
    uncounted step per block), and each stage's ratio (:func:`ratio_key`): the autograd / written-out
    losses, or float32 / bf16 autocast."""
    if steps < 1 or block < 1:
        raise ValueError(f"steps={steps}, block={block}: both must be at least 1")
    if compare not in COMPARISONS:
        raise ValueError(f"compare={compare!r}: one of {', '.join(COMPARISONS)}")
    from training.loop import cpu_bf16_instructions

    ways, key = COMPARISONS[compare], ratio_key(compare)
    tested, reference = ways
    cfg = cfg or PipelineConfig()
    users = max(1, cfg.teacher_train.batch_size // cfg.teacher_train.num_workers)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each of the pipeline's two workers on two cores
    results: dict[str, Any] = {}
    try:
        for stage, (wrapper, length) in _stages(cfg, items, text_dim, seed).items():
            wrapper.train()
            opt = torch.optim.Adam([p for p in wrapper.parameters() if p.requires_grad], lr=1e-3)
            batches = [_batch(items, users, length, seed + i) for i in range(block + 1)]
            times: dict[str, list[float]] = {name: [] for name in ways}
            while min(len(v) for v in times.values()) < steps:
                for name, way in ways.items():
                    for i, (inputs, targets, stamps) in enumerate(batches):
                        t0 = time.perf_counter()
                        with way():  # the forward pass, as the pipeline's workers run it (training/loop.py)
                            loss = wrapper(inputs, targets, stamps)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                        if i:  # the first step of a block warms the caches after the other way
                            times[name].append((time.perf_counter() - t0) * 1000)
            ms = {name: round(statistics.median(v[:steps]), 1) for name, v in times.items()}
            results[stage] = {"ms_per_step": ms, key: round(ms[reference] / ms[tested], 3)}
    finally:
        torch.set_num_threads(threads)
    return {"compare": compare, "items": items, "text_dim": text_dim, "users_per_step": users, "steps": steps,
            "block": block, "threads": 1,
            "huge_pages": os.environ.get("THP_MEM_ALLOC_ENABLE", "0") not in ("", "0"),
            "cpu": torch.cpu.get_capabilities().get("cpu_name", ""), "cpu_bf16": cpu_bf16_instructions(),
            "stages": results}


def step_table(result: dict[str, Any]) -> str:
    """The Markdown table of a :func:`run_step_bench` result."""
    compare = result.get("compare", "losses")
    tested, reference = (name.replace("-", " ") for name in COMPARISONS[compare])
    rows = [f"| stage | ms / step, {tested} | ms / step, {reference} | {reference} / {tested} |",
            "| --- | --- | --- | --- |"]
    for stage, r in result["stages"].items():
        a, b = (r["ms_per_step"][name] for name in COMPARISONS[compare])
        rows.append(f"| {stage} | {a:.1f} | {b:.1f} | {r[ratio_key(compare)]:.2f} × |")
    cpu = result.get("cpu") or "this CPU"
    bf16 = result.get("cpu_bf16")
    rows.append(f"\n{result['users_per_step']} users a step over {result['items']:,} items, one thread, the median of "
                f"{result['steps']} steps each way (in alternating blocks of {result['block']}, after one "
                "uncounted step each); PyTorch's huge pages (THP_MEM_ALLOC_ENABLE) "
                f"{'on' if result['huge_pages'] else 'off'}"
                + ("" if bf16 is None else f"; {cpu}, bf16 instructions: {', '.join(bf16) or 'none'}"))
    return "\n".join(rows) + "\n"


def write_step_bench(result: dict[str, Any], output: str, command: str) -> str:
    """``step.json`` (with the command line) and ``step.md`` into ``output``; returns the table."""
    table = step_table(result)
    write_tables(output, "step", table, {**result, "command": command})
    return table
