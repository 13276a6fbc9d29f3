#!/usr/bin/env python3
"""GPU time per kernel from CubeCL's profiling log (`[profiling] logger`, level "basic").

    python3 bench/gpu/kernel_profile.py profile.log

Each profiled launch is a line `| <duration> | <kernel> | <generic arguments…>`; launches are
grouped by kernel name and its first generic argument (e.g. `MatmulEntry | FusedMatmulArgs`),
largest total first, with each group's share of all profiled GPU time.
"""

import re
import sys
from collections import defaultdict

UNITS = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}
LINE = re.compile(r"^\|\s*([0-9.]+)\s*(ns|µs|us|ms|s)\s*\|(.*)$")


def main():
    totals, counts = defaultdict(float), defaultdict(int)
    with open(sys.argv[1], encoding="utf-8", errors="replace") as log:
        for line in log:
            match = LINE.match(line)
            if not match:
                continue
            seconds = float(match.group(1)) * UNITS[match.group(2)]
            fields = [field.strip() for field in match.group(3).split("|") if field.strip()]
            name = " | ".join(fields[:2]) if fields else "?"
            totals[name] += seconds
            counts[name] += 1
    total = sum(totals.values())
    if not total:
        print("no profiled kernels in the log")
        return
    print(f"{total * 1e3:.1f} ms of profiled GPU time over {sum(counts.values())} launches")
    print(f"{'ms':>9} {'share':>6} {'launches':>8}  kernel")
    for name, seconds in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"{seconds * 1e3:9.2f} {seconds / total:6.1%} {counts[name]:8d}  {name[:110]}")


if __name__ == "__main__":
    main()
