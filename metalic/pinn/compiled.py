"""Compiled losses kept per process: one ``torch.compile`` per batch shape and derivative set.

A compile costs 10-40 s on a CPU, so a worker or a campaign that trains many batches of one shape
compiles once: a later training copies its points, data, parameters and initial weights into the
tensors the kept graph was traced on (same objects, same shapes: dynamo's guards hold, nothing
recompiles). A kept loss that computes more derivatives than a training needs is reused too; the
extra derivatives cost less per step than a compile.

``lease(...)`` hands a training the loss to use and reserves it; ``release(held)`` gives it back.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace

import torch

from metalic.pinn.loss import PinnLoss
from metalic.pinn.network import StackedMLP
from metalic.pinn.problem import BatchProblem, PinnConfig

# (shape key, quantities) -> (problem, network, loss, compiled call), least recently used first.
_KEPT: OrderedDict[tuple, tuple[BatchProblem, StackedMLP, PinnLoss, Callable]] = OrderedDict()
KEEP = 4
_IN_USE: set[tuple] = set()  # keys of kept losses a training is using now

# Dynamo keeps at most ``recompile_limit`` (8) graphs per code object and then runs that code
# eager, and every compiled loss of a process is a graph of ``PinnLoss.__call__`` (one per batch
# shape, derivative set and kept loss; an evicted loss's graph stays counted): a long-lived worker
# that had seen 8 of them trained every later batch eager. Measured: K = 1..11 one after another,
# graphs stopped at 8. The limit for this code is raised to ``LOSS_GRAPHS``.
LOSS_GRAPHS = 64
BACKEND = "inductor"
_PROBLEM_TENSORS = ("x_main", "g_data", "m_data", "x_iface", "side_a", "side_b", "iface_points", "iface_axis")


def compile_loss(loss_fn: PinnLoss) -> Callable:
    """``torch.compile`` of ``loss_fn.__call__``, with room for ``LOSS_GRAPHS`` graphs per process."""
    import torch._dynamo

    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, LOSS_GRAPHS)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 4 * LOSS_GRAPHS)
    return torch.compile(loss_fn.__call__, backend=BACKEND)


def _shape_key(problem: BatchProblem, net: StackedMLP, config: PinnConfig) -> tuple:
    tensors = (problem.x_main, problem.g_data, problem.m_data, problem.x_iface, problem.side_a, problem.side_b)
    return (
        problem.family.name,
        repr(config),
        net.widths,
        net.period,
        net.harmonics,
        str(net.theta.device),
        net.theta.dtype,
        tuple(tuple(t.shape) for t in (*tensors, problem.iface_points, problem.iface_axis, net.theta)),
        None if problem.chunk_of is None else (tuple(problem.chunk_of.shape), problem.chunks),
    )


def lease(
    problem: BatchProblem, net: StackedMLP, config: PinnConfig, quantities: frozenset[str], held: list
) -> tuple[StackedMLP, PinnLoss, Callable]:
    """A compiled loss for this batch shape that computes at least ``quantities``, made once per
    process and reused (see the module docstring). Returns (the network to train, the loss, its
    compiled call); the kept loss's key is appended to ``held`` and stays reserved until
    ``release(held)``. A kept loss another training of this process holds is not shared: that
    training gets a loss of its own, not kept."""
    shape = _shape_key(problem, net, config)
    key = (shape, quantities)
    if key not in _KEPT:
        key = next((k for k in reversed(_KEPT) if k[0] == shape and k[1] >= quantities and k not in _IN_USE), key)
    if key in _IN_USE:
        loss_fn = PinnLoss(problem, net, config, quantities)
        return net, loss_fn, compile_loss(loss_fn)
    hit = _KEPT.get(key)
    if hit is None:
        hit = _keep(key, problem, net, config, quantities)
    _KEPT.move_to_end(key)
    kept_problem, kept_net, loss_fn, call = hit
    with torch.no_grad():
        for name in _PROBLEM_TENSORS:
            getattr(kept_problem, name).copy_(getattr(problem, name))
        if problem.chunk_of is not None:
            kept_problem.chunk_of.copy_(problem.chunk_of)
        for n, t in problem.param_tensors.items():
            kept_problem.param_tensors[n].copy_(t)
        kept_problem.params = list(problem.params)
        kept_net.theta.copy_(net.theta)
        kept_net.center.copy_(net.center)
        kept_net.scale.copy_(net.scale)
    kept_net.theta.grad = None
    _IN_USE.add(key)
    held.append(key)
    return kept_net, loss_fn, call


def _keep(key: tuple, problem: BatchProblem, net: StackedMLP, config: PinnConfig, quantities: frozenset[str]):
    """Copies of the problem and network that the compiled graph is traced on, kept under ``key``."""
    kept_problem = replace(problem, params=list(problem.params))
    for name in _PROBLEM_TENSORS:
        setattr(kept_problem, name, getattr(problem, name).clone())
    kept_problem.param_tensors = {n: t.clone() for n, t in problem.param_tensors.items()}
    kept_problem.chunk_of = None if problem.chunk_of is None else problem.chunk_of.clone()
    kept_net = copy.deepcopy(net)
    loss_fn = PinnLoss(kept_problem, kept_net, config, quantities)
    hit = (kept_problem, kept_net, loss_fn, compile_loss(loss_fn))
    _KEPT[key] = hit
    while len(_KEPT) > KEEP:
        _KEPT.popitem(last=False)
    return hit


def release(held: list) -> None:
    """Give back the kept losses a training leased."""
    _IN_USE.difference_update(held)
