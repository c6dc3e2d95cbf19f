"""The Ray actor that trains batches on one device, warm between batches.

Defined as a plain class and wrapped with ``ray.remote`` by the executor, so that this module
imports where Ray is not installed. One actor per GPU (``num_gpus=1``) or per CPU worker; the
actor keeps its process (and so torch's compiled kernels and the reference-solution cache) alive
from one batch to the next.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)


class TrainerActor:
    def __init__(self, database_url: str, device: str, threads: int | None = None, settings: dict | None = None):
        import torch

        from metalic.settings import Settings, get_settings, resolve_device
        from metalic.store import Store
        from metalic.store import workers as worker_store

        if threads:
            torch.set_num_threads(threads)
        # The dispatcher's settings (heartbeat and progress rates, attempts), not this node's env.
        self.settings = Settings(**settings) if settings else get_settings()
        self.device = str(resolve_device(device))
        self.store = Store(database_url)
        label = self.device
        if self.device.startswith("cuda"):
            label = f"{self.device} ({torch.cuda.get_device_name(torch.device(self.device))})"
        self.worker_id = worker_store.register(self.store, worker_store.TRAINER, label)
        from workers.batch import keep_alive

        self._stop = threading.Event()
        keep_alive(self.store, self.worker_id, self.settings.heartbeat_seconds, self._stop)

    def info(self) -> dict:
        return {"pid": os.getpid(), "worker_id": self.worker_id, "device": self.device}

    def run(self, payload):
        from workers.batch import run_batch

        return run_batch(self.store, payload, device=self.device, worker_id=self.worker_id, settings=self.settings)

    def stop(self) -> None:
        from metalic.store import workers as worker_store

        self._stop.set()
        worker_store.stop(self.store, self.worker_id)
