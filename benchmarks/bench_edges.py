"""Exact edge scores of every edge against a plain loop of one hooked run per edge.

The GPT-2-small-shaped model of ``bench_resid_pre.py`` (12 layers of 12 heads, d_model 768,
50,257-token vocabulary, random weights: 32,491 edges), one pair of 15 tokens differing in
one token in the middle (as IOI). ``pw.edge_scores(method="exact")`` scores every edge; the
plain loop does what a user would write without the engine: per edge, one forward pass of
the clean prompt with a hook that gives the receiver its input with that edge corrupted (the
receiver's new value computed as the engine computes it), and the logit difference read at
the end. The loop is timed on a random sample of edges and extrapolated to all of them (said
so in the table); its scores are compared with the engine's on the sample. EAP and EAP-IG
(5 steps) are timed on the same inputs, with their agreement with the exact scores: Spearman's
rank correlation of the magnitudes over every edge, and the recall of exact's top 1 %.

    python benchmarks/bench_edges.py [--layers 12] [--sample 300] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from bench_resid_pre import build
from bench_scaling import prompt_pair

import patchwidget as pw
from patchwidget.circuits import edge_exact
from patchwidget.circuits import faithfulness as F
from patchwidget.core.edge_pass import EdgeIndex
from patchwidget.core.sites import model_info, module

warnings.filterwarnings("ignore")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--sample", type=int, default=300, help="edges the plain loop is timed on")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    hf, tokenizer = build(Path(tempfile.mkdtemp()))
    hf.transformer.h = hf.transformer.h[: args.layers]
    hf.config.n_layer = args.layers
    model = pw.load_model(hf.to(args.device), tokenizer=tokenizer)
    clean, corrupt = (" ".join(f"t{i}" for i in ids) for ids in prompt_pair(15))
    kw = dict(answer="t11", wrong="t12")
    start = time.perf_counter()
    scores = pw.edge_scores(model, clean, corrupt, **kw)
    exact = time.perf_counter() - start
    rng = np.random.default_rng(0)
    sample = [scores.edges[i] for i in rng.choice(len(scores), min(args.sample, len(scores)), replace=False)]
    per_edge, loop_scores = plain_loop(model, clean, corrupt, kw, sample)
    diff = max(abs(loop_scores[i] - scores.score(e)) for i, e in enumerate(sample))
    loop = per_edge * len(scores)
    print(f"{args.layers} layers, {len(scores)} edges, 15 tokens, one pair, {args.device}")
    print(f"{'method':<44} {'seconds':>9} {'vs loop':>8}")
    print(f"{'plain loop, one hooked run per edge (extrapolated)':<44} {loop:9.1f} {1.0:8.2f}")
    print(f"{'  timed on ' + str(len(sample)) + ' edges, per edge':<44} {per_edge:9.4f}")
    print(f"{'pw.edge_scores(method=exact), every edge':<44} {exact:9.1f} {loop / exact:8.2f}")
    print(f"largest difference between the loop's and the engine's scores on the sample: {diff:.2e}")
    for method in ("eap", "eap-ig"):
        start = time.perf_counter()
        estimate = pw.edge_scores(model, clean, corrupt, **kw, method=method)
        took = time.perf_counter() - start
        rho, recall = agreement(scores.values, estimate.values)
        print(
            f"{'pw.edge_scores(method=' + method + ')':<44} {took:9.1f} {loop / took:8.2f}   "
            f"Spearman {rho:.3f} with exact, top-1% recall {recall:.2f}"
        )


def agreement(exact, estimate):
    """Spearman's rank correlation of |scores| over every edge, and the share of exact's top 1 % of edges (by
    magnitude) that the estimate's top 1 % holds."""
    rank = lambda v: np.argsort(np.argsort(-np.abs(v), kind="stable"), kind="stable")
    rho = float(np.corrcoef(rank(exact), rank(estimate))[0, 1])
    k = max(1, len(exact) // 100)
    top = lambda v: set(np.argsort(-np.abs(v), kind="stable")[:k].tolist())
    return rho, len(top(exact) & top(estimate)) / k


def plain_loop(model, clean, corrupt, kw, sample):
    """Per-edge seconds and scores of one hooked forward pass per edge (the receivers' new values computed as
    the engine computes them, outside the timing: the loop times the passes)."""
    runs = F.circuit_runs(
        model, clean, corrupt, **kw, ablation="patch", metric="logit_diff", batch_size=64, memory_budget=None,
        progress=None, remote=False, more_reads=edge_exact.reads_for_exact(model_info(model)),
    )  # fmt: skip
    info, index = runs.request.info, EdgeIndex.of(runs.request.info)
    d = runs.directed
    delta = F.sender_outputs(model, info, d.source) - F.sender_outputs(model, info, d.target)
    hf, ids = model._module, d.target_ids[:1].to(next(model._module.parameters()).device)
    a, w = int(runs.rows.answer_ids[0]), int(runs.rows.wrong_ids[0])
    with torch.no_grad():
        logits = hf(ids).logits[0, -1]
    base = float(logits[a] - logits[w])
    hooks = [receiver_hook(runs, index, delta, e) for e in sample]
    out, start = [], time.perf_counter()
    for target, fn in hooks:
        handle = target.register_forward_hook(fn)
        with torch.no_grad():
            logits = hf(ids).logits[0, -1]
        handle.remove()
        out.append(float(logits[a] - logits[w]) - base)
    return (time.perf_counter() - start) / len(sample), out


def receiver_hook(runs, index, delta, edge):
    """(module, forward hook) that gives ``edge``'s receiver its input with the edge corrupted."""
    model, info = runs.model, runs.request.info
    hf, arch, r = model._module, info.arch, edge.receiver
    s = index.sender(edge.sender.site, edge.sender.layer, edge.sender.head or 0)
    if r.site == "logits":
        final = runs.directed.target[(info.n_layers - 1, "resid_post")][0, :, 0].float()
        norm = module(hf, arch.final_norm)
        value = norm(final + delta[0, :, s]).detach()
        return norm, lambda mod, args, out: value.to(out.dtype)[None]
    site = "mlp_in" if r.site == "mlp_in" else r.site
    values = edge_exact._receiver_values(runs, index, delta, r.layer, site)[0, :, s]  # (pos, unit, width)
    if r.site == "mlp_in":
        mlp = module(hf, f"{arch.layers}.{r.layer}.{arch.mlp}")
        return mlp, lambda mod, args, out: values[:, 0].to(out.dtype)[None]
    which, unit = "qkv".index(r.site[-1]), r.head
    proj = module(hf, f"{arch.layers}.{r.layer}.{arch.q}")  # GPT-2: one projection, [q | k | v]
    width = info.n_heads * info.d_head

    def put(mod, args, out):
        out = out.clone()
        at = which * width + unit * info.d_head
        out[0, :, at : at + info.d_head] = values[:, unit].to(out.dtype)
        return out

    return proj, put


if __name__ == "__main__":
    main()
