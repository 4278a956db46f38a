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
