"""The serving overview: is distilrec fast, correct, fresh and sized right, which stage is to blame, and
which A/B arm answers better.

Every query reads the metrics the Serve application exports through Ray's metrics API
(``services/metrics.py``; Ray prefixes ``ray_``) and Ray Serve's own replica metrics.
"""

from __future__ import annotations

from dashboards.core import SEL, Dashboard, Panel, Row, Target, Variable

RI = "$__rate_interval"
REC = 'route="/v1/recommend"'
# The stages of a recommendation as the ingress times them (distilrec_stage_latency_ms, tag `stage`).
REC_STAGES = 'stage=~"features|score|query"'
# The other stages: event writes, new items (encoding + storing), the Scorer's /v1/model answer.
OTHER_STAGES = 'stage=~"store|items|info"'
FIVE_XX = 'code=~"5.."'


def _rate(metric: str, extra: str = "", by: str = "") -> str:
    sel = SEL + (f",{extra}" if extra else "")
    return f"sum{f' by ({by})' if by else ''} (rate({metric}{{{sel}}}[{RI}]))"


def _quantile(q: float, hist: str, extra: str = "", by: str = "") -> str:
    return f"histogram_quantile({q}, {_rate(hist + '_bucket', extra, ', '.join(['le'] + ([by] if by else [])))})"


def _quantiles(hist: str, extra: str = "", by: str = "", qs=(0.5, 0.95, 0.99)) -> list[Target]:
    return [Target(_quantile(q, hist, extra, by), f"{'{{' + by + '}} ' if by else ''}p{round(q * 100)}")
            for q in qs]


def _share(numerator: str, denominator: str) -> str:
    """``numerator / denominator``, 0 (not "no data") while the numerator has no series yet: a counter
    such as the degraded one exists only from its first increment."""
    return f"({numerator} or vector(0)) / {denominator}"


FAST = Row("Is it fast?", [
    Panel("Requests/s by route", [Target(_rate("ray_distilrec_requests_total", by="route"), "{{route}}")],
          "HTTP requests answered per second, every status code.", unit="reqps", stack=True),
    Panel("Recommendation latency, end to end", _quantiles("ray_distilrec_request_latency_ms", REC),
          "POST /v1/recommend from the request's arrival at the ingress to its answer.", unit="ms",
          thresholds=[(250, "red")]),
    Panel("p99 latency by route", [Target(_quantile(0.99, "ray_distilrec_request_latency_ms", by="route"),
                                          "{{route}}")], unit="ms"),
    Panel("Recommendation stage latency p50",
          [Target(_quantile(0.5, "ray_distilrec_stage_latency_ms", REC_STAGES, by="stage"), "{{stage}}")],
          "Each stage of POST /v1/recommend as the ingress times it: features (the user's history from the "
          "artifact and the event store, read off the event loop), score (the batched model and candidate "
          "retrieval: in the ingress's own process with scorer: inline, one handle call to the Scorer "
          "deployment with scorer: deployment), query (embedding a request's query text on the TextEncoder; "
          "only requests with a query). Ranking runs in the ingress after score and is not a stage of its own: "
          "it is the end-to-end latency less these.", unit="ms"),
    Panel("Recommendation stage latency p95",
          [Target(_quantile(0.95, "ray_distilrec_stage_latency_ms", REC_STAGES, by="stage"), "{{stage}}")],
          "features, score and query (see the p50 panel).", unit="ms"),
    Panel("Recommendation stage latency p99",
          [Target(_quantile(0.99, "ray_distilrec_stage_latency_ms", REC_STAGES, by="stage"), "{{stage}}")],
          "features, score and query (see the p50 panel); each has a deadline (deadline_ms in the ingress's "
          "user_config, 1 s by default) past which the answer is degraded.", unit="ms"),
    Panel("Other stage latency p50 / p99",
          _quantiles("ray_distilrec_stage_latency_ms", OTHER_STAGES, by="stage", qs=(0.5, 0.99)),
          "store: writing events (POST /v1/events); items: encoding and storing new items (POST /v1/items, "
          "admin); info: the Scorer deployment's answer to GET /v1/model (scorer: deployment only).",
          unit="ms", width=8),
    Panel("Scorer batch size", _quantiles("ray_distilrec_scorer_batch_size", by="deployment", qs=(0.5, 0.95)),
          "Requests scored together in one tensor batch (@serve.batch), by the deployment that batches: the "
          "Ingress with scorer: inline, the Scorer with scorer: deployment. Interpolated within the buckets "
          "1, 2, 4, 8, … (values up to 1 mean no batching). No mean: Ray 2.60 exports a histogram's _sum "
          "from bucket midpoints.",
          width=8),
    Panel("Scorer batch size distribution",
          [Target(f"sum by (le) (increase(ray_distilrec_scorer_batch_size_bucket{{{SEL}}}[{RI}]))", "{{le}}",
                  format="heatmap")],
          "Batches per batch-size bucket (the Ingress's or the Scorer's, whichever scores).", kind="heatmap",
          width=8),
])

CORRECT = Row("Is it correct?", [
    Panel("5xx share by route",
          [Target(f'({_rate("ray_distilrec_requests_total", FIVE_XX, "route")} or 0 * '
                  f'{_rate("ray_distilrec_requests_total", by="route")}) / '
                  f'{_rate("ray_distilrec_requests_total", by="route")}', "{{route}}")],
          "Share of answers that are server errors (alert DistilrecHighErrorRate: 1% over 5m).",
          unit="percentunit", min=0, thresholds=[(0.01, "red")]),
    Panel("Answers by status code", [Target(_rate("ray_distilrec_requests_total", by="code"), "{{code}}")],
          "4xx are bad requests (clients); 5xx are ours.", unit="reqps", stack=True),
    Panel("Degraded share of recommendations",
          [Target(_share(_rate("ray_distilrec_degraded_total"), _rate("ray_distilrec_requests_total", REC)),
                  "degraded")],
          "Recommendations answered by a fallback (co-occurrence or popularity ranking, or without the stored "
          "events) over all recommendations (alert DistilrecHighDegradedRate: 5%).",
          unit="percentunit", min=0, thresholds=[(0.05, "red")]),
    Panel("Degraded answers by reason", [Target(_rate("ray_distilrec_degraded_total", by="reason"), "{{reason}}")],
          "scorer_timeout / scorer_error / scorer_overloaded: scoring (in the ingress, or the Scorer deployment "
          "with scorer: deployment) was too slow, failed or was refused for back-pressure, and the co-occurrence "
          "ranking answered; store_read: the user's stored events could not be read (or not in time) and the "
          "answer lacks them; query_timeout / query_error: the TextEncoder did not embed the request's query, "
          "answered without it.", unit="reqps", stack=True),
    Panel("Cold-start share",
          [Target(_share(_rate("ray_distilrec_cold_start_total"),
                         _rate("ray_distilrec_requests_total", REC + ',code="200"')), "cold start")],
          "Recommendations for users with no known history (answered with the popular items).",
          unit="percentunit", min=0),
    Panel("Candidates per request", _quantiles("ray_distilrec_candidates_per_request", qs=(0.5, 0.95)),
          "Candidates retrieved per scored recommendation: the ranking's input, before filters, seen items "
          "and diversity."),
    Panel("Event store errors by operation",
          [Target(_rate("ray_distilrec_event_store_errors_total", by="op"), "{{op}}")],
          "Failed reads (answers degraded) and writes (POST /v1/events answered 503; alert "
          "DistilrecEventWritesFailing); impressions: recommendations' impressions the store did not take (their "
          "feedback is unmatched).", unit="reqps", width=12),
    Panel("Events stored/s", [Target(_rate("ray_distilrec_events_stored_total"), "events")],
          "Events committed to the event store (POST /v1/events).", width=12),
])

FRESH = Row("Is it fresh?", [
    Panel("Replicas per model version", [Target(f"count by (version) (ray_distilrec_model_info{{{SEL}}} == 1)",
                                                "{{version}}")],
          "Replicas serving each model version: two versions at once only during a swap.", kind="stat",
          width=6),
    Panel("Model age", [Target(f"time() - min(ray_distilrec_model_created_timestamp_seconds{{{SEL}}})", "age")],
          "Time since the oldest served model was trained (retraining schedule: training.cron).", kind="stat",
          unit="s", width=6, thresholds=[(2 * 86400, "orange")]),
    Panel("Event-to-effect freshness",
          _quantiles("ray_distilrec_event_to_effect_seconds", qs=(0.5, 0.95, 0.99)),
          "Seconds from an event's commit to the first recommendation that reflects it.", unit="s", width=12),
    Panel("Model reloads", [Target(f"sum by (result) (increase(ray_distilrec_model_reloads_total{{{SEL}}}[{RI}]))",
                                   "{{result}}")],
          "Model versions swapped in (ok) or refused (the old model keeps serving; see /v1/model).",
          width=8, stack=True),
    Panel("New items added", [Target(f"sum(increase(ray_distilrec_items_added_total{{{SEL}}}[{RI}]))", "items")],
          "Items added by POST /v1/items (recommendable without retraining).", width=8),
    Panel("Events stored per recommendation",
          [Target(f'{_rate("ray_distilrec_events_stored_total")} / {_rate("ray_distilrec_requests_total", REC)}',
                  "events / recommendation")],
          "How much live feedback arrives per recommendation served.", width=8),
])

SIZED = Row("Is it sized right?", [
    Panel("Healthy replicas per deployment",
          [Target(f"sum by (deployment) (ray_serve_deployment_replica_healthy{{{SEL}}})", "{{deployment}}"),
           Target(f"sum by (deployment) (ray_serve_autoscaling_target_replicas{{{SEL}}})",
                  "{{deployment}} target")],
          "Ray Serve's replicas per deployment and the autoscaler's target.", width=8),
    Panel("Requests in flight per deployment",
          [Target(f"sum by (deployment) (ray_serve_replica_processing_queries{{{SEL}}})", "{{deployment}}")],
          "Requests each deployment's replicas are working on: the TextEncoder and the Scorer (scorer: "
          "deployment) scale on these against target_ongoing_requests; the Ingress, which does a "
          "recommendation's work itself, on its CPU.",
          width=8),
    Panel("Queued requests per deployment",
          [Target(f"sum by (deployment) (ray_serve_deployment_queued_queries{{{SEL}}})", "{{deployment}}")],
          "Requests waiting for a replica; a growing queue means too few replicas.", width=8),
    Panel("Ingress CPU per replica",
          [Target(f"avg(ray_distilrec_ingress_cpu_busy{{{SEL}}})", "mean"),
           Target(f"max(ray_distilrec_ingress_cpu_busy{{{SEL}}})", "busiest replica")],
          "Share of a CPU each ingress replica used: its autoscaling keeps the mean near target_cpu (0.6 in "
          "services/serve_config.yaml). Many requests in flight at a low CPU means they wait: on the event "
          "store, the TextEncoder or the Scorer deployment (see the stage latencies).",
          width=12),
    Panel("Scorer deployment (scorer: deployment)",
          [Target(f'sum(ray_serve_deployment_replica_healthy{{{SEL},deployment="Scorer"}})', "healthy replicas"),
           Target(f'sum(ray_serve_replica_processing_queries{{{SEL},deployment="Scorer"}})', "in flight"),
           Target(f'sum(ray_serve_deployment_queued_queries{{{SEL},deployment="Scorer"}})', "queued")],
          "The Scorer deployment's replicas, the requests they work on and those waiting for one. No data with "
          "scorer: inline (the default): the Ingress replicas score in process and the application has no "
          "Scorer deployment.", width=12),
])

# Hits at a rank up to 10: the `rank` tag is the bucket's highest rank (services/metrics.py HIT_RANK_BUCKETS).
RANK_AT_10 = 'rank=~"1|2|3|5|10"'


def _by_arm_share(numerator: str, denominator: str) -> str:
    """``numerator / denominator`` by arm, 0 (not "no data") for an arm whose numerator has no series yet."""
    return f"({numerator} or 0 * {denominator}) / {denominator}"


ARMS = Row("Is it better? A/B arms", [
    Panel("Recommendations/s by arm", [Target(_rate("ray_distilrec_arm_requests_total", by="arm"), "{{arm}}")],
          "Recommendations answered per second by each arm of the experiment (experiment / arms in the ingress's "
          "user_config; one arm, default, without them). A user stays on its arm; the split follows the weights.",
          unit="reqps", stack=True),
    Panel("p99 latency by arm", [Target(_quantile(0.99, "ray_distilrec_arm_latency_ms", by="arm"), "{{arm}}")],
          "From a recommendation's validated body to its answer, per arm (an arm with the teacher or another "
          "version scores with its own model).", unit="ms", thresholds=[(250, "red")]),
    Panel("Degraded share by arm",
          [Target(_by_arm_share(_rate("ray_distilrec_arm_degraded_total", by="arm"),
                                _rate("ray_distilrec_arm_requests_total", by="arm")), "{{arm}}")],
          "Recommendations answered by a fallback, per arm: an arm far above the others has a model that is "
          "too slow or failing.", unit="percentunit", min=0, thresholds=[(0.05, "red")]),
    Panel("Hit rate @10 by arm",
          [Target(_by_arm_share(_rate("ray_distilrec_arm_hits_total", RANK_AT_10, "arm"),
                                _rate("ray_distilrec_arm_impressions_total", by="arm")), "{{arm}}")],
          "Feedback events (POST /v1/events with the answer's recommendation_id) on an item the arm showed at "
          "rank 1 to 10, per recommendation the arm answered with items: the online counterpart of HR@10.",
          unit="percentunit", min=0),
    Panel("Mean hit position by arm",
          [Target(f'{_rate("ray_distilrec_arm_hit_rank_sum_total", by="arm")} / '
                  f'{_rate("ray_distilrec_arm_hits_total", by="arm")}', "{{arm}}")],
          "The mean rank (1 = first) of the shown items that feedback events hit, per arm: lower is better.",
          decimals=2),
    Panel("Feedback events by result",
          [Target(_rate("ray_distilrec_feedback_events_total", by="result"), "{{result}}")],
          "Events with a recommendation_id: hit, not_shown (the answer did not show the item), unmatched (an "
          "unknown or expired id: the impression was not kept, or is older than the store keeps them), duplicate "
          "(stored before, not counted again), lookup_failed. Impressions the store did not take show as "
          "op=\"impressions\" under the event store errors.",
          unit="reqps", stack=True),
    Panel("Canary share of traffic",
          [Target(f"max by (arm) (max_over_time(ray_distilrec_canary_weight{{{SEL}}}[{RI}]))", "{{arm}}")],
          "The canary arm's share of the traffic (canary in the ingress's user_config): it moves up a step every "
          "interval_s while its errors, degraded answers and p99 stay within bounds of the stable arms', and "
          "drops to 0 when the canary is rolled back. No data without a canary.",
          unit="percentunit", min=0, max=1),
    Panel("Canary status",
          [Target(f"max by (arm, status) (max_over_time(ray_distilrec_canary_status{{{SEL}}}[{RI}]))",
                  "{{arm}} {{status}}")],
          "1 for the canary's status: running (moving up), complete (at max_weight) or rolled_back (the reason is "
          "in GET /v1/model and in distilrec_canary_rollbacks_total's reason; DistilrecCanaryRolledBack fires).",
          min=0, max=1, decimals=0, thresholds=[(1, "red")]),
    Panel("Shadow overlap@k by arm",
          [Target(f'{_rate("ray_distilrec_shadow_overlap_sum", by="arm")} / '
                  f'{_rate("ray_distilrec_shadow_overlap_count", by="arm")}', "{{arm}}")],
          "A shadow arm (shadow: true) is scored after each answer is sent, off the response path: the mean share "
          "of the served items that its own list also holds (1 = the same items). Shadow scorings past "
          "shadow_deadline_ms or the in-flight cap are dropped: distilrec_shadow_dropped_total.",
          unit="percentunit", min=0, max=1),
])

OVERVIEW = Dashboard(
    uid="distilrec-overview", title="distilrec / Overview",
    description="Generated by dashboards/overview.py (python -m dashboards); do not edit. "
                "Is the recommender fast, correct, fresh and sized right, which stage is to blame, and which "
                "A/B arm is better.",
    rows=[FAST, CORRECT, FRESH, SIZED, ARMS],
    variables=[
        Variable("namespace", "Namespace", "label_values(ray_distilrec_requests_total, namespace)"),
        Variable("release", "Release",
                 'label_values(ray_distilrec_requests_total{namespace=~"$namespace"}, app_kubernetes_io_instance)'),
    ],
)
