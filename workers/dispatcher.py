"""The dispatcher: queued tasks -> arms -> batches on free trainers; outcomes -> refits -> snapshots.

One loop (``tick``), each step a call into the part that does it:

1. ``Flights.collect``: finished batches. The worker has recorded its results already; a batch
   whose actor died has its tasks requeued (attempt + 1) or failed after ``max_attempts``.
2. ``Flights.requeue_stale``: running tasks without a heartbeat for ``lease_seconds`` are requeued.
3. ``campaigns.advance_all``: campaigns whose current step has finished submit their next step.
4. ``Packer.pack``: the oldest queued tasks packed into batches for the free trainers
   (``batching.plan_batches``), their learned arms asked of the studies' engines.
5. ``Refitter.tick``: studies with new observations are refitted in a background thread and get
   a new policy snapshot; recommendations read the latest snapshot.

The store is the one source of truth: on start, tasks left running by a dispatcher that is gone
go back to the queue, and any late result of theirs is refused by the attempt guard.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from metalic.settings import Settings, get_settings
from metalic.store import studies as study_store
from metalic.store import tasks as task_store
from metalic.store import workers as worker_store
from workers import campaigns
from workers.flights import Flights
from workers.packing import Packer
from workers.refits import Refitter

log = logging.getLogger(__name__)


DispatcherBusy = worker_store.AnotherDispatcher  # another dispatcher is alive on this store


class Dispatcher:
    def __init__(
        self,
        store,
        executor,
        settings: Settings | None = None,
        max_batch: int | None = None,
        exclusive: bool = True,
    ):
        self.store, self.executor = store, executor
        self.settings = settings or get_settings()
        if exclusive:  # the check and the registration in one locked transaction
            self.id = worker_store.register_dispatcher(store, self._stale_seconds)
        else:
            self.id = worker_store.register(store, worker_store.DISPATCHER, "dispatcher")
        self._stopping = threading.Event()
        self.wake = threading.Event()
        self.refits = Refitter(store, self._stopping)
        self.flights = Flights(store, executor, self.settings, on_observed=self.refits.mark)
        self.packer = Packer(store, executor, self.id, max_batch, self.settings.batch_window_seconds)
        self._thread: threading.Thread | None = None
        self._last_beat = self._last_stale = self._last_refresh = 0.0
        self.batches_started = 0
        self.recover()

    @property
    def _stale_seconds(self) -> float:
        return 3 * self.settings.heartbeat_seconds + 2 * self.settings.poll_seconds + 5

    # ---- start-up -------------------------------------------------------------------------------
    def recover(self) -> dict[str, list[int]]:
        """Requeue what dispatchers that are gone left running; refit studies whose observations
        are newer than their snapshot."""
        live = {w.id for w in worker_store.live_dispatchers(self.store, self._stale_seconds)} | {self.id}
        batch_ids = task_store.orphaned_batches(self.store, live)
        items = task_store.running_of_batches(self.store, batch_ids)
        moved = task_store.retry_or_fail(
            self.store, items, "the dispatcher of its batch stopped", self.settings.max_attempts, counted=False
        )
        for b in batch_ids:
            task_store.finish_batch(self.store, b, "lost")
        if items:
            log.warning("requeued %d task(s) left running by a stopped dispatcher", len(moved["requeued"]))
        self.refits.mark(study_store.studies_behind(self.store))
        return moved

    # ---- the loop ---------------------------------------------------------------------------------
    def tick(self) -> bool:
        """One pass; True when it changed something (so the loop goes round again at once)."""
        now = time.monotonic()
        if now - self._last_beat >= self.settings.heartbeat_seconds:
            worker_store.heartbeat(self.store, self.id, state="busy" if self.flights else "idle")
            self._last_beat = now
        if now - self._last_refresh >= 10 * self.settings.heartbeat_seconds:
            self.executor.refresh()
            self._last_refresh = now
        busy = self.flights.collect()
        if now - self._last_stale >= self.settings.heartbeat_seconds:
            busy |= self.flights.requeue_stale()
            busy |= self._fail_unservable()
            self._last_stale = now
        busy |= campaigns.advance_all(self.store)
        busy |= self._dispatch()
        self.refits.tick()
        return busy

    def _fail_unservable(self) -> bool:
        """Queued tasks whose device class no trainer serves fail after ``unservable_seconds``
        (none while the cluster has no trainer at all: it is starting, or its machines rejoin)."""
        if not self.executor.slots:
            return False
        devices = {s.device for s in self.executor.slots}
        failed = task_store.fail_unservable(self.store, devices, self.settings.unservable_seconds)
        if failed:
            log.warning("failed %d queued task(s) that no trainer of this cluster can serve", len(failed))
        return bool(failed)

    def _dispatch(self) -> bool:
        started = self.packer.pack([s for s in self.executor.slots if not s.busy])
        for slot, payload, studies in started:
            self.flights.launch(slot, payload, studies)
            self.batches_started += 1
        return bool(started)

    def run(self, until: Callable[[], bool] | None = None) -> None:
        """Tick until ``stop()`` (or ``until()`` is true)."""
        while not self._stopping.is_set():
            if until is not None and until():
                return
            try:
                busy = self.tick()
            except Exception:
                log.exception("dispatcher tick failed; retrying")
                busy = False
            if not busy:
                self._idle(self.settings.poll_seconds)

    def _idle(self, seconds: float) -> None:
        """Wait until a batch finishes, a task is submitted here (``wake``), or ``seconds`` pass;
        blocking in the executor keeps the loop off the CPU that trains."""
        if self.flights and not any(not s.busy for s in self.executor.slots):
            self.executor.wait(seconds)
        else:
            self.wake.wait(seconds)
            self.wake.clear()

    def start(self) -> Dispatcher:
        """Run the loop in a background thread."""
        self._thread = threading.Thread(target=self.run, name="metalic-dispatcher", daemon=True)
        self._thread.start()
        return self

    def request_stop(self) -> None:
        """Ask the loop to end (a signal handler's part; ``stop`` then drains and shuts down)."""
        self._stopping.set()
        self.wake.set()

    def stop(self, drain: float = 0.0, kill_workers: bool = True) -> None:
        """Stop dispatching. ``drain``: seconds to let running batches finish first. Batches still
        running then are left to the next dispatcher (requeued at its start)."""
        deadline = time.monotonic() + drain
        self.request_stop()
        if self._thread is not None:
            self._thread.join()
        while self.flights and time.monotonic() < deadline:
            self.flights.collect(timeout=min(0.5, max(deadline - time.monotonic(), 0)))
        if self.flights and kill_workers:
            self.flights.give_up("the dispatcher stopped")
        self.refits.shutdown()
        self.executor.shutdown(kill=kill_workers)
        worker_store.stop(self.store, self.id)

    def wait_idle(self, timeout: float = 120.0) -> None:
        """Block until no batch is in flight and no refit is running or due (the loop must be
        running in its thread)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.flights and self.refits.idle:
                return
            time.sleep(0.05)
        raise TimeoutError(f"dispatcher still busy after {timeout:g} s")
