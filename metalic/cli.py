"""Command line: ``metalic families | solve | predict | campaign | serve | token | db | dispatcher | worker``.

Bad input prints one line ``metalic: error: ...`` and exits with code 2 before anything is
trained or written.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
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


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="metalic", description="Multi-domain PINNs with meta-learned interface conditions.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
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
    c.add_argument("--device", default=None, help="(in-process runs) auto, cpu, cuda")
    c.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    c.add_argument("--out", type=Path, required=True, help="folder for rounds.csv/json, snapshots, figures")
    c.add_argument("--resume", action="store_true", help="continue the campaign that writes to --out")
    c.add_argument("--max-batch", type=int, default=None, help="runs per training batch (default: settings)")
    c.add_argument("--inline", action="store_true", help="train in this process instead of on Ray actors")
    c.add_argument("--quiet", action="store_true")

    db = sub.add_parser("db", help="the service's database: schema migrations")
    dbs = db.add_subparsers(dest="db_command", required=True, parser_class=_Parser)
    up = dbs.add_parser("upgrade", help="apply the migrations (METALIC_DATABASE_URL, default the embedded SQLite)")
    up.add_argument("--revision", default="head")
    dbs.add_parser("current", help="print the database's revision and the newest one")

    d = sub.add_parser("dispatcher", help="pack queued tasks into batches on the Ray trainers (runs until stopped)")
    d.add_argument("--max-batch", type=int, default=None, help="runs per batch (default 8 on CPU, 256 on a GPU)")
    d.add_argument("--inline", action="store_true", help="train in this process (no Ray)")
    d.add_argument("--device", default="auto", help="--inline only: auto, cpu, cuda")

    sv = sub.add_parser("serve", help="the whole service: migrate, Ray, dispatcher and the REST API")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--workers", type=int, default=None, help="CPU trainer actors when there is no GPU (default 1)")
    sv.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="which trainers to start")
    sv.add_argument("--max-batch", type=int, default=None, help="runs per batch (default 8 on CPU, 256 on a GPU)")
    sv.add_argument(
        "--ray-head",
        type=int,
        default=None,
        metavar="PORT",
        help="start a Ray head node on PORT that GPU machines join with `metalic worker`",
    )

    tk = sub.add_parser("token", help="API bearer tokens")
    tks = tk.add_subparsers(dest="token_command", required=True, parser_class=_Parser)
    tc = tks.add_parser("create", help="create a token and print it (once)")
    tc.add_argument("--role", required=True, choices=["user", "admin"])
    tc.add_argument("--name", default=None, help="whose tasks these are (default: a generated name)")
    tr = tks.add_parser("revoke", help="revoke every token of a name, or one token by id")
    tr.add_argument("name_or_id")
    tks.add_parser("list", help="the tokens (names, roles, ids; never the tokens themselves)")

    w = sub.add_parser("worker", help="join this machine (its GPUs) to the metalic Ray cluster")
    w.add_argument("--address", default=None, help="the Ray head, host:port (default METALIC_RAY_ADDRESS)")
    w.add_argument("--num-gpus", type=int, default=None, help="GPUs to offer (default: all this machine has)")
    w.add_argument("--check", action="store_true", help="only check that the store is reachable, then exit")

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


CLI_FLAGS = {
    "params": "--param",
    "interface_points": "--interface-points",
    "arm_lbfgs": "--arm-lbfgs",
    "final_time_data": "--final-time-data",
    "side_data": "--side-data",
    "adam_lr": "--adam-lr",
    "lbfgs_lr": "--lbfgs-lr",
}


def _request(fields: dict) -> SolveRequest:
    """A validated SolveRequest; a bad field becomes one line naming the command-line flag."""
    from pydantic import ValidationError

    from metalic.jobs import SolveRequest, field_errors

    try:
        return SolveRequest(**fields)
    except ValidationError as exc:
        first = field_errors(exc)[0]
        name = first["field"].split(".")[0]
        flag = CLI_FLAGS.get(name, "--" + name.replace("_", "-")) if name != "family" else "family"
        raise UsageError(f"{flag}: {first['message']}") from None


def cmd_solve(args: argparse.Namespace) -> int:
    from metalic.conditions import arm_label
    from metalic.jobs import Training, read_solution, run_solve_batch
    from metalic.settings import resolve_device

    # ---- validate everything before any work ---------------------------------------------------
    _check_budgets(args)
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
        }
    )
    try:
        training = Training.explicit(request)
        device = resolve_device(args.device)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    _check_output(args.out, "--out", (".pt",))
    _check_output(args.plot, "--plot", (".png", ".pdf", ".svg"))

    from tqdm import tqdm

    total = request.adam + request.lbfgs
    bar = tqdm(total=total, disable=args.quiet, unit="it", dynamic_ncols=True, file=sys.stderr)
    done = {"adam": 0, "lbfgs": 0}

    def progress(p) -> None:
        bar.update(p.iteration - done[p.phase])
        done[p.phase] = p.iteration
        bar.set_description(p.phase)
        bar.set_postfix(loss=f"{p.loss[0]:.3e}")

    start = time.perf_counter()
    (result,) = run_solve_batch([training], device=device, progress=progress, compile=args.compile)
    bar.close()
    wall = time.perf_counter() - start
    outcome = result.outcome
    print(f"family      {request.family} {request.params}")
    print(f"arms        adam: {arm_label(result.arm_adam)}   lbfgs: {arm_label(result.arm_lbfgs)}")
    at = outcome["diverged_at"]
    print(f"status      {result.status}" + (f" at {at}" if at else ""))
    its = f"adam {outcome['adam_iterations']}, lbfgs {outcome['lbfgs_iterations']}"
    print(f"iterations  {its} (stop: {outcome['lbfgs_stop']})")
    print(f"loss        {outcome['loss']:.4e}")
    print(f"rel L2      {result.rel_l2:.4e}")
    print(f"max error   {result.max_abs:.4e}")
    print(f"reward      {result.reward:.4f}")
    print(f"wall time   {wall:.1f} s on {device}")
    if args.out is not None:
        tmp = args.out.with_suffix(".pt.tmp")
        tmp.write_bytes(result.model)
        tmp.replace(args.out)
        print(f"model       {args.out}")
    if args.plot is not None:
        from metalic.families import get_family
        from metalic.plotting import plot_solution_npz

        family = get_family(request.family)
        title = f"{family.name} {request.params}  arm {arm_label(result.arm_adam)}  rel L2 {result.rel_l2:.2e}"
        plot_solution_npz(
            family, family.decomposition(request.subdomains), read_solution(result.solution), args.plot, title
        )
        print(f"figure      {args.plot}")
    return 0


def _open_store(create: bool = True):
    """The settings' store, with its schema checked (an empty one is created when ``create``)."""
    from metalic.store import SchemaError, open_store

    store = open_store()
    try:
        store.ensure_schema() if create else store.check_schema()
    except SchemaError as exc:
        raise UsageError(str(exc)) from None
    except Exception as exc:  # unreachable server, bad URL, ...
        raise UsageError(f"cannot open the database: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    return store


def _dispatcher(store, max_batch: int | None, inline: bool, device: str = "auto", exclusive: bool = True):
    """A dispatcher on this store with Ray trainers (local Ray, or METALIC_RAY_ADDRESS), or one
    thread of this process with ``inline``."""
    from workers.dispatcher import Dispatcher

    settings = get_settings()
    if inline:
        from workers.executors import InlineExecutor

        executor = InlineExecutor(store, settings, device, max_batch)
    else:
        from workers.cluster import connect
        from workers.executors import RayExecutor

        connect(settings.ray_address or None)
        executor = RayExecutor(store.url, settings, max_batch)
    try:
        return Dispatcher(store, executor, settings, max_batch, exclusive=exclusive)
    except Exception:
        executor.shutdown()
        raise


def cmd_campaign(args: argparse.Namespace) -> int:
    import json

    from metalic.bandit.campaign import CampaignConfig, summarise, write_outputs
    from metalic.pinn.problem import PinnConfig
    from metalic.pinn.trainer import TrainConfig

    _check_budgets(args)
    if args.max_batch is not None and args.max_batch < 1:
        raise UsageError(f"--max-batch must be at least 1, got {args.max_batch}")
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
            device=args.device,
            dtype=args.dtype,
        )
        config.validate()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError too
        raise UsageError(_one_line(exc)) from None
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out}: exists and is not a folder")
    if not args.out.parent.exists():
        raise UsageError(f"--out {args.out}: folder {args.out.parent} does not exist")

    from workers import campaigns
    from workers.dispatcher import DispatcherBusy

    store = _open_store()
    name = str(args.out.resolve())
    camp = campaigns.find(store, name)
    if camp is not None and not args.resume:
        raise UsageError(f"a campaign already writes to {args.out} ({camp.state}): add --resume to continue it")
    if camp is None and args.resume:
        raise UsageError(f"no campaign writes to {args.out}: nothing to resume")
    if camp is None:
        camp = campaigns.create(store, config, name=name)
    config = CampaignConfig.from_dict(camp.config)  # a resumed campaign keeps its own settings

    from tqdm import tqdm

    try:
        dispatcher = _dispatcher(store, args.max_batch, args.inline)
    except DispatcherBusy:
        dispatcher = None  # a running service advances the campaign; follow it
    bar = tqdm(total=camp.steps, initial=camp.step, disable=args.quiet, unit="step", file=sys.stderr)

    def finished() -> bool:
        now = campaigns.get(store, camp.id)
        bar.update(now.step - bar.n)
        return now.state != "running"

    try:
        if dispatcher is not None:
            dispatcher.run(until=finished)
        else:
            while not finished():
                time.sleep(get_settings().poll_seconds)
    finally:
        bar.close()
        if dispatcher is not None:
            dispatcher.stop()
    camp = campaigns.get(store, camp.id)
    if camp.state != "succeeded":
        print(f"metalic: campaign {camp.state}: {camp.error}", file=sys.stderr)
        return 1
    args.out.mkdir(exist_ok=True)
    rows = campaigns.rows(store, camp.id)
    write_outputs(rows, campaigns.engines(store, camp.id), args.out)
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


def _one_line(exc: Exception) -> str:
    from pydantic import ValidationError

    from metalic.jobs import describe_validation_error

    return describe_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)


def cmd_db(args: argparse.Namespace) -> int:
    from metalic.store import open_store
    from metalic.store.db import _safe_url, head_revision

    store = open_store()
    try:
        if args.db_command == "upgrade":
            store.upgrade(args.revision)
        current = store.current_revision()
    except Exception as exc:
        raise UsageError(f"cannot migrate the database: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    print(f"database  {_safe_url(store.url)}")
    print(f"revision  {current or 'none (empty)'} (newest: {head_revision()})")
    return 0


def cmd_dispatcher(args: argparse.Namespace) -> int:
    import signal

    from workers.dispatcher import DispatcherBusy

    if args.max_batch is not None and args.max_batch < 1:
        raise UsageError(f"--max-batch must be at least 1, got {args.max_batch}")
    store = _open_store(create=False)
    try:
        dispatcher = _dispatcher(store, args.max_batch, args.inline, args.device)
    except DispatcherBusy as exc:
        raise UsageError(str(exc)) from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None

    def stop(signum, frame) -> None:
        dispatcher._stopping.set()
        dispatcher.wake.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"metalic dispatcher {dispatcher.id} on {len(dispatcher.executor.slots)} trainer(s)", file=sys.stderr)
    dispatcher.run()
    dispatcher.stop(drain=get_settings().lease_seconds)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    for flag, value in (("--workers", args.workers), ("--max-batch", args.max_batch)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be 1-65535, got {args.port}")
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from metalic.store import open_store

    try:
        open_store().upgrade()  # serve migrates; a database it cannot reach is one line here
    except Exception as exc:
        raise UsageError(f"cannot migrate the database: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    from api.serve import serve

    return serve(args.host, args.port, args.workers, args.device, args.max_batch, args.ray_head)


def cmd_token(args: argparse.Namespace) -> int:
    import secrets

    from metalic.store import tokens as token_store

    store = _open_store()
    if args.token_command == "create":
        name = args.name or f"{args.role}-{secrets.token_hex(3)}"
        try:
            token, row = token_store.create(store, name, args.role)
        except ValueError as exc:
            raise UsageError(f"--name: {exc}") from None
        print(token)
        print(f"token {row.id} for {name!r} ({args.role}); it is not shown again", file=sys.stderr)
        return 0
    if args.token_command == "revoke":
        n = token_store.revoke(store, args.name_or_id)
        if n == 0:
            raise UsageError(f"no live token named or numbered {args.name_or_id!r}")
        print(f"revoked {n} token(s)")
        return 0
    from sqlalchemy import select

    from metalic.store.models import Token

    with store.read() as s:
        for t in s.scalars(select(Token).order_by(Token.id)).all():
            state = f"revoked {t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "live"
            print(f"{t.id:5d}  {t.name:24s} {t.role:6s} created {t.created_at:%Y-%m-%d %H:%M}  {state}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    import os
    import shutil

    address = args.address or get_settings().ray_address
    _open_store(create=False)  # reachable and at the right schema: trainers write there
    print("store     reachable, schema current", file=sys.stderr)
    if args.check:
        return 0
    if not address:
        raise UsageError("--address (or METALIC_RAY_ADDRESS) must name the Ray head, host:port")
    ray_cli = shutil.which("ray")
    if ray_cli is None:
        raise UsageError("the ray command is not installed (pip install 'metalic[service]')")
    import torch

    gpus = args.num_gpus if args.num_gpus is not None else torch.cuda.device_count()
    command = [ray_cli, "start", f"--address={address}", f"--num-gpus={gpus}", "--block"]
    print("starting  " + " ".join(command), file=sys.stderr)
    os.execv(ray_cli, command)
    return 0  # not reached


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
        if args.command == "db":
            return cmd_db(args)
        if args.command == "dispatcher":
            return cmd_dispatcher(args)
        if args.command == "worker":
            return cmd_worker(args)
        if args.command == "serve":
            return cmd_serve(args)
        if args.command == "token":
            return cmd_token(args)
        return cmd_predict(args)
    except UsageError as exc:
        print(f"metalic: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
