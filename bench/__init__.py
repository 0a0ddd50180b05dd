"""The pushskip benchmark: `python -m bench`, run from the repository root.

Not part of the installed package: the runtime (`pushskip/`) never imports it.
`cli` parses the options and writes the report, `runner` runs the phases in
order on the `harness.Bench`; each phase lives in its own module (`micro`,
`floors`, `latency`, `saturation`, `capacity`); `listener`, `floorapp` and
`profiled` are the child processes it starts; `report` turns the results
into bench/results/<date>.json, docs/benchmarks.md and the plots. `floorcycle`
is not a phase: it stands in for pushskip in the peers' side-by-side run.
"""
