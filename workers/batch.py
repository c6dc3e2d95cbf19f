"""A worker's batch function: train one batch of tasks and record each result in the store.

No Ray here: the Ray actor (``workers.actor``) and the in-process executor both call ``run_batch``,
and a GPU benchmark can call it directly. While the batch trains, progress is written at most
every ``progress_seconds`` (each write also says which tasks were cancelled or requeued, and those
runs stop at the next progress point), and a background thread keeps the tasks' heartbeats fresh
even while nothing reports progress (compiling, evaluating).
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from dataclasses import dataclass, field

from metalic.bandit.engine import BanditEngine
from metalic.jobs import Run, run_solve_batch
from metalic.pinn.trainer import Progress
from metalic.settings import Settings, get_settings, resolve_device
from metalic.store import tasks as task_store
from metalic.store import workers as worker_store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DispatchedTask:
    """A task as dispatched: which attempt this is, and its run (arms decided; a learned L-BFGS
    arm names its study's engine as ``run.chooser``)."""

    task_id: int
    attempt: int
    run: Run


@dataclass
class BatchPayload:
    """What a worker needs to train a batch: the tasks and, for learned L-BFGS arms, the engine
    snapshots (with observations) of their studies, keyed by ``Run.chooser``."""

    batch_id: int
    tasks: list[DispatchedTask]
    engines: dict[str, dict] = field(default_factory=dict)
    compile: bool | None = None

    @property
    def items(self) -> list[tuple[int, int]]:
        return [(t.task_id, t.attempt) for t in self.tasks]


@dataclass
class BatchReport:
    batch_id: int
    worker_id: str | None
    recorded: list[int] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)  # finished, but the task had moved on
    requeued: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0


class _Reporter:
    """Bounded-rate progress writes; remembers which runs must stop."""

    def __init__(self, store, payload: BatchPayload, every_seconds: float):
        self.store, self.payload, self.every = store, payload, every_seconds
        self.last = 0.0
        self.stopped: set[int] = set()  # run indices

    def progress(self, p: Progress) -> None:
        now = time.monotonic()
        if now - self.last < self.every and p.iteration < p.total:
            return
        self.last = now
        runs = p.runs if p.runs is not None else range(len(p.loss))
        tasks = self.payload.tasks
        items = [
            task_store.ProgressItem(tasks[j].task_id, tasks[j].attempt, p.phase, p.iteration, p.total, float(loss))
            for j, loss in zip(runs, p.loss, strict=True)
            if j not in self.stopped
        ]
        gone = task_store.write_progress(self.store, items)
        self.stopped |= {j for j, t in enumerate(self.payload.tasks) if t.task_id in gone}

    def should_stop(self) -> set[int]:
        return self.stopped

    def live_items(self) -> list[tuple[int, int]]:
        return [(t.task_id, t.attempt) for j, t in enumerate(self.payload.tasks) if j not in self.stopped]


def _heartbeats(store, reporter: _Reporter, worker_id: str | None, batch_id: int, every: float, done: threading.Event):
    """Beat at once (the worker shows busy from its batch's start), then every ``every`` seconds."""
    while True:
        try:
            task_store.heartbeat_tasks(store, reporter.live_items())
            if worker_id is not None:
                worker_store.heartbeat(store, worker_id, state="busy", current_batch=batch_id)
        except Exception:  # a missed heartbeat is retried; the lease is many periods long
            log.exception("heartbeat failed")
        if done.wait(every):
            return


def keep_alive(store, worker_id: str, every: float, stop: threading.Event) -> threading.Thread:
    """A trainer beats while idle too (``last_seen``; its state is left to ``run_batch``), so that a
    live trainer between batches never looks dead. Ends when ``stop`` is set."""

    def beat() -> None:
        while not stop.wait(every):
            try:
                worker_store.heartbeat(store, worker_id)
            except Exception:  # the next beat tries again
                log.exception("idle heartbeat failed")

    thread = threading.Thread(target=beat, name="metalic-idle-heartbeat", daemon=True)
    thread.start()
    return thread


def worker_compile(requested: bool | None, device: str | None, setting: str = "auto") -> bool | None:
    """Whether a worker compiles a batch's loss: as the payload says, else as the ``compile`` setting
    says (``on`` / ``off``), else always on an accelerator (a worker lives long: one compile per
    batch shape class, padded, serves every later batch of it), else the training budget's rule
    (``TrainConfig.use_compile``: a CPU compile costs 15-90 s)."""
    if requested is not None:
        return requested
    if setting != "auto":
        return setting == "on"
    return True if resolve_device(device).type != "cpu" else None


def run_batch(
    store,
    payload: BatchPayload,
    device: str | None = None,
    worker_id: str | None = None,
    settings: Settings | None = None,
) -> BatchReport:
    """Train the batch and record every task's outcome (see the module docstring)."""
    settings = settings or get_settings()
    report = BatchReport(payload.batch_id, worker_id)
    start = time.perf_counter()
    reporter = _Reporter(store, payload, settings.progress_seconds)
    done = threading.Event()
    beat = threading.Thread(
        target=_heartbeats,
        args=(store, reporter, worker_id, payload.batch_id, settings.heartbeat_seconds, done),
        daemon=True,
    )
    beat.start()
    try:
        engines = {k: BanditEngine.from_snapshot(v) for k, v in payload.engines.items()}
        results = run_solve_batch(
            [t.run for t in payload.tasks],
            device=device,
            progress=reporter.progress,
            should_stop=reporter.should_stop,
            choosers=engines,
            compile=worker_compile(payload.compile, device, settings.compile),
        )
    except Exception as exc:
        report.error = f"{type(exc).__name__}: {exc}"
        log.error("batch %s failed: %s", payload.batch_id, traceback.format_exc())
        moved = task_store.retry_or_fail(
            store, payload.items, report.error, settings.max_attempts, solo=len(payload.tasks) > 1
        )
        report.requeued, report.failed = moved["requeued"], moved["failed"]
        return report
    finally:
        done.set()
        beat.join()
        report.seconds = time.perf_counter() - start
        if worker_id is not None:
            worker_store.heartbeat(store, worker_id, state="idle", current_batch=None)
    for spec, result in zip(payload.tasks, results, strict=True):
        if task_store.record_result(store, spec.task_id, spec.attempt, result):
            report.recorded.append(spec.task_id)
        else:
            report.refused.append(spec.task_id)
    return report
