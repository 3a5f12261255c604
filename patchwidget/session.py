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
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .circuits import Cell, JointResult, patch_sites
from .engine import attention_pattern, check_batching, patch
from .prompts import Texts, prepare_prompts
from .remote import prepare_remote, reporting
from .result import PatchResult
from .sites import PatchwidgetError, model_info

TOP_SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "head_out")
N_TOP_NEURONS = 20


class Cancelled(Exception):
    """Raised inside the worker when a request is cancelled or superseded."""


@dataclass(frozen=True)
class Level:
    """One level of the drill-down path: what to compute.

    ``kind`` is ``"top"`` (a site over layers and tokens), ``"heads"`` (the
    heads of one layer by token), ``"head"`` (one head's q/k/v/output and its
    attention pattern) or ``"neurons"`` (the top MLP neurons at one token).
    """

    kind: str
    site: str = "resid_pre"
    layer: int | None = None
    head: int | None = None
    pos: int | None = None
    cells: tuple[Cell, ...] = ()  # for kind "joint": the cells patched together

    def label(self, tokens: list[str]) -> str:
        if self.kind == "top":
            return self.site
        if self.kind == "heads":
            return f"L{self.layer} heads"
        if self.kind == "head":
            return f"L{self.layer} H{self.head}"
        if self.kind == "joint":
            return f"{len(self.cells)} cells together"
        return f"L{self.layer} neurons at {tokens[self.pos]!r}"


@dataclass(frozen=True)
class Settings:
    direction: str = "denoise"
    metric: str = "logit_diff_norm"
    method: str = "exact"


@dataclass
class Computed:
    """The results of one level: named panels, each a PatchResult or a pattern."""

    level: Level
    results: dict[str, PatchResult]
    pattern: np.ndarray | None = None  # (query, key) attention of the clean run
    joint: JointResult | None = None
    exact: bool = True  # False for an attribution preview that exact values will replace


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
                    if self.preview and settings.method == "exact" and level.kind in ("top", "heads"):
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

        def progress(done: int, total: int) -> None:
            if cancel is not None and cancel.is_set():
                raise Cancelled
            self.on_progress(request_id, done, total)

        def run(site: str, **kwargs: Any) -> PatchResult:
            return patch(
                self.model, **self.texts, site=site, metric=settings.metric, direction=settings.direction,
                method=settings.method, batch_size=self.batch_size, memory_budget=self.memory_budget,
                progress=progress, remote=self.remote, runs_cache=self.runs_cache, **kwargs,
            )  # fmt: skip

        if level.kind == "top":
            by_position = False if level.site == "head_out" else None
            return Computed(level, {level.site: run(level.site, by_position=by_position)})
        if level.kind == "heads":
            return Computed(level, {"head_out": run("head_out", layers=[level.layer])})
        if level.kind == "head":
            group = self.info.n_heads // self.info.n_kv_heads
            results = {}
            for site in ("head_q", "head_k", "head_v", "head_out"):
                head = level.head // group if site in ("head_k", "head_v") else level.head
                results[site] = run(site, layers=[level.layer], heads=[head])
            results["attn_pattern"] = run("attn_pattern", layers=[level.layer], heads=[level.head])
            pattern = attention_pattern(self.model, self.prompts.clean[0], level.layer, level.head, self.remote)
            return Computed(level, results, pattern)
        if level.kind == "joint":
            joint = patch_sites(self.model, **self.texts, cells=list(level.cells), metric=settings.metric,
                                direction=settings.direction, batch_size=self.batch_size,
                                memory_budget=self.memory_budget, progress=progress, remote=self.remote)  # fmt: skip
            return Computed(level, {}, joint=joint)
        if level.kind == "neurons":
            return Computed(level, {"mlp_neuron": run("mlp_neuron", layers=[level.layer], positions=[level.pos])})
        raise PatchwidgetError(f"unknown level kind {level.kind!r}")

    def drill(self, level: Level, panel: str, row: int, col: int) -> Level | None:
        """The level a click on (row, col) of ``panel`` opens, or None if it opens nothing."""
        if level.kind == "top":
            if level.site == "head_out":
                return Level("head", level.site, layer=row, head=col)
            if level.site == "mlp_out":
                return Level("neurons", level.site, layer=row, pos=col)
            return Level("heads", level.site, layer=row, pos=col)
        if level.kind == "heads":
            return Level("head", level.site, layer=level.layer, head=row)
        return None

    def cell(self, level: Level, panel: str, row: int, col: int, row_labels: list[str]) -> Cell | None:
        """The patchable site under (row, col) of ``panel``, for joint patching."""
        if level.kind == "top" and level.site == "head_out":
            return Cell("head_out", row, head=col)
        if level.kind == "top":
            return Cell(level.site, row, pos=col)
        if level.kind == "heads":
            return Cell("head_out", level.layer, head=row, pos=col)
        if level.kind == "head" and panel == "components":
            site = ("head_q", "head_k", "head_v", "head_out")[row]
            group = self.info.n_heads // self.info.n_kv_heads
            head = level.head // group if site in ("head_k", "head_v") else level.head
            return Cell(site, level.layer, head=head, pos=col)
        if level.kind == "neurons":
            return Cell("mlp_neuron", level.layer, neuron=int(row_labels[row][1:]), pos=level.pos)
        return None
