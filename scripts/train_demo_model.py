"""Train the small GPT-2 model bundled with patchwidget.

Seeded and reproducible; about a few minutes on 2 CPU cores. Writes
``config.json``, ``model.safetensors``, ``tokenizer.json`` (and the small
tokenizer config files transformers reads) into ``patchwidget/data/demo_model/``.

    python scripts/train_demo_model.py            # train and write the files
    python scripts/train_demo_model.py --check    # also print held-out accuracy, head scores and head grids
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from patchwidget import demo_data

OUT = Path(__file__).resolve().parent.parent / "patchwidget" / "data" / "demo_model"
EOS, UNK = demo_data.SPECIAL_TOKENS
STEPS, BATCH_SIZE, SEED = 3000, 64, 0  # the bundled model's run (tests replay its data stream)
# A group-lasso penalty on each head's weights, switched on once the tasks are
# learned: heads a task does not need fade out, so each task ends up on a few heads a workshop can find.
HEAD_PENALTY, HEAD_PENALTY_FROM = 6e-3, 0.4


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer: one token per word or punctuation mark."""
    vocab = {word: i for i, word in enumerate(demo_data.vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=EOS, unk_token=UNK)


def build_model(vocab_size: int) -> GPT2LMHeadModel:
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=64,
        n_embd=128,
        n_layer=4,
        n_head=4,
        n_inner=512,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return GPT2LMHeadModel(config)


def batch(tokenizer, rng: random.Random, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One batch as two padded parts, short texts and long ones (less padding): (token ids, labels) each.

    Labels before an example's trained part, and on padding, are -100.
    """
    examples = sorted((demo_data.training_example(rng) for _ in range(size)), key=lambda e: len(e[0].split()))
    parts = []
    for chunk in (examples[: size // 2], examples[size // 2 :]):
        enc = tokenizer([text for text, _ in chunk], padding=True, return_tensors="pt")
        labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
        for row, (_, first) in enumerate(chunk):
            labels[row, : first + 1] = -100  # label t is predicted at position t - 1: train from position `first` on
        parts.append((enc.input_ids, labels))
    return parts


def batch_loss(model, parts: list[tuple[torch.Tensor, torch.Tensor]], device: str) -> torch.Tensor:
    """Mean next-token cross-entropy over every labelled token of all parts of a batch."""
    total, count = 0.0, 0
    for ids, labels in parts:
        logits = model(ids.to(device)).logits[:, :-1]  # (batch, pos - 1, vocab): position t predicts token t + 1
        targets = labels[:, 1:].to(device)
        total = total + torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="sum"
        )
        count += int((targets != -100).sum())
    return total / count


@torch.no_grad()
def accuracy(model, tokenizer, task: str, n: int = 500) -> float:
    """Share of held-out prompts whose top next-token prediction is the answer."""
    examples = demo_data.held_out_examples(task, n)
    correct = 0
    for prompt, answer in examples:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        top = model(ids).logits[0, -1].argmax().item()
        correct += tokenizer.convert_ids_to_tokens(top) == answer
    return correct / n


@torch.no_grad()
def second_copy_accuracy(model, tokenizer, n: int = 300) -> float:
    """Next-token accuracy over every position of the second copy, on held-out repeated sequences."""
    correct = total = 0
    for words, start in demo_data.held_out_repeats(n):
        ids = tokenizer(" ".join(words), return_tensors="pt").input_ids
        guesses = model(ids).logits[0, start:-1].argmax(-1)  # position t predicts token t + 1
        correct += int((guesses == ids[0, start + 1 :]).sum())
        total += len(guesses)
    return correct / total


def head_norms(model: GPT2LMHeadModel) -> torch.Tensor:
    """Each head's weight norm, ``(layer, head)``: its query, key, value and output weights together.

    GPT-2's ``Conv1D`` weights are (in, out): a head's query, key and value weights are columns of
    ``c_attn`` (one block of columns in each third), its output weights rows of ``c_proj``.
    """
    norms = []
    for block in model.transformer.h:
        d, n = block.attn.embed_dim, block.attn.num_heads
        qkv = block.attn.c_attn.weight.reshape(d, 3, n, d // n)
        out = block.attn.c_proj.weight.reshape(n, d // n, d)
        norms.append((qkv.pow(2).sum((0, 1, 3)) + out.pow(2).sum((1, 2))).sqrt())
    return torch.stack(norms)


def train(
    steps: int,
    batch_size: int,
    seed: int,
    device: str = "cpu",
    head_penalty: float = HEAD_PENALTY,
    head_penalty_from: float = HEAD_PENALTY_FROM,
) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]:
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    rng = random.Random(seed)
    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.05)
    start = time.time()
    for step in range(steps):
        loss = batch_loss(model, batch(tokenizer, rng, batch_size), device)
        penalised = loss
        if head_penalty and step >= head_penalty_from * steps:
            penalised = loss + head_penalty * head_norms(model).sum()
        opt.zero_grad()
        penalised.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 250 == 0 or step == steps - 1:
            with torch.no_grad():
                norms = head_norms(model)
            heads = int((norms > 0.1 * norms.max()).sum())  # heads whose weights have not faded
            print(
                f"step {step:5d}  loss {loss.item():.3f}  heads in use {heads}  {time.time() - start:6.1f}s", flush=True
            )
    model.eval()
    return model.cpu(), tokenizer


def head_scores(model: Any, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Previous-token and induction scores of every head, ``(layer, head)`` each, read with patchwidget.

    Previous-token score: mean attention from each position to the one before, on 20 texts of
    30 different random words. Induction score: mean attention from each token of a second copy to
    the token after its first occurrence, on 20 held-out repeated sequences. ``model`` is a loaded
    patchwidget model; ``seed`` draws the texts and sequences.
    """
    from patchwidget.core.engine import attention_pattern

    rng = random.Random(seed)
    texts = [" ".join(rng.sample(demo_data.INDUCTION_WORDS, 30)) for _ in range(20)]
    repeats = demo_data.held_out_repeats(20, seed=seed)
    shape = (model.config.n_layer, model.config.n_head)
    prev, induction = np.zeros(shape), np.zeros(shape)
    for layer, head in np.ndindex(shape):
        prev[layer, head] = np.mean([np.diag(attention_pattern(model, t, layer, head), -1).mean() for t in texts])
        scores = []
        for words, start in repeats:
            pattern, length = attention_pattern(model, " ".join(words), layer, head), len(words) - start
            scores += [pattern[q, q - length + 1] for q in range(start, len(words))]
        induction[layer, head] = np.mean(scores)
    return prev, induction


def patch_heads(model: Any, pairs: list[demo_data.PromptPair]) -> np.ndarray:
    """The (layer, head) grid of ``head_out`` patching (denoising, all positions, ``logit_diff_norm``)."""
    import patchwidget as pw

    kw = demo_data.as_prompts(pairs)
    return pw.patch(model, **kw, site="head_out", by_position=False, metric="logit_diff_norm").values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--head-penalty", type=float, default=HEAD_PENALTY, help="group-lasso weight on heads")
    parser.add_argument(
        "--head-penalty-from", type=float, default=HEAD_PENALTY_FROM, help="share of training before the penalty"
    )
    parser.add_argument(
        "--device", default="cpu", help="for quick experiments only: the bundled model is trained on CPU"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (results can depend on it)")
    parser.add_argument(
        "--check", action="store_true", help="print held-out accuracy per task, the head scores and the head grids"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = train(
        args.steps, args.batch_size, args.seed, args.device, args.head_penalty, args.head_penalty_from
    )
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    (args.out / "generation_config.json").unlink(missing_ok=True)
    print(f"wrote {args.out}")
    if args.check:
        for task in ("ioi", "induction", "fact"):
            print(f"held-out accuracy {task:9s} {accuracy(model, tokenizer, task):.3f}")
        print(
            f"held-out accuracy over the second copy of repeated sequences {second_copy_accuracy(model, tokenizer):.3f}"
        )
        import patchwidget as pw

        loaded = pw.load_model(args.out)
        prev, induction = head_scores(loaded)
        np.set_printoptions(precision=2, suppress=True)
        print(f"previous-token score (layer x head)\n{prev}\ninduction score (layer x head)\n{induction}")
        with torch.no_grad():
            print(f"head weight norms (layer x head)\n{head_norms(model).numpy()}")
        pairs = demo_data.induction_pairs(16, kind="key") + demo_data.induction_pairs(16, kind="value")
        for name, grid_pairs in (("IOI, 16 pairs", demo_data.ioi_pairs(16)), ("induction, both kinds, 32", pairs)):
            heads = patch_heads(loaded, grid_pairs)
            share = np.sort(np.abs(heads), axis=None)[-3:].sum() / np.abs(heads).sum()
            print(f"head_out grid, {name} (layer x head; top-3 share of |effect| {share:.2f})\n{heads}")


if __name__ == "__main__":
    main()
