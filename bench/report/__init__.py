"""The outputs of a run, split by what they render.

- `derived`: the ratios and targets computed from the raw results.
- `tables`: number formatting and Markdown tables.
- `document`: docs/benchmarks.md as a whole, its head and tail.
- `latency_sections`, `cost_sections`: the Markdown sections on results.
- `plots`: the PNG plots (matplotlib).
- `files`: `write`, which writes the JSON, the plots and the Markdown.
"""
