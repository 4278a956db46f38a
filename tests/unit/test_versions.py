"""The offline gate (distilrec/gate.py) and the model-version operations (distilrec/versions.py,
``distilrec model list | promote | rollback``) on a local folder and ``memory://``, no Ray.

A tiny student is trained for a second on synthetic data (its validation NDCG@10 about 0.65 on 40
items); a randomly initialised one scores about a third of that, which the gate must refuse."""

from __future__ import annotations

import copy
import json

import fsspec
import numpy as np
import pandas as pd
import pytest
import torch

from distilrec.artifacts import ItemTable, write_artifact
from distilrec.config import PipelineConfig, StudentConfig, TeacherConfig
from distilrec.data import Split
from distilrec.data.synthetic import generate
from distilrec.evaluate import model_ranks
from distilrec.gate import in_catalogue, offline_gate, serving_ndcg, verdict_line, write_gated
from distilrec.losses import StudentTrain, next_item_batch
from distilrec.metrics import evaluate_ranks
from distilrec.models import Student, Teacher
from distilrec.versions import (
    IncompleteVersion, NoPreviousVersion, RefusedVersion, UnknownVersion, list_versions, newer_refused, promote,
    rollback,
)

MAX_LEN = 10
TEXT_DIM = 4


@pytest.fixture(scope="module")
def data():
    """``(split, item table, student config)`` of a small synthetic dataset."""
    ds = generate(users=150, items=40, seed=0)
    emb = np.random.default_rng(0).normal(size=(ds.n_items, TEXT_DIM)).astype(np.float32)
    cfg = StudentConfig(n_items=ds.n_items, text_dim=TEXT_DIM, d_model=16, max_len=MAX_LEN)
    return Split.leave_one_out(ds), ItemTable(ds.item_ids, ds.titles, ds.texts, emb), cfg


@pytest.fixture(scope="module")
def trained(data) -> Student:
    """A student trained on the true next item (15 epochs of Adam, about a second)."""
    split, items, cfg = data
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    student = Student(cfg, text_emb=torch.from_numpy(items.text_emb))
    wrapper = StudentTrain(student, None, temperature=2.0, alpha=0.0)
    opt = torch.optim.Adam([p for p in wrapper.parameters() if p.requires_grad], lr=1e-2)
    users = [(h, t) for h, t in zip(split.train, split.history_times("val")) if len(h) >= 2]
    rng = np.random.default_rng(0)
    for _ in range(15):
        wrapper.train()
        order = rng.permutation(len(users))
        for start in range(0, len(order), 32):
            batch = [users[i] for i in order[start:start + 32]]
            inputs, targets, times = next_item_batch([h for h, _ in batch], cfg.n_items, MAX_LEN, [t for _, t in batch])
            loss = wrapper(inputs, targets, times)
            opt.zero_grad()
            loss.backward()
            opt.step()
    torch.set_num_threads(threads)
    return student.eval()


@pytest.fixture
def untrained(data) -> Student:
    _, items, cfg = data
    return Student(cfg, text_emb=torch.from_numpy(items.text_emb)).eval()


@pytest.fixture(params=["local", "memory"])
def out(request, tmp_path, memory_uri) -> str:
    """A pipeline output on a local folder and on ``memory://``."""
    return str(tmp_path / "out") if request.param == "local" else memory_uri


def _publish(out, data, student, version, teacher=None, **kw):
    """:func:`write_gated` of a version; returns the gate's verdict."""
    split, items, _ = data
    hist = pd.DataFrame({"user_id": ["u"], "item_id": [items.item_ids[0]], "timestamp": [0]})
    metrics = {"student": {"ndcg@10": 0.5, "val_ndcg@10": 0.6}}
    _, verdict = write_gated(out, items=items, histories=hist, student=student, teacher=teacher,
                             dataset={"name": "synthetic"}, metrics=metrics, encoder=None, split=split,
                             val_users=None, version=version, **{"min_ratio": 0.95, **kw})
    return verdict


def _fs(out):
    fs, root = fsspec.core.url_to_fs(out)
    return fs, f"{root}/models"


def _latest(out) -> str:
    fs, models = _fs(out)
    return fs.cat_file(f"{models}/LATEST").decode()


def _manifest(out, version) -> dict:
    fs, models = _fs(out)
    return json.loads(fs.cat_file(f"{models}/{version}/manifest.json"))


def _moves(out) -> list[tuple[str, str]]:
    fs, models = _fs(out)
    return [(m["version"], m["action"]) for m in json.loads(fs.cat_file(f"{models}/HISTORY.json"))["moves"]]


# ---------------------------------------------------------------------------------------------- gate

def test_the_first_version_passes_and_is_published(out, data, trained):
    verdict = _publish(out, data, trained, "v1")
    assert verdict["published"] and verdict["passed"] and not verdict["forced"]
    assert verdict["reason"] == "first version" and verdict["serving_version"] is None
    assert verdict["ndcg@10"] > 0.4 and verdict["users"] == 150
    assert _latest(out) == "v1" and _manifest(out, "v1")["gate"] == verdict
    assert _moves(out) == [("v1", "published")]
    assert verdict_line(verdict) == "published: first version"


def test_a_far_worse_version_is_refused_kept_and_listed(out, data, trained, untrained):
    _publish(out, data, trained, "v1")
    verdict = _publish(out, data, untrained, "v2")
    assert not verdict["published"] and not verdict["passed"]
    assert verdict["serving_version"] == "v1" and verdict["ratio"] < 0.6
    assert verdict["serving_ndcg@10"] == pytest.approx(_manifest(out, "v1")["gate"]["ndcg@10"])
    assert "below the minimum 0.95" in verdict["reason"]
    assert _latest(out) == "v1" and _moves(out) == [("v1", "published")]
    assert _manifest(out, "v2")["gate"] == verdict  # the refused version is kept, with its verdict
    assert verdict_line(verdict).startswith("refused (LATEST stays at v1): validation NDCG@10")
    assert [(v.version, v.status) for v in list_versions(out)] == [("v1", "current"), ("v2", "refused")]
    assert newer_refused(out, "v1") == {"version": "v2", "created_at": _manifest(out, "v2")["created_at"],
                                        "reason": verdict["reason"]}


def test_an_equal_version_passes_against_the_serving_one(tmp_path, data, trained):
    _publish(str(tmp_path), data, trained, "v1")
    verdict = _publish(str(tmp_path), data, copy.deepcopy(trained), "v2")
    assert verdict["published"] and verdict["ratio"] == 1.0 and "not below the minimum 0.95" in verdict["reason"]
    assert _latest(str(tmp_path)) == "v2" and newer_refused(str(tmp_path), "v2") is None


@pytest.mark.parametrize("broken", ["student", "teacher"])
def test_nan_scores_are_refused(memory_uri, data, trained, broken):
    split, items, _ = data
    student = copy.deepcopy(trained)
    teacher = Teacher(TeacherConfig(n_items=len(items), text_dim=TEXT_DIM, d_model=16, max_len=MAX_LEN),
                      text_emb=torch.from_numpy(items.text_emb)).eval()
    with torch.no_grad():
        next((student if broken == "student" else teacher).parameters()).fill_(float("nan"))
    verdict = offline_gate(memory_uri, student=student, teacher=teacher, item_ids=items.item_ids, split=split,
                           val_users=None, min_ratio=0.95)
    assert not verdict["published"]
    assert verdict["reason"] == f"non-finite scores: the {broken} scored 150 of 150 validation users with NaN or infinity"
    # even the first version, and even with the NDCG@10 check off
    verdict = offline_gate(memory_uri, student=student, teacher=teacher, item_ids=items.item_ids, split=split,
                           val_users=None, min_ratio=0.0)
    assert not verdict["published"] and verdict["reason"].startswith("non-finite")


def test_force_publishes_a_refused_version(memory_uri, data, trained, untrained):
    _publish(memory_uri, data, trained, "v1")
    verdict = _publish(memory_uri, data, untrained, "v2", force=True)
    assert verdict["published"] and verdict["forced"] and not verdict["passed"]
    assert _latest(memory_uri) == "v2" and _moves(memory_uri) == [("v1", "published"), ("v2", "forced")]
    assert verdict_line(verdict).startswith("published with --force, the gate refused it: validation NDCG@10")


def test_gate_min_ratio_0_keeps_the_finite_check_alone(memory_uri, data, trained, untrained):
    assert PipelineConfig().gate_min_ratio == 0.95
    _publish(memory_uri, data, trained, "v1")
    verdict = _publish(memory_uri, data, untrained, "v2", min_ratio=0.0)
    assert verdict["published"] and verdict["reason"] == "NDCG@10 not compared (gate_min_ratio 0); scores finite"
    assert _latest(memory_uri) == "v2"


def test_the_serving_version_is_evaluated_in_its_own_catalogue(toy_dataset, data, trained):
    # The toy split in a catalogue that lacks "d" and orders the rest differently.
    split = Split.leave_one_out(toy_dataset)
    ids = toy_dataset.item_ids
    assert [[ids[i] for i in h] for h in split.train] == [["a"], ["b", "d"], ["a", "f", "b"]]
    assert [ids[t] for t in split.val_target] == ["b", "a", "d"]
    mapped, known = in_catalogue(split, ids, {"f": 0, "e": 1, "c": 2, "b": 3, "a": 4})
    assert list(known) == [0, 1] and list(mapped.val_target) == [3, 4]  # u3's target d is unknown
    assert [list(h) for h in mapped.train] == [[4], [3]]  # u2's d left out of its history
    assert [list(t) for t in mapped.history_times("val")] == [list(split.history_times("val")[0]),
                                                               [split.history_times("val")[1][0]]]
    # the same catalogue: the model's own validation NDCG@10
    split, items, _ = data
    assert serving_ndcg(trained, items.index, items.item_ids, split) == pytest.approx(
        evaluate_ranks(model_ranks(trained, split, "val"))["ndcg@10"])
    # a user whose target the serving version lacks is a miss for it
    unknown = items.item_ids[int(split.val_target[0])]
    lacking = {i: r for i, r in items.index.items() if i != unknown}
    assert serving_ndcg(trained, lacking, items.item_ids, split) < serving_ndcg(trained, items.index, items.item_ids,
                                                                                split)


# -------------------------------------------------------------------------------- promote, rollback

def test_promote_rollback_and_list(out, data, trained, untrained):
    for version, student in (("v1", trained), ("v2", untrained), ("v3", copy.deepcopy(trained))):
        _publish(out, data, student, version)
    assert [(v.version, v.status) for v in list_versions(out)] == [
        ("v1", "published"), ("v2", "refused"), ("v3", "current")]
    with pytest.raises(RefusedVersion, match="'v2' was refused by the offline gate .* with force"):
        promote(out, "v2")
    assert _latest(out) == "v3"
    moved = promote(out, "v2", force=True)
    assert moved["version"] == "v2" and moved["previous"] == "v3" and moved["forced"] and moved["changed"]
    assert promote(out, "v2", force=True)["changed"] is False  # already current: nothing recorded
    assert rollback(out)["version"] == "v3"  # undoes the promote
    assert rollback(out)["version"] == "v1"  # and steps back once more
    with pytest.raises(NoPreviousVersion, match="no complete version was published before v1"):
        rollback(out)
    assert _latest(out) == "v1"
    assert _moves(out) == [("v1", "published"), ("v3", "published"), ("v2", "promoted"), ("v3", "rolled_back"),
                           ("v1", "rolled_back")]
    versions = list_versions(out)
    assert [(v.version, v.status) for v in versions] == [
        ("v1", "current"), ("v2", "rolled back"), ("v3", "rolled back")]
    assert versions[0].ndcg("student", "val") == 0.6 and versions[0].ndcg("student", "test") == 0.5
    assert versions[0].ndcg("teacher", "test") is None and versions[0].reason == "first version"


def test_unknown_and_incomplete_versions_are_not_promoted(memory_uri, data, trained):
    _publish(memory_uri, data, trained, "v1")
    fs, models = _fs(memory_uri)
    fs.pipe_file(f"{models}/v2/student/config.json", b"{}")  # a write that did not finish: no manifest
    with pytest.raises(UnknownVersion, match="no version 'v9'"):
        promote(memory_uri, "v9")
    with pytest.raises(UnknownVersion, match="not a version name"):
        promote(memory_uri, "../v1")
    with pytest.raises(IncompleteVersion, match="'v2' is incomplete: it has no manifest.json"):
        promote(memory_uri, "v2")
    assert _latest(memory_uri) == "v1"
    # an incomplete version has no creation time: it lists first
    assert [(v.version, v.status) for v in list_versions(memory_uri)] == [("v2", "incomplete"), ("v1", "current")]


def test_a_latest_moved_before_the_history_is_found_and_rolled_back_to(tmp_path, data, trained):
    split, items, _ = data
    out = str(tmp_path / "out")
    hist = pd.DataFrame({"user_id": ["u"], "item_id": [items.item_ids[0]], "timestamp": [0]})
    write_artifact(out, items=items, histories=hist, student=trained, teacher=None, dataset={}, metrics={},
                   encoder=None, version="v0", publish=False)
    (tmp_path / "out" / "models" / "LATEST").write_text("v0")  # an output written before the history existed
    assert _publish(out, data, copy.deepcopy(trained), "v1")["published"]
    assert _moves(out) == [("v0", "found"), ("v1", "published")]
    assert rollback(out)["version"] == "v0" and _latest(out) == "v0"
    assert not (tmp_path / "out" / "models" / "LATEST.tmp").exists()


# ------------------------------------------------------------------------------------------ the CLI

def test_the_cli_lists_promotes_and_rolls_back(memory_uri, data, trained, untrained, capsys):
    from distilrec.cli import main

    _publish(memory_uri, data, trained, "v1")
    _publish(memory_uri, data, untrained, "v2")
    assert main(["model", "list", "--model-uri", memory_uri]) == 0
    table = capsys.readouterr().out
    assert "current" in table and "refused" in table and "first version" in table and "validation" in table
    assert main(["model", "promote", "v2", "--model-uri", memory_uri]) == 2
    assert "VERSION 'v2': version 'v2' was refused by the offline gate" in capsys.readouterr().err
    assert main(["model", "promote", "v2", "--force", "--model-uri", memory_uri]) == 0
    assert capsys.readouterr().out.startswith("LATEST: v1 -> v2 (promoted, forced)")
    assert main(["model", "rollback", "--model-uri", memory_uri]) == 0
    assert capsys.readouterr().out.startswith("LATEST: v2 -> v1 (rolled back)")
    assert main(["model", "rollback", "--model-uri", memory_uri]) == 2
    assert "no complete version was published before v1" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["model", "promote", "v9", "--model-uri", "{out}"], "distilrec model promote: VERSION 'v9': no version 'v9'"),
    (["model", "promote", "v2", "--model-uri", "{out}"], "distilrec model promote: VERSION 'v2': version 'v2' is "
                                                         "incomplete"),
    (["model", "list", "--model-uri", "{out}/models/v1"], "distilrec model list: --model-uri '{out}/models/v1': "
                                                          "{out}/models/v1 is one version's folder"),
    (["model", "rollback", "--model-uri", "{out}/nothing"], "distilrec model rollback: --model-uri '{out}/nothing': "
                                                            "no model versions at"),
])
def test_the_cli_names_the_bad_value_with_exit_code_2(tmp_path, data, trained, capsys, argv, message):
    from distilrec.cli import main

    out = str(tmp_path / "out")
    _publish(out, data, trained, "v1")
    (tmp_path / "out" / "models" / "v2").mkdir()
    assert main([a.format(out=out) for a in argv]) == 2
    assert capsys.readouterr().err.startswith(message.format(out=out))


def test_pipeline_force_reaches_the_run(monkeypatch, tmp_path):
    import training.pipeline
    from distilrec.cli import main

    seen = {}
    monkeypatch.setattr(training.pipeline, "run_pipeline", lambda *a, **kw: seen.update(kw))
    assert main(["pipeline", "--dataset", "synthetic", "--output", str(tmp_path), "--force"]) == 0
    assert seen["force"] is True
