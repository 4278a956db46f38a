"""Code states contracts; its history (dates, issue numbers, experiment rounds, commits) lives in commit
messages and docs/. Every ``.py`` file of the packages is scanned, code, comments and docstrings alike."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("distilrec", "services", "training", "dashboards")

_ORDINAL = (r"first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|eleventh|twelfth|"
            r"\d+(?:st|nd|rd|th)|this|that|next|last|previous|earlier|later|same|each|every|"
            r"one|two|three|four|five|six|seven|eight|nine|ten|\d+")
# (name, pattern): each names one kind of history.
PATTERNS = [
    ("a date", re.compile(r"\b(?:19|20)\d\d-[01]\d-[0-3]\d\b")),
    ("an issue number", re.compile(r"\bissues?\s*#?\s*\d+\b", re.IGNORECASE)),
    ("an issue or pull-request reference", re.compile(r"(?<![\w&#])#\d{1,5}(?![\w#])")),
    ("an experiment round", re.compile(rf"\b(?:{_ORDINAL})\s+rounds?\b|\brounds?\s+\d+\b", re.IGNORECASE)),
    ("a commit hash", re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,12}\b")),
]


def sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if "__pycache__" not in p.parts)


def findings(text: str) -> list[str]:
    """``"line N: <kind>: <the line>"`` for every line of ``text`` that carries history."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        for name, pattern in PATTERNS:
            if pattern.search(line):
                out.append(f"line {n}: {name}: {line.strip()}")
    return out


def test_the_scan_covers_every_package():
    files = sources()
    for pkg in PACKAGES:
        assert any(p.relative_to(ROOT).parts[0] == pkg for p in files), f"no .py file found under {pkg}/"


# Samples of history, assembled from parts so that this file does not carry the history it describes.
_DATE, _HASH = "-".join(("2026", "12", "02")), "f236" + "f38"
_SAMPLES = [
    ("x = round(3.5)  # Python's round() is fine\ny = arr.round(2)", []),
    ("# Serve rounds up to whole replicas", []),
    (f"# chosen on {_DATE} (\"Seventh \" \"round\", issue {7}, see #{12})".replace('" "', ""),
     ["a date", "an issue number", "an issue or pull-request reference", "an experiment round"]),
    (f"# since `{_HASH}`; " + "round " + "3 of the runs", ["an experiment round", "a commit hash"]),
]


@pytest.mark.parametrize(("text", "kinds"), _SAMPLES)
def test_the_scan_names_each_kind_of_history_and_spares_round(text: str, kinds: list[str]):
    assert [f.split(": ")[1] for f in findings(text)] == kinds


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_dates_issue_numbers_rounds_or_commits(path: Path):
    found = findings(path.read_text(encoding="utf-8"))
    assert not found, (f"{path.relative_to(ROOT)} carries history; state the contract instead (what, shapes, "
                       "units, errors, why in one line) and keep the story in the commit message or docs/:\n  "
                       + "\n  ".join(found))
