"""A prototype, not the engine: the every-token resid_pre grid with every copy of a layer packed in one row.

Issue 16's every-token goal (15x TransformerLens) is out of reach of the engine's batches: a batch is a
rectangle of rows x positions x layers, and on this grid the best plan computes 1.35 times the least work
(``bench_plan.py``). Packing removes that waste: the 15 copies patched at one layer become segments of one
row, each segment only the positions its copy computes (from its first changed position on), with
position ids from that position and a 4D attention mask under which a segment's tokens see the target
run's cached keys and values before its first position and, causally, their own segment. Each layer's copies
are then one pass of exactly the least work: 12 passes for the grid.

This script writes GPT-2's block out by hand (plain PyTorch, no nnsight, GPT-2 only) to measure what that
layout costs on the GPT-2-small shape of ``bench_resid_pre.py``, and checks a few cells against plain hooked
runs. Building it into the engine means writes, reads and last-token logits in packed coordinates and 4D
masks with a cache through Hugging Face on every architecture; it is not built.

    python benchmarks/prototype_packed_copies.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from bench_resid_pre import build, prompts


def main() -> None:
    torch.manual_seed(0)
    hf, _ = build(Path(tempfile.mkdtemp()))
    hf.eval()
    clean_ids, corrupt_ids = prompts("all")
    n_pos, n_layers = len(clean_ids), hf.config.n_layer
    d, n_heads = hf.config.n_embd, hf.config.n_head
    clean, corrupt = torch.tensor([clean_ids]), torch.tensor([corrupt_ids])
    with torch.no_grad():
        source = hf(clean, output_hidden_states=True).hidden_states  # resid_pre of layer l: hidden_states[l]
        target = hf(corrupt, output_hidden_states=True, use_cache=True)
    cache = target.past_key_values
    kv = [(cache.layers[layer].keys, cache.layers[layer].values) for layer in range(n_layers)]
    blocks = hf.transformer.h

    def packed_layer(layer: int) -> torch.Tensor:
        """The final hidden state at the last token of each copy patched at ``layer`` (one per position)."""
        lengths = torch.tensor([n_pos - p for p in range(n_pos)])
        positions = torch.cat([torch.arange(p, n_pos) for p in range(n_pos)])
        segment = torch.repeat_interleave(torch.arange(n_pos), lengths)
        firsts = torch.cumsum(lengths, 0) - lengths
        h = target.hidden_states[layer][0, positions].clone()
        h[firsts] = source[layer][0, torch.arange(n_pos)]  # each copy's patched cell: its segment's first token
        h = h[None]
        n = len(positions)
        sees_cache = torch.arange(n_pos)[None, :] < segment[:, None]  # cached positions before the segment's start
        same = (segment[:, None] == segment[None, :]) & (torch.arange(n)[None, :] <= torch.arange(n)[:, None])
        mask = torch.zeros(1, 1, n, n_pos + n).masked_fill(~torch.cat([sees_cache, same], 1), -torch.inf)
        for i in range(layer, n_layers):
            block, (keys, values) = blocks[i], kv[i]
            q, k, v = block.attn.c_attn(block.ln_1(h)).split(d, dim=2)
            q, k, v = (t.view(1, n, n_heads, d // n_heads).transpose(1, 2) for t in (q, k, v))
            k, v = torch.cat([keys, k], 2), torch.cat([values, v], 2)
            attn = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            h = h + block.attn.c_proj(attn.transpose(1, 2).reshape(1, n, d))
            h = h + block.mlp(block.ln_2(h))
        return hf.transformer.ln_f(h)[0, firsts + lengths - 1]

    def hooked(layer: int, pos: int) -> torch.Tensor:
        """The same copy as a plain run with a forward pre-hook."""

        def hook(module, args, kwargs):
            x = (args[0] if args else kwargs["hidden_states"]).clone()
            x[0, pos] = source[layer][0, pos]
            if args:
                return (x, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": x}

        handle = blocks[layer].register_forward_pre_hook(hook, with_kwargs=True)
        try:
            return hf.transformer(corrupt).last_hidden_state[0, -1]
        finally:
            handle.remove()

    with torch.no_grad():
        for _ in range(2):  # warm-up
            [packed_layer(layer) for layer in range(n_layers)]
        times = []
        for _ in range(3):
            start = time.perf_counter()
            final = [packed_layer(layer) for layer in range(n_layers)]
            times.append(time.perf_counter() - start)
        cells = [(0, 0), (0, n_pos - 1), (5, 7), (n_layers - 1, 0), (n_layers - 1, n_pos - 1)]
        error = max(float((final[layer][pos] - hooked(layer, pos)).abs().max()) for layer, pos in cells)
    print(
        f"GPT-2-small shape, {n_pos} tokens, every token differing, resid_pre: {n_layers} packed passes "
        f"in {min(times):.2f} s (best of 3; the patched passes only, not the clean and corrupted runs); "
        f"largest difference from plain hooked runs on {len(cells)} cells {error:.1e}"
    )


if __name__ == "__main__":
    main()
