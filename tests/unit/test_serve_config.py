"""``services/serve_config.yaml`` and its overrides (``services.run.load_config``), without Ray."""

from __future__ import annotations

from services.run import load_config


def _deployment(cfg: dict, name: str) -> dict:
    return next(d for d in cfg["applications"][0]["deployments"] if d["name"] == name)


def test_fixed_replica_count_replaces_autoscaling_and_back():
    fixed = load_config(overrides={"StudentScorer": {"num_replicas": 3}})
    assert _deployment(fixed, "StudentScorer")["num_replicas"] == 3
    assert "autoscaling_config" not in _deployment(fixed, "StudentScorer")
    scaled = load_config(overrides={"StudentScorer": {"autoscaling_config": {"min_replicas": 2, "max_replicas": 5}}})
    assert _deployment(scaled, "StudentScorer")["autoscaling_config"] == {"min_replicas": 2, "max_replicas": 5}
    assert "num_replicas" not in _deployment(scaled, "StudentScorer")


def test_other_options_are_merged_and_the_file_is_untouched():
    cfg = load_config(model_uri="s3://b/out", port=9000, overrides={"Ranker": {"max_ongoing_requests": 7}},
                      app_args={"event_store": "redis://r:6379/0"})
    assert cfg["http_options"]["port"] == 9000
    assert cfg["applications"][0]["args"]["model_uri"] == "s3://b/out"
    assert cfg["applications"][0]["args"]["event_store"] == "redis://r:6379/0"
    assert _deployment(cfg, "Ranker")["max_ongoing_requests"] == 7
    plain = load_config()
    assert _deployment(plain, "Ranker").get("max_ongoing_requests") != 7  # the file itself is unchanged
    assert plain["applications"][0]["args"]["model_uri"] != "s3://b/out"
