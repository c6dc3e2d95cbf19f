"""Command line: ``metalic families | solve | predict``, and the service's commands.

The library's commands are defined here. The service's commands (``serve``, ``dispatcher``,
``worker``, ``campaign``, ``db``, ``token``) are registered from the service's side: each
``metalic.commands`` entry point (``pyproject.toml``) is a ``register(subparsers)`` that adds its
parsers and returns their handlers, so this module never imports ``api/`` or ``workers/``.

Bad input prints one line ``metalic: error: ...`` and exits with code 2 before anything is
trained or written.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING

from metalic.settings import get_settings

if TYPE_CHECKING:
    from metalic.jobs import SolveRequest

EXIT_BAD_INPUT = 2


class UsageError(Exception):
    """Bad command-line input: reported as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one readable line instead of usage + message
        raise UsageError(message)


Handler = Callable[[argparse.Namespace], int]


def _build_parser() -> tuple[argparse.ArgumentParser, dict[str, Handler]]:
    """The parser and each command's handler (the library's, then every registered service's)."""
    p = _Parser(prog="metalic", description="Multi-domain PINNs with meta-learned interface conditions.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    handlers: dict[str, Handler] = {"families": lambda args: cmd_families(), "solve": cmd_solve, "predict": cmd_predict}
    sub.add_parser("families", help="list the PDE families and their parameter ranges")

    s = sub.add_parser("solve", help="train one multi-domain PINN and report its error")
    s.add_argument("family")
    s.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="PDE parameter")
    s.add_argument(
        "--arm",
        default="u,flux,res_continuity",
        help="interface terms (names, bits, all, none) or single-domain (one network, no split)",
    )
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
    s.add_argument(
        "--side-data",
        action="store_true",
        help="periodic family (kdv): the authors' setup, data on the x-edges from the reference, no periodic network",
    )
    s.add_argument("--causal", action="store_true", help="causal weights on the residual in the Adam phase")
    s.add_argument("--causal-eps", default=None, metavar="E1,E2,...", help="causal eps schedule (0.01,0.1,1,10,100)")
    s.add_argument("--causal-chunks", type=int, default=None, help="time chunks of the domain (causal, 32)")
    s.add_argument("--march", action="store_true", help="train the time slabs one after another")
    s.add_argument("--device", default=None, help="auto (default), cpu, cuda")
    s.add_argument("--dtype", default=None, choices=["float32", "float64"])
    s.add_argument("--compile", dest="compile", action="store_true", default=None, help="torch.compile the loss")
    s.add_argument("--no-compile", dest="compile", action="store_false")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", type=Path, default=None, help="save the trained model here (.pt)")
    s.add_argument("--plot", type=Path, default=None, help="save prediction / reference / error figure (.png)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")

    pr = sub.add_parser("predict", help="evaluate a saved model at points")
    pr.add_argument("model", type=Path)
    pr.add_argument("--at", action="append", required=True, metavar="X,Y", help="a point, e.g. 0.5,0.25")
    for ep in entry_points(group="metalic.commands"):
        handlers.update(ep.load()(sub))
    return p, handlers


def _parse_params(items: Sequence[str]) -> dict[str, float]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--param expects NAME=VALUE, got {item!r}")
        if name.strip() in out:
            raise UsageError(f"--param {name.strip()} is given twice")
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


def check_budgets(args: argparse.Namespace) -> None:
    for flag, value in (("--adam", args.adam), ("--lbfgs", args.lbfgs)):
        if value < 0:
            raise UsageError(f"{flag} must be a non-negative number of iterations, got {value}")


def parse_eps(text: str) -> tuple[float, ...]:
    """``--causal-eps 0.01,0.1,1``: the eps schedule (UsageError when a value is not a number)."""
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--causal-eps expects numbers separated by commas, got {text!r}") from None


def _recipe_fields(args: argparse.Namespace) -> dict:
    """The request's recipe from --causal, --causal-eps, --causal-chunks."""
    fields: dict = {"causal": args.causal, "march": args.march}
    if args.causal_eps is not None:
        fields["eps"] = parse_eps(args.causal_eps)
    if args.causal_chunks is not None:
        fields["chunks"] = args.causal_chunks
    if not args.causal and len(fields) > 2:
        raise UsageError("--causal-eps and --causal-chunks need --causal")
    return fields


def cmd_families() -> int:
    from metalic.families import FAMILIES

    for fam in FAMILIES.values():
        ranges = ", ".join(f"{p.name} in [{p.lo:g}, {p.hi:g}] (default {p.default:g})" for p in fam.params)
        split = fam.default_decomposition
        print(f"{fam.name:10s} {fam.equation}")
        print(f"{'':10s} parameters: {ranges}")
        n_sub, n_if = split.n_subdomains, len(split.interfaces)
        print(f"{'':10s} coords {fam.coords}, {n_sub} subdomains, {n_if} interface(s)")
        if fam.recommended:
            print(f"{'':10s} recommended: metalic solve {fam.name} {' '.join(recommended_flags(fam.recommended))}")
    return 0


def recommended_flags(body: dict) -> list[str]:
    """A family's recommended solve body (REST spelling) as ``metalic solve`` flags."""
    flags = []
    recipe = body.get("recipe", {})
    flags += ["--march"] * bool(recipe.get("march")) + ["--causal"] * bool(recipe.get("causal"))
    for key, flag in (("subdomains", "--subdomains"), ("arm", "--arm")):
        if key in body:
            flags += [flag, str(body[key])]
    for group, key, flag in (("points", "collocation", "--collocation"), ("points", "boundary", "--boundary"),
                             ("budget", "adam", "--adam"), ("budget", "lbfgs", "--lbfgs")):  # fmt: skip
        if key in body.get(group, {}):
            flags += [flag, str(body[group][key])]
    return flags


CLI_FLAGS = {
    "params": "--param",
    "interface_points": "--interface-points",
    "arm_lbfgs": "--arm-lbfgs",
    "final_time_data": "--final-time-data",
    "side_data": "--side-data",
    "adam_lr": "--adam-lr",
    "lbfgs_lr": "--lbfgs-lr",
    "recipe.causal": "--causal",
    "recipe.eps": "--causal-eps",
    "recipe.chunks": "--causal-chunks",
    "recipe.march": "--march",
}


def _request(fields: dict) -> SolveRequest:
    """A validated SolveRequest; a bad field becomes one line naming the command-line flag."""
    from pydantic import ValidationError

    from metalic.jobs import SolveRequest, field_errors

    try:
        return SolveRequest(**fields)
    except ValidationError as exc:
        first = field_errors(exc)[0]
        name = first["field"] if first["field"] in CLI_FLAGS else first["field"].split(".")[0]
        flag = CLI_FLAGS.get(name, "--" + name.replace("_", "-")) if name != "family" else "family"
        raise UsageError(f"{flag}: {first['message']}") from None


def cmd_solve(args: argparse.Namespace) -> int:
    from metalic.jobs import run_solve_batch

    run, device = _solve_run(args)  # everything is validated before any work
    from tqdm import tqdm

    bar = tqdm(total=run.request.adam + run.request.lbfgs, disable=args.quiet, unit="it", dynamic_ncols=True,
               file=sys.stderr)  # fmt: skip
    done = {"adam": 0, "lbfgs": 0}

    def progress(p) -> None:
        bar.update(p.iteration - done[p.phase])
        done[p.phase] = p.iteration
        bar.set_description(p.phase)
        bar.set_postfix(loss=f"{p.loss[0]:.3e}")

    start = time.perf_counter()
    (result,) = run_solve_batch([run], device=device, progress=progress, compile=args.compile)
    bar.close()
    _print_result(run.request, result, time.perf_counter() - start, device)
    _write_solve_outputs(args, run.request, result)
    return 0


def _solve_run(args: argparse.Namespace):
    """The run and device of ``metalic solve``'s arguments (UsageError naming the bad flag)."""
    from metalic.jobs import Run
    from metalic.settings import resolve_device

    check_budgets(args)
    request = _request(
        {
            "family": args.family,
            "params": _parse_params(args.param),
            "mode": "sequential" if args.arm_lbfgs is not None else "single",
            "arm": args.arm,
            "arm_lbfgs": args.arm_lbfgs,
            "adam": args.adam,
            "lbfgs": args.lbfgs,
            "adam_lr": args.adam_lr,
            "lbfgs_lr": args.lbfgs_lr,
            "collocation": args.collocation,
            "boundary": args.boundary,
            "subdomains": args.subdomains,
            "final_time_data": args.final_time_data,
            "side_data": args.side_data,
            "seed": args.seed,
            "dtype": args.dtype or get_settings().dtype,
            "recipe": _recipe_fields(args),
        }
    )
    try:
        run, device = Run.explicit(request), resolve_device(args.device)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    _check_output(args.out, "--out", (".pt",))
    _check_output(args.plot, "--plot", (".png", ".pdf", ".svg"))
    return run, device


def _print_result(request, result, wall: float, device) -> None:
    outcome = result.outcome
    print(f"family      {request.family} {request.params}")
    print(f"arms        adam: {result.arm_adam}   lbfgs: {result.arm_lbfgs}")
    at = outcome["diverged_at"]
    print(f"status      {result.status}" + (f" at {at}" if at else ""))
    its = f"adam {outcome['adam_iterations']}, lbfgs {outcome['lbfgs_iterations']}"
    rejected = outcome.get("lbfgs_rejected", 0)
    guard = f", {rejected} L-BFGS step(s) undone by the guard" if rejected else ""
    print(f"iterations  {its} (stop: {outcome['lbfgs_stop']}{guard})")
    print(f"loss        {outcome['loss']:.4e}")
    print(f"rel L2      {result.rel_l2:.4e}")
    print(f"max error   {result.max_abs:.4e}")
    print(f"reward      {result.reward:.4f}")
    causal = outcome.get("causal")
    if causal:
        finished = f"finished at Adam iteration {causal['finished_at']}" if causal["finished_at"] else "not finished"
        print(f"causal      eps {causal['eps']:g} (stage {causal['stage']} of {causal['stages']}), "
              f"smallest weight {causal['min_weight']:.3f}, {finished}")  # fmt: skip
    over_time = outcome.get("error_over_time")
    if over_time:
        print("error(t)    " + _over_time_line(over_time))
    print(f"wall time   {wall:.1f} s on {device}")


def _over_time_line(over_time: dict) -> str:
    """The error over time in (at most) five windows of the reference grid's times."""
    import numpy as np

    t, e = np.asarray(over_time["t"], float), np.asarray(over_time["error"], float)
    parts = []
    for rows in np.array_split(np.arange(len(t)), min(5, len(t))):
        parts.append(f"t {t[rows[0]]:g}-{t[rows[-1]]:g}: {np.sqrt(np.nanmean(e[rows] ** 2)):.2e}")
    return "; ".join(parts)


def _write_solve_outputs(args: argparse.Namespace, request, result) -> None:
    """The model file (``--out``, written atomically) and the figure (``--plot``)."""
    if args.out is not None:
        tmp = args.out.with_suffix(".pt.tmp")
        tmp.write_bytes(result.model)
        tmp.replace(args.out)
        print(f"model       {args.out}")
    if args.plot is not None:
        from metalic.families import get_family
        from metalic.jobs import read_solution
        from metalic.plotting import plot_solution_npz

        family = get_family(request.family)
        title = f"{family.name} {request.params}  arm {result.arm_adam}  rel L2 {result.rel_l2:.2e}"
        plot_solution_npz(
            family, family.decomposition(request.subdomains), read_solution(result.solution), args.plot, title
        )
        print(f"figure      {args.plot}")


def one_line(exc: Exception) -> str:
    """A validation error (pydantic's or a ValueError) as one readable line."""
    from pydantic import ValidationError

    from metalic.jobs import describe_validation_error

    return describe_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)


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


def check_settings() -> None:
    """The ``METALIC_*`` environment, read once up front: a bad value is one line naming the variable."""
    from pydantic import ValidationError

    from metalic.settings import Settings

    try:
        Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "METALIC_" + str(first["loc"][0]).upper() if first["loc"] else "METALIC_*"
        raise UsageError(f"{name}: {first['msg']}") from None


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser, handlers = _build_parser()
        args = parser.parse_args(argv)
        check_settings()
        return handlers[args.command](args)
    except UsageError as exc:
        print(f"metalic: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    # ``python -m metalic.cli``: run the imported module's ``main``, so that the service's commands
    # (which import ``metalic.cli``) raise the same UsageError this ``main`` catches.
    from metalic.cli import main as imported_main

    sys.exit(imported_main())
