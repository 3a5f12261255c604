"""The Jupyter widget: traits and the message dispatch only; the request state is an ``Explorer``'s, the
work happens in its ``Session``.

Example:
    >>> import patchwidget as pw
    >>> w = pw.explore(pw.load_model(), "The capital of France is", "The capital of Japan is",
    ...                answer="Paris", wrong="Tokyo")
    >>> w.result.dims
    ('layer', 'pos')
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anywidget
import numpy as np
import traitlets

from ..circuits.circuit import Circuit
from ..circuits.joint import JointResult
from ..core.metrics import DEFAULT
from ..data.prompts import Texts
from ..errors import MessageError, PatchwidgetError
from ..files import write_atomic
from ..grids.result import PatchResult
from . import view as V
from .explorer import Explorer, check_site, int_field
from .export import STATIC, standalone_html
from .protocol import MESSAGES
from .scale import DEFAULT_SCALE


class PatchWidget(anywidget.AnyWidget):
    """An interactive patching grid; click a cell to patch the narrower sites inside it.

    ``result`` is the grid on screen (``None`` where the level shows several
    results, as a head's breakdown, or none, as a search: ``results`` then
    holds every ``PatchResult`` on screen by name, ``circuit`` what a search
    found) and ``path`` the drill-down path; all are observable traits. The
    request state behind them is ``explorer`` (an ``Explorer``), which drives
    ``session``.
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
        metric: str = DEFAULT,
        scale: str = DEFAULT_SCALE,
        direction: str = "denoise",
        batch_size: int = 64,
        memory_budget: int | None = None,
        preview: bool = True,
        remote: bool | str = False,
    ) -> None:
        check_site(site)  # refused before the widget opens its comm (the explorer checks it too)
        super().__init__()
        # The explorer computes the first grid before returning and publishes it into the traits, so that
        # `result` and the static PNG are there as soon as the cell finishes.
        self.explorer = Explorer(
            model,
            clean,
            corrupt,
            answer=answer,
            wrong=wrong,
            publish=self._publish,
            site=site,
            metric=metric,
            scale=scale,
            direction=direction,
            batch_size=batch_size,
            memory_budget=memory_budget,
            preview=preview,
            remote=remote,
        )
        self.session = self.explorer.session
        self.on_msg(self._on_msg)

    def _publish(self, **traits: Any) -> None:
        for name, value in traits.items():  # in the explorer's order: a status after what it describes
            setattr(self, name, value)

    # --- messages from the front end ------------------------------------------------

    def _on_msg(self, _widget: Any, msg: Any, _buffers: Any) -> None:
        try:
            self._handle(msg)
        except Exception as err:  # the kernel must survive any message
            text = str(err) if isinstance(err, PatchwidgetError) else f"{type(err).__name__}: {err}"
            request_id = msg.get("request_id") if isinstance(msg, dict) else None
            if not isinstance(request_id, int) or isinstance(request_id, bool):
                request_id = self.status.get("request_id", 0)
            self.explorer.on_error(request_id, text)

    def _handle(self, msg: Any) -> None:
        """One message from the page: checked, then dispatched by ``protocol.MESSAGES`` to the explorer's
        ``do_<type>``."""
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            raise MessageError(f"malformed message {msg!r}")
        kind = msg["type"]
        if kind not in MESSAGES:
            raise MessageError(f"unknown message type {kind!r}")
        request_id = int_field(msg, "request_id", 0, 2**53)
        if kind != "cancel" and request_id < self.session.latest:
            raise MessageError(f"request {request_id} is older than request {self.session.latest}; it was dropped")
        getattr(self.explorer, f"do_{kind}")(request_id, msg)

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
        ex = self.explorer
        states, edges = V.computed_states(self.session, ex.levels[0], ex.settings, ex.pair, ex.scale)
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
        explorer = getattr(self, "explorer", None)  # None when __init__ refused its arguments before starting one
        if explorer is not None:
            explorer.close()
        super().close()


def explore(
    model: Any,
    clean: Texts,
    corrupt: Texts,
    *,
    answer: Texts,
    wrong: Texts,
    site: str = "resid_pre",
    metric: str = DEFAULT,
    scale: str = DEFAULT_SCALE,
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
    ``metric`` is computed (``logit_diff``, ``prob`` or ``kl``); ``scale`` is how the numbers are shown,
    ``"normalized"`` (each pair's clean run 1, corrupted run 0) or ``"raw"``, switched without computing again.

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
        scale=scale,
        direction=direction,
        batch_size=batch_size,
        memory_budget=memory_budget,
        preview=preview,
        remote=remote,
    )
