"""Sweep kernels: pure numba over arrays, no pandas.

Array contract: one element per bar, oldest first, float64. A sweep evaluates combinations one at a
time into buffers it allocated once, so these kernels write into an `out` array instead of
returning a new one.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def target_units_nb(target: np.ndarray, size: float, out: np.ndarray) -> int:
    """Write ``rint(target * size)`` into `out` (NaN: 0); return how many targets lie outside [-1, 1].

    One pass does what ``Strategy.targets`` checks and what ``osm.research.backtest.target_units``
    computes, so a sweep pays for neither a boolean mask nor a new array per combination.
    """
    bad = 0
    for t in range(len(target)):
        value = target[t]
        if value != value:  # NaN: no opinion yet, flat
            out[t] = 0.0
            continue
        if value < -1.0 - 1e-12 or value > 1.0 + 1e-12:
            bad += 1
        out[t] = np.rint(value * size)
    return bad
