"""Fitting patching runs into a memory budget.

The patched runs are the part that grows with the grid, so a budget decides how
many rows of patched copies share one forward pass (a row is at most a prompt
long, whether it holds one copy or several packed). The estimates below count the
tensors a forward pass keeps alive at its peak, per batch row, with a margin;
they are deliberately on the high side.

Example:
    >>> patch(model, clean, corrupt, answer="Mary", wrong="John",
    ...       memory_budget=2 * 2**30)   # doctest: +SKIP  (at most about 2 GiB)
"""

from __future__ import annotations

from ..errors import MemoryBudgetError
from .sites import ModelInfo

MARGIN = 1.5  # allocator slack and temporaries the count below misses


def forward_row_elements(info: ModelInfo, n_pos: int, vocab: int, reads: int = 1) -> int:
    """Elements one batch row keeps alive at the peak of a forward pass (no gradients). Its logits are held
    about three times over at each of its ``reads`` positions (the unembedding's output, a float32 copy, their
    log-softmax); answers of several tokens are read at each fed token, so a large vocabulary counts per read."""
    d, t = info.d_model, n_pos
    attn = info.n_heads * info.d_head
    block = t * (4 * d + 3 * attn + attn + 2 * info.d_mlp) + 2 * info.n_heads * t * t
    return block + 3 * vocab * reads


def kv_elements(info: ModelInfo, n_pos: int) -> int:
    """Elements of one row's keys and values at every layer (kept by the runs, copied for prefix reuse)."""
    return 2 * info.n_layers * n_pos * info.n_kv_heads * info.d_head


def packed_row_elements(info: ModelInfo, n_pos: int) -> int:
    """Elements a packed row (several copies end to end, ``batches.pack_rows``) adds to a one-copy row's forward pass.

    Its queries, at most ``n_pos``, see the cached prefix and the row itself, up to
    ``2 * n_pos`` keys: the attention scores and weights may be twice as wide, and
    the 4D mask is as large as one head's scores.
    """
    t = n_pos
    return 2 * info.n_heads * t * t + 2 * t * t


def patched_row_bytes(info: ModelInfo, n_pos: int, vocab: int, dtype_bytes: int, reads: int = 1) -> int:
    """Bytes per row of patched copies: its forward pass (a packed row's wider attention included), the
    cached block outputs fed to skipped layers and the target run's keys and values for the positions it
    does not compute."""
    skipped = info.n_layers * n_pos * info.d_model
    elements = forward_row_elements(info, n_pos, vocab, reads) + packed_row_elements(info, n_pos)
    return int(MARGIN * dtype_bytes * (elements + skipped + kv_elements(info, n_pos)))


def cache_bytes(info: ModelInfo, n_pos: int, vocab: int, dtype_bytes: int, runs: int, site_width: int) -> int:
    """Bytes the clean and corrupted runs keep: block outputs, keys and values, and site activations of every run.

    Their forward passes take as many rows at a time as the patched copies, each
    row costing less than a patched copy, so ``patched_row_bytes`` covers them.
    """
    kept = runs * (info.n_layers * n_pos * (info.d_model + site_width) + kv_elements(info, n_pos))
    return int(MARGIN * dtype_bytes * kept)


def rows_per_batch(
    budget: int | None,
    batch_size: int,
    info: ModelInfo,
    n_pos: int,
    vocab: int,
    dtype_bytes: int,
    runs: int,
    site_width: int,
    reads: int = 1,
) -> int:
    """How many rows of patched copies fit in one forward pass under ``budget`` bytes (``reads``: positions
    each row's logits are read at)."""
    if budget is None:
        return batch_size
    fixed = cache_bytes(info, n_pos, vocab, dtype_bytes, runs, site_width)
    per_row = patched_row_bytes(info, n_pos, vocab, dtype_bytes, reads)
    if fixed + per_row > budget:
        raise MemoryBudgetError(
            f"memory_budget={budget / 2**20:.2f} MB is too small: the cached clean and corrupted runs need about "
            f"{fixed / 2**20:.2f} MB and each row of patched copies about {per_row / 2**20:.2f} MB more "
            f"({n_pos} tokens); raise the budget or use fewer prompt pairs or tokens"
        )
    return int(max(1, min(batch_size, (budget - fixed) // per_row)))  # a budget may be a float


def attribution_row_bytes(
    info: ModelInfo, n_pos: int, vocab: int, dtype_bytes: int, site_width: int, reads: int = 1
) -> int:
    """Bytes per prompt row of attribution patching: the target run keeps every
    layer's activations for its backward pass, the source run one layer's, and
    both runs' site activations and the gradients are kept to the end."""
    graph = (info.n_layers + 2) * forward_row_elements(info, n_pos, vocab, reads)
    kept = 3 * info.n_layers * n_pos * site_width
    return int(MARGIN * dtype_bytes * (graph + kept))


def attribution_rows(
    budget: int,
    batch_size: int,
    info: ModelInfo,
    n_pos: int,
    vocab: int,
    dtype_bytes: int,
    site_width: int,
    reads: int = 1,
) -> int:
    """How many prompt rows one attribution pass (forward and backward) may take under ``budget`` bytes."""
    per_row = attribution_row_bytes(info, n_pos, vocab, dtype_bytes, site_width, reads)
    if per_row > budget:
        raise MemoryBudgetError(
            f"memory_budget={budget / 2**20:.2f} MB is too small for method='attribution': its backward pass "
            f"needs about {per_row / 2**20:.2f} MB for one prompt pair ({n_pos} tokens) and cannot be split "
            "further; raise the budget, use fewer tokens, or use method='exact'"
        )
    return int(max(1, min(batch_size, budget // per_row)))
