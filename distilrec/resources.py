"""Peak resident memory (RSS) of a stage of work: this process's, and its whole process tree's.

A local Ray instance runs as children of the process that started it (the GCS, the raylet, and the
workers under it), so the tree's figure covers Ray Train's workers too. The process's peak is the
kernel's high-water mark (``VmHWM``), reset when a stage starts (``/proc/self/clear_refs``); where it
cannot be reset or read, ``resource.getrusage``'s peak since the process started stands in. The tree's
peak is the largest sum of its processes' RSS, sampled every ``interval`` seconds: shared pages (Ray's
object store, libraries) count once per process that maps them, so it is an upper bound, and a peak
shorter than the interval can be missed. Linux reads ``/proc``; elsewhere the tree's figure is None.

>>> with PeakMemory() as peak:
...     block = bytearray(64 * 2 ** 20)
>>> peak.result()["process_mib"] >= 64
True
"""

from __future__ import annotations

import os
import resource
import sys
import threading
from pathlib import Path

_PROC = Path("/proc")


def _status_kib(pid: int | str, field: str) -> int | None:
    """``field`` (``VmRSS``, ``VmHWM``) of ``/proc/PID/status`` in KiB; None when unreadable."""
    try:
        for line in (_PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _children() -> dict[int, list[int]]:
    """``{parent pid: [child pids]}`` of every process visible in ``/proc``."""
    out: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so read after the last ')'
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1:
            out.setdefault(int(fields[1]), []).append(int(entry.name))
    return out


def tree_rss_kib(root: int | None = None) -> int | None:
    """The sum of RSS over ``root`` (default: this process) and all its descendants, in KiB; None
    without ``/proc``."""
    if not sys.platform.startswith("linux") or not _PROC.is_dir():
        return None
    root = os.getpid() if root is None else root
    children, total, todo = _children(), 0, [root]
    while todo:
        pid = todo.pop()
        total += _status_kib(pid, "VmRSS") or 0
        todo.extend(children.get(pid, ()))
    return total


def _reset_high_water_mark() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS; False where the kernel does not allow it."""
    try:
        (_PROC / "self" / "clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Context manager: the peak RSS of this process and of its process tree while it is open.
    :meth:`result` gives ``{"process_mib", "tree_mib"}`` (MiB, one decimal; ``tree_mib`` None where it
    cannot be read)."""

    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self._tree_kib: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reset = False
        self._process_kib: int | None = None

    def _sample(self) -> None:
        while True:
            kib = tree_rss_kib()
            if kib is not None:
                self._tree_kib = max(self._tree_kib or 0, kib)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> "PeakMemory":
        self._reset = _reset_high_water_mark()
        self._thread = threading.Thread(target=self._sample, name="peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        kib = tree_rss_kib()  # the end of the stage too, so that a short stage has a sample
        if kib is not None:
            self._tree_kib = max(self._tree_kib or 0, kib)
        hwm = _status_kib("self", "VmHWM") if self._reset else None
        # ru_maxrss: KiB on Linux, bytes on macOS; the peak since the process started
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self._process_kib = hwm if hwm is not None else (maxrss // 1024 if sys.platform == "darwin" else maxrss)

    def result(self) -> dict[str, float | None]:
        mib = lambda kib: None if kib is None else round(kib / 1024, 1)  # noqa: E731
        return {"process_mib": mib(self._process_kib), "tree_mib": mib(self._tree_kib)}
