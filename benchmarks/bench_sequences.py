"""Answers of several tokens: what the continuation costs a grid.

The GPT-2-small-shaped model of ``bench_resid_pre.py`` (12 layers, d_model 768, 50,257-token
vocabulary, random weights), 15 tokens with one token differing in the middle (as IOI), the
exact resid_pre grid by (layer, position), with one-token answers and with answers of 3 and
wrong answers of 2 tokens (so 3 more positions in each row: the two continuations after the
prompt). The clean and corrupted runs are made once per setting (``runs_cache``); the table
times the patched passes, best and median of ``--repeats`` runs, the settings alternating so
that both see the same machine. It also prints what would be the naive cost: one row per
continuation, the prompt computed twice (2x the one-token grid, before the continuation).

    python benchmarks/bench_sequences.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from bench_resid_pre import build
from bench_scaling import prompt_pair

import patchwidget as pw

warnings.filterwarnings("ignore")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lengths", type=int, nargs="+", default=[15, 60])
    args = parser.parse_args()
    hf, tokenizer = build(Path(tempfile.mkdtemp()))
    model = pw.load_model(hf, tokenizer=tokenizer)
    print(f"{'tokens':>6} {'answers':<32} {'best s':>8} {'median s':>9} {'ratio':>6}")
    for n_pos in args.lengths:
        compare(model, n_pos, args.repeats)


def compare(model, n_pos: int, repeats: int) -> None:
    """One prompt length: both settings, alternating, and the table's rows."""
    text = lambda ids: " ".join(f"t{i}" for i in ids)
    clean, corrupt = prompt_pair(n_pos)
    settings = {
        "one-token answers": dict(answer="t11", wrong="t12"),
        "3-token answer, 2-token wrong": dict(answer="t11 t13 t14", wrong="t12 t15"),
    }
    caches = {name: {} for name in settings}
    times = {name: [] for name in settings}
    for name, kw in settings.items():  # the runs, once each, outside the timing
        pw.patch(model, text(clean), text(corrupt), site="resid_pre", runs_cache=caches[name], **kw)
    for _ in range(repeats):
        for name, kw in settings.items():
            start = time.perf_counter()
            pw.patch(model, text(clean), text(corrupt), site="resid_pre", runs_cache=caches[name], **kw)
            times[name].append(time.perf_counter() - start)
    base = min(times["one-token answers"])
    for name, t in times.items():
        print(f"{n_pos:>6} {name:<32} {min(t):8.3f} {np.median(t):9.3f} {min(t) / base:6.2f}")


if __name__ == "__main__":
    main()
