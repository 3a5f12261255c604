"""How the exact resid_pre grid's cost grows with prompt length: patchwidget against TransformerLens.

The GPT-2-small-shaped model of ``bench_resid_pre.py`` (12 layers, d_model 768,
50,257-token vocabulary, random weights; nothing is downloaded), a random prompt
of each length whose corrupted twin differs in one token in the middle, and the
full layer x position grid. Times and peak memory (largest rise of the C heap)
are measured in one process on the same inputs; TransformerLens runs only up to
``--tl-max`` tokens (one forward pass per cell: 12 x 240 passes of 240 tokens
take long on a laptop CPU), and where it runs the grids must agree to 1e-4.

    python benchmarks/bench_scaling.py [--lengths 15 60 240] [--tl-max 60] [--repeats 1]
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: TransformerLens's per-cell progress bar

import argparse
import copy
import platform
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from bench_resid_pre import ANSWER, WRONG, build, timed, transformer_lens

import patchwidget as pw

warnings.filterwarnings("ignore")


def prompt_pair(n_pos: int) -> tuple[list[int], list[int]]:
    gen = torch.Generator().manual_seed(n_pos)
    clean = torch.randint(1, 50257, (n_pos,), generator=gen).tolist()
    corrupt = list(clean)
    corrupt[n_pos // 2] = (corrupt[n_pos // 2] + 1) % 50257
    return clean, corrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[15, 60, 240])
    parser.add_argument("--tl-max", type=int, default=60, help="longest prompt TransformerLens runs on")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    hf, tokenizer = build(folder)
    model = pw.load_model(hf, tokenizer=tokenizer)
    text = lambda ids: " ".join(f"t{i}" for i in ids)
    kw = dict(answer=f"t{ANSWER}", wrong=f"t{WRONG}", metric="logit_diff")
    pw.patch(model, text(prompt_pair(8)[0]), text(prompt_pair(8)[1]), **kw)  # warm-up

    print(
        f"GPT-2-small shape, random weights, resid_pre grid (12 layers x every position), one token differs; "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads\n"
    )
    print(
        "| tokens | cells | patchwidget (s) | patchwidget peak (MB) | TransformerLens (s) "
        "| TransformerLens peak (MB) | speed-up |\n|---:|---:|---:|---:|---:|---:|---:|"
    )
    for n_pos in args.lengths:
        clean, corrupt = prompt_pair(n_pos)
        run = lambda c=clean, k=corrupt: pw.patch(model, text(c), text(k), **kw).values
        grid, t_pw, mem_pw = timed(run, args.repeats)
        tl = ["not run", "", ""]
        if n_pos <= args.tl_max:
            tl_model = copy.deepcopy(hf)  # its bridge rewires the modules of the model it wraps
            # TransformerLens changes the tokenizer it is given (pops its name): a fresh copy each time
            tl_tokenizer = copy.deepcopy(tokenizer)
            tl_grid, t_tl, mem_tl = timed(transformer_lens(folder, tl_model, tl_tokenizer, clean, corrupt), 1)
            np.testing.assert_allclose(grid, tl_grid, atol=1e-4)
            tl = [f"{t_tl:.2f}", f"{mem_tl / 2**20:.0f}", f"{t_tl / t_pw:.1f}x"]
        print(f"| {n_pos} | {grid.size} | {t_pw:.2f} | {mem_pw / 2**20:.0f} | {' | '.join(tl)} |", flush=True)


if __name__ == "__main__":
    main()
