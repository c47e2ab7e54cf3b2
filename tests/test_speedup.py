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


def write_study(path, k, seeds, g, K=4):
    """A curve CSV as evaluate.py curve writes it: DC-AE and DC-AE 1.5 (k times faster), with a
    small run offset and point noise."""
    steps = 1100 * np.arange(1, K + 1)
    rows = []
    for label, speed in (("DC-AE", 1.0), ("DC-AE 1.5", k)):
        for s in range(seeds):
            fd = 45 + 45 * (speed * steps / 1100) ** -0.8 + g.normal(0, 0.2) + g.normal(0, 0.2, K)
            rows += [{"label": label, "run": f"runs/{label}-s{s}", "seed": s, "step": int(t),
                      "share_g1": 0.5, "fd_g1": float(v)} for t, v in zip(steps, fd)]
    curves.write_curve_csv(rows, path)


def test_scaling_rows_give_each_arm_its_interval_and_the_change_between_sizes(tmp_path):
    """assets/scaling.csv (experiments/scaling.sh): one row per backbone and arm, the speed-up with
    its interval and the ratio to the next smaller size's speed-up with Welch's interval."""
    g = np.random.default_rng(0)
    write_study(tmp_path / "S.csv", 2.0, 3, g)
    write_study(tmp_path / "M.csv", 1.25, 3, g)
    write_study(tmp_path / "L.csv", 1.25, 1, g)
    rows = curves.scaling_rows([("DiT", "S", tmp_path / "S.csv"), ("DiT", "M", tmp_path / "M.csv"),
                                ("DiT", "L", tmp_path / "L.csv")])
    assert [(r["backbone"], r["arm"], r["seeds"]) for r in rows] == [
        ("S", "DC-AE", 3), ("S", "DC-AE 1.5", 3), ("M", "DC-AE", 3), ("M", "DC-AE 1.5", 3),
        ("L", "DC-AE", 1), ("L", "DC-AE 1.5", 1)]
    base, s, m, l = rows[0], rows[1], rows[3], rows[5]
    assert "speedup" not in base
    assert s["speedup"] == pytest.approx(2.0, rel=0.1) and s["ci90_low"] < s["speedup"] < s["ci90_high"]
    assert m["speedup"] == pytest.approx(1.25, rel=0.1) and s["pairs"] == m["pairs"] == 3
    assert "vs_smaller" not in s  # the smallest size has nothing to compare with
    assert m["vs_smaller"] == pytest.approx(1.25 / 2.0, rel=0.15) and m["vs_smaller_high"] < 1  # a real change
    assert l["ci90_low"] == "" and "vs_smaller" not in l  # one pair: no interval, no comparison
    curves.write_curve_csv([r for r in curves.read_curve_csv(tmp_path / "S.csv")[0] if r["label"] != "DC-AE"],
                           tmp_path / "nobase.csv")
    with pytest.raises(ValueError, match="baseline"):
        curves.scaling_rows([("DiT", "S", tmp_path / "nobase.csv")])
