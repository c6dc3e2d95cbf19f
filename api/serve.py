"""``metalic serve``: migrate, start (or join) Ray, the dispatcher and the API, in one process.

On SIGINT / SIGTERM: the HTTP server stops accepting and finishes its requests (uvicorn's graceful
shutdown), the dispatcher stops dispatching, running batches get ``drain_seconds`` to finish, what
still runs then is requeued (its late results are refused), the trainers and Ray stop, and the
process exits 0. The next start picks up every queued task.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
import threading
from pathlib import Path

import uvicorn

import migrations
from api.app import create_app, tune_gc
from api.files import write_private
from api.service import Service
from metalic.settings import Settings, get_settings
from metalic.store import open_store
from metalic.store import tokens as token_store

log = logging.getLogger("metalic.serve")


class _Server(uvicorn.Server):
    """uvicorn's server, but a SIGINT / SIGTERM ends in a clean exit (status 0) once the shutdown
    has run, instead of re-raising the signal at the end."""

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class AdminTokenError(RuntimeError):
    """The first admin token could not be kept in its file (and so was not stored either)."""


def first_admin_token(store, settings: Settings) -> Path | None:
    """On the very first start (no token yet): create an admin token, print it once, and keep it in
    ``home/admin-token`` (readable by this user only). The file is written, atomically and with
    mode 0600 whatever a file there had, before the token's row is committed: if it cannot be
    written, no token is stored and AdminTokenError says why. Returns the file, or None."""
    if token_store.count(store) > 0:
        return None
    path = settings.home / "admin-token"

    def keep(token: str) -> None:
        try:
            write_private(path, token + "\n")
        except OSError as exc:
            raise AdminTokenError(f"cannot write the admin token to {path}: {exc.strerror or exc}") from None

    token, _ = token_store.create(store, "admin", "admin", before_commit=keep)
    print(f"admin token (shown once, also stored in {path}):\n  {token}", file=sys.stderr, flush=True)
    return path


def _run_trainers(
    service: Service, device: str, max_batch: int | None, ray_address: str | None, shutdown: threading.Event
) -> None:
    """Connect Ray, create the trainer actors, run the dispatcher until ``shutdown``, then drain
    and stop them. One thread does all of it, in the background so that the API answers while Ray
    starts (/readyz says when it is up), and it lives as long as Ray: Ray ties the processes it
    starts to the thread that started them."""
    from workers.cluster import connect, disconnect
    from workers.dispatcher import Dispatcher
    from workers.executors import RayExecutor

    try:
        connect(ray_address or None)
        executor = RayExecutor(service.store.url, service.settings, max_batch, device=device)
        service.dispatcher = Dispatcher(service.store, executor, service.settings, max_batch).start()
        log.info("dispatcher %s running on %d trainer(s)", service.dispatcher.id, len(executor.slots))
    except Exception as exc:
        service.dispatcher_error = trainers_failed(exc)
        log.exception("could not start the trainers")
    shutdown.wait()
    if service.dispatcher is not None:
        log.info("draining running batches (up to %g s)", service.settings.drain_seconds)
        service.dispatcher.stop(drain=service.settings.drain_seconds)
    disconnect()


def trainers_failed(exc: Exception) -> str:
    """What /readyz says of trainers that could not start: a fixed phrase, never the exception's
    text (it may name hosts, pids or URLs; the server's log has it)."""
    from metalic.store.workers import AnotherDispatcher

    if isinstance(exc, AnotherDispatcher):
        return "another dispatcher is running on this store"
    return "the trainers could not start (the server's log says why)"


def _ray_head(port: int) -> str:
    """Start a Ray head node that other machines can join (``metalic worker --address``)."""
    from workers.cluster import ray_command

    ray_cli = ray_command()
    if ray_cli is None:
        raise RuntimeError("the ray command is not installed")
    import torch

    gpus = torch.cuda.device_count()
    subprocess.run(
        [
            ray_cli,
            "start",
            "--head",
            f"--port={port}",
            f"--num-gpus={gpus}",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        check=True,
    )
    return f"127.0.0.1:{port}"


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int | None = None,
    device: str = "auto",
    max_batch: int | None = None,
    ray_head: int | None = None,
) -> int:
    settings = get_settings()
    if workers is not None:
        settings = settings.model_copy(update={"cpu_workers": workers})
    store = open_store()
    migrations.upgrade(store)
    first_admin_token(store, settings)
    service = Service(settings, store)
    service.started = True
    address = _ray_head(ray_head) if ray_head else settings.ray_address
    shutdown = threading.Event()
    trainers = threading.Thread(
        target=_run_trainers, args=(service, device, max_batch, address, shutdown), name="metalic-trainers"
    )
    trainers.start()

    def stop_trainers() -> None:  # the app's shutdown: HTTP has stopped, in-flight requests are answered
        shutdown.set()
        trainers.join()

    service.on_shutdown = stop_trainers
    app = create_app(service)
    tune_gc()
    server = _Server(uvicorn.Config(app, host=host, port=port, log_level="info"))
    print(f"metalic serving on http://{host}:{port} (docs at /docs)", file=sys.stderr, flush=True)
    try:
        server.run()  # returns after SIGINT / SIGTERM
    finally:
        stop_trainers()  # (already done by the app's shutdown, unless the server failed to start)
    if ray_head:
        from workers.cluster import ray_command

        subprocess.run([ray_command() or "ray", "stop"], check=False)
    store.dispose()
    log.info("stopped")
    return 0
