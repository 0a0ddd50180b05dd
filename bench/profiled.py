"""`pushskip serve` under pyinstrument: `python -m bench.profiled OUT.json -- serve ...`.

The profiler samples only between SIGUSR1 (start) and SIGUSR2 (stop, write),
so session set-up and socket connects do not dilute the profile. The summary
written to OUT.json is what `report.py` shows: self time by function and by
package, and inclusive time of the hot functions; the full tree goes to
OUT.txt next to it.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

SAMPLE_INTERVAL_S = 0.0005


def package_of(path: str | None) -> str:
    """A short owner for a file: the site-packages package, pushskip, or stdlib:<module>."""
    if not path:
        return "<native>"
    p = path.replace("\\", "/")
    if "/site-packages/" in p:
        return p.split("/site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if "/pushskip/" in p:
        return "pushskip"
    if "/lib/python3" in p:
        rest = p.split("/lib/python3", 1)[1].split("/", 2)
        if len(rest) > 1:
            return "stdlib:" + rest[1].removesuffix(".py")
    return p.rsplit("/", 1)[-1]


def summarize(root: Any, top: int = 25) -> dict[str, Any]:
    total = root.time if root is not None else 0.0
    self_by_fn: dict[tuple[str, str], float] = {}
    self_by_pkg: dict[str, float] = {}
    incl_by_fn: dict[tuple[str, str], float] = {}

    def walk(frame: Any, on_stack: frozenset[tuple[str, str]]) -> None:
        key = (frame.function or "?", f"{frame.file_path_short or frame.file_path}:{frame.line_no}")
        if not frame.is_synthetic:
            self_time = frame.total_self_time
            pkg = package_of(frame.file_path)
            # The event loop's wait for I/O is idle time, not work.
            if (
                frame.function in ("select", "poll") and "selectors" in (frame.file_path or "")
            ) or frame.function == "epoll.poll":
                pkg = "idle (epoll wait)"
            self_by_fn[key] = self_by_fn.get(key, 0.0) + self_time
            self_by_pkg[pkg] = self_by_pkg.get(pkg, 0.0) + self_time
            if key not in on_stack:
                incl_by_fn[key] = incl_by_fn.get(key, 0.0) + frame.time
                on_stack = on_stack | {key}
        for child in frame.children:
            walk(child, on_stack)

    if root is not None:
        sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
        walk(root, frozenset())

    def rows(d: dict[Any, float]) -> list[dict[str, Any]]:
        items = sorted(d.items(), key=lambda kv: kv[1], reverse=True)[:top]
        out = []
        for k, v in items:
            name, where = k if isinstance(k, tuple) else (k, "")
            out.append(
                {
                    "name": name,
                    "where": where,
                    "seconds": round(v, 3),
                    "pct": round(100 * v / total, 1) if total else 0.0,
                }
            )
        return out

    pushskip_incl = {k: v for k, v in incl_by_fn.items() if "pushskip" in k[1]}
    return {
        "sampled_s": round(total, 3),
        "self_by_package": rows(self_by_pkg),
        "self_by_function": rows(self_by_fn),
        "inclusive_pushskip": rows(
            pushskip_incl,
        ),
    }


def main() -> None:
    out = Path(sys.argv[1])
    serve_argv = sys.argv[3:] if sys.argv[2] == "--" else sys.argv[2:]
    from pyinstrument import Profiler

    profiler = Profiler(interval=SAMPLE_INTERVAL_S, async_mode="disabled")
    state = {"started": 0.0}

    def start(signum: int, frame: Any) -> None:
        if not profiler.is_running:
            state["started"] = time.monotonic()
            profiler.start()

    def stop(signum: int, frame: Any) -> None:
        if not profiler.is_running:
            return
        session = profiler.stop()
        summary = summarize(session.root_frame())
        summary["wall_s"] = round(time.monotonic() - state["started"], 3)
        summary["interval_s"] = SAMPLE_INTERVAL_S
        out.write_text(json.dumps(summary, indent=1))
        out.with_suffix(".txt").write_text(
            profiler.output_text(unicode=False, color=False, show_all=False)
        )
        session.save(str(out.with_suffix(".pyisession")))  # `pyinstrument --load` renders it

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    from pushskip.cli import main as cli_main

    raise SystemExit(cli_main(serve_argv))


if __name__ == "__main__":
    main()
