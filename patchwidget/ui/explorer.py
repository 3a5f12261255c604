"""The explorer: the widget's request state and logic, without a widget.

An ``Explorer`` holds the drill-down path on show, the settings, the pair and the scale on show,
and the requests still pending; it turns the page's messages (``do_<type>``,
one per type of ``protocol.MESSAGES``) into requests to its ``Session``, and
tells its owner what to show through one callback, ``publish(**traits)``,
with the values of the widget's traits that changed, in the order to set them.
``PatchWidget`` is such an owner: it sets its traits from them.

Example:
    >>> shown = {}
    >>> ex = Explorer(load_model(), "The capital of France is", "The capital of Japan is",
    ...               answer="Paris", wrong="Tokyo", publish=shown.update)  # doctest: +SKIP
    >>> ex.do_drill(1, {"panel": "resid_pre", "row": 2, "col": 4})  # doctest: +SKIP
    >>> shown["breadcrumb"]  # once request 1 is computed  # doctest: +SKIP
    [{'label': 'resid_pre'}, {'label': 'L2 heads'}]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

from ..circuits.circuit import Circuit, provenance_of
from ..core.cells import Cell
from ..core.engine import DIRECTIONS, METHODS
from ..core.metrics import DEFAULT
from ..data.prompts import Texts
from ..errors import MessageError, SettingsError
from ..search.nodes import LEVELS as CIRCUIT_LEVELS
from . import view as V
from .levels import START_SITES, Computed, Level
from .scale import DEFAULT_SCALE, SCALES, check_scale, scaled
from .session import Session, Settings

SETTABLE = {"site", "direction", "metric", "scale", "method", "pair"}
DISPLAY = {"pair", "scale"}  # settings of how the numbers are shown: set without computing again


def check_metric(metric: object) -> None:
    """Refuse a metric the explorer does not offer: a normalised one is its ``scale="normalized"`` view.

    Example:
        >>> check_metric("logit_diff")
    """
    if metric not in V.WIDGET_METRICS:
        hint = " (the normalised view is scale='normalized', the default)" if metric == "logit_diff_norm" else ""
        raise SettingsError(f"metric must be one of {', '.join(V.WIDGET_METRICS)}, got {metric!r}{hint}")


def check_site(site: str) -> None:
    """Refuse a site the explorer cannot start from (its first grid must be one of ``START_SITES``).

    Example:
        >>> check_site("resid_pre")
        >>> check_site("head_q")  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        MessageError: site 'head_q' cannot start the explorer; ...
    """
    if site not in START_SITES:
        raise MessageError(f"site {site!r} cannot start the explorer; choose one of {', '.join(START_SITES)}")


def _target(msg: dict) -> float:
    """A search's ``msg["target"]``, checked to be a number in (0, 1]."""
    target = msg.get("target")
    if not isinstance(target, int | float) or isinstance(target, bool) or not 0 < target <= 1:
        raise MessageError(f"target must be a number in (0, 1], got {target!r}")
    return float(target)


def int_field(msg: dict, key: str, low: int, high: int) -> int:
    """``msg[key]``, checked to be an integer (not a bool) from ``low`` to ``high``.

    Example:
        >>> int_field({"row": 2}, "row", 0, 3)
        2
    """
    value = msg.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise MessageError(f"{key} must be an integer from {low} to {high}, got {value!r}")
    return value


class Explorer:
    """The drill-down path, settings and pending requests of one explorer, driving one ``Session``.

    ``levels`` is the drill-down path on show, ``settings``, ``pair`` and ``scale`` the
    choices that apply to it, ``pending`` the requests not yet answered (request
    id -> the levels and settings it shows). ``publish(**traits)`` is called on
    the caller's thread for what a message changes at once, and on the
    session's worker thread for what a result, progress or error changes;
    ``shown`` is everything published so far, trait by trait.

    Example:
        >>> ex = Explorer(load_model(), "The capital of France is", "The capital of Japan is",
        ...               answer="Paris", wrong="Tokyo", publish=print)  # doctest: +SKIP
        >>> ex.do_set(1, {"key": "pair", "value": 0})  # doctest: +SKIP
    """

    def __init__(
        self,
        model: Any,
        clean: Texts,
        corrupt: Texts,
        *,
        answer: Texts,
        wrong: Texts,
        publish: Callable[..., None],
        site: str = "resid_pre",
        metric: str = DEFAULT,
        scale: str = DEFAULT_SCALE,
        direction: str = "denoise",
        batch_size: int = 64,
        memory_budget: int | None = None,
        preview: bool = True,
        remote: bool | str = False,
    ) -> None:
        check_site(site)  # before the session starts its worker thread
        check_metric(metric)
        self.scale = check_scale(scale)
        self.publish = publish
        self.shown: dict[str, Any] = {}
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
            on_progress=self.on_progress,
            on_result=self.on_result,
            on_error=self.on_error,
            on_status=self.on_server_status,
        )
        self.levels = [self.session.top(site)]
        self.settings = Settings(direction=direction, metric=metric)
        self.pair: str | int = "mean"
        self.pending: dict[int, tuple[list[Level], Settings]] = {}
        self._computed: Computed | None = None
        self._joint: Any = None  # the joint patch on show beside the level (a JointResult), if any
        self._says: dict | None = None  # what the model says under a patch, on show beside the level (a SaysBox)
        # The first grid is computed before returning, so that the owner has it on show at once.
        try:
            first = self.session.compute(self.levels[0], self.settings)
        except Exception:
            self.session.close()  # no worker thread left behind by an explorer that never came to be
            raise
        self.session.cache[(self.levels[0], self.settings)] = first
        self.show(0, first)

    def close(self) -> None:
        """Stop the session's worker thread.

        Example:
            >>> ex.close()  # doctest: +SKIP
        """
        self.session.close()

    def _publish(self, **traits: Any) -> None:
        self.shown.update(traits)  # what a later message points into (the view's panels, the status on show)
        self.publish(**traits)

    # --- messages from the front end: do_<type> for each type of protocol.MESSAGES ------------------

    def do_cancel(self, request_id: int, msg: dict) -> None:
        """Stop request ``request_id`` if it is the newest.

        Example:
            >>> ex.do_cancel(4, {})  # doctest: +SKIP
        """
        if request_id >= self.session.latest:  # a cancel of an older request has nothing left to stop
            self.session.cancel()
            self.pending.pop(request_id, None)
            self._publish(status={**self.shown.get("status", {}), "state": "cancelled", "message": "cancelled"})

    def do_drill(self, request_id: int, msg: dict) -> None:
        """Open the narrower sites under the cell ``{panel, row, col}`` of the view on show.

        Example:
            >>> ex.do_drill(1, {"panel": "resid_pre", "row": 2, "col": 4})  # doctest: +SKIP
        """
        child = self._drill_target(msg)
        if child is None:
            raise MessageError("this cell has no narrower sites to patch")
        self._request(request_id, [*self.levels, child], self.settings)

    def do_back(self, request_id: int, msg: dict) -> None:
        """Return to level ``msg["level"]`` of the breadcrumb (0: the top).

        Example:
            >>> ex.do_back(2, {"level": 0})  # doctest: +SKIP
        """
        level = int_field(msg, "level", 0, len(self.levels) - 1)
        self._request(request_id, self.levels[: level + 1], self.settings)

    def do_set(self, request_id: int, msg: dict) -> None:
        """Change one of ``SETTABLE`` (``msg["key"]``) to ``msg["value"]``.

        Example:
            >>> ex.do_set(3, {"key": "direction", "value": "noise"})  # doctest: +SKIP
        """
        self._set(request_id, msg.get("key"), msg.get("value"))

    def do_find(self, request_id: int, msg: dict) -> None:
        """find_bottleneck: the cells restoring ``msg["target"]`` of the effect when copied together.

        Example:
            >>> ex.do_find(5, {"target": 0.8})  # doctest: +SKIP
        """
        self._search(request_id, Level("search", target=_target(msg)))

    def do_circuit(self, request_id: int, msg: dict) -> None:
        """Find the circuit doing ``msg["target"]`` of the task on its own (find_circuit), of nodes or of edges
        (``msg["level"]``, ``"nodes"`` where absent).

        Example:
            >>> ex.do_circuit(6, {"target": 0.9, "level": "edges"})  # doctest: +SKIP
        """
        level = msg.get("level", "nodes")
        if level not in CIRCUIT_LEVELS:
            raise MessageError(f"level must be one of {', '.join(CIRCUIT_LEVELS)}, got {level!r}")
        self._search(request_id, Level("circuit", target=_target(msg), edges=level == "edges"))

    def _search(self, request_id: int, found: Level) -> None:
        """A search is of the whole model: from the first grid, whatever the level on show."""
        self._request(request_id, [self.levels[0], found], self.settings)

    def do_keep(self, request_id: int, msg: dict) -> None:
        """Publish the cells ``msg["cells"]`` (``{panel, row, col}`` each) as ``circuit``.

        Example:
            >>> ex.do_keep(7, {"cells": [{"panel": "resid_pre", "row": 0, "col": 3}]})  # doctest: +SKIP
        """
        chosen = list(dict.fromkeys(self._cells(msg)))
        shown = self.shown.get("result") or next(iter(self.shown.get("results", {}).values()), None)
        provenance = provenance_of(shown.settings) if shown is not None else {}
        circuit = Circuit(chosen, [], {**provenance, "kept_from": self.shown["breadcrumb"][-1]["label"]})
        n = len(chosen)
        status = V.status("idle", request_id, message=f"kept {n} cell{'s' if n != 1 else ''} as widget.circuit")
        self._publish(circuit=circuit, status=status)

    def do_joint(self, request_id: int, msg: dict) -> None:
        """Patch the cells ``msg["cells"]`` together; the drill-down path stays as it is.

        Example:
            >>> ex.do_joint(8, {"cells": [{"panel": "resid_pre", "row": 0, "col": 3}]})  # doctest: +SKIP
        """
        level = Level("joint", cells=tuple(self._cells(msg)))
        self._request(request_id, self.levels, self.settings, level)

    def do_says(self, request_id: int, msg: dict) -> None:
        """What the model says (``pw.generate``, a few tokens) for the pair on show (the first for the mean) with
        the cells ``msg["cells"]`` patched, or with the circuit the level on show found (``"circuit"``, in the
        circuit's own direction); the drill-down path stays as it is.

        Example:
            >>> ex.do_says(9, {"cells": [{"panel": "head_out", "row": 1, "col": 13}]})  # doctest: +SKIP
        """
        refused = self._says_refused(msg.get("cells"))
        if refused is not None:  # the page says it before a click; a message sent anyway is answered with it
            raise MessageError(refused)
        settings, alone = self.settings, False
        if msg.get("cells") == "circuit":
            circuit = self._computed.circuit if self._computed is not None and self._computed.exact else None
            if circuit is None:
                raise MessageError("the level on show found no circuit; select cells to patch instead")
            cells = tuple(circuit.cells)
            # A circuit found by MIB's faithfulness says what it says on its own (everything else corrupted);
            # a bottleneck, what the corrupted run says with its cells copied in.
            alone = circuit.faithfulness is not None
            settings = replace(settings, direction=circuit.provenance.get("direction", settings.direction))
        else:
            cells = tuple(dict.fromkeys(self._cells(msg)))
        pair = 0 if self.pair == "mean" else int(self.pair)
        level = Level("says", cells=cells, pair=pair, alone=alone)
        self._request(request_id, self.levels, self.settings, level, settings)

    def _says_refused(self, cells: Any) -> str | None:
        """Why ``pw.generate`` refuses what *What does it say?* asks (the view says it: ``disabled["says"]``, a
        panel's ``says_refused``), or None."""
        if self.session.says_refused is not None:
            return self.session.says_refused
        why = self.shown.get("view", {}).get("disabled", {}).get("says")
        if why is not None:  # the level on show (a circuit of edges)
            return why
        panels = {p["id"]: p for p in self.shown.get("view", {}).get("panels", [])}
        for cell in cells if isinstance(cells, list) else []:
            name = cell.get("panel") if isinstance(cell, dict) else None
            why = panels[name].get("says_refused") if isinstance(name, str) and name in panels else None
            if why is not None:
                return why
        return None

    def _cells(self, msg: dict) -> list[Cell]:
        cells = msg.get("cells")
        if not isinstance(cells, list) or not cells:
            raise MessageError(f"cells must be a non-empty list of {{panel, row, col}}, got {cells!r}")
        return [self._cell_at(c) for c in cells]

    def _locate(self, msg: Any) -> tuple[dict, int, int]:
        """The panel, row and column a message points at, checked against the view on show."""
        if not isinstance(msg, dict):
            raise MessageError(f"a cell must be {{panel, row, col}}, got {msg!r}")
        panels = {p["id"]: p for p in self.shown.get("view", {}).get("panels", [])}
        panel = msg.get("panel")
        if not isinstance(panel, str) or panel not in panels:
            raise MessageError(f"unknown panel {panel!r}; the view has {list(panels)}")
        row = int_field(msg, "row", 0, len(panels[panel]["rows"]) - 1)
        col = int_field(msg, "col", 0, len(panels[panel]["cols"]) - 1)
        return panels[panel], row, col

    def _drill_target(self, msg: dict) -> Level | None:
        panel, row, col = self._locate(msg)
        if not panel["clickable"]:
            return None
        return self.session.drill(self.levels[-1], panel, row, col)

    def _cell_at(self, msg: Any) -> Cell:
        panel, row, col = self._locate(msg)
        cell = self.session.cell(self.levels[-1], panel, row, col)
        if cell is None:
            raise MessageError(f"cells of panel {panel['id']!r} cannot be patched together")
        return cell

    def _set(self, request_id: int, key: Any, value: Any) -> None:
        if key not in SETTABLE:
            raise MessageError(f"cannot set {key!r}; settable: {', '.join(sorted(SETTABLE))}")
        if key in DISPLAY:
            self._display(request_id, key, value)
            return
        allowed = {"site": START_SITES, "direction": DIRECTIONS, "metric": V.WIDGET_METRICS, "method": METHODS}[key]
        if not isinstance(value, str) or value not in allowed:
            raise MessageError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
        if key == "site":
            self._request(request_id, [self.session.top(value)], self.settings)
        else:
            self._request(request_id, self.levels, replace(self.settings, **{key: value}))

    def _display(self, request_id: int, key: str, value: Any) -> None:
        """The pair on show or the scale: the same results drawn again, nothing computed."""
        if key == "pair":
            n_pairs = self.session.prompts.n_pairs
            is_index = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < n_pairs
            if value != "mean" and not is_index:  # True is an int to Python, but a new axis to numpy
                raise MessageError(f"pair must be 'mean' or 0..{n_pairs - 1}, got {value!r}")
            self.pair = value
            self._says = None  # it continued another pair's prompts
        else:
            if value not in SCALES:
                raise MessageError(f"scale must be one of {', '.join(SCALES)}, got {value!r}")
            self.scale = value
        if self._computed.exact:
            self.show(request_id, self._computed)
        else:  # the exact values are still coming, under the older request id: ask again under this one
            self._request(request_id, self.levels, self.settings)

    def _request(
        self,
        request_id: int,
        levels: list[Level],
        settings: Settings,
        level: Level | None = None,
        computed_with: Settings | None = None,
    ) -> None:
        """Ask for ``levels`` under ``settings``, or for ``level`` beside them (joint, says: ``computed_with``
        where its settings are not the view's)."""
        if level is None:
            self._joint = self._says = None  # a joint result or a continuation belongs to the view it was asked on
        self.pending[request_id] = (levels, settings)
        self._publish(status=V.status("running", request_id))
        cached = self.session.submit(request_id, level or levels[-1], computed_with or settings)
        if cached is not None:
            self.on_result(request_id, cached)

    # --- from the session (worker thread) ----------------------------------------------------

    def on_progress(self, request_id: int, done: int, total: int) -> None:
        """Publish the progress of request ``request_id`` unless a newer request came.

        Example:
            >>> ex.on_progress(1, 3, 10)  # doctest: +SKIP
        """
        if request_id >= self.session.latest:
            status = self.shown.get("status", {})
            server = status.get("server") if status.get("request_id") == request_id else None
            self._publish(status=V.status("running", request_id, done, total, server=server))

    def on_server_status(self, request_id: int, status: str, description: str) -> None:
        """Publish what the server says of a remote request (``"QUEUED"``, ...) while it runs.

        Example:
            >>> ex.on_server_status(1, "QUEUED", "waiting for a GPU")  # doctest: +SKIP
        """
        shown = self.shown.get("status", {})
        if request_id >= self.session.latest and shown.get("state") == "running":
            server = {"status": status, "description": description}
            self._publish(status={**shown, "request_id": request_id, "server": server})

    def on_result(self, request_id: int, computed: Computed) -> None:
        """Show a computed level (or joint patch) of request ``request_id``, unless it is stale.

        Example:
            >>> ex.on_result(1, ex.session.compute(ex.levels[-1], ex.settings))  # doctest: +SKIP
        """
        if request_id < self.session.latest or request_id not in self.pending:
            return  # stale: a newer request superseded this one
        if computed.joint is not None or computed.says is not None:
            self._on_aside(request_id, computed)
            return
        self.levels, self.settings = self.pending[request_id]
        if computed.circuit is not None and computed.exact:  # not the partial sets shown during a search
            self._publish(circuit=computed.circuit)
        if computed.exact:  # a preview keeps the request open for its exact values
            self.pending = {k: v for k, v in self.pending.items() if k > request_id}
        self.show(request_id, computed)

    def _on_aside(self, request_id: int, computed: Computed) -> None:
        """A joint patch or a continuation, shown beside the level on show."""
        self.pending.pop(request_id)
        view = {**self.shown.get("view", {}), "request_id": request_id}
        if computed.joint is not None:
            self._joint = computed.joint
            joint = self._joint_on_screen()
            self._publish(joint=joint, view={**view, "joint": V.joint_box(joint)}, status=V.status("idle", request_id))
        else:
            self._says = V.says_box(computed.says, computed.level.pair)
            self._publish(view={**view, "says": self._says}, status=V.status("idle", request_id))
        if self._computed is not None and not self._computed.exact:
            # The joint or says run superseded the exact values of the estimate on show: compute them again.
            self.pending[request_id] = (self.levels, self.settings)
            self._publish(status={**self.shown["status"], "state": "running"})
            self.session.submit(request_id, self.levels[-1], self.settings)

    def _asides(self, computed: Computed, joint: dict) -> dict:
        """What the view shows beside the level: the joint patch, the continuation, the circuit it can ask about."""
        out: dict[str, Any] = {"joint": V.joint_box(joint["joint"])} if joint else {}
        if self._says is not None:
            out["says"] = self._says
        if computed.circuit is not None and computed.exact:
            out["circuit_cells"] = len(computed.circuit.cells)
        return out

    def _joint_on_screen(self) -> Any:
        """The joint patch on show as drawn: normalised per pair under the ``"normalized"`` scale."""
        return self._joint.normalized() if self.scale == "normalized" else self._joint

    def on_error(self, request_id: int, message: str) -> None:
        """Publish an error status for request ``request_id``, which is no longer pending.

        Example:
            >>> ex.on_error(3, "row must be an integer from 0 to 3, got 9")  # doctest: +SKIP
        """
        self.pending.pop(request_id, None)
        self._publish(status=V.status("error", request_id, message=message))

    # --- what is on show --------------------------------------------------------------------

    def show(self, request_id: int, computed: Computed) -> None:
        """Publish ``computed`` as the level at the end of ``levels``, under the settings and pair on show.

        Example:
            >>> ex.show(0, ex.session.cache[(ex.levels[0], ex.settings)])  # doctest: +SKIP
        """
        self._computed = computed
        levels, session = self.levels, self.session
        view = V.level_view(request_id, levels, computed, self.settings, session, self.pair, self.scale)
        site = next(lv.site for lv in reversed(levels) if lv.kind in ("top", "lens"))  # the grid on show's
        top = session.cache.get((levels[0], self.settings))
        context = V.context(session, self.pair, next(iter(top.results.values()), None) if top else None)
        before = self.shown.get("context", {})
        if "baselines" in before and before["pair"] == context["pair"]:  # kept where no grid has them
            context.setdefault("baselines", before["baselines"])
        on_screen = scaled(computed, self.scale).results  # as drawn: normalised under the "normalized" scale
        # The status comes after what it describes, so an owner that sees "idle" sees the view it is about.
        # What is on screen, never a grid shown earlier: every result of the level by name, and the one grid
        # when the level is one (a head's breakdown is several, a search's view none: see widget.circuit).
        joint = {} if self._joint is None else {"joint": self._joint_on_screen()}
        self._publish(
            view={**view, **self._asides(computed, joint)},
            breadcrumb=V.breadcrumb(levels, session.labels_for(self.pair)),
            controls=V.controls(site, self.settings, self.pair, session.prompts.n_pairs, self.scale),
            context=context,
            status=V.status("idle" if computed.exact else "running", request_id),
            path=[asdict(level) for level in levels],
            results=dict(on_screen),
            result=next(iter(on_screen.values())) if len(on_screen) == 1 else None,
            **joint,
        )
