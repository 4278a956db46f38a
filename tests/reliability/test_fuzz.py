"""Fuzzing: schemathesis generates requests from the live application's own OpenAPI schema
(``/openapi.json``), valid ones and invalid ones (wrong types, missing fields, out-of-range values,
odd strings), sends them through Ray Serve's HTTP proxy with the admin token, and checks every answer:
no 5xx, the status is one the schema declares, the body matches the schema declared for that status
(errors: ``{"error": {"code", "message"}}``), the content type is JSON. Afterwards the same replicas
are alive (none crashed and was replaced) and the service is ready.

``DISTILREC_FUZZ_EXAMPLES`` sets the examples per operation and mode (CI: 25; the long run: 200)."""

from __future__ import annotations

import os
import time

import pytest

from reliability_helpers import record, replica_actors

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("DISTILREC_FUZZ_EXAMPLES", "25"))


def test_fuzzing_from_the_openapi_schema_finds_no_5xx_and_no_schema_violation(client, serve_url, admin):
    import requests
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation import GenerationMode
    from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                                   status_code_conformance)

    spec = client.get("/openapi.json").json()
    schema = schemathesis.openapi.from_dict(spec)
    before = replica_actors()
    checks = [not_a_server_error, status_code_conformance, response_schema_conformance, content_type_conformance]
    calls: dict[str, int] = {}
    statuses: dict[int, int] = {}
    t0 = time.monotonic()
    session = requests.Session()
    operations = [r.ok() for r in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/recommend", "/v1/events", "/v1/items", "/v1/model",
                                              "/v1/model/reload", "/healthz", "/readyz"}
    for op in operations:
        # Invalid data needs something to be invalid: a body (the routes have no parameters).
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if len(op.body) else [])
        for mode in modes:
            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode))
            def fuzz(case):
                r = case.call_and_validate(base_url=serve_url, session=session, headers=admin, checks=checks,
                                           timeout=60)
                key = f"{op.method.upper()} {op.path}"
                calls[key] = calls.get(key, 0) + 1
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

            fuzz()
    elapsed = time.monotonic() - t0
    record("fuzz", examples_per_operation_and_mode=EXAMPLES, requests=sum(calls.values()), seconds=elapsed,
           statuses=dict(sorted(statuses.items())), per_operation=calls)
    assert not any(code >= 500 for code in statuses)
    assert sum(c for s, c in statuses.items() if 400 <= s < 500) > 0  # the invalid ones were refused
    assert replica_actors() == before, "a replica died or was replaced while fuzzing"
    assert client.get("/readyz").status_code == 200
