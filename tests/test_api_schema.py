"""Schemathesis against the served OpenAPI schema: generated requests (valid and invalid) to every
operation find no server error, and every response conforms to the schema it documents."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import migrations
from api.app import create_app
from api.service import Service
from metalic.settings import Settings
from metalic.store import Store
from metalic.store import tokens as token_store
from tests.conftest import LiveServer

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    store = Store(f"sqlite:///{tmp_path_factory.mktemp('schema') / 'metalic.db'}")
    migrations.upgrade(store)
    token, _ = token_store.create(store, "fuzzer", "admin")
    service = Service(Settings(max_body_bytes=20_000, max_predict_points=200), store)
    with LiveServer(create_app(service)) as server:
        yield server.url, token
    store.dispose()


def test_no_server_errors_and_responses_match_the_schema(served):
    url, token = served
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 18
    headers = {"Authorization": f"Bearer {token}"}
    failures = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            case.call_and_validate(headers=headers, checks=CHECKS)

        try:
            check()
        except Exception as exc:  # keep going: report every operation that fails
            failures.append(f"{operation.label}: {str(exc)[:600]}")
    assert not failures, "\n\n".join(failures)
    scraped = httpx.get(f"{url}/metrics").text
    sent = sum(
        float(line.split()[-1])
        for line in scraped.splitlines()
        if line.startswith("metalic_http_request_seconds_count")
    )
    assert sent >= 6 * len(operations)  # it really sent generated requests to every operation
