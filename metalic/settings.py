"""One typed settings object, read from environment variables with the ``METALIC_`` prefix."""

from __future__ import annotations

from functools import lru_cache

import torch
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Process-wide settings.

    ``device``: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
    ``dtype``: floating type of network weights and points, ``float32`` or ``float64``.
    """

    model_config = SettingsConfigDict(env_prefix="METALIC_")

    device: str = "auto"
    dtype: str = "float32"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def resolve_device(name: str | None = None) -> torch.device:
    """``cuda`` if available else ``cpu``; an explicit name (or METALIC_DEVICE) overrides."""
    choice = name or get_settings().device
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(choice)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {choice!r} requested but CUDA is not available on this machine")
    return device


def resolve_dtype(name: str | None = None) -> torch.dtype:
    choice = name or get_settings().dtype
    table = {"float32": torch.float32, "float64": torch.float64}
    if choice not in table:
        raise ValueError(f"dtype must be one of {sorted(table)}, got {choice!r}")
    return table[choice]
