"""What the API works with: the store, caches, and (inside ``metalic serve``) the dispatcher.

Recommendations restore a study's engine from its latest snapshot once per version (never fit on
the request path); trained models and plots of finished tasks are cached, since a finished task
never changes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from api.auth import TokenCache
from metalic.settings import Settings
from metalic.store.studies import EngineCache


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


class Service:
    def __init__(self, settings: Settings, store, dispatcher=None):
        self.settings, self.store = settings, store
        self.dispatcher = dispatcher  # set once the trainers are up (metalic serve)
        self.dispatcher_error: str | None = None
        self.tokens = TokenCache(settings.token_cache_seconds)
        self.engines = EngineCache()
        self.engine_lock = threading.Lock()
        self.models = LRU(32)
        self.plots = LRU(64)
        self.started = False  # the dispatcher is expected (metalic serve)
        self.on_shutdown: Callable[[], None] | None = None

    def wake(self) -> None:
        """Tell the dispatcher new work was queued (it would see it at its next poll anyway)."""
        if self.dispatcher is not None:
            self.dispatcher.wake.set()
