"""The ``shelltrail`` command: server and maintenance verbs."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from shelltrail import __version__, bootstrap
from shelltrail.cli_client import (
    Verb,
    add_client_verbs,
    audit_process,
    replay_output,
    run_client_verb,
)
from shelltrail.client import ApiClient
from shelltrail.config import ConfigError, Settings
from shelltrail.eventstore import DatabaseUnavailable
from shelltrail.eventstore.audit import verify_all
from shelltrail.eventstore.lease import NodeInUse
from shelltrail.eventstore.replay import ReplayError, check, rebuild
from shelltrail.http.auth import TokenConfigError
from shelltrail.logs import configure_logging


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    client_verb = _client_verb(args)
    if client_verb is not None:
        try:
            return asyncio.run(run_client_verb(client_verb, args))
        except KeyboardInterrupt:
            return 130
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"shelltrail: {exc}", file=sys.stderr)
        return 2
    configure_logging(fmt=settings.log_format, level=settings.log_level)
    action: Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]] = args.action
    try:
        return asyncio.run(action(settings, args))
    except (DatabaseUnavailable, NodeInUse, TokenConfigError) as exc:
        print(f"shelltrail: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shelltrail",
        description="Run stored bash scripts on demand and keep a record of every run.",
    )
    parser.add_argument("--version", action="version", version=f"shelltrail {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    serve = verbs.add_parser("serve", help="apply migrations and serve the HTTP API")
    serve.set_defaults(action=_serve)

    migrate = verbs.add_parser("migrate", help="apply pending database migrations")
    migrate.set_defaults(action=_migrate)

    replay = verbs.add_parser(
        "replay",
        help="rebuild the projection tables from the event log; with a process id, print "
        "that run's output again with its original pacing (from a server)",
    )
    replay.add_argument("process", nargs="?", help="a process id: replay its output")
    replay.add_argument("--speed", type=float, default=1.0, help="with a process: 0 = no delays")
    replay.add_argument(
        "--check",
        action="store_true",
        help="rebuild into scratch tables, compare with the live ones, exit 1 on a difference",
    )
    replay.set_defaults(action=_replay)

    audit = verbs.add_parser(
        "audit",
        help="`audit verify`: recompute every stream's hash chain in the database; "
        "`audit PROCESS`: ask a server to verify one run",
    )
    audit.add_argument("target", metavar="verify|PROCESS")
    audit.set_defaults(action=_audit_verify)
    add_client_verbs(verbs)
    return parser


def _client_verb(args: argparse.Namespace) -> Verb | None:
    """The client verb to run, if this command line is one (it talks to a server)."""
    verb: Verb | None = getattr(args, "client", None)
    if verb is not None:
        return verb
    if args.verb == "replay" and args.process is not None:
        process, speed = args.process, args.speed

        async def replay(api: ApiClient, _args: argparse.Namespace) -> int:
            return await replay_output(api, process, speed)

        return replay
    if args.verb == "audit" and args.target != "verify":
        target = args.target

        async def audit(api: ApiClient, _args: argparse.Namespace) -> int:
            return await audit_process(api, target)

        return audit
    return None


async def _serve(settings: Settings, _args: argparse.Namespace) -> int:
    await bootstrap.serve(settings)
    return 0


async def _migrate(settings: Settings, _args: argparse.Namespace) -> int:
    async with bootstrap.database_url(settings) as url:
        applied = await bootstrap.migrate_database(url)
    print(f"{applied} migration(s) applied")
    return 0


async def _replay(settings: Settings, args: argparse.Namespace) -> int:
    async with bootstrap.database_url(settings) as url:
        await bootstrap.migrate_database(url)
        async with bootstrap.connection(url) as conn:
            try:
                if args.check:
                    count, differences = await check(conn)
                else:
                    count = await rebuild(conn)
                    differences = []
            except ReplayError as exc:
                print(f"shelltrail replay: stopped at {exc}", file=sys.stderr)
                return 1
    if args.check:
        for difference in differences:
            print(f"difference: {difference}")
        if differences:
            print(
                f"{len(differences)} difference(s) between the projections and the log "
                f"({count} events replayed)",
                file=sys.stderr,
            )
            return 1
        print(f"projections match the log ({count} events replayed)")
        return 0
    print(f"projections rebuilt from {count} events")
    return 0


async def _audit_verify(settings: Settings, _args: argparse.Namespace) -> int:
    async with bootstrap.database_url(settings) as url, bootstrap.connection(url) as conn:
        streams, bad = await verify_all(conn)
    for audit in bad:
        print(f"stream {audit.stream_id}: first bad event is version {audit.first_bad_version}")
    if bad:
        print(f"{len(bad)} of {streams} stream(s) fail verification", file=sys.stderr)
        return 1
    print(f"all {streams} stream(s) verified")
    return 0
