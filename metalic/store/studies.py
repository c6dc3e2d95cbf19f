"""Studies (one bandit each), their observations and their policy snapshots.

A service study's snapshot holds the engine without its observations (they are rows here); an
engine is restored from the latest snapshot and the most recent ``max_exact`` observations it
covered, which is all its GP conditions on. A campaign study's snapshot holds its observations
too (a campaign is small, and its learners also see the shared warm-up).

What a new service study starts from (``studies.prior``, kept for good): the latest snapshot of
its family's service study at the nearest budget (``study:<id>@v<version>``, a ``StudyPrior``:
what was learnt at 300 + 200 informs a study at 1000 + 1000, and through it whatever that study
stands on), else the shipped prior built at the nearest budget, else nothing.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, load_only

from metalic import priors
from metalic.arms import Arm
from metalic.bandit.engine import STUDY_PRIOR, BanditEngine, Observation, StudyPrior
from metalic.jobs import SolveRequest
from metalic.store.models import ObservationRow, SnapshotRow, StudyRow
from metalic.store.records import SnapshotRecord, StudyRecord, record

NO_PRIOR = "/no-prior"  # the key suffix of a service study that never starts from a prior
_STUDY_REF = re.compile(rf"^{STUDY_PRIOR}(?P<id>[0-9]+)@v(?P<version>[0-9]+)$")


def study_key(family: str, mode: str, profile_key: str) -> str:
    return f"{family}/{mode}/{profile_key}"


def get_or_create_study(session: Session, *, key: str, **values) -> StudyRow:
    """The study called ``key``, created with ``values`` if new (safe against a concurrent creator)."""
    found = session.scalar(select(StudyRow).where(StudyRow.key == key))
    if found is not None:
        return found
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    session.execute(insert(StudyRow).values(key=key, **values).on_conflict_do_nothing(index_elements=["key"]))
    return session.scalar(select(StudyRow).where(StudyRow.key == key))


def study_for_request(session: Session, request: SolveRequest, policy: str = "ucb") -> StudyRow:
    """The service study that learns from ``request``: its family, mode and budget profile, and
    what it starts from. A new study records, and keeps, the latest snapshot of the family's
    service study at the nearest budget (``nearest_study_prior``), else the installed prior of its
    family and mode built at the nearest budget (``metalic.priors.for_budget``); nothing with
    ``METALIC_PRIORS=off``.
    A request with ``prior: false`` goes to a study of its own that never has one."""
    key = study_key(request.family, request.mode, request.profile_key()) + ("" if request.prior else NO_PRIOR)
    found = session.scalar(select(StudyRow).where(StudyRow.key == key))
    if found is not None:
        return found
    prior = None
    if request.prior and priors.enabled():
        prior = nearest_study_prior(session, request.family, request.mode, request.profile())
        if prior is None:
            shipped = priors.for_budget(request.family, request.mode, request.profile())
            prior = None if shipped is None else shipped.ref
    return get_or_create_study(
        session,
        key=key,
        family=request.family,
        mode=request.mode,
        profile_key=request.profile_key(),
        profile=request.profile(),
        policy=policy,
        campaign_id=None,
        heuristic=None,
        prior=prior,
    )


def nearest_study_prior(session: Session, family: str, mode: str, profile: Mapping) -> str | None:
    """``study:<id>@v<version>``: the latest snapshot of the service study of (family, mode) and
    the same recipe whose budget (``priors.BUDGET_KEYS``) is nearest to ``profile``'s, among those whose
    snapshot holds two observations or more (then the most observations, then the oldest); None
    when there is none."""
    latest = (
        select(SnapshotRow.study_id, func.max(SnapshotRow.version).label("version"))
        .group_by(SnapshotRow.study_id)
        .subquery()
    )
    rows = session.execute(
        select(StudyRow, SnapshotRow.version, SnapshotRow.observation_count)
        .join(latest, latest.c.study_id == StudyRow.id)
        .join(SnapshotRow, (SnapshotRow.study_id == StudyRow.id) & (SnapshotRow.version == latest.c.version))
        .where(StudyRow.family == family, StudyRow.mode == mode, StudyRow.campaign_id.is_(None))
        .where(SnapshotRow.observation_count >= 2)
        .order_by(StudyRow.id)
    ).all()
    wanted = {k: profile.get(k) for k in priors.BUDGET_KEYS}
    rows = [r for r in rows if r[0].profile.get("recipe") == profile.get("recipe")]
    best = min(rows, key=lambda r: (priors.budget_distance(r[0].profile, wanted), -r[2]), default=None)
    return None if best is None else f"{STUDY_PRIOR}{best[0].id}@v{best[1]}"


_BASES: OrderedDict[tuple, StudyPrior] = OrderedDict()  # restored study priors, by their snapshot row
_BASES_LOCK = threading.Lock()
BASES_KEPT = 16


def study_of_prior(ref: str | None) -> tuple[int, int] | None:
    """(study id, snapshot version) of a study prior's ref; None for a prior file's or None."""
    m = _STUDY_REF.match(ref or "")
    return None if m is None else (int(m["id"]), int(m["version"]))


def resolve_prior(session: Session | None, ref: str | None):
    """What a study or snapshot's ``prior`` names: None, a ``StudyPrior`` (restored from the
    store of ``session`` once per snapshot row and process, on what it stands on in turn) or an
    installed ``metalic.priors.Prior``. ValueError when it names nothing there."""
    if not ref:
        return None
    found = study_of_prior(ref)
    if found is None:
        return priors.load(ref)
    if session is None:
        raise ValueError(f"prior: {ref} is a study's; it is read through a session of its store")
    study_id, version = found
    snap = session.scalar(select(SnapshotRow).where(SnapshotRow.study_id == study_id, SnapshotRow.version == version))
    if snap is None:
        raise ValueError(f"prior: {ref} names no snapshot in this store")
    key = (str(session.get_bind().url), snap.id, snap.created_at)  # a recreated database reuses ids
    with _BASES_LOCK:
        hit = _BASES.get(key)
    if hit is not None:
        return hit
    study = session.get(StudyRow, study_id)
    engine = engine_from_snapshot(session, study, snap)
    p = study.profile
    found = StudyPrior(
        ref,
        engine,
        {
            "study": study_id,
            "version": version,
            "budget": f"{p.get('adam')} Adam + {p.get('lbfgs')} L-BFGS, {p.get('collocation')} points",
            "date": snap.created_at.isoformat(),
        },
    )
    with _BASES_LOCK:
        _BASES[key] = found
        while len(_BASES) > BASES_KEPT:
            _BASES.popitem(last=False)
    return found


# ---- reading studies ------------------------------------------------------------------------------
@dataclass(frozen=True)
class StudySummary:
    """A study with its observation count and latest snapshot (None before the first refit)."""

    study: StudyRecord
    observations: int
    snapshot: SnapshotRecord | None


def get_study(store, study_id: int) -> StudyRecord | None:
    with store.read() as s:
        row = s.get(StudyRow, study_id)
        return None if row is None else record(StudyRecord, row)


def list_studies(store, **filters) -> list[StudySummary]:
    """``study_summaries`` in a read transaction of its own."""
    with store.read() as s:
        return study_summaries(s, **filters)


def study_summaries(
    session: Session,
    *,
    family: str | None = None,
    campaign_id: int | None = None,
    campaigns_too: bool = False,
    study_id: int | None = None,
    limit: int | None = None,
    with_engine: bool = False,
) -> list[StudySummary]:
    """Service studies (every study with ``campaigns_too``; one campaign's with ``campaign_id``; one
    study with ``study_id``) by id, each with its count and latest snapshot, in three queries.
    ``with_engine``: the snapshots carry their engine JSON (hyper-parameters)."""
    q = select(StudyRow).order_by(StudyRow.id)
    if study_id is not None:
        q = q.where(StudyRow.id == study_id)
    elif campaign_id is not None:
        q = q.where(StudyRow.campaign_id == campaign_id)
    elif not campaigns_too:
        q = q.where(StudyRow.campaign_id.is_(None))
    if family is not None:
        q = q.where(StudyRow.family == family)
    if limit is not None:
        q = q.limit(limit)
    rows = session.scalars(q).all()
    ids = [st.id for st in rows]
    counts, snaps = _observation_counts(session, ids), _latest_snapshots(session, ids, with_engine)
    return [StudySummary(record(StudyRecord, st), counts.get(st.id, 0), snaps.get(st.id)) for st in rows]


def pick_study(store, family: str, mode: str, budget: Mapping[str, int | None] | None = None) -> StudyRecord | None:
    """The service study of (family, mode) with the most observations (None: nothing solved yet).

    ``budget`` (``priors.BUDGET_KEYS``: Adam and L-BFGS iterations, collocation points; a key
    missing or None is not compared): the study whose profile is nearest to it in log counts,
    |log(1 + a) - log(1 + a')| summed over the given keys, then the one with the most observations."""
    counts = (
        select(StudyRow, func.count(ObservationRow.id).label("n"))
        .outerjoin(ObservationRow, ObservationRow.study_id == StudyRow.id)
        .where(StudyRow.family == family, StudyRow.mode == mode, StudyRow.campaign_id.is_(None))
        .group_by(StudyRow.id)
        .order_by(func.count(ObservationRow.id).desc(), StudyRow.id)
    )
    with store.read() as s:
        asked = {k: v for k, v in (budget or {}).items() if v is not None}
        if not asked:
            row = s.execute(counts.limit(1)).first()
            return None if row is None else record(StudyRecord, row[0])
        rows = s.execute(counts.limit(1000)).all()  # the service's studies of one family and mode: a few
        # min keeps the first: the most observations
        best = min(rows, key=lambda r: priors.budget_distance(r[0].profile, asked), default=None)
        return None if best is None else record(StudyRecord, best[0])


def latest_version(store, study_id: int) -> int:
    """0 when the study has no snapshot yet."""
    with store.read() as s:
        return _latest_version(s, study_id)


def _latest_version(session: Session, study_id: int) -> int:
    v = session.scalar(select(func.max(SnapshotRow.version)).where(SnapshotRow.study_id == study_id))
    return int(v or 0)


def _observation_counts(session: Session, study_ids: Sequence[int]) -> dict[int, int]:
    """Observations per study (one grouped count over the (study_id, id) index)."""
    if not study_ids:
        return {}
    rows = session.execute(
        select(ObservationRow.study_id, func.count())
        .where(ObservationRow.study_id.in_(study_ids))
        .group_by(ObservationRow.study_id)
    ).all()
    return {study: int(n) for study, n in rows}


def _latest_snapshots(session: Session, study_ids: Sequence[int], with_engine: bool) -> dict[int, SnapshotRecord]:
    """Each study's latest snapshot, in one query; without ``with_engine`` the engine JSON (which
    a campaign study's snapshot fills with all its observations) is not read."""
    if not study_ids:
        return {}
    latest = (
        select(SnapshotRow.study_id, func.max(SnapshotRow.version).label("v"))
        .where(SnapshotRow.study_id.in_(study_ids))
        .group_by(SnapshotRow.study_id)
        .subquery()
    )
    q = select(SnapshotRow).join(
        latest, (latest.c.study_id == SnapshotRow.study_id) & (latest.c.v == SnapshotRow.version)
    )
    if not with_engine:
        q = q.options(
            load_only(
                SnapshotRow.study_id,
                SnapshotRow.version,
                SnapshotRow.observation_count,
                SnapshotRow.last_observation_id,
                SnapshotRow.fit_seconds,
                SnapshotRow.created_at,
            )
        )
    return {
        snap.study_id: record(SnapshotRecord, snap, engine=snap.engine if with_engine else None)
        for snap in session.scalars(q).all()
    }


def latest_snapshot(session: Session, study_id: int) -> SnapshotRow | None:
    return session.scalar(
        select(SnapshotRow).where(SnapshotRow.study_id == study_id).order_by(SnapshotRow.version.desc()).limit(1)
    )


def studies_behind(store) -> set[int]:
    """Service studies with observations newer than their latest snapshot."""
    with store.read() as s:
        newest = dict(
            s.execute(
                select(ObservationRow.study_id, func.max(ObservationRow.id))
                .join(StudyRow, StudyRow.id == ObservationRow.study_id)
                .where(StudyRow.campaign_id.is_(None))
                .group_by(ObservationRow.study_id)
            ).all()
        )
        seen = dict(
            s.execute(
                select(SnapshotRow.study_id, func.max(SnapshotRow.last_observation_id)).group_by(SnapshotRow.study_id)
            ).all()
        )
    return {sid for sid, last in newest.items() if (seen.get(sid) or 0) < last}


def campaign_studies(store, study_ids: Sequence[int]) -> set[int]:
    """Which of ``study_ids`` belong to a campaign (a campaign refits its own engines)."""
    if not study_ids:
        return set()
    with store.read() as s:
        return set(
            s.scalars(
                select(StudyRow.id).where(StudyRow.id.in_(list(study_ids)), StudyRow.campaign_id.is_not(None))
            ).all()
        )


# ---- snapshots and engines ------------------------------------------------------------------------
def add_snapshot(
    session: Session,
    study: StudyRow,
    engine: BanditEngine,
    last_observation_id: int | None,
    fit_seconds: float,
    version: int | None = None,
) -> SnapshotRow:
    """Write the engine as the study's next version (or ``version``); the unique (study, version)
    constraint refuses a second writer of the same version."""
    version = _latest_version(session, study.id) + 1 if version is None else version
    snap = SnapshotRow(
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


def new_engine(study: StudyRow | StudyRecord, session: Session | None = None) -> BanditEngine:
    """A study's engine before its first snapshot: no observations, on the study's prior if any
    (a study prior is read through ``session``)."""
    prior = resolve_prior(session, study.prior)
    learns = tuple(study.profile.get("learns", ()))  # recipe bits a campaign's engine chooses
    arm_kernel = study.profile.get("arm_kernel", "hamming")  # recorded when the study was made
    return BanditEngine(
        study.family, study.mode, study.policy, seed=study.id, prior=prior, recipe=learns, arm_kernel=arm_kernel
    )


def engine_from_snapshot(session: Session, study: StudyRow, snap: SnapshotRow | None) -> BanditEngine:
    """The engine as of ``snap`` (a fresh one without a snapshot); no refit."""
    if snap is None:
        return new_engine(study, session)
    prior = resolve_prior(session, snap.engine.get("prior"))
    if snap.engine.get("observations") is not None:
        return BanditEngine.from_snapshot(snap.engine, prior=prior)
    window = int(snap.engine.get("max_exact", 2000))
    o = ObservationRow  # columns, not ORM objects: a restore reads up to 2,000 rows
    rows = session.execute(
        select(o.params, o.arm_adam, o.reward, o.arm_lbfgs, o.reward_adam)
        .where(o.study_id == study.id, o.id <= (snap.last_observation_id or 0))
        .order_by(o.id.desc())
        .limit(window)
    ).all()
    return BanditEngine.from_snapshot(snap.engine, [engine_observation(r) for r in reversed(rows)], prior=prior)


def engine_observation(row) -> Observation:
    """An ``ObservationRow`` (or a row of its columns) as the engine's observation."""
    arm_lbfgs = None if row.arm_lbfgs is None else Arm.from_index(row.arm_lbfgs)
    return Observation(dict(row.params), Arm.from_index(row.arm_adam), row.reward, arm_lbfgs, row.reward_adam)


class EngineCache:
    """Restored engines by (study, snapshot version): recommendations and suggestions never fit.
    Thread-safe: a restore happens once per version whoever asks."""

    def __init__(self, store, size: int = 64):
        self.store, self.size = store, size
        self._engines: dict[int, tuple[int, BanditEngine]] = {}
        self._lock = threading.Lock()

    def get(self, study_id: int, version: int | None = None) -> tuple[int, BanditEngine]:
        """(version, engine) for the study's latest snapshot (or ``version`` when already known)."""
        with self._lock, self.store.read() as s:
            version = _latest_version(s, study_id) if version is None else version
            hit = self._engines.get(study_id)
            if hit is not None and hit[0] == version:
                return hit
            snap = None
            if version:
                snap = s.scalar(
                    select(SnapshotRow).where(SnapshotRow.study_id == study_id, SnapshotRow.version == version)
                )
            engine = engine_from_snapshot(s, s.get(StudyRow, study_id), snap)
            if len(self._engines) >= self.size:
                self._engines.pop(next(iter(self._engines)))
            self._engines[study_id] = (version, engine)
            return version, engine

    def put(self, study_id: int, version: int, engine: BanditEngine) -> None:
        with self._lock:
            self._engines[study_id] = (version, engine)


def refit_study(store, study_id: int, live: dict[int, tuple[int, int | None, BanditEngine]]) -> SnapshotRecord | None:
    """Observe what the study's latest snapshot has not seen, refit, write the next snapshot.

    ``live`` keeps each study's engine between calls (study -> (version, last observation id,
    engine)), so a refit adds only the new observations. Returns the new snapshot, or None when
    there was nothing new (or a concurrent refit wrote that version first).
    """
    with store.read() as s:
        study = s.get(StudyRow, study_id)
        snap = latest_snapshot(s, study_id)
        version = snap.version if snap else 0
        seen = (snap.last_observation_id or 0) if snap else 0
        new = s.scalars(
            select(ObservationRow)
            .where(ObservationRow.study_id == study_id, ObservationRow.id > seen)
            .order_by(ObservationRow.id)
        ).all()
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
    engine.generator.manual_seed(study_id * 1_000_003 + version + 1)
    try:
        with store.write() as s:
            written = add_snapshot(s, s.get(StudyRow, study_id), engine, last_id, fit_seconds, version=version + 1)
            snapshot = record(SnapshotRecord, written, engine=None)
    except IntegrityError:
        live.pop(study_id, None)
        return None
    live[study_id] = (version + 1, last_id, engine)
    return snapshot
