"""Find a bottleneck: a small set of sites that, copied alone into the corrupted run, carries the answer.

This is the denoising question ("which activations, patched in from the clean run, restore the
behaviour?"), searched coarse to fine; it is not whether a set does the task on its own, which
is a circuit's faithfulness (``patchwidget.faithfulness``, ``find_circuit``). On the bundled
model's IOI pairs the last head on the path restores everything here and does nothing alone.

The algorithm, level by level (``levels``, in this order):

1. ``"layers"``: every layer's attention output and MLP output (all positions at once).
2. ``"heads"``: the attention layers kept so far open into their heads (``head_out``); kept MLP
   layers stay whole, or, with ``"neurons"``, open into their 20 neurons of largest estimated effect.
3. ``"positions"``: every kept site opens into one cell per token position.

At each level the candidates are ranked by their single effect (``method="attribution"``: the
gradient estimate; ``"exact"``: one patched copy each), and the smallest prefix of that ranking
whose **exact joint patch** restores at least ``target`` of the normalised effect is kept (greedy
over the ranking; every prefix is verified in one batched pass). If no prefix reaches the target,
the whole level is kept and the search goes on; ``circuit.reached`` says whether the final set
reached it. The restore curve patches the top-ranked cells of the last level jointly at MIB's
sizes (0.1 to 100 % of that level's cells); its ``area`` is the area under it (this is not MIB's
CPR, which is an area under faithfulness).

Example:
    >>> import patchwidget as pw
    >>> pairs = pw.demo_data.ioi_pairs(8)
    >>> circuit = pw.find_bottleneck(pw.load_model(), [p.clean for p in pairs], [p.corrupt for p in pairs],
    ...                              answer=[p.answer for p in pairs], wrong=[p.wrong for p in pairs], target=0.8)
    >>> circuit.reached, len(circuit.cells) < 10
    (True, True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..circuits.circuit import DEFAULT_TARGET, Circuit
from ..core import metrics as M
from ..core.cells import Cell, Write, check_choice, pair_writes
from ..core.engine import METHODS, entry_point, fit_budget, patched_metric, prepare, provenance
from ..core.runs import Progress, cached_runs, with_noise
from ..data.prompts import Noise, Texts
from ..data.templates import LAST_TOKEN
from ..errors import SettingsError
from ..grids.patch import patch

__all__ = ["CURVE_PERCENTS", "LEVELS", "find_bottleneck"]

LEVELS = ("layers", "heads", "neurons", "positions")
CURVE_PERCENTS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)  # MIB's circuit sizes, in % of the finest level
TOP_NEURONS = 20
TOP_SHOWN = 20  # candidates of each level recorded in the trace, largest estimate first


@entry_point
def find_bottleneck(
    model: Any,
    clean: Texts,
    corrupt: Texts | Noise,
    *,
    answer: Texts,
    wrong: Texts,
    target: float = DEFAULT_TARGET,
    levels: Sequence[str] = ("layers", "heads", "positions"),
    metric: M.Metric = M.DEFAULT,
    direction: str = "denoise",
    method: str = "attribution",
    batch_size: int = 64,
    memory_budget: int | None = None,
    progress: Progress | None = None,
    remote: bool | str = False,
    on_level: Callable[[Circuit], None] | None = None,
) -> Circuit:
    """Search coarse to fine for the smallest set of sites whose joint patch restores ``target`` of the effect.

    Returns a ``Circuit`` with ``restore`` (the exact joint restore of the set, over all
    pairs; not faithfulness, see the module docstring), ``reached``, ``trace`` (what each
    level opened, kept and why) and ``curve`` (the restore curve, with its ``area``);
    ``circuit.plot_curve()`` draws it.
    ``on_level(circuit)``, if given, sees the set kept after each level as the search goes
    (the widget draws it), with ``reached`` None until the search ends.

    Prompts made from a template (pairs of any lengths) are searched by span: the
    ``"positions"`` level opens a site into one cell per template piece (the
    ``"last token"`` column, a position every final piece already holds, is left out),
    each cell's ``pos`` a span label, patched aligned as ``patch`` aligns spans.

    Example:
        >>> circuit = find_bottleneck(model, clean, corrupt, answer="Mary", wrong="John", target=0.8)  # doctest: +SKIP
    """
    levels = _check_settings(levels, target, method)
    search = _prepare(
        model, clean, corrupt, answer, wrong, levels, metric, direction, method, batch_size, memory_budget, remote
    )
    trace: list[dict] = []
    memo: dict = {}  # by-position estimates, reused from level to level
    kept: list[Write] = []
    ranked: list[tuple[Write, float]] = []
    for i, level in enumerate(levels):
        ranked = _rank(search, level, kept, memo)
        report = None if progress is None else _stage(progress, i, len(levels))
        measured, size, reached = _keep(search, ranked, target, report)
        kept = [w for w, _ in ranked[:size]]
        restored = float(measured[size].mean())
        trace.append(_trace_entry(search, level, ranked, size, restored, reached, target))
        if on_level is not None:
            cells = [_cell(w, len(search.columns), search.labels) for w in kept]
            on_level(Circuit(cells, [e for _, e in ranked[:size]], {}, restore=restored, trace=list(trace)))
    return _result(search, kept, ranked, measured, trace, target, levels)


def _check_settings(levels: Sequence[str], target: float, method: str) -> tuple[str, ...]:
    """The search's own settings, checked first: a bad one is refused before any prompt is tokenized or run."""
    levels = _check_levels(levels)
    if not isinstance(target, int | float) or isinstance(target, bool) or not 0 < target <= 1:
        raise SettingsError(f"target must be a number in (0, 1], got {target!r}")
    check_choice(method, METHODS, "method")
    return levels


@dataclass
class _Search:
    """What every level shares: the prepared request, its cached runs, and the baselines a restore is measured by."""

    model: Any
    request: Any
    rows: Any
    directed: Any
    per_pass: Any
    direction: str
    method: str
    columns: list[int]  # the columns searched: token positions, or a template's pieces
    labels: list[str] | None  # a template's span labels, None for token positions
    common: dict  # the ``patch`` arguments every single-effect grid shares
    store: dict  # the runs, shared by every grid of the search
    target_base: torch.Tensor  # (pair,) the target run's metric: a restore's 0
    span: torch.Tensor  # (pair,) the source run's lead over it: a restore's 1

    def restore(self, sets: list[tuple[Write, ...]], report: Progress | None = None) -> torch.Tensor:
        """The exact joint restore of each set, per pair: ``(set, pair)``, normalised to the target run's 0."""
        rows, direction = self.rows, self.direction
        n = self.request.prompts.n_pairs
        samples = rows.n_pairs // n  # noise samples per pair
        copies = [(pair, pair_writes(s, rows, pair, direction)) for pair in range(rows.n_pairs) for s in sets]
        with torch.no_grad():
            values = patched_metric(self.model, self.request, self.directed, copies, rows, self.per_pass, report)
        values = values.view(n, samples, len(sets)).mean(1)  # (pair, set)
        return ((values - self.target_base[:, None]) / self.span[:, None]).T

    def neuron_effects(self, layer: int) -> np.ndarray:
        """One MLP layer's neurons' single effects, to pick the ones the "neurons" level opens."""
        grid = patch(
            self.model, **self.common, site="mlp_neuron", method=self.method, layers=[layer], runs_cache=self.store
        )
        return _normalised(grid, self.direction)[0]  # (neuron,)


def _prepare(
    model: Any,
    clean: Texts,
    corrupt: Texts | Noise,
    answer: Texts,
    wrong: Texts,
    levels: tuple[str, ...],
    metric: M.Metric,
    direction: str,
    method: str,
    batch_size: int,
    memory_budget: int | None,
    remote: bool | str,
) -> _Search:
    """Check the prompts and run the clean and corrupted runs once, for every level's grids and patched copies."""
    sites = {"attn_out", "mlp_out", "head_out"} | ({"mlp_neuron"} if "neurons" in levels else set())
    request = prepare(
        model,
        clean,
        corrupt,
        answer=answer,
        wrong=wrong,
        sites=sites,
        metric=metric,
        direction=direction,
        method=method,
        batch_size=batch_size,
        memory_budget=memory_budget,
        remote=remote,
    )
    info, prompts = request.info, request.prompts
    # The columns searched: token positions, or a template's pieces (its "last token" column repeats a position).
    columns = list(range(prompts.n_pos)) if prompts.columns is None else _piece_columns(prompts.columns)
    labels = None if prompts.columns is None else prompts.columns
    rows, noise = with_noise(model, info, prompts, remote)
    per_pass = fit_budget(model, request, sites, rows)
    store: dict = {}
    common = dict(
        clean=clean,
        corrupt=corrupt,
        answer=answer,
        wrong=wrong,
        metric=request.metric,  # resolved once, above
        direction=direction,
        batch_size=batch_size,
        memory_budget=memory_budget,
        remote=remote,
        positions=None if labels is None else columns,
    )
    with torch.no_grad():
        every = {s: list(range(info.n_layers)) for s in sites}
        runs = cached_runs(
            store, model, info, every, rows, noise, remote, per_pass, None, request.speedups.reuse_prefix
        )
    directed = runs.directed(direction, noise)
    target_base, span = _baselines(request, rows, runs, direction)
    return _Search(
        model=model,
        request=request,
        rows=rows,
        directed=directed,
        per_pass=per_pass,
        direction=direction,
        method=method,
        columns=columns,
        labels=labels,
        common=common,
        store=store,
        target_base=target_base,
        span=span,
    )


def _baselines(request: Any, rows: Any, runs: Any, direction: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The target run's metric and the source's lead over it, per pair: a restore's 0 and 1, refused where they meet."""
    fn = request.metric
    n = request.prompts.n_pairs
    samples = rows.n_pairs // n
    ids = (rows.answer_ids, rows.wrong_ids, runs.clean_logits)
    source_logits, target_logits = (
        (runs.clean_logits, runs.corrupt_logits) if direction == "denoise" else (runs.corrupt_logits, runs.clean_logits)
    )
    source_base = fn(source_logits, *ids).float().view(n, samples).mean(1)
    target_base = fn(target_logits, *ids).float().view(n, samples).mean(1)
    span = source_base - target_base
    if (span.abs() < 1e-6).any():
        pair = int(torch.nonzero(span.abs() < 1e-6)[0])
        raise SettingsError(
            f"prompt pair {pair} shows no effect to find a circuit for: its clean and corrupted runs give the "
            f"same {request.metric.name} ({float(source_base[pair]):.4g})"
        )
    return target_base, span


def _rank(search: _Search, level: str, kept: list[Write], memo: dict) -> list[tuple[Write, float]]:
    """The level's candidates with their single effects, largest first: the order the restore stage takes them in."""
    candidates = _candidates(level, kept, search.request.info, tuple(search.columns), search.neuron_effects)
    effects = _single_effects(
        search.model, candidates, search.method, search.common, search.store, memo, search.columns
    )
    order = np.argsort(-np.abs(effects), kind="stable")
    return [(candidates[j], float(effects[j])) for j in order]


def _keep(search: _Search, ranked: list, target: float, report: Progress | None) -> tuple[dict, int, bool]:
    """How many of the ranking to keep: the smallest prefix reaching ``target`` (else all), and what each restored."""
    measured = _smallest_reaching(ranked, search.restore, target, report)  # prefix size -> (pair,) restore
    reaching = [k for k, r in measured.items() if r.mean() >= target]
    size = min(reaching) if reaching else len(ranked)
    return measured, size, bool(reaching)


def _trace_entry(
    search: _Search, level: str, ranked: list, size: int, restored: float, reached: bool, target: float
) -> dict:
    """What one level opened, kept and why, for ``circuit.trace`` (the widget shows it)."""
    n_columns, labels = len(search.columns), search.labels
    return {
        "level": level,
        "candidates": len(ranked),
        "kept": size,
        "restore": restored,
        "reached": reached,
        "why": (
            f"the top {size} of {len(ranked)} by {search.method} estimate restore {restored:.3f}"
            + (f" >= {target}" if reached else f", short of {target}: kept every candidate")
        ),
        "ranked": [[_cell(w, n_columns, labels).label, effect] for w, effect in ranked[:TOP_SHOWN]],
    }


def _result(
    search: _Search, kept: list[Write], ranked: list, measured: dict, trace: list[dict], target: float, levels: tuple
) -> Circuit:
    """The last level's kept set as a Circuit, with its exact restore, the restore curve and the settings."""
    curve = _curve(ranked, measured, search.restore, len(search.columns), search.labels)
    final = measured[len(kept)].numpy()
    effect_of = dict(ranked)
    cells = [_cell(w, len(search.columns), search.labels) for w in kept]
    return Circuit(
        cells,
        [effect_of[w] for w in kept],
        {
            **provenance(search.model, search.request),
            "method": search.method,
            "search": {"target": target, "levels": list(levels)},
        },
        restore=float(final.mean()),
        reached=bool(final.mean() >= target),
        trace=trace,
        curve=curve,
    )


def _curve(ranked: list, measured: dict, restore: Any, n_pos: int, labels: list[str] | None) -> dict[str, Any]:
    """The restore curve over the last level's ranking, at MIB's sizes.

    The prefixes the search already patched are read from ``measured``; the others are
    patched together in one more batched pass (and added to ``measured``).
    """
    sizes = sorted({max(1, math.ceil(p / 100 * len(ranked))) for p in CURVE_PERCENTS})
    missing = [k for k in sizes if k not in measured]
    if missing:
        measured.update(zip(missing, restore([tuple(w for w, _ in ranked[:k]) for k in missing])))
    per_pair = torch.stack([measured[k] for k in sizes]).numpy()  # (size, pair)
    fractions = np.array([k / len(ranked) for k in sizes])
    mean = per_pair.mean(1)
    xs, ys = np.concatenate([[0.0], fractions]), np.concatenate([[0.0], mean])
    return {
        "ranked": [_cell(w, n_pos, labels) for w, _ in ranked],  # the finest level's cells, largest estimate first
        "percent": [float(100 * f) for f in fractions],
        "size": sizes,
        "kind": "restore",
        "restore": mean.tolist(),
        "per_pair": per_pair.tolist(),
        "area": float(np.trapezoid(ys, xs)),  # area under the curve, the empty set counted as 0 at 0 %
    }


def _smallest_reaching(ranked: list, restore: Any, target: float, report: Any, chunk: int = 8) -> dict:
    """The joint restore of growing prefixes of ``ranked``, ``chunk`` prefixes per batched pass, until one
    reaches ``target`` (or all were tried): {prefix size: (pair,) restore}."""
    measured: dict[int, torch.Tensor] = {}
    for start in range(1, len(ranked) + 1, chunk):
        sizes = list(range(start, min(start + chunk, len(ranked) + 1)))
        measured.update(zip(sizes, restore([tuple(w for w, _ in ranked[:k]) for k in sizes], report)))
        if any(measured[k].mean() >= target for k in sizes):
            break
    return measured


def _check_levels(levels: Sequence[str]) -> tuple[str, ...]:
    if isinstance(levels, str) or not isinstance(levels, Sequence) or not levels:
        raise SettingsError(f"levels must be a list such as ('layers', 'heads', 'positions'), got {levels!r}")
    unknown = [lv for lv in levels if lv not in LEVELS]
    if unknown:
        raise SettingsError(f"unknown levels {unknown}; choose from {', '.join(LEVELS)}")
    if list(levels) != sorted(levels, key=LEVELS.index) or len(set(levels)) != len(levels) or levels[0] != "layers":
        raise SettingsError(
            f"levels must start with 'layers' and go coarse to fine, each once: {LEVELS}; got {levels!r}"
        )
    if "neurons" in levels and "heads" not in levels:
        raise SettingsError("'neurons' opens MLP layers at the 'heads' level: give 'heads' too")
    return tuple(levels)


def _stage(progress: Progress, i: int, n_levels: int) -> Progress:
    return lambda done, total: progress(i * total + done, n_levels * total)


def _candidates(level: str, kept: list[Write], info: Any, every: tuple[int, ...], neuron_effects: Any) -> list[Write]:
    """What ``level`` opens the kept sites into (see the module's docstring); ``every`` holds the columns."""
    if level == "layers":
        return [Write(layer, site, 0, every) for layer in range(info.n_layers) for site in ("attn_out", "mlp_out")]
    if level == "positions":
        return [w._replace(positions=(p,)) for w in kept for p in w.positions]
    out = []
    for w in kept:
        if level == "heads" and w.site == "attn_out":
            out += [Write(w.layer, "head_out", h, w.positions) for h in range(info.n_heads)]
        elif level == "neurons" and w.site == "mlp_out":
            top = np.argsort(-np.abs(neuron_effects(w.layer)), kind="stable")[:TOP_NEURONS]
            out += [Write(w.layer, "mlp_neuron", int(n), w.positions) for n in top]
        else:
            out.append(w)
    return out


def _normalised(grid: Any, direction: str) -> np.ndarray:
    """A grid's values as the share of the effect they restore: the target run 0, the source run 1, pair by pair."""
    source, target = (
        (grid.clean_baseline, grid.corrupt_baseline)
        if direction == "denoise"
        else (grid.corrupt_baseline, grid.clean_baseline)
    )
    shape = (-1,) + (1,) * (grid.per_pair.ndim - 1)
    return ((grid.per_pair - target.reshape(shape)) / (source - target).reshape(shape)).mean(0)


def _single_effects(
    model: Any, candidates: list[Write], method: str, common: dict, store: dict, memo: dict, columns: list[int]
) -> np.ndarray:
    """Each candidate's single effect (normalised), from ``patch`` grids sharing the runs: the estimate or exact."""
    effects = np.zeros(len(candidates))
    groups: dict[tuple[str, bool], list[int]] = {}
    for i, w in enumerate(candidates):
        groups.setdefault((w.site, len(w.positions) == 1), []).append(i)
    for (site, one_pos), members in groups.items():
        layers = sorted({candidates[i].layer for i in members})
        units = sorted({candidates[i].unit for i in members})
        narrow = {"neurons": units} if site == "mlp_neuron" else {"heads": units} if site == "head_out" else {}
        if method == "attribution" and site == "head_out":
            # The estimate is linear: a head at all positions is the sum of its per-position estimates, so
            # one by-position grid serves the "heads" level and, later, the "positions" level.
            covering = [k for k in memo if k[0] == site and set(layers) <= set(k[1]) and set(units) <= set(k[2])]
            if not covering:
                grid = patch(model, **common, site=site, method=method, layers=layers, runs_cache=store, **narrow)
                covering = [(site, tuple(layers), tuple(units))]
                memo[covering[0]] = _normalised(grid, common["direction"])  # (layer, unit, pos)
            _, have_layers, have_units = covering[0]
            pick = np.ix_([have_layers.index(x) for x in layers], [have_units.index(u) for u in units])
            found = memo[covering[0]]
            values = found[pick] if one_pos else found[pick].sum(-1)
        else:
            grid = patch(
                model,
                **common,
                site=site,
                method=method,
                layers=layers,
                by_position=one_pos,
                runs_cache=store,
                **narrow,
            )
            values = _normalised(grid, common["direction"])
        for i in members:
            w = candidates[i]
            at = [layers.index(w.layer)]
            if narrow:
                at.append(units.index(w.unit))
            if one_pos:
                at.append(columns.index(w.positions[0]))  # the grids cover exactly ``columns``, in order
            effects[i] = values[tuple(at)]
    return effects


def _piece_columns(columns: list[str]) -> list[int]:
    """A template's columns without its ``"last token"`` column: the pieces, which cover every position once."""
    return [i for i, label in enumerate(columns) if label != LAST_TOKEN]


def _cell(w: Write, n_pos: int, labels: list[str] | None = None) -> Cell:
    """The Cell a write patches; with a template's ``labels``, its position is a span label."""
    pos = w.positions[0] if len(w.positions) == 1 and n_pos > 1 else None
    if pos is not None and labels is not None:
        pos = labels[pos]
    if w.site == "head_out":
        return Cell("head_out", w.layer, head=w.unit, pos=pos)
    if w.site == "mlp_neuron":
        return Cell("mlp_neuron", w.layer, neuron=w.unit, pos=pos)
    return Cell(w.site, w.layer, pos=pos)
