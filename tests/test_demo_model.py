"""The bundled demo model: small, loaded like a hub model, and good at its tasks."""

from __future__ import annotations

import random

import pytest
import torch

import patchwidget as pw
from patchwidget import demo_data


def test_files_are_small_and_not_pickle():
    files = {p.name: p.stat().st_size for p in pw.DEMO_MODEL_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(files)
    assert sum(files.values()) <= 10 * 2**20
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)


def test_architecture(demo):
    assert demo.config.model_type == "gpt2"
    assert demo.config.n_layer >= 4 and demo.config.n_head >= 4


@pytest.mark.parametrize("task", ["ioi", "induction", "fact"])
def test_held_out_accuracy(demo, task):
    examples = demo_data.held_out_examples(task, 300)
    hf, tok = demo._module, demo.tokenizer
    correct = 0
    with torch.no_grad():
        for prompt, answer in examples:
            top = hf(torch.tensor([tok(prompt)["input_ids"]])).logits[0, -1].argmax()
            correct += tok.decode([int(top)]) == answer
    assert correct / len(examples) >= 0.95


def test_held_out_examples_were_not_trained_on():
    """Replays the training stream exactly as scripts/train_demo_model.py draws it (its default steps,
    batch size and seed) and looks for every held-out prompt in it."""
    steps, batch_size, seed = 5000, 64, 0
    rng = random.Random(seed)
    trained = {demo_data.training_text(rng) for _ in range(steps * batch_size)}
    prompts_seen = {" ".join(text.split()[:-1]) for text in trained}  # each text is a prompt and its answer
    for task in ("ioi", "fact"):
        held_out = demo_data.held_out_examples(task, 300)
        assert held_out and not any(prompt in prompts_seen for prompt, _ in held_out), task
    # The check has power: prompts made the training way are found in the stream.
    again = random.Random(seed)
    assert " ".join(demo_data.training_text(again).split()[:-1]) in prompts_seen


def test_load_model_accepts_wrapped_and_plain_models(demo):
    assert pw.load_model(demo) is demo
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(pw.DEMO_MODEL_DIR)
    tok = AutoTokenizer.from_pretrained(pw.DEMO_MODEL_DIR)
    wrapped = pw.load_model(hf, tokenizer=tok)
    p = demo_data.fact_pairs(1)[0]
    a = pw.patch(wrapped, p.clean, p.corrupt, answer=p.answer, wrong=p.wrong)
    b = pw.patch(demo, p.clean, p.corrupt, answer=p.answer, wrong=p.wrong)
    assert torch.allclose(torch.tensor(a.values), torch.tensor(b.values), atol=1e-5)
    with pytest.raises(pw.PatchwidgetError, match="needs its tokenizer"):
        pw.load_model(hf)
    with pytest.raises(pw.PatchwidgetError, match="cannot load a model from 'int'"):
        pw.load_model(3)
