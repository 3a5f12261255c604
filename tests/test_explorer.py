"""The explorer without a widget: messages in, ``publish(**traits)`` calls out, on a real session."""

from __future__ import annotations

import ast
import threading
from pathlib import Path

import pytest

from patchwidget.errors import MessageError
from patchwidget.ui import explorer as explorer_module
from patchwidget.ui import session as session_module
from patchwidget.ui.explorer import Explorer

from .test_widget import TEXTS, wait_for

SHOW_ORDER = ["view", "breadcrumb", "controls", "context", "status", "path", "results", "result"]


class Owner:
    """What a widget would do with ``publish``: keep the latest value of each trait, and every call in order."""

    def __init__(self) -> None:
        self.traits: dict = {}
        self.calls: list[dict] = []
        self.lock = threading.Lock()  # publish is called from the worker thread too

    def publish(self, **traits) -> None:
        with self.lock:
            self.calls.append(traits)
            self.traits.update(traits)

    def wait_status(self, request_id: int, state: str, timeout: float = 60) -> dict:
        wait_for(
            lambda: self.traits["status"].get("request_id") == request_id and self.traits["status"]["state"] == state,
            timeout,
            f"status {state!r} of request {request_id}",
        )
        return self.traits["status"]


@pytest.fixture
def owned(demo):
    owner = Owner()
    ex = Explorer(demo, **TEXTS, publish=owner.publish, preview=False)
    yield ex, owner
    ex.close()


def test_the_module_needs_no_widget():
    tree = ast.parse(Path(explorer_module.__file__).read_text(encoding="utf-8"))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"anywidget", "traitlets", "ipywidgets"}, imported


def test_the_first_grid_is_published_whole_status_after_what_it_describes(owned):
    ex, owner = owned
    *progress, shown = owner.calls  # the first grid is computed on this thread, its progress published as it goes
    assert progress and all(list(c) == ["status"] and c["status"]["state"] == "running" for c in progress)
    assert list(shown) == SHOW_ORDER
    assert owner.traits["breadcrumb"] == [{"label": "resid_pre"}] and owner.traits["status"]["state"] == "idle"
    assert owner.traits["result"].dims == ("layer", "pos")
    assert all(ex.shown[name] is owner.traits[name] for name in SHOW_ORDER)


def test_a_drill_publishes_a_new_breadcrumb(owned):
    ex, owner = owned
    seen = len(owner.calls)
    ex.do_drill(1, {"panel": "resid_pre", "row": 2, "col": 9})
    assert owner.calls[seen] == {"status": {"state": "running", "request_id": 1, "done": 0, "total": 0, "message": ""}}
    owner.wait_status(1, "idle")
    assert owner.traits["breadcrumb"] == [{"label": "resid_pre"}, {"label": "L2 heads"}]
    assert [p["kind"] for p in owner.traits["path"]] == ["top", "heads"] and len(ex.levels) == 2
    assert ex.pending == {}
    ex.do_back(2, {"level": 0})  # cached: published before do_back returns
    assert owner.traits["breadcrumb"] == [{"label": "resid_pre"}] and owner.traits["view"]["request_id"] == 2


def test_a_stale_result_is_not_published(owned):
    ex, owner = owned
    child = ex.session.drill(ex.levels[0], "resid_pre", 1, 9)
    late = ex.session.compute(child, ex.settings)
    ex.do_drill(1, {"panel": "resid_pre", "row": 1, "col": 9})
    ex.do_back(2, {"level": 0})  # supersedes request 1
    seen = len(owner.calls)
    ex.on_result(1, late)  # request 1's level, arriving after request 2 was answered
    assert len(owner.calls) == seen
    assert owner.traits["breadcrumb"] == [{"label": "resid_pre"}] and ex.levels == [ex.session.top("resid_pre")]


def test_errors_publish_an_error_status(owned, monkeypatch):
    ex, owner = owned
    before = list(owner.calls)
    with pytest.raises(MessageError, match="unknown panel 'nope'"):  # the owner turns it into a status
        ex.do_drill(1, {"panel": "nope", "row": 0, "col": 0})
    assert owner.calls == before and ex.pending == {}

    def explode(*args, **kwargs):
        raise RuntimeError("the model fell over")

    monkeypatch.setattr(ex.session, "compute", explode)
    ex.do_drill(2, {"panel": "resid_pre", "row": 0, "col": 0})
    status = owner.wait_status(2, "error")
    assert status["message"] == "RuntimeError: the model fell over" and 2 not in ex.pending
    assert owner.traits["breadcrumb"] == [{"label": "resid_pre"}]  # the view on show stays


def test_a_pair_choice_and_a_keep_publish_at_once(owned):
    ex, owner = owned
    ex.do_set(1, {"key": "pair", "value": 1})
    assert owner.traits["controls"]["pair"] == 1 and owner.traits["context"]["pair"] == 1
    assert owner.traits["status"] == {"state": "idle", "request_id": 1, "done": 0, "total": 0, "message": ""}
    ex.do_keep(2, {"cells": [{"panel": "resid_pre", "row": 0, "col": 9}, {"panel": "resid_pre", "row": 0, "col": 9}]})
    assert list(owner.calls[-1]) == ["circuit", "status"]
    assert len(owner.traits["circuit"].cells) == 1 and owner.traits["circuit"].provenance["kept_from"] == "resid_pre"
    assert owner.traits["status"]["message"] == "kept 1 cell as widget.circuit"


def test_cancel_stops_a_generation_between_passes(owned, monkeypatch):
    """Cancel reaches pw.generate at its next forward pass (its progress): no box, and the next ask works."""
    ex, owner = owned
    started, release, passes = threading.Event(), threading.Event(), []
    real = session_module.generate

    def held(*args, progress, **kwargs):
        def report(done, total):
            passes.append(done)
            started.set()
            release.wait(30)  # the first pass done: held here until the test has cancelled
            progress(done, total)

        return real(*args, progress=report, **kwargs)

    monkeypatch.setattr(session_module, "generate", held)
    cells = {"cells": [{"panel": "resid_pre", "row": 3, "col": 13}]}
    ex.do_says(1, cells)
    assert started.wait(60)
    ex.do_cancel(1, {})
    release.set()
    assert owner.traits["status"]["state"] == "cancelled" and ex.pending == {}
    ex.session.close()  # waits for the worker: the generation has stopped
    assert passes == [1] and "says" not in owner.traits["view"]


def test_a_generation_is_published_beside_the_view(owned, monkeypatch):
    ex, owner = owned
    ex.do_says(1, {"cells": [{"panel": "resid_pre", "row": 3, "col": 13}]})
    owner.wait_status(1, "idle")
    assert list(owner.calls[-1]) == ["view", "status"] and owner.traits["view"]["request_id"] == 1
    assert owner.traits["view"]["says"]["cells"] == ["resid_pre L3 @13"] and owner.traits["view"]["panels"]
