"""Scaling the ingress by its own CPU, not by the requests it holds.

Serve's default policy scales a deployment on the requests it holds (running and queued) against
``target_ongoing_requests``. That is right for a Scorer deployment, whose requests are its own work. The
ingress's requests also wait: on the event store, on the text encoder, on a Scorer deployment. When
one of those is slow or restarting, every request piles up in the ingress, the default policy counts the
pile as its load and starts more ingress replicas. More replicas of a stage that waits do not make what
it waits on any faster, and on a small node their start-ups take the CPU from the replica that is
recovering. With in-process scoring, the ingress's CPU is its load.

So each ingress replica reports the share of one CPU its process used (``CpuMeter``, from
``Ingress.record_autoscaling_stats``, which Serve calls on each replica every few seconds), and
``CpuBusyPolicy`` asks for as many replicas as keep that share near ``target_cpu``, like a Kubernetes
HPA on CPU. A replica that holds 200 requests waiting on a slow store uses almost no CPU and adds
nothing; one whose event loop is saturated by HTTP parsing and JSON uses about one CPU and asks for more.
Bounds, ``upscale_delay_s`` and ``downscale_delay_s`` of the deployment's ``autoscaling_config`` apply as
for Serve's own policy.

The TextEncoder and the Scorer deployments keep Serve's policy: their requests are their own work.

In ``services/serve_config.yaml``::

    autoscaling_config:
      min_replicas: 1
      max_replicas: 4
      policy: {policy_function: "services.autoscaling:CpuBusyPolicy", policy_kwargs: {target_cpu: 0.6}}

Serve pickles this module by value into its controller, so it imports nothing but the standard library.
"""

from __future__ import annotations

import math
import time
from typing import Any

CPU_METRIC = "cpu_busy"

# Within this fraction of the target the count stays as it is (a Kubernetes HPA's default tolerance):
# without it, 0.61 of a CPU against a target of 0.6 would ask for a second replica.
TOLERANCE = 0.1


class CpuMeter:
    """The share of one CPU this process used between two calls of ``sample`` (0.5 = half a CPU's time;
    above 1 when several threads ran at once): CPU time (``time.process_time``, every thread of the
    process) over wall time. The first call measures from the meter's creation."""

    def __init__(self) -> None:
        self._cpu, self._wall = time.process_time(), time.monotonic()

    def sample(self) -> float:
        cpu, wall = time.process_time(), time.monotonic()
        busy = (cpu - self._cpu) / max(wall - self._wall, 1e-6)
        self._cpu, self._wall = cpu, wall
        return busy


class CpuBusyPolicy:
    """A Serve autoscaling policy (``AutoscalingConfig.policy``): the replica count that brings each
    replica's CPU share (``CPU_METRIC``, averaged over ``look_back_period_s``) to ``target_cpu``.

    Replicas that have not reported yet (just started) count at the mean of those that have; with no
    report at all (every replica new or restarting) the current target is kept: a stage that cannot be
    measured is not scaled, in either direction."""

    def __init__(self, target_cpu: float = 0.6) -> None:
        try:
            ok = 0 < float(target_cpu) <= 8
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"target_cpu must be a share of a CPU in (0, 8], got {target_cpu!r}")
        self.target_cpu = float(target_cpu)

    def __call__(self, ctx: Any) -> tuple[float, dict]:
        shares = [v for v in ((ctx.aggregated_metrics or {}).get(CPU_METRIC) or {}).values()
                  if v is not None and math.isfinite(v)]
        if not shares:  # Serve reports running replicas only: none running means none reported
            return ctx.target_num_replicas, {}
        mean = sum(shares) / len(shares)
        return desired_replicas(mean, ctx.current_num_replicas, self.target_cpu), {}


def desired_replicas(mean_share: float, running: int, target_cpu: float) -> float:
    """``running`` replicas at ``mean_share`` of a CPU each carry ``running * mean_share`` CPUs of work;
    that work at ``target_cpu`` per replica needs this many (Serve rounds up, then applies the bounds and
    delays). Within ``TOLERANCE`` of the target, ``running``.

    >>> desired_replicas(0.9, 1, 0.6)   # one saturated replica: two
    1.5
    >>> desired_replicas(0.64, 1, 0.6)  # near the target: as it is
    1
    >>> desired_replicas(0.05, 4, 0.6) < 1   # four idle ones, whatever they hold: back to the minimum
    True
    """
    ratio = mean_share / target_cpu
    if abs(ratio - 1) <= TOLERANCE:
        return running
    return running * ratio
