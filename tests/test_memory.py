"""A memory budget bounds the batched runs: a 512-token prompt on a
GPT-2-small-shaped model stays under it."""

from __future__ import annotations

import ctypes
import threading
import time

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import patchwidget as pw
from patchwidget.core import batches

from .close import assert_close, near


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_size_t)
        for n in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


_LIBC = ctypes.CDLL("libc.so.6")
_LIBC.mallinfo2.restype = _MallInfo2


def heap_bytes() -> int:
    """Bytes handed out by the C heap, where torch keeps CPU tensors."""
    info = _LIBC.mallinfo2()
    return info.uordblks + info.hblkhd


def peak_during(fn):
    base, peak, stop = heap_bytes(), [0], threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], heap_bytes() - base)
            time.sleep(0.001)

    thread = threading.Thread(target=watch)
    thread.start()
    try:
        out = fn()
    finally:
        stop.set()
        thread.join()
    return out, peak[0]


@pytest.fixture(scope="module")
def gpt2_small(tokenizer):
    torch.manual_seed(0)
    config = GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=len(tokenizer), attn_implementation="eager")
    return pw.load_model(GPT2LMHeadModel(config).eval(), tokenizer=tokenizer)


def word_prompts(n_tokens: int, n_pairs: int) -> tuple[list[str], list[str]]:
    """Long prompts from the demo vocabulary; the first token differs, so no cell is a no-op."""
    words = ["apple", "river", "stone", "cloud", "window", "table", "orange", "forest"]
    clean = [" ".join(words[(i + k) % 8] for i in range(n_tokens)) for k in range(n_pairs)]
    return clean, ["tiger " + c.split(" ", 1)[1] for c in clean]


def check_budget_bounds(patch_with, budget: int):
    """``patch_with(budget)`` stays under ``budget``, goes over it without one, and gives the same numbers."""
    result, peak = peak_during(lambda: patch_with(budget))
    assert peak < budget, f"peak {peak / 2**20:.0f} MB over the {budget / 2**20:.0f} MB budget"
    unbounded, unbounded_peak = peak_during(lambda: patch_with(None))
    assert unbounded_peak > budget  # the budget is what kept the first run small
    assert_close(torch.tensor(result.per_pair), torch.tensor(unbounded.per_pair), 1e-4)
    return result


def test_512_token_prompt_stays_under_the_budget(gpt2_small, monkeypatch):
    # On a CPU passes are capped at a few hundred positions anyway, which would keep the unbudgeted run
    # small too; without the cap (as on a GPU) only the budget bounds a pass.
    clean, corrupt = word_prompts(512, 1)
    # 64 positions: their copies fill about 4 rows of 512 per layer, even packed end to end
    uncapped = batches.Speedups(max_positions=None)
    kw = dict(answer="Mary", wrong="John", layers=[6, 11], positions=list(range(448, 512)), speedups=uncapped)
    result = check_budget_bounds(
        lambda budget: pw.patch(gpt2_small, clean, corrupt, memory_budget=budget, **kw), 450 * 2**20
    )
    assert result.values.shape == (2, 64)


def test_budget_too_small_fails_before_compute(demo, monkeypatch):
    monkeypatch.setattr(demo, "trace", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran")))
    with pytest.raises(pw.PatchwidgetError, match=r"memory_budget=0.01 MB is too small: .* need about 0.\d+ MB"):
        pw.patch(
            demo,
            "The capital of France is",
            "The capital of Japan is",
            answer="Paris",
            wrong="Tokyo",
            memory_budget=10_000,
        )


def test_budget_sets_rows_per_batch(demo):
    from patchwidget.core import memory
    from patchwidget.core.sites import model_info

    info = model_info(demo)
    per_row = memory.patched_row_bytes(info, 14, 155, 4)
    fixed = memory.cache_bytes(info, 14, 155, 4, 2, info.d_model)
    assert memory.rows_per_batch(fixed + 5 * per_row, 64, info, 14, 155, 4, 2, info.d_model) == 5
    assert memory.rows_per_batch(None, 64, info, 14, 155, 4, 2, info.d_model) == 64


def test_attribution_splits_its_backward_pass_to_stay_under_the_budget(gpt2_small):
    clean, corrupt = word_prompts(128, 4)  # four pairs in one backward pass do not fit the budget
    kw = dict(answer=["Mary"] * 4, wrong=["John"] * 4, site="head_out", method="attribution")
    check_budget_bounds(lambda budget: pw.patch(gpt2_small, clean, corrupt, memory_budget=budget, **kw), 400 * 2**20)


def test_attribution_budget_too_small_for_one_pair_fails_before_compute(demo, monkeypatch):
    monkeypatch.setattr(demo, "trace", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran")))
    with pytest.raises(pw.PatchwidgetError, match=r"too small for method='attribution'.* cannot be split further"):
        pw.patch(
            demo,
            "The capital of France is",
            "The capital of Japan is",
            answer="Paris",
            wrong="Tokyo",
            method="attribution",
            memory_budget=10_000,
        )


def test_joint_patching_keeps_to_the_budget(demo):
    from patchwidget.core import memory
    from patchwidget.core.sites import model_info

    p = pw.demo_data.ioi_pairs(1, seed=4)[0]
    cells = [pw.Cell("head_out", 0, head=3), pw.Cell("mlp_out", 2, pos=13), pw.Cell("resid_pre", 3, pos=-1)]
    info, n_pos = model_info(demo), len(demo.tokenizer(p.clean)["input_ids"])
    fixed = memory.cache_bytes(info, n_pos, 155, 4, 2, info.d_model)
    budget = fixed + 2 * memory.patched_row_bytes(info, n_pos, 155, 4)  # room for two patched copies at a time
    batches = []
    r = pw.patch_sites(
        demo,
        p.clean,
        p.corrupt,
        answer=p.answer,
        wrong=p.wrong,
        cells=cells,
        memory_budget=budget,
        progress=lambda done, total: batches.append(done),
    )
    assert batches == [2, 4]
    whole = pw.patch_sites(demo, p.clean, p.corrupt, answer=p.answer, wrong=p.wrong, cells=cells)
    assert r.joint == near(whole.joint, 1e-5)
    with pytest.raises(pw.PatchwidgetError, match="too small"):
        pw.patch_sites(demo, p.clean, p.corrupt, answer=p.answer, wrong=p.wrong, cells=cells, memory_budget=1000)


def test_answers_of_several_tokens_count_their_logits(tokenizer):
    """Several-token answers are read at each fed token, each read a full row of logits: on a model whose
    vocabulary dwarfs its width the budget must count them (it counted one read per row, and went over)."""
    torch.manual_seed(0)
    config = GPT2Config(n_layer=4, n_embd=64, n_head=4, vocab_size=60_000, attn_implementation="eager")
    wide = pw.load_model(GPT2LMHeadModel(config).eval(), tokenizer=tokenizer)
    clean, corrupt = word_prompts(8, 1)
    answer, wrong = " ".join(["Mary"] * 8), " ".join(["John"] * 7)
    kw = dict(answer=answer, wrong=wrong, site="resid_pre", speedups=batches.Speedups(max_positions=None))
    check_budget_bounds(lambda budget: pw.patch(wide, clean, corrupt, memory_budget=budget, **kw), 30 * 2**20)
