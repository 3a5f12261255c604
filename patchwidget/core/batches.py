"""Which patched copies run together, and from which position: the batch batches.

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

import bisect
import math
from dataclasses import dataclass

import torch

from .cells import Write

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
# On a CPU a pass of more positions than this (rows x positions) runs slower per position: its activations
# no longer stay in the processor's caches (measured on 2 cores, GPT-2-small shape, benchmarks/bench_plan.py:
# a 240-token grid's packed passes took 2.13 s capped at 512 positions, 6.27 s uncapped). A GPU is not capped.
CPU_PASS_POSITIONS = 512


def plan_batches(
    costs: list[tuple[int, int]],
    batch_size: int,
    n_pos: int,
    n_layers: int,
    ids: list[int],
    pass_overhead: float | None = None,
    max_positions: int | None = None,
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
    the plan of least work is taken. With ``max_positions``, a batch holds more than
    one copy only while its rows x positions stay within it.
    """
    overhead = PASS_OVERHEAD if pass_overhead is None else pass_overhead
    cap = math.inf if max_positions is None else max_positions
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
                if j > i and (j - i + 1) * (n_pos - position) > cap:
                    break
                work = best[i] + (n_layers - lowest) * (overhead + (j - i + 1) * (n_pos - position))
                if work < best[j + 1]:
                    best[j + 1], cut[j + 1] = work, i
        batches, j = [], n
        while j > 0:
            batches.append([ids[k] for k in order[cut[j] : j]])
            j = cut[j]
        plans.append((best[n], batches[::-1]))
    return min(plans, key=lambda plan: plan[0])[1]


# --- the exact speed-ups, chosen once per request -------------------------------------------------


@dataclass(frozen=True)
class Speedups:
    """Which exact speed-ups a request's patched copies take. None of them changes a number (each is
    checked on and off on every architecture, ``tests/test_prefix.py``); ``choose`` keeps those that apply.

    Example:
        >>> Speedups(pack=False).reuse_prefix
        True
    """

    reuse_prefix: bool = True  # a copy computes from its first changed position over the target run's cached keys
    pack: bool = True  # short copies of one pair share a row, end to end, under a 4D attention mask
    trim_last_mlp: bool = True  # the last block's MLP runs at the read positions only where nothing after it is read
    # The logit difference unembeds only the answer and wrong columns; with answers of several tokens, every
    # column but only at the positions read (a packed row would otherwise unembed every copy's reads).
    two_columns: bool = True
    max_positions: int | None = CPU_PASS_POSITIONS  # rows x positions per pass on a CPU (None: no cap)
    pass_overhead: float = PASS_OVERHEAD  # the cost of one block a pass runs, in positions through it


NONE = Speedups(False, False, False, False, None)  # every copy whole, one per row: the plain batched loop


def choose(
    wanted: Speedups,
    *,
    remote: bool,
    on_cpu: bool,
    packable: bool,
    columns_metric: bool,
    sites: set[str],
    sequences: bool = False,
) -> Speedups:
    """The speed-ups of ``wanted`` that apply to a request, decided once when it is prepared.

    On a server every pass is a request (its round trip outweighs any work a finer split saves, and the
    cached keys and values would travel back); the attention pattern's writes and reads span every key
    position, so its copies run whole and unpacked; packing needs a model that takes a 4D mask
    (``packable``); two columns need a metric that reads only the answer and wrong logits; the pass cap
    is a CPU's.
    Whether the runs' cache holds every position and whether the unembedding's output is
    the model's logits are observed on the runs (``runs.Runs``).

    Example:
        >>> chosen = choose(Speedups(), remote=True, on_cpu=True, packable=True, columns_metric=True, sites=set())
        >>> chosen.reuse_prefix, chosen.pack, chosen.max_positions
        (False, False, None)
    """
    pattern = "attn_pattern" in sites
    return Speedups(
        reuse_prefix=wanted.reuse_prefix and not remote and not pattern,
        pack=wanted.pack and not remote and not pattern and packable,
        trim_last_mlp=wanted.trim_last_mlp,
        two_columns=wanted.two_columns and (columns_metric or sequences) and not remote,
        max_positions=wanted.max_positions if on_cpu and not remote else None,
        pass_overhead=REMOTE_PASS_OVERHEAD if remote else wanted.pass_overhead,
    )


# --- packed rows: several short copies of one pair end to end in one row of a pass ------------------


@dataclass(frozen=True)
class Row:
    """One row of a pass: copies of pair ``pair``, each a segment ``(copy, first, end)`` that computes
    prompt positions ``first..end-1``; ``lowest`` is the lowest layer any of them writes."""

    pair: int
    lowest: int
    segments: tuple[tuple[int, int, int], ...]

    @property
    def width(self) -> int:
        return sum(end - first for _, first, end in self.segments)

    def position(self, n_pos: int) -> int:
        """The first position of a one-copy row as wide as this one: its cost to ``plan_batches``.

        A lone copy's row runs from its first position to the prompt's end (``layout``).
        """
        return self.segments[0][1] if len(self.segments) == 1 else n_pos - self.width


def pack_rows(
    ids: list[int], pairs: list[int], firsts: list[int], ends: list[int], lowest: list[int], capacity: int
) -> list[Row]:
    """Pack copies into rows of at most ``capacity`` positions; ``capacity=0`` gives one copy per row.

    A copy computes only its positions ``first..end-1`` (the rest are the target
    run's), so copies of one pair patched at the same lowest layer can share a row,
    each seeing the target run's cached keys and values before its own first position
    and, causally, its own segment (``segment_mask``). On an every-token grid the
    copies from position p and from position n-1-p fill one prompt-length row
    exactly. Best-fit decreasing: each copy, longest first, goes into the fullest row
    it fits in.

    Example:
        >>> [r.segments for r in pack_rows([0, 1, 2], [0, 0, 0], [0, 2, 4], [6, 6, 6], [0, 0, 0], capacity=6)]
        [((0, 0, 6),), ((1, 2, 6), (2, 4, 6))]
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for i in ids:
        groups.setdefault((pairs[i], lowest[i]), []).append(i)
    rows = []
    for (pair, low), members in groups.items():
        members.sort(key=lambda i: firsts[i] - ends[i])  # longest first
        bins: list[list[tuple[int, int, int]]] = []
        free: list[tuple[int, int]] = []  # (free positions, bin), sorted
        for i in members:
            length = ends[i] - firsts[i]
            at = bisect.bisect_left(free, (length, -1))
            if at < len(free):
                room, b = free.pop(at)
            else:
                room, b = capacity, len(bins)
                bins.append([])
            bins[b].append((i, firsts[i], ends[i]))
            if room - length > 0 and capacity:
                bisect.insort(free, (room - length, b))
        rows += [Row(pair, low, tuple(segments)) for segments in bins]
    return rows


@dataclass(frozen=True)
class Layout:
    """Where a batch's copies sit in its forward pass: row ``copy_row[k]`` computes copy ``k``'s prompt
    positions ``copy_first[k]..copy_end[k]-1`` at indices from ``copy_offset[k]`` on.

    ``start`` is set when every row holds one copy: the pass then computes positions
    ``start..n_pos-1`` of every row, with the keys and values before ``start`` cached.
    Otherwise (packed rows) ``positions`` holds the prompt position at each index
    of each row, ``segments`` which copy of the row it belongs to (-1 - index for
    padding), and the cache holds positions ``< cache_end``.
    """

    pairs: torch.Tensor  # (row,)
    positions: torch.Tensor  # (row, width)
    segments: torch.Tensor | None  # (row, width)
    copy_row: torch.Tensor  # (copy,)
    copy_offset: torch.Tensor  # (copy,)
    copy_first: torch.Tensor  # (copy,)
    copy_end: torch.Tensor  # (copy,)
    start: int | None
    cache_end: int

    @property
    def copy_last(self) -> torch.Tensor:
        """Index of each copy's last real token in its row, ``(copy,)``."""
        return self.copy_offset + self.copy_end - 1 - self.copy_first

    def index(self, copy: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """Index in its row of prompt position ``position`` of copy ``copy`` (positions from its first on)."""
        return self.copy_offset[copy] + position - self.copy_first[copy]


def pass_shape(rows: list[Row], n_pos: int) -> tuple[int | None, int, int]:
    """``(start, width, cache_end)`` of a pass over ``rows``: with one copy per row, every row runs
    positions ``start..n_pos-1`` over the cache before ``start``; packed (``start`` None), every row is
    as wide as the widest and the cache runs to the latest first position of any copy."""
    if all(len(row.segments) == 1 for row in rows):
        start = min(row.segments[0][1] for row in rows)
        return start, n_pos - start, start
    return None, max(row.width for row in rows), max(first for row in rows for _, first, _ in row.segments)


def layout(rows: list[Row], n_pos: int) -> tuple[list[int], Layout]:
    """The copies of ``rows`` in row order, and where each sits in the pass."""
    copies, row_of, offset, first, end = [], [], [], [], []
    for r, row in enumerate(rows):
        at = 0
        for copy, f, e in row.segments:
            copies.append(copy)
            row_of.append(r)
            offset.append(at)
            first.append(f)
            end.append(e)
            at += e - f
    pairs = torch.tensor([row.pair for row in rows])
    start, width, cache_end = pass_shape(rows, n_pos)
    if start is not None:
        positions = torch.arange(start, n_pos).expand(len(rows), -1)
        offset = [f - start for f in first]
        return copies, Layout(pairs, positions, None, *map(torch.tensor, (row_of, offset, first, end)), start, start)
    positions = torch.zeros(len(rows), width, dtype=torch.long)
    segments = -1 - torch.arange(width).repeat(len(rows), 1)  # padding: a segment of its own
    for k, (r, o, f, e) in enumerate(zip(row_of, offset, first, end)):
        positions[r, o : o + e - f] = torch.arange(f, e)
        segments[r, o : o + e - f] = k
    tensors = map(torch.tensor, (row_of, offset, first, end))
    return copies, Layout(pairs, positions, segments, *tensors, None, cache_end)


def segment_mask(lay: Layout) -> torch.Tensor:
    """Which keys each query of a packed pass sees, ``(row, 1, width, cache_end + width)``, True where it does.

    A copy's token sees the cached target positions before the copy's first position,
    and the earlier tokens of its own segment; a padding index sees itself only.
    """
    seg = lay.segments  # (row, width)
    width = seg.shape[1]
    first = torch.where(seg >= 0, lay.copy_first[seg.clamp(min=0)], 0)  # (row, width)
    cached = torch.arange(lay.cache_end)[None, None, :] < first[:, :, None]  # (row, query, cache)
    causal = torch.arange(width)[None, :] <= torch.arange(width)[:, None]  # (query, key)
    own = (seg[:, :, None] == seg[:, None, :]) & causal  # (row, query, key)
    return torch.cat([cached, own], 2)[:, None]


def tree_mask(lay: Layout, allowed: torch.Tensor) -> torch.Tensor:
    """Which keys each query of a pass sees by its pair's own mask ``allowed`` ``(pair, width, width)`` (rows
    with continuations, ``core.continuation``), ``(row, 1, width, cache_end + width)``, True where it does.

    Keys are the cached positions ``< cache_end`` then the pass's own; for packed rows, AND it with
    ``segment_mask``, which keeps copies apart.
    """
    rows, width = lay.positions.shape
    keys = torch.cat([torch.arange(lay.cache_end).expand(rows, -1), lay.positions], 1)  # (row, key)
    picked = allowed[lay.pairs]  # (row, width, width)
    return picked[torch.arange(rows)[:, None, None], lay.positions[:, :, None], keys[:, None, :]][:, None]


# A position attends to every key its pass holds: the cached prefix and the positions computed. Its work
# through a block grows as 1 + keys / (KEY_COST_PER_D * d_model) (the block's products cost about
# 24 d_model^2 per position, attention 4 d_model per key, plus the scores' softmax and mask). A packed row
# sees the keys of every copy in its pass, up to twice the prompt, so on long prompts, where the batch
# plan already wastes little, packing costs more than it saves: ``plan_rows`` takes the cheaper batches.
# Tuned on the GPT-2-small shape on 2 CPU cores (benchmarks/bench_plan.py, 15 and 240 tokens).
KEY_COST_PER_D = 4


def plan_cost(
    rows: list[Row], batches: list[list[int]], n_pos: int, n_layers: int, overhead: float, key_cost: float
) -> float:
    """The estimated work of running ``rows`` in ``batches`` (``plan_batches``' cost, with each position's
    attention to the pass's keys added)."""
    total = 0.0
    for batch in batches:
        members = [rows[i] for i in batch]
        lowest = min(row.lowest for row in members)
        _, width, cache_end = pass_shape(members, n_pos)
        keys = cache_end + width  # every position of the pass attends over the cache and the pass
        total += (n_layers - lowest) * (overhead + len(members) * width * (1 + keys / key_cost))
    return total


def plan_rows(
    ids: list[int],
    pairs: list[int],
    firsts: list[int],
    ends: list[int],
    lowest: list[int],
    n_pos: int,
    n_layers: int,
    d_model: int,
    batch_size: int,
    pack: bool,
    pass_overhead: float | None = None,
    max_positions: int | None = None,
) -> tuple[list[Row], list[list[int]]]:
    """The rows of the copies ``ids`` and the batches of rows to run them in.

    With ``pack``, both one copy per row and packed rows are planned
    (``pack_rows``, ``plan_batches``) and the plan of less estimated work (``plan_cost``)
    is taken. ``pass_overhead`` and ``max_positions`` are as in ``plan_batches``.

    Example:
        >>> rows, batches = plan_rows([0, 1], [0, 0], [0, 3], [4, 4], [0, 0], 4, 2, 768, 64, pack=True)
        >>> [row.segments for row in rows], batches
        ([((0, 0, 4),), ((1, 3, 4),)], [[0, 1]])
    """
    overhead = PASS_OVERHEAD if pass_overhead is None else pass_overhead
    plans = []
    for capacity in (0, n_pos) if pack else (0,):
        rows = pack_rows(ids, pairs, firsts, ends, lowest, capacity)
        if capacity and all(len(row.segments) == 1 for row in rows):
            break  # nothing packed: the same rows as one copy per row, already planned
        costs = [(row.position(n_pos), row.lowest) for row in rows]
        batches = plan_batches(costs, batch_size, n_pos, n_layers, list(range(len(rows))), overhead, max_positions)
        cost = plan_cost(rows, batches, n_pos, n_layers, overhead, KEY_COST_PER_D * d_model)
        plans.append((cost, rows, batches))
    _, rows, batches = min(plans, key=lambda plan: plan[0])
    return rows, batches
