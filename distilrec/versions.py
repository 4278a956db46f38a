"""Model versions under a model URI: list them, promote one, roll back (``distilrec model list | promote
VERSION | rollback``, ``POST /v1/model/promote`` and ``POST /v1/model/rollback``).

The model URI is a pipeline output ``OUT`` (which holds ``models/``) or its ``models/`` folder, on any
fsspec filesystem (a local folder, ``s3://…``, ``memory://…``). Moving ``models/LATEST`` publishes a
version: serving replicas poll it (``model_poll_s``) and swap the version in. Every move is recorded in
``models/HISTORY.json`` before ``LATEST`` moves (:func:`distilrec.artifacts.publish_version`).

What a rollback goes back to is the history replayed as a stack of published versions: publishing or
promoting a version puts it on top, a rollback takes the top off and serves the one below. Two
rollbacks in a row therefore go back two versions, and a rollback after a promote undoes the promote.
A ``LATEST`` moved by hand counts as published on top.

    for v in list_versions("out"):
        print(v.version, v.status, v.reason)
    promote("out", "v20270101-020000-000000")   # VersionError subclasses name what is wrong
    rollback("out")
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

from distilrec.artifacts import (
    FORMAT, HISTORY, LATEST, ArtifactError, _fs, publish_version, read_history, read_latest,
)

VERSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # a folder name, never a path


class VersionError(ValueError):
    """A version operation that cannot be done; ``code`` is the HTTP API's error code."""

    code = "invalid_version"


class UnknownVersion(VersionError):
    code = "unknown_version"


class IncompleteVersion(VersionError):
    """The version's folder has no readable manifest (a write that did not finish, another format)."""

    code = "version_incomplete"


class RefusedVersion(VersionError):
    """The offline gate refused the version; promoting it needs ``force``."""

    code = "version_refused"


class NoPreviousVersion(VersionError):
    code = "no_previous_version"


class NotAModelOutput(VersionError):
    """The URI holds no ``models/`` folder (or is one version's folder)."""

    code = "not_a_model_output"


@dataclass
class Version:
    """One version folder. ``status``: ``current`` (``LATEST`` names it), ``published`` (published
    before, a rollback can return to it), ``rolled back`` (published, then rolled back from),
    ``refused`` (the offline gate refused it and it was never published), ``incomplete`` (no readable
    manifest), ``-`` (never published, written without a gate verdict)."""

    version: str
    status: str
    created_at: str | None = None
    gate: dict[str, Any] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        return (self.gate or {}).get("reason", "")

    def ndcg(self, model: str, stage: str) -> float | None:
        """The manifest's NDCG@10 of ``model`` (student, teacher) on ``stage`` (val: the best epoch's
        validation figure, test)."""
        return (self.metrics.get(model) or {}).get("val_ndcg@10" if stage == "val" else "ndcg@10")


def models_folder(uri: str):
    """``(filesystem, path of the folder that holds the versions)`` for a model URI; :class:`NotAModelOutput`
    when there is none."""
    fs, path = _fs(uri)
    if fs.exists(posixpath.join(path, "manifest.json")):
        raise NotAModelOutput(f"{uri} is one version's folder; give the folder that holds models/ "
                              "(the pipeline's --output) instead")
    if fs.isdir(posixpath.join(path, "models")):
        return fs, posixpath.join(path, "models")
    if any(fs.exists(posixpath.join(path, name)) for name in (LATEST, HISTORY)):
        return fs, path
    raise NotAModelOutput(f"no model versions at {uri} (no models/ folder)")


def _manifest(fs, models: str, version: str) -> dict[str, Any]:
    path = posixpath.join(models, version, "manifest.json")
    try:
        manifest = json.loads(fs.cat_file(path))
    except FileNotFoundError:
        raise IncompleteVersion(f"version {version!r} is incomplete: it has no manifest.json (written last; "
                                "its write did not finish)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IncompleteVersion(f"version {version!r}: manifest.json is not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT:
        raise IncompleteVersion(f"version {version!r} has artifact format {manifest.get('format')!r}; this build "
                                f"serves format {FORMAT}")
    return manifest


def _folders(fs, models: str) -> list[str]:
    return sorted(posixpath.basename(e["name"].rstrip("/")) for e in fs.ls(models, detail=True)
                  if e["type"] == "directory")


def published_stack(history: list[dict[str, Any]], current: str | None) -> list[str]:
    """The published versions a rollback steps back through, the serving one last (module docstring)."""
    stack: list[str] = []
    for move in history:
        if move["action"] == "rolled_back" and stack:
            stack.pop()
        if move["version"] in stack:
            stack.remove(move["version"])
        stack.append(move["version"])
    if current and (not stack or stack[-1] != current):  # LATEST moved by hand
        if current in stack:
            stack.remove(current)
        stack.append(current)
    return stack


def list_versions(uri: str) -> list[Version]:
    """Every version folder under ``uri``, oldest first (by creation time, then name)."""
    fs, models = models_folder(uri)
    current, history = read_latest(fs, models), read_history(fs, models)
    stack, ever = published_stack(history, current), {m["version"] for m in history} | {current}
    out = []
    for name in _folders(fs, models):
        try:
            m = _manifest(fs, models, name)
        except IncompleteVersion:
            out.append(Version(name, "incomplete"))
            continue
        gate = m.get("gate")
        if name == current:
            status = "current"
        elif name in ever:
            status = "published" if name in stack else "rolled back"
        elif gate is not None and not gate.get("passed", gate.get("published")):
            status = "refused"
        else:
            status = "-"
        out.append(Version(name, status, m.get("created_at"), gate, m.get("metrics") or {}))
    return sorted(out, key=lambda v: (v.created_at or "", v.version))


def promote(uri: str, version: str, force: bool = False) -> dict[str, Any]:
    """Point ``LATEST`` at ``version`` (recorded as ``promoted``); returns ``{"version", "previous",
    "changed", …}``. The version must exist and be complete; one the offline gate refused needs ``force``."""
    fs, models = models_folder(uri)
    if not VERSION_NAME.match(version or ""):
        raise UnknownVersion(f"{version!r} is not a version name (letters, digits, '.', '_', '-')")
    if not fs.isdir(posixpath.join(models, version)):
        raise UnknownVersion(f"no version {version!r} under {uri} (distilrec model list shows them)")
    gate = _manifest(fs, models, version).get("gate") or {}
    refused = bool(gate) and not gate.get("passed", gate.get("published"))
    if refused and not force:
        raise RefusedVersion(f"version {version!r} was refused by the offline gate ({gate.get('reason')}); "
                             "promote it with force to publish it anyway")
    current = read_latest(fs, models)
    if current == version:
        return {"version": version, "previous": current, "changed": False}
    move = publish_version(fs, models, version, "promoted", **({"forced": True} if refused else {}))
    return {**move, "changed": True}


def rollback(uri: str) -> dict[str, Any]:
    """Point ``LATEST`` back at the version published before the serving one (recorded as
    ``rolled_back``); returns ``{"version", "previous", "changed", …}``. A version whose folder is gone
    or incomplete is stepped over; :class:`NoPreviousVersion` when none is left."""
    fs, models = models_folder(uri)
    current = read_latest(fs, models)
    if current is None:
        raise NoPreviousVersion(f"nothing is published under {uri} (no models/LATEST)")
    for candidate in reversed(published_stack(read_history(fs, models), current)[:-1]):
        if candidate == current:
            continue
        try:
            _manifest(fs, models, candidate)
        except IncompleteVersion:
            continue
        return {**publish_version(fs, models, candidate, "rolled_back"), "changed": True}
    raise NoPreviousVersion(f"no complete version was published before {current} under {uri} "
                            "(models/HISTORY.json); promote one by name instead")


def newer_refused(uri: str, serving_version: str) -> dict[str, Any] | None:
    """The newest version the offline gate refused that was created after ``serving_version`` and never
    published: ``{"version", "created_at", "reason"}``; None when there is none. Reads the manifests of
    the folders whose names sort after the serving one's only (names are creation times)."""
    fs, models = models_folder(uri)
    try:
        since = _manifest(fs, models, serving_version).get("created_at") or ""
    except (IncompleteVersion, FileNotFoundError, ArtifactError):
        since = ""
    ever = {m["version"] for m in read_history(fs, models)}
    for name in reversed(_folders(fs, models)):
        if name <= serving_version:
            break
        try:
            m = _manifest(fs, models, name)
        except IncompleteVersion:
            continue
        gate = m.get("gate") or {}
        if (m.get("created_at") or "") > since and gate and not gate.get("passed", True) and name not in ever:
            return {"version": name, "created_at": m.get("created_at"), "reason": gate.get("reason")}
    return None
