"""Metric definitions shared by the deployments (Ray's metrics API; exported on the node's metrics port).

Ray adds ``deployment``, ``replica`` and ``application`` tags and prefixes names with ``ray_``.
No user or item ids ever go into a tag.
"""

from __future__ import annotations

from ray.serve import metrics

LATENCY_MS_BUCKETS = [0.5, 1, 2, 5, 10, 20, 35, 50, 75, 100, 200, 500, 1000, 2500]
BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256]


def requests_total() -> metrics.Counter:
    return metrics.Counter("distilrec_requests_total", "HTTP requests by route and status code.",
                           tag_keys=("route", "code"))


def request_latency() -> metrics.Histogram:
    return metrics.Histogram("distilrec_request_latency_ms", "End-to-end latency of a request in ms.",
                             boundaries=LATENCY_MS_BUCKETS, tag_keys=("route",))


def stage_latency() -> metrics.Histogram:
    return metrics.Histogram("distilrec_stage_latency_ms", "Latency of one step of a request (features, score, query, store, items, info) in ms.",
                             boundaries=LATENCY_MS_BUCKETS, tag_keys=("stage",))


def batch_size() -> metrics.Histogram:
    return metrics.Histogram("distilrec_scorer_batch_size", "Requests scored together in one tensor batch.",
                             boundaries=BATCH_BUCKETS)


def cold_start_total() -> metrics.Counter:
    return metrics.Counter("distilrec_cold_start_total", "Recommendations for users with no known history.")


def events_stored_total() -> metrics.Counter:
    return metrics.Counter("distilrec_events_stored_total",
                           "Events committed to the event store (POST /v1/events).")


def degraded_total() -> metrics.Counter:
    return metrics.Counter("distilrec_degraded_total", "Answers given by a fallback, by reason.",
                           tag_keys=("reason",))


def candidates_per_request() -> metrics.Histogram:
    return metrics.Histogram("distilrec_candidates_per_request", "Candidates retrieval gave the ranking per request.",
                             boundaries=[10, 25, 50, 100, 200, 500, 1000, 2500, 5000, 10000])


def event_store_errors() -> metrics.Counter:
    return metrics.Counter("distilrec_event_store_errors_total", "Event store reads or writes that failed.",
                           tag_keys=("op",))


def ingress_cpu_busy() -> metrics.Gauge:
    return metrics.Gauge("distilrec_ingress_cpu_busy",
                         "Share of a CPU this ingress replica's process used since its last report: what the "
                         "ingress's autoscaling follows (services/autoscaling.py).")


def model_info() -> metrics.Gauge:
    return metrics.Gauge("distilrec_model_info", "1 for the model version this replica serves.",
                         tag_keys=("version",))


def model_created() -> metrics.Gauge:
    return metrics.Gauge("distilrec_model_created_timestamp_seconds",
                         "Creation time (unix seconds) of the model this replica serves.")


def model_reloads() -> metrics.Counter:
    return metrics.Counter("distilrec_model_reloads_total", "Model versions swapped in (ok) or refused.",
                           tag_keys=("result",))


def event_to_effect() -> metrics.Histogram:
    return metrics.Histogram("distilrec_event_to_effect_seconds",
                             "Seconds from an event's commit to the first recommendation on this replica "
                             "that reflects it.", boundaries=[0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30])


def items_added_total() -> metrics.Counter:
    return metrics.Counter("distilrec_items_added_total", "New items stored by POST /v1/items.")


# A/B arms (services/arms.py): per arm, so that the arms can be compared; `arm` is a configured arm name.
HIT_RANK_BUCKETS = (1, 2, 3, 5, 10, 20, 50, 100)  # the `rank` tag of a hit: the bucket's highest rank


def rank_bucket(rank: int) -> str:
    """The ``rank`` tag of a hit at 1-based ``rank``: the smallest bucket bound at or above it.

    >>> [rank_bucket(r) for r in (1, 4, 5, 6, 10, 11, 100, 101)]
    ['1', '5', '5', '10', '10', '20', '100', '100']
    """
    for bound in HIT_RANK_BUCKETS:
        if rank <= bound:
            return str(bound)
    return str(HIT_RANK_BUCKETS[-1])


def arm_requests_total() -> metrics.Counter:
    return metrics.Counter("distilrec_arm_requests_total", "Recommendations answered (200) per A/B arm.",
                           tag_keys=("arm",))


def arm_latency() -> metrics.Histogram:
    return metrics.Histogram("distilrec_arm_latency_ms", "Latency of a recommendation per arm in ms, from its "
                             "validated body to its answer.", boundaries=LATENCY_MS_BUCKETS, tag_keys=("arm",))


def arm_degraded_total() -> metrics.Counter:
    return metrics.Counter("distilrec_arm_degraded_total", "Recommendations answered degraded (any reason) per arm.",
                           tag_keys=("arm",))


def arm_impressions_total() -> metrics.Counter:
    return metrics.Counter("distilrec_arm_impressions_total", "Recommendations with items whose impression was "
                           "kept for feedback, per arm: the denominator of the hit rate.", tag_keys=("arm",))


def arm_hits_total() -> metrics.Counter:
    return metrics.Counter("distilrec_arm_hits_total", "Feedback events on an item a recommendation showed, per arm "
                           "and rank bucket (rank: the bucket's highest rank, 1 2 3 5 10 20 50 100; hits at rank "
                           "<= 10: rank=~\"1|2|3|5|10\").", tag_keys=("arm", "rank"))


def arm_hit_rank_sum_total() -> metrics.Counter:
    return metrics.Counter("distilrec_arm_hit_rank_sum_total", "Sum of the ranks (1 = first) of the hits per arm: "
                           "the mean hit position is this over the hits.", tag_keys=("arm",))


def feedback_events_total() -> metrics.Counter:
    return metrics.Counter("distilrec_feedback_events_total", "Stored events that carried a recommendation_id, by "
                           "result: hit, not_shown (the item was not in it), unmatched (unknown or expired id), "
                           "duplicate (stored before: not counted again), lookup_failed.", tag_keys=("result",))


def impressions_dropped_total() -> metrics.Counter:
    return metrics.Counter("distilrec_impressions_dropped_total", "Impressions not kept (feedback on them is "
                           "unmatched), by reason: store_error, backlog.", tag_keys=("reason",))


# Shadow arms and the canary (services/canary.py).
OVERLAP_BUCKETS = [0.01, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99]  # Ray wants them > 0: le=0.01 is no overlap


def shadow_overlap() -> metrics.Histogram:
    return metrics.Histogram("distilrec_shadow_overlap", "Overlap@k of a shadow arm's list with the served answer "
                             "(shared items / k), per shadow arm; the mean is _sum over _count.",
                             boundaries=OVERLAP_BUCKETS, tag_keys=("arm",))


def shadow_latency() -> metrics.Histogram:
    return metrics.Histogram("distilrec_shadow_latency_ms", "Latency of a shadow arm's scoring step in ms (after the "
                             "answer was sent).", boundaries=LATENCY_MS_BUCKETS, tag_keys=("arm",))


def shadow_dropped_total() -> metrics.Counter:
    return metrics.Counter("distilrec_shadow_dropped_total", "Shadow scorings not recorded, per shadow arm and reason: "
                           "cap (shadow_max_in_flight reached), timeout (past shadow_deadline_ms), error.",
                           tag_keys=("arm", "reason"))


def canary_weight() -> metrics.Gauge:
    return metrics.Gauge("distilrec_canary_weight", "The canary arm's share of the traffic (0 after a rollback), as "
                         "this replica applies it.", tag_keys=("arm",))


def canary_status() -> metrics.Gauge:
    return metrics.Gauge("distilrec_canary_status", "1 for the canary's status (running, complete, rolled_back) "
                         "on this replica, 0 for the others.", tag_keys=("arm", "status"))


def canary_rollbacks_total() -> metrics.Counter:
    return metrics.Counter("distilrec_canary_rollbacks_total", "Canaries rolled back by their controller, per arm "
                           "and reason (errors, degraded, latency); counted once, by the replica that decided.",
                           tag_keys=("arm", "reason"))


def canary_steps_total() -> metrics.Counter:
    return metrics.Counter("distilrec_canary_steps_total", "Canary steps up, per arm; counted once, by the replica "
                           "that decided.", tag_keys=("arm",))
