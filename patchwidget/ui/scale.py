"""The normalised view: a display setting, never a second metric.

Every level is computed once, in the session's metric (``logit_diff`` by default,
``core.metrics.DEFAULT``). The widget and the CLI may show it normalised, each
prompt pair rescaled so that its clean run is 1 and its corrupted run 0; this
module makes that view from the raw results, so switching it costs no compute.
How each level rescales is a column of the table of levels (``LevelKind.scale``).

Example:
    >>> shown = scaled(computed, "normalized")   # doctest: +SKIP
    >>> shown.results["resid_pre"].clean_baseline  # doctest: +SKIP
    array([1., 1.], dtype=float32)
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..errors import SettingsError
from ..grids.result import PatchResult
from .levels import LEVELS, Computed

SCALES = ("normalized", "raw")
SCALE_LABELS = {"normalized": "normalised (clean 1, corrupted 0)", "raw": "raw metric"}
DEFAULT_SCALE = "normalized"  # a workshop reads shares of the clean behaviour; the raw values are one click away


def check_scale(scale: object) -> str:
    """``scale`` if it is one of ``SCALES``; a ``SettingsError`` naming the choices otherwise."""
    if scale not in SCALES:
        raise SettingsError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    return scale  # type: ignore[return-value]


def rescales(computed: Computed, scale: str) -> bool:
    """Whether ``scale`` changes the numbers of this level (not a search's, which are shares already)."""
    return scale == "normalized" and LEVELS[computed.level.kind].scale is not None


def scaled(computed: Computed, scale: str) -> Computed:
    """``computed`` as the view ``scale`` shows it: as computed (``"raw"``), or normalised per the level's
    ``LevelKind.scale``: each grid per pair by its runs (``PatchResult.normalized``), the lens as shares of
    each prompt's own logit difference, a joint table per pair too."""
    how = LEVELS[computed.level.kind].scale
    if scale == "raw" or how is None:
        return computed
    rescale = share if how == "share" else PatchResult.normalized
    results = {name: rescale(result) for name, result in computed.results.items()}
    joint = computed.joint.normalized() if computed.joint is not None else None
    return replace(computed, results=results, joint=joint)


def share(result: PatchResult) -> PatchResult:
    """A lens result as shares of each prompt's own logit difference (its ``clean_baseline``): 1 where the
    lens reads what the model finally says."""
    own = result.clean_baseline.reshape(-1, *[1] * (result.per_pair.ndim - 1))
    settings = {**result.settings, "unit": "share of the model's logit difference"}
    if "mlp" in settings:
        settings["mlp"] = (np.asarray(settings["mlp"]) / own.reshape(-1, 1)).tolist()
    return replace(
        result, per_pair=result.per_pair / own, clean_baseline=np.ones_like(result.clean_baseline), settings=settings
    )
