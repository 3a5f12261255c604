"""Float comparisons relative to the values' scale, so that the suite passes on any CPU.

Float32 sums taken in another order (another CPU's kernels, another thread count) move a
value by about 1e-6 of its size: a logit difference near 12.7 moved by 1.05e-5 on an AMD
machine, past a bare ``atol=1e-5``. Here ``tol`` is a tolerance for values of size 1, scaled
by the size of the expected values (their largest magnitude, at least 1), so values near 1
are held as tightly as before and values near 12 by 12 times as much: still far below what
any wrong patch moves (tenths, not millionths).

Example:
    >>> assert_close([12.70001], [12.7], 1e-5)
    >>> 12.70001 == near(12.7, 1e-5)
    True
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest


def scale(desired: Any) -> float:
    """The size of the expected values: their largest finite magnitude, at least 1."""
    values = np.abs(np.asarray(_numpy(desired), dtype=float))
    finite = values[np.isfinite(values)]
    return max(1.0, float(finite.max())) if finite.size else 1.0


def assert_close(actual: Any, desired: Any, tol: float, err_msg: str = "") -> None:
    """``actual`` equals ``desired`` to ``tol`` times their scale; NaNs must sit in the same places."""
    desired = np.asarray(_numpy(desired), dtype=float)
    np.testing.assert_allclose(
        np.asarray(_numpy(actual), dtype=float), desired, rtol=0, atol=tol * scale(desired), err_msg=err_msg
    )


def near(desired: float, tol: float) -> Any:
    """``pytest.approx(desired)`` to ``tol`` times its scale."""
    return pytest.approx(desired, abs=tol * scale(desired), rel=0)


def _numpy(x: Any) -> Any:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else x
