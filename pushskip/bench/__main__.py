"""`python -m pushskip.bench ...`: the same as `pushskip bench ...`."""

import logging
import sys

from pushskip.bench import main

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
raise SystemExit(main(sys.argv[1:]))
