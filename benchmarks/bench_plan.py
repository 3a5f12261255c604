"""The batch plan's position bands, the last block's trimmed MLP and packed rows: exact resid_pre grids with and
without each.

The GPT-2-small-shaped model of ``bench_resid_pre.py`` (12 layers, d_model 768,
50,257-token vocabulary, random weights), 15 tokens, one token or every token
differing. It prints each plan's block work on the every-token grid (rows x positions
x layers, against the least possible: every copy from its own first position and
lowest layer), then times four settings, each adding one piece: position bands
(``plan.BAND_WIDTHS``), the last block's MLP run at the last position only
(``sites.TRIM_LAST_MLP``), and short copies of a pair packed end to end into shared rows
(``plan.PACK``). Each setting runs ``--repeats`` times, the four alternating so that all
see the same machine; the table gives the best and the median time of each, and the grids
of all four must agree to 1e-5 (the settings change only which copies share a pass and
which unread positions are computed).

    python benchmarks/bench_plan.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from bench_resid_pre import ANSWER, WRONG, build, prompts

import patchwidget as pw
from patchwidget import plan, sites

warnings.filterwarnings("ignore")


def work(batches: list[list[int]], costs: list[tuple[int, int]], n_pos: int, n_layers: int) -> int:
    """Rows x positions x layers that ``batches`` compute, each running from its rows' smallest start."""
    return sum(
        len(b) * (n_pos - min(costs[i][0] for i in b)) * (n_layers - min(costs[i][1] for i in b)) for b in batches
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    hf, tokenizer = build(Path(tempfile.mkdtemp()))
    model = pw.load_model(hf, tokenizer=tokenizer)
    text = lambda ids: " ".join(f"t{i}" for i in ids)  # noqa: E731
    kw = dict(answer=f"t{ANSWER}", wrong=f"t{WRONG}", metric="logit_diff")
    bands = plan.BAND_WIDTHS
    costs = [(p, layer) for layer in range(12) for p in range(15)]  # every token differs: (first position, layer)
    least = sum((15 - p) * (12 - layer) for p, layer in costs)
    for name, widths in (("position and layer orders", ()), ("also position bands", bands)):
        plan.BAND_WIDTHS = widths
        batches = plan.plan_batches(costs, 64, 15, 12, list(range(len(costs))))
        done = work(batches, costs, 15, 12)
        print(f"every token differing, {name}: {len(batches)} passes, work {done} = {done / least:.2f} x the least")
    plan.BAND_WIDTHS = bands
    ids = list(range(len(costs)))
    rows = plan.pack_rows(ids, [0] * len(ids), [p for p, _ in costs], [15] * len(ids), [c[1] for c in costs], 15)
    row_costs = [(row.position(15), row.lowest) for row in rows]
    batches = plan.plan_batches(row_costs, 64, 15, 12, list(range(len(rows))))
    done = work(batches, row_costs, 15, 12)
    print(
        f"every token differing, packed rows: {len(rows)} rows in {len(batches)} passes, work {done} = "
        f"{done / least:.2f} x the least"
    )
    settings = {
        "position and layer orders": ((), False, False),
        "also position bands": (bands, False, False),
        "bands, last MLP at the last position": (bands, True, False),
        "bands, trimmed MLP, packed rows": (bands, True, True),
    }
    print(f"\nGPT-2-small shape, 15 tokens, resid_pre grid; CPU, {torch.get_num_threads()} torch threads\n")
    print("| tokens differing | plan | best (s) | median (s) |")
    print("|---|---|---:|---:|")
    for corrupt in ("one", "all"):
        clean_ids, corrupt_ids = prompts(corrupt)
        pw.patch(model, text(clean_ids), text(corrupt_ids), **kw)  # warm-up
        times: dict[str, list[float]] = {name: [] for name in settings}
        grids = {}
        for _ in range(args.repeats):
            for name, (widths, trim, pack) in settings.items():
                plan.BAND_WIDTHS, sites.TRIM_LAST_MLP, plan.PACK = widths, trim, pack
                start = time.perf_counter()
                grids[name] = pw.patch(model, text(clean_ids), text(corrupt_ids), **kw).values
                times[name].append(time.perf_counter() - start)
        plan.BAND_WIDTHS, sites.TRIM_LAST_MLP, plan.PACK = bands, True, True
        for grid in grids.values():
            np.testing.assert_allclose(grid, grids["position and layer orders"], atol=1e-5)
        for name, ts in times.items():
            print(f"| {corrupt} | {name} | {min(ts):.2f} | {float(np.median(ts)):.2f} |")


if __name__ == "__main__":
    main()
