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
    return metrics.Histogram("distilrec_stage_latency_ms", "Latency of one stage (encode, score, rank, store) in ms.",
                             boundaries=LATENCY_MS_BUCKETS, tag_keys=("stage",))


def batch_size() -> metrics.Histogram:
    return metrics.Histogram("distilrec_scorer_batch_size", "Requests scored together in one tensor batch.",
                             boundaries=BATCH_BUCKETS)


def cold_start_total() -> metrics.Counter:
    return metrics.Counter("distilrec_cold_start_total", "Recommendations for users with no known history.")


def events_stored_total() -> metrics.Counter:
    return metrics.Counter("distilrec_events_stored_total",
                           "Events committed to the event store (POST /v1/events).")
