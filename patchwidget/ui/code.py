"""The code that reproduces a level of the widget: what *Copy code* gives.

A level's ``compute`` (in ``levels.LEVELS``) asks a ``Patcher`` for its results; here a
``Recorder`` stands in for the session's patcher and writes each request down as the
public call that makes it (``pw.patch``, ``pw.path_patch``, ``pw.patch_sites``,
``pw.find_circuit``, ``pw.find_bottleneck``, ``pw.edge_scores``, ``pw.attention_pattern``), with the session's
prompts and settings. So every level, and every level added to the table later, has its
code with no code of its own, and the code is what the widget ran.

Example:
    >>> print(level_code(Level("top", site="mlp_out"), Settings(), w.session))  # doctest: +SKIP
    import patchwidget as pw
    ...
    mlp_out = pw.patch(model, **prompts, site='mlp_out', metric='logit_diff', direction='denoise')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.cells import Cell
from ..data.models import is_demo_model
from ..data.templates import Prompt
from .levels import LEVELS, Level

if TYPE_CHECKING:
    from .session import Session, Settings


def literal(value: Any) -> str:
    """Python source for a prompt argument: a string, a template's prompt, or a list of them."""
    if isinstance(value, Prompt):
        slots = ", ".join(f"{k}={v!r}" for k, v in value.values)
        return f"pw.Template({value.template.text!r}).fill({slots})"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    if isinstance(value, str):
        return repr(value)
    raise TypeError(f"no literal for {type(value).__name__}")


def cell_literal(cell: Cell) -> str:
    """``pw.Cell(...)`` source for a cell."""
    args = [repr(cell.site)] + ([] if cell.layer is None else [str(cell.layer)])
    args += [f"{k}={getattr(cell, k)!r}" for k in ("head", "neuron", "pos") if getattr(cell, k) is not None]
    return f"pw.Cell({', '.join(args)})"


def preamble(session: Session) -> list[str]:
    """Loading the model and the prompts, as the session has them."""
    name = str(getattr(session.model.config, "_name_or_path", "") or "")
    if is_demo_model(name):
        load = "model = pw.load_model()  # the bundled demo model"
    elif name and not Path(name).is_absolute():
        load = f"model = pw.load_model({name!r})"
    else:
        load = "model = ...  # the model you passed to pw.explore"
    lines = ["import patchwidget as pw", "", load]
    try:
        items = [f"{k}={literal(v)}" for k, v in session.texts.items()]
        lines.append("prompts = dict(" + ", ".join(items) + ")")
    except TypeError:  # noise as the corruption, or prompts of another kind: the user has them
        lines.append("prompts = dict(clean=..., corrupt=..., answer=..., wrong=...)  # as you passed them")
    return lines


@dataclass
class Recorder:
    """A ``levels.Patcher`` that computes nothing and writes down each call as code."""

    session: Session
    settings: Settings
    lines: list[str] = field(default_factory=list)
    results: list[str] = field(default_factory=list)  # the names the code gives the results it computes

    @property
    def info(self) -> Any:
        return self.session.info

    @property
    def pattern_patchable(self) -> bool:
        return self.session.prompts.aligned_one_to_one

    def _settings(self, *, direction: bool = True, method: bool = True, metric: str | None = None) -> str:
        s = self.settings
        out = ([f"method={s.method!r}"] if method else []) + [f"metric={metric or s.metric!r}"]
        return ", ".join(out + ([f"direction={s.direction!r}"] if direction else []))

    def _call(self, name: str, fn: str, *args: str, **options: Any) -> None:
        self.lines.append(f"{name} = pw.{fn}(model, **prompts, {', '.join([*args, self._settings(**options)])})")
        self.results.append(name)

    def run(self, site: str, within: int | None = None, **kwargs: Any) -> None:
        args = [f"site={site!r}"] + [f"{k}={v!r}" for k, v in kwargs.items() if v is not None]
        if within is not None:
            args.append(f"within={self.session.prompts.columns[within]!r}")
        self._call(site, "patch", *args)

    def joint(self, cells: list[Cell]) -> None:
        self._call("joint", "patch_sites", f"cells=[{', '.join(cell_literal(c) for c in cells)}]", method=False)

    def path(self, receivers: str | list[Cell]) -> None:
        if isinstance(receivers, str):
            self._call(receivers, "path_patch", f"receivers={receivers!r}", method=False)
        else:
            cells = ", ".join(cell_literal(c) for c in receivers)
            self._call(receivers[0].site, "path_patch", f"receivers=[{cells}]", method=False)

    def find(self, target: float, on_level: Any) -> None:
        self._call("bottleneck", "find_bottleneck", f"target={target!r}")

    def find_circuit(self, target: float, level: str = "nodes") -> None:
        edges = [f"level={level!r}"] if level != "nodes" else []
        self._call("circuit", "find_circuit", f"target={target!r}", *edges, direction=False)

    def edge_score(self, edge: Any) -> None:
        """One edge's exact score: what ``pw.edge_scores(method="exact")`` gives it (every edge's, here)."""
        metric = f"metric={self.settings.metric!r}"
        self.lines.append(f"scores = pw.edge_scores(model, **prompts, method='exact', {metric})")
        sender, receiver = cell_literal(edge.sender), cell_literal(edge.receiver)
        self.lines.append(f"edge_score = scores.score(pw.Edge({sender}, {receiver}))")

    def pattern(self, layer: int, head: int) -> None:
        one = isinstance(self.session.texts["clean"], str | Prompt)
        texts = "[prompts['clean']]" if one else "prompts['clean']"
        self.lines.append(f"patterns = [pw.attention_pattern(model, str(c), {layer}, {head}) for c in {texts}]")

    def lens(self) -> dict:
        args = "prompts['clean'], answer=prompts['answer'], wrong=prompts['wrong']"
        self.lines.append(f"logit_lens = pw.logit_lens(model, {args})")
        self.lines.append(f"dla = pw.direct_logit_attribution(model, {args})")
        self.results += ["logit_lens", "dla"]
        return {}

    def show(self, partial: Any) -> None:
        pass


SCALE_NOTES = {
    "pair": "# as the widget shows them, normalised: each pair's clean run 1, its corrupted run 0",
    "share": "# as the widget shows them, shares of each prompt's own logit difference (its corrupted baseline is 0);"
    " the MLP column too: dla.settings['mlp'] / dla.clean_baseline[:, None]",
}


def level_code(level: Level, settings: Settings, session: Session, scale: str = "raw") -> str:
    """The Python that computes ``level`` as the widget did, from loading the model on; under the normalised
    view (``scale``, a display setting) a last comment says how the widget rescaled what it computed."""
    recorder = Recorder(session, settings)
    LEVELS[level.kind].compute(level, recorder)  # type: ignore[arg-type]
    how = LEVELS[level.kind].scale if scale == "normalized" else None
    shown = [SCALE_NOTES[how], *(f"{name} = {name}.normalized()" for name in recorder.results)] if how else []
    return "\n".join([*preamble(session), "", *recorder.lines, *shown]) + "\n"
