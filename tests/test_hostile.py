"""What a hostile but fair user found: inputs that gave wrong numbers without a word, destroyed a
saved file or blanked the offline page. Each test here failed before its fix."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import patchwidget as pw
from patchwidget import demo_data
from patchwidget.grids.result import PatchResult

from .close import assert_close

PAIRS = demo_data.ioi_pairs(4, seed=9)
TEXTS = dict(
    clean=[p.clean for p in PAIRS],
    corrupt=[p.corrupt for p in PAIRS],
    answer=[p.answer for p in PAIRS],
    wrong=[p.wrong for p in PAIRS],
)


@pytest.fixture
def no_forward(demo, monkeypatch):
    """Fail the test if the model runs at all."""
    monkeypatch.setattr(demo, "trace", lambda *a, **k: (_ for _ in ()).throw(AssertionError("a forward pass ran")))
    return demo


# --- silent wrong numbers -----------------------------------------------------------------------------


def batch_mean(logits, a, w):
    rows = range(len(a))
    return (logits[rows, a] - logits[rows, w]).mean()


@pytest.mark.parametrize(
    "metric,message",
    [
        (batch_mean, r"returned shape \(\); it must return shape \(3,\).*average or sum over the batch"),
        (lambda logits: float(logits[0, 0]), r"returned a float; it must return a torch tensor of shape \(3,\)"),
        (lambda logits: logits[:, 0].numpy(), r"returned a ndarray"),
        (lambda logits: logits[:, :2], r"returned shape \(3, 2\)"),
        (lambda logits: logits.argmax(-1), r"returned dtype torch.int64; it must return floating-point"),
        (lambda logits: logits[:, 10**6], r"metric '<lambda>' \(call 1.*raised IndexError"),
    ],
)
def test_a_metric_that_is_not_one_value_per_row_is_refused_before_compute(no_forward, metric, message):
    with pytest.raises(pw.MetricError, match=message):
        pw.patch(no_forward, **TEXTS, metric=metric)


def test_a_metric_that_fails_during_compute_is_named_with_its_call(demo):
    calls = []

    def flaky(logits):
        calls.append(len(logits))
        if len(calls) > 2:  # the trial call and the baselines pass, a patched batch does not
            raise RuntimeError("boom")
        return logits[:, 0]

    with pytest.raises(
        pw.MetricError, match=r"metric 'flaky' \(call \d+, on logits of shape .*raised RuntimeError: boom"
    ):
        pw.patch(demo, **TEXTS, metric=flaky, batch_size=8)


def test_train_mode_patches_as_eval_mode_and_is_put_back(demo, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=len(tokenizer), attn_implementation="eager")
    config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = 0.2
    model = pw.load_model(GPT2LMHeadModel(config), tokenizer=tokenizer)
    model._module.train()
    for method in ("exact", "attribution"):
        kw = dict(site="head_out", method=method, metric="logit_diff")
        first, second = pw.patch(model, **TEXTS, **kw), pw.patch(model, **TEXTS, **kw)
        np.testing.assert_array_equal(first.per_pair, second.per_pair)
        assert model._module.training and all(m.training for m in model._module.modules())
        model._module.eval()
        assert_close(pw.patch(model, **TEXTS, **kw).per_pair, first.per_pair, 1e-6)
        model._module.train()
    joint = [pw.patch_sites(model, **TEXTS, cells=[pw.Cell("resid_pre", 1, pos=-1)]).joint for _ in range(2)]
    assert joint[0] == joint[1]


def test_the_same_cell_twice_is_refused(no_forward):
    cell = pw.Cell("head_out", 0, head=1)
    with pytest.raises(pw.SettingsError, match=r"repeated cells: head_out L0 H1"):
        pw.patch_sites(no_forward, **TEXTS, cells=[cell, pw.Cell("head_out", 1, head=0), cell])


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: pw.noise(positions=[]), r"positions must be a non-empty list"),
        (lambda: pw.noise([]), r"tokens must be non-empty words"),
        (lambda: pw.noise("Mary", scale=float("nan")), r"scale to be a finite number >= 0, got scale=nan"),
        (lambda: pw.noise("Mary", scale=float("inf")), r"scale=inf"),
        (lambda: pw.noise("Mary", samples=2.5), r"samples >= 1 \(an integer\), got samples=2.5"),
    ],
)
def test_noise_that_corrupts_nothing_or_everything_is_refused(make, message):
    with pytest.raises(pw.PromptError, match=message):
        make()


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(by_position="no"), r"by_position must be True, False or None, got 'no'"),
        (dict(by_position=1), r"by_position must be True, False or None, got 1"),
        (dict(memory_budget=float("nan")), r"memory_budget must be a positive number of bytes or None, got nan"),
        (dict(memory_budget=float("inf")), r"got inf"),
        (dict(direction=["denoise"]), r"unknown direction \['denoise'\]"),
    ],
)
def test_settings_read_the_wrong_way_are_refused(no_forward, change, message):
    with pytest.raises(pw.PatchwidgetError, match=message):
        pw.patch(no_forward, **TEXTS, **change)


def test_a_metric_with_nan_cells_says_which(demo):
    def partly_nan(logits, a, w):
        value = logits[range(len(a)), a] - logits[range(len(a)), w]
        return torch.where(value > value.median(), torch.full_like(value, float("nan")), value)

    with pytest.warns(pw.NonFiniteWarning, match=r"gave NaN or an infinite value at \d+ cell\(s\): L\d .*no value"):
        r = pw.patch(demo, **TEXTS, metric=partly_nan, site="attn_out")
    assert np.isnan(r.values).any()
    with warnings.catch_warnings():
        warnings.simplefilter("error", pw.NonFiniteWarning)  # the default metric gives no such warning
        pw.patch(demo, **TEXTS, site="attn_out")


# --- methods that fail where users are ------------------------------------------------------------------


def test_attribution_works_with_frozen_weights(demo, tokenizer):
    kw = dict(site="head_out", method="attribution")
    want = pw.patch(demo, **TEXTS, **kw).per_pair
    demo._module.requires_grad_(False)
    try:
        got = pw.patch(demo, **TEXTS, **kw).per_pair
        got_resid = pw.patch(demo, **TEXTS, method="attribution", layers=[2]).per_pair
    finally:
        demo._module.requires_grad_(True)
    assert_close(got, want, 1e-4)
    assert_close(got_resid, pw.patch(demo, **TEXTS, method="attribution", layers=[2]).per_pair, 1e-4)
    assert all(p.grad is None for p in demo._module.parameters())


def test_attribution_under_inference_mode_says_why(no_forward):
    with torch.inference_mode(), pytest.raises(pw.SettingsError, match=r"inference_mode\(\) forbids"):
        pw.patch(no_forward, **TEXTS, method="attribution")


def test_the_clean_and_corrupted_runs_batch_and_report_progress(demo, monkeypatch):
    pairs = demo_data.ioi_pairs(10, seed=1)
    texts = dict(
        clean=[p.clean for p in pairs],
        corrupt=[p.corrupt for p in pairs],
        answer=[p.answer for p in pairs],
        wrong=[p.wrong for p in pairs],
    )
    passes = []
    real_trace = demo.trace

    def counting_trace(ids, *a, **k):
        passes.append(len(ids))
        return real_trace(ids, *a, **k)

    seen = []
    monkeypatch.setattr(demo, "trace", counting_trace)
    small = pw.patch(demo, **texts, site="mlp_out", batch_size=4, progress=lambda d, t: seen.append((d, t)))
    monkeypatch.undo()
    assert max(passes) <= 4  # the 20 runs too, not only the patched copies
    assert seen[:5] == [(4, 20), (8, 20), (12, 20), (16, 20), (20, 20)]  # the runs' progress, before the cells'
    assert_close(small.per_pair, pw.patch(demo, **texts, site="mlp_out").per_pair, 1e-5)


# --- files ---------------------------------------------------------------------------------------------


def _result() -> PatchResult:
    return PatchResult(
        per_pair=np.arange(6, dtype=np.float32).reshape(1, 2, 3),
        dims=("layer", "pos"),
        coords={"layer": [0, 1], "pos": [0, 1, 2]},
        tokens=["a", "b", "c"],
        clean_baseline=np.ones(1),
        corrupt_baseline=np.zeros(1),
        settings={},
    )


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_a_save_that_fails_part_way_leaves_the_old_file(tmp_path, monkeypatch, suffix):
    path = tmp_path / f"grid{suffix}"
    _result().save(path)
    before = path.read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        _result().save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def test_an_npz_that_inflates_is_refused_before_it_is_read(tmp_path):
    data = _result().to_dict()
    for key in ("per_pair", "clean_baseline", "corrupt_baseline"):
        data.pop(key)
    path = tmp_path / "bomb.npz"
    np.savez_compressed(
        path,
        meta=np.array(json.dumps(data)),
        per_pair=np.zeros((1, 10_000, 10_000), np.float32),  # 400 MB of zeros in a file of about 400 KB
        clean_baseline=np.ones(1, np.float32),
        corrupt_baseline=np.zeros(1, np.float32),
    )
    assert path.stat().st_size < 1_000_000
    with pytest.raises(pw.ResultFileError, match=r"declares float32 of shape \(1, 10000, 10000\).*\(1, 2, 3\)"):
        PatchResult.load(path)


def test_a_json_result_with_too_few_tokens_is_refused_on_load(tmp_path):
    data = _result().to_dict()
    data["tokens"] = ["a"]
    path = tmp_path / "short.json"
    path.write_text(json.dumps(data))
    with pytest.raises(pw.ResultFileError, match=r"positions \[1, 2\] have no token: the result has 1 tokens"):
        PatchResult.load(path)


# --- the offline page ------------------------------------------------------------------------------------

HOSTILE = ["<!--<script>", "</script><b>x", "__BUNDLE__", "__CSS__", "&amp;", "\u2028"]


def test_hostile_tokens_cannot_change_the_offline_page(demo, tmp_path):
    from patchwidget.ui.export import script_json, standalone_html

    data = {"start": 0, "states": [{"view": {"title": t}} for t in HOSTILE], "edges": {}, "vmax": None}
    page = standalone_html(data, title="<b>IOI</b> __DATA__")
    embedded = page.split('<script type="application/json" id="pw-data">', 1)[1].split("</script>", 1)[0]
    assert json.loads(embedded) == data  # the data round-trips and ends where the template ends it
    assert "<" not in embedded and ">" not in embedded and "&" not in embedded
    assert page.count("<script") == 3  # the template's own three, none from the data
    assert "<title>&lt;b&gt;IOI&lt;/b&gt; __DATA__</title>" in page
    with pytest.raises(pw.ResultFileError, match="JSON cannot carry"):
        script_json({"vmax": float("inf")})


def test_an_infinite_colour_range_is_refused(demo):
    widget = pw.explore(demo, **TEXTS, preview=False)
    for bad in (float("inf"), float("nan"), -1.0):
        with pytest.raises(Exception, match="vmax must be a positive, finite number"):
            widget.vmax = bad
    widget.vmax = 2.0
    widget.close()


# --- command line ---------------------------------------------------------------------------------------


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "patchwidget.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--out", "{tmp}/missing/grid.png"], "the folder .*missing' does not exist"),
        (["--out", "{tmp}/folder.json"], "is a folder"),
        (["--memory-budget", "nan"], "--memory-budget must be a positive number of MB, got nan"),
        (["--model", "{tmp}/no-such-model"], "--model .*no-such-model' could not be loaded"),
    ],
)
def test_bad_command_lines_end_in_one_line_and_status_2(tmp_path, args, message):
    (tmp_path / "folder.json").mkdir()
    done = run_cli("run", *[a.format(tmp=tmp_path) for a in args])
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("patchwidget: error:")
    assert re.search(message, last), last
    assert "cell/s" not in done.stderr  # refused before the grid was computed


# --- widget ---------------------------------------------------------------------------------------------


def test_an_old_request_id_and_a_dict_index_get_an_error_status(demo):
    widget = pw.explore(demo, **TEXTS, preview=False)
    widget._on_msg(widget, {"type": "drill", "request_id": 5, "panel": "resid_pre", "row": 1, "col": 2}, [])
    widget._on_msg(widget, {"type": "back", "request_id": 3, "level": 0}, [])
    assert widget.status["state"] == "error" and "older than request 5" in widget.status["message"]
    assert 3 not in widget.explorer.pending
    widget._on_msg(widget, {"type": "drill", "request_id": 6, "panel": {"id": "resid_pre"}, "row": 1, "col": 2}, [])
    assert widget.status == {
        "state": "error",
        "request_id": 6,
        "done": 0,
        "total": 0,
        "message": "unknown panel {'id': 'resid_pre'}; the view has ['resid_pre']",
    }
    widget.close()


# --- issue 25: a circuit written into another length, deep JSON, NumPy indices ------------------------


@pytest.mark.parametrize("traced", [" Mary and", ""])
def test_circuit_write_refuses_a_trace_of_another_length_before_writing(demo, traced):
    clean = PAIRS[0].clean
    circuit = pw.Circuit([pw.Cell("head_out", 1, head=0, pos=-1), pw.Cell("resid_pre", 2)])
    circuit.sources(demo, clean)
    prompt = clean + traced if traced else " ".join(clean.split()[:5])
    n_traced, n_source = (len(demo.tokenizer(t)["input_ids"]) for t in (prompt, clean))
    assert n_traced != n_source
    with pytest.raises(pw.SettingsError, match=f"the traced prompt has {n_traced} tokens but the circuit's source"):
        with demo.trace(prompt):
            circuit.write(demo, clean)
    with demo.trace(clean):  # the source's own length is written as before
        circuit.write(demo, clean)
        logits = demo.output.logits[0, -1].save()
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("loader", ["circuit", "result"])
def test_a_deeply_nested_file_is_a_result_file_error(tmp_path, loader):
    path = tmp_path / "deep.json"
    path.write_text('{"format": ' + "[" * 100_000 + "]" * 100_000 + "}")
    load = pw.Circuit.load if loader == "circuit" else PatchResult.load
    with pytest.raises(pw.ResultFileError, match="could not read|malformed|not a patchwidget"):
        load(path)


def test_cells_with_numpy_indices_save_load_and_equal_plain_ones(demo, tmp_path):
    grid = pw.patch(demo, **TEXTS, site="head_out", by_position=False, metric="logit_diff_norm")
    layer, head = np.unravel_index(np.argmax(grid.values), grid.values.shape)  # NumPy integers, as users index
    circuit = pw.Circuit([pw.Cell("head_out", layer, head=head), pw.Cell("mlp_out", np.int32(0), pos=np.int64(-1))])
    circuit.faithfulness = np.float32(0.5)
    assert circuit.cells[0] == pw.Cell("head_out", int(layer), head=int(head))
    assert all(type(c.layer) is int for c in circuit.cells) and type(circuit.cells[1].pos) is int
    loaded = pw.Circuit.load(circuit.save(tmp_path / "c.json"))
    assert loaded.cells == circuit.cells and loaded.faithfulness == 0.5


# --- issue 37: progress, budgets, circuits and files as users give them ---------------------------------

NODES = [pw.Cell("embed"), pw.Cell("head_out", 3, head=1), *[pw.Cell("mlp_out", layer) for layer in range(4)]]
CALLS = {  # every entry point that takes progress= and memory_budget=
    "patch": lambda m, **kw: pw.patch(m, **TEXTS, site="mlp_out", **kw),
    "patch_sites": lambda m, **kw: pw.patch_sites(m, **TEXTS, cells=[pw.Cell("mlp_out", 1)], **kw),
    "path_patch": lambda m, **kw: pw.path_patch(m, **TEXTS, receivers="logits", **kw),
    "faithfulness": lambda m, **kw: pw.faithfulness(m, **TEXTS, circuit=NODES, **kw),
    "find_circuit": lambda m, **kw: pw.find_circuit(m, **TEXTS, **kw),
    "find_bottleneck": lambda m, **kw: pw.find_bottleneck(m, **TEXTS, **kw),
    "Circuit.evaluate": lambda m, **kw: pw.Circuit(NODES[1:2]).evaluate(m, **TEXTS, **kw),
}


@pytest.mark.parametrize("name", CALLS)
@pytest.mark.parametrize("progress", [1, "tqdm", object()])
def test_a_progress_that_is_not_callable_is_refused_before_compute(no_forward, name, progress):
    with pytest.raises(pw.SettingsError, match=r"progress must be .*True.*callable"):
        CALLS[name](no_forward, progress=progress)


@pytest.mark.parametrize("name", ["patch", "faithfulness"])
def test_progress_true_draws_a_bar(demo, name, capsys):
    CALLS[name](demo, progress=True)
    err = capsys.readouterr().err
    assert re.search(r"100%\|.*\| (\d+)/\1 ", err), err[-300:]


@pytest.mark.parametrize("name", ["patch", "patch_sites", "faithfulness"])
@pytest.mark.parametrize("budget", [3e6, 2.5 * 2**20])
def test_a_memory_budget_may_be_a_float(demo, name, budget):
    got, want = CALLS[name](demo, memory_budget=budget), CALLS[name](demo, memory_budget=int(budget))
    if name == "faithfulness":
        assert got == want
    else:
        values = (lambda r: r.per_pair_joint) if name == "patch_sites" else (lambda r: r.per_pair)
        assert_close(values(got), values(want), 1e-6)


@pytest.mark.parametrize("circuit", [None, 3, "head_out L3 H1", {"embed": 1}])
def test_a_circuit_of_another_kind_is_refused_naming_the_forms(no_forward, circuit):
    with pytest.raises(pw.SettingsError, match=r"circuit must be a pw\.Circuit, a list of pw\.Cell nodes or one"):
        pw.faithfulness(no_forward, **TEXTS, circuit=circuit)


def test_a_single_cell_is_a_one_node_circuit(demo):
    one = pw.Cell("head_out", 3, head=1)
    assert pw.faithfulness(demo, **TEXTS, circuit=one) == pw.faithfulness(demo, **TEXTS, circuit=[one])


def test_a_folder_that_takes_no_new_file_names_the_users_path(tmp_path, monkeypatch):
    import tempfile

    path = tmp_path / "grid.json"
    _result().save(path)
    before = path.read_bytes()

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / ".grid.json.x1y2.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(pw.ResultFileError, match=re.escape(f"cannot write to {str(path)!r}: Permission denied")):
        _result().save(path)
    assert path.read_bytes() == before


def test_saved_files_take_the_umask_and_a_replaced_file_keeps_its_mode(tmp_path):
    old = os.umask(0o022)
    try:
        fresh = _result().save(tmp_path / "fresh.json")
        assert fresh.stat().st_mode & 0o777 == 0o644
        kept = tmp_path / "kept.json"
        kept.write_text("{}")
        kept.chmod(0o640)
        _result().save(kept)
        assert kept.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_a_version_1_circuit_keeps_no_mib_keys_in_its_restore_curve(tmp_path):
    old = {
        "format": "patchwidget.Circuit",
        "version": 1,
        "cells": [{"site": "head_out", "layer": 3, "head": 1}],
        "faithfulness": 0.95,
        "curve": {"percent": [50, 100], "size": [0, 1], "faithfulness": [0.0, 0.95], "cpr": 0.5, "cmd": 0.3},
    }
    (tmp_path / "v1.json").write_text(json.dumps(old))
    loaded = pw.Circuit.load(tmp_path / "v1.json")
    again = pw.Circuit.load(loaded.save(tmp_path / "v2.json"))
    for curve in (loaded.curve, again.curve):
        assert curve["kind"] == "restore" and curve["restore"] == [0.0, 0.95] and curve["area"] == 0.5
        assert not {"faithfulness", "cpr", "cmd"} & set(curve), curve


def test_faithfulness_on_takes_the_circuits_own_ablation_and_metric(demo):
    found = pw.find_circuit(demo, **TEXTS, ablation="mean", metric="logit_diff_norm", target=0.9)
    held = demo_data.as_prompts(demo_data.ioi_pairs(4, seed=21))
    same = pw.faithfulness(demo, **held, circuit=found, ablation="mean", metric="logit_diff_norm")
    assert found.faithfulness_on(demo, **held) == same
    assert found.faithfulness_on(demo, **held, ablation="patch") == pw.faithfulness(
        demo, **held, circuit=found, ablation="patch", metric="logit_diff_norm"
    )
