"""`serve run services/serve_config.yaml`, typed at the repository root after `make demo`, serves the demo's
model: the file's model_uri is the folder `make demo` writes (relative, as Serve's processes start in the
folder `serve run` starts in), and the artifact reader resolves it there."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from services.run import DEFAULT_CONFIG

ROOT = Path(__file__).resolve().parents[2]


def test_make_demo_writes_where_the_serve_config_reads(tmp_path, monkeypatch):
    import distilrec.cli as cli

    recipe = re.search(r"^demo:.*\n\t(.+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert recipe.split() == ["$(BIN)/distilrec", "demo"], recipe  # run at the root, default --output
    seen = []
    monkeypatch.setattr(cli, "demo", lambda output: seen.append(output) or 0)
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", os.environ.get("THP_MEM_ALLOC_ENABLE", "1"))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["demo"]) == 0
    model_uri = yaml.safe_load(DEFAULT_CONFIG.read_text())["applications"][0]["args"]["model_uri"]
    assert not os.path.isabs(model_uri) and "://" not in model_uri
    assert Path(seen[0]) == (tmp_path / model_uri).resolve()


def test_the_relative_model_uri_resolves_to_the_demo_model(tmp_path, monkeypatch):
    from distilrec.artifacts import ItemTable, read_manifest, resolve, write_artifact
    from distilrec.config import StudentConfig
    from distilrec.models import Student

    model_uri = yaml.safe_load(DEFAULT_CONFIG.read_text())["applications"][0]["args"]["model_uri"]
    n, dim = 5, 4
    emb = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    ids = [f"i{k}" for k in range(n)]
    version = write_artifact(
        str(tmp_path / model_uri), items=ItemTable(ids, ids, ids, emb),
        student=Student(StudentConfig(n_items=n, text_dim=dim, d_model=8, max_len=4), text_emb=torch.from_numpy(emb)),
        teacher=None, histories=pd.DataFrame({"user_id": ["u0"], "item_id": ["i1"], "timestamp": [1]}),
        dataset={"name": "toy"}, metrics={}, encoder=None)
    monkeypatch.chdir(tmp_path)
    assert Path(resolve(model_uri)).resolve() == Path(version).resolve()
    assert read_manifest(model_uri)["version"] == Path(version).name
