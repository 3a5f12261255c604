"""Path patching: patchwidget's batched sweep against a loop of plain hooked runs.

Builds a GPT-2-small-shaped model (12 layers, 12 heads, d_model 768, 50257-token
vocabulary, random weights; nothing is downloaded) and a 15-token prompt pair that
differs in one middle token, and times, in one process on the same inputs, a full
sender sweep (all 144 heads) to one receiver:

- patchwidget's ``path_patch`` (batched copies in the engine's loop),
- the plain twin from ``tests/reference.py``: PyTorch hooks, one frozen run per
  sender (and a second run per sender for a q/k/v receiver).

It checks that the two agree to 1e-4 and prints a table.

    python benchmarks/bench_path.py [--receiver logits|q] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import patchwidget as pw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_resid_pre import ANSWER, WRONG, build, prompts
from tests.reference import reference_path_patch

warnings.filterwarnings("ignore")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--receiver", choices=("logits", "q"), default="q")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as folder:
        hf, tokenizer = build(Path(folder))
        model = pw.load_model(hf, tokenizer=tokenizer)
        clean, corrupt = prompts("one")
        texts = dict(
            clean=" ".join(f"t{i}" for i in clean),
            corrupt=" ".join(f"t{i}" for i in corrupt),
            answer=f"t{ANSWER}",
            wrong=f"t{WRONG}",
        )
        layer, head = 9, 9
        receivers = "logits" if args.receiver == "logits" else [pw.Cell("head_q", layer, head=head)]
        plain_receivers = "logits" if args.receiver == "logits" else [("head_q", layer, head)]
        top = 12 if args.receiver == "logits" else layer
        senders = [(lay, h) for lay in range(top) for h in range(12)]

        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = pw.path_patch(model, **texts, receivers=receivers)
            times.append(time.perf_counter() - start)
        ours = min(times)

        source, target = torch.tensor(clean), torch.tensor(corrupt)
        start = time.perf_counter()
        plain = []
        for sender in senders:
            logits = reference_path_patch(hf, source, target, [sender], plain_receivers)
            plain.append(float(logits[ANSWER] - logits[WRONG]))
        loop = time.perf_counter() - start

    got = result.values.reshape(-1)[: len(senders)]
    np.testing.assert_allclose(got, np.array(plain), atol=1e-4)
    runs = 1 if args.receiver == "logits" else 2
    receiver = "logits" if args.receiver == "logits" else f"L{layer} H{head} q"
    print(f"path patching, {len(senders)} senders -> {receiver}")
    print(f"GPT-2-small shape, 15 tokens, random weights; {platform.machine()}, torch {torch.__version__}")
    spread = np.ptp(got)
    gap = np.abs(got - np.array(plain)).max()
    print(f"values agree to 1e-4 (max difference {gap:.1e}; the values span {spread:.3g})\n")
    print("| method | time (s) | speed-up |")
    print("|---|---:|---:|")
    print(f"| patchwidget path_patch (best of {args.repeats}) | {ours:.2f} | {loop / ours:.1f}x |")
    print(f"| plain hooked runs, {runs} per sender | {loop:.2f} | 1.0x |")


if __name__ == "__main__":
    main()
