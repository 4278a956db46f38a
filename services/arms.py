"""A/B arms of the Ingress: which model version and scorer model answer a request.

The Ingress's ``user_config`` names an experiment and its arms (``services/serve_config.yaml``)::

    experiment: ranker-test          # salts the hash: another name reshuffles the users
    arms:
      - {name: control, model: latest, weight: 0.9}                         # the deployment's scorer_model
      - {name: teacher, model: latest, scorer_model: teacher, weight: 0.1}
      - {name: before, model: previous, weight: 0}                           # loaded, no traffic
      - {name: next, model: v2, shadow: true}                                # scored beside, never answers

``model``: ``latest`` (follows ``models/LATEST``), ``previous`` (the version published before the serving
one, followed the same way) or a version folder's name (pinned: never moves). ``scorer_model``:
``student`` | ``teacher`` (default: the deployment's). ``weight`` ≥ 0, the served arms' weights summing > 0.
``score_deadline_ms`` (optional, > 0): the arm's own budget for its model step in process (a slower model
under test gets its own; past it the arm's answer comes from the fallback, degraded); an arm with one gets
a serving state of its own. Without ``arms`` there is one arm, ``default``: the latest version and the
deployment's scorer model.

A user is assigned by :func:`bucket` (``blake2b("{experiment}:{user_id}")`` mapped to ``[0, 1)``) and the
arms' cumulative weights: the same arm on every request and every replica, whatever ``PYTHONHASHSEED``; a
request without a user id by a random draw. An :class:`Experiment` is immutable: a controller that moves
weights (a canary) builds another with :meth:`Experiment.with_weights` and swaps it in with one
assignment. A ``shadow: true`` arm takes no share of the split and never answers: the Ingress scores it
beside the served arm after the answer is sent and records the overlap of their lists
(:attr:`Experiment.shadows`).

With ``scorer: deployment`` the Scorer deployment scores with its own model, so every arm must be
``model: latest`` with the deployment's ``scorer_model`` (the arms then only label the traffic).
"""

from __future__ import annotations

import bisect
import hashlib
import math
import posixpath
import random
import re
from dataclasses import dataclass, replace
from typing import Any


SCORER_MODELS = ("student", "teacher")
ALIASES = ("latest", "previous")
DEFAULT_ARM = "default"
DEFAULT_EXPERIMENT = "default"
MAX_ARMS = 8  # each arm of another model holds one more model version per replica
ARM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # a metric tag value
ARM_KEYS = {"name", "model", "scorer_model", "weight", "shadow", "score_deadline_ms"}


class ArmsConfigError(ValueError):
    """The ``experiment`` / ``arms`` of a ``user_config`` cannot be served; the message says why."""


@dataclass(frozen=True)
class Arm:
    """One arm: ``model`` (``latest`` | ``previous`` | a version name), ``scorer_model`` (``student`` |
    ``teacher``), ``weight`` (its share of the traffic, relative to the others'), ``shadow`` and
    ``score_deadline_ms`` (its own model-step budget, ``None``: the deployment's ``score`` deadline)."""

    name: str
    model: str = "latest"
    scorer_model: str = "student"
    weight: float = 1.0
    shadow: bool = False
    score_deadline_ms: float | None = None

    @property
    def key(self) -> tuple:
        """``(model, scorer_model)``, with ``score_deadline_ms`` third when the arm has one: what the arm
        serves; arms with one key share one serving state."""
        if self.score_deadline_ms is None:
            return self.model, self.scorer_model
        return self.model, self.scorer_model, float(self.score_deadline_ms)


def bucket(experiment: str, user_id: str) -> float:
    """The user's place in ``[0, 1)`` for ``experiment``: the first 8 bytes of
    ``blake2b(f"{experiment}:{user_id}")`` over 2**64. Stable across processes and machines.

    >>> bucket("ranker-test", "42")
    0.6568608028684868
    """
    digest = hashlib.blake2b(f"{experiment}:{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0 ** 64


@dataclass(frozen=True)
class Experiment:
    """The arms of one experiment and their split. Build it with :meth:`of` (checks the arms)."""

    name: str
    arms: tuple[Arm, ...]
    bounds: tuple[float, ...]  # the served arms' cumulative shares, the last exactly 1.0
    served: tuple[Arm, ...]  # arms that answer (not shadow), in order, beside ``bounds``

    @classmethod
    def of(cls, name: str, arms: list[Arm] | tuple[Arm, ...]) -> "Experiment":
        """Check the arms (unique names, known scorer models, weights ≥ 0 summing > 0) and split them.
        Raises :class:`ArmsConfigError`."""
        if not isinstance(name, str) or not ARM_NAME.match(name):
            raise ArmsConfigError(f"experiment must be a name of letters, digits, '.', '_', '-' (up to 64), "
                                  f"got {name!r}")
        arms = tuple(arms)
        if not arms:
            raise ArmsConfigError("arms is empty; leave it out for the one default arm")
        if len(arms) > MAX_ARMS:
            raise ArmsConfigError(f"{len(arms)} arms; at most {MAX_ARMS}")
        names = [a.name for a in arms]
        if len(set(names)) != len(names):
            raise ArmsConfigError(f"arm names must be unique, got {names}")
        for a in arms:
            if not isinstance(a.name, str) or not ARM_NAME.match(a.name):
                raise ArmsConfigError(f"arm name {a.name!r}: letters, digits, '.', '_', '-' (up to 64)")
            if a.scorer_model not in SCORER_MODELS:
                raise ArmsConfigError(f"arm {a.name}: scorer_model must be one of {list(SCORER_MODELS)}, "
                                      f"got {a.scorer_model!r}")
            if not isinstance(a.model, str) or not (a.model in ALIASES or _version_name(a.model)):
                raise ArmsConfigError(f"arm {a.name}: model must be latest, previous or a version folder's "
                                      f"name, got {a.model!r}")
            if isinstance(a.weight, bool) or not isinstance(a.weight, (int, float)) or not math.isfinite(a.weight) \
                    or a.weight < 0:
                raise ArmsConfigError(f"arm {a.name}: weight must be a finite number >= 0, got {a.weight!r}")
            if not isinstance(a.shadow, bool):
                raise ArmsConfigError(f"arm {a.name}: shadow must be true or false, got {a.shadow!r}")
            ms = a.score_deadline_ms
            if ms is not None and (isinstance(ms, bool) or not isinstance(ms, (int, float)) or not math.isfinite(ms)
                                   or ms <= 0):
                raise ArmsConfigError(f"arm {a.name}: score_deadline_ms must be a number > 0, got {ms!r}")
        served = tuple(a for a in arms if not a.shadow)
        if not served:
            raise ArmsConfigError("every arm is a shadow; at least one arm must answer")
        total = sum(a.weight for a in served)
        if not total > 0:
            raise ArmsConfigError(f"the arms' weights sum to {total}; they must sum to more than 0")
        bounds, acc = [], 0.0
        for a in served:
            acc += a.weight
            bounds.append(acc / total)
        bounds[-1] = 1.0
        return cls(name, arms, tuple(bounds), served)

    def assign(self, user_id: str | None) -> Arm:
        """The arm that answers ``user_id`` (sticky: the hash of the experiment and the id); a request
        without a user id draws at random. One arm: no hash."""
        if len(self.served) == 1:
            return self.served[0]
        u = bucket(self.name, user_id) if user_id is not None else random.random()
        return self.served[min(bisect.bisect_right(self.bounds, u), len(self.served) - 1)]

    def with_weights(self, weights: dict[str, float]) -> "Experiment":
        """A copy with these arms' weights changed (the others kept), checked as :meth:`of` does. The
        split is cumulative in the arms' order: when the last arm grows (a canary listed last), users only
        move into it, and its users stay."""
        unknown = set(weights) - {a.name for a in self.arms}
        if unknown:
            raise ArmsConfigError(f"no arms named {sorted(unknown)}")
        return Experiment.of(self.name, [replace(a, weight=weights.get(a.name, a.weight)) for a in self.arms])

    @property
    def keys(self) -> set[tuple]:
        """The :attr:`Arm.key` of every arm (served or shadow): the serving states the arms need."""
        return {a.key for a in self.arms}

    @property
    def shadows(self) -> tuple[Arm, ...]:
        """The shadow arms, in order: scored beside every served answer, never answering."""
        return tuple(a for a in self.arms if a.shadow)

    def describe(self) -> dict[str, Any]:
        """For ``GET /v1/model``: the experiment's name and its arms with their shares of the traffic."""
        shares = dict(zip((a.name for a in self.served),
                          (b - a for a, b in zip((0.0,) + self.bounds[:-1], self.bounds))))
        return {"name": self.name, "arms": [{"name": a.name, "model": a.model, "scorer_model": a.scorer_model,
                                             "weight": a.weight, "share": round(shares.get(a.name, 0.0), 6),
                                             "shadow": a.shadow,
                                             **({"score_deadline_ms": a.score_deadline_ms}
                                                if a.score_deadline_ms is not None else {})}
                                            for a in self.arms]}


def default_experiment(scorer_model: str) -> Experiment:
    """One arm, ``default``: the latest version with the deployment's scorer model."""
    return Experiment.of(DEFAULT_EXPERIMENT, [Arm(DEFAULT_ARM, "latest", scorer_model, 1.0)])


def parse_experiment(config: dict[str, Any], scorer_model: str, inline: bool = True) -> Experiment:
    """The experiment of an Ingress ``user_config`` (its ``experiment`` and ``arms`` keys; without
    ``arms``, :func:`default_experiment`). ``scorer_model``: the deployment's; ``inline``: whether the
    Ingress scores in process (with ``scorer: deployment`` every arm must serve what the Scorer does).
    Raises :class:`ArmsConfigError`."""
    raw = config.get("arms")
    if raw is None:
        return default_experiment(scorer_model)
    if not isinstance(raw, list):
        raise ArmsConfigError(f"arms must be a list of {{name, model, scorer_model, weight, shadow}}, got "
                              f"{type(raw).__name__}")
    arms = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict) or "name" not in entry:
            raise ArmsConfigError(f"arms[{i}] must be a mapping with a name, got {entry!r}")
        extra = set(entry) - ARM_KEYS
        if extra:
            raise ArmsConfigError(f"arms[{i}] ({entry.get('name')}): unknown keys {sorted(extra)}; known: "
                                  f"{sorted(ARM_KEYS)}")
        arms.append(Arm(entry["name"], entry.get("model", "latest"), entry.get("scorer_model") or scorer_model,
                        entry.get("weight", 1.0), entry.get("shadow", False), entry.get("score_deadline_ms")))
    exp = Experiment.of(config.get("experiment", DEFAULT_EXPERIMENT), arms)
    if not inline:
        other = [a.name for a in exp.arms if a.key != ("latest", scorer_model)]
        if other:
            raise ArmsConfigError(f"arms {other}: with scorer: deployment the Scorer deployment scores with its own "
                                  f"model, so every arm must be model: latest, scorer_model: {scorer_model} (and no "
                                  f"score_deadline_ms)")
    return exp


def _version_name(name: str) -> bool:
    from distilrec.versions import VERSION_NAME  # the artifacts' modules load torch: only for a pinned arm

    return bool(VERSION_NAME.match(name))


def version_uri(model_uri: str, version: str) -> str:
    """The folder of ``version`` under ``model_uri`` (a pipeline output or its ``models/`` folder).
    Raises ``distilrec.versions.VersionError`` when ``model_uri`` holds no versions."""
    from distilrec.versions import models_folder

    _, models = models_folder(model_uri)
    proto = str(model_uri).split("://", 1)[0] + "://" if "://" in str(model_uri) else ""
    return f"{proto}{posixpath.join(models, version)}"


def previous_version(model_uri: str) -> str:
    """The folder of the version published before the serving one (what ``distilrec model rollback``
    would serve: ``models/HISTORY.json`` replayed, versions without a manifest stepped over); reads only.
    Raises ``LookupError`` when there is none."""
    from distilrec.artifacts import read_history, read_latest
    from distilrec.versions import models_folder, published_stack

    fs, models = models_folder(model_uri)
    current = read_latest(fs, models)
    for candidate in reversed(published_stack(read_history(fs, models), current)[:-1]):
        if candidate != current and fs.exists(posixpath.join(models, candidate, "manifest.json")):
            return version_uri(model_uri, candidate)
    raise LookupError(f"no version was published before {current} under {model_uri} (models/HISTORY.json)")


__all__ = ["ALIASES", "Arm", "ArmsConfigError", "DEFAULT_ARM", "Experiment", "SCORER_MODELS", "bucket",
           "default_experiment", "parse_experiment", "previous_version", "version_uri", "_fs"]
