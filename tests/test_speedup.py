"""The speed-up estimate at matched quality and its 90 % interval (dcaelib/curves.py), calibrated on
synthetic studies with a known speed-up and the noise the committed curves show: a run offset (sd 1.0
judge FD: two seeds of one arm sit about 1.4 apart) and a point noise (sd 1.7 around each run's trend),
three seed pairs, eight checkpoints as in the convergence study and four as in the scaling study."""

import numpy as np
import pytest

from dcaelib import curves

STUDIES = 1500


def synthetic(k, K, seed, studies=STUDIES, pairs=3, run_sd=1.0, point_sd=1.7):
    """(steps, baseline, arm): judge FD curves f(t) = 45 + 45 (t / 1100)^-0.8 (the shape of the
    committed DC-AE curve), the arm's k times faster, f(k t); (studies, pairs, K) each."""
    g = np.random.default_rng(seed)
    steps = 1100.0 * np.arange(1, K + 1)

    def f(t):
        return 45 + 45 * (t / 1100) ** -0.8

    def runs(t):
        return f(t) + g.normal(0, run_sd, (studies, pairs, 1)) + g.normal(0, point_sd, (studies, pairs, K))

    return steps, runs(steps), runs(k * steps)


def intervals(k, K, seed):
    steps, base, arm = synthetic(k, K, seed)
    logs, _, _ = curves.pair_log_speedups(steps, base, steps, arm)
    return logs, curves.speedup_interval(logs)


@pytest.mark.parametrize("checkpoints", [8, 4])
def test_the_interval_holds_the_true_speedup_as_often_as_it_says(checkpoints):
    for k, seed in ((1.0, 1), (2.0, 2)):
        _, (estimate, ci) = intervals(k, checkpoints, seed)
        holds = ((ci[:, 0] <= k) & (k <= ci[:, 1])).mean()
        assert holds >= 0.85, f"k = {k}, {checkpoints} checkpoints: the interval holds k in {holds:.1%}"
        assert abs(np.median(estimate) / k - 1) < 0.06  # nearly unbiased
        if k == 1:
            assert (ci[:, 0] > 1).mean() <= 0.10  # a speed-up claimed where there is none
        else:
            assert ((ci[:, 0] > 1) | (ci[:, 1] < 1)).mean() >= 0.85  # a real 2x is seen


def test_the_comparison_of_two_sizes_has_a_calibrated_interval():
    """Does the speed-up change from one size to another: the ratio of two studies' speed-ups."""
    for (ka, kb), seeds in (((2.0, 2.0), (3, 4)), ((2.0, 1.25), (5, 6))):
        logs_a, _ = intervals(ka, 4, seeds[0])
        logs_b, _ = intervals(kb, 4, seeds[1])
        ratio, ci = curves.difference_interval(logs_a, logs_b)
        truth = ka / kb
        assert ((ci[:, 0] <= truth) & (truth <= ci[:, 1])).mean() >= 0.85
        if ka == kb:
            assert ((ci[:, 0] > 1) | (ci[:, 1] < 1)).mean() <= 0.10  # no change claimed where there is none


def test_a_pair_that_never_meets_gives_a_bound_not_a_gap():
    steps = np.array([1100.0, 2200, 3300, 4400])
    base = np.array([[90.0, 80, 70, 60]])
    far_ahead = np.array([[50.0, 45, 44, 43]])  # better at its first point than the baseline at its last
    never = np.array([[99.0, 98, 97, 96]])  # never reaches the baseline's first point
    logs, bound, _ = curves.pair_log_speedups(steps, base, steps, far_ahead)
    assert bound[0] == 1 and np.exp(logs[0]) == pytest.approx(4400 / 1100)  # at least 4x
    logs, bound, _ = curves.pair_log_speedups(steps, base, steps, never)
    assert bound[0] == -1 and np.exp(logs[0]) == pytest.approx(1100 / 4400)  # at most 0.25x


def test_reach_steps_interpolates_in_log_step_and_keeps_a_reached_level():
    steps = np.array([1000.0, 4000])
    assert curves.reach_steps(steps, np.array([10.0, 0.0]), np.array([5.0]))[0] == pytest.approx(2000)
    # a point that falls back (noise) does not undo the level: the running best is used
    assert curves.reach_steps(np.array([1.0, 2, 3]), np.array([9.0, 4, 6]), np.array([5.0]))[0] < 2
    assert np.isnan(curves.reach_steps(steps, np.array([10.0, 8]), np.array([5.0]))[0])
