"""Batches in flight: launched on an executor's slot, collected when they finish, given up when
their worker is lost or stops heartbeating. The store is told every outcome."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from metalic.settings import Settings
from metalic.store import tasks as task_store
from workers.batch import BatchPayload, BatchReport
from workers.executors import Slot

log = logging.getLogger(__name__)


@dataclass
class Flight:
    payload: BatchPayload
    slot: Slot
    studies: set[int] = field(default_factory=set)


class Flights:
    """The batches this dispatcher has in flight, by batch id. ``on_observed(study ids)`` hears of
    the studies whose trainings recorded observations."""

    def __init__(self, store, executor, settings: Settings, on_observed: Callable[[Iterable[int]], None]):
        self.store, self.executor, self.settings = store, executor, settings
        self.on_observed = on_observed
        self.by_batch: dict[int, Flight] = {}

    def __bool__(self) -> bool:
        return bool(self.by_batch)

    def launch(self, slot: Slot, payload: BatchPayload, studies: set[int]) -> None:
        self.by_batch[payload.batch_id] = Flight(payload, slot, studies)
        self.executor.submit(slot, payload)

    def collect(self, timeout: float = 0.0) -> bool:
        """Finished batches (True when any finished). The worker recorded its results already; a
        batch whose actor died has its tasks requeued (attempt + 1) or failed after
        ``max_attempts``. A flight leaves ``by_batch`` only once its batch row is final and its
        studies were reported, so that a dispatcher with nothing in flight has no running batch
        row and no refit it has not heard of."""
        finished = self.executor.poll(timeout)
        for _slot, payload, outcome in finished:
            flight = self.by_batch.get(payload.batch_id)
            if isinstance(outcome, BatchReport):
                task_store.finish_batch(self.store, payload.batch_id, "done", outcome.seconds)
                if outcome.recorded and flight is not None:
                    self.on_observed(flight.studies)
            else:
                log.warning("batch %s lost with its worker: %s", payload.batch_id, outcome)
                error = f"worker lost: {type(outcome).__name__}: {str(outcome)[:500]}"
                task_store.retry_or_fail(self.store, payload.items, error, self.settings.max_attempts)
                task_store.finish_batch(self.store, payload.batch_id, "lost")
            self.by_batch.pop(payload.batch_id, None)
        return bool(finished)

    def requeue_stale(self) -> bool:
        """Running tasks without a heartbeat for ``lease_seconds`` go back to the queue; their
        batches are lost and their slots restarted."""
        stale = task_store.stale_running(self.store, self.settings.lease_seconds)
        if not stale:
            return False
        task_store.retry_or_fail(
            self.store,
            [(t, a) for t, a, _ in stale],
            f"no heartbeat for {self.settings.lease_seconds:g} s",
            self.settings.max_attempts,
        )
        for batch_id in {b for _, _, b in stale if b is not None}:
            flight = self.by_batch.pop(batch_id, None)
            if flight is not None:
                self.executor.abandon(flight.slot)
            task_store.finish_batch(self.store, batch_id, "lost")
        return True

    def give_up(self, error: str) -> None:
        """The batches still in flight will not be collected: their tasks go back now rather than at
        the next dispatcher's start (the workers' late results are refused). A drain is the
        service's doing, not the tasks': it does not count against their attempts."""
        items = task_store.running_of_batches(self.store, self.by_batch)
        task_store.retry_or_fail(self.store, items, error, self.settings.max_attempts, counted=False)
        for b in self.by_batch:
            task_store.finish_batch(self.store, b, "lost")
        self.by_batch.clear()
