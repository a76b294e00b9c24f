"""BarSeries append rate and memory over 10 million appends: memory must stay flat.

Prints one JSON line: appends per second overall, RSS (MB) sampled every million appends, and the
RSS growth between the first and the last sample.
"""

from __future__ import annotations

import json
import time

import numpy as np
import psutil

from osm.core.barseries import BarSeries
from osm.core.dtypes import BAR_DTYPE

TOTAL = 10_000_000
SAMPLE_EVERY = 1_000_000


def main() -> None:
    process = psutil.Process()
    series = BarSeries(window=5000, capacity=20_000, instrument="EUR_USD", granularity="M1")
    row = np.zeros((), BAR_DTYPE)
    rss_mb = []
    start = time.perf_counter()
    for i in range(TOTAL):
        row["time"] = i
        series.append(row)
        if (i + 1) % SAMPLE_EVERY == 0:
            rss_mb.append(round(process.memory_info().rss / 2**20, 1))
    elapsed = time.perf_counter() - start
    assert series.view["time"][-1] == TOTAL - 1 and len(series) == 5000
    print(
        json.dumps(
            {
                "bench": "barseries",
                "appends": TOTAL,
                "appends_per_s": round(TOTAL / elapsed),
                "rss_mb": rss_mb,
                "rss_growth_mb": round(rss_mb[-1] - rss_mb[0], 1),
            }
        )
    )


if __name__ == "__main__":
    main()
