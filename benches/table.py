#!/usr/bin/env python3
"""Prints the medians criterion measured for some benchmark groups as a
Markdown table, with each other contender's median divided by kmm's (above
1: kmm is faster). kmm is the contender named `kmm` or `kmm-kmalloc`, else
the one `--base NAME` names, else the first whose name starts with `kmm`.
Reads target/criterion/<group>/<contender>/new/estimates.json.

With `--per-element`, each median is divided by the group's throughput
(criterion's elements per iteration: ns per object); with `--rate`, the
table shows elements per second instead (Mops/s). Ratios stay ratios of
time per element either way (above 1: kmm is faster).

    python3 benches/table.py F1_order0_pair F2_churn_64k F3_fill_shuffle_free_2GiB
    python3 benches/table.py --rate --base kmm-kmalloc-cpus2 "O4 churn, 2 threads x 50k live, 8B-4KiB mix"
"""
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent / "target" / "criterion"


def median_ns(group, contender, per_element=False):
    new = ROOT / group / contender / "new"
    ns = json.loads((new / "estimates.json").read_text())["median"]["point_estimate"]
    if per_element:
        ns /= json.loads((new / "benchmark.json").read_text())["throughput"]["Elements"]
    return ns


def show(ns, rate=False):
    if rate:
        return f"{1e3 / ns:.3g} Mops/s"
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


def contenders(group, base):
    """kmm first, then the others by name."""
    found = [p.name for p in (ROOT / group).iterdir() if (p / "new").is_dir()]
    return sorted(found, key=lambda name: (name not in base, not name.startswith("kmm"), name))


def main(args):
    rate = "--rate" in args
    per_element = rate or "--per-element" in args
    base = ("kmm", "kmm-kmalloc")
    if "--base" in args:
        at = args.index("--base")
        base = (args[at + 1],)
        del args[at : at + 2]
    groups = [a for a in args if a not in ("--rate", "--per-element")]
    names = contenders(groups[0], base)
    print("| workload | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for group in groups:
        medians = {name: median_ns(group, name, per_element) for name in names}
        cells = [show(medians[name], rate) for name in names]
        print(f"| {group} | " + " | ".join(cells) + " |")
    print()
    print("| workload | " + " | ".join(f"{n} / {names[0]}" for n in names[1:]) + " |")
    print("|---" * len(names) + "|")
    for group in groups:
        kmm = median_ns(group, names[0], per_element)
        ratios = [f"{median_ns(group, name, per_element) / kmm:.2f}" for name in names[1:]]
        print(f"| {group} | " + " | ".join(ratios) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
