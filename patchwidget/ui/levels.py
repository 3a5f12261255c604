"""The drill-down levels, as one table.

Each kind of level (the layer grid, one layer's heads, one head's breakdown,
one MLP's top neurons, cells patched together) is one ``LevelKind`` entry of
``LEVELS``. An entry says how its level is labelled, computed, drawn as panels,
what a click on a panel cell opens, and which patchable cell sits under a panel
cell. The session and the widget only look levels up here, and entries receive
indices (never labels to parse). A new level is one entry plus its test.

Example:
    >>> Level("top", site="resid_pre").label(["When", "Mary"])
    'resid_pre'
    >>> LEVELS["heads"].opens(Level("heads", layer=2), {"id": "head_out"}, 1, 3, None).label([])
    'L2 H1'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..circuits.edges import Edge
from ..circuits.generate import EDGES_REFUSED, refusal
from ..circuits.joint import JointResult
from ..core.cells import EMBED, Cell
from ..core.sites import SITES, ModelInfo
from ..grids.result import PatchResult
from .circuit_view import (
    CIRCUIT_PANEL,
    EDGES_PANEL,
    INPUTS,
    Layout,
    circuit_panels,
    edge_at,
    edge_score_panel,
    receiver_words,
    search_panels,
    sender_mark,
)
from .panels import panel, table

TOP_SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "head_out")
LENS = "lens"  # the start view beside the sites: the logit lens and direct logit attribution
START_SITES = (*TOP_SITES, LENS)
N_TOP_NEURONS = 20
HEAD_PARTS = ("head_q", "head_k", "head_v", "head_out")


@dataclass(frozen=True)
class Level:
    """One level of the drill-down path: what to compute (``kind`` is a key of ``LEVELS``)."""

    kind: str
    site: str = "resid_pre"
    layer: int | None = None
    head: int | None = None
    pos: int | None = None
    cells: tuple[Cell, ...] = ()  # for kind "joint": the cells patched together; "edge": its sender and receiver
    target: float | None = None  # for kinds "search" and "circuit": the share the set must restore, or do alone
    spans: bool = False  # the prompts are made from a template: columns are spans, ``pos`` indexes them
    span: int | None = None  # the span whose positions this level's columns are (``patch(within=...)``)
    pair: int | None = None  # for kind "says": the pair whose prompts are continued
    alone: bool = False  # for kind "says": the cells are a circuit run on its own (MIB's m(C))
    edges: bool = False  # for kind "circuit": a circuit of edges (``find_circuit(level="edges")``)

    def label(self, tokens: list[str]) -> str:
        return LEVELS[self.kind].label(self, tokens)

    def at(self, tokens: list[str]) -> str:
        """The column this level was opened at, as text: a token, a span, or a position within a span."""
        return tokens[self.pos] if self.span is None else f"{tokens[self.span]}[{self.pos}]"

    def open(self, kind: str, **fields: Any) -> Level:
        """A level below this one (same site and prompts)."""
        return Level(kind, self.site, spans=self.spans, **fields)


@dataclass
class Computed:
    """The results of one level: named panels, each a PatchResult or a pattern."""

    level: Level
    results: dict[str, PatchResult]
    pattern: list[np.ndarray] | None = None  # per pair, (query, key) attention of its clean prompt
    joint: JointResult | None = None
    exact: bool = True  # False for an attribution preview that exact values will replace
    circuit: Any = None  # for kinds "search" and "circuit": the Circuit found
    says: Any = None  # for kind "says": what the model says under the patch (a ``Generation`` of one pair)
    edge: dict | None = None  # for kind "edge": its exact score and both means (``Patcher.edge_score``)


class Patcher(Protocol):
    """What a level's ``compute`` may ask of the session."""

    info: ModelInfo

    def run(self, site: str, **kwargs: Any) -> PatchResult: ...

    def joint(self, cells: list[Cell]) -> JointResult: ...

    def generate(self, cells: list[Cell], pair: int, alone: bool = False) -> Any: ...

    def pattern(self, layer: int, head: int) -> list[np.ndarray]: ...

    @property
    def pattern_patchable(self) -> bool: ...

    def path(self, receivers: str | list[Cell]) -> PatchResult: ...

    def find(self, target: float, on_level: Callable[[Any], None]) -> Any: ...

    def find_circuit(self, target: float, level: str = "nodes") -> Any: ...

    def edge_score(self, edge: Edge) -> dict: ...

    def lens(self) -> dict[str, PatchResult]: ...

    def show(self, partial: Computed) -> None: ...


@dataclass(frozen=True)
class Display:
    """What drawing a level's panels needs: the column labels (the prompt's tokens, or a
    template's spans), the pair on show, and its clean prompt's tokens (the first pair's for the
    mean; for attention patterns)."""

    tokens: list[str]
    pair: str | int = "mean"
    prompt_tokens: list[str] | None = None

    @property
    def cols(self) -> list[str]:
        return [f"{t} ({i})" for i, t in enumerate(self.tokens)]

    def columns(self, result: PatchResult) -> list[str]:
        """A by-position result's column labels: its spans where it has them, else the tokens."""
        return [str(c) for c in result.coords["span"]] if "span" in result.dims else self.cols

    @property
    def token_cols(self) -> list[str]:
        tokens = self.prompt_tokens or self.tokens
        return [f"{t} ({i})" for i, t in enumerate(tokens)]

    @property
    def index(self) -> int:
        """The pair whose prompt is drawn where one prompt is (the first for the mean)."""
        return 0 if self.pair == "mean" else int(self.pair)

    def values(self, result: PatchResult) -> np.ndarray:
        return result.values if self.pair == "mean" else result.per_pair[self.pair]

    def consistency(self, result: PatchResult, pick: Any = slice(None)) -> dict:
        """Spread and sign flips across pairs, shown when the view is the mean of several."""
        if self.pair != "mean" or result.n_pairs < 2:
            return {}
        return {"spread": table(result.spread()[pick]), "flips": result.sign_flips()[pick].tolist()}


@dataclass(frozen=True)
class LevelKind:
    """One row of the table of drill-down levels."""

    label: Callable[[Level, list[str]], str]
    compute: Callable[[Level, Patcher], Computed]
    panels: Callable[[Computed, Display], list[dict]]
    # What a click on (row, col) of a panel (as the view holds it) opens; the model's shape for levels laid out by
    # it (the circuit).
    opens: Callable[[Level, dict, int, int, ModelInfo], Level | None] = lambda level, panel, row, col, info: None
    cell: Callable[[Level, dict, int, int, ModelInfo], Cell | None] = lambda level, panel, row, col, info: None
    preview: bool = False  # an attribution estimate is drawn first while the exact values are computed
    disabled: tuple[tuple[str, str], ...] = ()  # (control, why it does not apply here): drawn disabled, with why
    # What the normalised view (clean = 1, a display setting: ``ui.scale``) does to this level's numbers: "pair"
    # rescales each pair by its clean and corrupted runs, "share" divides by each prompt's own logit difference
    # (the lens, where nothing is patched), None keeps them (a search's restores and faithfulness are shares).
    scale: str | None = "pair"


# --- the layer grid of one site -----------------------------------------------------------------


def _top_compute(level: Level, p: Patcher) -> Computed:
    by_position = False if level.site == "head_out" else None  # head_out starts as (layer, head)
    return Computed(level, {level.site: p.run(level.site, by_position=by_position)})


def _top_panels(computed: Computed, v: Display) -> list[dict]:
    site = computed.level.site
    r = computed.results[site]
    if site == "head_out":
        title = f"head_out: {SITES['head_out'].doc}, all tokens at once"
        return [
            panel("head_out", title, "layer", "head", r.labels("layer"), r.labels("head"), v.values(r), True)
            | v.consistency(r)
        ]
    title = f"{site}: {SITES[site].doc}" + (" (by span; click a span for its positions)" if level_spans(r) else "")
    return [
        panel(site, title, "layer", r.dims[-1], r.labels("layer"), v.columns(r), v.values(r), True) | v.consistency(r)
    ]


def level_spans(result: PatchResult) -> bool:
    """Whether ``result``'s columns are a template's spans (rather than token positions)."""
    return "span" in result.dims


def _top_opens(level: Level, panel: dict, row: int, col: int, info: ModelInfo) -> Level:
    if level.site == "head_out":
        return level.open("head", layer=row, head=col)
    if level.spans:  # a span opens into its positions first
        return level.open("span", layer=row, span=col)
    return _position_opens(level, row, col)


def _position_opens(level: Level, row: int, col: int) -> Level:
    """A (layer, position) cell opens that MLP's neurons or that layer's heads there."""
    return level.open("neurons" if level.site == "mlp_out" else "heads", layer=row, pos=col, span=level.span)


def _top_cell(level: Level, panel: dict, row: int, col: int, info: ModelInfo) -> Cell:
    if level.site == "head_out":
        return Cell("head_out", row, head=col)
    return Cell(level.site, row, pos=col)


# --- one span's positions (prompts made from a template) ------------------------------------------


def _span_panels(computed: Computed, v: Display) -> list[dict]:
    level = computed.level
    r = computed.results[level.site]
    title = (
        f"{level.site} at the positions of {v.tokens[level.span]!r}, aligned from its last token "
        "(the positions every pair has; [n-1] is its last token)"
    )
    return [
        panel(level.site, title, "layer", "span", r.labels("layer"), v.columns(r), v.values(r), True) | v.consistency(r)
    ]


# --- one layer's heads by token, and one head's breakdown ----------------------------------------


def _heads_panels(computed: Computed, v: Display) -> list[dict]:
    r, layer = computed.results["head_out"], computed.level.layer
    title = f"Heads of layer {layer}: output by " + ("span" if level_spans(r) else "token")
    grid = panel("head_out", title, "head", r.dims[-1], r.labels("head"), v.columns(r), v.values(r)[0], True)
    return [grid | v.consistency(r, 0) | _opened_at(computed.level)]


def _opened_at(level: Level) -> dict:
    """The column of the token this level was opened at, marked in its grid (where its columns are tokens)."""
    return {} if level.pos is None or level.span is not None else {"mark_col": level.pos}


def _kv(info: ModelInfo, site: str, head: int) -> int:
    """The head index a site uses: under grouped-query attention, keys and values have fewer heads."""
    return head // (info.n_heads // info.n_kv_heads) if site in ("head_k", "head_v") else head


def _head_compute(level: Level, p: Patcher) -> Computed:
    results = {s: p.run(s, layers=[level.layer], heads=[_kv(p.info, s, level.head)]) for s in HEAD_PARTS}
    if p.pattern_patchable:  # not where a pair's spans differ in length (see engine.prepare)
        results["attn_pattern"] = p.run("attn_pattern", layers=[level.layer], heads=[level.head])
    return Computed(level, results, p.pattern(level.layer, level.head))


def _head_panels(computed: Computed, v: Display) -> list[dict]:
    level, results = computed.level, computed.results
    rows = ["q", "k", "v", "out"]
    values = np.stack([v.values(results[s])[0, 0] for s in HEAD_PARTS])
    parts = results["head_out"]
    if "attn_pattern" in results:
        restores = f"patching it restores {float(v.values(results['attn_pattern'])[0, 0]):.3f}"
    else:
        restores = "not patched: the key positions of a pair's prompts differ"
    return [
        panel(
            "components",
            f"L{level.layer} H{level.head}: query, key, value and output by "
            + ("span" if level_spans(parts) else "token"),
            "component",
            parts.dims[-1],
            rows,
            v.columns(parts),
            values,
            True,  # q, k or v opens what feeds this head; out opens its direct path to the logits
        )
        | _parts_consistency([results[s] for s in HEAD_PARTS], v),
        panel(
            "pattern",
            f"Attention pattern (clean prompt of pair {v.index}); {restores}",
            "query",
            "key",
            v.token_cols,
            v.token_cols,
            computed.pattern[v.index],
            False,
            diverging=False,
        )
        | {"says_refused": str(refusal(sites=["attn_pattern"]))},  # What does it say? with its cells selected
    ]


def _head_opens(level: Level, panel: dict, row: int, col: int, info: ModelInfo) -> Level | None:
    if panel["id"] != "components":
        return None
    if row == 3:  # the head's output: where outputs go straight to the logits
        return level.open("direct", layer=level.layer, head=level.head)
    return level.open("feeds", layer=level.layer, head=level.head)


def _parts_consistency(parts: list[PatchResult], v: Display) -> dict:
    """Spread and sign flips across pairs of a head's q, k, v and out rows (``Display.consistency`` per part)."""
    each = [v.consistency(r, 0) for r in parts]  # each part's (layer, head, pos) grid holds one layer and head
    if not all(each):
        return {}
    return {"spread": [c["spread"][0] for c in each], "flips": [c["flips"][0] for c in each]}


def _head_cell(level: Level, panel: dict, row: int, col: int, info: ModelInfo) -> Cell | None:
    if panel["id"] != "components":
        return None
    site = HEAD_PARTS[row]
    return Cell(site, level.layer, head=_kv(info, site, level.head), pos=col)


# --- path patching: which heads feed a head, and which reach the logits directly ---------------


def _feeds_compute(level: Level, p: Patcher) -> Computed:
    results = {}
    for site in ("head_q", "head_k", "head_v"):
        results[site] = p.path([Cell(site, level.layer, head=_kv(p.info, site, level.head))])
    return Computed(level, results)


def _sender_panels(computed: Computed, v: Display, what: dict[str, str]) -> list[dict]:
    out = []
    for key, title in what.items():
        r = computed.results[key]
        grid = panel(key, title, "layer", "head", r.labels("layer"), r.labels("head"), v.values(r), True)
        out.append(grid | v.consistency(r))
    return out


def _feeds_panels(computed: Computed, v: Display) -> list[dict]:
    level = computed.level
    panels = _sender_panels(
        computed,
        v,
        {
            f"head_{x}": f"Path patching: senders into the {name} of L{level.layer} H{level.head} "
            "(exact; empty at and above its layer)"
            for x, name in (("q", "query"), ("k", "key"), ("v", "value"))
        },
    )
    if level.layer == 0:  # every cell is empty: say why rather than draw three grids of nothing
        why = "No head sends into layer 0: only the embeddings feed it, so these grids are empty."
        panels = [p | {"note": why} for p in panels]
    return panels


def _direct_panels(computed: Computed, v: Display) -> list[dict]:
    return _sender_panels(computed, v, {"logits": "Path patching: each head's direct path to the logits (exact)"})


def _sender_opens(level: Level, panel: dict, row: int, col: int, info: ModelInfo) -> Level:
    """A sender cell opens that sender's breakdown: follow the circuit upstream."""
    return level.open("head", layer=row, head=col)


def _sender_cell(level: Level, panel: dict, row: int, col: int, info: ModelInfo) -> Cell:
    return Cell("head_out", row, head=col)


# --- the searches: a bottleneck, a circuit of nodes or of edges, and one edge of it ------------------

CIRCUIT_DISABLED = (
    ("direction", "A circuit always runs the clean prompts with every node outside it corrupted."),
    ("pair", "The circuit is found on all pairs together: its faithfulness is a ratio of means over them."),
)
EDGE_CIRCUIT_SAYS = EDGES_REFUSED  # pw.generate's own words


def disabled(computed: Computed) -> dict[str, str]:
    """The controls that do not apply to a computed level, each with the reason: its kind's, and *What does the
    circuit say?* on a circuit of edges."""
    out = dict(LEVELS[computed.level.kind].disabled)
    if computed.circuit is not None and computed.circuit.edges:
        out["says"] = EDGE_CIRCUIT_SAYS
    return out


def _circuit_opens(level: Level, panel: dict, row: int, col: int, info: ModelInfo) -> Level | None:
    """A head node opens its breakdown (query, key, value, output, then what feeds it); an MLP node the
    mlp_out grid (layers by token, then its top neurons); the logits each head's direct path to them; the
    embeddings nothing narrower. An edge (a row of the edges panel) opens its exact score and path patching
    into its receiver."""
    if panel["id"] == EDGES_PANEL:
        edge = edge_at(panel, row)
        return level.open("edge", cells=(edge.sender, edge.receiver))
    node = Layout.of(info, logits=level.edges).node_at(row, col) if panel["id"] == CIRCUIT_PANEL else None
    if node is None or node.site == EMBED:
        return None
    if node.site == "logits":
        return level.open("direct")
    if node.site == "mlp_out":
        return Level("top", site="mlp_out", spans=level.spans)
    return level.open("head", layer=node.layer, head=node.head)


def _edge_compute(level: Level, p: Patcher) -> Computed:
    """One edge: its exact score, and path patching into its receiver (a head's query, key or value, or the
    logits; none into an MLP)."""
    receiver = level.cells[1]
    if receiver.site == "logits":
        results = {"logits": p.path("logits")}
    else:
        results = {receiver.site: p.path([receiver])} if receiver.site in INPUTS else {}
    return Computed(level, results, edge=p.edge_score(Edge(*level.cells)))


def _edge_panels(computed: Computed, v: Display) -> list[dict]:
    edge, score = Edge(*computed.level.cells), computed.edge
    layout = Layout.of(score["shape"])
    if not computed.results:  # into an MLP: the score alone
        return [edge_score_panel(edge, score, layout)]
    (site,) = computed.results
    into = "each head's direct path to the logits (exact)" if site == "logits" else (
        f"senders into {receiver_words(edge.receiver, layout)} (exact; empty at and above its layer)"
    )  # fmt: skip
    (grid,) = _sender_panels(computed, v, {site: f"Path patching: {into}"})
    return [edge_score_panel(edge, score, layout), grid | sender_mark(edge)]


# --- the lens: where the answer is readable, and who writes it directly ------------------------------


def _lens_panels(computed: Computed, v: Display) -> list[dict]:
    """The logit lens by layer and token, and direct logit attribution by layer: its heads, then its MLP."""
    lens, dla = computed.results["logit_lens"], computed.results["dla"]
    unit = dla.settings.get("unit", "logit difference")
    grid = panel(
        "logit_lens",
        f"Logit lens: answer minus wrong logit after each layer ({unit})",
        "layer",
        lens.dims[-1],
        lens.labels("layer"),
        v.columns(lens),
        v.values(lens),
        False,
    )
    mlp = np.asarray(dla.settings["mlp"], dtype=float)  # (prompt, layer)
    heads = v.values(dla)  # (layer, head)
    mlps = mlp.mean(0) if v.pair == "mean" else mlp[v.index]
    values = np.concatenate([heads, mlps[:, None]], axis=1)
    cols = [f"H{h}" for h in range(heads.shape[1])] + ["MLP"]
    direct = panel(
        "dla",
        f"Direct logit attribution at the last token ({unit}); click a head for its breakdown",
        "layer",
        "node",
        dla.labels("layer"),
        cols,
        values,
        True,
    )
    return [grid | {"note": lens.settings["note"]}, direct | {"note": dla.settings["note"]}]


def _lens_opens(level: Level, panel: dict, row: int, col: int, info: ModelInfo) -> Level | None:
    """A head of the attribution opens its breakdown (needed for the answer?), an MLP the mlp_out grid."""
    if panel["id"] != "dla":
        return None
    if col == info.n_heads:
        return Level("top", site="mlp_out", spans=level.spans)
    return Level("head", layer=row, head=col, spans=level.spans)


# --- one MLP's top neurons at one token ----------------------------------------------------------


def _neurons_panels(computed: Computed, v: Display) -> list[dict]:
    level = computed.level
    effects = v.values(computed.results["mlp_neuron"])[0]
    top = np.argsort(-np.abs(effects))[:N_TOP_NEURONS]
    title = f"Top {len(top)} MLP neurons of layer {level.layer} at {level.at(v.tokens)!r}"
    rows = [f"N{i}" for i in top]
    return [
        panel("neurons", title, "neuron", "value", rows, ["effect"], effects[top, None], False)
        | {"keys": [int(i) for i in top]}
    ]


# --- the table ------------------------------------------------------------------------------------

LEVELS: dict[str, LevelKind] = {
    "top": LevelKind(
        label=lambda level, tokens: level.site,
        compute=_top_compute,
        panels=_top_panels,
        opens=_top_opens,
        cell=_top_cell,
        preview=True,
    ),
    "span": LevelKind(
        label=lambda level, tokens: f"{tokens[level.span]} by position",
        compute=lambda level, p: Computed(level, {level.site: p.run(level.site, within=level.span)}),
        panels=_span_panels,
        opens=lambda level, panel, row, col, info: _position_opens(level, row, col),
        preview=True,
    ),
    "heads": LevelKind(
        label=lambda level, tokens: f"L{level.layer} heads",
        compute=lambda level, p: Computed(
            level, {"head_out": p.run("head_out", layers=[level.layer], within=level.span)}
        ),
        panels=_heads_panels,
        opens=lambda level, panel, row, col, info: level.open("head", layer=level.layer, head=row),
        # Positions within a span are not Cells (a Cell's pos is a token or a whole span).
        cell=lambda level, panel, row, col, info: (
            None if level.span is not None else Cell("head_out", level.layer, head=row, pos=col)
        ),
        preview=True,
    ),
    "head": LevelKind(
        label=lambda level, tokens: f"L{level.layer} H{level.head}",
        compute=_head_compute,
        panels=_head_panels,
        opens=_head_opens,
        cell=_head_cell,
    ),
    "feeds": LevelKind(
        label=lambda level, tokens: f"what feeds L{level.layer} H{level.head}",
        compute=_feeds_compute,
        panels=_feeds_panels,
        opens=_sender_opens,
        cell=_sender_cell,
    ),
    "direct": LevelKind(
        label=lambda level, tokens: "direct to logits",
        compute=lambda level, p: Computed(level, {"logits": p.path("logits")}),
        panels=_direct_panels,
        opens=_sender_opens,
        cell=_sender_cell,
    ),
    "neurons": LevelKind(
        label=lambda level, tokens: f"L{level.layer} neurons at {level.at(tokens)!r}",
        compute=lambda level, p: Computed(
            level,
            {"mlp_neuron": p.run("mlp_neuron", layers=[level.layer], positions=[level.pos], within=level.span)},
        ),
        panels=_neurons_panels,
        cell=lambda level, panel, row, col, info: (
            None
            if level.span is not None
            else Cell("mlp_neuron", level.layer, neuron=panel["keys"][row], pos=level.pos)
        ),
    ),
    "search": LevelKind(
        label=lambda level, tokens: f"find bottleneck (target {level.target})",
        compute=lambda level, p: Computed(
            level,
            {},
            circuit=p.find(level.target, lambda partial: p.show(Computed(level, {}, exact=False, circuit=partial))),
        ),
        panels=lambda computed, v: search_panels(computed.circuit, computed.level.target),
        scale=None,
    ),
    "circuit": LevelKind(
        label=lambda level, tokens: f"find circuit{' of edges' if level.edges else ''} (target {level.target})",
        compute=lambda level, p: Computed(
            level, {}, circuit=p.find_circuit(level.target, "edges" if level.edges else "nodes")
        ),
        panels=lambda computed, v: circuit_panels(computed.circuit, computed.level.target),
        opens=_circuit_opens,
        disabled=CIRCUIT_DISABLED,
        scale=None,
    ),
    "edge": LevelKind(
        label=lambda level, tokens: f"edge {Edge(*level.cells).label}",
        compute=_edge_compute,
        panels=_edge_panels,
        opens=lambda level, panel, row, col, info: (
            _sender_opens(level, panel, row, col, info) if panel["id"] != "edge" else None
        ),
        cell=lambda level, panel, row, col, info: (
            _sender_cell(level, panel, row, col, info) if panel["id"] != "edge" else None
        ),
    ),
    LENS: LevelKind(
        label=lambda level, tokens: "lens",
        compute=lambda level, p: Computed(level, p.lens()),
        panels=_lens_panels,
        opens=_lens_opens,
        disabled=(("direction", "The lens reads the clean run alone: nothing is patched."),),
        scale="share",
    ),
    "joint": LevelKind(
        label=lambda level, tokens: f"{len(level.cells)} cells together",
        compute=lambda level, p: Computed(level, {}, joint=p.joint(list(level.cells))),
        panels=lambda computed, v: [],
    ),
    "says": LevelKind(
        label=lambda level, tokens: f"what {len(level.cells)} cells make the model say",
        compute=lambda level, p: Computed(level, {}, says=p.generate(list(level.cells), level.pair, level.alone)),
        panels=lambda computed, v: [],
    ),
}
