"""Teacher → distillation → evaluation → artifact: the whole training path.

Launch with ``distilrec pipeline`` (locally, or as a RayJob entrypoint on a cluster); its options are
the command line's (``distilrec pipeline --help``), this module has none of its own::

    distilrec pipeline --dataset synthetic --output out
    distilrec pipeline --dataset movielens:PATH --output out --use-gpu --workers 1   # one GPU, bf16 autocast

Writes ``OUT/report.json`` (layout in docs/architecture.md), ``OUT/models/<version>/`` (the artifact
serving loads), ``OUT/models/LATEST`` when the offline gate publishes the version (``distilrec.gate``;
``--force`` publishes it anyway) and, with the ``plots`` extra, ``training_curves.png`` and
``quality_cost.png``; Ray Train checkpoints go under ``OUT/ray/<run id>/<stage>``, and ``--resume``
continues the latest run from them (``ray/<run id>/run.json`` records what it must share).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import fsspec
import numpy as np
import pandas as pd
import yaml
from rich.console import Console

from distilrec.artifacts import ItemTable
from distilrec.config import PipelineConfig, StudentConfig, TeacherConfig, cache_home
from distilrec.data import Dataset, Split, load_dataset
from distilrec.resources import PeakMemory
from distilrec.evaluate import (
    build_report, compare_models, comparison_lines, evaluate_baselines, evaluate_ranks, format_table, model_ranks,
    scoring_costs, time_line,
)
from distilrec.gate import verdict_line, write_gated
from distilrec.text import build_tiny_encoder, resolve_encoder
from training.distill import distill
from training.embeddings import embed_in_process, embed_texts_ray
from training.loop import VAL_METRIC, TrainOutput
from training.teacher import train_teacher

console = Console()


class StageClock:
    """Wall-clock seconds of each stage of one pipeline call, for ``report["run"]``: where a run's time
    goes, without timestamps to dig out of the logs."""

    def __init__(self) -> None:
        self.started = datetime.now(timezone.utc)
        self._t0 = time.perf_counter()
        self.stage_s: dict[str, float] = {}
        self.peak_rss_mib: dict[str, dict] = {}  # per stage: this process's and its process tree's peak

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        peak = PeakMemory()
        try:
            with peak:
                yield
        finally:
            self.stage_s[name] = round(time.perf_counter() - t0, 1)
            self.peak_rss_mib[name] = peak.result()

    def total_s(self) -> float:
        return round(time.perf_counter() - self._t0, 1)


def epoch_summary(run: TrainOutput) -> dict:
    """A training stage's epochs: how many ran, the best one (counted from 0, as in the curves), its
    validation NDCG@10, the median epoch's seconds (the training pass, not the validation), and how
    many epochs trained under bf16 autocast (0: float32 throughout; a resumed run may mix the two)."""
    return {"trained": len(run.history), "best": int(run.best["epoch"]),
            "best_val_ndcg@10": run.best[VAL_METRIC],
            "median_epoch_s": round(statistics.median(h["epoch_s"] for h in run.history), 2),
            "bf16_epochs": sum(bool(h.get("bf16")) for h in run.history)}


def run_summary(clock: StageClock, runs: dict[str, TrainOutput], resume: bool) -> dict:
    """``report["run"]``: when the call started, its seconds in all and by stage, and each training
    stage's epochs. With ``resume`` the seconds are this call's: a stage found finished takes little."""
    return {"started": clock.started.strftime("%Y-%m-%dT%H:%M:%SZ"), "resumed": resume,
            "wall_s": clock.total_s(), "stage_s": dict(clock.stage_s), "peak_rss_mib": dict(clock.peak_rss_mib),
            "epochs": {name: epoch_summary(run) for name, run in runs.items()}}


def ensure_ray(num_workers: int, metrics_export_port: int | None = None,
               env: dict[str, str] | None = None) -> None:
    """Connect to the cluster in ``RAY_ADDRESS`` (a RayJob's driver), or start a local Ray instance
    with enough logical CPUs for ``num_workers`` training workers and the given metrics port. ``env``
    holds environment variables that the local instance's processes start with (a variable already
    set in this process keeps its value); a cluster that is already running has its own."""
    import ray

    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")  # worker prints once, not twice
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        for name, value in (env or {}).items():
            os.environ.setdefault(name, value)  # Ray's processes inherit this process's environment
        # Logical CPUs, not cores: room for the training workers and the Serve replicas side by side.
        ray.init(num_cpus=max(os.cpu_count() or 1, num_workers + 2), _metrics_export_port=metrics_export_port)


def item_embeddings(ds: Dataset, encoder: str, workdir: Path, figures: dict | None = None,
                    ray_workers: int = 1,
                    ray_min_items: int = PipelineConfig().text_ray_min_items) -> tuple[np.ndarray, str]:
    """Encode every item's text once (cached by content): ``(n_items, dim)`` float32 and the encoder's
    resolved name. ``encoder='tiny'`` builds a local BERT. From ``ray_min_items`` items on, as Ray
    Data batch inference (Ray started first with :func:`ensure_ray` and ``ray_workers``), else in this
    process; either way ``figures``, when given, receives the stage's
    :class:`training.embeddings.EmbedFigures` as a dict, and one console line says its rate."""
    if encoder == "tiny":
        encoder = build_tiny_encoder(workdir / "encoder", ds.texts)
    encoder = resolve_encoder(encoder)
    if len(ds.texts) >= ray_min_items:
        ensure_ray(ray_workers)
        emb, fig = embed_texts_ray(ds.texts, encoder, cache_dir=workdir / "cache", progress=True)
    else:
        emb, fig = embed_in_process(ds.texts, encoder, cache_dir=workdir / "cache")
    console.print(fig.line())
    if figures is not None:
        figures.update(fig.as_dict())
    return emb, encoder


def histories_frame(ds: Dataset) -> pd.DataFrame:
    """Every known interaction (user_id, item_id, timestamp) in time order, for serving."""
    users = np.repeat(ds.user_ids, [len(s) for s in ds.sequences])
    items = np.asarray(ds.item_ids, dtype=object)[np.concatenate(ds.sequences)]
    ts = np.concatenate(ds.timestamps) if ds.timestamps else np.zeros(len(items), dtype=np.int64)
    return pd.DataFrame({"user_id": users, "item_id": items, "timestamp": ts})


RUN_FILE = "run.json"


class ResumeMismatchError(ValueError):
    """``--resume`` found a latest run that trained on other data, another text encoder or other model
    shapes: its checkpoints cannot continue this command's training."""


def run_identity(ds: Dataset, encoder: str, text_dim: int, tcfg: TeacherConfig, scfg: StudentConfig) -> dict:
    """What a resumed run must share with the run it continues (``OUT/ray/<run id>/run.json``): the
    dataset (its counts and a hash of every interaction, item id and item text), the configured text
    encoder and its width, and the model shapes. The training settings (epochs, learning rates, workers,
    GPUs, bf16) may change between the two, as checkpoints carry over."""
    h = hashlib.sha256()
    for part in (ds.item_ids, ds.texts, ds.user_ids):
        h.update("\0".join(part).encode("utf-8", "replace") + b"\1")
    for seq in (*ds.sequences, *ds.timestamps):
        h.update(np.ascontiguousarray(seq, dtype=np.int64).tobytes() + b"\1")
    # not the dataset's name, which may follow its path: the same data read from elsewhere still resumes
    return {"dataset": {"users": ds.n_users, "items": ds.n_items,
                        "interactions": ds.n_interactions, "sha256": h.hexdigest()[:16]},
            "encoder": {"name": encoder, "dim": text_dim},
            # the catalogue size and text width follow from the two above
            "teacher": tcfg.model_dump(mode="json", exclude={"n_items", "text_dim"}),
            "student": scfg.model_dump(mode="json", exclude={"n_items", "text_dim"})}


def training_storage(out: str, resume: bool, identity: dict) -> str:
    """Ray Train storage for this run: ``OUT/ray/<run id>`` (``OUT`` a local folder or an fsspec URI
    such as ``s3://bucket/prefix``). A new run id unless ``resume``, in which case the latest run's id
    is reused and Ray Train restarts each stage from its latest checkpoint.

    A new run records ``identity`` (:func:`run_identity`) beside its checkpoints; a resumed run whose
    identity differs raises :class:`ResumeMismatchError` naming what changed (a run from before the
    record existed is resumed unchecked)."""
    fs, root = fsspec.core.url_to_fs(out)
    latest = posixpath.join(root, "ray", "LATEST_RUN")
    if resume and fs.exists(latest):
        run_id = fs.cat_file(latest).decode().strip()
        record = posixpath.join(root, "ray", run_id, RUN_FILE)
        if fs.exists(record):
            check_resumable(json.loads(fs.cat_file(record)), identity, f"{out.rstrip('/')}/ray/{run_id}")
        console.print(f"[bold]resuming[/] run {run_id} from its latest checkpoints")
    else:
        run_id = datetime.now(timezone.utc).strftime("run-%Y%m%d-%H%M%S")
        fs.makedirs(posixpath.join(root, "ray", run_id), exist_ok=True)
        fs.pipe_file(posixpath.join(root, "ray", run_id, RUN_FILE), json.dumps(identity, indent=2).encode())
        fs.pipe_file(latest, run_id.encode())
    return f"{out.rstrip('/')}/ray/{run_id}"


def check_resumable(recorded: dict, identity: dict, where: str) -> None:
    """Raise :class:`ResumeMismatchError` unless ``identity`` is the ``recorded`` one of the run at
    ``where``; the message names each difference, the dataset's by its counts."""
    now = json.loads(json.dumps(identity))  # the recorded form: tuples are lists
    changed = []
    for key in sorted(set(recorded) | set(now)):
        was, new = recorded.get(key), now.get(key)
        if was == new:
            continue
        if isinstance(was, dict) and isinstance(new, dict):
            fields = [f"{k} {was.get(k)!r} → {new.get(k)!r}" for k in sorted(set(was) | set(new))
                      if was.get(k) != new.get(k) and k != "sha256"]
            changed.append(f"{key}: {', '.join(fields) or 'same counts, other contents'}")
        else:
            changed.append(f"{key}: {was!r} → {new!r}")
    if changed:
        raise ResumeMismatchError(
            f"the latest run ({where}) trained with another {'; another '.join(changed)}. Its checkpoints "
            "cannot continue this training: run without --resume to start a new run")


class DatasetError(ValueError):
    """The pipeline's dataset cannot be read or split (a bad spec, a missing or malformed file, too few
    interactions). Other errors of a run are not this one, so a message can name the right option."""


def load_split(spec: str) -> tuple[Dataset, Split]:
    """The dataset ``spec`` and its leave-one-out split; :class:`DatasetError` if either cannot be made."""
    try:
        ds = load_dataset(spec)
        return ds, Split.leave_one_out(ds)
    except (ValueError, FileNotFoundError) as e:  # a bad spec, file, row, or too little data
        raise DatasetError(str(e)) from e


class OutputLocationError(ValueError):
    """The pipeline cannot write to its ``--output`` (checked before any work starts)."""


WRITE_CHECK = ".distilrec-write-check"


def output_locations(output: str) -> tuple[str, Path]:
    """``(OUT, local work folder)``. ``OUT`` is an absolute local path or the URI as given; the work
    folder (the text-embedding cache, a locally built encoder) is ``OUT`` itself when it is local,
    else a folder under ``$DISTILREC_CACHE_DIR`` (default :func:`distilrec.config.cache_home`:
    ``$XDG_CACHE_HOME/distilrec`` or ``~/.cache/distilrec``) named after the URI.

    A URI is tried at once with a small write (``OUT/.distilrec-write-check``, removed again), so that
    a missing filesystem package (``gcsfs``), missing credentials or a bucket that does not exist is an
    :class:`OutputLocationError` now, not a stack trace after minutes of data loading and baselines."""
    if "://" not in output:
        out = Path(output).expanduser().resolve()
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputLocationError(f"cannot make the folder {out}: {e.strerror or e}") from None
        return str(out), out
    out = output.rstrip("/")
    try:
        fs, root = fsspec.core.url_to_fs(out)
        probe = posixpath.join(root, WRITE_CHECK)
        fs.pipe_file(probe, b"distilrec")
        fs.rm_file(probe)
    except Exception as e:  # noqa: BLE001 - whatever stops the write (an import, credentials, the bucket)
        raise OutputLocationError(f"cannot write there ({type(e).__name__}: {e})") from None
    env = os.environ.get("DISTILREC_CACHE_DIR")
    cache = Path(env).expanduser() if env else cache_home()
    work = cache / "work" / hashlib.sha256(out.encode()).hexdigest()[:16]
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputLocationError(f"cannot make the local work folder {work} ({e.strerror or e}; "
                                  "set DISTILREC_CACHE_DIR or XDG_CACHE_HOME to a writable folder)") from None
    return out, work


def run_pipeline(spec: str, output: str, cfg: PipelineConfig = PipelineConfig(), resume: bool = False,
                 force: bool = False) -> dict:
    """Run the whole path on dataset ``spec``; return the report (also written to ``output``).

    ``output`` is a local folder or an fsspec URI (``s3://bucket/prefix``); ``resume=True`` continues
    the latest run in ``output`` from its Ray Train checkpoints. The new version is published
    (``models/LATEST``) when the offline gate passes it (``cfg.gate_min_ratio``, report['gate']), or
    with ``force``."""
    clock = StageClock()
    out, work = output_locations(output)
    with clock.stage("data"):
        ds, split = load_split(spec)
    console.print(f"[bold]dataset[/] {ds.name}: {ds.n_users} users, {ds.n_items} items, "
                  f"{ds.n_interactions} interactions")
    text_figures: dict = {}  # report["run"]["text_embeddings"]: the stage's path, items/s per core, cache hit
    with clock.stage("text_embeddings"):
        text_emb, encoder = item_embeddings(ds, cfg.encoder, work, text_figures,
                                            ray_workers=max(cfg.teacher_train.num_workers, cfg.distill.num_workers),
                                            ray_min_items=cfg.text_ray_min_items)
    text_dim = int(text_emb.shape[1])
    tcfg = TeacherConfig(n_items=ds.n_items, text_dim=text_dim, **cfg.teacher)
    scfg = StudentConfig(n_items=ds.n_items, text_dim=text_dim, **cfg.student)
    # before the baselines and Ray's start, so that a --resume that cannot continue is refused at once
    storage = training_storage(out, resume, run_identity(ds, cfg.encoder, text_dim, tcfg, scfg))

    def sample(max_users: int | None, seed: int) -> tuple[np.ndarray | None, dict]:
        """A fixed sample of users (None: every user) and its report entry (users read, of all, seed)."""
        users = split.val_sample(max_users, seed=seed)
        return users, {"users": ds.n_users if users is None else len(users), "of": ds.n_users,
                       "sample_seed": None if users is None else seed}

    val_users, validation = sample(cfg.val_max_users, seed=0)
    test_users, test = sample(cfg.test_max_users, seed=1)
    if test_users is not None:
        console.print(f"[bold]test[/] a fixed sample of {len(test_users):,} of {ds.n_users:,} users (test_max_users)")
    console.print("[bold]baselines[/] Popularity, EASE (λ on validation)")
    ranks: dict[str, np.ndarray] = {}  # each model's per-user test ranks, for the paired comparisons
    skipped: dict[str, str] = {}  # a model left out, and why
    with clock.stage("baselines"):
        models = evaluate_baselines(split, ds.n_items, ranks=ranks, ease_max_items=cfg.ease_max_items,
                                    val_users=val_users, skipped=skipped, test_users=test_users)
    for name, why in skipped.items():
        console.print(f"[bold]{name} skipped[/]: {why}")

    def evaluated(name: str, run: TrainOutput) -> None:
        """Test ``run``'s model: its per-user ranks, NDCG@10, HR@10 and best epoch under ``name``."""
        ranks[name] = model_ranks(run.model, split, users=test_users)
        models[name] = {**evaluate_ranks(ranks[name]), "best_epoch": run.best["epoch"],
                        "val_ndcg@10": run.best[VAL_METRIC]}

    with clock.stage("ray_start"):
        ensure_ray(max(cfg.teacher_train.num_workers, cfg.distill.num_workers))
        check_gpus(cfg)
    console.print(f"[bold]teacher[/] {cfg.teacher_train.num_workers} Ray Train workers, {tcfg}")
    with clock.stage("teacher"):  # each training stage with its test evaluation
        teacher = train_teacher(split, text_emb, tcfg, cfg.teacher_train, storage, val_users=val_users)
        evaluated("teacher", teacher)

    console.print(f"[bold]distillation[/] student {scfg}")
    with clock.stage("student"):
        student = distill(split, text_emb, teacher.model, scfg, cfg.distill, storage, val_users=val_users)
        evaluated("student", student)
    runs = {"teacher": teacher, "student": student}
    if cfg.student_without_teacher:
        console.print("[bold]student without the teacher[/] (same architecture, true next item only)")
        with clock.stage("student_no_distill"):
            runs["student_no_distill"] = distill(split, text_emb, None, scfg, cfg.distill, storage,
                                                 name="student_no_distill", val_users=val_users)
            evaluated("student_no_distill", runs["student_no_distill"])
    curves = {name: run.history for name, run in runs.items()}
    console.print("[bold]scoring cost[/] 1,000 candidates on one CPU thread, the models timed in turns")
    with clock.stage("scoring_cost"):
        for name, cost in scoring_costs({name: run.model for name, run in runs.items()}).items():
            models[name].update(cost)

    report = build_report(ds, models, extra={"config": json.loads(cfg.model_dump_json()), "validation": validation,
                                             "test": test, "skipped": skipped}, comparisons=compare_models(ranks))
    items = ItemTable(ds.item_ids, ds.titles, ds.texts, text_emb)
    console.print(f"[bold]gate[/] the student's validation NDCG@10 against the serving version's "
                  f"(at least {cfg.gate_min_ratio:g} ×), finite scores")
    with clock.stage("artifact"):
        report["artifact"], report["gate"] = write_gated(
            out, items=items, histories=histories_frame(ds), student=student.model, teacher=teacher.model,
            dataset=report["dataset"], metrics=models, encoder=encoder, split=split, val_users=val_users,
            min_ratio=cfg.gate_min_ratio, force=force,
        )
    console.print(f"[bold]gate[/] {verdict_line(report['gate'])}")
    report["run"] = run_summary(clock, runs, resume)  # the seconds up to here: the report and plots follow
    report["run"]["text_embeddings"] = text_figures
    with fsspec.open(f"{out}/report.json", "w") as f:
        json.dump(report, f, indent=2)
    with fsspec.open(f"{out}/training_curves.json", "w") as f:
        json.dump(curves, f, indent=2)
    try:
        from distilrec.plots import plot_quality_cost, plot_training_curves
    except ImportError as e:  # matplotlib is the `plots` extra; the report and the artifact are written already
        console.print(f"plots skipped: {e}")
    else:
        plot_training_curves(curves, f"{out}/training_curves.png")
        plot_quality_cost(report, f"{out}/quality_cost.png")
    console.print(format_table(report))
    for line in comparison_lines(report):
        console.print(line)
    console.print(time_line(report["run"]))
    console.print(f"report: {out}/report.json\nartifact: {report['artifact']}"
                  + ("" if report["gate"]["published"] else " (not published: LATEST did not move)"))
    return report


def load_config(path: str | None, use_gpu: bool = False, workers: int | None = None,
                bf16: bool | None = None) -> PipelineConfig:
    """The ``--config`` YAML (or the defaults), with the command line's ``--use-gpu``, ``--workers`` and
    ``--bf16`` / ``--no-bf16`` (``bf16`` True / False; None leaves the config's) applied to every
    training stage (teacher and distillation)."""
    if not path:
        cfg = PipelineConfig()
    else:
        with fsspec.open(path, "r") as f:
            cfg = PipelineConfig.model_validate(yaml.safe_load(f) or {})
    update = {**({"use_gpu": True} if use_gpu else {}), **({"num_workers": workers} if workers else {}),
              **({"bf16": bf16} if bf16 is not None else {})}
    if update:
        cfg = cfg.model_copy(update={"teacher_train": cfg.teacher_train.model_copy(update=update),
                                     "distill": cfg.distill.model_copy(update=update)})
    return cfg


class NotEnoughGPUs(ValueError):
    """A GPU run asks for more GPUs than the Ray cluster has."""


def require_gpus(workers: int) -> None:
    """Refuse a run of ``workers`` one-GPU Ray Train workers that the connected Ray cluster cannot place
    (Ray Train would wait for the GPUs for ever). Used by the pipeline and ``bench train``."""
    import ray

    have = ray.cluster_resources().get("GPU", 0)
    if workers > have:
        hint = (f"--workers {int(have)} on this cluster" if have >= 1 else "leave out --use-gpu here") + \
            ", or run on a cluster with more GPUs"
        raise NotEnoughGPUs(f"the Ray cluster has {have:g} GPUs and {workers} Ray Train workers need one each ({hint})")


def check_gpus(cfg: PipelineConfig) -> None:
    """:func:`require_gpus` for the training stages of ``cfg`` that run on GPUs."""
    need = max((t.num_workers for t in (cfg.teacher_train, cfg.distill) if t.use_gpu), default=0)
    if need:
        require_gpus(need)


if __name__ == "__main__":
    raise SystemExit("training.pipeline has no command line of its own: run `distilrec pipeline --help`")
