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


def test_resolved_once_into_a_value_that_says_what_it_is():
    """The value every layer below an entry point reads: name, function, normalised, two columns enough."""
    norm, prob = M.resolve("logit_diff_norm"), M.resolve("prob")
    assert (norm.name, norm.normalized, norm.answer_columns_only) == ("logit_diff_norm", True, True)
    assert (prob.name, prob.normalized, prob.answer_columns_only) == ("prob", False, False)
    custom = M.resolve(lambda logits: logits[:, 0], vocab=3)
    assert (custom.name, custom.normalized, custom.answer_columns_only) == ("<lambda>", False, False)
    assert M.resolve(norm) is norm  # an entry point called by another receives the value, not the name again


def _trial_counter(vocab: int):
    """A metric that counts the made-up logits ``resolve`` tries it on (one trial per resolution)."""
    trial = torch.randn(3, vocab, generator=torch.Generator().manual_seed(0))
    trials = []

    def counted(logits, answer, wrong):
        if logits.shape == trial.shape and torch.equal(logits, trial):
            trials.append(1)
        return logits[torch.arange(len(answer)), answer] - logits[torch.arange(len(answer)), wrong]

    return counted, trials


@pytest.mark.parametrize("search", ["find_circuit", "find_bottleneck"])
def test_a_search_resolves_its_metric_once(demo, search):
    """A search calls the loop many times (estimates, joint patches, faithfulness): the metric is resolved
    once, at the entry point, and every call below receives that value."""
    from patchwidget import demo_data

    pairs = demo_data.ioi_pairs(2)
    texts = dict(
        clean=[p.clean for p in pairs],
        corrupt=[p.corrupt for p in pairs],
        answer=[p.answer for p in pairs],
        wrong=[p.wrong for p in pairs],
    )
    metric, trials = _trial_counter(demo.config.vocab_size)
    getattr(pw, search)(demo, **texts, metric=metric, target=0.5)
    assert len(trials) == 1
