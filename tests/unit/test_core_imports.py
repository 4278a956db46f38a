"""The core library imports without Ray (``DESIGN.md``: ``distilrec/`` is plain Python + torch)."""

from __future__ import annotations

import subprocess
import sys

CORE = [
    "distilrec.config", "distilrec.data", "distilrec.data.dataset", "distilrec.data.synthetic",
    "distilrec.data.movielens", "distilrec.data.files", "distilrec.data.download", "distilrec.data.tables",
    "distilrec.models", "distilrec.losses", "distilrec.metrics",
    "distilrec.baselines", "distilrec.evaluate", "distilrec.artifacts", "distilrec.text", "distilrec.stores",
]


def test_core_modules_do_not_import_ray():
    # A fresh interpreter: other suites in the same process may have imported Ray already.
    code = (
        "import importlib, sys\n"
        f"for name in {CORE!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
