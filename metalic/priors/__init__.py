"""Shipped priors: what the project's own campaigns learned of each family, for new studies.

A prior file ``<family>-<mode>-v<version>.json`` holds an engine snapshot with its observations
(the trainings of the campaign that built it) and its provenance: the command, the commit, the
budget profile(s), the number of trainings, the seeds and the date. ``metalic prior build``
writes one (``metalic.priors.build``). A new study records the prior it starts from
(``StudyRow.prior``, e.g. ``burgers-single-v1``); its engine then stacks its own GP on the
prior's (``metalic.bandit.transfer``), and a snapshot names the prior, so a restore uses the same
one even after a newer version is installed.

Files are looked up in ``METALIC_PRIOR_PATH``'s folders, then in this package's ``data/``.
``METALIC_PRIORS=off`` starts every new study from nothing (studies that recorded a prior keep it).
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT = "metalic-prior/1"
PACKAGE_DIR = Path(__file__).resolve().parent / "data"
_NAME = re.compile(r"^(?P<family>[a-z0-9_]+)-(?P<mode>single|sequential)-v(?P<version>[0-9]+)\.json$")


@dataclass(frozen=True, eq=False)
class Prior:
    """One prior file: ``snapshot`` (an engine's, with its observations) and ``provenance``.
    ``metalic.bandit.engine.prior_engine`` conditions an engine on it (once per prior)."""

    family: str
    mode: str
    version: int
    provenance: dict[str, Any]
    snapshot: dict[str, Any]
    path: Path

    @property
    def ref(self) -> str:
        """How a study and a snapshot name it: ``burgers-single-v1``."""
        return f"{self.family}-{self.mode}-v{self.version}"

    @property
    def trainings(self) -> int:
        return int(self.snapshot.get("observation_count", len(self.snapshot.get("observations") or [])))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "family": self.family,
            "mode": self.mode,
            "version": self.version,
            "provenance": self.provenance,
            "engine": self.snapshot,
        }


def enabled() -> bool:
    from metalic.settings import get_settings

    return get_settings().priors == "on"  # the settings accept 'on' and 'off' only


def search_path() -> list[Path]:
    from metalic.settings import get_settings

    extra = [Path(p) for p in get_settings().prior_path.split(os.pathsep) if p.strip()]
    return [*extra, PACKAGE_DIR]


def read(path: Path) -> Prior:
    """A prior file; ValueError when it is not one (or its name disagrees with its content)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"prior {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"prior {path}: not a {FORMAT} file")
    prior = Prior(data["family"], data["mode"], int(data["version"]), data["provenance"], data["engine"], Path(path))
    if Path(path).name != f"{prior.ref}.json":
        raise ValueError(f"prior {path}: its content is {prior.ref}, its name must be {prior.ref}.json")
    return prior


_cache: dict[Path, Prior] = {}
_lock = threading.Lock()


def _cached(path: Path) -> Prior:
    with _lock:
        if path not in _cache:
            _cache[path] = read(path)
        return _cache[path]


def installed(family: str | None = None, mode: str | None = None, folders: list[Path] | None = None) -> dict[str, Path]:
    """Prior files found in ``folders`` (default: the search path), ref -> path (an earlier
    folder wins)."""
    out: dict[str, Path] = {}
    for folder in reversed(search_path() if folders is None else folders):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.json")):
            m = _NAME.match(path.name)
            if m and (family is None or m["family"] == family) and (mode is None or m["mode"] == mode):
                out[path.stem] = path
    return out


def load(ref: str) -> Prior:
    """The prior a study or snapshot names; ValueError when it is not installed."""
    path = installed().get(ref)
    if path is None:
        raise ValueError(f"prior {ref!r} is not installed (search path: {', '.join(map(str, search_path()))})")
    return _cached(path)


def newest(family: str, mode: str, folders: list[Path] | None = None) -> str | None:
    """The name of the newest installed prior of (family, mode), whether priors are on or not."""
    found = installed(family, mode, folders)
    return max(found, key=lambda ref: int(_NAME.match(f"{ref}.json")["version"]), default=None)


BUDGET_KEYS = ("adam", "lbfgs", "collocation")  # what "the nearest budget" compares, in log(1 + n)


def budget_distance(profile: Mapping[str, Any], wanted: Mapping[str, Any]) -> float:
    """Sum over ``wanted``'s keys of |log(1 + n) - log(1 + n')| (iterations, points); None in
    ``wanted`` is not compared."""
    return sum(abs(math.log1p(v) - math.log1p(profile.get(k) or 0)) for k, v in wanted.items() if v is not None)


def for_budget(family: str, mode: str, profile: Mapping[str, Any], folders: list[Path] | None = None) -> Prior | None:
    """The installed prior of (family, mode) built at the budget nearest to ``profile``'s
    (``BUDGET_KEYS``; a prior of several profiles counts its nearest), the newest among equals;
    None when there is none or ``METALIC_PRIORS=off``. ``folders``: look only there (e.g.
    ``[PACKAGE_DIR]``, what the package ships), not in the search path."""
    if not enabled():
        return None
    wanted = {k: profile.get(k) for k in BUDGET_KEYS}

    def rank(prior: Prior) -> tuple[float, int]:
        built = prior.provenance.get("profiles") or [{}]
        return min(budget_distance(p, wanted) for p in built), -prior.version

    return min((_cached(path) for path in installed(family, mode, folders).values()), key=rank, default=None)
