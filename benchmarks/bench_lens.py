"""The logit lens and direct logit attribution against one plain forward pass of the same prompts, in one process.

On the bundled model (the IOI workshop's eight pairs' clean prompts) and on the GPT-2-small-shaped
random model of ``bench_resid_pre.py`` (15 tokens, eight prompts), each of ``--repeats`` rounds times
``pw.logit_lens``, ``pw.direct_logit_attribution`` and one forward pass of the wrapped model (an
nnsight trace reading the logits); the table gives the best of each and the ratios. Each lens is one
traced forward pass plus the final norm and two rows of the unembedding, and its checks.

    python benchmarks/bench_lens.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch
from bench_resid_pre import ANSWER, WRONG, build, prompts

import patchwidget as pw

warnings.filterwarnings("ignore")


def forward(model, texts):
    ids = torch.tensor([model.tokenizer(t)["input_ids"] for t in texts])
    with torch.no_grad(), model.trace(ids):
        logits = model.output.logits.save()
    return logits


def best(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    demo = pw.load_model()
    pairs = pw.demo_data.ioi_pairs(8)
    hf, tokenizer = build(Path(tempfile.mkdtemp()))
    big = pw.load_model(hf, tokenizer=tokenizer)
    clean, _ = prompts("one")
    text = " ".join(f"t{i}" for i in clean)
    cases = {
        "bundled model, 8 IOI prompts": (
            demo,
            [p.clean for p in pairs],
            dict(answer=[p.answer for p in pairs], wrong=[p.wrong for p in pairs]),
        ),
        "GPT-2-small shape, 8 prompts of 15 tokens": (big, [text] * 8, dict(answer=f"t{ANSWER}", wrong=f"t{WRONG}")),
    }
    print("| case | logit lens (s) | DLA (s) | one forward pass (s) | ratios |\n|---|---|---|---|---|")
    for name, (model, texts, answers) in cases.items():
        pw.logit_lens(model, texts, **answers)  # warm up
        forward(model, texts)
        lens = best(lambda m=model, t=texts, a=answers: pw.logit_lens(m, t, **a), args.repeats)
        dla = best(lambda m=model, t=texts, a=answers: pw.direct_logit_attribution(m, t, **a), args.repeats)
        plain = best(lambda m=model, t=texts: forward(m, t), args.repeats)
        print(f"| {name} | {lens:.3f} | {dla:.3f} | {plain:.3f} | {lens / plain:.2f}, {dla / plain:.2f} |")


if __name__ == "__main__":
    main()
