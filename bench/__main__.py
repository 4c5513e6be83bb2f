"""``python -m bench``: run the event-store benchmarks and print one line per result.

Each line gives the median figure, the median of its raw baseline measured in the same run
(in turns with it), the median ratio of paired runs, and the target. Missing a target is
reported, not an error: the exit status is 0 unless a benchmark could not run at all.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from bench import (
    append_chunks,
    append_small,
    http_follow,
    http_reads,
    http_runs,
    ingest,
    load,
    memory,
    replay,
    runs,
)
from bench.db import URL_VARIABLE, Server, bench_server
from bench.report import Result
from shelltrail.logs import configure_logging

Benchmark = Callable[[Server, argparse.Namespace], Awaitable[Result | list[Result]]]

BENCHMARKS: dict[str, Benchmark] = {
    "append-small": lambda server, args: append_small.run(
        server,
        repeat=args.repeat or 5,
        streams=args.small_streams,
        events_per_stream=args.small_events,
    ),
    "append-chunks": lambda server, args: append_chunks.run(
        server, repeat=args.repeat or 5, total_mib=args.chunk_mib, streams=args.chunk_streams
    ),
    "replay": lambda server, args: replay.run(server, repeat=args.repeat or 3, events=args.events),
    "runs": lambda server, args: runs.run(server, repeat=args.repeat or 3, runs=args.runs),
    "ingest": lambda server, args: ingest.run(server, repeat=args.repeat or 3, mib=args.ingest_mib),
    "http-runs": lambda server, args: http_runs.run(
        server, repeat=args.repeat or 5, runs=args.runs
    ),
    "http-reads": lambda server, args: http_reads.run(
        server, repeat=args.repeat or 3, output_mib=args.http_output_mib
    ),
    "http-follow": lambda server, args: http_follow.run(server, repeat=args.repeat or 3),
    "rss-flood": lambda server, args: memory.rss_flood(
        server, repeat=args.repeat or 3, mib=args.flood_mib
    ),
    "sleepers": lambda server, args: memory.sleepers(
        server, repeat=args.repeat or 3, runs=args.sleepers
    ),
    "load-mixed": lambda server, args: load.mixed(server, seconds=args.load_seconds),
    "load-flood": lambda server, args: load.flood(
        server, repeat=args.repeat or 3, mib=args.flood_mib
    ),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--only",
        action="append",
        choices=list(BENCHMARKS),
        help="run only this benchmark (may be given more than once)",
    )
    parser.add_argument(
        "--database-url",
        help=f"admin URL of the server to use (default: ${URL_VARIABLE}, else the embedded one)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        help="runs per measurement, of which the median is reported (default: 5, replay 3)",
    )
    parser.add_argument("--events", type=int, default=1_000_000, help="replay: events in the log")
    parser.add_argument(
        "--small-streams", type=int, default=1000, help="append-small: concurrent streams"
    )
    parser.add_argument(
        "--small-events", type=int, default=30, help="append-small: events per stream"
    )
    parser.add_argument(
        "--chunk-mib", type=int, default=256, help="append-chunks: MiB of output per run"
    )
    parser.add_argument(
        "--chunk-streams", type=int, default=2, help="append-chunks: concurrent streams"
    )
    parser.add_argument("--runs", type=int, default=1000, help="runs: runs per measurement")
    parser.add_argument(
        "--ingest-mib", type=int, default=256, help="ingest: MiB printed by the one run"
    )
    parser.add_argument(
        "--http-output-mib",
        type=int,
        default=1024,
        help="http-reads: MiB of output of the big run",
    )
    parser.add_argument(
        "--flood-mib",
        type=int,
        default=1024,
        help="rss-flood, load-flood: MiB printed by the flooding run",
    )
    parser.add_argument(
        "--sleepers", type=int, default=1000, help="sleepers: concurrent `sleep 600` runs"
    )
    parser.add_argument(
        "--load-seconds", type=float, default=60.0, help="load-mixed: seconds of load"
    )
    return parser.parse_args(argv)


def source_revision() -> str:
    """The commit of the code measured, and whether shelltrail/ differs from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "shelltrail"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.rstrip()
    except (OSError, subprocess.CalledProcessError):
        return "shelltrail from outside git"
    files = [line[3:] for line in changed.splitlines()]
    if not files:
        return f"shelltrail {commit}"
    shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    return f"shelltrail {commit} with local changes to {shown}"


async def main(args: argparse.Namespace) -> int:
    names = args.only or list(BENCHMARKS)
    failed = 0
    async with bench_server(args.database_url) as server:
        print(
            f"shelltrail benchmarks, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: "
            f"{len(os.sched_getaffinity(0))} cores ({platform.machine()}), "
            f"PostgreSQL {server.version} ({server.label}), Python {platform.python_version()}, "
            f"{source_revision()}, load average {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        for name in names:
            started = time.perf_counter()
            try:
                result = await BENCHMARKS[name](server, args)
            except Exception:  # noqa: BLE001 -- report it and go on with the others
                failed += 1
                print(f"{name}: could not run", flush=True)
                traceback.print_exc()
                continue
            for one in result if isinstance(result, list) else [result]:
                print(one.line(), flush=True)
                print(one.detail(), flush=True)
            print(
                f"  ({time.perf_counter() - started:.0f} s, load average {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    return 1 if failed else 0


if __name__ == "__main__":
    configure_logging(level="WARNING")
    sys.exit(asyncio.run(main(parse_args())))
