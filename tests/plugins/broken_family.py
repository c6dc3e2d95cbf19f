"""A family whose reference solver always raises: a task of it fails on every attempt.

Everything else is Advection's, so requests validate and batches start normally; the error comes
from inside the worker, where a real solver could fail.
"""

from __future__ import annotations

from dataclasses import replace

from metalic.families import advection


def _reference(params):
    raise RuntimeError("reference solver exploded")


FAMILY = replace(advection.FAMILY, name="broken", reference=_reference, equation="advection whose reference fails")
