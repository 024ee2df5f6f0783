#!/usr/bin/env python3
"""Prints the medians criterion measured for some benchmark groups as a
Markdown table, with each other contender's median divided by kmm's (above
1: kmm is faster). kmm is the contender named `kmm` or `kmm-kmalloc`, else
the first whose name starts with `kmm`. Reads
target/criterion/<group>/<contender>/new/estimates.json.

    python3 benches/table.py F1_order0_pair F2_churn_64k F3_fill_shuffle_free_2GiB
"""
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent / "target" / "criterion"


def median_ns(group, contender):
    path = ROOT / group / contender / "new" / "estimates.json"
    return json.loads(path.read_text())["median"]["point_estimate"]


def show(ns):
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


def contenders(group):
    """kmm first, then the others by name."""
    found = [p.name for p in (ROOT / group).iterdir() if (p / "new").is_dir()]
    base = ("kmm", "kmm-kmalloc")
    return sorted(found, key=lambda name: (name not in base, not name.startswith("kmm"), name))


def main(groups):
    names = contenders(groups[0])
    print("| workload | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for group in groups:
        medians = {name: median_ns(group, name) for name in names}
        cells = [show(medians[name]) for name in names]
        print(f"| {group} | " + " | ".join(cells) + " |")
    print()
    print("| workload | " + " | ".join(f"{n} / {names[0]}" for n in names[1:]) + " |")
    print("|---" * len(names) + "|")
    for group in groups:
        kmm = median_ns(group, names[0])
        ratios = [f"{median_ns(group, name) / kmm:.2f}" for name in names[1:]]
        print(f"| {group} | " + " | ".join(ratios) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
