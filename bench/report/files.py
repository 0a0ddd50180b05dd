"""Writing a run's outputs: bench/results/<date>.json, docs/benchmarks.md and the plots.

docs/benchmarks.md is generated whole, except the part between the
`<!-- notes:start -->` and `<!-- notes:end -->` markers, which is carried
over from the existing file: that is where people write their analysis.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from bench.report.derived import ratios, targets
from bench.report.document import NOTES_END, NOTES_START, markdown
from bench.report.plots import write_plots

DEFAULT_NOTES = "_No notes yet: write the analysis of a run here; regenerating keeps it._"


def write(results: dict[str, Any], out: Path, *, plots: bool = True) -> dict[str, Path]:
    """Add the ratios and targets to `results`, write every output under `out`; their paths."""
    results["ratios"] = ratios(results)
    results["targets"] = targets(results)
    day = dt.date.today().isoformat()
    suffix = "-quick" if results.get("mode") == "quick" else ""
    json_path = out / "bench" / "results" / f"{day}{suffix}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    docs = out / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {"json": json_path}
    pngs: dict[str, Path] = {}
    if plots:
        try:
            pngs = write_plots(results, docs)
        except ImportError as exc:  # matplotlib missing: the numbers still stand
            results.setdefault("errors", {})["plots"] = repr(exc)
    paths.update({f"plot {k}": v for k, v in pngs.items()})
    results["outputs"] = {k: str(v.relative_to(out)) for k, v in paths.items()}
    json_path.write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")
    md_path = docs / "benchmarks.md"
    notes = _existing_notes(md_path)
    md_path.write_text(markdown(results, json_path.relative_to(out), pngs, notes))
    paths["markdown"] = md_path
    return paths


def _existing_notes(path: Path) -> str:
    if not path.exists():
        return DEFAULT_NOTES
    text = path.read_text()
    if NOTES_START in text and NOTES_END in text:
        return text.split(NOTES_START, 1)[1].split(NOTES_END, 1)[0].strip("\n")
    return DEFAULT_NOTES
