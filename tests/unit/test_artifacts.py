"""Model artifacts: write → load round trips (local folder and ``memory://``), LATEST, clear errors."""

from __future__ import annotations

import json

import fsspec
import numpy as np
import pandas as pd
import pytest
import torch

from distilrec.artifacts import (
    FORMAT, ArtifactError, ItemTable, load_artifact, model_from_bytes, model_to_bytes, resolve, write_artifact,
)
from distilrec.config import StudentConfig
from distilrec.models import Student, pad_histories

N_ITEMS = 12  # the conftest fixtures' catalogue


@pytest.fixture
def items(text_emb) -> ItemTable:
    ids = [f"m{i}" for i in range(N_ITEMS)]
    return ItemTable(ids, [f"Title {i}" for i in ids], [f"Title {i}. genres: x" for i in ids], text_emb.numpy())


@pytest.fixture
def histories() -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": ["u2", "u1", "u2", "u1", "u2"],
        "item_id": ["m3", "m1", "m0", "m7", "m11"],
        "timestamp": [1, 2, 3, 4, 5],
    })


def _write(uri, items, histories, student, teacher=None, **kw):
    return write_artifact(uri, items=items, histories=histories, student=student, teacher=teacher,
                          dataset={"name": "toy", "users": 2}, metrics={"student": {"ndcg@10": 0.5}},
                          encoder=kw.pop("encoder", None), **kw)


def _scores(model, hist=((1, 2, 3), (4,), (11, 0))):
    model.eval()
    with torch.no_grad():
        return model.score(pad_histories([list(h) for h in hist], model.cfg.n_items, model.cfg.max_len))


def _check_round_trip(art, items, student, teacher):
    torch.testing.assert_close(_scores(art.student), _scores(student))
    assert not art.student.training
    assert art.student.cfg == student.cfg
    if teacher is not None:
        torch.testing.assert_close(_scores(art.teacher), _scores(teacher))
    assert art.items.item_ids == items.item_ids
    assert art.items.titles == items.titles
    assert art.items.texts == items.texts
    np.testing.assert_array_equal(art.items.text_emb, items.text_emb)
    assert art.items.index["m7"] == 7
    assert len(art.items) == N_ITEMS
    # histories keep their row order per user
    assert art.histories == {"u2": ["m3", "m0", "m11"], "u1": ["m1", "m7"]}
    assert art.manifest["format"] == FORMAT
    assert art.manifest["dataset"] == {"name": "toy", "users": 2}
    assert art.manifest["metrics"] == {"student": {"ndcg@10": 0.5}}
    assert art.manifest["n_items"] == N_ITEMS


def test_round_trip_local_folder(tmp_path, items, histories, student, teacher):
    uri = _write(str(tmp_path / "out"), items, histories, student, teacher, version="v1")
    assert (tmp_path / "out" / "models" / "LATEST").read_text() == "v1"
    for f in ("manifest.json", "items.parquet", "item_text_emb.safetensors", "histories.parquet",
              "student/config.json", "student/model.safetensors", "teacher/config.json",
              "teacher/model.safetensors"):
        assert (tmp_path / "out" / "models" / "v1" / f).is_file(), f
    for where in (uri, str(tmp_path / "out"), str(tmp_path / "out" / "models")):
        art = load_artifact(where, with_teacher=True)
        assert art.version == "v1"
        _check_round_trip(art, items, student, teacher)


def test_round_trip_memory_uri(memory_uri, items, histories, student, teacher):
    uri = _write(memory_uri, items, histories, student, teacher, version="v7")
    assert uri.startswith("memory://") and uri.endswith("/models/v7")
    art = load_artifact(memory_uri, with_teacher=True)
    assert art.uri.startswith("memory://")
    assert art.version == "v7"
    _check_round_trip(art, items, student, teacher)
    # the version URI that write_artifact returned loads the same artifact
    assert load_artifact(uri).version == "v7"


def test_without_teacher_the_teacher_is_not_loaded(memory_uri, items, histories, student):
    _write(memory_uri, items, histories, student, None)
    art = load_artifact(memory_uri)
    assert art.teacher is None
    with pytest.raises(ArtifactError, match="teacher"):
        load_artifact(memory_uri, with_teacher=True)


def test_latest_points_at_the_newest_version(tmp_path, items, histories, student, student_cfg, text_emb):
    out = str(tmp_path / "out")
    first = _write(out, items, histories, student, version="v1")
    newer = Student(student_cfg, text_emb=text_emb)
    _write(out, items, histories, newer, version="v2")
    assert resolve(out).endswith("models/v2")
    latest = load_artifact(out)
    assert latest.version == "v2"
    torch.testing.assert_close(_scores(latest.student), _scores(newer))
    old = load_artifact(first)
    assert old.version == "v1"
    torch.testing.assert_close(_scores(old.student), _scores(student))


def test_default_versions_are_distinct_and_sortable(memory_uri, items, histories, student):
    a = _write(memory_uri, items, histories, student)
    b = _write(memory_uri, items, histories, student)
    va, vb = a.rsplit("/", 1)[1], b.rsplit("/", 1)[1]
    assert va != vb and va < vb
    assert load_artifact(memory_uri).version == vb


def test_embedded_encoder_folder_is_copied(tmp_path, items, histories, student, tiny_encoder):
    from pathlib import Path

    _write(str(tmp_path / "out"), items, histories, student, encoder=tiny_encoder, version="v1")
    art = load_artifact(str(tmp_path / "out"))
    assert art.manifest["encoder"]["embedded"] is True
    assert art.manifest["encoder"]["dim"] == items.text_emb.shape[1]
    copied = Path(art.encoder_uri)
    assert copied == tmp_path / "out" / "models" / "v1" / "encoder"
    for f in Path(tiny_encoder).iterdir():
        if f.is_file():
            assert (copied / f.name).read_bytes() == f.read_bytes()


def test_hub_encoder_is_recorded_by_name(memory_uri, items, histories, student):
    _write(memory_uri, items, histories, student, encoder="sentence-transformers/all-MiniLM-L6-v2")
    art = load_artifact(memory_uri)
    assert art.encoder_uri == "sentence-transformers/all-MiniLM-L6-v2"
    assert art.manifest["encoder"]["embedded"] is False


# -------------------------------------------------------------------------------------------- errors

def test_missing_folder_is_an_artifact_error(tmp_path):
    with pytest.raises(ArtifactError, match="no model artifact"):
        load_artifact(str(tmp_path / "nowhere"))


def test_latest_naming_a_missing_version_is_an_artifact_error(memory_uri):
    fs = fsspec.filesystem("memory")
    fs.pipe(memory_uri.removeprefix("memory://") + "/models/LATEST", b"v404")
    with pytest.raises(ArtifactError, match="v404"):
        load_artifact(memory_uri)


def test_weights_that_do_not_match_the_config(tmp_path, items, histories, student, student_cfg, text_emb):
    uri = _write(str(tmp_path / "out"), items, histories, student, version="v1")
    narrower = Student(student_cfg.model_copy(update={"d_model": 8}), text_emb=text_emb)
    _, weights = model_to_bytes(narrower)
    (tmp_path / "out" / "models" / "v1" / "student" / "model.safetensors").write_bytes(weights)
    with pytest.raises(ArtifactError, match="weights do not match the student config"):
        load_artifact(uri)


def test_weights_missing_a_tensor(tmp_path, items, histories, student):
    from safetensors.torch import save as st_save

    uri = _write(str(tmp_path / "out"), items, histories, student, version="v1")
    state = {k: v.contiguous() for k, v in student.state_dict().items() if k != "pos_emb.weight"}
    (tmp_path / "out" / "models" / "v1" / "student" / "model.safetensors").write_bytes(st_save(state))
    with pytest.raises(ArtifactError, match="pos_emb"):
        load_artifact(uri)


def test_missing_weights_file(tmp_path, items, histories, student):
    uri = _write(str(tmp_path / "out"), items, histories, student, version="v1")
    (tmp_path / "out" / "models" / "v1" / "student" / "model.safetensors").unlink()
    with pytest.raises(ArtifactError, match="model.safetensors"):
        load_artifact(uri)


def test_unknown_format_is_an_artifact_error(tmp_path, items, histories, student):
    uri = _write(str(tmp_path / "out"), items, histories, student, version="v1")
    manifest = tmp_path / "out" / "models" / "v1" / "manifest.json"
    meta = json.loads(manifest.read_text())
    meta["format"] = FORMAT + 1
    manifest.write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="format"):
        load_artifact(uri)


def test_unknown_model_kind_is_an_artifact_error(student):
    config, weights = model_to_bytes(student)
    meta = json.loads(config)
    meta["kind"] = "gru"
    with pytest.raises(ArtifactError, match="unknown model kind"):
        model_from_bytes(json.dumps(meta).encode(), weights, None)


def test_model_bytes_round_trip_without_text():
    m = Student(StudentConfig(n_items=5, text_dim=0, d_model=8, n_heads=1, n_layers=1, max_len=4))
    back = model_from_bytes(*model_to_bytes(m), text_emb=None)
    torch.testing.assert_close(_scores(back, ((1, 2),)), _scores(m, ((1, 2),)))


def test_item_table_smaller_than_the_student_without_text(memory_uri, histories):
    m = Student(StudentConfig(n_items=N_ITEMS, text_dim=0, d_model=8, n_heads=1, n_layers=1, max_len=4))
    fewer = ItemTable([f"m{i}" for i in range(5)], ["t"] * 5, ["t"] * 5, np.zeros((5, 0), dtype=np.float32))
    _write(memory_uri, fewer, histories, m)
    with pytest.raises(ArtifactError, match="student has 12 items, item table 5"):
        load_artifact(memory_uri)


def test_item_table_smaller_than_the_student_with_text(memory_uri, items, histories, student):
    fewer = ItemTable(items.item_ids[:5], items.titles[:5], items.texts[:5], items.text_emb[:5])
    _write(memory_uri, fewer, histories, student)
    with pytest.raises(ArtifactError):
        load_artifact(memory_uri)


def test_config_from_another_build_is_an_artifact_error(student):
    config, weights = model_to_bytes(student)
    meta = json.loads(config)
    meta["hidden"] = 64  # a field this build's StudentConfig does not know
    with pytest.raises(ArtifactError, match="student config does not fit this build"):
        model_from_bytes(json.dumps(meta).encode(), weights, None)


def test_bench_cost_reads_an_artifact_and_writes_its_tables(tmp_path, items, histories, student, teacher, capsys):
    from distilrec.cli import main

    _write(str(tmp_path / "out"), items, histories, student, teacher)
    assert main(["bench", "cost", "--model", str(tmp_path / "out"), "--output", str(tmp_path / "b"), "--runs", "20"]) == 0
    result = json.loads((tmp_path / "b" / "cost.json").read_text())
    assert set(result["models"]) == {"teacher", "student"}
    assert result["models"]["student"]["macs_per_candidate"] == round(student.macs_per_candidate(1000), 1)
    assert result["teacher_over_student"]["macs"] > 1  # the fixture teacher reads more and has more layers
    assert "| student |" in (tmp_path / "b" / "cost.md").read_text()
    assert result["block"] == 20 and "in turns of 20 requests" in (tmp_path / "b" / "cost.md").read_text()
    assert main(["bench", "cost", "--model", str(tmp_path / "out"), "--output", str(tmp_path / "c"), "--runs", "20",
                 "--block", "1"]) == 0
    assert "each request right after the other model's" in (tmp_path / "c" / "cost.md").read_text()
    assert main(["bench", "cost", "--model", str(tmp_path / "none"), "--output", str(tmp_path / "b")]) == 2
    assert "--model" in capsys.readouterr().err
    assert main(["bench", "cost", "--model", str(tmp_path / "out"), "--output", str(tmp_path / "b"), "--block", "0"]) == 2
    assert "--block 0" in capsys.readouterr().err
