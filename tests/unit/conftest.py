"""Shared fixtures of the unit suite: no Ray, tiny models, data written in ``tmp_path``.

The MovieLens latest-small tests read ``../shared`` (relative to the repository root) and skip when it
is absent; nothing from it is ever copied into the repository.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from distilrec.config import StudentConfig, TeacherConfig
from distilrec.data.dataset import Dataset

REPO_ROOT = Path(__file__).resolve().parents[2]
ML_SMALL = REPO_ROOT.parent / "shared" / "datasets" / "ml-latest-small"

N_ITEMS = 12
TEXT_DIM = 6


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same torch / numpy random state."""
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def ml_small() -> Path:
    """``../shared/datasets/ml-latest-small``; the test skips when it is absent."""
    if not (ML_SMALL / "ratings.csv").exists():
        pytest.skip("../shared/datasets/ml-latest-small is absent")
    return ML_SMALL


@pytest.fixture
def text_emb() -> torch.Tensor:
    return torch.randn(N_ITEMS, TEXT_DIM, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def teacher_cfg() -> TeacherConfig:
    return TeacherConfig(n_items=N_ITEMS, text_dim=TEXT_DIM, d_model=16, n_heads=2, n_layers=2, max_len=8,
                         dropout=0.1)


@pytest.fixture
def student_cfg() -> StudentConfig:
    return StudentConfig(n_items=N_ITEMS, text_dim=TEXT_DIM, d_model=16, n_heads=2, n_layers=1, max_len=6, dropout=0.1)


@pytest.fixture
def teacher(teacher_cfg, text_emb):
    from distilrec.models import Teacher

    return Teacher(teacher_cfg, text_emb=text_emb)


@pytest.fixture
def student(student_cfg, text_emb):
    """A student that reads a shorter history (6) than the teacher fixture (8)."""
    from distilrec.models import Student

    return Student(student_cfg, text_emb=text_emb)


@pytest.fixture
def toy_dataset() -> Dataset:
    """Three users with 3, 4 and 5 interactions over items a..f (u4 has too few and is dropped)."""
    rows = [
        ("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3),
        ("u2", "b", 1), ("u2", "d", 2), ("u2", "a", 3), ("u2", "e", 4),
        ("u3", "c", 5), ("u3", "a", 1), ("u3", "f", 2), ("u3", "b", 3), ("u3", "d", 4),
        ("u4", "z", 1), ("u4", "a", 2),
    ]
    users, items, ts = zip(*rows)
    text = {i: (i.upper(), f"{i.upper()} text") for i in "abcdefz"}
    return Dataset.from_interactions("toy", users, items, ts, text)


@pytest.fixture
def memory_uri():
    """A fresh ``memory://`` folder, removed afterwards (the memory filesystem is process-global)."""
    import fsspec

    name = f"distilrec-test-{uuid.uuid4().hex}"
    yield f"memory://{name}"
    fs = fsspec.filesystem("memory")
    if fs.exists(f"/{name}"):
        fs.rm(f"/{name}", recursive=True)


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> str:
    """A tiny random-weight BERT folder built locally (no download), shared by the session."""
    from distilrec.text import build_tiny_encoder

    corpus = ["a red apple", "a blue car", "the space rocket", "a haunted house", "red car in space"]
    return build_tiny_encoder(tmp_path_factory.mktemp("encoder") / "tiny", corpus, dim=16, seed=0)
