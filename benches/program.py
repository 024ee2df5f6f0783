#!/usr/bin/env python3
"""Whole-process figures of the allocation-heavy program (examples/program)
under each global allocator: wall time and peak RSS of RUNS rounds, the
contenders run in turn within each round (A B C A B C ...) so a drift of
the machine's speed hits them alike; prints medians, min-max, and each
contender's wall-time ratio to glibc taken round by round.

    cargo build --release --features std \
        --example program_glibc --example program_mimalloc --example program_kmm
    python3 benches/program.py [RUNS]
"""
import os
import resource
import statistics
import subprocess
import sys
import time

CONTENDERS = ["glibc", "mimalloc", "kmm"]
RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 7
BIN = os.path.join(os.path.dirname(__file__), "..", "target", "release", "examples")


def run(name):
    """One run: (wall seconds, peak RSS in MiB) of the finished child."""
    start = time.monotonic()
    pid = subprocess.Popen([os.path.join(BIN, "program_" + name)], stdout=subprocess.DEVNULL).pid
    _, status, usage = os.wait4(pid, 0)
    wall = time.monotonic() - start
    if status != 0:
        sys.exit(f"program_{name} failed with status {status}")
    return wall, usage.ru_maxrss / 1024


for name in CONTENDERS:  # one warm-up each: page cache, CPU frequency
    run(name)
walls = {n: [] for n in CONTENDERS}
rss = {n: [] for n in CONTENDERS}
for _ in range(RUNS):
    for name in CONTENDERS:
        w, m = run(name)
        walls[name].append(w)
        rss[name].append(m)

print(f"{RUNS} rounds, contenders in turn within each round")
print("| allocator | wall median (min-max) | wall / glibc, median of rounds (min-max) | peak RSS median |")
print("|---|---|---|---|")
for name in CONTENDERS:
    ratios = [w / g for w, g in zip(walls[name], walls["glibc"])]
    print(
        f"| {name} | {statistics.median(walls[name]):.3f} s "
        f"({min(walls[name]):.3f}-{max(walls[name]):.3f}) | "
        f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) | "
        f"{statistics.median(rss[name]):.0f} MiB |"
    )
