"""Model artifacts: versioned folders on any fsspec URI (local path, ``s3://…``, ``memory://…``).

A pipeline output ``OUT`` holds ``OUT/models/<version>/`` and a ``OUT/models/LATEST`` pointer that is
written last, only for a version that is published (the pipeline's offline gate, ``distilrec.gate``, or
an operator's promote / rollback, ``distilrec.versions``). ``OUT/models/HISTORY.json`` lists every move
of ``LATEST``, written before it moves, so that a rollback knows what was published before. A version
folder holds everything serving needs, and serving rebuilds every model from it alone::

    manifest.json                 format, version, created_at, dataset, metrics, encoder, gate (written last)
    items.parquet                 item_id, title, text, attributes (JSON; row i = model item row i)
    item_text_emb.safetensors     text_emb (N, text_dim)
    histories.parquet             user_id, item_id, timestamp (known interactions, time order)
    student/config.json, student/model.safetensors
    teacher/config.json, teacher/model.safetensors
    encoder/                      the text encoder, when it was a local folder

    art = load_artifact("out")            # the latest version
    art.student.score(...)
"""

from __future__ import annotations

import io
import json
import posixpath
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem
import numpy as np
import pandas as pd
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from distilrec.models import MODELS

# 2: transformer student with time-gap features (format 1 held a pooled-history student).
FORMAT = 2


class ArtifactError(RuntimeError):
    """An artifact is missing, incomplete or incompatible."""


def _fs(uri: str):
    fs, path = fsspec.core.url_to_fs(str(uri))
    return fs, path


def _write_bytes(fs, path: str, data: bytes) -> None:
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with fs.open(path, "wb") as f:
        f.write(data)


def _read_bytes(fs, path: str) -> bytes:
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ArtifactError(f"artifact file missing: {path}") from None


# --------------------------------------------------------------------------------------------- models

def model_to_bytes(model: torch.nn.Module) -> tuple[bytes, bytes]:
    """``(config.json, model.safetensors)`` contents of a model (persistent weights only)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return model.cfg.model_dump_json(indent=2).encode(), st_save(state)


def model_from_bytes(config: bytes, weights: bytes, text_emb: np.ndarray | None) -> torch.nn.Module:
    """Rebuild a model from its ``config.json`` and weights; its shapes come from the config alone."""
    meta = json.loads(config)
    kind = meta.get("kind")
    if kind not in MODELS:
        raise ArtifactError(f"unknown model kind {kind!r} in config")
    cls, cfg_cls = MODELS[kind]
    try:
        cfg = cfg_cls.model_validate(meta)
    except ValueError as e:  # pydantic's ValidationError
        raise ArtifactError(f"{kind} config does not fit this build: {e}") from None
    emb = torch.from_numpy(np.array(text_emb, dtype=np.float32)) if cfg.text_dim else None
    try:
        model = cls(cfg, text_emb=emb)
    except ValueError as e:
        raise ArtifactError(f"item table does not fit the {kind} config: {e}") from None
    try:
        model.load_state_dict(st_load(weights))
    except RuntimeError as e:
        raise ArtifactError(f"weights do not match the {kind} config: {e}") from None
    return model.eval()


def save_model(uri: str, model: torch.nn.Module) -> None:
    fs, path = _fs(uri)
    config, weights = model_to_bytes(model)
    _write_bytes(fs, posixpath.join(path, "config.json"), config)
    _write_bytes(fs, posixpath.join(path, "model.safetensors"), weights)


def load_model(uri: str, text_emb: np.ndarray | None) -> torch.nn.Module:
    fs, path = _fs(uri)
    return model_from_bytes(
        _read_bytes(fs, posixpath.join(path, "config.json")),
        _read_bytes(fs, posixpath.join(path, "model.safetensors")),
        text_emb,
    )


# ------------------------------------------------------------------------------------------ artifacts

@dataclass
class ItemTable:
    """The catalogue as the models see it: row ``i`` is item ``item_ids[i]``.

    ``attributes[i]`` is ``{"genres": ["Comedy", …], "tags": […]}`` (for filters and explanations);
    when not given it is read back from the item text (``"title. genres: a, b. tags: x"``, the form
    every dataset loader writes), so artifacts written before the column existed still have it.
    """

    item_ids: list[str]
    titles: list[str]
    texts: list[str]
    text_emb: np.ndarray  # (N, text_dim)
    attributes: list[dict[str, list[str]]] | None = None
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.index = {it: i for i, it in enumerate(self.item_ids)}
        if self.attributes is None:
            from distilrec.catalog import parse_attributes

            self.attributes = [parse_attributes(t, x) for t, x in zip(self.titles, self.texts)]

    def __len__(self) -> int:
        return len(self.item_ids)


@dataclass
class Artifact:
    uri: str
    manifest: dict[str, Any]
    items: ItemTable
    student: torch.nn.Module
    teacher: torch.nn.Module | None
    histories: dict[str, list[str]]
    encoder_uri: str | None
    history_times: dict[str, list[int]] | None = None  # unix seconds, aligned with ``histories``

    @property
    def version(self) -> str:
        return self.manifest["version"]


def new_version() -> str:
    return datetime.now(timezone.utc).strftime("v%Y%m%d-%H%M%S-%f")


def write_artifact(
    out_uri: str,
    *,
    items: ItemTable,
    histories: pd.DataFrame,
    student: torch.nn.Module,
    teacher: torch.nn.Module | None,
    dataset: dict,
    metrics: dict,
    encoder: str | None,
    version: str | None = None,
    gate: dict | None = None,
    publish: bool = True,
) -> str:
    """Write a new version under ``out_uri/models/`` and, with ``publish``, point ``LATEST`` at it
    (:func:`publish_version`); returns its URI. An unpublished version is kept for inspection and for a
    later ``distilrec model promote``.

    ``encoder`` is a local folder (copied into the artifact) or a hub id (recorded by name); ``gate``
    (the offline gate's verdict, :func:`distilrec.gate.offline_gate`) goes into the manifest.
    """
    version = version or new_version()
    fs, root = _fs(out_uri)
    base = posixpath.join(root, "models", version)
    enc_meta: dict[str, Any] = {"name_or_path": encoder, "embedded": False, "dim": int(items.text_emb.shape[1])}
    if encoder and Path(encoder).is_dir():
        fs.makedirs(posixpath.join(base, "encoder"), exist_ok=True)
        for f in Path(encoder).iterdir():
            if f.is_file():
                _write_bytes(fs, posixpath.join(base, "encoder", f.name), f.read_bytes())
        enc_meta.update(embedded=True, name_or_path="encoder")

    table = pd.DataFrame({"item_id": items.item_ids, "title": items.titles, "text": items.texts,
                          "attributes": [json.dumps(a, ensure_ascii=False) for a in items.attributes]})
    _write_bytes(fs, posixpath.join(base, "items.parquet"), _parquet(table))
    _write_bytes(fs, posixpath.join(base, "item_text_emb.safetensors"),
                 st_save({"text_emb": torch.from_numpy(np.ascontiguousarray(items.text_emb, dtype=np.float32))}))
    _write_bytes(fs, posixpath.join(base, "histories.parquet"), _parquet(histories))
    for name, model in (("student", student), ("teacher", teacher)):
        if model is not None:
            save_model(f"{_proto(out_uri)}{posixpath.join(base, name)}", model)
    manifest = {
        "format": FORMAT,
        "version": version,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "dataset": dataset,
        "metrics": metrics,
        "encoder": enc_meta,
        "n_items": len(items),
        **({"gate": gate} if gate is not None else {}),
    }
    _write_bytes(fs, posixpath.join(base, "manifest.json"), json.dumps(manifest, indent=2).encode())
    if publish:
        publish_version(fs, posixpath.join(root, "models"), version,
                        "forced" if gate and gate.get("forced") else "published")
    return f"{_proto(out_uri)}{base}"


# ------------------------------------------------------------------------------ LATEST and HISTORY

LATEST = "LATEST"
HISTORY = "HISTORY.json"


def read_latest(fs, models: str) -> str | None:
    """The version that ``models/LATEST`` names (``models``: the folder of the versions); None without one."""
    try:
        return _read_bytes(fs, posixpath.join(models, LATEST)).decode().strip() or None
    except ArtifactError:
        return None


def read_history(fs, models: str) -> list[dict[str, Any]]:
    """The moves of ``LATEST``, oldest first: ``{"version", "action", "at", "previous"}`` each, ``action``
    one of ``found`` (what ``LATEST`` named when the history began), ``published``, ``forced``,
    ``promoted``, ``rolled_back``; ``[]`` without a history file."""
    try:
        data = json.loads(_read_bytes(fs, posixpath.join(models, HISTORY)))
    except ArtifactError:
        return []
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{posixpath.join(models, HISTORY)} is not valid JSON ({e})") from None
    return list(data.get("moves", []))


def publish_version(fs, models: str, version: str, action: str, **extra: Any) -> dict[str, Any]:
    """Point ``models/LATEST`` at ``version``, recording the move in ``models/HISTORY.json`` first (a
    crash between the two leaves a history one move ahead, never a move without its record). Returns
    the recorded move. The history file is rewritten whole: one writer at a time (the pipeline, an
    operator), as for ``LATEST`` itself.

    ``LATEST`` is replaced by a rename on a local disk, so that a replica that polls it never reads a
    half-written name; an object store's put is atomic already."""
    previous = read_latest(fs, models)
    history = read_history(fs, models)
    now = datetime.now(timezone.utc).isoformat()
    if not history and previous and previous != version:  # LATEST moved before there was a history
        history.append({"version": previous, "action": "found", "at": now, "previous": None})
    move = {"version": version, "action": action, "at": now, "previous": previous, **extra}
    history.append(move)
    _write_bytes(fs, posixpath.join(models, HISTORY), json.dumps({"moves": history}, indent=2).encode())
    latest = posixpath.join(models, LATEST)
    if isinstance(fs, LocalFileSystem):
        tmp = f"{latest}.tmp"
        _write_bytes(fs, tmp, version.encode())
        fs.mv(tmp, latest)
    else:
        _write_bytes(fs, latest, version.encode())
    return move


def _proto(uri: str) -> str:
    uri = str(uri)
    return uri.split("://", 1)[0] + "://" if "://" in uri else ""


def _parquet(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def resolve(uri: str) -> str:
    """The version folder that ``uri`` means: itself, or what ``uri/models/LATEST`` or ``uri/LATEST`` names."""
    fs, path = _fs(uri)
    if fs.exists(posixpath.join(path, "manifest.json")):
        return str(uri)
    for sub in ("models", ""):
        latest = posixpath.join(path, sub, "LATEST") if sub else posixpath.join(path, "LATEST")
        if fs.exists(latest):
            version = _read_bytes(fs, latest).decode().strip()
            return f"{_proto(uri)}{posixpath.join(posixpath.dirname(latest), version)}"
    raise ArtifactError(f"no model artifact at {uri} (no manifest.json, models/LATEST or LATEST)")


def read_manifest(uri: str) -> dict[str, Any]:
    """The manifest of the version that ``uri`` resolves to (cheap: one small file)."""
    uri = resolve(uri)
    fs, base = _fs(uri)
    try:
        manifest = json.loads(_read_bytes(fs, posixpath.join(base, "manifest.json")))
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{uri}: manifest.json is not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{uri}: artifact format {manifest.get('format')!r}, this build reads {FORMAT}")
    return manifest


def load_artifact(uri: str, with_teacher: bool = False, with_histories: bool = True) -> Artifact:
    """Load an artifact version (or the latest under a pipeline output folder).

    ``with_histories=False`` skips the interaction log (``histories`` is then empty): the scorer does
    not need it, and a hot reload then takes less of the serving process's time."""
    uri = resolve(uri)
    fs, base = _fs(uri)
    manifest = read_manifest(uri)
    table = pd.read_parquet(io.BytesIO(_read_bytes(fs, posixpath.join(base, "items.parquet"))))
    emb = st_load(_read_bytes(fs, posixpath.join(base, "item_text_emb.safetensors")))["text_emb"].numpy()
    attributes = [json.loads(a) for a in table["attributes"]] if "attributes" in table.columns else None
    items = ItemTable(table["item_id"].astype(str).tolist(), table["title"].astype(str).tolist(),
                      table["text"].astype(str).tolist(), emb, attributes)
    student = load_model(f"{_proto(uri)}{posixpath.join(base, 'student')}", emb)
    teacher = None
    if with_teacher:
        teacher = load_model(f"{_proto(uri)}{posixpath.join(base, 'teacher')}", emb)
    if student.cfg.n_items != len(items):
        raise ArtifactError(f"{uri}: student has {student.cfg.n_items} items, item table {len(items)}")
    histories: dict[str, list[str]] = {}
    times: dict[str, list[int]] = {}
    if with_histories:
        hist_df = pd.read_parquet(io.BytesIO(_read_bytes(fs, posixpath.join(base, "histories.parquet"))))
        frame = pd.DataFrame({
            "user_id": hist_df["user_id"].astype(str), "item_id": hist_df["item_id"].astype(str),
            "timestamp": hist_df["timestamp"].astype("int64") if "timestamp" in hist_df.columns else 0,
        })
        grouped = frame.groupby("user_id", sort=False)  # keeps each user's rows in file (time) order
        histories = grouped["item_id"].agg(list).to_dict()
        times = {u: [int(t) for t in ts] for u, ts in grouped["timestamp"].agg(list).items()}
    return Artifact(uri, manifest, items, student, teacher, histories, encoder_location(uri, manifest), times)


def encoder_location(uri: str, manifest: dict[str, Any]) -> str | None:
    """Where the text encoder of the artifact version at ``uri`` (resolved) is: its ``encoder/`` folder
    when the encoder was embedded, else the manifest's name or path (a hub id); ``None`` without one."""
    enc = manifest.get("encoder", {})
    if not enc.get("name_or_path"):
        return None
    if enc.get("embedded"):
        _, base = _fs(uri)
        return f"{_proto(uri)}{posixpath.join(base, 'encoder')}"
    return enc["name_or_path"]
