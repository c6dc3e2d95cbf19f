"""Where batches run: Ray actors (the service's way) or a thread of this process (no Ray).

An executor holds slots, one per trainer (a GPU, or a CPU worker); the dispatcher gives a free
slot one batch at a time and polls for finished ones. A slot's failure (the actor died) comes back
as an exception in place of the batch report, and the dispatcher requeues that batch's tasks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass
from typing import Any

from workers.batch import BatchPayload, BatchReport, keep_alive, run_batch

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
    ping_after: float = 0.0  # monotonic time before which a failed ping is not asked again

    @property
    def busy(self) -> bool:
        return self.batch_id is not None or self.ping is not None

    def accepts(self, device_class: str) -> bool:
        return device_class in ("auto", self.device)


Finished = tuple[Slot, BatchPayload, "BatchReport | BaseException"]


PING_SECONDS = 2.0
JOINED_CPU = "metalic_cpu_trainer"  # the Ray resource a CPU machine offers with `metalic worker --cpus N`


class RayExecutor:
    """One ``TrainerActor`` per GPU of the Ray cluster (``num_gpus=1``), ``cpu_workers`` CPU actors
    on this machine when it has none, and one CPU actor on each CPU machine that joined with
    ``metalic worker --cpus N`` (it offers the ``metalic_cpu_trainer`` resource; the actor trains
    with that machine's threads). Machines that join later get actors at the next ``refresh``.
    ``device``: ``auto`` (as said), ``cpu`` (CPU actors only) or ``cuda`` (GPU actors only).

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

    def _launch(self, device: str, joined: bool = False) -> tuple[Any, str, str, int]:
        """Start one trainer actor; returns (its handle, device, kind, batch limit) without waiting
        for it (a trainer's process takes seconds to import torch: several start side by side)."""
        from workers.actor import TrainerActor

        opts: dict[str, Any] = {"max_restarts": 10, "max_task_retries": 0, "num_cpus": 1, "runtime_env": self._env()}
        threads = None  # a joined CPU machine's trainer uses that machine's threads
        if device == "cuda":
            opts["num_gpus"] = 1
            limit = self.max_batch or self.settings.max_batch_gpu
        else:
            if joined:
                opts["resources"] = {JOINED_CPU: 1}
            else:
                threads = max(1, (os.cpu_count() or 1) // max(self.cpu_workers, 1))
            limit = self.max_batch or self.settings.max_batch_cpu
        settings = self.settings.model_dump(mode="json")
        actor = self.ray.remote(TrainerActor).options(**opts).remote(self.url, device, threads, settings)
        return actor, device, "joined-" if joined else "", limit

    def refresh(self) -> None:
        """Actors for the machines that joined the cluster since the last call (GPUs, and CPU
        machines offering ``metalic_cpu_trainer``), started side by side."""
        resources = self.ray.cluster_resources()
        gpus = int(resources.get("GPU", 0)) if self.device != "cpu" else 0
        launched = []
        if gpus == 0 and self.device != "cuda" and not any(s.name.startswith("cpu-") for s in self.slots):
            launched += [self._launch("cpu") for _ in range(self.cpu_workers)]
        launched += [self._launch("cuda") for _ in range(gpus - sum(s.device == "cuda" for s in self.slots))]
        joined = int(resources.get(JOINED_CPU, 0)) if self.device != "cuda" else 0
        self._drop_lost_machines(joined)
        have = sum(s.name.startswith("joined-") for s in self.slots)
        launched += [self._launch("cpu", joined=True) for _ in range(joined - have)]
        infos = self.ray.get([actor.info.remote() for actor, *_ in launched], timeout=300)
        for (actor, device, kind, limit), info in zip(launched, infos, strict=True):
            slot = Slot(f"{kind}{device}-{len(self.slots)}", device, limit, actor, info["worker_id"])
            self.slots.append(slot)
            log.info("trainer %s ready (pid %s, %s)", slot.name, info["pid"], info["device"])

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
        """A restarting actor refuses calls; a slot takes batches again once its ping answers. A
        ping that failed is sent again at most every ``PING_SECONDS``."""
        now = time.monotonic()
        for slot in self.slots:
            if slot.ping is None or now < slot.ping_after:
                continue
            try:
                ready, _ = self.ray.wait([slot.ping], timeout=0)
                if not ready:
                    continue
                slot.worker_id = self.ray.get(slot.ping)["worker_id"]
                slot.ping = None
                log.info("trainer %s is back", slot.name)
            except Exception:  # still restarting, or its machine is gone: ask again later
                slot.ping = slot.handle.info.remote()
                slot.ping_after = now + PING_SECONDS

    def _drop_lost_machines(self, joined: int) -> None:
        """Joined CPU trainers whose machine left (fewer ``metalic_cpu_trainer`` resources than
        joined trainers, the lost ones waiting for a restart that cannot come): stopped and
        forgotten, so that a machine joining again gets a trainer of its own."""
        lost = [s for s in self.slots if s.name.startswith("joined-") and s.ping is not None and s.batch_id is None]
        extra = sum(s.name.startswith("joined-") for s in self.slots) - joined
        for slot in lost[: max(extra, 0)]:
            with contextlib.suppress(Exception):
                self.ray.kill(slot.handle, no_restart=True)
            self.slots.remove(slot)
            log.info("trainer %s left with its machine", slot.name)

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
        self._alive = threading.Event()
        keep_alive(store, worker_id, settings.heartbeat_seconds, self._alive)
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

        self._alive.set()
        self._pool.shutdown(wait=not kill, cancel_futures=True)
        worker_store.stop(self.store, self.slots[0].worker_id)
