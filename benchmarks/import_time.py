#!/usr/bin/env python3
"""How long `import tunelab` takes in a fresh process, beside `import torch` for scale (docs/benchmarks.md).

usage: python benchmarks/import_time.py [--runs N]
The issue's bar: under half a second on 2 cores. torch and diffusers load with the first API call, not here.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def seconds(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    runs = parser.parse_args().runs
    for label, code in (("python -c pass", "pass"), ("import tunelab", "import tunelab"),
                        ("import tunelab + first API attribute", "import tunelab; tunelab.train"),
                        ("import torch", "import torch")):
        times = [seconds(code) for _ in range(runs)]
        print(f"{label:40s} median {statistics.median(times):.3f} s  (min {min(times):.3f}, max {max(times):.3f}, {runs} runs)")


if __name__ == "__main__":
    main()
