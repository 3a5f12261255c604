"""Circuits you can take elsewhere: a set of sites found on some prompts, tested on others,
knocked out, written into your own nnsight code, saved and loaded.

Example:
    >>> import patchwidget as pw
    >>> model = pw.load_model()
    >>> train, held_out = pw.demo_data.ioi_pairs(8, seed=1), pw.demo_data.ioi_pairs(8, seed=2)
    >>> grid = pw.patch(model, [p.clean for p in train], [p.corrupt for p in train],
    ...                 answer=[p.answer for p in train], wrong=[p.wrong for p in train],
    ...                 site="head_out", by_position=False, metric="logit_diff_norm")
    >>> circuit = grid.top_sites(3)
    >>> check = circuit.evaluate(model, [p.clean for p in held_out], [p.corrupt for p in held_out],
    ...                          answer=[p.answer for p in held_out], wrong=[p.wrong for p in held_out])
    >>> circuit.save("ioi_heads.json")   # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import nnsight
import numpy as np
import torch

from ..core import metrics as M
from ..core.cells import READ_ORDER, WRITE_ORDER, Cell, cell_write
from ..core.edge_pass import EdgeIndex
from ..core.engine import entry_point
from ..core.runs import Progress
from ..core.sites import ModelInfo, model_info, on_input_device, view
from ..data.prompts import Texts
from ..data.templates import token_strings
from ..errors import PromptError, ResultFileError, SettingsError
from ..files import write_atomic
from .edges import Edge, check_in_model, drawn_at
from .joint import JointResult, patch_sites

FORMAT = "patchwidget.Circuit"
# The one default target of every search (find_circuit, find_bottleneck, the widget's target control): the share
# of the task a found circuit must do on its own, or a bottleneck restore.
DEFAULT_TARGET = 0.9
# 2: ``faithfulness`` is MIB's f (find_circuit); the denoising search's number is ``restore``. A version-1
# file's "faithfulness" was that restore, and loads as what it was.
VERSION = 2
EDGES_VERSION = 3  # a circuit of edges: "edges" and "edge_values" (a version-2 reader refuses it, as it should)


@dataclass
class Circuit:
    """A set of cells with the values they had where they were found, and where that was.

    ``provenance`` records the grid it came from (model, prompts, site, metric,
    direction, method, and the model's shape, which every use checks).
    """

    cells: list[Cell]
    values: list[float] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)
    faithfulness: float | None = None  # find_circuit: MIB's f, what the set does on its own (1 = all of it)
    reached: bool | None = None  # find_circuit / find_bottleneck: whether the set reached its target
    trace: list[dict] = field(default_factory=list)  # what the search ranked and kept, and why
    curve: dict[str, Any] = field(default_factory=dict)  # f (with cpr, cmd) or the restore (with area) by size
    restore: float | None = None  # find_bottleneck: the joint denoising restore of the set (not faithfulness)
    edges: list[Edge] = field(default_factory=list)  # a circuit of edges: its edges (``cells``: their senders)
    edge_values: list[float] = field(default_factory=list)  # the edges' scores where they were found
    _sources: dict = field(default_factory=dict, repr=False, compare=False)  # sources() results, for write()

    def __post_init__(self) -> None:
        if not all(isinstance(e, Edge) for e in self.edges):
            raise SettingsError(f"a circuit's edges must be patchwidget.Edge objects, got {self.edges!r}")
        if self.edges and not self.cells:  # the nodes whose outputs the edges carry
            self.cells = list(dict.fromkeys(e.sender for e in self.edges))
        if not self.cells or not all(isinstance(c, Cell) for c in self.cells):
            raise SettingsError(f"a circuit needs a non-empty list of patchwidget.Cell objects, got {self.cells!r}")
        if self.values and len(self.values) != len(self.cells):
            raise SettingsError(f"a circuit of {len(self.cells)} cells has {len(self.values)} values")
        if self.edge_values and len(self.edge_values) != len(self.edges):
            raise SettingsError(f"a circuit of {len(self.edges)} edges has {len(self.edge_values)} edge values")

    def __repr__(self) -> str:
        if self.edges:
            shown = ", ".join(e.label for e in self.edges[:3]) + (", ..." if len(self.edges) > 3 else "")
            faith = "" if self.faithfulness is None else f"; faithfulness {self.faithfulness:.3f}"
            return f"Circuit({len(self.edges)} edges: {shown}{faith})"
        shown = ", ".join(c.label for c in self.cells[:5]) + (", ..." if len(self.cells) > 5 else "")
        faith = "" if self.faithfulness is None else f"; faithfulness {self.faithfulness:.3f}"
        restore = "" if self.restore is None else f"; restores {self.restore:.3f} when copied"
        return f"Circuit({len(self.cells)} cells: {shown}{faith}{restore})"

    def plot_curve(self, ax: Any = None, show: bool | None = None) -> Any:
        """The curve of the search that found the circuit: f against the share of nodes kept (``find_circuit``,
        with CPR and CMD), or the joint restore (``find_bottleneck``).

        Each pair's curve is drawn faintly behind the mean. Example:
            >>> circuit.plot_curve().savefig("curve.png")  # doctest: +SKIP
        """
        if not self.curve:
            raise SettingsError("this circuit has no curve: it comes from find_circuit or find_bottleneck")
        from ..plot import plot_curve

        found = self.faithfulness if self.curve.get("kind") == "faithfulness" else self.restore
        return plot_curve(self.curve, found, ax=ax, show=show)

    def plot(self, ax: Any = None, show: bool | None = None) -> Any:
        """The circuit diagram: every node of the model by layer (embeddings at the bottom, logits at the top),
        the circuit's nodes filled and sized by their effect, its faithfulness in the title; a circuit of
        edges also draws each edge, width by its score's magnitude, colour by its sign.

        Example:
            >>> pw.find_circuit(model, **prompts).plot().savefig("circuit.png")  # doctest: +SKIP
        """
        from ..plot import plot_circuit

        shape = self.provenance.get("shape") or {}
        if not shape:
            raise SettingsError("this circuit does not record its model's shape, so its diagram cannot be drawn")
        n_heads = shape["n_heads"]
        at = lambda cell: drawn_at(cell, n_heads, shape.get("n_kv_heads") or n_heads)
        ends = [(at(e.sender), at(e.receiver)) for e in self.edges]
        return plot_circuit(self, shape["n_layers"], n_heads, ax, show, ends)

    def faithfulness_on(self, model: Any, clean: Texts, corrupt: Texts, **kwargs: Any) -> float:
        """MIB's faithfulness of this circuit on other prompt pairs: the held-out check
        (``pw.faithfulness(model, clean, corrupt, circuit=self, ...)``; the same keywords).
        ``ablation`` and ``metric`` default to the ones the circuit records (those
        ``find_circuit`` used), so the check measures what the search measured.

        Example:
            >>> found.faithfulness_on(model, **held_out)  # doctest: +SKIP
        """
        from .faithfulness import ABLATIONS, faithfulness

        self.check_model(model)
        recorded = {"ablation": ABLATIONS, "metric": M.METRICS}  # a callable metric is recorded by name only
        defaults = {k: self.provenance[k] for k, known in recorded.items() if self.provenance.get(k) in known}
        return faithfulness(model, clean, corrupt, circuit=self, **{**defaults, **kwargs})

    # --- use -----------------------------------------------------------------------------------

    def evaluate(
        self,
        model: Any,
        clean: Texts,
        corrupt: Texts,
        *,
        answer: Texts,
        wrong: Texts,
        metric: M.Metric = M.DEFAULT,
        direction: str = "denoise",
        batch_size: int = 64,
        memory_budget: int | None = None,
        progress: Progress | None = None,
        remote: bool | str = False,
    ) -> JointResult:
        """Patch the circuit jointly (and each cell alone) on other prompt pairs: the held-out check.

        The same as ``pw.patch_sites`` with these cells. Example:
            >>> circuit.evaluate(model, clean, corrupt, answer="Mary", wrong="John").joint  # doctest: +SKIP
        """
        self._nodes_only("evaluate")
        self.check_model(model)
        return patch_sites(
            model,
            clean,
            corrupt,
            answer=answer,
            wrong=wrong,
            cells=self.cells,
            metric=metric,
            direction=direction,
            batch_size=batch_size,
            memory_budget=memory_budget,
            progress=progress,
            remote=remote,
        )

    @entry_point
    def knockout(
        self, model: Any, prompts: Texts, *, mode: str = "mean", reference: Texts | None = None
    ) -> torch.Tensor:
        """The last-position logits of ``prompts`` with the circuit's sites ablated, ``(prompt, vocab)``.

        ``mode="mean"`` puts in the mean activation over the ``reference`` prompts
        (default: ``prompts`` themselves), position by position; ``"zero"`` puts in
        zeros. All prompts must tokenize to one length. Example:
            >>> logits = circuit.knockout(model, prompts, mode="mean")  # doctest: +SKIP
        """
        self._nodes_only("knockout")
        if mode not in ("mean", "zero"):
            raise SettingsError(f"unknown knockout mode {mode!r}; choose one of mean, zero")
        info = self.check_model(model)
        ids = _same_length_ids(model, prompts, "prompts")
        writes = self._writes(info, ids.shape[1])
        with torch.no_grad():
            if mode == "mean":
                ref = ids if reference is None else _same_length_ids(model, reference, "reference", ids.shape[1])
                values = {key: acts.float().mean(0) for key, acts in _activations(model, info, writes, ref).items()}
            else:
                values = {(w.layer, w.site): torch.zeros(()) for w in writes}  # broadcast over positions and width
            with model.trace(on_input_device(model, ids), logits_to_keep=1):
                _put(model, info, writes, values)
                logits = model.output.logits[:, -1].detach().save()  # the model's own logits
        return logits.float().cpu()

    @entry_point
    def sources(self, model: Any, source_prompt: str) -> dict[tuple[int, str], torch.Tensor]:
        """The source prompt's activations at the circuit's sites, for ``write``; also kept for ``write``.

        nnsight runs one forward pass per trace, so the source run happens here, before your trace.
        Example:
            >>> circuit.sources(model, "When Mary and John went to the store , John gave a drink to")  # doctest: +SKIP
        """
        self._nodes_only("sources")
        info = self.check_model(model)
        ids = torch.tensor([model.tokenizer(source_prompt)["input_ids"]])
        with torch.no_grad():
            acts = _activations(model, info, self._writes(info, ids.shape[1]), ids)
        found = {key: value[0] for key, value in acts.items()}  # (pos, unit, width)
        self._sources[(id(model), source_prompt)] = found
        return found

    def write(self, model: Any, source: str | dict) -> None:
        """Inside your own ``with model.trace(...)``: put the source run's activations at the circuit's sites.

        ``source`` is what ``sources(model, prompt)`` returned, or that prompt itself
        once ``sources`` has run on it (before the trace: a trace is one forward
        pass, so the source run cannot happen inside yours). Values are written in
        forward order into every row of the traced batch; the traced prompt must be
        as long as the source where a cell covers every position. Example:

            >>> circuit.sources(model, clean)                # doctest: +SKIP
            >>> with model.trace(corrupt):                   # doctest: +SKIP
            ...     circuit.write(model, clean)
            ...     logits = model.output.logits.save()
        """
        info = model_info(model)
        if isinstance(source, str):
            if (id(model), source) not in self._sources:
                raise SettingsError(
                    f"no source activations for {source!r}: call circuit.sources(model, {source!r}) before the trace"
                )
            source = self._sources[(id(model), source)]
        n_pos = next(iter(source.values())).shape[0]
        _put(model, info, self._writes(info, n_pos), source, n_pos)

    def _nodes_only(self, what: str) -> None:
        """Refuse what patches a circuit's nodes for a circuit of edges, which has no nodes to patch."""
        if self.edges:
            raise SettingsError(
                f"circuit.{what}() patches a circuit's nodes, and this is a circuit of edges: check it with "
                "circuit.faithfulness_on(model, ...) (each edge outside it corrupted into its receiver)"
            )

    def _writes(self, info: ModelInfo, n_pos: int) -> list:
        self._nodes_only("write")
        writes = [cell_write(c, info, n_pos) for c in self.cells]
        if any(w.site == "attn_pattern" for w in writes):
            raise SettingsError("attn_pattern cells cannot be written or knocked out; use the heads' outputs instead")
        return writes

    def check_model(self, model: Any) -> ModelInfo:
        """Refuse a model whose shape differs from the one the circuit was found on; return its sizes."""
        info = model_info(model)
        found = self.provenance.get("shape")
        if found and found != info.shape():
            raise SettingsError(
                f"this circuit was found on a model of shape {found}, but this model has {info.shape()}"
            )
        if self.edges:
            check_in_model(self.edges, EdgeIndex.of(info))
            return info
        for cell in self.cells:  # also checks cells against a model when no shape was recorded
            if cell.site == "embed":
                continue
            if isinstance(cell.pos, str):  # a span label: which positions it names depends on the prompts
                cell = replace(cell, pos=None)
            cell_write(cell, info, 1 if cell.pos is None else max(cell.pos, -cell.pos - 1) + 1)
        return info

    # --- files ----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        edges = {}
        if self.edges:  # version 3: a reader of version 2 would take the senders for a circuit of nodes
            edges = {
                "edges": [[_cell_dict(e.sender), _cell_dict(e.receiver)] for e in self.edges],
                "edge_values": [float(v) for v in self.edge_values],
            }
        return {
            "format": FORMAT,
            "version": EDGES_VERSION if self.edges else VERSION,
            **edges,
            "cells": [_cell_dict(c) for c in self.cells],
            "values": [float(v) for v in self.values],
            "provenance": self.provenance,
            "faithfulness": None if self.faithfulness is None else float(self.faithfulness),
            "restore": None if self.restore is None else float(self.restore),
            "reached": self.reached,
            "trace": self.trace,
            "curve": {**self.curve, "ranked": [_ranked_dict(c) for c in self.curve.get("ranked", [])]},
        }

    def save(self, path: str | Path) -> Path:
        """Write the circuit as versioned JSON (never pickle), all or nothing.

        Example:
            >>> circuit.save("ioi_heads.json")  # doctest: +SKIP
        """
        return write_atomic(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> Circuit:
        """Read a circuit written by ``save``; a damaged or altered file raises ``ResultFileError``."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError, RecursionError) as err:  # RecursionError: a value nested too deep
            raise ResultFileError(f"could not read {str(path)!r}: {type(err).__name__}: {err}") from err
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ResultFileError(f"{str(path)!r} is not a patchwidget circuit (missing format marker)")
        if data.get("version") not in (1, VERSION, EDGES_VERSION):
            raise ResultFileError(f"unsupported circuit format version {data.get('version')!r}")
        try:
            if data["version"] == 1:
                data = _from_version_1(data)
            cells = [_cell(c) for c in data["cells"]]
            values = [float(v) for v in data.get("values", [])]
            provenance = dict(data.get("provenance", {}))
            faithfulness, restore = (
                None if data.get(k) is None else float(data[k]) for k in ("faithfulness", "restore")
            )
            reached = data.get("reached")
            if reached is not None and not isinstance(reached, bool):
                raise ValueError(f"reached must be true, false or null, got {reached!r}")
            trace, curve = list(data.get("trace", [])), dict(data.get("curve", {}))
            if "ranked" in curve and "edges" not in data:
                curve["ranked"] = [_cell(c) for c in curve["ranked"]]
            edges = [Edge(_cell(a), _cell(b)) for a, b in data.get("edges", [])]
            edge_values = [float(v) for v in data.get("edge_values", [])]
            if "ranked" in curve and edges:
                curve["ranked"] = [Edge(_cell(a), _cell(b)) for a, b in data["curve"]["ranked"]]
            return cls(cells, values, provenance, faithfulness, reached, trace, curve, restore, edges, edge_values)
        except (KeyError, TypeError, ValueError) as err:
            raise ResultFileError(f"circuit file {str(path)!r} is malformed: {err}") from err


def _from_version_1(data: dict) -> dict:
    """A version-1 file as version 2: its "faithfulness" (and curve) were the denoising search's joint restore."""
    data = {**data, "faithfulness": None, "restore": data.get("faithfulness")}
    curve = dict(data.get("curve") or {})
    if curve:  # only the keys a restore curve has: MIB's names (faithfulness, CPR, CMD) never survive
        kept = {k: curve[k] for k in ("ranked", "percent", "size", "per_pair") if k in curve}
        curve = {**kept, "kind": "restore", "restore": curve.get("faithfulness", []), "area": curve.get("cpr")}
    trace = [{**row, "restore": row.get("faithfulness")} for row in data.get("trace", [])]
    for row in trace:
        row.pop("faithfulness", None)
    return {**data, "curve": curve, "trace": trace}


def _ranked_dict(item: Cell | Edge) -> Any:
    return [_cell_dict(item.sender), _cell_dict(item.receiver)] if isinstance(item, Edge) else _cell_dict(item)


def _cell_dict(cell: Cell) -> dict[str, Any]:
    return {k: getattr(cell, k) for k in ("site", "layer", "head", "neuron", "pos") if getattr(cell, k) is not None}


def _cell(data: Any) -> Cell:
    if not isinstance(data, dict) or set(data) - {"site", "layer", "head", "neuron", "pos"}:
        raise ValueError(f"a cell must be {{site, layer, head?, neuron?, pos?}}, got {data!r}")
    ints = {k: data[k] for k in ("layer", "head", "neuron") if k in data}
    pos = data.get("pos")
    if (
        not isinstance(data.get("site"), str)
        or not all(type(v) is int for v in ints.values())
        or not (pos is None or type(pos) is int or isinstance(pos, str))
    ):
        raise ValueError(
            f"a cell's site is a string, its indices integers and its pos an integer or a span label, got {data!r}"
        )
    return Cell(data["site"], **ints, pos=pos)


def from_result(result: Any, k: int) -> Circuit:
    """The ``k`` cells of a grid with the largest |effect|, largest first (see ``PatchResult.top_sites``)."""
    values = result.values
    size = int(values.size)
    if not isinstance(k, int | np.integer) or isinstance(k, bool) or not 1 <= k <= size:
        raise SettingsError(f"k must be an integer from 1 to {size} (the grid's cells), got {k!r}")
    site = result.settings.get("site", "")
    if site == "path":
        site = "head_out"  # a path grid's cells are its sender heads
    if not site:
        raise SettingsError("this result does not record its site, so its cells cannot be named")
    if "span" in result.dims:
        raise SettingsError(
            "a grid by span has no token positions to name its cells by (a span's positions differ from pair to "
            "pair): a Circuit is built from a grid of plain prompts"
        )
    magnitude = np.where(np.isfinite(values), np.abs(values), -np.inf).reshape(-1)
    order = np.argsort(-magnitude, kind="stable")[:k]
    if not np.isfinite(magnitude[order]).all():
        raise SettingsError(f"the grid has fewer than {k} cells with a value")
    cells = []
    for flat in order:
        index = dict(zip(result.dims, np.unravel_index(flat, values.shape)))
        coord = {d: int(result.coords[d][i]) for d, i in index.items()}
        head = coord.get("head", coord.get("kv_head"))
        cells.append(Cell(site, coord["layer"], head=head, neuron=coord.get("neuron"), pos=coord.get("pos")))
    return Circuit(cells, [float(values.reshape(-1)[i]) for i in order], provenance_of(result.settings))


def provenance_of(settings: dict[str, Any]) -> dict[str, Any]:
    """What a circuit keeps of the settings of the grid it came from."""
    keys = ("model", "shape", "site", "metric", "direction", "method", "clean", "corrupt", "answer", "wrong")
    return {key: settings[key] for key in keys if key in settings}


def _same_length_ids(model: Any, prompts: Texts, name: str, length: int | None = None) -> torch.Tensor:
    texts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise PromptError(f"{name} must be a non-empty prompt or list of prompts, got {prompts!r}")
    ids = [model.tokenizer(t)["input_ids"] for t in texts]
    want = length or len(ids[0])
    for text, row in zip(texts, ids):
        if len(row) != want:
            raise PromptError(
                f"{name}: {text!r} has {len(row)} tokens, not {want}: {token_strings(model.tokenizer, row)}"
            )
    return torch.tensor(ids)


def _activations(model: Any, info: ModelInfo, writes: list, ids: torch.Tensor) -> dict:
    """Each written (layer, site)'s activation on the prompts ``ids``, ``(prompt, pos, unit, width)``."""
    keys = sorted({(w.layer, w.site) for w in writes}, key=lambda k: (k[0], READ_ORDER.index(k[1])))
    with model.trace(on_input_device(model, ids)):
        got = nnsight.save({})  # made inside the trace: only saved values outlive it
        for layer, site in keys:
            got[(layer, site)] = view(model, info, site, layer).detach().clone().save()
    return {key: value.cpu() for key, value in got.items()}


def _put(model: Any, info: ModelInfo, writes: list, values: dict, n_pos: int | None = None) -> None:
    """Inside a trace: each write's site takes ``values[(layer, site)]`` (``(pos, unit, width)``, or a scalar)
    at its positions and unit, in every row of the batch, in forward order.

    With ``n_pos`` (the source run's length), a traced batch of another length is refused
    before the first write: a longer one would keep its extra positions unpatched, and the
    positions of the circuit's cells (``pos=-1``, say) would name other tokens in it."""
    for layer, site in sorted({(w.layer, w.site) for w in writes}, key=lambda k: (k[0], WRITE_ORDER.index(k[1]))):
        target = view(model, info, site, layer)  # (batch, pos, unit, width)
        if n_pos is not None and target.shape[1] != n_pos:
            raise SettingsError(
                f"the traced prompt has {target.shape[1]} tokens but the circuit's source prompt has {n_pos}: "
                "Circuit.write patches a prompt of the source's length, position by position"
            )
        value = values[(layer, site)]
        for w in (w for w in writes if (w.layer, w.site) == (layer, site)):
            ps = list(w.positions)
            target[:, ps, w.unit] = (value if value.dim() == 0 else value[ps, w.unit]).to(target.dtype)
