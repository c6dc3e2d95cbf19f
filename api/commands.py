"""The service's command on the API's side: ``metalic serve``. Registered with the CLI through the
``metalic.commands`` entry point (``register``)."""

from __future__ import annotations

import argparse

from metalic.cli import UsageError


def register(sub) -> dict:
    """Add ``serve`` to the CLI's subparsers; returns its handler."""
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
    return {"serve": cmd_serve}


def cmd_serve(args: argparse.Namespace) -> int:
    for flag, value in (("--workers", args.workers), ("--max-batch", args.max_batch)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be 1-65535, got {args.port}")
    import logging

    import migrations
    from metalic.store import open_store

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        migrations.upgrade(open_store())  # serve migrates; a database it cannot reach is one line here
    except Exception as exc:
        raise UsageError(f"cannot migrate the database: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    from api.dashboard.session import SecretKeyError
    from api.serve import AdminTokenError, serve

    try:
        return serve(args.host, args.port, args.workers, args.device, args.max_batch, args.ray_head)
    except (AdminTokenError, SecretKeyError) as exc:
        raise UsageError(str(exc)) from None
