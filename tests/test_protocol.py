"""The widget protocol: what Python really sends has the keys ``protocol`` names, and the
JavaScript tests run on exactly that (``js/tests/fixtures/contract.json``).

Refresh the fixture after a deliberate protocol change with
``.venv/bin/python -m tests.test_protocol``; the JavaScript contract test
(``js/tests/contract.test.js``) then runs on the new one.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest

import patchwidget as pw
from patchwidget.ui import protocol
from patchwidget.ui.levels import Level

FIXTURE = Path(__file__).resolve().parent.parent / "js" / "tests" / "fixtures" / "contract.json"
JS_PROTOCOL = FIXTURE.parents[2] / "src" / "protocol.js"  # the fingerprint the bundle carries (patchwidget doctor)
TRAITS = ("view", "controls", "status", "breadcrumb", "vmax", "selection")


def produce() -> dict:
    """The traits of a real widget at the top level, after a drill-down, at one head (its attention pattern) and on
    a circuit of edges (its diagram and its edges), of one whose corruption is noise() (what it cannot generate
    under), and the message kinds."""
    model = pw.load_model()
    widget = pw.explore(model, "The capital of France is", "The capital of Japan is", answer="Paris", wrong="Tokyo")
    top = {name: getattr(widget, name) for name in TRAITS}
    drilled = show_drilled(widget, ("resid_pre", 2, 4))
    head = show_drilled(widget, ("head_out", 1, 4))
    widget.explorer.levels = widget.explorer.levels[:1]  # a search is of the whole model, from the first grid
    edges = show_level(widget, Level("circuit", target=0.9, edges=True))
    widget.close()
    noisy = pw.explore(model, "The capital of France is", pw.noise("France"), answer="Paris", wrong="Tokyo")
    noise = {name: getattr(noisy, name) for name in TRAITS}
    noisy.close()
    messages = {k: list(v) for k, v in protocol.MESSAGES.items()}
    return {"top": top, "drilled": drilled, "head": head, "edges": edges, "noise": noise, "messages": messages}


def show_drilled(widget, cell: tuple[str, int, int]) -> dict:
    """The widget's traits once the (panel, row, col) ``cell`` of the level on show is opened."""
    return show_level(widget, widget.session.drill(widget.explorer.levels[-1], *cell))


def show_level(widget, child: Level) -> dict:
    """The widget's traits once ``child`` is computed and on show below the level on show."""
    computed = widget.session.compute(child, widget.explorer.settings)
    widget.session.cache[(child, widget.explorer.settings)] = computed
    widget.explorer.levels = [*widget.explorer.levels, child]
    widget.explorer.show(len(widget.explorer.levels) - 1, computed)
    return {name: getattr(widget, name) for name in TRAITS}


def _required(typed: type) -> set[str]:
    return set(typed.__required_keys__)


def _check(value: dict, typed: type) -> None:
    hints = typing.get_type_hints(typed)
    assert _required(typed) <= set(value), f"{typed.__name__} lacks {_required(typed) - set(value)}"
    assert set(value) <= set(hints), f"{typed.__name__} has keys the protocol does not name: {set(value) - set(hints)}"


@pytest.fixture(scope="module")
def produced():
    return produce()


def test_traits_have_the_keys_the_protocol_names(produced):
    for state in (produced["top"], produced["drilled"], produced["head"], produced["edges"], produced["noise"]):
        _check(state["view"], protocol.View)
        for panel in state["view"]["panels"]:
            _check(panel, protocol.Panel)
        _check(state["controls"], protocol.Controls)
        for choice in state["controls"]["directions"] + state["controls"]["metrics"] + state["controls"]["methods"]:
            _check(choice, protocol.Choice)
        _check(state["status"], protocol.Status)
        for crumb in state["breadcrumb"]:
            _check(crumb, protocol.Crumb)
    assert produced["drilled"]["view"]["level"] == 1
    assert [p["id"] for p in produced["head"]["view"]["panels"]] == ["components", "pattern"]
    assert [p["id"] for p in produced["edges"]["view"]["panels"]] == ["circuit", "edges", "curve"]


def test_the_javascript_tests_run_on_what_python_sends(produced):
    """Fails when the protocol changed and the JavaScript fixture was not refreshed with it."""
    saved = json.loads(FIXTURE.read_text())
    assert saved.keys() == produced.keys()
    assert _same(saved, json.loads(json.dumps(produced))), f"{FIXTURE} is stale: see this module's docstring"


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-4
    return a == b


def test_every_message_the_front_end_sends_is_accepted(demo):
    widget = pw.explore(demo, "The capital of France is", "The capital of Japan is", answer="Paris", wrong="Tokyo")
    examples = {
        "drill": {"panel": "resid_pre", "row": 1, "col": 4},
        "back": {"level": 0},
        "set": {"key": "direction", "value": "noise"},
        "joint": {"cells": [{"panel": "resid_pre", "row": 0, "col": 3}]},
        "keep": {"cells": [{"panel": "resid_pre", "row": 0, "col": 3}]},
        "says": {"cells": [{"panel": "resid_pre", "row": 0, "col": 3}]},
        "find": {"target": 0.8},
        "circuit": {"target": 0.9, "level": "edges"},
        "cancel": {},
    }
    assert examples.keys() == protocol.MESSAGES.keys()
    for request_id, (kind, body) in enumerate(examples.items(), start=1):
        assert set(body) == set(protocol.MESSAGES[kind])
        widget._handle({"type": kind, "request_id": request_id, **body})
        assert widget.status["state"] != "error", (kind, widget.status)
    widget.close()


def protocol_js() -> str:
    return (
        "// Written by `python -m tests.test_protocol` from patchwidget/ui/protocol.py: the protocol this front end\n"
        "// speaks. The bundle carries it, so `patchwidget doctor` can tell a bundle built for another protocol.\n"
        f'export const PROTOCOL = "{protocol.fingerprint()}";\n'
    )


def test_the_front_end_carries_this_protocols_fingerprint():
    """Fails when the protocol changed and js/src/protocol.js was not written again with it."""
    assert JS_PROTOCOL.read_text() == protocol_js(), f"{JS_PROTOCOL} is stale: see this module's docstring"


if __name__ == "__main__":
    FIXTURE.write_text(json.dumps(produce(), indent=1, sort_keys=True) + "\n")
    JS_PROTOCOL.write_text(protocol_js())
    print(f"wrote {FIXTURE} and {JS_PROTOCOL}")


def test_every_message_of_the_protocol_has_its_handler_and_no_other():
    """The widget dispatches by protocol.MESSAGES to its explorer's do_<type> (issue 38, item 4: a dispatch
    table, not if/elif)."""
    from patchwidget.ui.explorer import Explorer

    handlers = {name.removeprefix("do_") for name in dir(Explorer) if name.startswith("do_")}
    assert handlers == set(protocol.MESSAGES)
