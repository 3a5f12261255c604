"""The view model: what the front end is sent, built from a session's computed levels.

Plain functions from computed results to the dicts of ``protocol``; the widget
assigns them to its traits, and the offline page (``export``) replays them.

Example:
    >>> status("running", 3, done=2, total=8)
    {'state': 'running', 'request_id': 3, 'done': 2, 'total': 8, 'message': ''}
"""

from __future__ import annotations

import base64
import difflib
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..circuits.circuit import DEFAULT_TARGET
from ..circuits.joint import JointResult
from ..core.engine import DIRECTIONS, METHODS
from ..core.metrics import METRICS, resolve
from ..data.models import is_demo_model
from ..data.templates import token_strings
from ..grids.result import PatchResult
from ..search.nodes import LEVELS as CIRCUIT_LEVELS
from .code import level_code
from .levels import LEVELS, START_SITES, Computed, Display, Level, disabled
from .protocol import Context, Controls, Crumb, JointBox, SaysBox, Server, Status, View
from .scale import SCALE_LABELS, SCALES, rescales, scaled

if TYPE_CHECKING:
    from .session import Session, Settings

SITE_GROUPS = {
    "resid_pre": "residual",
    "resid_mid": "residual",
    "resid_post": "residual",
    "attn_out": "attention",
    "head_out": "attention",
    "mlp_out": "mlp",
    "lens": "lens",
}
DIRECTION_LABELS = {"denoise": "denoise (clean into corrupt run)", "noise": "noise (corrupt into clean run)"}
METHOD_LABELS = {"exact": "exact patching", "attribution": "attribution (fast estimate)"}
CIRCUIT_LABELS = {"nodes": "of nodes", "edges": "of edges"}  # Find circuit ...
# The widget's metrics: a normalised one would be the scale's "normalized" view a second time.
WIDGET_METRICS = tuple(m for m in METRICS if not resolve(m).normalized)


def status(
    state: str, request_id: int, done: int = 0, total: int = 0, message: str = "", server: Server | None = None
) -> Status:
    """The ``status`` trait: what the kernel is doing for which request."""
    out: Status = {"state": state, "request_id": request_id, "done": done, "total": total, "message": message}  # type: ignore[typeddict-item]
    if server:
        out["server"] = server
    return out


def controls(site: str, settings: Settings, pair: str | int, n_pairs: int, scale: str = "raw") -> Controls:
    """The ``controls`` trait: every choice the front end offers, and the current ones."""
    return {
        "site": site,
        "sites": [{"name": n, "group": SITE_GROUPS[n], "label": n} for n in START_SITES],  # type: ignore[typeddict-item]
        "direction": settings.direction,
        "directions": [{"value": d, "label": DIRECTION_LABELS[d]} for d in DIRECTIONS],
        "metric": settings.metric,
        "metrics": [{"value": m, "label": m} for m in WIDGET_METRICS],
        "scale": scale,
        "scales": [{"value": s, "label": SCALE_LABELS[s]} for s in SCALES],
        "method": settings.method,
        "methods": [{"value": m, "label": METHOD_LABELS[m]} for m in METHODS],
        "pair": pair,
        "n_pairs": n_pairs,
        "target": DEFAULT_TARGET,
        "circuit_levels": [{"value": v, "label": CIRCUIT_LABELS[v]} for v in CIRCUIT_LEVELS],
    }


def level_view(
    request_id: int,
    levels: list[Level],
    computed: Computed,
    settings: Settings,
    session: Session,
    pair: str | int,
    scale: str = "raw",
) -> View:
    """The ``view`` trait for the last of ``levels``: columns labelled by the tokens of the pair on show
    (the first pair's for the mean) or by the template's spans, the numbers as ``scale`` shows them."""
    tokens = session.labels_for(pair)
    shown_as = [SCALE_LABELS[scale]] if rescales(computed, scale) else []
    computed = scaled(computed, scale)
    first = next(iter(computed.results.values()), None)
    note = first.settings.get("note", "") if first is not None else ""
    if not computed.exact and computed.circuit is not None:
        note = "Search in progress: the set kept so far; Cancel stops it."
    elif not computed.exact:
        note = "Attribution estimate, shown while the exact values are computed. " + note
    off = disabled(computed)
    if session.says_refused is not None:  # What does it say? (and about the circuit): pw.generate's reason
        off["says"] = session.says_refused
    panels = LEVELS[computed.level.kind].panels(  # type: ignore[typeddict-item]
        computed, Display(tokens, pair, session.clean_tokens(0 if pair == "mean" else int(pair)))
    )
    if computed.exact and any(p.get("note") for p in panels):
        note = ""  # the panels say it under each of them (the lens): not once more above
    same = session.first_change()
    if same:  # by-token grids: say why the columns before the first changed token are 0
        panels = [p | {"same_before": same} if p["col_dim"] == "pos" else p for p in panels]
    return {
        **({"disabled": off} if off else {}),
        "request_id": request_id,
        "level": len(levels) - 1,
        # The level itself is the breadcrumb's last label; the title says how it was measured.
        "title": " · ".join([*([settings.direction] if "direction" not in off else []), settings.metric, *shown_as]),
        "note": note,
        "exact": computed.exact and settings.method == "exact",
        "normalized": bool(shown_as),
        "code": level_code(computed.level, settings, session, scale),
        "panels": panels,
    }


RAW_METRICS = {"logit_diff_norm": "logit difference", "logit_diff": "logit difference", "prob": "p(answer)", "kl": "KL"}


def context(session: Session, pair: str | int, top: PatchResult | None) -> Context:
    """The ``context`` trait: what is being patched, for the header. The pair on show (the first for the
    mean), its clean and corrupted tokens with the ones that differ marked, the answers, the model, and the
    clean and corrupted runs' own metric (from ``top``, the first grid: ``settings["baselines"]``).

    Example:
        >>> context(w.session, "mean", w.result)["answer"]  # doctest: +SKIP
        'Mary'
    """
    prompts, tokenizer = session.prompts, session.model.tokenizer
    i = 0 if pair == "mean" else int(pair)
    ids = {}
    for side in ("clean", "corrupt"):
        length = getattr(prompts, f"{side}_len")
        n = prompts.n_pos if length is None else int(length[i])
        ids[side] = getattr(prompts, f"{side}_ids")[i][:n].tolist()
    same = difflib.SequenceMatcher(a=ids["clean"], b=ids["corrupt"], autojunk=False).get_matching_blocks()
    kept = {"clean": {p for m in same for p in range(m.a, m.a + m.size)}}
    kept["corrupt"] = {p for m in same for p in range(m.b, m.b + m.size)}
    sides = {
        side: [{"text": t, "differs": p not in kept[side]} for p, t in enumerate(token_strings(tokenizer, ids[side]))]
        for side in ids
    }
    out: Context = {
        "model": model_name(session.model),
        "pair": i,
        "n_pairs": prompts.n_pairs,
        "clean": sides["clean"],
        "corrupt": sides["corrupt"],
        "answer": tokenizer.decode(answer_tokens(prompts, "answer", i)),
        "wrong": tokenizer.decode(answer_tokens(prompts, "wrong", i)),
        "answer_tokens": token_strings(tokenizer, answer_tokens(prompts, "answer", i)),
        "wrong_tokens": token_strings(tokenizer, answer_tokens(prompts, "wrong", i)),
    }
    baselines = top.settings.get("baselines") if top is not None else None
    if baselines:
        metric = top.settings.get("metric", "")
        out["baselines"] = {
            "metric": RAW_METRICS.get(metric, metric),
            "clean": baselines["clean"][i],
            "corrupt": baselines["corrupt"][i],
        }
    return out


def answer_tokens(prompts: Any, side: str, i: int) -> list[int]:
    """Every token of pair ``i``'s answer (``side="answer"``) or wrong answer: one, or several."""
    seqs = getattr(prompts, f"{side}_seqs")
    return [int(getattr(prompts, f"{side}_ids")[i])] if seqs is None else list(seqs[i])


def model_name(model: Any) -> str:
    """The model as a reader knows it: its hub name, a local folder's name, or the bundled model's."""
    name = str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
    if is_demo_model(name):
        return "patchwidget's demo model"
    return Path(name).name if Path(name).is_absolute() else name  # no local paths in a saved page


def breadcrumb(levels: list[Level], tokens: list[str]) -> list[Crumb]:
    """The ``breadcrumb`` trait: one label per level of the path."""
    return [{"label": level.label(tokens)} for level in levels]


def joint_box(joint: JointResult) -> JointBox:
    """The joint patch of selected cells, as the view shows it beside the grid."""
    return {
        "cells": [c.label for c in joint.cells],
        "singles": [round(float(v), 6) for v in joint.singles],
        "sum_of_singles": round(joint.sum_of_singles, 6),
        "joint": round(joint.joint, 6),
        "metric": joint.settings["metric"],
    }


def says_box(says: Any, pair: int) -> SaysBox:
    """What the model says under a patch (a ``Generation`` of the one pair ``pair``), as the view shows it."""
    return {
        "cells": [c.label for c in says.cells],
        "direction": says.direction,
        "pair": pair,
        "max_new_tokens": says.max_new_tokens,
        "clean": says.clean[0],
        "corrupt": says.corrupt[0],
        "patched": says.patched[0],
        "alone": says.alone,
    }


def png(result: PatchResult) -> str:
    """The result's figure as base64 PNG, for where no widget manager runs (GitHub, nbviewer)."""
    buf = io.BytesIO()
    result.plot(show=False).savefig(buf, format="png", dpi=90)
    return base64.b64encode(buf.getvalue()).decode()


def computed_states(
    session: Session, top: Level, settings: Settings, pair: str | int, scale: str = "raw"
) -> tuple[list[dict], dict]:
    """Every cached level reachable from ``top`` by clicks, each once, as front-end states, and the clicks
    between them.

    Each state holds a level's view and its breadcrumb label (``crumb``); the page builds
    the breadcrumb from the path it has followed. ``edges`` maps ``"state|panel|row|col"``
    to the state that click opens (an edge of a circuit is a row of its ``edges`` panel), and
    ``search_key`` of each circuit (bottleneck) found in the notebook to it, which the first
    grid's *Find circuit* of nodes or of edges (*Find bottleneck*) button opens. Levels link back
    to each other (a head, what feeds it, a sender head), so this is a walk over a graph: each
    level is visited once.

    Example:
        >>> ex = w.explorer  # doctest: +SKIP
        >>> states, edges = computed_states(w.session, ex.levels[0], ex.settings, "mean")  # doctest: +SKIP
        >>> states[0]["crumb"]  # doctest: +SKIP
        {'label': 'resid_pre'}
    """
    tokens = session.labels_for(pair)
    if (top, settings) not in session.cache:
        return [], {}
    order, ids = [top], {top: 0}
    states: list[dict] = []
    edges: dict[str, int] = {}
    for state_id, level in enumerate(order):  # grows while walked: breadth first, each level once
        computed = session.cache[(level, settings)]
        view = {**level_view(0, [level], computed, settings, session, pair, scale), "note": "", "exact": True}
        states.append({"view": view, "crumb": {"label": level.label(tokens)}})
        for key, child in _links(session, level, view, settings, state_id):
            if child not in ids:
                ids[child] = len(order)
                order.append(child)
            edges[key] = ids[child]
    for state_id, state in enumerate(states):
        _mark_saved(state["view"], edges, state_id)
    return states, edges


SAVED_PAGE = "This saved page holds what was computed in the notebook; change this there."
NOT_SAVED = "not opened in the notebook, so not in this saved page"


def _mark_saved(view: dict, edges: dict[str, int], state_id: int) -> None:
    """A saved state as the page should draw it: only the clicks it can replay open (the others say why), and
    the settings it cannot change disabled with the reason."""
    settings = dict.fromkeys(("site", "direction", "metric", "scale", "method", "pair"), SAVED_PAGE)
    view["disabled"] = {**view.get("disabled", {}), **settings}  # and why What does it say? is not (noise)
    for panel in view["panels"]:
        if not panel["clickable"]:
            continue
        panel["opens"] = [
            [f"{state_id}|{panel['id']}|{row}|{col}" in edges for col in range(len(panel["cols"]))]
            for row in range(len(panel["rows"]))
        ]
        panel["closed"] = NOT_SAVED


def _links(session: Session, level: Level, view: dict, settings: Settings, state_id: int):
    """The computed levels one click from ``level`` (shown as ``view``): (edge key, level) pairs."""
    for panel in view["panels"]:
        for row in range(len(panel["rows"]) if panel["clickable"] else 0):
            for col in range(len(panel["cols"])):
                child = session.drill(level, panel, row, col)
                if child is not None and (child, settings) in session.cache:
                    yield f"{state_id}|{panel['id']}|{row}|{col}", child
    if state_id == 0:  # the searches run in the notebook, replayed from the first grid by their buttons
        for found, kept in list(session.cache):
            if kept == settings and found.kind in SEARCH_MESSAGES:
                yield search_key(found), found


SEARCH_MESSAGES = {"circuit": "circuit", "search": "find"}  # a search level's kind -> the message its button sends


def search_key(found: Level) -> str:
    """The saved page's key of a search run in the notebook, as the page builds it from the message its button
    sends: ``"0|find|<target>"``, ``"0|circuit|<target>|<nodes or edges>"``.

    Example:
        >>> search_key(Level("circuit", target=0.9, edges=True))
        '0|circuit|0.9|edges'
    """
    key = f"0|{SEARCH_MESSAGES[found.kind]}|{found.target}"
    return key + ("|edges" if found.edges else "|nodes") if found.kind == "circuit" else key
