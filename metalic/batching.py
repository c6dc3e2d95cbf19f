"""The batch planner: which runs train together, in which ``train_batch`` calls, at what size.

Pure functions of plain values (no store, no torch, no clock), so the rules are tested on their
own and every caller packs the same way:

- ``batch_key``: runs with equal keys (family, budget profile, device class) can share a batch;
- ``fair_order``: a queue (oldest first) in fair-share order: owners take turns, and an owner whose
  tasks already train waits behind one whose do not;
- ``plan_batches``: a queue (in the order to serve it) and free trainers -> one batch per trainer:
  the first key group the trainer can serve, at most its ``max_batch`` runs; a run marked ``solo``
  (its last batch failed) goes alone. The dispatcher plans with it; ``plan_all`` (local campaigns)
  packs a whole queue the same way;
- ``ready``: whether a batch goes out now or waits for the tasks sent with it (a short window);
- ``plan_groups``: one batch -> its ``train_batch`` calls: the split runs, then the single-network
  runs (one subdomain, another network shape), each padded to its compile size class;
- ``pad_batches`` / ``size_class``: a loss compiled on an accelerator trains K runs as the next
  power of two (copies of the last run, dropped afterwards), so a long-lived worker compiles one
  loss per size class, not one per batch size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


def batch_key(family: str, profile_key: str, device: str) -> str:
    """The key of runs that can train in one batch (arms, parameters and seeds may differ)."""
    return f"{family}/{profile_key}/{device}"


@dataclass(frozen=True)
class Queued:
    """A run waiting for a batch: its batch key, the device class it asked for (``auto``, ``cpu``,
    ``cuda``) and whether it must train alone."""

    key: str
    device: str = "auto"
    solo: bool = False


@dataclass(frozen=True)
class Trainer:
    """A free trainer: its device class (``cpu`` or ``cuda``; None takes any) and batch limit."""

    device: str | None
    max_batch: int

    def accepts(self, device: str) -> bool:
        return self.device is None or device in ("auto", self.device)


@dataclass(frozen=True)
class PlannedBatch:
    trainer: int  # index into the trainers
    runs: tuple[int, ...]  # indices into the queue, oldest first


def fair_order(owners: Sequence[str | None], running: Mapping[str | None, int]) -> list[int]:
    """Positions of a queue (oldest first, ``owners[i]`` the owner of its i-th task) in fair-share
    order: an owner's n-th queued task (n from 0) ranks as that owner's running tasks + n, ties
    oldest first. Owners take turns, and 32 queued tasks of one owner never keep another's first
    task out of the next batch."""
    seen: dict[str | None, int] = {}
    keys = []
    for i, owner in enumerate(owners):
        n = seen.get(owner, 0)
        seen[owner] = n + 1
        keys.append((running.get(owner, 0) + n, i))
    return [i for _, i in sorted(keys)]


def ready(size: int, max_batch: int, oldest_age: float, window: float) -> bool:
    """A batch of ``size`` runs goes out when it is full or its oldest task has waited ``window``
    seconds: tasks submitted together (a client's burst) share one batch instead of the first
    going alone."""
    return size >= max_batch or oldest_age >= window


def plan_batches(queue: Sequence[Queued], trainers: Sequence[Trainer]) -> list[PlannedBatch]:
    """At most one batch per trainer, in the trainers' order (see the module docstring)."""
    groups: dict[str, list[int]] = {}
    for i, q in enumerate(queue):
        groups.setdefault(q.key, []).append(i)
    out = []
    for t, trainer in enumerate(trainers):
        for key, members in groups.items():
            if not members or not trainer.accepts(queue[members[0]].device):
                continue
            first = members[0]
            take = [first] if queue[first].solo else [i for i in members if not queue[i].solo][: trainer.max_batch]
            groups[key] = [i for i in members if i not in take]
            out.append(PlannedBatch(t, tuple(take)))
            break
    return out


def plan_all(queue: Sequence[Queued], max_batch: int | None = None) -> list[tuple[int, ...]]:
    """Every batch of a whole queue, for one trainer that takes any device, oldest first."""
    left = list(range(len(queue)))
    trainer = Trainer(None, max_batch or max(len(queue), 1))
    out = []
    while left:
        (planned,) = plan_batches([queue[i] for i in left], [trainer])
        runs = tuple(left[i] for i in planned.runs)
        out.append(runs)
        left = [i for i in left if i not in runs]
    return out


@dataclass(frozen=True)
class Group:
    """One ``train_batch`` call of a batch: ``runs`` (indices into the batch), whether they are
    single-network runs, and how many runs it trains (``size`` >= ``len(runs)``: the extra ones
    are copies of the last run)."""

    runs: tuple[int, ...]
    single_network: bool
    size: int


def size_class(k: int, pad: bool) -> int:
    """Runs a group of ``k`` trains: the next power of two when padding, else ``k``."""
    return 1 << (k - 1).bit_length() if pad and k > 0 else k


def pad_batches(compiled: bool, device_type: str) -> bool:
    """Pad to size classes when the loss is compiled on an accelerator, where the extra runs cost
    little and each new size would cost a compile."""
    return compiled and device_type != "cpu"


def plan_groups(single_network: Sequence[bool], pad: bool) -> list[Group]:
    """A batch's ``train_batch`` calls: its split runs, then its single-network runs."""
    out = []
    for single in (False, True):
        runs = tuple(j for j, s in enumerate(single_network) if s == single)
        if runs:
            out.append(Group(runs, single, size_class(len(runs), pad)))
    return out
