"""A canary: one A/B arm that starts at a small share of the traffic and moves up in steps while its
figures stay within bounds of the stable arms', or is rolled back by itself. Plain Python (no Ray): the
Ingress runs the controller (:meth:`services.ingress.Ingress._canary_tick`), this module decides.

The Ingress's ``user_config`` names it beside the arms (``services/serve_config.yaml``)::

    arms:
      - {name: stable, model: latest, weight: 1}
      - {name: next, model: v2}                     # the canary: the last served arm
    canary:
      arm: next
      start_weight: 0.05            # its share of the traffic at the start
      step: 0.1                     # added per interval; or a list of shares, e.g. [0.1, 0.25, 0.5, 1.0]
      interval_s: 60                # how often the figures are compared
      max_weight: 1.0               # where it stops (status complete)
      bounds: {error_ratio: 2.0, degraded_ratio: 2.0, p99_ratio: 1.5, min_requests: 200,
               share_floor: 0.01, p99_floor_ms: 5.0}

The canary's *weight* is its share of the traffic: the other served arms share the rest in their
configured proportions (:func:`weights`). It must be the last served arm, so that a larger share only
moves users onto it (the split is cumulative in the arms' order) and its users stay.

Every ``interval_s`` the canary's figures over the interval (:class:`Figures`: requests, errors,
degraded answers, p99 latency) are compared with the stable arms' together (:func:`judge`):

* error share ≤ ``error_ratio`` × max(stable error share, ``share_floor``),
* degraded share ≤ ``degraded_ratio`` × max(stable degraded share, ``share_floor``),
* p99 ≤ ``p99_ratio`` × max(stable p99, ``p99_floor_ms``),

each only once the canary has ``min_requests`` requests in the interval (fewer: the interval goes on).
All within: one step up; one outside: rolled back (weight 0, status ``rolled_back``, the reason kept).
The floors keep a stable arm with no errors (or a p99 of a millisecond) from turning one error (or
noise) into a rollback.

The state (:class:`Rollout`) lives in the event store as a shared state (``canary:{experiment}:{arm}``),
moved by compare-and-set on its generation: whichever replica's controller decides first writes it, and
every replica applies what it reads. Changing the ``canary`` block (any key) starts the rollout over.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from distilrec.stats import percentile
from services.arms import ArmsConfigError, Experiment

CANARY_KEYS = {"arm", "start_weight", "step", "interval_s", "max_weight", "bounds"}
BOUND_KEYS = {"error_ratio", "degraded_ratio", "p99_ratio", "min_requests", "share_floor", "p99_floor_ms"}
RUNNING, COMPLETE, ROLLED_BACK = "running", "complete", "rolled_back"
STATUSES = (RUNNING, COMPLETE, ROLLED_BACK)
REASONS = ("errors", "degraded", "latency")  # a rollback's reason: the metric's bounded tag
MAX_LATENCIES = 100_000  # per arm and interval: latencies kept for the p99 (requests past it are counted)


@dataclass(frozen=True)
class Bounds:
    """How far the canary's figures may be from the stable arms' (see the module docstring)."""

    error_ratio: float = 2.0
    degraded_ratio: float = 2.0
    p99_ratio: float = 1.5
    min_requests: int = 200
    share_floor: float = 0.01
    p99_floor_ms: float = 5.0


@dataclass(frozen=True)
class CanaryConfig:
    """A checked ``canary`` block: ``ladder`` is the canary's shares from ``start_weight`` to
    ``max_weight``, strictly increasing."""

    arm: str
    ladder: tuple[float, ...]
    interval_s: float
    bounds: Bounds
    raw: dict = field(compare=False, repr=False)

    @property
    def fingerprint(self) -> str:
        """A short hash of the block as configured: another block starts the rollout over."""
        return hashlib.blake2b(json.dumps(self.raw, sort_keys=True).encode(), digest_size=8).hexdigest()

    def describe(self) -> dict[str, Any]:
        return {"arm": self.arm, "ladder": list(self.ladder), "interval_s": self.interval_s,
                "bounds": asdict(self.bounds)}


def _number(where: str, value: Any, low: float, high: float | None = None, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < low or (low_open and value == low) or (high is not None and value > high):
        span = f"{'>' if low_open else '>='} {low}" + (f" and <= {high}" if high is not None else "")
        raise ArmsConfigError(f"canary {where} must be a number {span}, got {value!r}")
    return float(value)


def parse_canary(config: dict[str, Any], experiment: Experiment) -> CanaryConfig | None:
    """The ``canary`` block of an Ingress ``user_config`` checked against its ``experiment`` (``None``
    without one). Raises :class:`ArmsConfigError` with the reason."""
    raw = config.get("canary")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ArmsConfigError(f"canary must be a mapping {{arm, start_weight, step, interval_s, max_weight, bounds}}, "
                              f"got {type(raw).__name__}")
    extra = set(raw) - CANARY_KEYS
    if extra:
        raise ArmsConfigError(f"canary: unknown keys {sorted(extra)}; known: {sorted(CANARY_KEYS)}")
    name = raw.get("arm")
    arms = {a.name: a for a in experiment.arms}
    if name not in arms:
        raise ArmsConfigError(f"canary arm {name!r} is not one of the arms {sorted(arms)}")
    if arms[name].shadow:
        raise ArmsConfigError(f"canary arm {name}: a shadow arm answers no traffic")
    if experiment.served[-1].name != name:
        raise ArmsConfigError(f"canary arm {name} must be the last served arm (so that a larger share only moves "
                              f"users onto it); the last is {experiment.served[-1].name}")
    if not any(a.weight > 0 for a in experiment.served[:-1]):
        raise ArmsConfigError(f"canary arm {name}: no other served arm with a weight > 0 to compare it with")
    start = _number("start_weight", raw.get("start_weight", 0.05), 0.0, 1.0, low_open=True)
    top = _number("max_weight", raw.get("max_weight", 1.0), 0.0, 1.0, low_open=True)
    if start > top:
        raise ArmsConfigError(f"canary start_weight {start} is above max_weight {top}")
    step = raw.get("step", 0.1)
    if isinstance(step, list):
        shares = [_number(f"step[{i}]", w, 0.0, 1.0, low_open=True) for i, w in enumerate(step)]
        if not shares or any(b <= a for a, b in zip([start] + shares, shares)) or shares[-1] > top:
            raise ArmsConfigError(f"canary step as a list: shares above start_weight {start}, increasing, up to "
                                  f"max_weight {top}; got {step!r}")
        ladder = [start] + shares
        if ladder[-1] < top:
            ladder.append(top)
    else:
        inc = _number("step", step, 0.0, 1.0, low_open=True)
        ladder = [start]
        while ladder[-1] < top - 1e-9:
            ladder.append(min(top, round(ladder[-1] + inc, 9)))
    interval = _number("interval_s", raw.get("interval_s", 60), 0.5, 86400.0)
    b = raw.get("bounds") or {}
    if not isinstance(b, dict) or set(b) - BOUND_KEYS:
        raise ArmsConfigError(f"canary bounds must be a mapping of {sorted(BOUND_KEYS)}, got {b!r}")
    min_requests = b.get("min_requests", Bounds.min_requests)
    if isinstance(min_requests, bool) or not isinstance(min_requests, int) or min_requests < 1:
        raise ArmsConfigError(f"canary bounds.min_requests must be an int >= 1, got {min_requests!r}")
    bounds = Bounds(*(_number(f"bounds.{k}", b.get(k, getattr(Bounds, k)), 0.0, low_open=k.endswith("ratio"))
                      for k in ("error_ratio", "degraded_ratio", "p99_ratio")), min_requests,
                    _number("bounds.share_floor", b.get("share_floor", Bounds.share_floor), 0.0, 1.0),
                    _number("bounds.p99_floor_ms", b.get("p99_floor_ms", Bounds.p99_floor_ms), 0.0))
    return CanaryConfig(name, tuple(ladder), interval, bounds, dict(raw))


def weights(experiment: Experiment, canary: str, share: float) -> dict[str, float]:
    """The served arms' weights that give ``canary`` ``share`` of the traffic, the others sharing the rest
    in the proportions of ``experiment`` (the arms as configured). At share 1 the others get 0."""
    others = [a for a in experiment.served if a.name != canary]
    total = sum(a.weight for a in others)
    out = {a.name: (a.weight / total) * (1.0 - share) for a in others}
    out[canary] = share
    return out


@dataclass
class Figures:
    """One arm's figures over an interval: ``requests`` answered or failed (5xx), ``errors`` (5xx),
    ``degraded`` (answered by a fallback) and the latencies (ms) of its answers."""

    requests: int = 0
    errors: int = 0
    degraded: int = 0
    latencies: list[float] = field(default_factory=list)

    def add(self, ms: float | None, degraded: bool = False, error: bool = False) -> None:
        self.requests += 1
        self.errors += error
        self.degraded += degraded
        if ms is not None and len(self.latencies) < MAX_LATENCIES:
            self.latencies.append(ms)

    def merge(self, other: "Figures") -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.degraded += other.degraded
        self.latencies.extend(other.latencies[:max(0, MAX_LATENCIES - len(self.latencies))])

    @property
    def error_share(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def degraded_share(self) -> float:
        return self.degraded / self.requests if self.requests else 0.0

    @property
    def p99_ms(self) -> float | None:
        return percentile(self.latencies, 99)

    def summary(self) -> dict[str, Any]:
        p99 = self.p99_ms
        return {"requests": self.requests, "error_share": round(self.error_share, 6),
                "degraded_share": round(self.degraded_share, 6), "p99_ms": None if p99 is None else round(p99, 3)}


def judge(bounds: Bounds, canary: Figures, stable: Figures) -> tuple[str, str | None, str]:
    """``(verdict, reason, detail)``: ``wait`` (fewer than ``min_requests`` canary requests), ``step`` (all
    within bounds) or ``rollback`` with the first bound broken (``errors`` | ``degraded`` | ``latency``);
    ``detail`` says the figures in words (for the log and ``GET /v1/model``)."""
    if canary.requests < bounds.min_requests:
        return "wait", None, f"{canary.requests} of {bounds.min_requests} canary requests"
    limit = bounds.error_ratio * max(stable.error_share, bounds.share_floor)
    if canary.error_share > limit:
        return "rollback", "errors", (f"error share {canary.error_share:.2%} over {limit:.2%} "
                                      f"(stable {stable.error_share:.2%}, {canary.requests} requests)")
    limit = bounds.degraded_ratio * max(stable.degraded_share, bounds.share_floor)
    if canary.degraded_share > limit:
        return "rollback", "degraded", (f"degraded share {canary.degraded_share:.2%} over {limit:.2%} "
                                        f"(stable {stable.degraded_share:.2%}, {canary.requests} requests)")
    mine, theirs = canary.p99_ms, stable.p99_ms
    if mine is not None:
        limit = bounds.p99_ratio * max(theirs or 0.0, bounds.p99_floor_ms)
        if mine > limit:
            return "rollback", "latency", (f"p99 {mine:.1f} ms over {limit:.1f} ms (stable "
                                           f"{'-' if theirs is None else f'{theirs:.1f}'} ms, {canary.requests} "
                                           f"requests)")
    return "step", None, (f"within bounds: {canary.requests} requests, error share {canary.error_share:.2%}, "
                          f"degraded {canary.degraded_share:.2%}, p99 {mine if mine is None else round(mine, 1)} ms "
                          f"(stable {stable.requests} requests)")


@dataclass(frozen=True)
class Rollout:
    """A canary's shared state: its ``weight`` (share of the traffic), ``step`` (index in the ladder),
    ``status`` (``running`` | ``complete`` | ``rolled_back``), ``reason`` of a rollback, ``detail`` of the
    last decision, ``decided_at`` (unix seconds), the ``config`` fingerprint it follows, and the store's
    ``generation`` (not stored in the value)."""

    arm: str
    weight: float
    step: int
    status: str
    reason: str | None
    detail: str
    decided_at: float
    config: str
    generation: int = 0

    def value(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("generation")
        return d

    @classmethod
    def of(cls, value: dict[str, Any], generation: int) -> "Rollout":
        return cls(**{k: value[k] for k in ("arm", "weight", "step", "status", "reason", "detail", "decided_at",
                                           "config")}, generation=generation)

    @classmethod
    def start(cls, cfg: CanaryConfig, now: float) -> "Rollout":
        return cls(cfg.arm, cfg.ladder[0], 0, RUNNING if len(cfg.ladder) > 1 else COMPLETE, None, "started", now,
                   cfg.fingerprint)

    def due(self, cfg: CanaryConfig, now: float) -> bool:
        """Whether a decision is due: running, and ``interval_s`` since the last one."""
        return self.status == RUNNING and now - self.decided_at >= cfg.interval_s

    def decide(self, cfg: CanaryConfig, verdict: str, reason: str | None, detail: str, now: float) -> "Rollout":
        """The state after a :func:`judge` verdict other than ``wait``."""
        if verdict == "rollback":
            return Rollout(self.arm, 0.0, self.step, ROLLED_BACK, reason, detail, now, self.config)
        step = min(self.step + 1, len(cfg.ladder) - 1)
        status = COMPLETE if step == len(cfg.ladder) - 1 else RUNNING
        return Rollout(self.arm, cfg.ladder[step], step, status, None, detail, now, self.config)

    def describe(self) -> dict[str, Any]:
        return {**self.value(), "generation": self.generation}


def state_key(experiment: str, arm: str) -> str:
    """The event store's key of a canary's :class:`Rollout`."""
    return f"canary:{experiment}:{arm}"


__all__ = ["Bounds", "CanaryConfig", "Figures", "REASONS", "Rollout", "STATUSES", "judge", "parse_canary",
           "state_key", "weights"]
