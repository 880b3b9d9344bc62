"""When a timing should not be trusted, and why, as short flags saved with the result."""

from __future__ import annotations

# Below this many timed rounds the median and spread are too rough to compare two runs.
MIN_TRUSTED_ROUNDS = 5
# Interquartile range over median above this: the rounds disagree by more than a quarter,
# usually because something else ran on the machine; the median may be off by as much.
MAX_TRUSTED_SPREAD = 0.25
# A step must last this many ticks of the timer's measured precision, or the clock's own
# granularity is a visible part of the figure (10 ticks: up to 10% error).
MIN_TICKS = 10


def timing_flags(stats, precision_s: float | None = None) -> list[str]:
    """Flags for a pytest-benchmark Stats object (seconds): [] when the timing is clean."""
    flags = []
    if stats.rounds < MIN_TRUSTED_ROUNDS:
        flags.append("few-rounds")
    if stats.median > 0 and stats.iqr / stats.median > MAX_TRUSTED_SPREAD:
        flags.append("high-spread")
    if precision_s is not None and stats.min < MIN_TICKS * precision_s:
        flags.append("below-timer-resolution")
    return flags
