"""Metrics: what "how much of the behaviour comes back" means, as a number.

Every metric reads the logits at the last position, shaped ``(batch, vocab)``,
and returns one value per row.

- ``logit_diff``: answer logit minus wrong logit.
- ``logit_diff_norm``: the logit difference rescaled per prompt pair so that
  the clean run scores 1 and the corrupted run 0.
- ``prob``: probability of the answer.
- ``kl``: KL divergence from the clean run's next-token distribution.
- any callable ``f(logits)`` or ``f(logits, answer_ids, wrong_ids)``.

Example:
    >>> import torch
    >>> logits = torch.tensor([[2.0, 0.5, 0.0]])
    >>> logit_diff(logits, torch.tensor([0]), torch.tensor([1]))
    tensor([1.5000])
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

from .sites import PatchwidgetError

MetricFn = Callable[..., torch.Tensor]
Metric = str | MetricFn
METRICS = ("logit_diff", "logit_diff_norm", "prob", "kl")


class UnknownMetricError(PatchwidgetError):
    pass


def logit_diff(logits: torch.Tensor, answer: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    rows = torch.arange(logits.shape[0])
    return logits[rows, answer] - logits[rows, wrong]


def prob(logits: torch.Tensor, answer: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    return logits.float().softmax(-1)[torch.arange(logits.shape[0]), answer]


def kl(logits: torch.Tensor, clean_logits: torch.Tensor) -> torch.Tensor:
    """KL(clean || patched) per row; both are ``(batch, vocab)``."""
    clean_logp = clean_logits.float().log_softmax(-1)
    logp = logits.float().log_softmax(-1)
    return (clean_logp.exp() * (clean_logp - logp)).sum(-1)


def check_metric(metric: Metric) -> None:
    if callable(metric):
        return
    if metric not in METRICS:
        raise UnknownMetricError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}, or pass a callable")


def metric_name(metric: Metric) -> str:
    return metric if isinstance(metric, str) else getattr(metric, "__name__", "custom")


def resolve(metric: Metric) -> MetricFn:
    """The row-wise function ``f(logits, answer_ids, wrong_ids, clean_logits)``
    for ``metric``; ``logit_diff_norm`` is computed raw here and normalised by
    ``normalize`` once the baselines are known."""
    if metric in ("logit_diff", "logit_diff_norm"):
        return lambda logits, answer, wrong, clean: logit_diff(logits, answer, wrong)
    if metric == "prob":
        return lambda logits, answer, wrong, clean: prob(logits, answer, wrong)
    if metric == "kl":
        return lambda logits, answer, wrong, clean: kl(logits, clean)
    if _n_params(metric) == 1:
        return lambda logits, answer, wrong, clean: metric(logits)
    return lambda logits, answer, wrong, clean: metric(logits, answer, wrong)


def _n_params(fn: MetricFn) -> int:
    try:
        return len(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return 3


def normalize(values: torch.Tensor, clean: torch.Tensor, corrupt: torch.Tensor) -> torch.Tensor:
    """Rescale so that ``clean`` maps to 1 and ``corrupt`` to 0.

    ``values`` is ``(pair, ...)``; ``clean`` and ``corrupt`` are ``(pair,)``.
    """
    shape = (-1,) + (1,) * (values.dim() - 1)
    return (values - corrupt.view(shape)) / (clean - corrupt).view(shape)
