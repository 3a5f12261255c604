"""The example notebooks: they run top to bottom without errors, are saved clean,
and what their prose says about the bundled model is still true.

Every notebook in ``examples/`` except ``real_models.ipynb`` (it needs the
network and an NDIF API key) is executed with nbclient on the ``python3``
kernel, in ``examples/``. The issue asks for "under a minute each": the time is
recorded (``--durations`` and the JUnit ``seconds`` property), a notebook over
60 s raises ``SlowNotebookWarning``, and only one over three times that fails.

Kernels and subprocesses run with ``OMP_NUM_THREADS=1`` unless it is set: on a
busy 2-core machine torch's default two intra-op threads made the bundled
model's sweeps about 20 times slower (2.2 s instead of 0.1 s for an 8-pair
``resid_pre`` grid, measured), which turned 10 s notebooks into 60 s ones.
"""

from __future__ import annotations

import importlib.util
import os
import py_compile
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import nbclient
import nbformat
import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
NOT_EXECUTED = {"real_models.ipynb"}  # hub downloads and NDIF: needs the network
EXECUTED = [p for p in NOTEBOOKS if p.name not in NOT_EXECUTED]
MARIMO = EXAMPLES / "quickstart_marimo.py"
TARGET_S = 60
HARD_LIMIT_S = 3 * TARGET_S  # slack for shared, slow machines; the target is only warned about
ENV = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


class SlowNotebookWarning(Warning):
    """A notebook took longer than the one-minute target (not a UserWarning, which pytest.ini hides)."""


def _execute(nb, timeout: int = 300) -> float:
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=timeout, resources={"metadata": {"path": str(EXAMPLES)}}
    )
    start = time.perf_counter()
    client.execute(env=ENV)  # raises CellExecutionError, naming the cell, on the first error
    return time.perf_counter() - start


def test_examples_are_all_there():
    names = {p.name for p in NOTEBOOKS}
    assert {
        "quickstart.ipynb",
        "ioi_workshop.ipynb",
        "factual_recall.ipynb",
        "induction.ipynb",
        "real_models.ipynb",
    } <= names
    assert MARIMO.exists()


def test_python3_kernel_is_this_interpreter():
    """The notebooks ask for the kernel ``python3``; it must run this environment's Python."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys; print(sys.prefix)")])
    _execute(nb, timeout=120)
    printed = nb.cells[0].outputs[0]["text"].strip()
    assert Path(printed).resolve() == Path(sys.prefix).resolve()


@pytest.mark.parametrize("path", EXECUTED, ids=lambda p: p.name)
def test_notebook_runs(path, record_property):
    nb = nbformat.read(path, as_version=4)
    elapsed = _execute(nb)
    record_property("seconds", round(elapsed, 1))
    errors = [o for cell in nb.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    for i, cell in enumerate(nb.cells):  # a plot cell shows its plot, also as `result.plot();`
        if cell.cell_type == "code" and re.search(r"\.plot(_curve)?\(", cell.source):
            images = [o for o in cell.outputs if "image/png" in o.get("data", {})]
            assert images, f"{path.name} cell {i} plots but shows no image:\n{cell.source}"
    if elapsed > TARGET_S:
        warnings.warn(
            f"{path.name} took {elapsed:.0f} s, over the {TARGET_S} s target", SlowNotebookWarning, stacklevel=1
        )
    assert elapsed < HARD_LIMIT_S, f"{path.name} took {elapsed:.0f} s"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_saved_clean(path):
    """Saved without outputs or execution counts, with the python3 kernelspec, answers collapsed."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has saved outputs"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"
        if cell.cell_type == "markdown" and cell.source.lstrip("# ").startswith("Answer"):
            assert cell.metadata.get("jupyter", {}).get("source_hidden"), f"{path.name} cell {i}: answer not collapsed"


def test_marimo_quickstart_compiles(tmp_path):
    py_compile.compile(str(MARIMO), cfile=str(tmp_path / "quickstart_marimo.pyc"), doraise=True)


def test_marimo_quickstart_runs():
    # A dev dependency: its absence fails the test. Not imported here: it runs in its own process.
    assert importlib.util.find_spec("marimo") is not None, "marimo is missing: `make test` installs it"

    proc = subprocess.run(
        [sys.executable, str(MARIMO)],
        cwd=EXAMPLES,
        env={**ENV, "MPLBACKEND": "Agg"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


# --- the notebooks' claims about the bundled model -------------------------------------------
# The prose of the notebooks describes what the grids show; these checks fail if a retrained
# demo model (or a change in the engine) makes that prose wrong.


@pytest.fixture
def one_thread():
    """One torch thread while checking claims (see the module docstring); restored afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _pairs(pairs):
    return dict(
        clean=[p.clean for p in pairs],
        corrupt=[p.corrupt for p in pairs],
        answer=[p.answer for p in pairs],
        wrong=[p.wrong for p in pairs],
        metric="logit_diff_norm",
    )


@pytest.mark.xfail(
    strict=True,
    reason="issue 15: ioi_workshop.ipynb's prose still describes the model before retraining (L0H2 -> layer-1 heads); "
    "the retrained model passes S2 through the layer-0 MLP, layer-1 heads at the verb and layer-3 heads at the end",
)
def test_ioi_claims(demo, one_thread):
    import patchwidget as pw
    from patchwidget import demo_data
    from patchwidget.engine import attention_pattern

    pairs = demo_data.ioi_pairs(8)
    kw = _pairs(pairs)
    resid = pw.patch(demo, **kw, site="resid_pre").values
    assert (resid[:2, 9] > 0.95).all() and (resid[2:, 13] > 0.95).all()  # S2 in layers 0-1, last token after
    assert np.abs(resid[:2, 13]).max() < 0.05 and np.abs(resid[2:, 9]).max() < 0.05
    attn = pw.patch(demo, **kw, site="attn_out").values
    assert attn[0, 9] > 0.95 and attn[1, 13] > 0.95
    assert np.abs(pw.patch(demo, **kw, site="mlp_out").values).max() < 0.1
    heads = pw.patch(demo, **kw, site="head_out", by_position=False).values
    assert np.unravel_index(np.argmax(heads), heads.shape) == (0, 2)
    assert (heads[1] > 0.1).all() and np.abs(heads[2:]).max() < 0.05
    q = pw.patch(demo, **kw, site="head_q", layers=[0], heads=[2]).values[0, 0]
    v = pw.patch(demo, **kw, site="head_v", layers=[1], heads=[3]).values[0, 0]
    assert q[9] > 0.5 and v[9] > 0.2
    assert np.mean([attention_pattern(demo, p.clean, 0, 2)[9, 1] for p in pairs]) > 0.9  # S2 -> the other name
    assert np.mean([attention_pattern(demo, p.corrupt, 0, 2)[9, 3] for p in pairs]) > 0.7
    for head in range(4):
        assert np.mean([attention_pattern(demo, p.clean, 1, head)[13, 9] for p in pairs]) > 0.9
    # Section 6: L0H2 alone drives the layer-1 heads' values; they, not L0H2, reach the logits directly.
    receivers = [pw.Cell("head_v", 1, head=h) for h in range(4)]
    into_values = pw.path_patch(demo, **kw, receivers=receivers).values[0]
    assert into_values[2] > 0.6 and np.abs(np.delete(into_values, 2)).max() < 0.05
    direct = pw.path_patch(demo, **kw).values
    assert (direct[1] > 0.1).all() and (direct[1] < 0.35).all() and abs(direct[0, 2]) < 0.02
    held = demo_data.ioi_pairs(8, seed=99)
    check = pw.patch(demo, **kw, site="head_out", by_position=False).top_sites(5).evaluate(demo, **_pairs(held))
    assert check.joint > 0.95
    # Exercise 6: the search keeps three layer-1 heads at the last token; with target 0.9 the fourth joins.
    texts = {k: v for k, v in kw.items() if k != "metric"}
    found = pw.find_circuit(demo, **texts, target=0.8)
    assert found.cells == [pw.Cell("head_out", 1, head=h, pos=13) for h in (3, 2, 1)] and found.faithfulness > 0.85
    assert len(pw.find_circuit(demo, **texts, target=0.9).cells) == 4


def test_factual_recall_claims(demo, one_thread):
    import patchwidget as pw
    from patchwidget import demo_data

    kw = _pairs(demo_data.fact_pairs(8))
    resid = pw.patch(demo, **kw, site="resid_pre").values
    assert resid[0, 3] > 0.95 and 0.85 < resid[1, 3] < 1.0 and resid[1, 4] < 0.15 and (resid[2:, 4] > 0.95).all()
    attn = pw.patch(demo, **kw, site="attn_out").values
    assert 0.85 < attn[1, 4] < 1.0 and 0 < attn[0, 4] < 0.15 and np.abs(attn[2:, 4]).max() < 0.05
    mlp = pw.patch(demo, **kw, site="mlp_out").values
    assert (
        0.8 < mlp[0, 3] < 0.95
        and (mlp[:, 4] > 0.03).all()
        and mlp[:, 4].max() < 0.2
        and np.abs(mlp[1:, 3]).max() < 0.01
    )
    noising = pw.patch(demo, **kw, site="mlp_out", direction="noise").values
    assert noising[0, 3] < 0.2 and (noising[:, 4] > 0.85).all() and (noising[:, 4] < 0.97).all()
    noisy = pw.noise("France", scale=3.0, samples=10, seed=0)
    traced = {
        site: pw.patch(
            demo, "The capital of France is", noisy, answer="Paris", wrong="Tokyo", site=site, metric="logit_diff_norm"
        ).values
        for site in ("resid_pre", "attn_out", "mlp_out")
    }
    assert traced["resid_pre"][1, 3] > 0.9 and (traced["resid_pre"][2:, 4] > 0.95).all()
    assert traced["attn_out"][1, 4] > 0.9 and np.abs(np.delete(traced["attn_out"][:, 4], 1)).max() < 0.15
    assert 0.85 < traced["mlp_out"][0, 3] < 0.95 and (traced["mlp_out"][1:, 4] > 0.1).all()
    assert (traced["mlp_out"][1:, 4] < 0.2).all()
    for kwargs in (dict(seed=1), dict(scale=1.0)):  # exercise 2: the layer-0 MLP at France stays the largest cell
        other = pw.patch(
            demo,
            "The capital of France is",
            pw.noise("France", **kwargs),
            answer="Paris",
            wrong="Tokyo",
            site="mlp_out",
            metric="logit_diff_norm",
        ).values
        assert np.unravel_index(np.argmax(other), other.shape) == (0, 3) and other[0, 3] > 0.8


def test_induction_claims(demo, one_thread):
    import random

    import torch

    import patchwidget as pw
    from patchwidget import demo_data
    from patchwidget.engine import attention_pattern

    # Section 1: every held-out shape is predicted (almost) perfectly over the whole second copy.
    hits = {}
    for words, start in demo_data.held_out_repeats(200):
        ids = torch.tensor([demo.tokenizer(" ".join(words))["input_ids"]])
        with torch.no_grad():
            guesses = demo._module(ids).logits[0, start:-1].argmax(-1)
        hits.setdefault((len(words) - start, 2 * start - len(words)), []).extend(
            (guesses == ids[0, start + 1 :]).tolist()
        )
    assert len(hits) == 4 and min(np.mean(h) for h in hits.values()) >= 0.99
    # Section 2: L0H3 is the previous-token head, the four layer-1 heads are induction heads.
    rng = random.Random(0)
    texts = [" ".join(rng.sample(demo_data.INDUCTION_WORDS, 30)) for _ in range(20)]
    prev = np.array(
        [
            [np.mean([np.diag(attention_pattern(demo, t, la, h), -1).mean() for t in texts]) for h in range(4)]
            for la in range(4)
        ]
    )
    assert 0.6 < prev[0, 3] < 0.8 and np.delete(prev.ravel(), 3).max() < 0.25
    repeats = demo_data.held_out_repeats(20, seed=0)

    def induction(layer, head):
        scores = []
        for words, start in repeats:
            pattern, n = attention_pattern(demo, " ".join(words), layer, head), len(words) - start
            scores += [pattern[q, q - n + 1] for q in range(start, len(words))]
        return np.mean(scores)

    ind = np.array([[induction(la, h) for h in range(4)] for la in range(4)])
    assert (ind[1] > 0.95).all() and np.delete(ind, 1, axis=0).max() < 0.1
    # Section 3: key pairs, L0H3 about 1 and the layer-1 heads a share each; value pairs, L0H3 about 0.
    key, value = (_pairs(demo_data.induction_pairs(16, kind=k)) for k in ("key", "value"))
    heads = pw.patch(demo, **key, site="head_out", by_position=False).values
    heads_v = pw.patch(demo, **value, site="head_out", by_position=False).values
    assert heads[0, 3] > 0.95 and 0.3 < heads[1, 0] < 0.5 and ((heads[1, 1:] > 0.05) & (heads[1, 1:] < 0.2)).all()
    assert (
        abs(heads_v[0, 3]) < 0.05
        and 0.3 < heads_v[1, 0] < 0.5
        and ((heads_v[1, 1:] > 0.05) & (heads_v[1, 1:] < 0.2)).all()
    )
    assert np.abs(heads[2:]).max() < 0.05 and np.abs(heads_v[2:]).max() < 0.05
    # Section 4: L0H3 -> layer-1 keys about 1, others 0; no direct path from L0H3; the layer-1 heads together ~1.
    into_keys = pw.path_patch(demo, **key, receivers=[pw.Cell("head_k", 1, head=h) for h in range(4)]).values[0]
    assert into_keys[3] > 0.95 and np.abs(into_keys[:3]).max() < 0.05
    direct = pw.path_patch(demo, **key).values
    assert (
        abs(direct[0, 3]) < 0.02
        and 0.3 < direct[1, 0] < 0.5
        and ((direct[1, 1:] > 0.05) & (direct[1, 1:] < 0.25)).all()
    )
    texts_key = {k: v for k, v in key.items() if k != "metric"}
    assert pw.patch_sites(demo, **texts_key, cells=[pw.Cell("head_out", 1, head=h) for h in range(4)]).joint > 0.95
    # Section 5: knockouts.
    test = demo_data.induction_pairs(50, seed=1)
    prompts, answers = [p.clean for p in test], [p.answer for p in test]

    def accuracy(cells):
        logits = pw.Circuit(cells).knockout(demo, prompts, mode="mean")
        guesses = demo.tokenizer.convert_ids_to_tokens(logits.argmax(-1).tolist())
        return np.mean([g == a for g, a in zip(guesses, answers)])

    assert accuracy([pw.Cell("head_out", 0, head=3)]) < 0.35
    assert accuracy([pw.Cell("head_out", 1, head=h) for h in range(4)]) < 0.1
    for cells in ([pw.Cell("head_out", 1, head=0)], [pw.Cell("head_out", 0, head=h) for h in range(3)]):
        assert accuracy(cells) > 0.95
    assert accuracy([pw.Cell("head_out", 2, head=h) for h in range(4)]) > 0.95
    # Exercise 2: the same grid at length 9, offset 7.
    longer = pw.patch(
        demo, **_pairs(demo_data.induction_pairs(16, length=9, offset=7)), site="head_out", by_position=False
    )
    assert longer.values[0, 3] > 0.95 and 0.3 < longer.values[1, 0] < 0.5
