from types import SimpleNamespace

from mlp.timing_quality import timing_flags


def _stats(rounds=20, median=1e-3, iqr=1e-5, min_s=9e-4):
    return SimpleNamespace(rounds=rounds, median=median, iqr=iqr, min=min_s)


def test_clean_timing_has_no_flags():
    assert timing_flags(_stats(), precision_s=1e-7) == []


def test_too_few_rounds_are_flagged():
    assert timing_flags(_stats(rounds=3), precision_s=1e-7) == ["few-rounds"]


def test_a_wide_spread_is_flagged():
    assert timing_flags(_stats(iqr=0.5e-3), precision_s=1e-7) == ["high-spread"]


def test_a_step_within_ten_timer_ticks_is_flagged():
    assert timing_flags(_stats(min_s=5e-7, median=5e-7, iqr=0), precision_s=1e-7) == [
        "below-timer-resolution"
    ]
