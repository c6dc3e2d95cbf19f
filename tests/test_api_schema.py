"""Schemathesis against the served OpenAPI schema: generated requests (valid and invalid) to every
operation, with a user's token and with an admin's, find no server error, and every response
conforms to the schema it documents (``date-time`` fields included). The store holds a task, a
trainer's and a dispatcher's rows, a campaign and its studies, so that list answers are not empty."""

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
    tokens = {role: token_store.create(store, f"fuzzer-{role}", role)[0] for role in ("user", "admin")}
    _seed(store)
    service = Service(Settings(max_body_bytes=20_000, max_predict_points=200), store)
    with LiveServer(create_app(service)) as server:
        yield server.url, tokens
    store.dispose()


def _seed(store) -> None:
    from metalic.campaign import CampaignConfig
    from metalic.jobs import SolveRequest
    from metalic.pinn.problem import PinnConfig
    from metalic.pinn.trainer import TrainConfig
    from metalic.store import campaigns
    from metalic.store import tasks as task_store
    from metalic.store import workers as worker_store

    task_store.submit(store, SolveRequest(family="advection", adam=5, lbfgs=5), owner="fuzzer-user")
    worker_store.register(store, worker_store.TRAINER, "cpu")
    worker_store.register(store, worker_store.DISPATCHER, "dispatcher")
    small = {"train": TrainConfig(adam=5, lbfgs=5), "pinn": PinnConfig(n_collocation=20, n_boundary=10)}
    campaigns.create(store, CampaignConfig(family="heat", warmup=1, rounds=1, test=1, **small), owner="fuzzer-admin")


@pytest.mark.parametrize("role", ["user", "admin"])
def test_no_server_errors_and_responses_match_the_schema(served, role):
    url, tokens = served
    token = tokens[role]
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
