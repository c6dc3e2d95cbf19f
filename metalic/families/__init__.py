"""The registry of parametric PDE families. Adding a family: one module with a ``FAMILY``, one line here."""

from __future__ import annotations

from metalic.families import advection, burgers, heat, kdv, poisson, reaction
from metalic.families.base import Family, Param, ReferenceGrid

FAMILIES: dict[str, Family] = {m.FAMILY.name: m.FAMILY for m in (poisson, heat, advection, reaction, burgers, kdv)}


def get_family(name: str) -> Family:
    """The family called ``name``; ValueError listing the known names otherwise."""
    try:
        return FAMILIES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown family {name!r} (known: {', '.join(FAMILIES)})") from None


__all__ = ["FAMILIES", "Family", "Param", "ReferenceGrid", "get_family"]
