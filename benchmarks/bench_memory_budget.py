"""Peak memory with and without ``memory_budget``, for exact and attribution patching.

A GPT-2-small-shaped model (12 layers, d_model 768, 12 heads, random weights)
with the bundled model's 155-word vocabulary, so that the logits do not drown
the activations. Two workloads:

- exact: one 512-token prompt pair, resid_pre at layers 6 and 11, the last 64 positions;
- attribution: four 128-token prompt pairs, head_out at every layer and position.

Each runs without a budget, without a budget and without the CPU's cap on positions per
pass (``batches.CPU_PASS_POSITIONS``, ``Speedups.max_positions``; a GPU has none, so this is what a GPU would batch),
and with the budget. Each row runs once after a warm-up call of the same workload (so
one-time allocations do not count) and reports the largest rise of the C heap while it
ran, sampled every 2 ms, as in bench_resid_pre.py.

    python benchmarks/bench_memory_budget.py [--budget-mb 450]
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
from bench_resid_pre import PeakMemory
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

import patchwidget as pw
from patchwidget.core import batches

WORDS = ["apple", "river", "stone", "cloud", "window", "table", "orange", "forest"]


def texts(n_tokens: int, n_pairs: int) -> dict:
    clean = [" ".join(WORDS[(i + k) % 8] for i in range(n_tokens)) for k in range(n_pairs)]
    corrupt = ["tiger " + c.split(" ", 1)[1] for c in clean]  # the first token differs: no cell is a no-op
    return dict(clean=clean, corrupt=corrupt, answer=["Mary"] * n_pairs, wrong=["John"] * n_pairs)


WORKLOADS = {
    "exact, 1 pair x 512 tokens": dict(**texts(512, 1), layers=[6, 11], positions=list(range(448, 512))),
    "attribution, 4 pairs x 128 tokens": dict(**texts(128, 4), site="head_out", method="attribution"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-mb", type=float, default=450)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    tokenizer = AutoTokenizer.from_pretrained(pw.DEMO_MODEL_DIR)
    torch.manual_seed(0)
    config = GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=len(tokenizer), attn_implementation="eager")
    model = pw.load_model(GPT2LMHeadModel(config).eval(), tokenizer=tokenizer)
    budget = int(args.budget_mb * 2**20)

    print("| workload | memory_budget | peak memory (MB) | time (s) |\n|---|---:|---:|---:|")
    for name, kwargs in WORKLOADS.items():
        pw.patch(model, **kwargs)  # warm-up
        results = []
        for limit, shown in ((None, "none"), ("uncapped", "none, no CPU cap"), (budget, f"{args.budget_mb:.0f} MB")):
            speedups = batches.Speedups(max_positions=None) if limit == "uncapped" else None
            with PeakMemory() as mem:
                start = time.perf_counter()
                budgeted = None if limit == "uncapped" else limit
                results.append(pw.patch(model, **kwargs, memory_budget=budgeted, speedups=speedups))
                seconds = time.perf_counter() - start
            print(f"| {name} | {shown} | {mem.peak / 2**20:.0f} | {seconds:.2f} |")
        gap = max(abs(results[0].per_pair - r.per_pair).max() for r in results[1:])
        assert gap < 1e-4, f"{name}: the budgeted result differs by {gap}"


if __name__ == "__main__":
    main()
