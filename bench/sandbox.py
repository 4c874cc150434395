"""Sandbox speed: bare ``python3 -c`` vs a cold one-shot nsjail vs the warm pool, in one run.

    .venv/bin/python bench/sandbox.py            # full run (~1 min on 2 cores)
    .venv/bin/python bench/sandbox.py --quick    # smoke test
    .venv/bin/python bench/sandbox.py -o workers=4 -o light_workers=0

Prints executions/s of ``print(1+1)`` (as many in flight as the pool takes), the median
latency of one call at a time, the median latency of a sympy snippet, the ratios, and whether
the issue's targets (>= 300 exec/s, p50 added latency <= 3 ms, sympy p50 <= 15 ms) were met.
The machine's load average is printed too: other work on the same cores moves every figure.
"""

from __future__ import annotations

import os
import sys

from simpletir.plugins.tools.python_sandbox.cli import main

if __name__ == "__main__":
    print(f"load average before: {os.getloadavg()}, cores: {os.cpu_count()}")
    code = main(["bench", *sys.argv[1:]])
    print(f"load average after: {os.getloadavg()}")
    sys.exit(code)
