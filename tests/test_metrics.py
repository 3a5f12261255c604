"""The metrics, on logits written by hand."""

from __future__ import annotations

import pytest
import torch

import patchwidget as pw
from patchwidget.core import metrics as M

LOGITS = torch.tensor([[2.0, 0.5, 0.0], [0.0, 1.0, 3.0]])
ANSWER, WRONG = torch.tensor([0, 2]), torch.tensor([1, 1])


def test_built_in_metrics():
    torch.testing.assert_close(M.resolve("logit_diff")(LOGITS, ANSWER, WRONG, LOGITS), torch.tensor([1.5, 2.0]))
    p = M.resolve("prob")(LOGITS, ANSWER, WRONG, LOGITS)
    torch.testing.assert_close(p, LOGITS.softmax(-1)[[0, 1], [0, 2]])
    torch.testing.assert_close(M.resolve("kl")(LOGITS, ANSWER, WRONG, LOGITS), torch.zeros(2))
    assert (M.resolve("kl")(LOGITS.flip(-1), ANSWER, WRONG, LOGITS) > 0).all()


def test_normalize_maps_clean_to_one_and_corrupt_to_zero():
    values = torch.tensor([[3.0, 1.0, 2.0]])
    torch.testing.assert_close(
        M.normalize(values, torch.tensor([3.0]), torch.tensor([1.0])), torch.tensor([[1, 0, 0.5]])
    )


def test_callables_with_one_or_three_arguments():
    one = M.resolve(lambda logits: logits[:, 2], vocab=3)
    three = M.resolve(lambda logits, a, w: logits[range(len(a)), a] * 2, vocab=3)
    torch.testing.assert_close(one(LOGITS, ANSWER, WRONG, LOGITS), torch.tensor([0.0, 3.0]))
    torch.testing.assert_close(three(LOGITS, ANSWER, WRONG, LOGITS), torch.tensor([4.0, 6.0]))


def test_unknown_names_are_refused():
    with pytest.raises(pw.UnknownMetricError, match="unknown metric 'accuracy'"):
        M.resolve("accuracy")
    assert M.metric_name(lambda logits: logits[:, 0]) == "<lambda>" and M.metric_name("kl") == "kl"
