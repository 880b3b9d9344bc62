"""Does it fit, and up to which batch size: searches over the memory estimate, nothing allocated.

The estimate's peak is non-decreasing in the batch size, the width and (from depth 2 on) the
depth, so the largest value that fits is found by a search over one integer. The analytic
estimate takes about 0.1 ms, and a frontier of 1,000 models must come back well within a
second, so the search interpolates: the peak is affine in the batch size (every saved tensor
is batch_size rows), and a secant through two estimates lands on the answer or next to it,
four estimates in all where bisection over [1, 2**31 - 1] takes 32. A safeguard bisects
whenever interpolation twice in a row fails to halve the interval, so a peak far from affine
(quadratic in width, or in steps) still takes at most three estimates per halving.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pandas as pd

from mlp.config import (
    MAX_BATCH_SIZE,
    MAX_DEPTH,
    MAX_DIM,
    RunConfig,
    check_choice,
    check_positive_int,
)
from mlp.estimate import estimate
from mlp.model import count_params

log = logging.getLogger(__name__)

# estimator(config, device_type, method) -> an object with .peak_bytes (mlp.estimate.Estimate)
Estimator = Callable[[RunConfig, str, str], object]

VARY_CHOICES = ("width", "depth")


@dataclass(frozen=True)
class FitResult:
    """The largest batch size whose predicted peak stays within a budget."""

    config: RunConfig  # at max_batch_size, or at batch 1 when even that does not fit
    budget_bytes: int  # the predicted peak may reach this and no more
    max_batch_size: int  # 0 when batch 1 does not fit
    peak_bytes: int  # predicted at config.batch_size
    device_type: str  # whose memory rules: "cpu" or "cuda"
    method: str = "analytic"  # which estimate: "analytic" or "trace"
    next_peak_bytes: int | None = None  # predicted at max_batch_size + 1; None at the limit

    @property
    def fits(self) -> bool:
        return self.max_batch_size > 0

    def as_dict(self) -> dict:
        return {
            **self.config.as_dict(),
            "device_type": self.device_type,
            "method": self.method,
            "params": count_params(
                self.config.input_dim, self.config.width, self.config.output_dim,
                self.config.depth,
            ),
            "budget_bytes": self.budget_bytes,
            "fits": self.fits,
            "max_batch_size": self.max_batch_size,
            "peak_bytes": self.peak_bytes,
            "next_peak_bytes": self.next_peak_bytes,
        }


def _peak_function(estimator: Estimator | None, device_type: str, method: str):
    """config -> predicted peak bytes, by estimator (mlp.estimate.estimate when None)."""
    predict = estimator or estimate

    def peak_of(config: RunConfig) -> int:
        return int(predict(config, device_type, method).peak_bytes)

    return peak_of


def largest_within(
    peak_at: Callable[[int], int], budget_bytes: int, lower: int, upper: int
) -> tuple[int, int | None, int | None]:
    """Largest n in [lower, upper] with peak_at(n) <= budget_bytes, for peak_at non-decreasing.

    Returns (n, peak_at(n), peak_at(n + 1)): n is lower - 1 (and its peak None) when even
    lower does not fit, and the last item is None when n is upper.
    """
    peaks: dict[int, int] = {}
    lo, hi = lower - 1, upper + 1  # lo fits (lower - 1 trivially); hi does not (upper + 1)

    def visit(n: int) -> None:
        nonlocal lo, hi
        peaks[n] = peak_at(n)
        if peaks[n] <= budget_bytes:
            lo = n
        else:
            hi = n

    # Two far points first. Rounding (CUDA's 512-byte blocks) bends the peak by a few KiB
    # at most, so the line through two points far apart has the true slope, and where it
    # crosses the budget is the answer or its neighbour: four estimates in all.
    visit(upper)
    if hi - lo > 1:
        visit(max(lower, upper // 2))

    stalls = 0  # steps in a row that did not halve [lo, hi]; after two, bisect
    while hi - lo > 1:
        width = hi - lo
        guess = _secant(peaks, budget_bytes, lo, hi) if stalls < 2 else None
        if guess is None:
            n, stalls = (lo + hi) // 2, 0
        else:
            n = min(max(guess, lo + 1), hi - 1)
        visit(n)
        stalls = stalls + 1 if 2 * (hi - lo) > width else 0
    return lo, peaks.get(lo), peaks.get(hi)


def _secant(peaks: dict[int, int], budget_bytes: int, lo: int, hi: int) -> int | None:
    """Where the line through the two points nearest the boundary crosses the budget."""
    below = sorted(n for n in peaks if n <= lo)
    above = sorted(n for n in peaks if n >= hi)
    if below and above:
        n0, n1 = below[-1], above[0]
    elif len(above) >= 2:
        n0, n1 = above[0], above[1]
    elif len(below) >= 2:
        n0, n1 = below[-2], below[-1]
    else:
        return None
    rise = peaks[n1] - peaks[n0]
    if rise <= 0:
        return None
    # Exact integers: floor of n0 + (budget - peak(n0)) * run / rise.
    return n0 + (budget_bytes - peaks[n0]) * (n1 - n0) // rise


def max_batch_size(
    config: RunConfig,
    budget_bytes: int,
    device_type: str = "cuda",
    method: str = "analytic",
    limit: int = MAX_BATCH_SIZE,
    estimator: Estimator | None = None,
) -> FitResult:
    """The largest batch size (up to limit) whose estimated peak is at most budget_bytes.

    estimator defaults to mlp.estimate.estimate; the answer m satisfies
    estimate(m) <= budget_bytes < estimate(m + 1), and is 0 when batch 1 does not fit.
    """
    check_positive_int("budget_bytes", budget_bytes)
    check_positive_int("limit", limit, MAX_BATCH_SIZE)
    peak_of = _peak_function(estimator, device_type, method)

    estimates = []

    def peak_at(batch_size: int) -> int:
        estimates.append(batch_size)
        return peak_of(config.replace(batch_size=batch_size))

    batch_size, peak_bytes, next_peak_bytes = largest_within(peak_at, budget_bytes, 1, limit)
    log.debug("largest batch %d within %d bytes after %d estimates at %s",
              batch_size, budget_bytes, len(estimates), estimates)
    if batch_size == 0:
        # Report what batch 1 would need, so that the shortfall can be shown.
        peak_bytes, next_peak_bytes = next_peak_bytes, None
    return FitResult(
        config=config.replace(batch_size=max(batch_size, 1)),
        budget_bytes=budget_bytes,
        max_batch_size=batch_size,
        peak_bytes=peak_bytes,
        device_type=device_type,
        method=method,
        next_peak_bytes=next_peak_bytes,
    )


def frontier(
    depths: Iterable[int],
    widths: Iterable[int],
    base: RunConfig,
    budget_bytes: int,
    device_type: str = "cuda",
    method: str = "analytic",
    estimator: Estimator | None = None,
) -> pd.DataFrame:
    """The largest batch size of every (depth, width) model, one row each, depth-major."""
    depths = [check_positive_int("depths", d, MAX_DEPTH) for d in depths]
    widths = [check_positive_int("widths", w, MAX_DIM) for w in widths]
    if not depths or not widths:
        raise ValueError("depths and widths must each hold at least one value")
    estimator = estimator or estimate

    rows = []
    for depth in depths:
        for width in widths:
            result = max_batch_size(
                base.replace(depth=depth, width=width), budget_bytes, device_type, method,
                estimator=estimator,
            )
            rows.append({
                "depth": depth,
                "width": width,
                "params": count_params(base.input_dim, width, base.output_dim, depth),
                "max_batch_size": result.max_batch_size,
                "peak_bytes": result.peak_bytes,
                "budget_bytes": budget_bytes,
            })
    return pd.DataFrame(rows)


def largest_fitting(
    base: RunConfig,
    budget_bytes: int,
    vary: str,
    device_type: str = "cuda",
    upper: int | None = None,
    method: str = "analytic",
    estimator: Estimator | None = None,
) -> int:
    """The largest width (or depth) that fits at base.batch_size; 0 when none does.

    upper bounds the search: MAX_DIM for width, MAX_DEPTH for depth by default.
    """
    check_choice("vary", vary, VARY_CHOICES)
    check_positive_int("budget_bytes", budget_bytes)
    ceiling = MAX_DIM if vary == "width" else MAX_DEPTH
    upper = ceiling if upper is None else check_positive_int("upper", upper, ceiling)
    peak_of = _peak_function(estimator, device_type, method)

    if vary == "width":
        if base.depth < 2:
            raise ValueError("vary width needs depth 2 or more: a depth-1 model has no width")
        found, _, _ = largest_within(
            lambda w: peak_of(base.replace(width=w)), budget_bytes, 1, upper
        )
        return found

    # Depth 1 maps input to output directly, so with a small width it can need more than
    # depth 2; from depth 2 on each added layer only adds, and the search starts there.
    fits_at_one = peak_of(base.replace(depth=1)) <= budget_bytes
    if upper == 1:
        return int(fits_at_one)
    found, _, _ = largest_within(
        lambda d: peak_of(base.replace(depth=d)), budget_bytes, 2, upper
    )
    if found >= 2:
        return found
    return 1 if fits_at_one else 0
