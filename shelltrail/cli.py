"""The ``shelltrail`` command: server and maintenance verbs."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from shelltrail import __version__, bootstrap
from shelltrail.config import ConfigError, Settings
from shelltrail.eventstore import DatabaseUnavailable
from shelltrail.eventstore.audit import verify_all
from shelltrail.eventstore.replay import ReplayError, check, rebuild
from shelltrail.http.auth import TokenConfigError
from shelltrail.logs import configure_logging


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"shelltrail: {exc}", file=sys.stderr)
        return 2
    configure_logging(fmt=settings.log_format, level=settings.log_level)
    action: Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]] = args.action
    try:
        return asyncio.run(action(settings, args))
    except (DatabaseUnavailable, TokenConfigError) as exc:
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

    replay = verbs.add_parser("replay", help="rebuild the projection tables from the event log")
    replay.add_argument(
        "--check",
        action="store_true",
        help="rebuild into scratch tables, compare with the live ones, exit 1 on a difference",
    )
    replay.set_defaults(action=_replay)

    audit = verbs.add_parser("audit", help="check the integrity of the event log")
    audit_verbs = audit.add_subparsers(dest="audit_verb", required=True, metavar="VERB")
    verify = audit_verbs.add_parser("verify", help="recompute every stream's hash chain")
    verify.set_defaults(action=_audit_verify)
    return parser


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
