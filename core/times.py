"""Nanosecond UTC timestamps as text: every time osm stores or sends is int64 ns since the epoch."""

from __future__ import annotations

import numpy as np


def iso_utc(time_ns: int, unit: str = "s") -> str:
    """ISO-8601 UTC text of `time_ns`, e.g. ``2024-03-05T08:06:00Z``, truncated to `unit`
    (numpy's datetime unit codes: "s", "ms", "us", "ns")."""
    return f"{np.datetime_as_string(np.datetime64(int(time_ns), 'ns'), unit=unit)}Z"
