"""The bottleneck search against brute force, on the bundled model's IOI pairs.

Times ``find_bottleneck`` (both ranking methods) and one exhaustive by-position ``head_out``
grid of every layer, in one process on the same 8 pairs, each after a warm-up call,
best of ``--repeats``, and prints the found set's size and joint restore. ``--curve PATH``
also saves the attribution search's restore curve (the README's ``docs/ioi_curve.png``).

    python benchmarks/bench_find_bottleneck.py [--target 0.8] [--repeats 3] [--curve docs/ioi_curve.png]
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings

import torch

import patchwidget as pw
from patchwidget import demo_data

warnings.filterwarnings("ignore")


def best(fn, repeats: int) -> tuple[float, object]:
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=float, default=0.8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--curve", help="save the attribution search's restore curve to this image file")
    args = parser.parse_args()
    model = pw.load_model()
    pairs = demo_data.ioi_pairs(8)
    kw = dict(
        clean=[p.clean for p in pairs],
        corrupt=[p.corrupt for p in pairs],
        answer=[p.answer for p in pairs],
        wrong=[p.wrong for p in pairs],
    )
    brute, grid = best(lambda: pw.patch(model, **kw, site="head_out"), args.repeats)
    print(f"bundled model, 8 IOI pairs, target {args.target}; {platform.machine()}, torch {torch.__version__}\n")
    print("| method | time (s) | vs brute force | cells found | of | restore |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| exhaustive head_out grid, by position, every layer | {brute:.2f} | 1.00x | | {grid.values.size} | |")
    for method in ("attribution", "exact"):
        seconds, c = best(lambda m=method: pw.find_bottleneck(model, **kw, target=args.target, method=m), args.repeats)
        cells = sum(row["candidates"] for row in c.trace[-1:])
        print(
            f"| find_bottleneck, method={method} | {seconds:.2f} | {seconds / brute:.2f}x | {len(c.cells)} | "
            f"{cells} | {c.restore:.3f} |"
        )
        if args.curve and method == "attribution":
            c.plot_curve(show=False).savefig(args.curve, dpi=120, bbox_inches="tight")


if __name__ == "__main__":
    main()
