"""The widget protocol: the synced traits and the messages between Python and the front end.

Written down once, here, as typed dicts; ``js/README.md`` describes the same
protocol for the JavaScript side, and ``tests/test_protocol.py`` checks that
what Python really sends has these keys and that the fixture the JavaScript
tests load (``js/tests/contract.json``) is what Python produces today.

Traits (Python -> front end): ``view``, ``controls``, ``status``,
``breadcrumb``, ``context``, ``vmax``; ``selection`` is written by the front end.
Messages (front end -> Python): ``drill``, ``back``, ``set``, ``joint``,
``keep``, ``says``, ``find``, ``circuit``, ``cancel``; each carries the ``request_id`` of the request it makes (or, for
``cancel``, the request it cancels), and every reply in ``view`` and
``status`` echoes it.

Example:
    >>> sorted(MESSAGES)
    ['back', 'cancel', 'circuit', 'drill', 'find', 'joint', 'keep', 'says', 'set']
"""

from __future__ import annotations

import hashlib
import json
import typing
from typing import Literal, TypedDict


class Panel(TypedDict, total=False):
    """One grid of a view."""

    id: str
    title: str
    row_dim: str
    col_dim: str
    rows: list[str]
    cols: list[str]
    values: list[list[float | None]]  # None: no value (NaN or infinite)
    clickable: bool
    diverging: bool
    spread: list[list[float | None]]  # only for the mean of several pairs
    flips: list[list[int]]
    keys: list[int]  # the unit index of each row, where rows are not in index order (top neurons)
    kind: Literal["grid", "nodes", "curve", "table", "edges"]  # how it is drawn; absent: "grid"; "table": numbers
    # only; "edges": one row per edge of a circuit, drawn as lines over the panel ``on`` names (the diagram)
    note: str  # a sentence under the panel
    absent: list[list[bool]]  # "nodes": cells where no node is (drawn empty, not focusable)
    missing: str  # "nodes": what a cell without a value means (a node outside the circuit)
    kept: list[list[bool]]  # "nodes": cells of the circuit that have no value (a circuit of edges: the nodes they join)
    kept_note: str  # "nodes": what a kept cell without a value means
    on: str  # "edges": the id of the panel the edges are drawn over
    ends: list[list[list[int]]]  # "edges": per edge, the (row, col) of its sender's node and its receiver's there
    receivers: list[str]  # "edges": per edge, its receiver's site (head_q, head_k, head_v, mlp_in, logits)
    edges: list[list[dict]]  # "edges": per edge, its sender's and receiver's Cell fields (site, layer, head)
    tips: list[list[str]]  # "edges": per edge, more lines for its tooltip (where a key-value head is drawn)
    opens_to: list[str]  # "edges": per edge, what a click on it opens, in words
    mark_cell: list[int]  # the (row, col) of a cell to mark (a clicked edge's sender in path patching into it)
    opens: list[
        list[bool]
    ]  # whether a click on the cell opens a narrower level (absent: every cell of a clickable panel)
    closed: str  # why a cell of a clickable panel opens nothing (the saved page: not computed in the notebook)
    says_refused: str  # why pw.generate refuses this panel's cells (the attention pattern): What does it say? says it
    same_before: int  # by-token grids: columns before this token are 0 by causality (the runs agree there)
    mark_col: int  # the column of the token the level was opened at
    x: list[float]  # "curve": the x value of each column (circuit size in %, drawn on a log axis)
    target: float | None  # "curve": the target, drawn as a line


class JointBox(TypedDict):
    """Cells patched together: their single effects, the sum of those, and the joint effect."""

    cells: list[str]
    singles: list[float]
    sum_of_singles: float
    joint: float
    metric: str


class SaysBox(TypedDict):
    """What the model says under a patch (``pw.generate``) for one pair: its greedy continuations, as text."""

    cells: list[str]  # the patched cells' labels
    direction: str  # "denoise": the cells take the clean run's values in the corrupted run; "noise": the reverse
    pair: int  # the pair whose prompts were continued (the first for the mean)
    max_new_tokens: int
    clean: str  # the new text only, the prompt not included
    corrupt: str
    patched: str
    alone: bool  # the cells are a circuit run on its own (MIB's m(C)): every other node took corrupted values


class View(TypedDict, total=False):
    """The ``view`` trait: the level on show."""

    request_id: int
    level: int  # depth in the drill-down path, 0 at the top
    title: str
    note: str
    exact: bool  # False while an attribution preview is on show
    normalized: bool  # the numbers are on the normalised scale (clean 1, corrupted 0): colours then span ±1
    panels: list[Panel]
    joint: JointBox
    says: SaysBox  # what the model says under the patch of selected cells or of the circuit on show
    circuit_cells: int  # the level on show found a circuit of this many cells (widget.circuit): it can be asked
    disabled: dict[str, str]  # controls that do not apply to this level, each with the reason ("says": What does
    # it say? and What does the circuit say?, where pw.generate refuses the explorer's prompts: a noise() corruption)
    code: str  # the Python that computes this level as the widget did (Copy code)


class Choice(TypedDict):
    """One option of a control: the value sent back, the label shown."""

    value: str
    label: str


class SiteChoice(TypedDict):
    """One site tab."""

    name: str
    group: Literal["residual", "attention", "mlp", "lens"]
    label: str


class Controls(TypedDict):
    """The ``controls`` trait: every choice the page offers, and the current ones."""

    site: str
    sites: list[SiteChoice]
    direction: str
    directions: list[Choice]
    metric: str
    metrics: list[Choice]
    scale: str  # "normalized" (clean 1, corrupted 0) or "raw": how the numbers are shown, not computed
    scales: list[Choice]
    method: str
    methods: list[Choice]
    pair: str | int  # "mean" or a pair index
    n_pairs: int
    target: float  # the default share of the effect "Find circuit" looks for
    circuit_levels: list[Choice]  # what "Find circuit" finds: nodes or edges (find_circuit's level)


class Token(TypedDict):
    """One token of a prompt, as the header shows it."""

    text: str
    differs: bool  # not in the other prompt of the pair (what the corruption changed)


class Baselines(TypedDict):
    """The clean and corrupted runs' own metric (before any rescaling), for the pair on show."""

    metric: str  # in words: "logit difference", "p(answer)", ...
    clean: float | None
    corrupt: float | None


class Context(TypedDict, total=False):
    """The ``context`` trait: what is being patched, for the header above the grid."""

    model: str
    pair: int  # the pair on show (the first one for the mean)
    n_pairs: int
    clean: list[Token]
    corrupt: list[Token]
    answer: str
    wrong: str
    answer_tokens: list[str]  # the answer's tokens as text (one or several), shown on hover of the answer
    wrong_tokens: list[str]
    baselines: Baselines


class Server(TypedDict):
    """A remote job's status, as NDIF reports it."""

    status: str  # as NDIF reports it: RECEIVED, QUEUED, RUNNING, ...
    description: str


class Status(TypedDict, total=False):
    """The ``status`` trait: what the kernel is doing for which request."""

    state: Literal["idle", "running", "error", "cancelled"]
    request_id: int
    done: int
    total: int
    message: str
    server: Server


class Crumb(TypedDict):
    """One level of the breadcrumb."""

    label: str


# Messages from the front end: type -> the keys it carries besides "type" and "request_id".
MESSAGES: dict[str, tuple[str, ...]] = {
    "drill": ("panel", "row", "col"),  # open the narrower sites under a cell
    "back": ("level",),  # return to a level of the breadcrumb
    "set": ("key", "value"),  # change site, direction, metric, scale, method or pair
    "joint": ("cells",),  # patch these {panel, row, col} cells together
    "keep": ("cells",),  # keep these {panel, row, col} cells as widget.circuit
    # what the model says (pw.generate) with these {panel, row, col} cells patched, or "circuit": the circuit
    # the level on show found; for the pair on show (the first for the mean)
    "says": ("cells",),
    "find": ("target",),  # search for a bottleneck restoring this share of the effect (find_bottleneck)
    "circuit": ("target", "level"),  # find the circuit (of "nodes" or "edges") doing this share of the task on its
    # own (find_circuit)
    "cancel": (),  # stop the request with this request_id
}


def fingerprint() -> str:
    """A short name for this protocol: the message kinds and the keys of every type above. The front-end
    bundle carries the one it was built for (``js/src/protocol.js``), so ``patchwidget doctor`` can tell a
    bundle that would misread what Python sends.

    Example:
        >>> len(fingerprint())
        12
    """
    types = {
        name: sorted(typing.get_type_hints(value))
        for name, value in sorted(globals().items())
        if isinstance(value, type) and typing.is_typeddict(value)
    }
    text = json.dumps({"messages": MESSAGES, "types": types}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
