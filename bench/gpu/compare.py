#!/usr/bin/env python3
"""Ratio table of `vidtrain bench-model` against `bench/pytorch_reference.py` (same rows).

    python3 bench/gpu/compare.py ours.json pytorch.json

Targets (issue 7): peak reserved ≤ 0.8× PyTorch's, samples/s ≥ 1.0× PyTorch eager. Every row is
printed, also where a side failed or a target is missed.
"""

import json
import sys


def load(path):
    try:
        with open(path) as file:
            return {(r["row"]["backbone"].lower(), r["row"]["name"]): r for r in json.load(file)}
    except (OSError, ValueError) as error:
        print(f"cannot read {path}: {error}")
        return {}


def ratio(ours, theirs, key):
    a, b = ours.get(key), theirs.get(key)
    return a / b if a and b else None


def main():
    ours, theirs = load(sys.argv[1]), load(sys.argv[2])
    print(f"{'model':<11} {'row':<27} {'speed ours/pt':>13} {'reserved':>9} {'in use':>8} "
          f"{'first step s':>12}  verdict")
    for key in sorted(set(ours) | set(theirs)):
        a, b = ours.get(key, {}), theirs.get(key, {})
        speed = ratio(a, b, "samples_per_s")
        reserved = ratio(a, b, "peak_device_reserved_bytes")
        in_use = ratio(a, b, "peak_device_in_use_bytes")
        fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
        if a.get("error") or b.get("error") or speed is None:
            verdict = f"incomplete: ours {a.get('error') or 'ok' if a else 'missing'}; " \
                      f"pytorch {b.get('error') or 'ok' if b else 'missing'}"
        else:
            misses = []
            if speed < 1.0:
                misses.append("slower")
            if reserved is not None and reserved > 0.8:
                misses.append("reserved > 0.8x")
            verdict = "meets targets" if not misses else "misses: " + ", ".join(misses)
        first = f"{fmt(a.get('first_step_s'))}/{fmt(b.get('first_step_s'))}"
        print(f"{key[0]:<11} {key[1]:<27} {fmt(speed):>13} {fmt(reserved):>9} {fmt(in_use):>8} "
              f"{first:>12}  {verdict}")


if __name__ == "__main__":
    main()
