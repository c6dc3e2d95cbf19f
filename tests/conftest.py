"""Shared fixtures: real stores (SQLite files and PostgreSQL schemas) and one local Ray per session."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

# Under pytest-xdist (``make test`` runs two workers on a 2-core machine) each worker computes on
# one thread, and idle OpenMP threads sleep instead of spinning: two teams of spinning threads on
# two cores (plus a Ray trainer's) slowed CPU-bound tests tenfold. Set before torch loads OpenMP;
# Ray workers and subprocesses inherit it.
_WORKERS = 2 if os.environ.get("PYTEST_XDIST_WORKER") else 1
if _WORKERS > 1:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import migrations  # noqa: E402

torch.set_num_threads(2 // _WORKERS)

ROOT = Path(__file__).resolve().parents[1]
PG_BASE = os.environ.get("METALIC_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# Every process of the session (Ray workers, CLI subprocesses) sees the test families.
os.environ["METALIC_PLUGINS"] = "tests.plugins.broken_family,tests.plugins.nan_family"
# New studies start from nothing unless a test installs priors (tests/test_priors.py): the suite's
# expectations of a cold bandit do not depend on which priors the checkout ships.
os.environ["METALIC_PRIORS"] = "off"
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# The session's Ray notices a machine that died within about 1.5 s (the joined-machine test kills
# one), instead of Ray's default of about 15 s.
for _key, _value in {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}.items():
    os.environ.setdefault(_key, _value)
# One reference-grid cache for the whole session (every process), removed at its end: the suite
# solves each grid once and writes nothing into the checkout.
_REFERENCES = tempfile.mkdtemp(prefix="metalic-test-references-")
os.environ["METALIC_REFERENCE_CACHE"] = _REFERENCES
atexit.register(shutil.rmtree, _REFERENCES, ignore_errors=True)


def _postgres_ok() -> bool:
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(PG_BASE, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
        return True
    except Exception:
        return False


# Module fixtures that cost tens of seconds: their tests run on one worker, which builds it once.
SHARED_FIXTURES = ("planted",)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups into the node ids
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``make test`` runs two workers), every test that uses the session's Ray
    runs on one worker, so that one Ray serves them all (``--dist loadgroup``); so do the tests of
    each costly module fixture (``SHARED_FIXTURES``), which each worker would otherwise build."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "ray_address" in names:
            item.add_marker(pytest.mark.xdist_group("ray"))
        elif shared := next((f for f in SHARED_FIXTURES if f in names), None):
            item.add_marker(pytest.mark.xdist_group(shared))


def pytest_configure(config):
    """Under ``--dist loadgroup`` a test's group travels in its node id (``@name``), which pytest
    9.2 no longer lets xdist 3.8 change (pytest-xdist#1386): the groups would be dropped silently
    and each worker would start a Ray. Refuse that pairing (pyproject pins pytest<9.2)."""
    if config.getoption("dist", "no") != "loadgroup":
        return
    import xdist

    if pytest.version_tuple[:2] >= (9, 2) and tuple(int(p) for p in xdist.__version__.split(".")[:2]) <= (3, 8):
        raise pytest.UsageError(
            f"pytest {pytest.__version__} with pytest-xdist {xdist.__version__} ignores --dist loadgroup's "
            "groups (pytest-xdist#1386); run `make setup` (pytest<9.2)"
        )


@pytest.fixture(scope="session")
def postgres_available() -> bool:
    return _postgres_ok()


def make_pg_url() -> tuple[str, str]:
    """A fresh schema in the test database: (url whose search_path is that schema, schema)."""
    import sqlalchemy

    schema = "t_" + uuid.uuid4().hex[:12]
    engine = sqlalchemy.create_engine(PG_BASE)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    engine.dispose()
    return f"{PG_BASE}?options=-csearch_path%3D{schema}", schema


def drop_pg_schema(schema: str) -> None:
    import sqlalchemy

    engine = sqlalchemy.create_engine(PG_BASE)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path, postgres_available):
    """An empty database of each kind (the URL only; nothing created yet)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'metalic.db'}"
        return
    if not postgres_available:
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432 (make test starts it)")
    url, schema = make_pg_url()
    yield url
    from metalic.store import db as store_db

    store = store_db._stores.pop(url, None)
    if store is not None:
        store.dispose()
    drop_pg_schema(schema)


@pytest.fixture
def store(db_url):
    """A migrated store on each kind of database."""
    from metalic.store import Store

    s = Store(db_url)
    migrations.upgrade(s)
    yield s
    s.dispose()


@pytest.fixture
def sqlite_store(tmp_path):
    from metalic.store import Store

    s = Store(f"sqlite:///{tmp_path / 'metalic.db'}")
    migrations.upgrade(s)
    yield s
    s.dispose()


@pytest.fixture(scope="session")
def ray_address():
    """One local Ray for the whole session (2 CPUs), shut down at its end."""
    from workers.cluster import connect, disconnect

    address = connect(None, num_cpus=2)
    yield address
    disconnect()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """A real uvicorn server for an app, on 127.0.0.1 and a free port, in a thread of this process."""

    def __init__(self, app):
        import threading

        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        import time

        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture
def api_settings():
    from metalic.settings import Settings

    return Settings(
        poll_seconds=0.05,
        heartbeat_seconds=0.5,
        progress_seconds=0.2,
        token_cache_seconds=0.0,
        max_batch_cpu=8,
        cpu_workers=1,
        max_body_bytes=20_000,
        max_predict_points=500,
    )
