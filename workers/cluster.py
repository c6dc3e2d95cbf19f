"""Joining Ray: the embedded single-machine default, or an existing cluster.

``connect(address)``: with no address, ``ray.init()`` starts a local Ray on this machine (its
CPUs, and its GPU if it has one); with one (``METALIC_RAY_ADDRESS``, e.g. ``10.0.0.5:6379``),
this process joins that cluster, where GPU machines have joined with ``metalic worker``.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def connect(address: str | None = None, num_cpus: int | None = None) -> str:
    """Connect this process to Ray once; returns the cluster's address.

    Ray's C++ failure-signal handler would end the process on SIGTERM before our graceful shutdown
    runs; it is switched off (before Ray is first imported) so that SIGTERM means "drain and stop".
    """
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    import ray

    if not ray.is_initialized():
        kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if address:
            ray.init(address=address, **kwargs)
        else:
            # "local": always a new Ray of this process's own, even where a `ray start` on this
            # machine (a joined worker) left its cluster's address behind for ray.init to find.
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), **kwargs)
    return ray.get_runtime_context().gcs_address


def disconnect() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def reachable() -> bool:
    """Whether this process is connected to a live Ray (the readiness probe)."""
    try:
        import ray

        return ray.is_initialized() and bool(ray.nodes())
    except Exception:
        return False


def ray_command() -> str | None:
    """The ``ray`` program of this Python's environment (beside the interpreter, where a virtual
    environment keeps it even when it is not on PATH), else the one on PATH."""
    import shutil
    import sys
    from pathlib import Path

    beside = Path(sys.executable).parent / "ray"
    return str(beside) if beside.exists() else shutil.which("ray")
