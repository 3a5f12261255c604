"""The batch plan's pieces: exact resid_pre grids with and without each.

The GPT-2-small-shaped model of ``bench_resid_pre.py`` (12 layers, d_model 768,
50,257-token vocabulary, random weights), 15 tokens, one token or every token
differing (with ``--long``, also one token of 240, the last four layers). It prints
each plan's block work on the every-token grid (rows x positions x layers, against the
least possible: every copy from its own first position and lowest layer), then times
five settings, each adding one piece: position bands (``batches.BAND_WIDTHS``), the last
block's MLP run at the last position only (``Speedups.trim_last_mlp``), short copies of
a pair packed end to end into shared rows (``Speedups.pack``), and passes capped at
``batches.CPU_PASS_POSITIONS`` positions (``Speedups.max_positions``), each switched through
the ``speedups`` argument of ``patch``. Only the patched passes are timed (the clean and
corrupted runs are made once, through ``runs_cache``). Each setting runs ``--repeats``
times, the settings alternating so that all see the same machine; the table gives the
best and the median time of each, and the grids of all settings must agree to 1e-5 (they
change only which copies share a pass and which unread positions are computed).

    python benchmarks/bench_plan.py [--repeats 5] [--long]
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
from bench_scaling import prompt_pair

import patchwidget as pw
from patchwidget.core import batches

warnings.filterwarnings("ignore")


def work(batches: list[list[int]], costs: list[tuple[int, int]], n_pos: int, n_layers: int) -> int:
    """Rows x positions x layers that ``batches`` compute, each running from its rows' smallest start."""
    return sum(
        len(b) * (n_pos - min(costs[i][0] for i in b)) * (n_layers - min(costs[i][1] for i in b)) for b in batches
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--long", action="store_true", help="also a 240-token prompt, the last four layers")
    args = parser.parse_args()
    hf, tokenizer = build(Path(tempfile.mkdtemp()))
    model = pw.load_model(hf, tokenizer=tokenizer)
    text = lambda ids: " ".join(f"t{i}" for i in ids)
    kw = dict(answer=f"t{ANSWER}", wrong=f"t{WRONG}", metric="logit_diff")
    bands = batches.BAND_WIDTHS
    costs = [(p, layer) for layer in range(12) for p in range(15)]  # every token differs: (first position, layer)
    least = sum((15 - p) * (12 - layer) for p, layer in costs)
    for name, widths in (("position and layer orders", ()), ("also position bands", bands)):
        batches.BAND_WIDTHS = widths
        groups = batches.plan_batches(costs, 64, 15, 12, list(range(len(costs))))
        done = work(groups, costs, 15, 12)
        print(f"every token differing, {name}: {len(groups)} passes, work {done} = {done / least:.2f} x the least")
    batches.BAND_WIDTHS = bands
    ids = list(range(len(costs)))
    rows = batches.pack_rows(ids, [0] * len(ids), [p for p, _ in costs], [15] * len(ids), [c[1] for c in costs], 15)
    row_costs = [(row.position(15), row.lowest) for row in rows]
    groups = batches.plan_batches(row_costs, 64, 15, 12, list(range(len(rows))))
    done = work(groups, row_costs, 15, 12)
    print(
        f"every token differing, packed rows: {len(rows)} rows in {len(groups)} passes, work {done} = "
        f"{done / least:.2f} x the least"
    )
    cap = batches.CPU_PASS_POSITIONS
    off = dict(trim_last_mlp=False, pack=False, max_positions=None)
    settings = {
        "position and layer orders": ((), batches.Speedups(**off)),
        "also position bands": (bands, batches.Speedups(**off)),
        "bands, last MLP at the last position": (bands, batches.Speedups(pack=False, max_positions=None)),
        "bands, trimmed MLP, packed rows": (bands, batches.Speedups(max_positions=None)),
        f"all, passes capped at {cap} positions": (bands, batches.Speedups()),
    }
    print(f"\nGPT-2-small shape, resid_pre grid; CPU, {torch.get_num_threads()} torch threads\n")
    print("| tokens | differing | plan | best (s) | median (s) |")
    print("|---:|---|---|---:|---:|")
    cases = [(15, "one", prompts("one"), None), (15, "all", prompts("all"), None)]
    if args.long:  # one token of 240 differing, the grid's last four layers (the whole grid takes minutes)
        cases.append((240, "one", prompt_pair(240), [8, 9, 10, 11]))
    for n_pos, corrupt, (clean_ids, corrupt_ids), layers in cases:
        args_, kwargs = (model, text(clean_ids), text(corrupt_ids)), dict(kw, layers=layers, runs_cache={})

        def run(speedups=None, args_=args_, kwargs=kwargs) -> np.ndarray:  # the runs are made once, in the warm-up
            return pw.patch(*args_, **kwargs, speedups=speedups).values

        run()  # warm-up
        times: dict[str, list[float]] = {name: [] for name in settings}
        grids = {}
        for _ in range(args.repeats):
            for name, (widths, speedups) in settings.items():
                batches.BAND_WIDTHS = widths  # the planner's own table of orders, not a request's speed-up
                start = time.perf_counter()
                grids[name] = run(speedups)
                times[name].append(time.perf_counter() - start)
        batches.BAND_WIDTHS = bands
        for grid in grids.values():
            np.testing.assert_allclose(grid, grids["position and layer orders"], atol=1e-5)
        for name, ts in times.items():
            print(f"| {n_pos} | {corrupt} | {name} | {min(ts):.2f} | {float(np.median(ts)):.2f} |", flush=True)


if __name__ == "__main__":
    main()
