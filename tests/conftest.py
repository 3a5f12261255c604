"""Shared fixtures: the bundled model and tiny random models of other architectures."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoTokenizer,
    GemmaConfig,
    GemmaForCausalLM,
    GPTJConfig,
    GPTJForCausalLM,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

import patchwidget as pw


def _one_torch_thread():
    """One torch thread for the test (or the module), restored afterwards."""
    # A forward pass of these tiny models is a few milliseconds on one thread, but can take a hundred times
    # longer when threads fight over a busy CPU; the values do not depend on it.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


one_thread = pytest.fixture(_one_torch_thread)  # for one test: ask for ``one_thread``
# For a whole module: ``pytestmark = pytest.mark.usefixtures("one_thread_per_module")``.
one_thread_per_module = pytest.fixture(scope="module")(_one_torch_thread)


@pytest.fixture(scope="session")
def demo():
    return pw.load_model()


@pytest.fixture(scope="session")
def tokenizer():
    return AutoTokenizer.from_pretrained(pw.DEMO_MODEL_DIR)


def _tiny(config_cls, model_cls, tokenizer, **extra):
    torch.manual_seed(0)
    config = config_cls(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        initializer_range=0.15,
        attn_implementation="eager",
        **extra,
    )
    return model_cls(config).eval()


def _gptj(tokenizer):
    torch.manual_seed(0)
    config = GPTJConfig(
        vocab_size=len(tokenizer),
        n_embd=64,
        n_layer=3,
        n_head=4,
        n_positions=64,
        rotary_dim=8,
        initializer_range=0.15,
        attn_implementation="eager",
    )
    return GPTJForCausalLM(config).eval()


# Randomly initialised Hugging Face models of each supported architecture family, built the same way on each call.
TINY = {
    "gpt_neox": lambda tok: _tiny(GPTNeoXConfig, GPTNeoXForCausalLM, tok, use_parallel_residual=True),
    "llama": lambda tok: _tiny(LlamaConfig, LlamaForCausalLM, tok, num_key_value_heads=4),
    "qwen2-gqa": lambda tok: _tiny(Qwen2Config, Qwen2ForCausalLM, tok, num_key_value_heads=2),
    "mistral-gqa": lambda tok: _tiny(MistralConfig, MistralForCausalLM, tok, num_key_value_heads=2),
    "gemma-gqa": lambda tok: _tiny(GemmaConfig, GemmaForCausalLM, tok, num_key_value_heads=1, head_dim=8),
    "gptj": _gptj,
}


@pytest.fixture(scope="session")
def tiny_models(tokenizer, demo):
    """Wrapped tiny models of every architecture family, and the bundled GPT-2 demo model."""
    models = {name: pw.load_model(build(tokenizer), tokenizer=tokenizer) for name, build in TINY.items()}
    return {"gpt2-demo": demo, **models}
