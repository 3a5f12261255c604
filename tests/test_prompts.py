"""Tokenising prompt pairs: what prepare_prompts returns, and where noise goes."""

from __future__ import annotations

import pytest
import torch

import patchwidget as pw
from patchwidget.data.prompts import prepare_prompts
from patchwidget.data.templates import token_strings


def test_a_pair_becomes_token_ids_answers_and_tokens(tokenizer):
    batch = prepare_prompts(
        tokenizer, "The capital of France is", "The capital of Japan is", answer="Paris", wrong="Tokyo"
    )
    assert (batch.n_pairs, batch.n_pos) == (1, 5)
    assert batch.tokens == ["The", "capital", "of", "France", "is"]
    assert token_strings(tokenizer, batch.corrupt_ids[0]) == ["The", "capital", "of", "Japan", "is"]
    assert tokenizer.decode(batch.answer_ids) == "Paris" and tokenizer.decode(batch.wrong_ids) == "Tokyo"


def test_one_answer_applies_to_every_pair_and_rows_can_be_taken(tokenizer):
    clean = ["The capital of France is", "The capital of Spain is"]
    corrupt = ["The capital of Japan is", "The capital of Italy is"]
    batch = prepare_prompts(tokenizer, clean, corrupt, answer=["Paris", "Madrid"], wrong="Rome")
    assert batch.wrong == ["Rome", "Rome"]
    second = batch.rows(torch.tensor([1]))
    assert second.n_pairs == 1 and torch.equal(second.clean_ids[0], batch.clean_ids[1])


def test_noise_positions_come_from_the_words(tokenizer):
    batch = prepare_prompts(tokenizer, "The capital of France is", pw.noise("France"), answer="Paris", wrong="Tokyo")
    assert batch.noise_positions == [[3]]
    by_index = prepare_prompts(
        tokenizer, "The capital of France is", pw.noise(positions=[-2, 0]), answer="Paris", wrong="Tokyo"
    )
    assert by_index.noise_positions == [[0, 3]]
    with pytest.raises(pw.PromptError, match="noise word 'Spain' does not occur"):
        prepare_prompts(tokenizer, "The capital of France is", pw.noise("Spain"), answer="Paris", wrong="Tokyo")
