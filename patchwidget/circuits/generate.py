"""Generation under a patch: what the model goes on to say when some of its prompt's activations come
from the other prompt of the pair.

A grid says how much a set of cells moves one logit difference; generation shows it in words. For
each prompt pair, three greedy continuations: the clean run's, the corrupted run's, and the patched
run's, where the target prompt (the corrupted one when denoising) runs with the cells' activations
taken from the source prompt at its prompt positions. Every generated token is then computed by the
model as it is: the patched prompt's keys and values stay in the key-value cache, and nothing is
written at a generated position.

Example:
    >>> import patchwidget as pw
    >>> ex = pw.demo_data.IOI_EXAMPLE
    >>> g = pw.generate(pw.load_model(), ex["clean"], ex["corrupt"],
    ...                 cells=[pw.Cell("head_out", 3, head=1, pos=-1)], max_new_tokens=1)
    >>> g.clean, g.corrupt, g.patched
    (['Mary'], ['John'], ['Mary'])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import nnsight
import numpy as np
import torch

from ..core.cells import READ_ORDER, WRITE_ORDER, Cell, Write, cell_write, check_choice, pair_writes
from ..core.engine import DIRECTIONS, context_length, entry_point, write
from ..core.remote import prepare_remote, trace_kwargs
from ..core.sites import CACHE, ModelInfo, attend_all, model_info, on_input_device, view
from ..data.prompts import Noise, PromptBatch, Texts, prepare_pairs
from ..errors import PatchwidgetError, PromptError, SettingsError
from .circuit import Circuit
from .faithfulness import outside_writes

__all__ = ["Generation", "generate"]

Key = tuple[int, str]  # (layer, site)


@dataclass
class Generation:
    """Greedy continuations of each prompt pair: the clean run, the corrupted run and the patched run.

    ``clean``, ``corrupt`` and ``patched`` are the new text only (the prompt not included),
    one string per pair; ``*_ids`` the same as token ids. A continuation is ``max_new_tokens``
    tokens long, or shorter where the model said the tokenizer's end-of-text token (which is
    then left out).
    """

    clean: list[str]
    corrupt: list[str]
    patched: list[str]
    clean_ids: list[list[int]]
    corrupt_ids: list[list[int]]
    patched_ids: list[list[int]]
    cells: list[Cell]
    direction: str
    max_new_tokens: int
    alone: bool = False  # the cells ran on their own (MIB's m(C)), every other node corrupted
    clean_prompts: list[str] = field(default_factory=list)
    corrupt_prompts: list[str] = field(default_factory=list)

    def to_dataframe(self) -> Any:
        """One row per pair: the two prompts and the three continuations.

        Example:
            >>> g.to_dataframe()  # doctest: +SKIP
        """
        import pandas as pd

        return pd.DataFrame(
            {
                "clean prompt": self.clean_prompts,
                "corrupt prompt": self.corrupt_prompts,
                "clean": self.clean,
                "corrupt": self.corrupt,
                "patched": self.patched,
            }
        )

    def __repr__(self) -> str:
        shown = ", ".join(c.label for c in self.cells[:3]) + (", ..." if len(self.cells) > 3 else "")
        cells = f"{len(self.cells)} cell{'s' if len(self.cells) != 1 else ''}"
        lines = [f"Generation({self.direction}, {cells}: {shown}; {self.max_new_tokens} new tokens)"]
        for i in range(min(len(self.patched), 3)):
            lines.append(
                f"  pair {i}: clean {self.clean[i]!r} | corrupt {self.corrupt[i]!r} | patched {self.patched[i]!r}"
            )
        if len(self.patched) > 3:
            lines.append(f"  ... {len(self.patched) - 3} more pairs")
        return "\n".join(lines)


@entry_point
def generate(
    model: Any,
    clean: Texts,
    corrupt: Texts,
    *,
    cells: Sequence[Cell] | None = None,
    circuit: Circuit | None = None,
    direction: str | None = None,
    max_new_tokens: int = 20,
    remote: bool | str = False,
    progress: Callable[[int, int], None] | bool | None = None,
    alone: bool = False,
) -> Generation:
    """Greedy continuations of each pair's clean, corrupted and patched runs.

    The patched run is the target prompt (the corrupted one for ``direction="denoise"``,
    the clean one for ``"noise"``) with the ``cells`` (or the ``circuit``'s cells) taking
    the source prompt's activations at the prompt's positions; the tokens it then
    generates are computed by the model as it is (the patched prompt's keys and values
    stay in the cache; no generated position is written). ``direction`` defaults to the
    circuit's own (its provenance), else ``"denoise"``.

    ``alone=True`` runs the circuit (or the cells, nodes as ``pw.faithfulness`` takes them) on its
    own, as MIB's m(C) does: the clean prompt with every node outside it given its corrupted-run
    value at the prompt's positions (a node with a ``pos`` is kept only there), so ``patched`` is
    what the circuit alone says; without it, a circuit's cells are patched in its own direction
    (for a ``find_circuit`` circuit, ``noise``: the circuit knocked out).

    Greedy: each new token is the argmax of the last logits. A continuation stops after
    ``max_new_tokens`` tokens, or where the tokenizer's end-of-text token comes (left out
    of the text). Prompt and continuation must fit in the model's context. Prompts made
    from a template work too, a cell's ``pos`` then a span label. Pairs run batched where
    their prompts have one length, else apart (padding would move a continuation).
    ``remote`` as in ``patch``: one request per new token, each sending the cache.
    ``progress(done, total)`` is called after each forward pass (``True`` draws a bar): ``total`` counts
    every pass of the three runs, a run that ends early at the end-of-text token skips the rest.

    Example:
        >>> import patchwidget as pw
        >>> ex = pw.demo_data.IOI_EXAMPLE
        >>> g = pw.generate(pw.load_model(), ex["clean"], ex["corrupt"],
        ...                 cells=[pw.Cell("head_out", 3, head=1, pos=-1)], max_new_tokens=1)
        >>> g.corrupt, g.patched
        (['John'], ['Mary'])
    """
    asked = direction
    cells, direction = chosen_cells(model, cells, circuit, direction)
    refused = refusal(corrupt, [getattr(cell, "site", None) for cell in cells])
    if refused is not None:
        raise refused
    check_new_tokens(max_new_tokens)
    prepare_remote(model, remote)
    info = model_info(model)
    prompts = prepare_pairs(model.tokenizer, clean, corrupt, max_len=context_length(model))
    check_context(prompts, max_new_tokens, context_length(model))
    if alone:  # the circuit on its own, as MIB's m(C): the clean run, every node outside it corrupted
        direction, per_pair = check_alone(asked, prompts, info, cells)
        writes = [w for pair in per_pair for w in pair]
    else:
        per_pair = None
        writes = [cell_write(cell, info, prompts.n_pos, prompts.columns) for cell in cells]
    reads = sorted({(w.layer, w.site) for w in writes}, key=lambda k: (k[0], READ_ORDER.index(k[1])))
    run = Runner(model, info, max_new_tokens, remote, progress, total=n_passes(prompts, direction, max_new_tokens))
    with torch.no_grad():
        clean_ids, clean_acts = run.plain(prompts, "clean", reads if direction == "denoise" else [])
        corrupt_ids, corrupt_acts = run.plain(prompts, "corrupt", reads if direction == "noise" else [])
        sources = clean_acts if direction == "denoise" else corrupt_acts
        patched_ids = run.patched(prompts, direction, writes, sources, per_pair)
    decode = lambda rows: [model.tokenizer.decode(ids) for ids in rows]
    return Generation(
        *(decode(rows) for rows in (clean_ids, corrupt_ids, patched_ids)),
        clean_ids,
        corrupt_ids,
        patched_ids,
        cells=list(cells),
        direction=direction,
        max_new_tokens=int(max_new_tokens),
        alone=bool(alone),
        clean_prompts=prompts.clean,
        corrupt_prompts=prompts.corrupt,
    )


# --- checks, before any forward pass ---------------------------------------------------------------


# What generate says of a circuit of edges (the widget says it too, beside *What does the circuit say?*).
EDGES_REFUSED = (
    "pw.generate runs a circuit of nodes, and this circuit is of edges: generating under its edges is not offered "
    "yet (pw.faithfulness measures it; find a circuit of nodes to hear what one says)"
)


def refusal(corrupt: Any = None, sites: Iterable[str | None] = ()) -> PatchwidgetError | None:
    """The error ``generate`` raises, before any forward pass, for a ``noise()`` corruption or for cells at
    ``sites`` it cannot patch (``attn_pattern``), or None where neither refuses it. The widget asks this too,
    to say why *What does it say?* is unavailable before it is clicked.

    Example:
        >>> import patchwidget as pw
        >>> str(refusal(pw.noise("Mary")))
        'a noise() corruption has no corrupted prompt to continue: pw.generate needs corrupted prompts'
        >>> refusal("When John and Mary went", ["head_out"]) is None
        True
    """
    if isinstance(corrupt, Noise):
        return PromptError(
            "a noise() corruption has no corrupted prompt to continue: pw.generate needs corrupted prompts"
        )
    if "attn_pattern" in sites:
        return SettingsError("attn_pattern cells cannot be generated under; patch the heads' outputs (head_out)")
    return None


def chosen_cells(
    model: Any, cells: Sequence[Cell] | None, circuit: Circuit | None, direction: str | None
) -> tuple[list[Cell], str]:
    """The cells to patch (given, or the circuit's) and the direction (given, the circuit's, or denoise)."""
    if cells is not None and circuit is not None:
        raise SettingsError("give cells=[...] or circuit=..., not both")
    if cells is None and circuit is None:
        raise SettingsError("give the cells to patch: cells=[pw.Cell(...), ...] or circuit=a pw.Circuit")
    if circuit is not None:
        if not isinstance(circuit, Circuit):
            raise SettingsError(f"circuit must be a patchwidget.Circuit, got {circuit!r}")
        if circuit.edges:  # its cells are its senders: patching them is not running its edges
            raise SettingsError(EDGES_REFUSED)
        circuit.check_model(model)
        cells = circuit.cells
        if direction is None:
            direction = circuit.provenance.get("direction", "denoise")
    if isinstance(cells, Circuit):
        raise SettingsError("cells is a Circuit: pass it as circuit=...")
    if not isinstance(cells, Sequence) or isinstance(cells, str):
        raise SettingsError(f"cells must be a list of patchwidget.Cell objects, got {cells!r}")
    if not cells:
        raise SettingsError("cells is empty; give at least one Cell to patch")
    direction = "denoise" if direction is None else direction
    check_choice(direction, DIRECTIONS, "direction")
    return list(cells), direction


def check_alone(
    given: str | None, prompts: PromptBatch, info: ModelInfo, cells: list[Cell]
) -> tuple[str, list[tuple[Write, ...]]]:
    """``alone=True``: the direction (the clean run's: ``noise``) and each pair's writes, every node outside
    the circuit given its corrupted value (``faithfulness.outside_writes``), checked as faithfulness checks;
    ``given`` is the direction asked for (a circuit's own is where it was found, not how it runs alone)."""
    if given not in (None, "noise"):
        raise SettingsError(
            "alone=True runs the clean prompt with every node outside the circuit given its corrupted value "
            f"(MIB's m(C)), so its direction is 'noise'; got direction={given!r}"
        )
    if not prompts.aligned_one_to_one:
        raise SettingsError(
            "alone=True replaces each node position by position with its corrupted-run value, and these pairs' "
            "clean and corrupted prompts have spans of different lengths: give pairs whose spans match"
        )
    return "noise", outside_writes(cells, prompts, info.n_layers, info.n_heads)


def check_new_tokens(max_new_tokens: Any) -> None:
    """``max_new_tokens`` a whole number of at least 1."""
    if not isinstance(max_new_tokens, int | np.integer) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise SettingsError(f"max_new_tokens must be an integer of at least 1, got {max_new_tokens!r}")


def check_context(prompts: PromptBatch, max_new_tokens: int, context: int | None) -> None:
    """Every prompt with its continuation must fit in the model's context (where the config gives one)."""
    if context is None:
        return
    lengths = prompts.lengths  # (2 * pair,): the clean prompts, then the corrupted ones
    longest = int(lengths.argmax())
    n = int(lengths[longest])
    if n + max_new_tokens > context:
        kind, pair = ("clean", longest) if longest < prompts.n_pairs else ("corrupt", longest - prompts.n_pairs)
        raise SettingsError(
            f"max_new_tokens={max_new_tokens} does not fit: the {kind} prompt of pair {pair} has {n} tokens, "
            f"and {n} + {max_new_tokens} is more than the model's context of {context} positions; "
            f"ask for at most {context - n} new tokens"
        )


# --- the runs ---------------------------------------------------------------------------------------


def same_length(lengths: list[int]) -> list[list[int]]:
    """The pairs grouped by their prompt's length, in order: each group runs as one batch, unpadded.

    Example:
        >>> same_length([5, 7, 5])
        [[0, 2], [1]]
    """
    groups: dict[int, list[int]] = {}
    for pair, n in enumerate(lengths):
        groups.setdefault(n, []).append(pair)
    return list(groups.values())


@dataclass
class Runner:
    """Runs prompts and continues them greedily, batch by batch."""

    model: Any
    info: ModelInfo
    max_new_tokens: int
    remote: bool | str
    progress: Callable[[int, int], None] | None = None
    total: int = 0
    done: int = 0

    def passed(self) -> None:
        """One forward pass done: tell ``progress`` (which may stop the run by raising)."""
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, max(self.total, self.done))

    def plain(self, prompts: PromptBatch, which: str, reads: list[Key]) -> tuple[list[list[int]], list[dict]]:
        """Each pair's ``which`` ("clean" or "corrupt") prompt continued, and its activations at ``reads``
        per pair, ``{(layer, site): (pos, unit, width)}`` (the source values of the patched runs)."""
        ids, lengths = prompt_ids(prompts, which)
        out: list[list[int]] = [[] for _ in lengths]
        acts: list[dict] = [{} for _ in lengths]
        for group in same_length(lengths):
            rows = ids[group, : lengths[group[0]]]
            logits, cache, got = self.prompt_pass(rows, reads=reads)
            for pair, new in zip(group, self.greedy(logits, cache, rows.shape[1])):
                out[pair] = new
            for row, pair in enumerate(group):
                acts[pair] = {key: value[row].cpu() for key, value in got.items()}
        return out, acts

    def patched(
        self,
        prompts: PromptBatch,
        direction: str,
        writes: list[Write],
        sources: list[dict],
        per_pair: list[tuple[Write, ...]] | None = None,
    ) -> list[list[int]]:
        """Each pair's target prompt, patched with ``sources`` at the writes' positions (or at each pair's own
        ``per_pair`` writes), continued."""
        ids, lengths = prompt_ids(prompts, "corrupt" if direction == "denoise" else "clean")
        out: list[list[int]] = [[] for _ in lengths]
        for group in same_length(lengths):
            rows = ids[group, : lengths[group[0]]]
            batch = [
                (pair, pair_writes(writes, prompts, pair, direction) if per_pair is None else per_pair[pair])
                for pair in group
            ]
            logits, cache, _ = self.prompt_pass(rows, writes=self.write_values(batch, sources))
            for pair, new in zip(group, self.greedy(logits, cache, rows.shape[1])):
                out[pair] = new
        return out

    def write_values(self, batch: list[tuple[int, tuple[Write, ...]]], sources: list[dict]) -> list[tuple]:
        """The batch's writes as ``engine.write`` takes them, one entry per (layer, site) in forward order:
        ``(layer, site, rows, positions, units, values)``; row ``i`` is the ``i``-th pair of ``batch``."""
        table: dict[Key, list[list]] = {}
        for row, (pair, writes) in enumerate(batch):
            for w in writes:
                at = table.setdefault((w.layer, w.site), [[], [], [], []])
                read = list(w.read_at if w.read_at is not None else w.positions)  # source positions
                at[0] += [row] * len(w.positions)
                at[1] += list(w.positions)
                at[2] += [w.unit] * len(w.positions)
                at[3].append(sources[pair][(w.layer, w.site)][read, w.unit])  # (n, width)
        out = []
        for layer, site in sorted(table, key=lambda k: (k[0], WRITE_ORDER.index(k[1]))):
            r, p, u, values = table[(layer, site)]
            index = [on_input_device(self.model, torch.tensor(i, dtype=torch.long)) for i in (r, p, u)]
            out.append((layer, site, *index, on_input_device(self.model, torch.cat(values))))
        return out

    def prompt_pass(
        self, ids: torch.Tensor, reads: list[Key] = (), writes: list[tuple] = ()
    ) -> tuple[torch.Tensor, Any, dict]:
        """One run of the prompts ``ids`` ``(row, pos)``, in one trace: the writes applied (as the engine
        writes), the reads recorded; its last logits ``(row, vocab)``, its key-value cache and the reads."""
        model, info = self.model, self.info
        mask = attend_all(model, *ids.shape)
        with model.trace(
            on_input_device(model, ids),
            attention_mask=mask,
            use_cache=True,
            logits_to_keep=1,
            **trace_kwargs(model, self.remote),
        ):
            got = nnsight.save({})  # made inside: only saved values come back from a server
            for layer, site in reads:
                got[(layer, site)] = view(model, info, site, layer).detach().clone().save()
            for layer, site, *args in writes:
                write(model, info, site, layer, *args)
            logits = model.output.logits[:, -1].detach().save()
            cache = model.output[CACHE].save()
        return logits, cache, got

    def step(self, tokens: torch.Tensor, cache: Any, width: int) -> tuple[torch.Tensor, Any]:
        """One new token per row ``(row,)`` through the model after the ``width - 1`` cached positions."""
        model = self.model
        # nnsight would make a mask of the one new position only: every row attends to all its cached ones too.
        inputs = {"attention_mask": attend_all(model, len(tokens), width), CACHE: cache}
        with model.trace(
            on_input_device(model, tokens[:, None]), use_cache=True, **inputs, **trace_kwargs(model, self.remote)
        ):
            logits = model.output.logits[:, -1].detach().save()
            cache = model.output[CACHE].save()
        return logits, cache

    def greedy(self, logits: torch.Tensor, cache: Any, width: int) -> list[list[int]]:
        """Each row's greedy continuation from the prompt pass's last ``logits`` and ``cache`` (``width`` positions),
        cut before the end-of-text token; rows that have ended run on with the rest, their tokens unused."""
        eos = self.model.tokenizer.eos_token_id
        tokens, ended = [], torch.zeros(len(logits), dtype=torch.bool)
        for step in range(self.max_new_tokens):
            self.passed()  # the pass that gave these logits
            new = logits.argmax(-1).cpu()  # (row,)
            tokens.append(new)
            if eos is not None:
                ended |= new == eos
            if step == self.max_new_tokens - 1 or bool(ended.all()):
                break
            logits, cache = self.step(new, cache, width + step + 1)
        rows = torch.stack(tokens, 1).tolist()  # (row, new token)
        return [row[: row.index(eos)] if eos in row else row for row in rows]


def n_passes(prompts: PromptBatch, direction: str, max_new_tokens: int) -> int:
    """How many forward passes the three runs make at most: each group of one prompt length, one per new token."""
    target = "corrupt" if direction == "denoise" else "clean"
    groups = sum(len(same_length(prompt_ids(prompts, which)[1])) for which in ("clean", "corrupt", target))
    return groups * max_new_tokens


def prompt_ids(prompts: PromptBatch, which: str) -> tuple[torch.Tensor, list[int]]:
    """The ``which`` prompts' ids ``(pair, pos)`` (padded on the right) and their real lengths."""
    ids = prompts.clean_ids if which == "clean" else prompts.corrupt_ids
    lengths = prompts.lengths[: prompts.n_pairs] if which == "clean" else prompts.lengths[prompts.n_pairs :]
    return ids, lengths.tolist()
