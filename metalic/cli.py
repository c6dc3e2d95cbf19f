"""Command line: ``metalic families``, ``metalic solve``, ``metalic predict``.

Bad input prints one line ``metalic: error: ...`` and exits with code 2 before anything is
trained or written.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

EXIT_BAD_INPUT = 2


class UsageError(Exception):
    """Bad command-line input: reported as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one readable line instead of usage + message
        raise UsageError(message)


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="metalic", description="Multi-domain PINNs with meta-learned interface conditions.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("families", help="list the PDE families and their parameter ranges")

    s = sub.add_parser("solve", help="train one multi-domain PINN and report its error")
    s.add_argument("family")
    s.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="PDE parameter")
    s.add_argument("--arm", default="u,flux,res_continuity", help="interface terms (names, bits, all, none)")
    s.add_argument("--arm-lbfgs", default=None, help="terms for the L-BFGS phase (default: --arm)")
    s.add_argument("--adam", type=int, default=1000, help="Adam iterations")
    s.add_argument("--lbfgs", type=int, default=1000, help="L-BFGS iterations")
    s.add_argument("--adam-lr", type=float, default=1e-3)
    s.add_argument("--lbfgs-lr", type=float, default=0.1)
    s.add_argument(
        "--subdomains",
        type=int,
        default=None,
        help="N equal slabs instead of the default split (1: single-domain PINN)",
    )
    s.add_argument("--collocation", type=int, default=1000, help="collocation points per subdomain")
    s.add_argument("--boundary", type=int, default=100, help="boundary/initial data points per subdomain")
    s.add_argument("--final-time-data", action="store_true", help="authors' extra supervision at t = T")
    s.add_argument("--device", default=None, help="auto (default), cpu, cuda")
    s.add_argument("--dtype", default=None, choices=["float32", "float64"])
    s.add_argument("--compile", dest="compile", action="store_true", default=None, help="torch.compile the loss")
    s.add_argument("--no-compile", dest="compile", action="store_false")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", type=Path, default=None, help="save the trained model here (.pt)")
    s.add_argument("--plot", type=Path, default=None, help="save prediction / reference / error figure (.png)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")

    c = sub.add_parser("campaign", help="run the METALIC bandit protocol and compare heuristics")
    c.add_argument("family")
    c.add_argument(
        "--heuristic",
        action="append",
        default=None,
        help="ucb, ts, random, mean, fixed:TERMS or single-domain; repeat to compare (default ucb)",
    )
    c.add_argument("--mode", default="single", help="single or sequential")
    c.add_argument("--warmup", type=int, default=5)
    c.add_argument("--rounds", type=int, default=20)
    c.add_argument("--test", type=int, default=10)
    c.add_argument("--adam", type=int, default=500)
    c.add_argument("--lbfgs", type=int, default=500)
    c.add_argument("--batch", type=int, default=4, help="trainings run together (K)")
    c.add_argument("--collocation", type=int, default=1000)
    c.add_argument("--boundary", type=int, default=100)
    c.add_argument("--interface-points", type=int, default=None)
    c.add_argument("--ucb-schedule", default="constant", help="constant (mean + std) or gp-ucb")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--device", default=None)
    c.add_argument("--out", type=Path, required=True, help="folder for rounds.csv/json, snapshots, figures")
    c.add_argument("--quiet", action="store_true")

    pr = sub.add_parser("predict", help="evaluate a saved model at points")
    pr.add_argument("model", type=Path)
    pr.add_argument("--at", action="append", required=True, metavar="X,Y", help="a point, e.g. 0.5,0.25")
    return p


def _parse_params(items: Sequence[str]) -> dict[str, float]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--param expects NAME=VALUE, got {item!r}")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise UsageError(f"--param {name}: {value!r} is not a number") from None
    return out


def _check_output(path: Path | None, flag: str, suffixes: tuple[str, ...]) -> None:
    if path is None:
        return
    if path.suffix.lower() not in suffixes:
        raise UsageError(f"{flag} {path}: expected a file ending in {' or '.join(suffixes)}")
    if not path.parent.exists():
        raise UsageError(f"{flag} {path}: folder {path.parent} does not exist")


def _check_budgets(args: argparse.Namespace) -> None:
    for flag, value in (("--adam", args.adam), ("--lbfgs", args.lbfgs)):
        if value < 0:
            raise UsageError(f"{flag} must be a non-negative number of iterations, got {value}")


def cmd_families() -> int:
    from metalic.families import FAMILIES

    for fam in FAMILIES.values():
        ranges = ", ".join(f"{p.name} in [{p.lo:g}, {p.hi:g}] (default {p.default:g})" for p in fam.params)
        split = fam.default_decomposition
        print(f"{fam.name:10s} {fam.equation}")
        print(f"{'':10s} parameters: {ranges}")
        n_sub, n_if = split.n_subdomains, len(split.interfaces)
        print(f"{'':10s} coords {fam.coords}, {n_sub} subdomains, {n_if} interface(s)")
    return 0


def cmd_solve(args: argparse.Namespace) -> int:
    from metalic.conditions import arm_label, parse_arm
    from metalic.families import get_family
    from metalic.pinn.problem import PinnConfig
    from metalic.pinn.trainer import RunSpec, TrainConfig
    from metalic.settings import resolve_device, resolve_dtype

    # ---- validate everything before any work ---------------------------------------------------
    _check_budgets(args)
    try:
        family = get_family(args.family)
        params = family.validate_params(_parse_params(args.param))
        arm = parse_arm(args.arm)
        arm_lbfgs = parse_arm(args.arm_lbfgs) if args.arm_lbfgs is not None else None
        pinn = PinnConfig(
            n_collocation=args.collocation,
            n_boundary=args.boundary,
            subdomains=args.subdomains,
            final_time_data=args.final_time_data,
        )
        pinn.validate(family)
        train = TrainConfig(
            adam_iters=args.adam,
            lbfgs_iters=args.lbfgs,
            adam_lr=args.adam_lr,
            lbfgs_lr=args.lbfgs_lr,
            compile=args.compile,
        )
        train.validate()
        device = resolve_device(args.device)
        dtype = resolve_dtype(args.dtype)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    _check_output(args.out, "--out", (".pt",))
    _check_output(args.plot, "--plot", (".png", ".pdf", ".svg"))

    from tqdm import tqdm

    from metalic.pinn.artefact import evaluate_batch, models_from_batch
    from metalic.pinn.trainer import train_batch

    total = train.adam_iters + train.lbfgs_iters
    bar = tqdm(total=total, disable=args.quiet, unit="it", dynamic_ncols=True, file=sys.stderr)
    done = {"adam": 0, "lbfgs": 0}

    def progress(p) -> None:
        bar.update(p.iteration - done[p.phase])
        done[p.phase] = p.iteration
        bar.set_description(p.phase)
        bar.set_postfix(loss=f"{p.loss[0]:.3e}")

    start = time.perf_counter()
    batch = train_batch(
        family,
        [RunSpec(params, arm, arm_lbfgs, args.seed)],
        pinn,
        train,
        device=device,
        dtype=dtype,
        progress=progress,
        progress_every=10,
    )
    bar.close()
    metrics = evaluate_batch(batch)
    wall = time.perf_counter() - start
    outcome = batch.outcomes[0]
    m = metrics[0]
    print(f"family      {family.name} {params}")
    print(f"arms        adam: {arm_label(arm)}   lbfgs: {arm_label(arm_lbfgs or arm)}")
    print(f"status      {outcome.status}" + (f" at {outcome.diverged_at}" if outcome.diverged_at else ""))
    its = f"adam {outcome.adam_iterations}, lbfgs {outcome.lbfgs_iterations}"
    print(f"iterations  {its} (stop: {outcome.lbfgs_stop})")
    print(f"loss        {outcome.loss:.4e}")
    print(f"rel L2      {m.rel_l2:.4e}")
    print(f"max error   {m.max_abs:.4e}")
    print(f"reward      {m.reward:.4f}")
    print(f"wall time   {wall:.1f} s on {device}")
    model = models_from_batch(batch, metrics)[0]
    if args.out is not None:
        model.save(args.out)
        print(f"model       {args.out}")
    if args.plot is not None:
        from metalic.plotting import plot_solution

        grid = family.reference_grid(params)
        pred = model.predict(grid.points()).reshape(grid.u.shape)
        title = f"{family.name} {params}  arm {arm_label(arm)}  rel L2 {m.rel_l2:.2e}"
        plot_solution(family, batch.problem.decomposition, grid, pred, args.plot, title)
        print(f"figure      {args.plot}")
    return 0


def cmd_campaign(args: argparse.Namespace) -> int:
    import json

    from metalic.bandit.campaign import CampaignConfig, run_heuristic, summarise, write_outputs
    from metalic.pinn.problem import PinnConfig
    from metalic.pinn.trainer import TrainConfig
    from metalic.settings import resolve_device

    _check_budgets(args)
    try:
        config = CampaignConfig(
            family=args.family,
            heuristics=tuple(args.heuristic or ["ucb"]),
            mode=args.mode,
            warmup=args.warmup,
            rounds=args.rounds,
            test=args.test,
            batch=args.batch,
            seed=args.seed,
            train=TrainConfig(adam_iters=args.adam, lbfgs_iters=args.lbfgs),
            pinn=PinnConfig(
                n_collocation=args.collocation, n_boundary=args.boundary, n_interface=args.interface_points
            ),
            ucb_schedule=args.ucb_schedule,
            device=str(resolve_device(args.device)),
        )
        config.validate()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out}: exists and is not a folder")
    if not args.out.parent.exists():
        raise UsageError(f"--out {args.out}: folder {args.out.parent} does not exist")

    from tqdm import tqdm

    per = config.warmup + config.rounds + config.test
    rows, engines = [], {}
    with tqdm(total=per * len(config.heuristics), disable=args.quiet, unit="training", file=sys.stderr) as bar:
        for h in config.heuristics:
            bar.set_description(h)
            base = bar.n
            got, engine = run_heuristic(config, h, progress=lambda n, b=base: bar.update(b + n - bar.n))
            rows.extend(got)
            engines[h] = engine
    write_outputs(rows, engines, args.out)
    summary = summarise(rows)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"{'heuristic':24s} {'online acc. error':>18s} {'test mean':>10s} {'test median':>12s}")
    for s in summary:
        print(
            f"{s['heuristic']:24s} {s['online_accumulated_error']:18.4f} {s['test_mean_error']:10.3e}"
            f" {s['test_median_error']:12.3e}"
        )
    print(f"outputs in {args.out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from metalic.pinn.artefact import TrainedModel

    points = []
    for item in args.at:
        try:
            x, y = (float(v) for v in item.split(","))
        except ValueError:
            raise UsageError(f"--at expects two numbers X,Y, got {item!r}") from None
        points.append((x, y))
    if not args.model.is_file():
        raise UsageError(f"model file {args.model} does not exist")
    try:
        model = TrainedModel.load(args.model)
        values = model.predict(np.array(points))
    except (ValueError, RuntimeError, KeyError) as exc:
        raise UsageError(f"{args.model}: {exc}") from None
    for (x, y), v in zip(points, values, strict=True):
        print(f"{x:g} {y:g} {v:.8g}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command == "families":
            return cmd_families()
        if args.command == "solve":
            return cmd_solve(args)
        if args.command == "campaign":
            return cmd_campaign(args)
        return cmd_predict(args)
    except UsageError as exc:
        print(f"metalic: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
