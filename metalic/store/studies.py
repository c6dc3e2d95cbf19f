"""Studies (one bandit each), their observations and their policy snapshots.

A service study's snapshot holds the engine without its observations (they are rows here); an
engine is restored from the latest snapshot and the most recent ``max_exact`` observations it
covered, which is all its GP conditions on. A campaign study's snapshot holds its observations
too (a campaign is small, and its learners also see the shared warm-up).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, load_only

from metalic.bandit.engine import BanditEngine
from metalic.bandit.engine import Observation as EngineObservation
from metalic.conditions import Arm
from metalic.jobs import SolveRequest
from metalic.store.models import Observation, PolicySnapshot, Study


def bits(arm: Arm | None) -> str | None:
    return None if arm is None else "".join(str(int(b)) for b in arm)


def arm_of_bits(text: str | None) -> Arm | None:
    return None if text is None else tuple(int(c) for c in text)


def study_key(family: str, mode: str, profile_key: str) -> str:
    return f"{family}/{mode}/{profile_key}"


def get_or_create_study(
    session: Session,
    *,
    key: str,
    family: str,
    mode: str,
    profile_key: str,
    profile: dict,
    policy: str = "ucb",
    campaign_id: int | None = None,
    heuristic: str | None = None,
) -> Study:
    """The study called ``key``, created if new (safe against a concurrent creator)."""
    found = session.scalar(select(Study).where(Study.key == key))
    if found is not None:
        return found
    values = {
        "key": key,
        "family": family,
        "mode": mode,
        "profile_key": profile_key,
        "profile": profile,
        "policy": policy,
        "campaign_id": campaign_id,
        "heuristic": heuristic,
    }
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    session.execute(insert(Study).values(**values).on_conflict_do_nothing(index_elements=["key"]))
    return session.scalar(select(Study).where(Study.key == key))


def study_for_request(session: Session, request: SolveRequest, policy: str = "ucb") -> Study:
    """The service study that learns from ``request``: its family, mode and budget profile."""
    key = study_key(request.family, request.mode, request.profile_key())
    return get_or_create_study(
        session,
        key=key,
        family=request.family,
        mode=request.mode,
        profile_key=request.profile_key(),
        profile=request.profile(),
        policy=policy,
    )


# ---- snapshots ------------------------------------------------------------------------------------
def latest_snapshot(session: Session, study_id: int) -> PolicySnapshot | None:
    return session.scalar(
        select(PolicySnapshot)
        .where(PolicySnapshot.study_id == study_id)
        .order_by(PolicySnapshot.version.desc())
        .limit(1)
    )


def latest_version(session: Session, study_id: int) -> int:
    """0 when the study has no snapshot yet."""
    v = session.scalar(select(func.max(PolicySnapshot.version)).where(PolicySnapshot.study_id == study_id))
    return int(v or 0)


def observation_counts(session: Session, study_ids: Sequence[int]) -> dict[int, int]:
    """Observations per study (one grouped count over the (study_id, id) index)."""
    if not study_ids:
        return {}
    rows = session.execute(
        select(Observation.study_id, func.count())
        .where(Observation.study_id.in_(study_ids))
        .group_by(Observation.study_id)
    ).all()
    return {study: int(n) for study, n in rows}


def latest_snapshots(
    session: Session, study_ids: Sequence[int], with_engine: bool = False
) -> dict[int, PolicySnapshot]:
    """Each study's latest snapshot, in one query; without ``with_engine`` the engine JSON (which
    a campaign study's snapshot fills with all its observations) is not read."""
    if not study_ids:
        return {}
    latest = (
        select(PolicySnapshot.study_id, func.max(PolicySnapshot.version).label("v"))
        .where(PolicySnapshot.study_id.in_(study_ids))
        .group_by(PolicySnapshot.study_id)
        .subquery()
    )
    q = select(PolicySnapshot).join(
        latest, (latest.c.study_id == PolicySnapshot.study_id) & (latest.c.v == PolicySnapshot.version)
    )
    if not with_engine:
        q = q.options(
            load_only(
                PolicySnapshot.study_id,
                PolicySnapshot.version,
                PolicySnapshot.observation_count,
                PolicySnapshot.fit_seconds,
                PolicySnapshot.created_at,
            )
        )
    return {snap.study_id: snap for snap in session.scalars(q).all()}


def add_snapshot(
    session: Session,
    study: Study,
    engine: BanditEngine,
    last_observation_id: int | None,
    fit_seconds: float,
    version: int | None = None,
) -> PolicySnapshot:
    """Write the engine as the study's next version (or ``version``); the unique (study, version)
    constraint refuses a second writer of the same version."""
    version = latest_version(session, study.id) + 1 if version is None else version
    snap = PolicySnapshot(
        study_id=study.id,
        version=version,
        engine=engine.snapshot(observations=study.campaign_id is not None),
        observation_count=engine.n_observations,
        last_observation_id=last_observation_id,
        fit_seconds=fit_seconds,
    )
    session.add(snap)
    session.flush()
    return snap


def new_engine(study: Study) -> BanditEngine:
    return BanditEngine(study.family, study.mode, study.policy, seed=study.id)


def engine_from_snapshot(session: Session, study: Study, snap: PolicySnapshot | None) -> BanditEngine:
    """The engine as of ``snap`` (a fresh one without a snapshot); no refit."""
    if snap is None:
        return new_engine(study)
    if snap.engine.get("observations") is not None:
        return BanditEngine.from_snapshot(snap.engine)
    window = int(snap.engine.get("max_exact", 2000))
    rows = session.scalars(
        select(Observation)
        .where(Observation.study_id == study.id, Observation.id <= (snap.last_observation_id or 0))
        .order_by(Observation.id.desc())
        .limit(window)
    ).all()
    return BanditEngine.from_snapshot(snap.engine, [engine_observation(r) for r in reversed(rows)])


def engine_observation(row: Observation) -> EngineObservation:
    return EngineObservation(
        dict(row.context), arm_of_bits(row.arm_adam), row.reward, arm_of_bits(row.arm_lbfgs), row.reward_phase0
    )


def observations_after(session: Session, study_id: int, after_id: int | None) -> Sequence[Observation]:
    return session.scalars(
        select(Observation)
        .where(Observation.study_id == study_id, Observation.id > (after_id or 0))
        .order_by(Observation.id)
    ).all()


def observation_count(session: Session, study_id: int) -> int:
    return int(session.scalar(select(func.count()).select_from(Observation).where(Observation.study_id == study_id)))


class EngineCache:
    """Restored engines by (study, snapshot version): recommendations and suggestions never fit."""

    def __init__(self, size: int = 64):
        self.size = size
        self._engines: dict[int, tuple[int, BanditEngine]] = {}

    def get(self, session: Session, study: Study, version: int | None = None) -> tuple[int, BanditEngine]:
        """(version, engine) for the study's latest snapshot (or ``version`` when already known)."""
        version = latest_version(session, study.id) if version is None else version
        hit = self._engines.get(study.id)
        if hit is not None and hit[0] == version:
            return hit
        snap = None
        if version:
            snap = session.scalar(
                select(PolicySnapshot).where(PolicySnapshot.study_id == study.id, PolicySnapshot.version == version)
            )
        engine = engine_from_snapshot(session, study, snap)
        if len(self._engines) >= self.size:
            self._engines.pop(next(iter(self._engines)))
        self._engines[study.id] = (version, engine)
        return version, engine

    def put(self, study_id: int, version: int, engine: BanditEngine) -> None:
        self._engines[study_id] = (version, engine)


def refit_study(store, study_id: int, live: dict[int, tuple[int, int | None, BanditEngine]]) -> PolicySnapshot | None:
    """Observe what the study's latest snapshot has not seen, refit, write the next snapshot.

    ``live`` keeps each study's engine between calls (study -> (version, last observation id,
    engine)), so a refit adds only the new observations. Returns the new snapshot, or None when
    there was nothing new (or a concurrent refit wrote that version first).
    """
    with store.read() as s:
        study = s.get(Study, study_id)
        snap = latest_snapshot(s, study_id)
        version = snap.version if snap else 0
        seen = snap.last_observation_id if snap else None
        new = observations_after(s, study_id, seen)
        if not new:
            return None
        hit = live.get(study_id)
        engine = hit[2] if hit is not None and hit[0] == version else engine_from_snapshot(s, study, snap)
        new_obs = [engine_observation(r) for r in new]
        last_id = new[-1].id
    start = time.perf_counter()
    engine.observe(*new_obs)
    fit_seconds = time.perf_counter() - start
    # Each version draws its own random numbers (TS, random warm-up) rather than repeating the last.
    engine.generator.manual_seed(study.id * 1_000_003 + version + 1)
    from sqlalchemy.exc import IntegrityError

    try:
        with store.write() as s:
            study = s.get(Study, study_id)
            written = add_snapshot(s, study, engine, last_id, fit_seconds, version=version + 1)
    except IntegrityError:
        live.pop(study_id, None)
        return None
    live[study_id] = (version + 1, last_id, engine)
    return written
