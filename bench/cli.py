"""`python -m bench`: push vs polling latency, saturation, capacity and floors, on this machine.

Run `python -m bench` from the repository root (full, ~15 minutes) or
`--quick` (a smoke run under two minutes). It starts a private Redis and
`pushskip serve` processes on loopback unless given --url / --redis-url, and
writes bench/results/<date>.json, docs/benchmarks.md and docs/bench-*.png
under --out. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from bench.harness import UI, BenchConfig
from bench.procs import REPO_ROOT
from bench.report.files import write as write_report
from bench.runner import PHASES, run_all
from pushskip.heap import HEAP


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help="small numbers, a few seconds per phase (a smoke test)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write bench/results/, docs/benchmarks.md and docs/*.png "
        "(default: the repository for a full run, a new temp dir for --quick)",
    )
    parser.add_argument(
        "--url",
        default=None,
        help="benchmark this running app (http://127.0.0.1:PORT) instead of "
        "starting one; loopback only",
    )
    parser.add_argument(
        "--redis-url",
        default=None,
        help="the app's Redis (needed with --url for direct re-pairing, "
        "command counts and the micro-benchmark)",
    )
    parser.add_argument(
        "--app-pid",
        type=int,
        default=None,
        help="with --url: the app's pid, to read its RSS and CPU",
    )
    parser.add_argument(
        "--secret",
        default=os.environ.get("PUSHSKIP_BENCH_SECRET"),
        help="PUSHSKIP_SECRET for the apps the bench starts (default: random)",
    )
    parser.add_argument(
        "--phases",
        default=None,
        help=f"comma-separated subset of: {','.join(PHASES)}",
    )
    parser.add_argument(
        "--app-log-level",
        default="INFO",
        help="--log-level of the app processes (default INFO, as `serve`)",
    )
    parser.add_argument(
        "--sat-rates",
        default=None,
        metavar="R1,R2,...",
        help="the saturation steps (skips/s), instead of the default ladder",
    )
    parser.add_argument(
        "--app-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the app processes only (repeatable), e.g. "
        "PYTHONPATH=DIR to try a library in the app alone",
    )
    parser.add_argument(
        "--app-redis-pool",
        type=int,
        default=None,
        metavar="N",
        help="append ?max_connections=N to the apps' REDIS_URL (redis-py's "
        "asyncio pool refuses a command beyond 100 in flight by default)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each phase, wait up to this long for the other processes "
        "on the machine to go quiet (< 15%% of a core)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument(
        "--keep-workdir",
        action="store_true",
        help="keep the temp dir with server logs and the full profile",
    )
    args = parser.parse_args(argv)
    args.raw_argv = list(argv)
    for item in args.app_env:
        if "=" not in item:
            parser.error(f"--app-env wants NAME=VALUE, got {item!r}")
    for name in ("url", "redis_url"):
        value = getattr(args, name)
        if value and not _loopback(value):
            parser.error(
                f"--{name.replace('_', '-')} must point at this machine (loopback or unix)"
            )
    return args


def _loopback(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return True
    return (parts.hostname or "") in ("localhost", "::1") or (parts.hostname or "").startswith(
        "127."
    )


def default_out(quick: bool) -> Path:
    if quick:
        return Path(tempfile.mkdtemp(prefix="pushskip-bench-quick-"))
    if (REPO_ROOT / "pyproject.toml").exists():
        return REPO_ROOT
    return Path.cwd()


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str]) -> int:
    args = parse_args(list(argv))
    cfg = BenchConfig.quick_config() if args.quick else BenchConfig()
    if args.sat_rates:
        cfg.sat_rates = tuple(float(r) for r in args.sat_rates.split(","))
    out = args.out or default_out(args.quick)
    # A SIGTERM unwinds like Ctrl-C, so every server the bench started is stopped.
    signal.signal(signal.SIGTERM, _terminate)
    show = not args.no_progress and sys.stderr.isatty()
    # The driver paces the load; its collections would bunch the skips it sends.
    HEAP.settle()
    with UI(show) as ui:
        ui.log(f"bench ({'quick' if args.quick else 'full'}): writing to {out}")
        results = asyncio.run(run_all(cfg, args, ui))
        paths = write_report(results, out, plots=not args.no_plots)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    if results["errors"]:
        print(f"phases that failed: {', '.join(results['errors'])}", file=sys.stderr)
        return 1
    return 0
