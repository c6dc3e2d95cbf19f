"""The service's commands on the workers' side: ``metalic campaign | dispatcher | worker | db |
token``. Registered with the CLI through the ``metalic.commands`` entry point (``register``)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from metalic.cli import UsageError, check_budgets, one_line, parse_eps
from metalic.settings import get_settings


def register(sub) -> dict:
    """Add this module's parsers to the CLI's subparsers; returns their handlers."""
    _campaign_parser(sub)
    _prior_parser(sub)
    db = sub.add_parser("db", help="the service's database: schema migrations")
    dbs = db.add_subparsers(dest="db_command", required=True, parser_class=type(db))
    up = dbs.add_parser("upgrade", help="apply the migrations (METALIC_DATABASE_URL, default the embedded SQLite)")
    up.add_argument("--revision", default="head")
    dbs.add_parser("current", help="print the database's revision and the newest one")

    d = sub.add_parser("dispatcher", help="pack queued tasks into batches on the Ray trainers (runs until stopped)")
    d.add_argument("--max-batch", type=int, default=None, help="runs per batch (default 8 on CPU, 256 on a GPU)")
    d.add_argument("--inline", action="store_true", help="train in this process (no Ray)")
    d.add_argument("--device", default="auto", help="--inline only: auto, cpu, cuda")

    tk = sub.add_parser("token", help="API bearer tokens")
    tks = tk.add_subparsers(dest="token_command", required=True, parser_class=type(tk))
    tc = tks.add_parser("create", help="create a token and print it (once)")
    tc.add_argument("--role", required=True, choices=["user", "admin"])
    tc.add_argument("--name", default=None, help="whose tasks these are (default: a generated name)")
    tr = tks.add_parser("revoke", help="revoke every token of a name, or one token by id")
    tr.add_argument("name_or_id")
    tks.add_parser("list", help="the tokens (names, roles, ids; never the tokens themselves)")

    w = sub.add_parser("worker", help="join this machine (its GPUs, or its CPUs) to the metalic Ray cluster")
    w.add_argument("--address", default=None, help="the Ray head, host:port (default METALIC_RAY_ADDRESS)")
    w.add_argument("--num-gpus", type=int, default=None, help="GPUs to offer (default: all this machine has)")
    w.add_argument(
        "--cpus", type=int, default=None, help="a CPU machine: offer N cores to one CPU trainer (and no GPU)"
    )
    w.add_argument("--check", action="store_true", help="only check that the store is reachable, then exit")
    return {"campaign": cmd_campaign, "prior": cmd_prior, "db": cmd_db, "dispatcher": cmd_dispatcher,
            "token": cmd_token, "worker": cmd_worker}  # fmt: skip


def _campaign_options(p, *, warmup: int, rounds: int, test: int, adam: int, lbfgs: int, batch: int, seed: int) -> None:
    """The options of a campaign (``metalic campaign``, and the one ``metalic prior build`` runs)."""
    p.add_argument("family")
    p.add_argument("--mode", default="single", help="single or sequential")
    p.add_argument("--warmup", type=int, default=warmup, help="warm-up rounds first (random arms unless --warmup-arms)")
    p.add_argument("--warmup-arms", nargs="+", default=None, metavar="ARM",
                   help="the warm-up's arms in turn instead of random ones: labels, or 'design' "
                        "(no term, each term alone, the baseline arms)")  # fmt: skip
    p.add_argument("--rounds", type=int, default=rounds, help="online rounds after the warm-up")
    p.add_argument("--test", type=int, default=test, help="held-out rounds at the best-predicted arm")
    p.add_argument("--adam", type=int, default=adam)
    p.add_argument("--lbfgs", type=int, default=lbfgs)
    p.add_argument("--batch", type=int, default=batch, help="trainings run together (K)")
    p.add_argument("--collocation", type=int, default=1000)
    p.add_argument("--boundary", type=int, default=100)
    p.add_argument("--interface-points", type=int, default=None)
    p.add_argument("--subdomains", type=int, default=None, help="N equal slabs instead of the family's split")
    p.add_argument("--ucb-schedule", default="constant", help="constant (mean + std) or gp-ucb")
    p.add_argument("--seed", type=int, default=seed)
    p.add_argument("--device", default=None, help="(in-process runs) auto, cpu, cuda")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--max-batch", type=int, default=None, help="runs per training batch (default: settings)")
    p.add_argument("--inline", action="store_true", help="train in this process instead of on Ray actors")
    p.add_argument("--quiet", action="store_true")


def _campaign_parser(sub) -> None:
    c = sub.add_parser("campaign", help="run the METALIC bandit protocol and compare heuristics")
    _campaign_options(c, warmup=5, rounds=20, test=10, adam=500, lbfgs=500, batch=4, seed=0)
    c.add_argument(
        "--heuristic",
        action="append",
        default=None,
        help="ucb, ts, random, mean, fixed:TERMS or single-domain; repeat to compare (default ucb)",
    )
    c.add_argument("--out", type=Path, required=True, help="folder for rounds.csv/json, snapshots, figures")
    c.add_argument("--resume", action="store_true", help="continue the campaign that writes to --out")
    c.add_argument(
        "--prior",
        default=None,
        help="learning engines start from this prior: its name (burgers-single-v1) or latest",
    )
    c.add_argument("--learn", action="append", default=None, metavar="BIT",
                   help="a recipe bit the bandit chooses beside the terms (causal)")  # fmt: skip
    c.add_argument("--arm-kernel", default="hamming", choices=["hamming", "additive"],
                   help="term-bit kernel: the authors' (hamming) or with per-term effects (additive)")  # fmt: skip
    c.add_argument("--causal-eps", default=None, metavar="E1,E2,...", help="eps schedule of causal runs")
    c.add_argument("--causal-chunks", type=int, default=None, help="time chunks of causal runs (32)")
    c.add_argument("--march", action="store_true", help="train the time slabs one after another")


def _prior_parser(sub) -> None:
    p = sub.add_parser("prior", help="the priors new studies start from: build one from a campaign, list them")
    ps = p.add_subparsers(dest="prior_command", required=True, parser_class=type(p))
    b = ps.add_parser("build", help="run a UCB campaign on the service path and write its prior file")
    # seed 1000 and up: the campaigns that score priors use seeds below it
    _campaign_options(b, warmup=8, rounds=24, test=8, adam=300, lbfgs=200, batch=8, seed=1000)
    b.add_argument("--resume", action="store_true", help="continue the build's campaign (same --work folder)")
    b.add_argument("--work", type=Path, default=None, help="the campaign's folder (default: a new one in home)")
    b.add_argument(
        "--into", type=Path, default=None, help="folder of the prior file (default: the package's metalic/priors/data)"
    )
    ls = ps.add_parser("list", help="the installed priors and where each came from")
    ls.add_argument("--family", default=None)


def cmd_prior(args: argparse.Namespace) -> int:
    from metalic import priors

    if args.prior_command == "list":
        found = priors.installed(args.family)
        for ref, path in sorted(found.items()):
            p = priors.read(path)
            prov = p.provenance
            made = f"{prov.get('date', '?')}  {prov.get('commit', '?')[:12]}"
            print(f"{ref:32s} {p.trainings:5d} trainings  {made}  {path}")
        if not found:
            print("no priors installed" + (f" for {args.family}" if args.family else ""))
        return 0
    return _build_prior(args)


def _build_prior(args: argparse.Namespace) -> int:
    from metalic.priors import PACKAGE_DIR
    from metalic.priors.build import from_rows
    from workers import campaigns

    args.heuristic, args.out = (
        ["ucb"],
        args.work
        or get_settings().home
        / "priors"
        / (f"{args.family}-{args.mode}-seed{args.seed}-{time.strftime('%Y%m%d-%H%M%S')}"),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    config = _campaign_config(args)
    store = open_store()
    started = time.perf_counter()
    camp = _open_campaign(store, config, args.out, args.resume)
    camp = _follow(store, camp, args)
    if camp.state != "succeeded":
        print(f"metalic: the prior's campaign {camp.state}: {camp.error}", file=sys.stderr)
        return 1
    rows = campaigns.rows(store, camp.id)
    campaign = {"id": camp.id, "name": str(args.out), "seed": args.seed, "warmup": args.warmup,
                "rounds": args.rounds, "test": args.test, "heuristic": "ucb"}  # fmt: skip
    from metalic.jobs import SolveRequest

    profile = SolveRequest(
        family=args.family, mode=args.mode, adam=args.adam, lbfgs=args.lbfgs, collocation=args.collocation,
        boundary=args.boundary, interface_points=args.interface_points, dtype=args.dtype,
    ).profile()  # fmt: skip
    try:
        prior = from_rows(
            args.family, args.mode, rows, folder=args.into or PACKAGE_DIR, profile=profile, campaign=campaign,
            seconds=time.perf_counter() - started, device=_device_words(args.device), command=_build_command(args),
        )  # fmt: skip
    except ValueError as exc:
        raise UsageError(one_line(exc)) from None
    print(f"{prior.ref}: {prior.trainings} trainings -> {prior.path}")
    return 0


def open_store(create: bool = True):
    """The settings' store, with its schema checked (an empty one is created when ``create``)."""
    import migrations
    from metalic.store import open_store as open_settings_store

    store = open_settings_store()
    try:
        migrations.ensure(store) if create else migrations.check(store)
    except migrations.SchemaError as exc:
        raise UsageError(str(exc)) from None
    except Exception as exc:  # unreachable server, bad URL, ...
        raise UsageError(f"cannot open the database: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    return store


def make_dispatcher(store, max_batch: int | None, inline: bool, device: str = "auto", exclusive: bool = True):
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


# ---- campaign ----------------------------------------------------------------------------------------
def cmd_campaign(args: argparse.Namespace) -> int:
    config = _campaign_config(args)
    store = open_store()
    camp = _open_campaign(store, config, args.out, args.resume)
    camp = _follow(store, camp, args)
    if camp.state != "succeeded":
        print(f"metalic: campaign {camp.state}: {camp.error}", file=sys.stderr)
        return 1
    _write_campaign(store, camp.id, args.out)
    return 0


def _campaign_config(args: argparse.Namespace):
    """The validated campaign of the command line (UsageError naming the bad flag)."""
    from metalic.arms import warmup_labels
    from metalic.campaign import CampaignConfig
    from metalic.pinn.causal import DEFAULT_CHUNKS, CausalSchedule
    from metalic.pinn.problem import PinnConfig
    from metalic.pinn.trainer import TrainConfig

    check_budgets(args)
    if args.max_batch is not None and args.max_batch < 1:
        raise UsageError(f"--max-batch must be at least 1, got {args.max_batch}")
    eps = getattr(args, "causal_eps", None)
    causal = CausalSchedule(eps=parse_eps(eps)) if eps else CausalSchedule()
    try:
        config = CampaignConfig(
            family=args.family,
            policies=tuple(args.heuristic or ["ucb"]),
            mode=args.mode,
            warmup=args.warmup,
            rounds=args.rounds,
            test=args.test,
            batch=args.batch,
            seed=args.seed,
            train=TrainConfig(adam=args.adam, lbfgs=args.lbfgs, causal=causal, march=getattr(args, "march", False)),
            pinn=PinnConfig(
                n_collocation=args.collocation,
                n_boundary=args.boundary,
                n_interface=args.interface_points,
                subdomains=args.subdomains,
                causal_chunks=getattr(args, "causal_chunks", None) or DEFAULT_CHUNKS,
            ),
            ucb_schedule=args.ucb_schedule,
            device=args.device,
            dtype=args.dtype,
            prior=_prior_ref(args.family, args.mode, getattr(args, "prior", None)),
            learns=tuple(getattr(args, "learn", None) or ()),
            arm_kernel=getattr(args, "arm_kernel", "hamming"),
            warmup_arms=warmup_labels(args.warmup_arms or ()),
        )
        config.validate()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError too
        raise UsageError(one_line(exc)) from None
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out}: exists and is not a folder")
    if not args.out.parent.exists():
        raise UsageError(f"--out {args.out}: folder {args.out.parent} does not exist")
    return config


def _build_command(args: argparse.Namespace) -> str:
    """The build as a command line, every option spelled out (what reproduces it)."""
    words = ["metalic", "prior", "build", args.family]
    for name in ("mode", "warmup", "rounds", "test", "adam", "lbfgs", "batch", "collocation", "boundary",
                 "interface_points", "ucb_schedule", "seed", "dtype"):  # fmt: skip
        value = getattr(args, name)
        if value is not None:
            words += [f"--{name.replace('_', '-')}", str(value)]
    if args.warmup_arms:
        words += ["--warmup-arms", *map(shlex.quote, args.warmup_arms)]
    return " ".join(words)


def _device_words(name: str | None) -> str:
    import os

    import torch

    from metalic.settings import resolve_device

    device = resolve_device(name)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({os.cpu_count()} cores, torch {torch.__version__})"


def _prior_ref(family: str, mode: str, asked: str | None) -> str | None:
    """--prior as the name of an installed prior ('latest': the newest of the family and mode)."""
    if asked != "latest":
        return asked
    from metalic import priors

    ref = priors.newest(family, mode)
    if ref is None:
        raise UsageError(f"--prior latest: no prior of {family} ({mode}) is installed")
    return ref


def _open_campaign(store, config, out: Path, resume: bool):
    """The campaign that writes to ``out``: created, or found when resuming."""
    from metalic.store import campaigns as campaign_store

    name = str(out.resolve())
    camp = campaign_store.find(store, name)
    if camp is not None and not resume:
        raise UsageError(f"a campaign already writes to {out} ({camp.state}): add --resume to continue it")
    if camp is None and resume:
        raise UsageError(f"no campaign writes to {out}: nothing to resume")
    return camp if camp is not None else campaign_store.create(store, config, name=name)


def _follow(store, camp, args: argparse.Namespace):
    """Run a dispatcher until the campaign ends (or follow a running service's); its last state."""
    from tqdm import tqdm

    from metalic.store import campaigns as campaign_store
    from workers.dispatcher import DispatcherBusy

    try:
        dispatcher = make_dispatcher(store, args.max_batch, args.inline)
    except DispatcherBusy:
        dispatcher = None  # a running service advances the campaign; follow it
    bar = tqdm(total=camp.steps, initial=camp.step, disable=args.quiet, unit="step", file=sys.stderr)

    def finished() -> bool:
        now = campaign_store.get(store, camp.id)
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
    return campaign_store.get(store, camp.id)


def _write_campaign(store, campaign_id: int, out: Path) -> None:
    from metalic.campaign import summarise, write_outputs
    from workers import campaigns

    out.mkdir(exist_ok=True)
    rows = campaigns.rows(store, campaign_id)
    write_outputs(rows, campaigns.engines(store, campaign_id), out)
    summary = summarise(rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"{'heuristic':24s} {'online acc. error':>18s} {'test mean':>10s} {'test median':>12s}")
    for s in summary:
        print(
            f"{s['heuristic']:24s} {s['online_accumulated_error']:18.4f} {s['test_mean_error']:10.3e}"
            f" {s['test_median_error']:12.3e}"
        )
        for stage in ("online", "test"):
            for flag, share in s.get(f"recipe_{stage}", {}).items():
                print(f"{'':24s} {flag} chosen in {share:.0%} of the {stage} rounds")
    print(f"outputs in {out}")


# ---- the store and the cluster --------------------------------------------------------------------
def cmd_db(args: argparse.Namespace) -> int:
    import migrations
    from metalic.store import open_store as open_settings_store

    store = open_settings_store()
    try:
        if args.db_command == "upgrade":
            migrations.upgrade(store, args.revision)
        current = migrations.current(store)
    except Exception as exc:
        raise UsageError(f"cannot migrate the database: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    print(f"database  {store.safe_url}")
    print(f"revision  {current or 'none (empty)'} (newest: {migrations.head()})")
    return 0


def cmd_dispatcher(args: argparse.Namespace) -> int:
    import signal

    from workers.dispatcher import DispatcherBusy

    if args.max_batch is not None and args.max_batch < 1:
        raise UsageError(f"--max-batch must be at least 1, got {args.max_batch}")
    store = open_store(create=False)
    try:
        dispatcher = make_dispatcher(store, args.max_batch, args.inline, args.device)
    except (DispatcherBusy, ValueError) as exc:
        raise UsageError(str(exc)) from None
    signal.signal(signal.SIGTERM, lambda signum, frame: dispatcher.request_stop())
    signal.signal(signal.SIGINT, lambda signum, frame: dispatcher.request_stop())
    print(f"metalic dispatcher {dispatcher.id} on {len(dispatcher.executor.slots)} trainer(s)", file=sys.stderr)
    dispatcher.run()
    dispatcher.stop(drain=get_settings().lease_seconds)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    import secrets

    from metalic.store import tokens as token_store

    store = open_store()
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
    for t in token_store.list_tokens(store):
        state = f"revoked {t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "live"
        print(f"{t.id:5d}  {t.name:24s} {t.role:6s} created {t.created_at:%Y-%m-%d %H:%M}  {state}")
    return 0


def _offer(args: argparse.Namespace) -> list[str]:
    """What this machine offers the cluster: its GPUs, or with ``--cpus N`` N cores for one CPU
    trainer (the ``metalic_cpu_trainer`` resource the executor places CPU trainers on)."""
    import torch

    from workers.executors import JOINED_CPU

    if args.cpus is not None:
        if args.cpus < 1:
            raise UsageError(f"--cpus must be at least 1, got {args.cpus}")
        gpus = args.num_gpus or 0
        return [f"--num-cpus={args.cpus}", f"--num-gpus={gpus}", f"--resources={json.dumps({JOINED_CPU: 1})}"]
    gpus = args.num_gpus if args.num_gpus is not None else torch.cuda.device_count()
    return [f"--num-gpus={gpus}"]


def cmd_worker(args: argparse.Namespace) -> int:
    import os

    address = args.address or get_settings().ray_address
    offer = _offer(args)  # bad flags are refused before anything else
    open_store(create=False)  # reachable and at the right schema: trainers write there
    print("store     reachable, schema current", file=sys.stderr)
    if args.check:
        return 0
    if not address:
        raise UsageError("--address (or METALIC_RAY_ADDRESS) must name the Ray head, host:port")
    from workers.cluster import ray_command

    ray_cli = ray_command()
    if ray_cli is None:
        raise UsageError("the ray command is not installed (pip install 'metalic[service]')")
    command = [ray_cli, "start", f"--address={address}", *offer, "--block"]
    print("starting  " + " ".join(command), file=sys.stderr)
    os.execv(ray_cli, command)
    return 0  # not reached
