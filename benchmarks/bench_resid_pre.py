"""Exact resid_pre patching: patchwidget against a naive nnsight loop and TransformerLens.

Builds a GPT-2-small-shaped model (12 layers, d_model 768, 50257-token
vocabulary, random weights; nothing is downloaded), a 15-token prompt pair, and
times, in one process on the same inputs:

- patchwidget's exact grid (``patch(..., site="resid_pre")``),
- a naive nnsight loop with one forward pass per cell,
- TransformerLens's ``get_act_patch_resid_pre`` (one forward pass per cell),
- patchwidget's attribution estimate (two forward passes and one backward),
- patchwidget's head-by-position grid of one layer (layer 6), also as a
  multiple of one plain forward pass of the model on the clean prompt,
- with ``--full-heads``, the head-by-position grid of every layer.

It checks that the exact results agree to 1e-4 and prints a table of times,
ratios to TransformerLens and peak memory (the largest rise of the C heap's
allocated bytes while the method ran, sampled every 2 ms; torch's CPU tensors
live there; not measured on a GPU).

    python benchmarks/bench_resid_pre.py [--corrupt one|all] [--repeats 3] [--device cuda] [--full-heads]
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: TransformerLens's per-cell progress bar

import argparse
import copy
import ctypes
import platform
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

import patchwidget as pw

warnings.filterwarnings("ignore")
N_POS, ANSWER, WRONG = 15, 1234, 4321


def build(folder: Path) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]:
    torch.manual_seed(0)
    config = GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, attn_implementation="eager")
    hf = GPT2LMHeadModel(config).eval()
    vocab = {f"t{i}": i for i in range(config.vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="t0", unk_token="t0")
    hf.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return hf, tokenizer


def prompts(corrupt: str) -> tuple[list[int], list[int]]:
    gen = torch.Generator().manual_seed(1)
    clean = torch.randint(1, 50257, (N_POS,), generator=gen).tolist()
    if corrupt == "one":  # like IOI: one token in the middle differs
        bad = list(clean)
        bad[N_POS // 2] = (bad[N_POS // 2] + 1) % 50257
    else:  # every token differs: nothing can be skipped
        bad = torch.randint(1, 50257, (N_POS,), generator=gen).tolist()
    return clean, bad


def heap_bytes() -> int:
    """Bytes the C heap has handed out now (glibc mallinfo2): torch's CPU tensors live there."""
    info = _LIBC.mallinfo2()
    return info.uordblks + info.hblkhd


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


_LIBC = ctypes.CDLL("libc.so.6")
_LIBC.mallinfo2.restype = _MallInfo2


class PeakMemory:
    """Largest rise of allocated heap memory while the block runs, sampled every 2 ms."""

    def __enter__(self):
        self.peak, self.stop = 0, threading.Event()
        self.base = heap_bytes()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, heap_bytes() - self.base)
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def timed(fn, repeats: int):
    """``fn``'s result, its best time of ``repeats`` runs, and its peak memory in one more run.

    The memory sampler runs only in that extra run: a thread that reads the heap's
    statistics every 2 ms slows the run it watches (it takes the allocator's locks).
    """
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    with PeakMemory() as mem:
        fn()
    return out, min(times), mem.peak


def plain_forward(hf, ids: list[int], device: str):
    """One plain forward pass of the Hugging Face model on one prompt (logits at every position)."""
    x = torch.tensor([ids], device=device)

    def run():
        with torch.no_grad():
            return hf(x).logits

    return run


def naive_nnsight(model, clean_ids, corrupt_ids):
    """One nnsight trace per (layer, position) cell."""
    n_layers = model.config.n_layer
    out = np.zeros((n_layers, N_POS))
    cache = []
    with torch.no_grad():
        with model.trace(torch.tensor([clean_ids])):
            for layer in range(n_layers):
                cache.append(model.transformer.h[layer].input.clone().save())
        for layer in range(n_layers):
            for pos in range(N_POS):
                with model.trace(torch.tensor([corrupt_ids])):
                    model.transformer.h[layer].input[0, pos] = cache[layer][0, pos]
                    logits = model.lm_head.output[0, -1].save()
                out[layer, pos] = (logits[ANSWER] - logits[WRONG]).item()
    return out


def transformer_lens(folder, hf, tokenizer, clean_ids, corrupt_ids, device="cpu"):
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.patching import get_act_patch_resid_pre

    bridge = TransformerBridge.boot_transformers(str(folder), hf_model=hf, tokenizer=tokenizer, device=device)
    clean, corrupt = torch.tensor([clean_ids], device=device), torch.tensor([corrupt_ids], device=device)
    _, clean_cache = bridge.run_with_cache(clean)

    def metric(logits):
        return logits[0, -1, ANSWER] - logits[0, -1, WRONG]

    def run():
        with torch.no_grad():
            return get_act_patch_resid_pre(bridge, corrupt, clean_cache, metric).cpu().numpy()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--corrupt", choices=("one", "all"), default="one", help="one token differs (like IOI) or every token differs"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-naive", action="store_true", help="leave out the slow naive loop")
    parser.add_argument("--device", default="cpu", help="where the model runs (cpu, cuda)")
    parser.add_argument("--full-heads", action="store_true", help="also the head-by-position grid of every layer")
    args = parser.parse_args()
    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp())
    hf, tokenizer = build(folder)
    hf = hf.to(args.device)
    model = pw.load_model(hf, tokenizer=tokenizer)
    clean_ids, corrupt_ids = prompts(args.corrupt)
    text = lambda ids: " ".join(f"t{i}" for i in ids)
    kw = dict(answer=f"t{ANSWER}", wrong=f"t{WRONG}", metric="logit_diff")

    rows = []
    grid, t, mem = timed(lambda: pw.patch(model, text(clean_ids), text(corrupt_ids), **kw).values, args.repeats)
    rows.append(("patchwidget exact", t, mem))
    # TransformerLens gets its own copy: its bridge rewires the modules of the model it wraps.
    tl_run = transformer_lens(folder, copy.deepcopy(hf), tokenizer, clean_ids, corrupt_ids, args.device)
    tl_grid, t_tl, mem = timed(tl_run, 1)
    rows.append(("TransformerLens get_act_patch_resid_pre", t_tl, mem))
    if not args.skip_naive:
        naive, t, mem = timed(lambda: naive_nnsight(model, clean_ids, corrupt_ids), 1)
        rows.append(("naive nnsight, one trace per cell", t, mem))
        np.testing.assert_allclose(grid, naive, atol=1e-4)
    np.testing.assert_allclose(grid, tl_grid, atol=1e-4)
    attr, t, mem = timed(
        lambda: pw.patch(model, text(clean_ids), text(corrupt_ids), method="attribution", **kw).values,
        args.repeats,
    )
    rows.append(("patchwidget attribution (estimate)", t, mem))
    _, t_forward, mem = timed(plain_forward(hf, clean_ids, args.device), max(args.repeats, 5))
    rows.append(("one plain forward pass (Hugging Face, 1 prompt)", t_forward, mem))
    _, t_heads, mem = timed(
        lambda: pw.patch(model, text(clean_ids), text(corrupt_ids), site="head_out", layers=[6], **kw), args.repeats
    )
    rows.append(("patchwidget head_out grid of one layer (12 x 15)", t_heads, mem))
    if args.full_heads:
        _, t, mem = timed(lambda: pw.patch(model, text(clean_ids), text(corrupt_ids), site="head_out", **kw), 1)
        rows.append(("patchwidget head_out grid of every layer (12 x 12 x 15)", t, mem))

    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "CPU"
    print(
        f"\nGPT-2-small shape (12 layers, d_model 768, vocab 50257, random weights), {N_POS} tokens, "
        f"corrupted tokens: {args.corrupt}; {device}, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}"
    )
    print(f"one layer's head grid = {t_heads / t_forward:.1f} plain forward passes")
    print("exact grids agree with TransformerLens" + ("" if args.skip_naive else " and the naive loop") + " to 1e-4")
    corr = np.corrcoef(attr.ravel(), grid.ravel())[0, 1]
    print(f"attribution vs exact resid_pre: Pearson r = {corr:.3f} (the residual stream, where it is known to be poor)")
    print("\n| method | time (s) | speed-up over TransformerLens | peak memory (MB) |\n|---|---:|---:|---:|")
    for name, seconds, peak in rows:
        print(f"| {name} | {seconds:.2f} | {t_tl / seconds:.1f}x | {peak / 2**20:.0f} |")


if __name__ == "__main__":
    main()
