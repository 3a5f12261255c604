"""How well attribution patching agrees with exact patching on the bundled model.

For each site, patches 8 IOI prompt pairs exactly and with the attribution
estimate (``logit_diff_norm``) and prints the rank (Spearman) and Pearson
correlations over the grid's cells and how many of the exact top-5 cells (by
absolute value) the estimate's top 5 recovers.

    python benchmarks/attribution_agreement.py
"""

from __future__ import annotations

import warnings

import numpy as np

import patchwidget as pw
from patchwidget import demo_data

warnings.filterwarnings("ignore")
SITES = [
    ("resid_pre", {}),
    ("attn_out", {}),
    ("mlp_out", {}),
    ("head_out", {"by_position": False}),
    ("head_out", {}),
    ("head_q", {}),
    ("head_v", {}),
    ("attn_pattern", {}),
    ("mlp_neuron", {"layers": [1, 2, 3]}),
]


def ranks(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(x, kind="stable"), kind="stable")


def main() -> None:
    model = pw.load_model()
    pairs = demo_data.ioi_pairs(8, seed=7)
    texts = dict(
        clean=[p.clean for p in pairs],
        corrupt=[p.corrupt for p in pairs],
        answer=[p.answer for p in pairs],
        wrong=[p.wrong for p in pairs],
    )
    print("| site | cells | Spearman | Pearson | exact top-5 recovered |\n|---|---:|---:|---:|---:|")
    for site, extra in SITES:
        exact = pw.patch(model, **texts, site=site, metric="logit_diff_norm", **extra).values.ravel()
        estimate = pw.patch(
            model, **texts, site=site, metric="logit_diff_norm", method="attribution", **extra
        ).values.ravel()
        spearman = np.corrcoef(ranks(exact), ranks(estimate))[0, 1]
        pearson = np.corrcoef(exact, estimate)[0, 1]
        top = set(np.argsort(-np.abs(exact))[:5]) & set(np.argsort(-np.abs(estimate))[:5])
        name = site + ("" if not extra else " " + ", ".join(f"{k}={v}" for k, v in extra.items()))
        print(f"| {name} | {exact.size} | {spearman:.2f} | {pearson:.2f} | {len(top)} of 5 |")


if __name__ == "__main__":
    main()
