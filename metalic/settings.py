"""One typed settings object, read from environment variables with the ``METALIC_`` prefix.

Library settings (device, dtype), the service's store and cluster (database URL, Ray address),
the dispatcher's batching and retry rules, and the caps that bound what one request may ask.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Process-wide settings (each field is also ``METALIC_<FIELD>`` in the environment).

    ``device``: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
    ``dtype``: floating type of network weights and points, ``float32`` or ``float64``.
    ``home``: folder of the embedded store (``metalic.db``) and caches.
    ``database_url``: SQLAlchemy URL; empty = SQLite file ``home/metalic.db``. PostgreSQL:
    ``postgresql+psycopg://user@host:5432/db``.
    ``ray_address``: empty = start a local Ray; else join that cluster (``host:6379`` or ``auto``).
    """

    model_config = SettingsConfigDict(env_prefix="METALIC_")

    device: str = "auto"
    dtype: str = "float32"
    home: Path = Path(".metalic")
    database_url: str = ""
    ray_address: str = ""
    reference_cache: str = Field(
        "", description="folder of reference grids kept on disk; empty = home/cache/references, 'off' = none"
    )
    priors: Literal["on", "off"] = Field(
        "on",
        description="'on': a new study starts from its family's installed prior (metalic.priors); 'off': from nothing",
    )
    prior_path: str = Field(
        "", description="more folders of prior files (os.pathsep-separated), searched before the installed ones"
    )
    tune_heap: bool = Field(True, description="keep freed training buffers in the heap (glibc; pinn/heap.py)")
    compile: Literal["auto", "on", "off"] = Field(
        "auto",
        description="torch.compile a batch's loss on the workers: 'auto' = always on an accelerator, on a CPU for "
        "budgets of 4000+ iterations (a CPU compile costs 15-90 s); 'on'; 'off' (a solve's --compile wins in the CLI)",
    )

    # dispatcher
    max_batch_cpu: int = Field(8, ge=1, description="runs packed into one CPU training")
    max_batch_gpu: int = Field(256, ge=1, description="runs packed into one GPU training")
    max_attempts: int = Field(3, ge=1, description="tries of a task before it fails")
    cpu_workers: int = Field(1, ge=0, description="CPU trainer actors when the cluster has no GPU")
    poll_seconds: float = Field(0.25, gt=0, description="dispatcher loop period when idle")
    heartbeat_seconds: float = Field(2.0, gt=0, description="worker and task heartbeat period")
    lease_seconds: float = Field(60.0, gt=0, description="a running task without heartbeat this long is requeued")
    progress_seconds: float = Field(0.5, gt=0, description="at most one progress write per batch this often")
    batch_window_seconds: float = Field(
        0.3, ge=0, description="a batch that is not full waits until its oldest task is this old (tasks sent together)"
    )
    unservable_seconds: float = Field(
        300.0, gt=0, description="a queued task whose device class no trainer serves fails after this long"
    )
    max_queued_per_user: int = Field(1000, ge=1, description="queued and running tasks one user may have")

    # caps on one request
    max_adam_iters: int = Field(50_000, ge=0)
    max_lbfgs_iters: int = Field(50_000, ge=0)
    max_collocation: int = Field(20_000, ge=1, description="collocation points per subdomain")
    max_boundary: int = Field(5_000, ge=1, description="boundary / initial points per subdomain")
    max_interface_points: int = Field(5_000, ge=2)
    max_subdomains: int = Field(32, ge=1, description="subdomains of a split (a marching KdV solve uses 20)")
    max_request_cost: float = Field(
        1e9, gt=0, description="largest (adam + lbfgs) x (collocation + boundary) x subdomains of one request"
    )
    max_predict_points: int = Field(100_000, ge=1)
    max_body_bytes: int = Field(1_000_000, ge=1_000, description="largest HTTP request body")
    max_page: int = Field(100, ge=1, description="largest page of a list endpoint")

    # API
    token_cache_seconds: float = Field(2.0, ge=0, description="a revoked token stops working within this")
    snapshot_check_seconds: float = Field(
        0.5, ge=0, description="recommendations look for a newer policy snapshot at most this often"
    )
    drain_seconds: float = Field(30.0, ge=0, description="on shutdown, running batches get this long to finish")

    # Dashboard
    secret_key: str | None = Field(
        None, description="signs the dashboard's session cookies; empty = a random key kept in home/secret-key"
    )
    session_hours: float = Field(8.0, gt=0, description="a dashboard login lasts this long")
    cookie_secure: bool = Field(False, description="send the session cookie over HTTPS only (behind TLS)")
    dashboard_poll_seconds: float = Field(2.0, gt=0, description="open dashboard pages ask for changes this often")
    dashboard_cache_seconds: float = Field(
        10.0, ge=0, description="the overview's and a study's chart data may be this old (shared by open tabs)"
    )

    def reference_cache_dir(self) -> Path | None:
        if self.reference_cache.strip().lower() == "off":
            return None
        return Path(self.reference_cache) if self.reference_cache.strip() else self.home / "cache" / "references"

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'metalic.db').resolve()}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def resolve_device(name: str | None = None) -> torch.device:
    """``cuda`` if available else ``cpu``; an explicit name (or METALIC_DEVICE) overrides.

    An explicit CUDA index must name a device that exists on this machine.
    """
    choice = name or get_settings().device
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(choice)
    except RuntimeError:
        raise ValueError(f"device {choice!r} is not a device name (auto, cpu, cuda, cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {choice!r}: only cpu and cuda are supported")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {choice!r} requested but CUDA is not available on this machine")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {choice!r} does not exist: this machine has {count} CUDA device(s)")
    return device


def resolve_dtype(name: str | None = None) -> torch.dtype:
    choice = name or get_settings().dtype
    table = {"float32": torch.float32, "float64": torch.float64}
    if choice not in table:
        raise ValueError(f"dtype must be one of {sorted(table)}, got {choice!r}")
    return table[choice]
