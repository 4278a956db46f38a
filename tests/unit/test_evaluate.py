"""The evaluation table: baselines under the protocol, cost figures and the ``report.json`` layout."""

from __future__ import annotations

import json

import pytest
import torch

from distilrec.baselines import EASE, Popularity
from distilrec.config import StudentConfig, TeacherConfig
from distilrec.data import Split
from distilrec.data.synthetic import generate
from distilrec.evaluate import (
    MODEL_ORDER, build_report, compare_models, evaluate_baselines, evaluate_model, format_table, model_ranks,
    scoring_cost, scoring_costs,
)
from distilrec.metrics import evaluate_ranks, evaluate_scores
from distilrec.models import Student, Teacher, count_params

COST_KEYS = {"params", "macs_per_candidate", "score_ms_p50_1000", "score_ms_p99_1000",
             "score_ms_per_request_batched"}


@pytest.fixture(scope="module")
def small():
    ds = generate(users=40, items=30, seed=0, min_len=4, max_len=12)
    return ds, Split.leave_one_out(ds)


def _models(n_items):
    t = Teacher(TeacherConfig(n_items=n_items, text_dim=4, d_model=8, n_heads=2, n_layers=1, max_len=12),
                text_emb=torch.randn(n_items, 4))
    s = Student(StudentConfig(n_items=n_items, text_dim=4, d_model=8, n_heads=1, n_layers=1, max_len=12),
                text_emb=torch.randn(n_items, 4))
    return t, s


def test_scoring_cost_keys_and_values():
    t, s = _models(50)
    threads = torch.get_num_threads()
    for m in (t, s):
        cost = scoring_cost(m, n_candidates=1000, runs=5)
        assert set(cost) == COST_KEYS
        assert cost["params"] == count_params(m)
        assert cost["macs_per_candidate"] == pytest.approx(m.macs_per_candidate(1000), abs=0.05)
        assert 0 < cost["score_ms_p50_1000"] <= cost["score_ms_p99_1000"]
        assert cost["score_ms_per_request_batched"] > 0
        assert not m.training
    assert torch.get_num_threads() == threads  # restored after the one-thread timing


@pytest.mark.parametrize("block", [1, 3, 20])
def test_scoring_costs_in_blocks_use_pytorch_kernels_and_restore_the_setting(block):
    t, s = _models(50)
    onednn, seen, score = torch.backends.mkldnn.enabled, [], s.score

    def spy(*args, **kwargs):
        seen.append(torch.backends.mkldnn.enabled)
        return score(*args, **kwargs)

    s.score = spy
    costs = scoring_costs({"teacher": t, "student": s}, runs=7, block=block)
    assert set(costs) == {"teacher", "student"}
    for c in costs.values():
        assert 0 < c["score_ms_p50_1000"] <= c["score_ms_p99_1000"] and c["score_ms_per_request_batched"] > 0
    assert len(seen) >= 10 + 7 + 1 and not any(seen)  # warm-up, single and batched runs, all without oneDNN
    assert torch.backends.mkldnn.enabled == onednn  # the process's setting comes back


def test_scoring_costs_refuse_an_empty_block():
    t, s = _models(50)
    with pytest.raises(ValueError, match="block=0"):
        scoring_costs({"teacher": t, "student": s}, runs=5, block=0)


def test_baselines_follow_the_protocol(small):
    ds, split = small
    lambdas = (10.0, 500.0)
    out = evaluate_baselines(split, ds.n_items, lambdas=lambdas)
    assert set(out) == {"popularity", "ease"}
    test_h, test_t = split.histories("test"), split.test_target
    # popularity: counts of train + validation, ranked for the test targets
    pop = evaluate_scores(Popularity.fit(test_h, ds.n_items).score, test_h, test_t)
    assert out["popularity"]["ndcg@10"] == pytest.approx(pop["ndcg@10"])
    assert out["popularity"]["hr@10"] == pytest.approx(pop["hr@10"])
    # EASE: lambda picked on validation (train histories → validation targets), refitted on train + val
    val = {lam: evaluate_scores(EASE.fit(split.train, ds.n_items, lam).score, split.train,
                                split.val_target)["ndcg@10"] for lam in lambdas}
    assert out["ease"]["lambda"] == max(val, key=val.get)
    ease = evaluate_scores(EASE.fit(test_h, ds.n_items, out["ease"]["lambda"]).score, test_h, test_t)
    assert out["ease"]["ndcg@10"] == pytest.approx(ease["ndcg@10"])
    assert out["ease"]["hr@10"] == pytest.approx(ease["hr@10"])
    for name in ("popularity", "ease"):
        assert 0.0 <= out[name]["ndcg@10"] <= out[name]["hr@10"] <= 1.0
        assert all(out[name][k] is None for k in COST_KEYS)


def test_evaluate_model_uses_the_stage(small):
    ds, split = small
    _, s = _models(ds.n_items)
    test = evaluate_model(s, split, "test")
    assert set(test) == {"ndcg@10", "hr@10"}
    assert 0.0 <= test["ndcg@10"] <= test["hr@10"] <= 1.0
    from distilrec.metrics import model_score_fn

    val = evaluate_scores(model_score_fn(s), split.histories("val"), split.val_target)
    assert evaluate_model(s, split, "val") == pytest.approx(val)


def test_build_report_has_the_design_layout(small):
    ds, split = small
    t, s = _models(ds.n_items)
    models = dict(evaluate_baselines(split, ds.n_items, lambdas=(10.0,)))
    for name, m in (("student", s), ("teacher", t)):  # inserted out of order on purpose
        models[name] = {**evaluate_model(m, split), **scoring_cost(m, runs=5)}
    models["custom"] = {"ndcg@10": 0.0, "hr@10": 0.0}
    report = build_report(ds, models, extra={"seed": 0})
    assert report["dataset"] == {"name": ds.name, "users": ds.n_users, "items": ds.n_items,
                                 "interactions": ds.n_interactions}
    assert list(report["models"]) == ["popularity", "ease", "teacher", "student", "custom"]
    for name in ("popularity", "ease", "teacher", "student"):
        assert {"ndcg@10", "hr@10"} | COST_KEYS <= set(report["models"][name])
    for name in ("teacher", "student"):
        assert all(isinstance(report["models"][name][k], (int, float)) for k in COST_KEYS)
    assert report["seed"] == 0
    json.loads(json.dumps(report))  # report.json must be plain JSON
    assert MODEL_ORDER[:4] == ("popularity", "ease", "teacher", "student")


def test_report_carries_paired_comparisons_of_the_targets(small):
    ds, split = small
    t, s = _models(ds.n_items)
    ranks: dict = {}
    models = dict(evaluate_baselines(split, ds.n_items, lambdas=(10.0,), ranks=ranks))
    assert set(ranks) == {"popularity", "ease"}
    for name, m in (("teacher", t), ("student", s)):
        ranks[name] = model_ranks(m, split)
        models[name] = evaluate_model(m, split)
        assert ranks[name].shape == (ds.n_users,)
    assert evaluate_ranks(ranks["ease"]) == pytest.approx({k: models["ease"][k] for k in ("ndcg@10", "hr@10")})
    comparisons = compare_models(ranks, resamples=200)
    assert list(comparisons) == ["teacher / ease", "student / teacher"]  # no student alone in this run
    c = comparisons["student / teacher"]
    assert c["a"] == "student" and c["b"] == "teacher" and c["users"] == ds.n_users
    assert c["ratio"] == pytest.approx(models["student"]["ndcg@10"] / models["teacher"]["ndcg@10"], abs=1e-4)
    assert c["low"] <= c["ratio"] <= c["high"]
    report = build_report(ds, models, comparisons=comparisons)
    assert report["comparisons"] == comparisons
    json.loads(json.dumps(report))


def test_format_table_prints_every_model(small):
    from rich.console import Console

    ds, _ = small
    report = build_report(ds, {
        "popularity": {"ndcg@10": 0.01234, "hr@10": 0.05, "params": None, "macs_per_candidate": None,
                       "score_ms_p50_1000": None, "score_ms_p99_1000": None},
        "student": {"ndcg@10": 0.5, "hr@10": 0.75, "params": 12345, "macs_per_candidate": 40.0,
                    "score_ms_p50_1000": 0.1234, "score_ms_p99_1000": 0.5},
    })
    console = Console(record=True, width=200)
    console.print(format_table(report))
    text = console.export_text()
    assert "popularity" in text and "student" in text
    assert "0.0123" in text and "0.7500" in text and "12,345" in text
    assert f"{ds.n_users} users" in text


def test_ease_above_its_item_limit_is_reported_as_skipped_and_popularity_stays(small):
    ds, split = small
    skipped: dict = {}
    ranks: dict = {}
    out = evaluate_baselines(split, ds.n_items, lambdas=(10.0,), ranks=ranks, ease_max_items=ds.n_items - 1,
                             skipped=skipped)
    assert set(out) == set(ranks) == {"popularity"}
    assert skipped["ease"].startswith(f"EASE refused: {ds.n_items} items is above its limit")
    assert out["popularity"] == evaluate_baselines(split, ds.n_items, lambdas=(10.0,))["popularity"]


def test_ease_lambda_is_chosen_on_the_validation_sample(small):
    ds, split = small
    users = split.val_sample(10, seed=3)
    out = evaluate_baselines(split, ds.n_items, lambdas=(10.0, 500.0), val_users=users)
    val = {lam: evaluate_scores(EASE.fit(split.train, ds.n_items, lam).score, [split.train[u] for u in users],
                                split.val_target[users])["ndcg@10"] for lam in (10.0, 500.0)}
    assert out["ease"]["lambda"] == max(val, key=val.get)


def test_a_test_sample_ranks_its_users_as_the_full_test_does(small):
    ds, split = small
    users = split.val_sample(12, seed=1)
    full_ranks: dict = {}
    sample_ranks: dict = {}
    evaluate_baselines(split, ds.n_items, lambdas=(10.0,), ranks=full_ranks)
    evaluate_baselines(split, ds.n_items, lambdas=(10.0,), ranks=sample_ranks, test_users=users)
    for name in ("popularity", "ease"):  # fitted on every user's history either way
        assert (sample_ranks[name] == full_ranks[name][users]).all(), name
    teacher, _ = _models(ds.n_items)
    assert (model_ranks(teacher, split, users=users) == model_ranks(teacher, split)[users]).all()


def test_the_test_sample_is_opt_in_and_at_least_5000_users():
    from pydantic import ValidationError

    from distilrec.config import PipelineConfig

    assert PipelineConfig().test_max_users is None  # docs/evaluation.md: the test reads every user
    assert PipelineConfig(test_max_users=20_000).test_max_users == 20_000
    with pytest.raises(ValidationError, match="test_max_users"):
        PipelineConfig(test_max_users=100)


def test_the_table_says_when_the_test_read_a_sample_of_users():
    report = {"dataset": {"name": "d", "users": 900_000, "items": 10, "interactions": 99}, "models": {},
              "test": {"users": 20_000, "of": 900_000, "sample_seed": 1}}
    assert "(test on a sample of 20,000 users, full ranking)" in format_table(report).title
    report["test"] = {"users": 900_000, "of": 900_000, "sample_seed": None}
    assert "(test, full ranking)" in format_table(report).title
