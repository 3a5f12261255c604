"""The plain twin of span-aligned patching (``reference_span_patch``), checked by independent means.

On the bundled tiny GPT-2: where both prompts have one length and the positions coincide it must equal
``reference_patch``; across lengths it must equal what the same patch means computed another way
(the input embeddings rewritten, the attention output as the sum of its heads, the unembedding of a
patched final residual stream).
"""

from __future__ import annotations

import pytest
import torch

from .close import near
from .reference import capture, reference_patch, reference_span_patch

SOURCE = "When Mary and John went to the store , John gave a drink to"  # 14 tokens
TARGET = "When Mary and John went to the store , Mary gave a drink to"  # 14 tokens
LONGER = "Then Tom and Anna had fun at the park , and Tom gave a book to"  # 16 tokens


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


@pytest.fixture(scope="module")
def gpt2(demo):
    return demo._module


@pytest.fixture(scope="module")
def ids(demo):
    tok = demo.tokenizer
    out = {name: torch.tensor(tok(text)["input_ids"]) for name, text in (("source", SOURCE), ("target", TARGET))}
    out["longer"] = torch.tensor(tok(LONGER)["input_ids"])
    out["answer"], out["wrong"] = tok.convert_tokens_to_ids("Mary"), tok.convert_tokens_to_ids("John")
    assert (len(out["source"]), len(out["target"]), len(out["longer"])) == (14, 14, 16)
    return out


def logit_diff(gpt2, ids, answer, wrong):
    with torch.no_grad():
        logits = gpt2(ids[None]).logits[0, -1]
    return float(logits[answer] - logits[wrong])


# The bundled model's heads with weights (training switched the others off): patching a dead head does nothing.
LIVE_HEAD = {0: 3, 1: 0, 3: 1}


@pytest.mark.parametrize("site", ["resid_pre", "attn_out", "mlp_out", "head_out"])
@pytest.mark.parametrize("layer", [0, 3])
def test_same_length_same_positions_equals_reference_patch(gpt2, ids, site, layer):
    positions = [1, 3, 9, 13]
    unit = LIVE_HEAD[layer] if site == "head_out" else None
    expected = reference_patch(gpt2, ids["source"], ids["target"], site, [layer], [unit or 0], positions, False)
    expected = float(expected[0, 0, 0, ids["answer"]] - expected[0, 0, 0, ids["wrong"]])
    got = reference_span_patch(
        gpt2, ids["source"], ids["target"], site, layer, positions, positions, ids["answer"], ids["wrong"], unit
    )
    assert got == near(expected, 1e-6)
    assert abs(got - logit_diff(gpt2, ids["target"], ids["answer"], ids["wrong"])) > 1e-3  # the patch did something


@pytest.mark.parametrize("layer", [0, 1, 3])
def test_every_position_of_the_residual_stream_gives_the_source_run(gpt2, ids, layer):
    everything = list(range(14))
    got = reference_span_patch(
        gpt2, ids["source"], ids["target"], "resid_pre", layer, everything, everything, ids["answer"], ids["wrong"]
    )
    assert got == near(logit_diff(gpt2, ids["source"], ids["answer"], ids["wrong"]), 1e-5)


def test_positions_pair_up_across_lengths_at_the_embeddings(gpt2, ids):
    # resid_pre at layer 0 is token embedding + position embedding, so writing the source's value at
    # target position t is the same as feeding the target an input embedding that makes it so.
    source, target = ids["source"], ids["longer"]
    src_pos, tgt_pos = [3, 9, 12, 13], [3, 11, 14, 15]
    got = reference_span_patch(gpt2, source, target, "resid_pre", 0, src_pos, tgt_pos, ids["answer"], ids["wrong"])
    wte, wpe = gpt2.transformer.wte.weight, gpt2.transformer.wpe.weight
    with torch.no_grad():
        embeds = wte[target].clone()  # (pos, d_model)
        for s, t in zip(src_pos, tgt_pos):
            embeds[t] = wte[source[s]] + wpe[s] - wpe[t]
        logits = gpt2(inputs_embeds=embeds[None]).logits[0, -1]
    assert got == near(float(logits[ids["answer"]] - logits[ids["wrong"]]), 1e-5)
    assert abs(got - logit_diff(gpt2, target, ids["answer"], ids["wrong"])) > 1e-3


@pytest.mark.parametrize("layer", [0, 3])
def test_all_heads_at_once_equal_the_attention_output_across_lengths(gpt2, ids, layer):
    # attn_out is the output projection of the heads at each position, so every head's value there is attn_out's.
    args = (gpt2, ids["source"], ids["longer"])
    positions = ([1, 3, 9, 13], [1, 3, 11, 15])
    heads = reference_span_patch(*args, "head_out", layer, *positions, ids["answer"], ids["wrong"], None)
    whole = reference_span_patch(*args, "attn_out", layer, *positions, ids["answer"], ids["wrong"])
    assert heads == near(whole, 1e-5)
    dead = (LIVE_HEAD[layer] + 1) % 4  # a head without weights: patching it alone changes nothing
    one_head = reference_span_patch(*args, "head_out", layer, *positions, ids["answer"], ids["wrong"], dead)
    assert abs(one_head - heads) > 1e-3  # unit= is one head, not all of them
    assert abs(heads - logit_diff(gpt2, ids["longer"], ids["answer"], ids["wrong"])) > 1e-3  # the patch did something


def test_the_last_layer_at_the_last_position_reads_like_the_source_across_lengths(gpt2, ids):
    last = gpt2.config.n_layer - 1
    source, target = ids["source"], ids["longer"]
    # After the last block only the final norm and the unembedding act, position by position.
    got = reference_span_patch(gpt2, source, target, "resid_post", last, [13], [15], ids["answer"], ids["wrong"])
    assert got == near(logit_diff(gpt2, source, ids["answer"], ids["wrong"]), 1e-5)
    # mlp_out there: the target's own residual stream before the MLP plus the source's MLP output, unembedded.
    got = reference_span_patch(gpt2, source, target, "mlp_out", last, [13], [15], ids["answer"], ids["wrong"])
    mid = capture(gpt2, target, "resid_mid", last)[15, 0]  # (d_model,)
    mlp = capture(gpt2, source, "mlp_out", last)[13, 0]
    with torch.no_grad():
        logits = gpt2.lm_head(gpt2.transformer.ln_f(mid + mlp))
    assert got == near(float(logits[ids["answer"]] - logits[ids["wrong"]]), 1e-5)


@pytest.mark.parametrize(
    "site, source_positions, target_positions, match",
    [
        ("resid_pre", [1, 2], [1], "2 source positions but 1 target positions"),
        ("resid_pre", [14], [15], "source positions .* out of range for 14 tokens"),
        ("resid_pre", [13], [16], "target positions .* out of range for 16 tokens"),
        ("attn_pattern", [13], [15], "attn_pattern"),
    ],
)
def test_refusals(gpt2, ids, site, source_positions, target_positions, match):
    with pytest.raises(ValueError, match=match):
        reference_span_patch(
            gpt2, ids["source"], ids["longer"], site, 0, source_positions, target_positions, ids["answer"], ids["wrong"]
        )
