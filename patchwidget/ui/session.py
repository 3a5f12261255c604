"""A widget-free patching session: drill-down levels, a request queue, a worker.

The widget (and anything else that wants a live, cancellable session) drives a
``Session``: ``submit`` hands over a request and returns at once; one worker
thread computes it, reports progress, and publishes the result only if no newer
request arrived meanwhile. Computed levels are cached, so going back up the
drill-down path, or switching between mean and one prompt pair, costs nothing.

Example:
    >>> s = Session(load_model(), "The capital of France is", "The capital of Japan is",
    ...             answer="Paris", wrong="Tokyo")                      # doctest: +SKIP
    >>> s.submit(1, Level("top", site="resid_pre"))                     # doctest: +SKIP
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..circuits.edges import Edge, edge_graph
from ..circuits.faithfulness import circuit_runs
from ..circuits.generate import Generation, generate, refusal
from ..circuits.joint import JointResult, patch_sites
from ..core.cells import Cell
from ..core.engine import attention_pattern, check_batching
from ..core.metrics import DEFAULT
from ..core.remote import prepare_remote, reporting
from ..core.sites import ModelInfo, model_info
from ..data.prompts import Noise, Texts, prepare_prompts
from ..data.templates import token_strings
from ..errors import PatchwidgetError
from ..grids.dla import direct_logit_attribution
from ..grids.lens import logit_lens
from ..grids.patch import patch
from ..grids.path import path_patch
from ..grids.result import PatchResult
from ..search.bottleneck import find_bottleneck
from ..search.nodes import find_circuit
from .levels import LENS, LEVELS, Computed, Level

__all__ = ["Cancelled", "Computed", "Level", "Session", "Settings"]

SAYS_TOKENS = 5  # the new tokens "What does it say?" asks pw.generate for: a few words, quickly


class Cancelled(Exception):
    """Raised inside the worker when a request is cancelled or superseded."""


@dataclass(frozen=True)
class Settings:
    """The choices that apply to every level and are computed: direction, metric and method. How the numbers
    are shown (normalised or raw, the mean or one pair) is the widget's, from the same results (``ui.scale``)."""

    direction: str = "denoise"
    metric: str = DEFAULT
    method: str = "exact"


class Session:
    """Cached, cancellable patching for one set of prompt pairs.

    ``on_progress(request_id, done, total)``, ``on_result(request_id, computed)``,
    ``on_error(request_id, message)`` and, for remote runs,
    ``on_status(request_id, status, description)`` (each status the server
    reports, such as ``"QUEUED"``) are called from the worker thread.
    """

    def __init__(
        self,
        model: Any,
        clean: Texts,
        corrupt: Texts,
        *,
        answer: Texts,
        wrong: Texts,
        batch_size: int = 64,
        memory_budget: int | None = None,
        preview: bool = True,
        remote: bool | str = False,
        on_progress: Callable[[int, int, int], None] | None = None,
        on_result: Callable[[int, Computed], None] | None = None,
        on_error: Callable[[int, str], None] | None = None,
        on_status: Callable[[int, str, str], None] | None = None,
    ) -> None:
        prepare_remote(model, remote)
        check_batching(batch_size, memory_budget)
        self.model = model
        self.info = model_info(model)
        self.prompts = prepare_prompts(model.tokenizer, clean, corrupt, answer=answer, wrong=wrong)
        self.texts = dict(clean=clean, corrupt=corrupt, answer=answer, wrong=wrong)
        refused = refusal(corrupt)  # a noise() corruption: pw.generate has no corrupted prompt to continue
        self.says_refused = None if refused is None else str(refused)  # why "What does it say?" cannot run
        self.batch_size = batch_size
        self.memory_budget = memory_budget
        self.preview = preview
        self.remote = remote
        self.on_progress = on_progress or (lambda *a: None)
        self.on_result = on_result or (lambda *a: None)
        self.on_error = on_error or (lambda *a: None)
        self.on_status = on_status or (lambda *a: None)
        self.cache: dict[tuple[Level, Settings], Computed] = {}
        self.runs_cache: dict = {}  # the clean and corrupted runs, shared by every request
        self._latest = 0
        self._cancel = threading.Event()
        self._queue: queue.Queue[tuple[int, Level, Settings] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._worker = threading.Thread(target=self._run, name="patchwidget-session", daemon=True)
        self._worker.start()

    # --- requests -----------------------------------------------------------

    def submit(self, request_id: int, level: Level, settings: Settings) -> Computed | None:
        """Queue ``level`` for computing; returns the cached result at once if there is one.

        A newer request supersedes every older one: the older is cancelled at
        its next batch boundary and its result is dropped.
        """
        with self._lock:
            self._latest = max(self._latest, request_id)
            self._cancel.set()
            cached = self.cache.get((level, settings))
            if cached is None:
                self._cancel = threading.Event()
                self._queue.put((request_id, level, settings))
        return cached

    def cancel(self) -> None:
        """Stop the running request at its next batch boundary."""
        self._cancel.set()

    def close(self) -> None:
        self._cancel.set()
        self._queue.put(None)
        self._worker.join(timeout=10)

    @property
    def latest(self) -> int:
        return self._latest

    @property
    def labels(self) -> list[str]:
        """What the grids' columns are: the first clean prompt's tokens, or a template's spans."""
        return self.prompts.columns if self.prompts.columns is not None else self.prompts.tokens

    def labels_for(self, pair: str | int) -> list[str]:
        """The columns of the data drawn for ``pair``: that pair's own clean tokens when one pair is on show
        (pairs of one template differ in their slot words), else ``labels``."""
        if pair == "mean" or self.prompts.columns is not None:
            return self.labels
        return self.clean_tokens(int(pair))

    def first_change(self) -> int:
        """The first position where any pair's clean and corrupted prompts differ (0 for noise or spans): before
        it the two runs are the same, so patching there changes nothing, by causality."""
        p = self.prompts
        if p.noise is not None or p.columns is not None or p.clean_len is not None:
            return 0
        differs = (p.clean_ids != p.corrupt_ids).any(0).nonzero()
        return int(differs[0]) if len(differs) else 0

    def clean_tokens(self, pair: int) -> list[str]:
        """The tokens of pair ``pair``'s clean prompt, without padding."""
        length = self.prompts.n_pos if self.prompts.clean_len is None else int(self.prompts.clean_len[pair])
        return token_strings(self.model.tokenizer, self.prompts.clean_ids[pair][:length].tolist())

    def top(self, site: str) -> Level:
        """The first level of a drill-down on ``site`` (a site of ``TOP_SITES``, or ``"lens"``)."""
        return Level(LENS if site == LENS else "top", site, spans=self.prompts.columns is not None)

    # --- the worker -----------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            request_id, level, settings = item
            with self._lock:
                if request_id < self._latest:
                    continue  # superseded while waiting
                cancel = self._cancel
            try:
                with reporting(functools.partial(self._server_status, request_id, cancel)):
                    if self.preview and settings.method == "exact" and LEVELS[level.kind].preview:
                        estimate = self.compute(level, replace(settings, method="attribution"), request_id, cancel)
                        estimate.exact = False
                        self._publish(request_id, self.on_result, estimate)
                    computed = self.compute(level, settings, request_id, cancel)
            except Cancelled:
                continue
            except PatchwidgetError as err:
                self._publish(request_id, self.on_error, str(err))
                continue
            except Exception as err:  # shown in the widget rather than lost in a thread
                self._publish(request_id, self.on_error, f"{type(err).__name__}: {err}")
                continue
            self.cache[(level, settings)] = computed
            self._publish(request_id, self.on_result, computed)

    def _server_status(self, request_id: int, cancel: threading.Event, status: str, description: str) -> None:
        if cancel.is_set():  # stop waiting for the server, even while the job is queued there
            raise Cancelled
        self._publish(request_id, self.on_status, status, description)

    def _publish(self, request_id: int, callback: Callable[..., None], *payload: Any) -> None:
        if request_id >= self._latest:
            callback(request_id, *payload)

    def compute(
        self, level: Level, settings: Settings, request_id: int = 0, cancel: threading.Event | None = None
    ) -> Computed:
        """Compute one level synchronously (the worker calls this)."""
        if level.kind not in LEVELS:
            raise PatchwidgetError(f"unknown level kind {level.kind!r}; known: {', '.join(LEVELS)}")

        def progress(done: int, total: int) -> None:
            if cancel is not None and cancel.is_set():
                raise Cancelled
            self.on_progress(request_id, done, total)

        def show(partial: Computed) -> None:  # a level's result so far, while it computes on
            if cancel is not None and cancel.is_set():
                raise Cancelled
            self._publish(request_id, self.on_result, partial)

        return LEVELS[level.kind].compute(level, _Patcher(self, settings, progress, show))

    def drill(self, level: Level, panel: dict | str, row: int, col: int) -> Level | None:
        """The level a click on (row, col) of ``panel`` (a panel of the view, or its id) opens, or None if it opens
        nothing. A panel whose rows carry data (the edges of a circuit) is given whole."""
        panel = panel if isinstance(panel, dict) else {"id": panel}
        return LEVELS[level.kind].opens(level, panel, row, col, self.info)

    def cell(self, level: Level, panel: dict, row: int, col: int) -> Cell | None:
        """The patchable site under (row, col) of ``panel`` (a panel of the view), for joint patching.

        Levels name a position by its column index; with prompts made from a template the
        Cell names it by the span's label, which is what ``patch_sites`` takes.
        """
        cell = LEVELS[level.kind].cell(level, panel, row, col, self.info)
        if cell is not None and self.prompts.columns is not None and isinstance(cell.pos, int):
            cell = replace(cell, pos=self.prompts.columns[cell.pos])
        return cell


@dataclass
class _Patcher:
    """The session's model, prompts and settings, as a level's ``compute`` uses them (``levels.Patcher``)."""

    session: Session
    settings: Settings
    progress: Callable[[int, int], None]
    show: Callable[[Computed], None] = lambda partial: None

    @property
    def info(self) -> ModelInfo:
        return self.session.info

    def _common(self) -> dict[str, Any]:
        s = self.session
        return dict(
            **s.texts,
            metric=self.settings.metric,
            direction=self.settings.direction,
            batch_size=s.batch_size,
            memory_budget=s.memory_budget,
            progress=self.progress,
            remote=s.remote,
        )

    @property
    def pattern_patchable(self) -> bool:
        return self.session.prompts.aligned_one_to_one

    def run(self, site: str, within: int | None = None, **kwargs: Any) -> PatchResult:
        s = self.session
        if within is not None:  # a level names a span by its column; patch takes its label
            kwargs["within"] = s.prompts.columns[within]
        return patch(
            s.model, site=site, method=self.settings.method, runs_cache=s.runs_cache, **self._common(), **kwargs
        )

    def joint(self, cells: list[Cell]) -> JointResult:
        return patch_sites(self.session.model, cells=cells, **self._common())

    def generate(self, cells: list[Cell], pair: int, alone: bool = False) -> Generation:
        """What pair ``pair``'s runs say, ``SAYS_TOKENS`` new tokens, with ``cells`` patched, or (``alone``)
        run on their own as MIB's m(C) runs a circuit (``pw.generate``)."""
        s = self.session
        return generate(
            s.model,
            one_pair(s.texts["clean"], pair),
            one_pair(s.texts["corrupt"], pair),
            cells=cells,
            direction=None if alone else self.settings.direction,
            max_new_tokens=SAYS_TOKENS,
            alone=alone,
            remote=s.remote,
            progress=self.progress,
        )

    def path(self, receivers: str | list[Cell]) -> PatchResult:
        s = self.session
        return path_patch(s.model, receivers=receivers, runs_cache=s.runs_cache, **self._common())

    def find(self, target: float, on_level: Callable[[Any], None]) -> Any:
        s = self.session
        return find_bottleneck(s.model, target=target, method=self.settings.method, on_level=on_level, **self._common())

    def find_circuit(self, target: float, level: str = "nodes") -> Any:
        """``find_circuit`` of nodes or of ``level="edges"`` (ranked exactly, or by EAP-IG for the widget's
        attribution method)."""
        s = self.session
        common = self._common()
        del common["direction"]  # a circuit is always the clean run with everything outside it corrupted
        return find_circuit(s.model, target=target, level=level, method=self.settings.method, **common)

    def edge_score(self, edge: Edge) -> dict:
        """One edge's exact score, as ``pw.edge_scores(method="exact")`` gives it: the mean over pairs of m(every
        edge but this one) - m(every edge), in the session's metric; one pass over the pairs, after the
        clean and corrupted runs (cached). With both means, the metric, the number of pairs and the model's shape."""
        s = self.session
        common = self._common()
        del common["direction"]  # the clean run, the edge alone carrying its sender's corrupted output
        runs = circuit_runs(s.model, **common, ablation="patch", runs_cache=s.runs_cache, circuits=[[edge]])
        rest = [e for e in edge_graph(s.model) if e != edge]
        without, full = float(runs.measure_edges([rest], self.progress)[0].mean()), float(runs.clean.mean())
        about = {"metric": self.settings.metric, "n_pairs": runs.n_pairs, "shape": self.info.shape()}
        return {"score": without - full, "without": without, "full": full, **about}

    def lens(self) -> dict[str, PatchResult]:
        """The logit lens and direct logit attribution of the clean prompts, in logit differences (the
        normalised view shows them as shares of the model's own: ``ui.scale.share``)."""
        s = self.session
        texts = dict(answer=s.texts["answer"], wrong=s.texts["wrong"])
        return {
            "logit_lens": logit_lens(s.model, s.texts["clean"], **texts),
            "dla": direct_logit_attribution(s.model, s.texts["clean"], **texts),
        }

    def pattern(self, layer: int, head: int) -> list[np.ndarray]:
        """The head's attention on each pair's clean prompt (one small trace each), so it follows the pair shown."""
        s = self.session
        return [attention_pattern(s.model, text, layer, head, s.remote) for text in s.prompts.clean]


def one_pair(texts: Any, pair: int) -> Any:
    """Pair ``pair``'s entry of prompts as the session was given them: a list's entry, else the one prompt (or
    noise) every pair shares.

    Example:
        >>> one_pair(["a b", "c d"], 1), one_pair("a b", 1)
        ('c d', 'a b')
    """
    if isinstance(texts, str | Noise) or not isinstance(texts, Sequence):
        return texts
    return texts[pair]
