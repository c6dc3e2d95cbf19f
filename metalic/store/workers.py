"""The ``workers`` table: trainer actors and dispatchers, with heartbeats on the database clock."""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime, timedelta

from sqlalchemy import select, update

from metalic.store.models import WorkerRow, utc_now
from metalic.store.records import WorkerRecord, record

TRAINER, DISPATCHER = "trainer", "dispatcher"


def register(store, kind: str, device: str, worker_id: str | None = None) -> str:
    """A new row for this process; returns its id."""
    worker_id = worker_id or uuid.uuid4().hex
    with store.write() as s:
        s.add(WorkerRow(id=worker_id, kind=kind, host=socket.gethostname(), pid=os.getpid(), device=device))
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


def is_alive(row: WorkerRecord, now, stale_seconds: float) -> bool:
    """Not stopped, seen within ``stale_seconds``, and (on this host) its process exists."""
    if row.state == "stopped":
        return False
    if row.host == socket.gethostname() and not _pid_alive(row.pid):
        return False
    return row.last_seen >= now - timedelta(seconds=stale_seconds)


def live_dispatchers(store, stale_seconds: float, exclude: str | None = None) -> list[WorkerRecord]:
    with store.read() as s:
        now = s.execute(select(utc_now())).scalar_one()
        rows = s.scalars(select(WorkerRow).where(WorkerRow.kind == DISPATCHER, WorkerRow.state != "stopped")).all()
        rows = [record(WorkerRecord, r) for r in rows]
    return [r for r in rows if r.id != exclude and is_alive(r, now, stale_seconds)]


def list_workers(store, stopped: bool = False, limit: int = 200) -> tuple[datetime, list[WorkerRecord]]:
    """(the database's now, workers by kind and start): those seen in the last hour and not stopped,
    or every one with ``stopped``."""
    with store.read() as s:
        now = s.execute(select(utc_now())).scalar_one()
        q = select(WorkerRow).order_by(WorkerRow.kind, WorkerRow.started_at).limit(limit)
        if not stopped:
            q = q.where(WorkerRow.state != "stopped", WorkerRow.last_seen >= now - timedelta(hours=1))
        return now, [record(WorkerRecord, w) for w in s.scalars(q).all()]
