"""Draw the README's induction picture (``docs/induction.png``) on the bundled model.

Three head grids (``head_out``, ``by_position=False``, denoising, ``logit_diff_norm``) on held-out
induction pairs: corruptions that move the keys, corruptions that change the copied word, and both
kinds together; then the two heads' attention patterns on one held-out repeated sequence.

python scripts/induction_picture.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

import patchwidget as pw
from patchwidget import demo_data
from patchwidget.core.engine import attention_pattern

OUT = Path(__file__).resolve().parent.parent / "docs" / "induction.png"


def main() -> None:
    model = pw.load_model()
    key, value = (demo_data.induction_pairs(16, kind=kind) for kind in ("key", "value"))
    grids = {
        "16 pairs that move the keys": key,
        "16 pairs that change the copied word": value,
        "both kinds together (32)": key + value,
    }
    fig = plt.figure(figsize=(13, 7.5), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 1.6])
    for ax, (title, pairs) in zip(top.subplots(1, 3), grids.items()):
        r = pw.patch(model, **demo_data.as_prompts(pairs), site="head_out", by_position=False, metric="logit_diff_norm")
        r.plot(ax=ax, vmax=1, title=title)
        print(title, r.values.round(2).tolist())
    words, start = demo_data.held_out_repeats(1, seed=3)[0]
    text = " ".join(words)
    for ax, (layer, head, name) in zip(
        bottom.subplots(1, 2), [(0, 3, "L0H3, previous-token head"), (1, 0, "L1H0, induction head")]
    ):
        ax.imshow(attention_pattern(model, text, layer, head), cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(words)), words, rotation=90, fontsize=7)
        ax.set_yticks(range(len(words)), words, fontsize=7)
        ax.set_xlabel("key (attended to)")
        ax.set_ylabel("query")
        ax.set_title(f"{name}: attention on a held-out repeated sequence", fontsize=9)
    fig.suptitle("Induction in the bundled model: head_out patching (denoise, logit_diff_norm) and attention")
    fig.savefig(OUT, dpi=110)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
