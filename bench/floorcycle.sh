#!/bin/sh
# `PUSHSKIP=$PWD/bench/floorcycle.sh ../shared/peers/side_by_side.sh`: the skip cycle's
# floor (bench/floorcycle.py) in pushskip's place. Takes `serve --host H --port P`.
cd "$(dirname "$0")/.." && exec "${PYTHON:-.venv/bin/python}" -m bench.floorcycle "$@"
