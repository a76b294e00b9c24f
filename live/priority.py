"""The system's CPU priority: a flat-out replay yields the machine to interactive work.

A replay at speed 0 into the paper broker is a batch job: it takes every cycle it is given, and
on a small machine the notebook that watches it waits behind it (on 2 cores, a trivial cell's
p99 went from 13 ms to 60 to 95 ms while such a replay streamed to a chart). Run at background
priority, the replay still gets every cycle nobody else wants, so it is barely slower, and the
kernel answers as on an idle machine. Replays at speed 0 stay deterministic (the feeder waits for
acknowledgements, not for time), so priority changes when, never what.

A live or paced system keeps normal priority: its latency is the point.

Nice 10, not 19: beside two busy processes of normal priority, a nice-19 system gets about 1.5%
of a core, so a job's kernel would take minutes to import numba and pandas and be killed as
stalled by the supervisor's start-up grace; at nice 10 it gets about 10%, still far behind the
notebook (on 2 cores the kernel's p99 was 19 to 31 ms either way, under a CI run beside it).

The supervisor sets it once, before it starts a thread or a child, so every thread and process
of the system inherits it. On Linux a nice value alone does not reach across sessions: with
autogroups (the default on desktops and most servers) the scheduler first shares the CPU between
sessions, each as one unit, and the detached supervisor leads a session of its own (its jobs stay
in it, each in a process group of its own). So the detached supervisor also lowers its session's
autogroup (``/proc/self/autogroup``); one running in the foreground shares the user's terminal
session and leaves it alone.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from osm.core import config as cfg

BACKGROUND_NICE = 10  # as `nice` runs a command: far behind interactive work, never starved
REPLAYS = ("replay", "synthetic")  # the sources whose speed 0 means a batch, not a live market
AUTOGROUP = Path("/proc/self/autogroup")

log = logging.getLogger("osm.priority")


def is_background(config: cfg.SystemConfig) -> bool:
    """Whether `config` asks for background priority (``priority="auto"`` resolved)."""
    if config.priority != "auto":
        return config.priority == "background"
    flat_out = all(feed.speed == 0 and feed.kind in REPLAYS for feed in config.feeds)
    return flat_out and config.trader.broker == "paper"


def apply(config: cfg.SystemConfig) -> str:
    """Set this process's priority for `config` and return it ("normal" or "background").

    The autogroup is lowered only when this process leads its session (the detached
    supervisor), never the user's.
    """
    if not is_background(config):
        return "normal"
    os.nice(max(0, BACKGROUND_NICE - os.nice(0)))
    if os.getsid(0) == os.getpid():
        try:
            AUTOGROUP.write_text(f"{BACKGROUND_NICE}\n")
        except OSError as exc:  # no autogroups (a kernel without them): the nice value suffices
            log.debug("autogroup left as it is: %s", exc)
    reason = "set" if config.priority == "background" else "every feed replays flat out"
    log.info(
        "background priority (nice %d, %s): interactive work comes first; "
        'priority "normal" in the config keeps it at the front',
        BACKGROUND_NICE,
        reason,
    )
    return "background"
