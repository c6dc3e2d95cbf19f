"""Where batches run: Ray actors (the service's way) or a thread of this process (no Ray).

An executor holds slots, one per trainer (a GPU, or a CPU worker); the dispatcher gives a free
slot one batch at a time and polls for finished ones. A slot's failure (the actor died) comes back
as an exception in place of the batch report, and the dispatcher requeues that batch's tasks.
"""

from __future__ import annotations

import contextlib
import logging
import os
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass
from typing import Any

from workers.batch import BatchPayload, BatchReport, run_batch

log = logging.getLogger(__name__)


@dataclass
class Slot:
    name: str
    device: str  # "cpu" or "cuda"
    max_batch: int
    handle: Any = None
    worker_id: str | None = None
    batch_id: int | None = None  # the batch it is training
    ping: Any = None  # after a crash: a pending call that returns once the trainer is back

    @property
    def busy(self) -> bool:
        return self.batch_id is not None or self.ping is not None

    def accepts(self, device_class: str) -> bool:
        return device_class in ("auto", self.device)


Finished = tuple[Slot, BatchPayload, "BatchReport | BaseException"]


class RayExecutor:
    """One ``TrainerActor`` per GPU of the Ray cluster (``num_gpus=1``), or ``cpu_workers`` CPU
    actors when it has none. GPUs that join later get actors at the next ``refresh``. ``device``:
    ``auto`` (as said), ``cpu`` (CPU actors only) or ``cuda`` (GPU actors only, as GPUs join).

    Actors restart after a crash (``max_restarts``); the call that was running fails with a
    ``RayActorError``, reported by ``poll`` as that batch's outcome.
    """

    def __init__(
        self,
        database_url: str,
        settings,
        max_batch: int | None = None,
        cpu_workers: int | None = None,
        device: str = "auto",
    ):
        import ray

        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
        self.ray = ray
        self.url, self.settings = database_url, settings
        self.max_batch = max_batch
        self.device = device
        self.cpu_workers = settings.cpu_workers if cpu_workers is None else cpu_workers
        self.slots: list[Slot] = []
        self._refs: dict[Any, tuple[Slot, BatchPayload]] = {}
        self.refresh()

    def _env(self) -> dict:
        return {"env_vars": {k: v for k, v in os.environ.items() if k.startswith("METALIC_")}}

    def _add(self, device: str) -> None:
        from workers.actor import TrainerActor

        opts: dict[str, Any] = {"max_restarts": 10, "max_task_retries": 0, "num_cpus": 1, "runtime_env": self._env()}
        threads = None
        if device == "cuda":
            opts["num_gpus"] = 1
            limit = self.max_batch or self.settings.max_batch_gpu
        else:
            threads = max(1, (os.cpu_count() or 1) // max(self.cpu_workers, 1))
            limit = self.max_batch or self.settings.max_batch_cpu
        settings = self.settings.model_dump(mode="json")
        actor = self.ray.remote(TrainerActor).options(**opts).remote(self.url, device, threads, settings)
        info = self.ray.get(actor.info.remote(), timeout=300)
        slot = Slot(f"{device}-{len(self.slots)}", device, limit, actor, info["worker_id"])
        self.slots.append(slot)
        log.info("trainer %s ready (pid %s, %s)", slot.name, info["pid"], info["device"])

    def refresh(self) -> None:
        """Actors for GPUs that joined the cluster since the last call."""
        gpus = int(self.ray.cluster_resources().get("GPU", 0)) if self.device != "cpu" else 0
        have = sum(s.device == "cuda" for s in self.slots)
        for _ in range(gpus - have):
            self._add("cuda")
        if gpus == 0 and self.device != "cuda" and not self.slots:
            for _ in range(self.cpu_workers):
                self._add("cpu")

    def submit(self, slot: Slot, payload: BatchPayload) -> None:
        ref = slot.handle.run.remote(payload)
        self._refs[ref] = (slot, payload)
        slot.batch_id = payload.batch_id

    def poll(self, timeout: float = 0.0) -> list[Finished]:
        self._check_pings()
        if not self._refs:
            return []
        ready, _ = self.ray.wait(list(self._refs), num_returns=len(self._refs), timeout=timeout)
        out = []
        for ref in ready:
            slot, payload = self._refs.pop(ref)
            slot.batch_id = None
            try:
                outcome: BatchReport | BaseException = self.ray.get(ref)
            except Exception as exc:  # RayActorError and kin: the actor died with the batch
                outcome = exc
                slot.worker_id = None
                slot.ping = slot.handle.info.remote()  # no new batch until it is back
            out.append((slot, payload, outcome))
        return out

    def wait(self, timeout: float) -> None:
        """Block until one running batch finishes (not collected) or ``timeout`` passes."""
        if self._refs:
            self.ray.wait(list(self._refs), num_returns=1, timeout=timeout)

    def _check_pings(self) -> None:
        """A restarting actor refuses calls; a slot takes batches again once its ping answers."""
        for slot in self.slots:
            if slot.ping is None:
                continue
            ready, _ = self.ray.wait([slot.ping], timeout=0)
            if not ready:
                continue
            try:
                slot.worker_id = self.ray.get(slot.ping)["worker_id"]
                slot.ping = None
                log.info("trainer %s is back", slot.name)
            except Exception:  # still restarting: ask again
                slot.ping = slot.handle.info.remote()

    def abandon(self, slot: Slot) -> None:
        """Forget the slot's batch and restart its actor (it stopped heartbeating)."""
        for ref, (s, _) in list(self._refs.items()):
            if s is slot:
                self._refs.pop(ref)
        slot.batch_id = None
        slot.worker_id = None
        self.ray.kill(slot.handle, no_restart=False)
        slot.ping = slot.handle.info.remote()

    def worker_id(self, slot: Slot) -> str | None:
        if slot.worker_id is None:
            try:
                slot.worker_id = self.ray.get(slot.handle.info.remote(), timeout=60)["worker_id"]
            except Exception:
                return None
        return slot.worker_id

    def shutdown(self, kill: bool = True) -> None:
        """Stop the actors (``kill=False`` leaves them to finish what they run)."""
        if not kill:
            return
        busy = [s.worker_id for s in self.slots if s.busy and s.worker_id]
        for slot in self.slots:
            if not slot.busy:  # an idle actor marks itself stopped; a busy one would answer too late
                with contextlib.suppress(Exception):
                    self.ray.get(slot.handle.stop.remote(), timeout=5)
            self.ray.kill(slot.handle, no_restart=True)
        self.slots = []
        if busy:
            from metalic.store import Store
            from metalic.store import workers as worker_store

            store = Store(self.url)
            for worker_id in busy:
                worker_store.stop(store, worker_id)
            store.dispose()


class InlineExecutor:
    """One slot training in a thread of this process: the service without Ray (a single machine
    that cannot install it, or a benchmark of the batch function through the whole store path)."""

    def __init__(self, store, settings, device: str = "auto", max_batch: int | None = None):
        from metalic.settings import resolve_device
        from metalic.store import workers as worker_store

        self.store, self.settings = store, settings
        dev = str(resolve_device(device))
        self.device = dev
        limit = max_batch or (settings.max_batch_gpu if dev.startswith("cuda") else settings.max_batch_cpu)
        worker_id = worker_store.register(store, worker_store.TRAINER, dev)
        self.slots = [Slot("inline-0", "cuda" if dev.startswith("cuda") else "cpu", limit, None, worker_id)]
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="metalic-trainer")
        self._futures: dict[Future, tuple[Slot, BatchPayload]] = {}

    def refresh(self) -> None:
        pass

    def submit(self, slot: Slot, payload: BatchPayload) -> None:
        future = self._pool.submit(run_batch, self.store, payload, self.device, slot.worker_id, self.settings)
        self._futures[future] = (slot, payload)
        slot.batch_id = payload.batch_id

    def poll(self, timeout: float = 0.0) -> list[Finished]:
        out = []
        for future in [f for f in self._futures if f.done()]:
            slot, payload = self._futures.pop(future)
            slot.batch_id = None
            exc = future.exception()
            out.append((slot, payload, exc if exc is not None else future.result()))
        return out

    def wait(self, timeout: float) -> None:
        if self._futures:
            futures_wait(list(self._futures), timeout=timeout, return_when=FIRST_COMPLETED)

    def abandon(self, slot: Slot) -> None:
        for f, (s, _) in list(self._futures.items()):
            if s is slot:
                self._futures.pop(f)  # the thread cannot be stopped; its late writes are refused
        slot.batch_id = None

    def worker_id(self, slot: Slot) -> str | None:
        return slot.worker_id

    def shutdown(self, kill: bool = True) -> None:
        from metalic.store import workers as worker_store

        self._pool.shutdown(wait=not kill, cancel_futures=True)
        worker_store.stop(self.store, self.slots[0].worker_id)
