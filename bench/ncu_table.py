"""A short table of an Nsight Compute CSV (``ncu --csv --page details``): one line a kernel.

    python bench/ncu_table.py ncu.csv

Columns: kernel (name cut at 60), block, grid, duration, DRAM throughput (% of peak),
achieved occupancy, registers, compute throughput, L2 hit rate.
"""

from __future__ import annotations

import csv
import sys

COLUMNS = (("Duration", "dur"), ("DRAM Throughput", "dram%"), ("Achieved Occupancy", "occ%"),
           ("Registers Per Thread", "regs"), ("Compute (SM) Throughput", "sm%"),
           ("L2 Hit Rate", "l2hit%"))


def table(path: str) -> list[str]:
    with open(path) as f:
        lines = f.read().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith('"ID"'))
    kernels: dict[str, dict[str, str]] = {}
    for r in csv.DictReader(lines[start:]):
        k = kernels.setdefault(r["ID"], {"name": r["Kernel Name"], "block": r["Block Size"],
                                         "grid": r["Grid Size"]})
        unit = r["Metric Unit"]
        k[r["Metric Name"]] = r["Metric Value"] + (" " + unit if unit in ("ns", "us", "ms")
                                                   else "")
    out = ["| kernel | block | grid | " + " | ".join(c for _, c in COLUMNS) + " |",
           "|---|---|---|" + "---:|" * len(COLUMNS)]
    for k in kernels.values():
        if k["name"].startswith("cupy_"):
            continue
        cells = [k.get(m, "") for m, _ in COLUMNS]
        out.append(f"| {k['name'][:60]} | {k['block']} | {k['grid']} | " + " | ".join(cells)
                   + " |")
    return out


if __name__ == "__main__":
    print("\n".join(table(sys.argv[1])))
