"""The ``workers`` table: trainer actors and dispatchers, with heartbeats on the database clock."""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime, timedelta

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from metalic.store.models import WorkerRow, utc_now
from metalic.store.records import WorkerRecord, record, utc

TRAINER, DISPATCHER = "trainer", "dispatcher"
DISPATCHER_LOCK = 7_313_001  # PostgreSQL advisory lock key: one dispatcher registers at a time


class AnotherDispatcher(RuntimeError):
    """A dispatcher is alive on this store (one runs per store)."""


def register(store, kind: str, device: str, worker_id: str | None = None) -> str:
    """A new row for this process; returns its id."""
    worker_id = worker_id or uuid.uuid4().hex
    with store.write() as s:
        s.add(WorkerRow(id=worker_id, kind=kind, host=socket.gethostname(), pid=os.getpid(), device=device))
    return worker_id


def register_dispatcher(store, stale_seconds: float) -> str:
    """Register this process as the store's dispatcher, or raise AnotherDispatcher when one is
    alive. The check and the registration are one step: a write transaction that holds the
    database's lock for it (an advisory lock on PostgreSQL; on SQLite every write transaction
    begins IMMEDIATE, one writer at a time)."""
    worker_id = uuid.uuid4().hex
    with store.write() as s:
        if s.get_bind().dialect.name == "postgresql":
            s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": DISPATCHER_LOCK})
        if _live_dispatchers(s, stale_seconds):
            raise AnotherDispatcher("a dispatcher is already running on this store")
        s.add(WorkerRow(id=worker_id, kind=DISPATCHER, host=socket.gethostname(), pid=os.getpid(),
                        device="dispatcher"))  # fmt: skip
    return worker_id


def heartbeat(store, worker_id: str, state: str | None = None, current_batch: int | bool | None = False) -> None:
    """Refresh ``last_seen``; optionally set the state and current batch (False: leave it)."""
    values: dict = {"last_seen": utc_now()}
    if state is not None:
        values["state"] = state
    if current_batch is not False:
        values["current_batch"] = current_batch
    with store.write() as s:
        s.execute(update(WorkerRow).where(WorkerRow.id == worker_id).values(**values))


def stop(store, worker_id: str) -> None:
    heartbeat(store, worker_id, state="stopped", current_batch=None)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_alive(row: WorkerRecord, now: datetime, stale_seconds: float) -> bool:
    """Not stopped, seen within ``stale_seconds``, and (on this host) its process exists."""
    if row.state == "stopped":
        return False
    if row.host == socket.gethostname() and not _pid_alive(row.pid):
        return False
    return row.last_seen >= now - timedelta(seconds=stale_seconds)


def _now(session: Session) -> datetime:
    return utc(session.execute(select(utc_now())).scalar_one())


def _live_dispatchers(session: Session, stale_seconds: float, exclude: str | None = None) -> list[WorkerRecord]:
    now = _now(session)
    rows = session.scalars(select(WorkerRow).where(WorkerRow.kind == DISPATCHER, WorkerRow.state != "stopped")).all()
    found = [record(WorkerRecord, r) for r in rows]
    return [r for r in found if r.id != exclude and is_alive(r, now, stale_seconds)]


def live_dispatchers(store, stale_seconds: float, exclude: str | None = None) -> list[WorkerRecord]:
    with store.read() as s:
        return _live_dispatchers(s, stale_seconds, exclude)


def list_workers(store, stopped: bool = False, limit: int = 200) -> tuple[datetime, list[WorkerRecord]]:
    """(the database's now, workers by kind and start): those seen in the last hour and not stopped,
    or every one with ``stopped``."""
    with store.read() as s:
        now = _now(session=s)
        q = select(WorkerRow).order_by(WorkerRow.kind, WorkerRow.started_at).limit(limit)
        if not stopped:
            hour_ago = (now - timedelta(hours=1)).replace(tzinfo=None)
            q = q.where(WorkerRow.state != "stopped", WorkerRow.last_seen >= hour_ago)
        return now, [record(WorkerRecord, w) for w in s.scalars(q).all()]


def device_class(device: str) -> str:
    """``cpu`` or ``cuda`` for a trainer's device label (``cuda:0 (NVIDIA H200)``)."""
    return "cuda" if device.startswith("cuda") else "cpu"


def servable_devices(store, stale_seconds: float) -> set[str] | None:
    """The device classes the live trainers serve; None when no trainer is alive (a cluster that is
    starting, or an API without trainers): then nothing can be said either way."""
    now, rows = list_workers(store)
    live = {device_class(w.device) for w in rows if w.kind == TRAINER and is_alive(w, now, stale_seconds)}
    return live or None
