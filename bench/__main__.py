"""`python -m bench ...`: run the benchmark (options: `python -m bench --help`)."""

from __future__ import annotations

import logging
import sys

from bench.cli import main

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
raise SystemExit(main(sys.argv[1:]))
