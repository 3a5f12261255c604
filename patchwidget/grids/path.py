"""Path patching: which heads talk to which, exactly.

The IOI paper's method (Wang et al. 2022), with *source* = clean and *target* =
corrupted for ``direction="denoise"`` (swapped for ``"noise"``):

1. Run source and target; keep every head's output (per head, before the output projection).
2. Run the target prompt with the sender heads' outputs taken from the source run and
   every other head's output frozen at its target-run value; MLPs and norms recompute.
   For ``receivers="logits"`` the metric is read from this run.
3. Otherwise capture, in run 2, the receivers' inputs (the query, key or value of each
   receiver head, at its positions); then run the target prompt again with only those
   inputs replaced, everything else recomputing, and read the metric.

Both runs are batched copies in the engine's one loop: run 2 is a copy whose writes are
the senders (from the source run) and the freezes (from the target run, at every head of
the layers between the senders and the receivers: heads below the senders cannot change);
run 3 is a copy whose writes are what run 2 captured.

Example:
    >>> import patchwidget as pw
    >>> p = pw.demo_data.ioi_pairs(1)[0]
    >>> r = pw.path_patch(pw.load_model(), p.clean, p.corrupt, answer=p.answer, wrong=p.wrong,
    ...                   receivers=[pw.Cell("head_q", 3, head=0)])
    >>> r.dims
    ('layer', 'head')
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..core import metrics as M
from ..core.batches import Copy
from ..core.cells import Cell, Write, cell_write, indices, layers_by_site, span_write, target_positions
from ..core.engine import (
    Request,
    entry_point,
    fit_budget,
    patched_metric,
    prepare,
    provenance,
    summarize,
    warn_non_finite,
)
from ..core.runs import Progress, cached_runs, with_noise
from ..data.prompts import Noise, PromptBatch, Texts
from ..errors import SettingsError
from .result import PatchResult

__all__ = ["RECEIVER_SITES", "path_patch"]

RECEIVER_SITES = ("head_q", "head_k", "head_v")
Sender = tuple[int, int]  # (layer, head)


@entry_point
def path_patch(
    model: Any,
    clean: Texts,
    corrupt: Texts | Noise,
    *,
    answer: Texts,
    wrong: Texts,
    receivers: str | Sequence[Cell] = "logits",
    senders: Sequence[Sender] | None = None,
    metric: M.Metric = M.DEFAULT,
    direction: str = "denoise",
    batch_size: int = 64,
    memory_budget: int | None = None,
    progress: Progress | None = None,
    remote: bool | str = False,
    runs_cache: dict | None = None,
    speedups: Any = None,
) -> PatchResult:
    """Patch the paths from sender heads to receivers (the logits, or heads' queries, keys or values).

    ``senders=None`` sweeps every head: the result has dims ``("layer", "head")``,
    and senders with no path to any receiver (at or above every receiver's layer)
    hold NaN. A list of ``(layer, head)`` pairs patches that set together and gives
    one value (dims ``()``). ``receivers`` is ``"logits"`` or a list of
    ``Cell("head_q" | "head_k" | "head_v", layer, head=h)``, patched together (under
    grouped-query attention a k/v receiver is a key-value head; ``pos`` narrows a
    receiver to one position). Everything else is as in ``patch``.

    With prompts made from a template (pairs of any lengths), a sender carries the
    source value at the positions aligned by span (as ``patch`` aligns them, from
    each span's last token) and is frozen at its target value at the positions
    with no partner; a receiver's ``pos`` is a span label (or None: every position).

    Example:
        >>> r = path_patch(model, clean, corrupt, answer="Mary", wrong="John",
        ...                senders=[(0, 1), (1, 2)])   # doctest: +SKIP
        >>> float(r.values)                          # doctest: +SKIP
    """
    to_logits = isinstance(receivers, str)
    if to_logits and receivers != "logits":
        raise SettingsError(f"receivers must be 'logits' or a list of head_q/head_k/head_v Cells, got {receivers!r}")
    receiver_cells = [] if to_logits else _receiver_cells(receivers)
    request = prepare(
        model,
        clean,
        corrupt,
        answer=answer,
        wrong=wrong,
        sites={"head_out", *(c.site for c in receiver_cells)},
        metric=metric,
        direction=direction,
        batch_size=batch_size,
        memory_budget=memory_budget,
        remote=remote,
        speedups=speedups,
    )
    info, prompts = request.info, request.prompts
    receiver_writes = [cell_write(c, info, prompts.n_pos, prompts.columns) for c in receiver_cells]
    top = info.n_layers if to_logits else max(w.layer for w in receiver_writes)  # layers a path can end below
    sets, reachable = _sender_sets(senders, info.n_layers, info.n_heads, top)
    rows, noise = with_noise(model, info, prompts, remote)
    reads = {"head_out": list(range(info.n_layers)), **layers_by_site(receiver_writes)}
    per_pass = fit_budget(model, request, reads, rows)

    with torch.no_grad():
        keep_kv = request.speedups.reuse_prefix
        runs = cached_runs(runs_cache, model, info, reads, rows, noise, remote, per_pass, progress, keep_kv)
        directed = runs.directed(direction, noise)
        computed = [s for s, ok in zip(sets, reachable) if ok]
        copies = [
            (pair, _run2_writes(s, info.n_heads, top, _sent_at(rows, pair, direction), rows.n_pos))
            for pair in range(rows.n_pairs)
            for s in computed
        ]
        values = _run(model, request, directed, copies, rows, receiver_writes, per_pass, progress, direction)
    per_row = torch.full((rows.n_pairs, len(sets)), float("nan"))
    per_row[:, torch.tensor(reachable)] = values.view(rows.n_pairs, len(computed))
    if senders is None:
        per_row = per_row.view(rows.n_pairs, info.n_layers, info.n_heads)
    else:
        per_row = per_row[:, 0]
    per_pair, clean_base, corrupt_base = summarize(
        per_row, rows, prompts.n_pairs, request.metric, runs.clean_logits, runs.corrupt_logits
    )
    result = _result(model, request, per_pair, clean_base, corrupt_base, senders, receiver_cells)
    # NaN where no path exists is the answer; NaN where a path was patched is the metric's, and said.
    bad = ~np.isfinite(result.per_pair).all(axis=0) & np.asarray(reachable).reshape(result.per_pair.shape[1:])
    warn_non_finite(
        [" ".join(f"{d[0].upper()}{i}" for d, i in zip(result.dims, ix)) for ix in np.argwhere(bad)], request.metric
    )
    return result


def _run(
    model: Any,
    request: Request,
    runs: Any,
    copies: list[Copy],
    rows: Any,
    receiver_writes: list[Write],
    per_pass: int,
    progress: Progress | None,
    direction: str,
) -> torch.Tensor:
    """Run 2 (and, for head receivers, run 3) of every copy; the metric per copy."""
    if not copies:
        return torch.empty(0)
    if not receiver_writes:  # receivers="logits": the metric of run 2
        return patched_metric(model, request, runs, copies, rows, per_pass, progress)
    capture = layers_by_site(receiver_writes)
    twice = _twice(progress, len(copies))
    _, captured = patched_metric(model, request, runs, copies, rows, per_pass, twice(0), capture=capture)
    run3 = [
        (pair, tuple(_at_target(w, rows, pair, direction)._replace(origin="captured", row=i) for w in receiver_writes))
        for i, (pair, _) in enumerate(copies)
    ]
    return patched_metric(model, request, runs, run3, rows, per_pass, twice(1), captured=captured)


def _twice(progress: Progress | None, n: int) -> Any:
    """Progress over two passes through ``n`` copies, reported as one count to ``2 n``."""

    def stage(k: int) -> Progress | None:
        return None if progress is None else (lambda done, total: progress(k * n + done, 2 * n))

    return stage


def _sent_at(rows: PromptBatch, pair: int, direction: str) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """Where a sender carries the source value in pair ``pair``'s target prompt, and where it reads it:
    every position, or with prompts made from a template the positions aligned span by span."""
    if rows.columns is None:
        return tuple(range(rows.n_pos)), None
    every_span = Write(0, "head_out", 0, tuple(range(len(rows.columns))))
    w = span_write(every_span, rows, pair, direction)
    return w.positions, w.read_at


def _at_target(write: Write, rows: PromptBatch, pair: int, direction: str) -> Write:
    """A receiver write at its target positions (span columns made concrete for pair ``pair``)."""
    if rows.columns is None:
        return write
    return write._replace(positions=target_positions(write, rows, pair, direction))


def _run2_writes(
    senders: tuple[Sender, ...],
    n_heads: int,
    top: int,
    sent: tuple[tuple[int, ...], tuple[int, ...] | None],
    n_pos: int,
) -> tuple[Write, ...]:
    """Senders from the source run at the ``sent`` positions (written, read) and frozen at the target run
    elsewhere; every other head frozen at the target run, from just above the lowest sender up to the
    receivers' layer (heads below the lowest sender see the target run unchanged)."""
    if not senders:  # no sender: the target run itself
        return ()
    chosen = set(senders)
    written, read_at = sent
    every, unsent = tuple(range(n_pos)), tuple(sorted(set(range(n_pos)) - set(written)))
    writes = [Write(layer, "head_out", head, written, read_at=read_at) for layer, head in senders]
    # A sender's positions with no partner in the source prompt (spans of different lengths) carry no path.
    writes += [Write(layer, "head_out", head, unsent, origin="target") for layer, head in senders if unsent]
    low = min(layer for layer, _ in senders)
    writes += [
        Write(layer, "head_out", head, every, origin="target")
        for layer in range(low + 1, top)
        for head in range(n_heads)
        if (layer, head) not in chosen
    ]
    return tuple(writes)


def _receiver_cells(receivers: Any) -> list[Cell]:
    if not isinstance(receivers, Sequence) or not receivers:
        raise SettingsError(
            f"receivers must be 'logits' or a non-empty list of head_q/head_k/head_v Cells, got {receivers!r}"
        )
    for cell in receivers:
        if not isinstance(cell, Cell) or cell.site not in RECEIVER_SITES or cell.head is None:
            raise SettingsError(f"a receiver must be a Cell of site head_q, head_k or head_v with a head, got {cell!r}")
    if len(set(receivers)) != len(receivers):
        raise SettingsError(f"receivers has repeated cells: {[c.label for c in receivers]}")
    return list(receivers)


def _sender_sets(
    senders: Sequence[Sender] | None, n_layers: int, n_heads: int, top: int
) -> tuple[list[tuple[Sender, ...]], list[bool]]:
    """The sender sets to patch (one per head for a sweep) and whether each reaches a receiver."""
    if senders is None:
        sets = [((layer, head),) for layer in range(n_layers) for head in range(n_heads)]
        return sets, [s[0][0] < top for s in sets]
    if isinstance(senders, str) or not isinstance(senders, Sequence):
        raise SettingsError(f"senders must be None or a list of (layer, head) pairs, got {senders!r}")
    checked = []
    for pair in senders:
        if not isinstance(pair, Sequence) or isinstance(pair, str) or len(pair) != 2:
            raise SettingsError(f"senders must be (layer, head) pairs, got {pair!r}")
        layer = indices([pair[0]], n_layers, "sender layer", "layers")[0]
        head = indices([pair[1]], n_heads, "sender head", "heads")[0]
        checked.append((layer, head))
    if len(set(checked)) != len(checked):
        raise SettingsError(f"senders has repeated heads: {checked}")
    if checked and min(layer for layer, _ in checked) >= top:
        raise SettingsError(
            f"no sender in {checked} has a path to the receivers: every sender is at or above layer {top}"
        )
    return [tuple(checked)], [True]


def _result(
    model: Any,
    request: Request,
    per_pair: torch.Tensor,
    clean_base: torch.Tensor,
    corrupt_base: torch.Tensor,
    senders: Sequence[Sender] | None,
    receiver_cells: list[Cell],
) -> PatchResult:
    info, prompts = request.info, request.prompts
    sweep = senders is None
    settings = {
        "site": "path",
        "receivers": "logits" if not receiver_cells else [c.label for c in receiver_cells],
        "senders": "every head" if sweep else [list(s) for s in senders],
        "method": "exact",
        **provenance(model, request),
    }
    return PatchResult(
        per_pair=per_pair.detach().cpu().numpy(),
        dims=("layer", "head") if sweep else (),
        coords={"layer": list(range(info.n_layers)), "head": list(range(info.n_heads))} if sweep else {},
        tokens=prompts.tokens,
        clean_baseline=clean_base.numpy(),
        corrupt_baseline=corrupt_base.numpy(),
        settings=settings,
    )
