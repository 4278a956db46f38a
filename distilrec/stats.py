"""The one percentile of the project: latency figures (p50, p99) of the benchmarks, of the pipeline's
scoring costs and of the tests are all :func:`percentile`."""

from __future__ import annotations

import math
from typing import Iterable


def percentile(values: Iterable[float], q: float) -> float | None:
    """The nearest-rank ``q``-th percentile of ``values`` (``0 < q <= 100``): the ``⌈q · n / 100⌉``-th
    smallest of the ``n`` values, i.e. the smallest value that at least ``q`` % of the values are less
    than or equal to. It is always one of the values (no interpolation), the usual definition for a
    latency SLO: "p99 ≤ 50 ms" means that at most 1 % of the requests took longer than 50 ms. Of 100
    values or fewer, the p99 is the largest. ``None`` when there are no values. The values need not be
    sorted.

    >>> values = [15, 20, 35, 40, 50]
    >>> [percentile(values, q) for q in (5, 30, 40, 50, 100)]
    [15, 20, 20, 35, 50]
    >>> percentile(range(1, 1001), 99), percentile(range(1, 1002), 99), percentile([2.0, 3.0, 1.0], 50)
    (990, 991, 2.0)
    >>> percentile([], 99) is None
    True
    """
    if not 0 < q <= 100:
        raise ValueError(f"q={q}: a percentile in (0, 100]")
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[max(1, math.ceil(q * len(ordered) / 100)) - 1]
