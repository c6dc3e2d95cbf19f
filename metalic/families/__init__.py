"""The registry of parametric PDE families. Adding a family: one module with a ``FAMILY``, one line here.

Families can also come from outside the package: ``METALIC_PLUGINS`` names importable modules
(comma-separated), each with a ``FAMILY`` (or a ``FAMILIES`` list); they are registered at import,
in every process (workers included) that has the variable.
"""

from __future__ import annotations

import importlib
import os

from metalic.families import advection, burgers, heat, kdv, poisson, reaction, references
from metalic.families.base import Family, Param
from metalic.families.references import ReferenceGrid

FAMILIES: dict[str, Family] = {m.FAMILY.name: m.FAMILY for m in (poisson, heat, advection, reaction, burgers, kdv)}
BUILTIN: tuple[str, ...] = tuple(FAMILIES)  # the six benchmark families (plugins come after)


def register(family: Family) -> None:
    """Add a family to the registry (its name must be new)."""
    if family.name in FAMILIES and FAMILIES[family.name] is not family:
        raise ValueError(f"family {family.name!r} is already registered")
    FAMILIES[family.name] = family


def _load_plugins(spec: str) -> None:
    for name in filter(None, (n.strip() for n in spec.split(","))):
        module = importlib.import_module(name)
        for family in getattr(module, "FAMILIES", None) or [module.FAMILY]:
            register(family)


def _registered(family: Family) -> bool:
    return FAMILIES.get(family.name) is family


references.is_registered = _registered  # registered families' grids go to the disk cache


def get_family(name: str) -> Family:
    """The family called ``name``; ValueError listing the known names otherwise."""
    try:
        return FAMILIES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown family {name!r} (known: {', '.join(FAMILIES)})") from None


_load_plugins(os.environ.get("METALIC_PLUGINS", ""))

__all__ = ["BUILTIN", "FAMILIES", "Family", "Param", "ReferenceGrid", "get_family", "register"]
