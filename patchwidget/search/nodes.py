"""Find a circuit: the smallest set of components that does the task on its own.

``find_circuit`` ranks every node (the embeddings, each head, each MLP) by its
effect when it alone is replaced by its corrupted value in the clean run
(``method="attribution"``: the gradient estimate of that, three grids from two
forward passes and one backward each; ``"exact"``: one patched copy per node),
then takes the smallest prefix of the ranking whose exact faithfulness, as MIB
defines it (``patchwidget.faithfulness``), reaches ``target``. The prefixes are
evaluated jointly in batched passes, eight at a time, each a copy of the clean
prompt with the prefix's complement corrupted. The curve is f at MIB's circuit
sizes, with CPR and CMD.

This is a different question from ``find_bottleneck`` ("which activations, copied
alone into the corrupted run, carry the answer"): on the bundled model's IOI pairs the
last head on the path restores everything when copied, yet does nothing on its own.

Example:
    >>> import patchwidget as pw
    >>> pairs = pw.demo_data.ioi_pairs(8)
    >>> circuit = pw.find_circuit(pw.load_model(), **pw.demo_data.as_prompts(pairs), target=0.9)
    >>> circuit.reached
    True
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..circuits.circuit import DEFAULT_TARGET, Circuit
from ..circuits.faithfulness import CircuitRuns, circuit_runs, curve, faithfulness_nodes, ratio
from ..core import metrics as M
from ..core.cells import EMBED, Cell, check_choice
from ..core.engine import METHODS, entry_point, provenance
from ..core.runs import Progress
from ..data.prompts import Noise, Texts
from ..errors import SettingsError
from ..grids.patch import patch
from .edges import RANKING, find_edge_circuit

__all__ = ["find_circuit"]

LEVELS = ("nodes", "edges")  # the level a circuit is found at: its components are nodes, or edges
CHUNK = 8  # prefixes evaluated per batched pass while looking for the smallest that reaches the target
TOP_SHOWN = 20  # ranked nodes recorded in the trace


@entry_point
def find_circuit(
    model: Any,
    clean: Texts,
    corrupt: Texts | Noise,
    *,
    answer: Texts,
    wrong: Texts,
    target: float = DEFAULT_TARGET,
    level: str = "nodes",
    method: str = "attribution",
    ablation: str = "patch",
    metric: M.Metric = M.DEFAULT,
    batch_size: int = 64,
    memory_budget: int | None = None,
    progress: Progress | None = None,
    remote: bool | str = False,
) -> Circuit:
    """The smallest top-ranked set of nodes whose faithfulness (MIB's f) reaches ``target``.

    Returns a ``Circuit`` of nodes with ``faithfulness`` (f of the set, over all pairs),
    ``reached``, ``trace`` (the ranking and why the set was kept) and ``curve`` (f at MIB's
    sizes, 0.1 to 100 % of the nodes, per pair and on average, with ``cpr`` and ``cmd``).
    ``level="edges"`` finds a set of edges instead (``circuit.edges``), ranked by EAP-IG
    (``method="attribution"`` or ``"eap-ig"``), EAP (``"eap"``) or exact edge scores (``"exact"``);
    see ``search.edges``;
    ``circuit.plot()`` draws the circuit, ``circuit.plot_curve()`` the curve.

    Example:
        >>> found = find_circuit(model, **prompts, target=0.9)  # doctest: +SKIP
        >>> found.faithfulness >= 0.9                             # doctest: +SKIP
        True
    """
    if not isinstance(target, int | float) or isinstance(target, bool) or not 0 < target <= 1:
        raise SettingsError(f"target must be a number in (0, 1], got {target!r}")
    check_choice(level, LEVELS, "level")
    check_choice(method, METHODS if level == "nodes" else tuple(RANKING), "method")
    texts = dict(clean=clean, corrupt=corrupt, answer=answer, wrong=wrong)
    if level == "edges":
        settings = dict(ablation=ablation, metric=metric, batch_size=batch_size, memory_budget=memory_budget)
        return find_edge_circuit(model, texts, target, method, {**settings, "remote": remote}, progress)
    store: dict = {}
    runs = circuit_runs(
        model,
        **texts,
        ablation=ablation,
        metric=metric,
        batch_size=batch_size,
        memory_budget=memory_budget,
        progress=None,
        remote=remote,
        runs_cache=store,
    )
    info = runs.request.info
    nodes = faithfulness_nodes(info.n_layers, info.n_heads)
    if method == "exact":  # each node alone corrupted: the circuit of every other node
        alone = runs.measure([[c for c in nodes if c != node] for node in nodes], progress)
        effects = (alone - runs.clean[None]).mean(1).numpy()
    else:
        effects = _estimates(model, texts, runs.request.metric, batch_size, memory_budget, remote, store, info)
    order = np.argsort(-np.abs(effects), kind="stable")
    ranked = [nodes[i] for i in order]
    m_empty = runs.measure([[]])[0]
    measured = _smallest_reaching(runs, ranked, m_empty, target, progress)
    faith = {k: ratio(v, m_empty, runs.clean) for k, v in measured.items()}
    reaching = [k for k, f in faith.items() if f >= target]
    size = min(reaching) if reaching else len(ranked)
    cells = ranked[:size]
    trace = [
        {
            "level": "nodes",
            "candidates": len(nodes),
            "kept": size,
            "faithfulness": faith[size],
            "reached": bool(reaching),
            "why": f"the top {size} of {len(nodes)} nodes by {method} effect do {faith[size]:.3f} of the task on "
            f"their own" + (f" >= {target}" if reaching else f", short of {target}: kept every node"),
            "ranked": [[ranked[j].label, float(effects[order[j]])] for j in range(min(TOP_SHOWN, len(ranked)))],
        }
    ]
    settings = {**provenance(model, runs.request), "method": method, "ablation": ablation}
    return Circuit(
        cells,
        [float(effects[order[j]]) for j in range(size)],
        {**settings, "search": {"target": target, "level": "nodes"}},
        faithfulness=faith[size],
        reached=bool(reaching),
        trace=trace,
        curve=curve(runs, ranked, measured, m_empty),
    )


def _smallest_reaching(
    runs: CircuitRuns, ranked: list[Cell], m_empty: torch.Tensor, target: float, progress: Progress | None
) -> dict[int, torch.Tensor]:
    """m of growing prefixes of ``ranked``, ``CHUNK`` per batched pass, until one's f reaches ``target``."""
    measured: dict[int, torch.Tensor] = {}
    for start in range(1, len(ranked) + 1, CHUNK):
        sizes = list(range(start, min(start + CHUNK, len(ranked) + 1)))
        measured.update(zip(sizes, runs.measure([ranked[:k] for k in sizes], progress)))
        if any(ratio(measured[k], m_empty, runs.clean) >= target for k in sizes):
            break
    return measured


def _estimates(model, texts, metric, batch_size, memory_budget, remote, store, info) -> np.ndarray:
    """Each node's effect when it alone takes its corrupted value, estimated by attribution patching
    (``patch(..., direction="noise", method="attribution")``), in ``faithfulness_nodes`` order."""
    common = dict(
        **texts,
        metric=metric,
        direction="noise",
        method="attribution",
        by_position=False,
        batch_size=batch_size,
        memory_budget=memory_budget,
        remote=remote,
        runs_cache=store,
    )
    grids = {
        EMBED: patch(model, **common, site="resid_pre", layers=[0]),
        "head_out": patch(model, **common, site="head_out"),
        "mlp_out": patch(model, **common, site="mlp_out"),
    }
    change = {
        site: (g.per_pair - g.clean_baseline.reshape((-1,) + (1,) * (g.per_pair.ndim - 1))).mean(0)
        for site, g in grids.items()
    }

    def effect(cell: Cell) -> float:
        values = change[cell.site]  # (1,): resid_pre at layer 0; (layer,) for MLPs; (layer, head) for heads
        if cell.site == EMBED:
            return float(values[0])
        return float(values[cell.layer, cell.head] if cell.site == "head_out" else values[cell.layer])

    return np.array([effect(cell) for cell in faithfulness_nodes(info.n_layers, info.n_heads)])
