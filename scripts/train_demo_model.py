"""Train the small GPT-2 model bundled with patchwidget.

Seeded and reproducible; about a few minutes on 2 CPU cores. Writes
``config.json``, ``model.safetensors``, ``tokenizer.json`` (and the small
tokenizer config files transformers reads) into ``patchwidget/demo_model/``.

    python scripts/train_demo_model.py            # train and write the files
    python scripts/train_demo_model.py --check    # also print held-out accuracy
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from patchwidget import demo_data

OUT = Path(__file__).resolve().parent.parent / "patchwidget" / "demo_model"
EOS, UNK = demo_data.SPECIAL_TOKENS


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


def batch(tokenizer, rng: random.Random, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    texts = [demo_data.training_text(rng) for _ in range(size)]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
    return enc.input_ids, labels


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


def train(steps: int, batch_size: int, seed: int) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]:
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    rng = random.Random(seed)
    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.05)
    start = time.time()
    for step in range(steps):
        ids, labels = batch(tokenizer, rng, batch_size)
        loss = model(ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 250 == 0 or step == steps - 1:
            print(f"step {step:5d}  loss {loss.item():.3f}  {time.time() - start:6.1f}s", flush=True)
    model.eval()
    return model, tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--check", action="store_true", help="print held-out accuracy per task")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model, tokenizer = train(args.steps, args.batch_size, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    (args.out / "generation_config.json").unlink(missing_ok=True)
    print(f"wrote {args.out}")
    if args.check:
        for task in ("ioi", "induction", "fact"):
            print(f"held-out accuracy {task:9s} {accuracy(model, tokenizer, task):.3f}")


if __name__ == "__main__":
    main()
