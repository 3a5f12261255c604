"""The Jupyter widget: traits and messages only; the work happens in ``Session``.

Example:
    >>> import patchwidget as pw
    >>> w = pw.explore(pw.load_model(), "The capital of France is", "The capital of Japan is",
    ...                answer="Paris", wrong="Tokyo")
    >>> w.result.dims
    ('layer', 'pos')
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import anywidget
import numpy as np
import traitlets

from ..circuits.circuit import Circuit, provenance_of
from ..circuits.joint import JointResult
from ..core.cells import Cell
from ..core.engine import DIRECTIONS, METHODS
from ..core.metrics import METRICS
from ..data.prompts import Texts
from ..errors import MessageError, PatchwidgetError
from ..files import write_atomic
from ..grids.result import PatchResult
from . import view as V
from .export import STATIC, standalone_html
from .levels import START_VIEWS, Computed, Level
from .protocol import MESSAGES
from .session import Session, Settings

SETTABLE = {"site", "direction", "metric", "method", "pair"}


class PatchWidget(anywidget.AnyWidget):
    """An interactive patching grid; click a cell to patch the narrower sites inside it.

    ``result`` is the grid on screen (``None`` where the level shows several
    results, as a head's breakdown, or none, as a search: ``results`` then
    holds every ``PatchResult`` on screen by name, ``circuit`` what a search
    found) and ``path`` the drill-down path; all are observable traits.
    """

    _esm = STATIC / "widget.js"
    _css = STATIC / "widget.css"

    view = traitlets.Dict().tag(sync=True)
    breadcrumb = traitlets.List().tag(sync=True)
    context = traitlets.Dict().tag(sync=True)  # what is being patched: prompts, answers, model, baselines
    controls = traitlets.Dict().tag(sync=True)
    status = traitlets.Dict().tag(sync=True)
    vmax = traitlets.Float(None, allow_none=True).tag(sync=True)
    selection = traitlets.List().tag(sync=True)
    result = traitlets.Instance(PatchResult, allow_none=True)  # the grid on screen, when the level is one grid
    results = traitlets.Dict()  # every PatchResult on screen, by name (q, k, v, out and the pattern of a head)
    path = traitlets.List()
    joint = traitlets.Instance(JointResult, allow_none=True)
    circuit = traitlets.Instance(Circuit, allow_none=True)  # what "Keep as circuit" kept

    @traitlets.validate("vmax")
    def _check_vmax(self, proposal: Any) -> float | None:
        value = proposal["value"]
        if value is not None and not (np.isfinite(value) and value > 0):
            raise traitlets.TraitError(f"vmax must be a positive, finite number or None, got {value!r}")
        return value

    def __init__(
        self,
        model: Any,
        clean: Texts,
        corrupt: Texts,
        *,
        answer: Texts,
        wrong: Texts,
        site: str = "resid_pre",
        metric: str = "logit_diff_norm",
        direction: str = "denoise",
        batch_size: int = 64,
        memory_budget: int | None = None,
        preview: bool = True,
        remote: bool | str = False,
    ) -> None:
        if site not in START_VIEWS:  # before the session starts its worker thread
            raise MessageError(f"site {site!r} cannot start the explorer; choose one of {', '.join(START_VIEWS)}")
        super().__init__()
        self.session = Session(
            model,
            clean,
            corrupt,
            answer=answer,
            wrong=wrong,
            batch_size=batch_size,
            memory_budget=memory_budget,
            preview=preview,
            remote=remote,
            on_progress=self._on_progress,
            on_result=self._on_result,
            on_error=self._on_error,
            on_status=self._on_server_status,
        )
        self._levels = [self.session.top(site)]
        self._settings = Settings(direction=direction, metric=metric)
        self._pair: str | int = "mean"
        self._pending: dict[int, tuple[list[Level], Settings]] = {}
        self._computed: Computed | None = None
        self._joint_box: dict | None = None
        # The first grid is computed before returning, so that `result` and the
        # static PNG are there as soon as the cell finishes.
        try:
            first = self.session.compute(self._levels[0], self._settings)
        except Exception:
            self.session.close()  # no worker thread left behind by a widget that never came to be
            raise
        self.session.cache[(self._levels[0], self._settings)] = first
        self._show(0, first)
        self.on_msg(self._on_msg)

    # --- messages from the front end ------------------------------------------------

    def _on_msg(self, _widget: Any, msg: Any, _buffers: Any) -> None:
        try:
            self._handle(msg)
        except Exception as err:  # the kernel must survive any message
            text = str(err) if isinstance(err, PatchwidgetError) else f"{type(err).__name__}: {err}"
            request_id = msg.get("request_id") if isinstance(msg, dict) else None
            if not isinstance(request_id, int) or isinstance(request_id, bool):
                request_id = self.status.get("request_id", 0)
            self._pending.pop(request_id, None)
            self.status = V.status("error", request_id, message=text)

    def _handle(self, msg: Any) -> None:
        """One message from the page: checked, then dispatched by ``protocol.MESSAGES`` to ``_do_<type>``."""
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            raise MessageError(f"malformed message {msg!r}")
        kind = msg["type"]
        if kind not in MESSAGES:
            raise MessageError(f"unknown message type {kind!r}")
        request_id = _int(msg, "request_id", 0, 2**53)
        if kind != "cancel" and request_id < self.session.latest:
            raise MessageError(f"request {request_id} is older than request {self.session.latest}; it was dropped")
        getattr(self, f"_do_{kind}")(request_id, msg)

    def _do_cancel(self, request_id: int, msg: dict) -> None:
        if request_id >= self.session.latest:  # a cancel of an older request has nothing left to stop
            self.session.cancel()
            self._pending.pop(request_id, None)
            self.status = {**self.status, "state": "cancelled", "message": "cancelled"}

    def _do_drill(self, request_id: int, msg: dict) -> None:
        child = self._drill_target(msg)
        if child is None:
            raise MessageError("this cell has no narrower sites to patch")
        self._request(request_id, [*self._levels, child], self._settings)

    def _do_back(self, request_id: int, msg: dict) -> None:
        level = _int(msg, "level", 0, len(self._levels) - 1)
        self._request(request_id, self._levels[: level + 1], self._settings)

    def _do_set(self, request_id: int, msg: dict) -> None:
        self._set(request_id, msg.get("key"), msg.get("value"))

    def _do_find(self, request_id: int, msg: dict, kind: str = "search") -> None:
        """find_bottleneck (``find``) or find_circuit (``circuit``): a search is of the whole model, from the top."""
        target = msg.get("target")
        if not isinstance(target, int | float) or isinstance(target, bool) or not 0 < target <= 1:
            raise MessageError(f"target must be a number in (0, 1], got {target!r}")
        self._request(request_id, [self._levels[0], Level(kind, target=float(target))], self._settings)

    def _do_circuit(self, request_id: int, msg: dict) -> None:
        self._do_find(request_id, msg, kind="circuit")

    def _do_keep(self, request_id: int, msg: dict) -> None:
        chosen = list(dict.fromkeys(self._cells(msg)))
        shown = self.result or next(iter(self.results.values()), None)
        provenance = provenance_of(shown.settings) if shown is not None else {}
        self.circuit = Circuit(chosen, [], {**provenance, "kept_from": self.breadcrumb[-1]["label"]})
        n = len(chosen)
        self.status = V.status("idle", request_id, message=f"kept {n} cell{'s' if n != 1 else ''} as widget.circuit")

    def _do_joint(self, request_id: int, msg: dict) -> None:
        level = Level("joint", cells=tuple(self._cells(msg)))
        self._request(request_id, self._levels, self._settings, level)

    def _cells(self, msg: dict) -> list[Cell]:
        cells = msg.get("cells")
        if not isinstance(cells, list) or not cells:
            raise MessageError(f"cells must be a non-empty list of {{panel, row, col}}, got {cells!r}")
        return [self._cell_at(c) for c in cells]

    def _locate(self, msg: Any) -> tuple[dict, int, int]:
        """The panel, row and column a message points at, checked against the view."""
        if not isinstance(msg, dict):
            raise MessageError(f"a cell must be {{panel, row, col}}, got {msg!r}")
        panels = {p["id"]: p for p in self.view.get("panels", [])}
        panel = msg.get("panel")
        if not isinstance(panel, str) or panel not in panels:
            raise MessageError(f"unknown panel {panel!r}; the view has {list(panels)}")
        row = _int(msg, "row", 0, len(panels[panel]["rows"]) - 1)
        col = _int(msg, "col", 0, len(panels[panel]["cols"]) - 1)
        return panels[panel], row, col

    def _drill_target(self, msg: dict) -> Level | None:
        panel, row, col = self._locate(msg)
        if not panel["clickable"]:
            return None
        return self.session.drill(self._levels[-1], panel["id"], row, col)

    def _cell_at(self, msg: Any) -> Cell:
        panel, row, col = self._locate(msg)
        cell = self.session.cell(self._levels[-1], panel, row, col)
        if cell is None:
            raise MessageError(f"cells of panel {panel['id']!r} cannot be patched together")
        return cell

    def _set(self, request_id: int, key: Any, value: Any) -> None:
        if key not in SETTABLE:
            raise MessageError(f"cannot set {key!r}; settable: {', '.join(sorted(SETTABLE))}")
        if key == "pair":
            if value != "mean" and not (isinstance(value, int) and 0 <= value < self.session.prompts.n_pairs):
                raise MessageError(f"pair must be 'mean' or 0..{self.session.prompts.n_pairs - 1}, got {value!r}")
            self._pair = value
            if self._computed.exact:
                self._show(request_id, self._computed)
            else:  # the exact values are still coming, under the older request id: ask again under this one
                self._request(request_id, self._levels, self._settings)
            return
        allowed = {"site": START_VIEWS, "direction": DIRECTIONS, "metric": METRICS, "method": METHODS}[key]
        if not isinstance(value, str) or value not in allowed:
            raise MessageError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
        if key == "site":
            self._request(request_id, [self.session.top(value)], self._settings)
        else:
            self._request(request_id, self._levels, replace(self._settings, **{key: value}))

    def _request(self, request_id: int, levels: list[Level], settings: Settings, level: Level | None = None) -> None:
        if level is None:
            self._joint_box = None  # a joint result belongs to the view it was asked on
        self._pending[request_id] = (levels, settings)
        self.status = V.status("running", request_id)
        cached = self.session.submit(request_id, level or levels[-1], settings)
        if cached is not None:
            self._on_result(request_id, cached)

    # --- results from the session (worker thread) ---------------------------------

    def _on_progress(self, request_id: int, done: int, total: int) -> None:
        if request_id >= self.session.latest:
            server = self.status.get("server") if self.status.get("request_id") == request_id else None
            self.status = V.status("running", request_id, done, total, server=server)

    def _on_server_status(self, request_id: int, status: str, description: str) -> None:
        if request_id >= self.session.latest and self.status.get("state") == "running":
            self.status = {
                **self.status,
                "request_id": request_id,
                "server": {"status": status, "description": description},
            }

    def _on_result(self, request_id: int, computed: Computed) -> None:
        if request_id < self.session.latest or request_id not in self._pending:
            return  # stale: a newer request superseded this one
        if computed.joint is not None:
            self._pending.pop(request_id)
            self.joint = computed.joint
            self._joint_box = V.joint_box(computed.joint)
            self.view = {**self.view, "request_id": request_id, "joint": self._joint_box}
            self.status = V.status("idle", request_id)
            if self._computed is not None and not self._computed.exact:
                # The joint run superseded the exact values of the estimate on show: compute them again.
                self._pending[request_id] = (self._levels, self._settings)
                self.status = {**self.status, "state": "running"}
                self.session.submit(request_id, self._levels[-1], self._settings)
            return
        self._levels, self._settings = self._pending[request_id]
        if computed.circuit is not None and computed.exact:  # not the partial sets shown during a search
            self.circuit = computed.circuit
        if computed.exact:  # a preview keeps the request open for its exact values
            self._pending = {k: v for k, v in self._pending.items() if k > request_id}
        self._show(request_id, computed)

    def _on_error(self, request_id: int, message: str) -> None:
        self._pending.pop(request_id, None)
        self.status = V.status("error", request_id, message=message)

    # --- drawing state --------------------------------------------------------

    def _show(self, request_id: int, computed: Computed) -> None:
        self._computed = computed
        view = V.level_view(request_id, self._levels, computed, self._settings, self.session, self._pair)
        self.view = {**view, "joint": self._joint_box} if self._joint_box is not None else view
        self.breadcrumb = V.breadcrumb(self._levels, self.session.labels_for(self._pair))
        site = next(lv.site for lv in reversed(self._levels) if lv.kind in ("top", "lens"))  # the grid on show's
        self.controls = V.controls(site, self._settings, self._pair, self.session.prompts.n_pairs)
        top = self.session.cache.get((self._levels[0], self._settings))
        context = V.context(self.session, self._pair, next(iter(top.results.values()), None) if top else None)
        if "baselines" in self.context and self.context["pair"] == context["pair"]:  # kept where no grid has them
            context.setdefault("baselines", self.context["baselines"])
        self.context = context
        self.status = V.status("idle" if computed.exact else "running", request_id)
        self.path = [asdict(level) for level in self._levels]
        # What is on screen, never a grid shown earlier: every result of the level by name, and the one grid
        # when the level is one (a head's breakdown is several, a search's view none: see widget.circuit).
        self.results = dict(computed.results)
        self.result = next(iter(computed.results.values())) if len(computed.results) == 1 else None

    # --- static output -----------------------------------------------------------

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        bundle = super()._repr_mimebundle_(**kwargs)
        data = bundle[0] if isinstance(bundle, tuple) else bundle
        shown = self.result or next(iter(self.results.values()), None)
        if shown is not None:  # shown where no widget manager runs (GitHub, nbviewer)
            data["image/png"] = V.png(shown)
        return bundle

    def save_html(self, path: str | Path) -> Path:
        """Write a standalone page that works offline: the front end and every
        level computed so far under the current settings, inlined.

        Clicking through the page replays the computed levels; a level that was
        never computed says so. The file is written whole or not at all.

        Example:
            >>> w.save_html("ioi.html")  # doctest: +SKIP
        """
        states, edges = V.computed_states(self.session, self._levels[0], self._settings, self._pair)
        data = {
            "start": 0,
            "states": states,
            "edges": edges,
            "controls": self.controls,
            "vmax": self.vmax,
            "context": self.context,
        }
        first = f"{states[0]['crumb']['label']} ({states[0]['view']['title']})" if states else ""
        title = f"patchwidget: {first}" if first else "patchwidget"  # the level the page opens on
        return write_atomic(path, standalone_html(data, title))

    def close(self) -> None:
        session = getattr(self, "session", None)  # None when __init__ refused its arguments before starting one
        if session is not None:
            session.close()
        super().close()


def _int(msg: dict, key: str, low: int, high: int) -> int:
    value = msg.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise MessageError(f"{key} must be an integer from {low} to {high}, got {value!r}")
    return value


def explore(
    model: Any,
    clean: Texts,
    corrupt: Texts,
    *,
    answer: Texts,
    wrong: Texts,
    site: str = "resid_pre",
    metric: str = "logit_diff_norm",
    direction: str = "denoise",
    batch_size: int = 64,
    memory_budget: int | None = None,
    preview: bool = True,
    remote: bool | str = False,
) -> PatchWidget:
    """An interactive patching grid for the notebook.

    Starts at ``site`` over layers and tokens; clicking a cell opens the heads
    of that layer, clicking a head its query/key/value breakdown and attention
    pattern, clicking an ``mlp_out`` cell the top neurons there. Shift-click
    selects cells and "Patch selected together" patches them jointly. With
    ``preview``, an attribution estimate is drawn at once and replaced by the
    exact values when they arrive. ``remote=True`` runs every trace on NDIF
    through nnsight (``remote="local"`` simulates that path on this machine),
    and the progress bar shows the server's queue and run status.
    ``batch_size`` and ``memory_budget`` (bytes) are as in ``patch``.

    Example:
        >>> import patchwidget as pw
        >>> pw.explore(pw.load_model(), "The capital of France is", "The capital of Japan is",
        ...            answer="Paris", wrong="Tokyo")  # doctest: +SKIP
    """
    return PatchWidget(
        model,
        clean,
        corrupt,
        answer=answer,
        wrong=wrong,
        site=site,
        metric=metric,
        direction=direction,
        batch_size=batch_size,
        memory_budget=memory_budget,
        preview=preview,
        remote=remote,
    )
