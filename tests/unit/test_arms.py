"""A/B arms (services/arms.py): the stable assignment of users to arms, its proportions, its independence
from the interpreter's hash seed, weight changes, shadow arms, an arm's own score budget, the checks on an
``arms`` config, and what ``previous``
and a pinned version resolve to under a model output folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import fsspec
import pytest

from distilrec.artifacts import publish_version
from services.arms import (
    DEFAULT_ARM,
    Arm,
    ArmsConfigError,
    Experiment,
    bucket,
    default_experiment,
    parse_experiment,
    previous_version,
    version_uri,
)

ROOT = Path(__file__).resolve().parents[2]
THREE = {"experiment": "exp-a", "arms": [{"name": "control", "weight": 5}, {"name": "teacher", "scorer_model": "teacher",
                                                                         "weight": 3},
                                         {"name": "pinned", "model": "v1", "weight": 2}]}


def test_without_arms_one_default_arm_serves_the_deployments_model():
    for config in ({}, {"arms": None, "default_k": 10}):
        exp = parse_experiment(config, "teacher")
        assert [a.name for a in exp.arms] == [DEFAULT_ARM] and exp.keys == {("latest", "teacher")}
        assert exp.assign("anyone") == exp.assign(None) == Arm(DEFAULT_ARM, "latest", "teacher", 1.0)
    assert default_experiment("student").describe()["arms"][0]["share"] == 1.0


def test_users_split_by_weight_and_stay_on_their_arm():
    exp = parse_experiment(THREE, "student")
    assert [a.scorer_model for a in exp.arms] == ["student", "teacher", "student"]  # default: the deployment's
    assert exp.keys == {("latest", "student"), ("latest", "teacher"), ("v1", "student")}
    users = [f"user-{i}" for i in range(20_000)]
    first = {u: exp.assign(u).name for u in users}
    shares = {name: n / len(users) for name, n in Counter(first.values()).items()}
    for name, want in (("control", 0.5), ("teacher", 0.3), ("pinned", 0.2)):
        assert abs(shares[name] - want) < 0.015, shares
    assert all(exp.assign(u).name == first[u] for u in users[::7])  # sticky
    # Another experiment's name reshuffles: about half of the users change arm.
    other = parse_experiment({**THREE, "experiment": "exp-b"}, "student")
    moved = sum(other.assign(u).name != first[u] for u in users) / len(users)
    assert 0.5 < moved < 0.7, moved
    # Without a user id: drawn per request, in the same proportions.
    drawn = Counter(exp.assign(None).name for _ in range(20_000))
    assert abs(drawn["control"] / 20_000 - 0.5) < 0.02, drawn
    assert exp.describe()["arms"][1] == {"name": "teacher", "model": "latest", "scorer_model": "teacher",
                                         "weight": 3, "share": 0.3, "shadow": False}


def test_a_shadow_arm_takes_no_users_and_an_arm_with_its_own_budget_its_own_state():
    exp = parse_experiment({"arms": [{"name": "a"}, {"name": "b", "weight": 1},
                                     {"name": "next", "scorer_model": "teacher", "shadow": True, "weight": 5},
                                     {"name": "slow", "score_deadline_ms": 2.5, "weight": 0}]}, "student")
    assert [a.name for a in exp.served] == ["a", "b", "slow"] and [a.name for a in exp.shadows] == ["next"]
    assert {exp.assign(f"u{i}").name for i in range(2000)} == {"a", "b"}
    assert exp.keys == {("latest", "student"), ("latest", "teacher"), ("latest", "student", 2.5)}
    described = {a["name"]: a for a in exp.describe()["arms"]}
    assert described["next"]["share"] == 0 and described["next"]["shadow"] is True
    assert described["slow"]["score_deadline_ms"] == 2.5 and "score_deadline_ms" not in described["a"]


def test_an_arm_at_weight_zero_gets_no_users():
    exp = parse_experiment({"arms": [{"name": "a"}, {"name": "idle", "weight": 0}, {"name": "b"}]}, "student")
    assert {exp.assign(f"u{i}").name for i in range(2000)} == {"a", "b"}


def test_the_assignment_does_not_depend_on_the_hash_seed():
    users = [f"u{i}" for i in range(200)]
    config = {**THREE, "arms": THREE["arms"][:2]}
    here = [parse_experiment(config, "student").assign(u).name for u in users]
    code = ("import json, sys; from services.arms import parse_experiment; "
            f"exp = parse_experiment({config!r}, 'student'); "
            f"print(json.dumps([exp.assign(u).name for u in {users!r}]))")
    for seed in ("0", "12345"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                             env={**os.environ, "PYTHONHASHSEED": seed}, timeout=60)
        assert json.loads(out.stdout) == here
    assert bucket("ranker-test", "42") == 0.6568608028684868  # fixed: blake2b, not hash()


def test_a_growing_last_arm_keeps_its_users():
    exp = Experiment.of("canary", [Arm("stable", weight=0.95), Arm("canary", model="v2", weight=0.05)])
    users = [f"u{i}" for i in range(5000)]
    before = {u for u in users if exp.assign(u).name == "canary"}
    grown = exp.with_weights({"stable": 0.75, "canary": 0.25})
    after = {u for u in users if grown.assign(u).name == "canary"}
    assert before < after and abs(len(after) / len(users) - 0.25) < 0.02
    assert exp.assign(users[0]) is not None and exp.arms[1].weight == 0.05  # the original is unchanged
    with pytest.raises(ArmsConfigError, match="no arms named"):
        exp.with_weights({"nope": 1})


@pytest.mark.parametrize("config, match", [
    ({"arms": "control"}, "must be a list"),
    ({"arms": []}, "arms is empty"),
    ({"arms": [{"model": "latest"}]}, "with a name"),
    ({"arms": [{"name": "a"}, {"name": "a"}]}, "unique"),
    ({"arms": [{"name": "a", "scorer_model": "bert"}]}, "scorer_model must be one of"),
    ({"arms": [{"name": "a", "model": "../etc"}]}, "model must be latest, previous or a version"),
    ({"arms": [{"name": "a", "weight": -1}]}, "weight must be a finite number >= 0"),
    ({"arms": [{"name": "a", "weight": float("nan")}]}, "finite"),
    ({"arms": [{"name": "a", "weight": "1"}]}, "weight must be"),
    ({"arms": [{"name": "a", "weight": 0}, {"name": "b", "weight": 0}]}, "sum to more than 0"),
    ({"arms": [{"name": "a", "wieght": 1}]}, "unknown keys"),
    ({"arms": [{"name": "a b"}]}, "arm name"),
    ({"arms": [{"name": "a", "shadow": True}]}, "every arm is a shadow"),
    ({"arms": [{"name": "a", "shadow": "yes"}]}, "shadow must be true or false"),
    ({"arms": [{"name": "a", "score_deadline_ms": 0}]}, "score_deadline_ms must be a number > 0"),
    ({"arms": [{"name": f"a{i}"} for i in range(9)]}, "at most 8"),
    ({"experiment": "", "arms": [{"name": "a"}]}, "experiment must be a name"),
])
def test_a_bad_arms_config_is_refused_with_the_reason(config, match):
    with pytest.raises(ArmsConfigError, match=match):
        parse_experiment(config, "student")


def test_with_a_scorer_deployment_every_arm_serves_the_scorers_model():
    same = {"arms": [{"name": "a", "weight": 1}, {"name": "b", "scorer_model": "student", "weight": 1}]}
    assert len(parse_experiment(same, "student", inline=False).served) == 2
    for other in ({"name": "t", "scorer_model": "teacher"}, {"name": "p", "model": "previous"},
                  {"name": "s", "score_deadline_ms": 5}):
        with pytest.raises(ArmsConfigError, match="scorer: deployment"):
            parse_experiment({"arms": [{"name": "a"}, other]}, "student", inline=False)


def _version(models: Path, name: str) -> None:
    (models / name).mkdir(parents=True)
    (models / name / "manifest.json").write_text(json.dumps({"version": name}))


def test_previous_and_pinned_versions_resolve_under_the_model_folder(tmp_path):
    models = tmp_path / "models"
    fs = fsspec.filesystem("file")
    for name in ("v1", "v2", "v3"):
        _version(models, name)
    assert version_uri(str(tmp_path), "v2") == str(models / "v2")
    publish_version(fs, str(models), "v1", "published")
    assert version_uri(str(models), "v2") == str(models / "v2")  # the models/ folder itself, once it has LATEST
    with pytest.raises(LookupError, match="no version was published before v1"):
        previous_version(str(tmp_path))
    publish_version(fs, str(models), "v2", "published")
    publish_version(fs, str(models), "v3", "published")
    assert previous_version(str(tmp_path)) == str(models / "v2")
    (models / "v2" / "manifest.json").unlink()  # an incomplete version is stepped over
    assert previous_version(str(tmp_path)) == str(models / "v1")
    publish_version(fs, str(models), "v1", "rolled_back")  # a rollback: v1 serves, nothing before it
    with pytest.raises(LookupError):
        previous_version(str(tmp_path))
    with pytest.raises(ValueError, match="one version's folder"):  # a single version: no others
        version_uri(str(models / "v3"), "v1")
