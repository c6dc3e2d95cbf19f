"""What machine a benchmark ran on, as one line; the stores and baseline trees benchmarks use."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch


def describe(device: torch.device) -> str:
    cpu = platform.processor() or "unknown cpu"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    threads = torch.get_num_threads()
    text = f"{cpu}, {os.cpu_count()} cores visible, torch {torch.__version__} using {threads} threads"
    if device.type == "cuda":
        text += f", GPU {torch.cuda.get_device_name(device)}"
    return f"{text}, device {device}"


PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@contextmanager
def benchmark_store(backend: str, name: str) -> Iterator[tuple[str, str]]:
    """(label, URL) of an empty store for a benchmark: a SQLite file in a temporary folder, or a
    fresh schema of the machine's PostgreSQL, dropped afterwards."""
    if backend == "sqlite":
        yield "SQLite", f"sqlite:///{tempfile.mkdtemp(prefix=f'metalic-{name}-')}/{name}.db"
        return
    import sqlalchemy

    schema = f"{name}_{os.getpid()}"
    engine = sqlalchemy.create_engine(PG)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield "PostgreSQL", f"{PG}?options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        engine.dispose()


@contextmanager
def baseline_tree(ref: str) -> Iterator[Path]:
    """An earlier commit of this repository checked out in a temporary git worktree (the same-run
    baseline of a speed benchmark), removed with its folder afterwards. Run it with
    ``PYTHONPATH`` set to it: the editable install points at this tree."""
    root = Path(__file__).resolve().parents[1]
    folder = Path(tempfile.mkdtemp(prefix="metalic-baseline-"))
    tree = folder / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), ref], cwd=root, check=True, capture_output=True)
    try:
        yield tree
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=root, capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
