"""The bundled demo model: small, loaded like a hub model, good at its tasks on held-out data, and
solving them with the textbook mechanisms (previous-token and induction heads, a concentrated IOI
circuit). The numbers asserted here are the ones README.md's model card reports."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import patchwidget as pw
from patchwidget import demo_data

from .close import assert_close
from .test_notebooks import _pairs  # the notebooks' claims and these measure the same way

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "train_demo_model.py"


def _script():
    spec = importlib.util.spec_from_file_location("train_demo_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_files_are_small_and_not_pickle():
    files = {p.name: p.stat().st_size for p in pw.DEMO_MODEL_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(files)
    assert sum(files.values()) <= 10 * 2**20
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)


def test_architecture(demo):
    assert demo.config.model_type == "gpt2"
    assert demo.config.n_layer >= 4 and demo.config.n_head >= 4
    longest = demo_data.TRAIN_MAX_WORDS + max(demo_data.HELD_OUT_OFFSETS) + 2 * max(demo_data.HELD_OUT_LENGTHS)
    assert demo.config.n_positions >= longest


@pytest.mark.parametrize("task", ["ioi", "induction", "fact"])
def test_held_out_accuracy(demo, task, one_thread):
    examples = demo_data.held_out_examples(task, 300)
    hf, tok = demo._module, demo.tokenizer
    correct = 0
    with torch.no_grad():
        for prompt, answer in examples:
            top = hf(torch.tensor([tok(prompt)["input_ids"]])).logits[0, -1].argmax()
            correct += tok.decode([int(top)]) == answer
    assert correct / len(examples) >= 0.95


def test_held_out_accuracy_over_the_whole_second_copy(demo, one_thread):
    """Next-token accuracy at every position of the second copy, on lengths and offsets training never used."""
    hf, tok = demo._module, demo.tokenizer
    correct = total = 0
    with torch.no_grad():
        for words, start in demo_data.held_out_repeats(300):
            ids = torch.tensor([tok(" ".join(words))["input_ids"]])
            guesses = hf(ids).logits[0, start:-1].argmax(-1)  # position t predicts token t + 1
            correct += int((guesses == ids[0, start + 1 :]).sum())
            total += len(guesses)
    assert total > 300 and correct / total >= 0.95


def _induction_shape(text: str, start: int) -> tuple[int, int]:
    """(length, offset) of a training text made of a prefix and repeats of a sequence of distinct words."""
    words = text.split()
    offset = words.index(words[start])  # the second copy's first word first occurs where the sequence starts
    return start - offset, offset


def test_held_out_examples_were_not_trained_on():
    """Replays the training stream exactly as scripts/train_demo_model.py draws it (its default steps,
    batch size and seed) and looks for every held-out prompt, and every held-out induction shape, in it."""
    script = _script()
    steps, batch_size, seed = script.STEPS, script.BATCH_SIZE, script.SEED
    rng = random.Random(seed)
    stream = [demo_data.training_example(rng) for _ in range(steps * batch_size)]
    prompts_seen = {" ".join(text.split()[:-1]) for text, start in stream if start == 0}  # a prompt and its answer
    for task in ("ioi", "fact"):
        held_out = demo_data.held_out_examples(task, 300)
        assert held_out and not any(prompt in prompts_seen for prompt, _ in held_out), task
    shapes = {_induction_shape(text, start) for text, start in stream if start > 0}
    assert shapes == {(n, k) for n in demo_data.TRAIN_LENGTHS for k in demo_data.TRAIN_OFFSETS}
    held_out = {(len(words) - start, 2 * start - len(words)) for words, start in demo_data.held_out_repeats(300)}
    assert held_out == {(n, k) for n in demo_data.HELD_OUT_LENGTHS for k in demo_data.HELD_OUT_OFFSETS}
    assert not shapes & held_out
    assert not {n for n, _ in shapes} & {n for n, _ in held_out} and not {k for _, k in shapes} & {
        k for _, k in held_out
    }
    # The check has power: prompts and shapes made the training way are found in the stream.
    again = random.Random(seed)
    text, start = demo_data.training_example(again)
    assert (" ".join(text.split()[:-1]) in prompts_seen) if start == 0 else (_induction_shape(text, start) in shapes)


def test_previous_token_head_then_induction_head(demo, one_thread):
    """A previous-token head, an induction head in a later layer, and head patching that finds both: on
    induction pairs of both kinds (16 that change the keys, 16 that change the copied word) the largest
    effect is on the induction head and the previous-token head's is clearly non-zero; the path from the
    previous-token head into the induction head's keys restores the key pairs."""
    prev, induction = _script().head_scores(demo, seed=11)
    helper = np.unravel_index(np.argmax(prev), prev.shape)
    assert prev[helper] >= 0.5, prev
    inductor = np.unravel_index(np.argmax(induction), induction.shape)
    assert induction[inductor] >= 0.4 and inductor[0] > helper[0], induction
    assert induction[helper] < 0.2 and prev[inductor] < 0.2  # the scores discriminate

    key, value = (demo_data.induction_pairs(16, kind=kind) for kind in ("key", "value"))
    heads = pw.patch(demo, **_pairs(key + value), site="head_out", by_position=False).values
    assert np.unravel_index(np.argmax(heads), heads.shape) == inductor and heads[inductor] >= 0.9
    assert heads[helper] >= 0.3 and np.sort(np.abs(heads), axis=None)[-3] < 0.05  # no third head takes part
    receivers = [pw.Cell("head_k", int(inductor[0]), head=int(inductor[1]))]
    assert pw.path_patch(demo, **_pairs(key), receivers=receivers).values[helper] >= 0.8


def test_ioi_mechanism_is_concentrated(demo, one_thread):
    """The three largest |effects| of the (layer, head) grid, on 16 pairs, carry at least 70 % of the grid's
    total |effect| (issue 15), and they are the heads examples/ioi_workshop.ipynb names: L0H3, L1H0, L3H1."""
    heads = pw.patch(demo, **_pairs(demo_data.ioi_pairs(16)), site="head_out", by_position=False).values
    order = np.argsort(np.abs(heads).ravel())[::-1]
    top3 = {divmod(int(i), heads.shape[1]) for i in order[:3]}
    assert top3 == {(0, 3), (1, 0), (3, 1)}
    effects = np.abs(heads).ravel()[order]
    assert effects[:3].sum() >= 0.7 * effects.sum()


def test_training_is_deterministic(one_thread):
    """Two short runs of the training script's own loop give the same weights, bit for bit."""
    script = _script()
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        runs = [script.train(steps=3, batch_size=8, seed=0)[0].state_dict() for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(deterministic)
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


@pytest.mark.skipif(not os.environ.get("PATCHWIDGET_RETRAIN"), reason="retrains for minutes: PATCHWIDGET_RETRAIN=1")
def test_retraining_reproduces_the_bundled_weights(tmp_path):
    """The full training run writes the committed model.safetensors again, byte for byte."""
    import subprocess
    import sys

    subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], check=True, capture_output=True)

    def digest(path):
        return hashlib.sha256(path.read_bytes()).hexdigest()

    assert digest(tmp_path / "model.safetensors") == digest(pw.DEMO_MODEL_DIR / "model.safetensors")


def test_load_model_accepts_wrapped_and_plain_models(demo):
    assert pw.load_model(demo) is demo
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(pw.DEMO_MODEL_DIR)
    tok = AutoTokenizer.from_pretrained(pw.DEMO_MODEL_DIR)
    wrapped = pw.load_model(hf, tokenizer=tok)
    p = demo_data.fact_pairs(1)[0]
    a = pw.patch(wrapped, p.clean, p.corrupt, answer=p.answer, wrong=p.wrong)
    b = pw.patch(demo, p.clean, p.corrupt, answer=p.answer, wrong=p.wrong)
    assert_close(torch.tensor(a.values), torch.tensor(b.values), 1e-5)
    with pytest.raises(pw.PatchwidgetError, match="needs its tokenizer"):
        pw.load_model(hf)
    with pytest.raises(pw.PatchwidgetError, match="cannot load a model from 'int'"):
        pw.load_model(3)
