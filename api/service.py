"""What the API works with: the store, caches, and (inside ``metalic serve``) the dispatcher.

Recommendations restore a study's engine from its latest snapshot once per version (never fit on
the request path); trained models and plots of finished tasks are cached, since a finished task
never changes.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from fastapi.concurrency import run_in_threadpool

from metalic.settings import Settings
from metalic.store.studies import EngineCache
from metalic.store.tasks import QueueFull, submit_batch


class LRU:
    """A small thread-safe least-recently-used cache."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, make: Callable[[], Any]):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()
        with self._lock:
            self._items[key] = value
            if len(self._items) > self.size:
                self._items.popitem(last=False)
        return value


class TTLCache:
    """Values that may be this many seconds old (which study has the most data for a family)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._items: dict = {}

    def get(self, key, make: Callable[[], Any]):
        hit = self._items.get(key)
        now = time.monotonic()
        if hit is not None and now - hit[0] < self.seconds:
            return hit[1]
        value = make()
        if value is None:  # "nothing yet" is asked again: a study may appear any moment
            return value
        if len(self._items) > 1000:
            self._items.clear()
        self._items[key] = (now, value)
        return value


class Refreshed:
    """Values kept ``seconds`` and reloaded by one caller at a time: when an entry is due, the
    first request loads it in the thread pool and every concurrent request awaits that same load
    (no herd of identical database reads when a popular entry expires)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._items: dict = {}
        self._loading: dict = {}

    def forget(self, key) -> None:
        """Drop an entry now (a logout must not wait for it to expire in this process)."""
        self._items.pop(key, None)

    async def get(self, key, load: Callable[[], Any]):
        hit = self._items.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.seconds:
            return hit[1]
        future = self._loading.get(key)
        if future is None:
            future = asyncio.ensure_future(run_in_threadpool(load))
            self._loading[key] = future
            try:
                value = await future
            finally:
                self._loading.pop(key, None)
            if len(self._items) > 10_000:
                self._items.clear()
            self._items[key] = (time.monotonic(), value)
            return value
        return await future


class Submitter:
    """Group commit of solve submissions: requests that arrive while a write transaction runs go
    together in the next one (one BEGIN ... COMMIT for up to ``size`` tasks). On SQLite, where one
    writer at a time is the rule, one transaction per request measured 140 submissions per second
    at 32 concurrent clients, this 490 (docs/benchmarks.md); PostgreSQL is spared a commit per task."""

    def __init__(self, store, size: int = 256, max_open: int | None = None):
        self.store, self.size, self.max_open = store, size, max_open
        self._pending: list = []
        self._flushing = False
        self._task: asyncio.Future | None = None

    async def submit(self, request, owner: str | None, key: str | None):
        future = asyncio.get_running_loop().create_future()
        self._pending.append((request, owner, key, future))
        if not self._flushing:
            self._flushing = True
            self._task = asyncio.ensure_future(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[: self.size], self._pending[self.size :]
                items = [(r, o, k) for r, o, k, _ in batch]
                try:
                    results = await run_in_threadpool(submit_batch, self.store, items, "ucb", self.max_open)
                except Exception as exc:
                    for *_, future in batch:
                        future.set_exception(exc)
                else:
                    for (*_, future), result in zip(batch, results, strict=True):
                        if isinstance(result, QueueFull):
                            future.set_exception(result)
                        else:
                            future.set_result(result)
        finally:
            self._flushing = False


class Service:
    def __init__(self, settings: Settings, store, dispatcher=None):
        self.settings, self.store = settings, store
        self.dispatcher = dispatcher  # set once the trainers are up (metalic serve)
        self.dispatcher_error: str | None = None
        self.tokens = Refreshed(settings.token_cache_seconds)  # token digest -> Principal | None
        self.sessions = Refreshed(settings.token_cache_seconds)  # dashboard session id -> token digest | None
        self.engines = EngineCache(store)
        self.submitter = Submitter(store, max_open=settings.max_queued_per_user)
        self.servable = TTLCache(settings.heartbeat_seconds)  # the device classes the live trainers serve
        self.models = LRU(32)
        self.plots = LRU(64)
        self.studies = TTLCache(5.0)  # (family, mode, study) -> the study recommendations read
        self.policies = Refreshed(settings.snapshot_check_seconds)  # (family, mode, study) -> Policy
        self.started = False  # the dispatcher is expected (metalic serve)
        self.on_shutdown: Callable[[], None] | None = None

    def wake(self) -> None:
        """Tell the dispatcher new work was queued (it would see it at its next poll anyway)."""
        if self.dispatcher is not None:
            self.dispatcher.wake.set()
