"""Refits off the request path: studies with new observations get their GP refitted in one
background thread (at lower CPU priority than the trainings) and a new policy snapshot."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor

from metalic.store import studies as study_store

log = logging.getLogger(__name__)


def _lower_priority() -> None:
    """Refits yield the CPU to trainings that share the machine (Linux: per-thread nice)."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


class Refitter:
    """``mark(study ids)`` when observations arrive; ``tick()`` starts the refits that are due (one
    per study at a time, one thread); ``idle`` says whether none is running or due."""

    def __init__(self, store, stopping: threading.Event):
        self.store, self.stopping = store, stopping
        self.live_engines: dict = {}  # the refit thread's engines, by study
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="metalic-refit", initializer=_lower_priority)
        self._running: dict[int, Future] = {}
        self._due: set[int] = set()
        self._lock = threading.Lock()

    def mark(self, study_ids: Iterable[int]) -> None:
        with self._lock:
            self._due |= set(study_ids)

    @property
    def idle(self) -> bool:
        with self._lock:
            return not self._due and not self._running

    def tick(self) -> None:
        with self._lock:
            for sid, future in list(self._running.items()):
                if future.done():
                    self._running.pop(sid)
                    if future.exception() is not None:
                        log.error("refit of study %s failed: %s", sid, future.exception())
            if not self._due:
                return
            campaign_owned = study_store.campaign_studies(self.store, list(self._due))
            for sid in list(self._due):
                if sid in campaign_owned:  # a campaign refits its own engines, step by step
                    self._due.discard(sid)
                elif sid not in self._running:  # one refit per study at a time; marked again if needed
                    self._due.discard(sid)
                    self._running[sid] = self._pool.submit(self._refit_until_current, sid)

    def _refit_until_current(self, study_id: int) -> None:
        while not self.stopping.is_set() and study_store.refit_study(self.store, study_id, self.live_engines):
            pass

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)
