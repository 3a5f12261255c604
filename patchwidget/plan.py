"""Which patched copies run together, and from which position: the batch plan.

A copy changes nothing before the first position where one of its writes puts a
value other than the target run's own (``first_changes``); a batch runs its
positions from its rows' smallest first position and its blocks from their
lowest patched layer. ``plan_batches`` splits the copies into batches of least
work under that cost, plus a fixed cost per block a forward pass runs.

Example:
    >>> plan_batches([(0, 0), (0, 1), (5, 0)], batch_size=2, n_pos=6, n_layers=2, ids=[0, 1, 2])
    [[0, 2], [1]]
"""

from __future__ import annotations

import math

import torch

from .grid import Write

Key = tuple[int, str]  # (layer, site)
Copy = tuple[int, tuple[Write, ...]]  # (pair, the writes of one patched copy of that pair's target prompt)

NO_CHANGE = torch.iinfo(torch.long).max


def first_changes(copies: list[Copy], tables: dict[str, dict[Key, torch.Tensor]]) -> torch.Tensor:
    """Per copy, the first position where a write puts a value other than the target run's own, ``(copy,)``.

    ``NO_CHANGE`` where none does: the copy is a no-op. Before that position the copy
    is the target run at every layer (the model is causal), so writes there, freezes
    included, change nothing. One comparison per (layer, site) for all copies at once.
    """
    entries: dict[tuple[int, str, str], list[tuple[int, int, int, int, int]]] = {}
    for i, (pair, writes) in enumerate(copies):
        for w in writes:
            if w.origin == "target":  # a freeze puts back the target run's own value
                continue
            at = w.row if w.origin == "captured" else pair
            pairs = zip(w.positions, w.read_at or w.positions)
            entries.setdefault((w.layer, w.site, w.origin), []).extend((i, at, pair, p, r, w.unit) for p, r in pairs)
    first = torch.full((len(copies),), NO_CHANGE)
    target = tables["target"]
    for (layer, site, origin), rows in entries.items():
        i, at, pair, p, r, u = torch.tensor(rows).T
        values = tables[origin][(layer, site)][at, r, u]  # (entry, width)
        changed = (values != target[(layer, site)][pair, p, u]).flatten(1).any(1).cpu()
        first.scatter_reduce_(0, i[changed], p[changed], "amin")
    return first


# Each block a forward pass runs costs about as much, beyond its rows' work, as this many positions through it:
# the pass reads the block's weights once, however few rows it holds. Tuned on the GPT-2-small shape on 2 CPU
# cores (benchmarks/bench_resid_pre.py): 20 and 45 were slower there. A pass that starts at a higher layer
# reads fewer blocks, so it costs less (one cost per pass, whatever its blocks, was about 5 % slower on
# every-token grids).
PASS_OVERHEAD = 30
REMOTE_PASS_OVERHEAD = 10**9  # as few requests as batch_size allows; among those, the least work


BAND_WIDTHS = (2, 3, 4, 6, 8)  # position bands tried by plan_batches


def plan_batches(
    costs: list[tuple[int, int]],
    batch_size: int,
    n_pos: int,
    n_layers: int,
    ids: list[int],
    pass_overhead: float | None = None,
) -> list[list[int]]:
    """Split copies into batches of at most ``batch_size`` that together do the least work.

    ``costs`` holds each copy's (first position, lowest layer). A batch runs its
    positions from its smallest first position and its blocks from its lowest
    layer, so its work is rows x positions x layers, plus an overhead per block
    it runs. The copies are ordered by position then layer, by layer then position,
    and in bands of ``w`` positions each ordered by layer (``BAND_WIDTHS``: a band's
    copies at one layer share a pass and start within ``w`` positions of each
    other, which suits grids where every position changes); for each order,
    dynamic programming finds the split of least work into consecutive runs, and
    the plan of least work is taken.
    """
    overhead = PASS_OVERHEAD if pass_overhead is None else pass_overhead
    plans = []
    orders = [lambda i: costs[i], lambda i: costs[i][::-1]]
    orders += [lambda i, w=w: (costs[i][0] // w, costs[i][1], costs[i][0]) for w in BAND_WIDTHS]
    for key in orders:
        order = sorted(range(len(costs)), key=key)
        n = len(order)
        best = [0.0] + [math.inf] * n  # best[j]: least work for the first j copies of this order
        cut = [0] * (n + 1)
        for i in range(n):
            position, lowest = n_pos, n_layers
            for j in range(i, min(n, i + batch_size)):
                position = min(position, costs[order[j]][0])
                lowest = min(lowest, costs[order[j]][1])
                work = best[i] + (n_layers - lowest) * (overhead + (j - i + 1) * (n_pos - position))
                if work < best[j + 1]:
                    best[j + 1], cut[j + 1] = work, i
        batches, j = [], n
        while j > 0:
            batches.append([ids[k] for k in order[cut[j] : j]])
            j = cut[j]
        plans.append((best[n], batches[::-1]))
    return min(plans, key=lambda plan: plan[0])[1]
