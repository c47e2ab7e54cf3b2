"""
curves.py: convergence curves, quality against training step for DiT runs, and the speed-up factor of
a run over a baseline run (the paper's title claim, faster diffusion convergence, as an experiment).

A point of a curve is one checkpoint that train_dit.py --save-every kept (step_NNNNNNN.pt, and
last.pt), sampled and scored by the class judge (judge.py), with FID when the Inception weights are
there. Each point is cached in its run's curve/ folder, so after a run grows only its new points cost
time. The speed-up is measured at matched quality, with a 90 % interval over independent seed pairs
(`matched_speedup`; RESULTS.md, "Convergence", states the protocol). evaluate.py's `curve` prints the
table and writes the CSV and the plot.
"""

import csv
import json
import os
import re
import time

import numpy as np
import torch

from dcaelib.fid import FeatureStats
from dcaelib.judge import (dataset_judge, judge_accuracy, judge_fd, judge_samples, judge_stats,
                           originals, reconstructions, run_dataset, validation_images)
from dcaelib.metrics import maybe_inception
from dcaelib import files, metrics, pictures, trainer

# ==================================================================================================
# Run folders and their points
# ==================================================================================================

CURVE_KEYS = ("label", "run", "seed", "step")  # the CSV's first columns; then one per metric
# then what the point was measured with: the DiT's autoencoder and the judge (weights_sha256 of
# each), the commit of the code that trained the DiT, and the judging (samples, sampler steps, seed)
PROVENANCE_KEYS = ("ae_sha256", "judge_sha256", "commit", "protocol")
# may differ between the seeds of a curve
RUN_FREE_ARGS = {"seed", "out", "resume", "max_steps", "log_every", "sample_every", "save_every",
                 "device", "cache_dir", "ae_ckpt", "encode_batch_size"} | trainer.HOW_ARGS
METRIC_WORDS = {"share": "in the requested class", "fd": "judge-feature Fréchet distance",
                "fid": "FID"}


def metric_name(kind, scale):
    """The column of a metric at a guidance scale: share_g1, fd_g4, fid_g1.5, ..."""
    return f"{kind}_g{scale:g}"


def lower_is_better(metric):
    return not metric.startswith("share")


def parse_runs(specs):
    """--run LABEL=DIR[,DIR...] flags -> {label: [run folders]} (one folder per seed), in order."""
    runs = {}
    for spec in specs:
        label, sep, folders = spec.partition("=")
        folders = [f for f in folders.split(",") if f]
        if not sep or not label or not folders:
            raise ValueError(f"--run {spec!r}: expected LABEL=DIR, or LABEL=DIR1,DIR2 for one run "
                             f"folder per seed")
        if label in runs:
            raise ValueError(f"--run label {label!r} appears twice; give its seeds as one "
                             f"{label}=DIR1,DIR2")
        runs[label] = folders
    return runs


def run_points(folder, max_step=None):
    """({step: checkpoint file}, the newest checkpoint) of a train_dit.py run folder: its
    step_NNNNNNN.pt files (--save-every) and last.pt, up to step max_step if it is given."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"run folder not found: {folder}")
    points = {}
    for name in os.listdir(folder):
        match = re.fullmatch(r"step_(\d+)\.pt", name)
        if match:
            points[int(match.group(1))] = os.path.join(folder, name)
    last = os.path.join(folder, "last.pt")
    newest = files.load_checkpoint(last if os.path.isfile(last) else points[max(points)]) \
        if points or os.path.isfile(last) else None
    if newest is None or newest.get("kind") != files.DIT_KIND:
        raise ValueError(f"{folder} has no evaluable points (no DiT step_*.pt or last.pt); train "
                         f"with train_dit.py --save-every N --out {folder}")
    if os.path.isfile(last):
        points.setdefault(newest["step"], last)
    points = {s: p for s, p in sorted(points.items()) if max_step is None or s <= max_step}
    if not points:
        raise ValueError(f"{folder} has no point at or before --max-step {max_step}")
    return points, newest


def check_runs(meta):
    """Clear errors for runs that cannot share one plot: other data, or seeds of one label that
    differ in more than the seed, or whose evaluated steps differ. meta: {label: [(folder, points,
    newest checkpoint)]}."""
    def dataset(ckpt):
        a = ckpt["args"]
        return (a["data"], a.get("data_path"), a["image_size"], a["data_seed"],
                ckpt["num_classes"])

    first_label, first = next(iter(meta.items()))
    reference = dataset(first[0][2])
    for label, runs in meta.items():
        for folder, points, ckpt in runs:
            if dataset(ckpt) != reference:
                raise ValueError(f"mismatched runs: {folder} was trained on {dataset(ckpt)[:4]}, "
                                 f"{first[0][0]} on {reference[:4]}; a curve compares runs on one "
                                 f"dataset")
        folder0, points0, ckpt0 = runs[0]
        for folder, points, ckpt in runs[1:]:
            a, b = ckpt0["args"], ckpt["args"]
            differ = sorted(k for k in set(a) | set(b)
                            if k not in RUN_FREE_ARGS and a.get(k) != b.get(k))
            if ckpt0["ae"]["fingerprint"] != ckpt["ae"]["fingerprint"]:
                differ.append("the autoencoder")
            if differ:
                raise ValueError(f"mismatched runs: the seeds of {label!r}, {folder0} and {folder}, "
                                 f"differ in {', '.join(differ)}; give them different labels")
            if list(points) != list(points0):
                raise ValueError(f"mismatched runs: {folder0} has steps {list(points0)}, {folder} "
                                 f"{list(points)}; the seeds of {label!r} need the same steps")


# ==================================================================================================
# The speed-up factor, the table, the CSV and the plot
# ==================================================================================================


def first_reach(steps, values, target, lower):
    """(step, status): where the curve (values at steps) first reaches target, linearly interpolated
    between evaluated steps; status "reached", "before" (already at the first evaluated step: the
    true step is at most steps[0]) or "never" (step None)."""
    good = (lambda v: v <= target) if lower else (lambda v: v >= target)
    if good(values[0]):
        return steps[0], "before"
    for i in range(1, len(steps)):
        if good(values[i]):
            v0, v1 = values[i - 1], values[i]
            return steps[i - 1] + (target - v0) / (v1 - v0) * (steps[i] - steps[i - 1]), "reached"
    return None, "never"


def speedup(base_steps, base_values, steps, values, lower):
    """The speed-up factor of a curve over a baseline curve: the baseline's final value is the
    target; factor = the baseline's final step / the step where the curve first reaches it."""
    step, status = first_reach(steps, values, base_values[-1], lower)
    factor = base_steps[-1] / step if step else None
    return {"target": base_values[-1], "step": step, "status": status, "factor": factor}


def format_speedup(s):
    if s["status"] == "never":
        return "not reached"
    if s["status"] == "before":
        return f">{s['factor']:.2f}x (already at step {s['step']:.0f})"
    return f"{s['factor']:.2f}x (at step {s['step']:.0f})"


def summarise(rows, metrics):
    """{label: {"steps": [...], "runs": {run: {metric: [...]}}, metric: {"mean"/"min"/"max": [...]}}}
    from CSV rows (one per run and step); the steps of a label are those all its runs have."""
    out = {}
    for row in rows:
        label = out.setdefault(row["label"], {"runs": {}})
        label["runs"].setdefault(row["run"], {})[row["step"]] = row
    for label in out.values():
        steps = sorted(set.intersection(*(set(r) for r in label["runs"].values())))
        label["steps"] = steps
        for m in metrics:
            per_run = [[r[s][m] for s in steps] for r in label["runs"].values()]
            label[m] = {"mean": np.mean(per_run, axis=0).tolist(),
                        "min": np.min(per_run, axis=0).tolist(),
                        "max": np.max(per_run, axis=0).tolist()}
        label["seeds"] = {run: r[steps[0]]["seed"] for run, r in label["runs"].items()}
        label["runs"] = {run: {m: [r[s][m] for s in steps] for m in metrics}
                         for run, r in label["runs"].items()}
    return out


# --------------------------------------------------------------------------------------------------
# The speed-up at matched quality, with its interval (RESULTS.md, "Convergence", states the protocol)

LEVELS = 16  # quality levels a pair's band is read at
T90 = {1: 6.314, 2: 2.920, 3: 2.353, 4: 2.132, 5: 2.015, 6: 1.943, 7: 1.895, 8: 1.860, 9: 1.833}


def t90(df):
    """The two-sided 90 % quantile of Student's t with df degrees of freedom (1.645 for many)."""
    return T90.get(df, 1.645 + 2.4 / df)


def reach_steps(steps, values, levels, lower=True):
    """The step at which a curve first reaches each level, from its running best (so that a noisy
    point that falls back does not undo a level once reached), interpolated linearly in log step
    between checkpoints; nan where the curve does not reach the level within its steps, and its first
    step where it is there already. values: (..., K) at `steps` (K,); levels: (..., M)."""
    best = np.minimum.accumulate(values, axis=-1) if lower else np.maximum.accumulate(values, axis=-1)
    sign = 1 if lower else -1
    b, lv = sign * best[..., None, :], sign * levels[..., :, None]  # (..., M, K): lower is better
    reached = b <= lv
    i = reached.argmax(-1)  # the first checkpoint at or below the level
    log_t = np.log(np.asarray(steps, dtype=float))
    prev = np.maximum(i - 1, 0)
    v1, v0 = np.take_along_axis(b, i[..., None], -1)[..., 0], np.take_along_axis(b, prev[..., None], -1)[..., 0]
    frac = np.where(v0 > v1, (v0 - lv[..., 0]) / np.where(v0 > v1, v0 - v1, 1), 0.0)
    out = np.exp(log_t[prev] + np.clip(frac, 0, 1) * (log_t[i] - log_t[prev]))
    return np.where(reached.any(-1), np.where(i == 0, steps[0], out), np.nan)


def pair_log_speedups(base_steps, base, steps, arm, lower=True):
    """log(speed-up) of each (baseline run, arm run) pair: the mean over a band of quality levels of
    log(baseline's step / arm's step) to reach the level. The band is the levels both curves reach
    between their first and last checkpoints, so no level rests on one point or on the budget alone.
    base, arm: (..., P, K) values. Returns (log speed-ups (..., P), bound (..., P): 0 for a value, +1
    for a lower bound (the arm at its first checkpoint is past all the baseline reaches), -1 for an
    upper bound (the arm never reaches what the baseline does), band (..., P, 2))."""
    sign = 1 if lower else -1
    first = np.minimum(sign * base[..., 0], sign * arm[..., 0])
    bbest = (np.minimum.accumulate(sign * base, -1))[..., -1]
    abest = (np.minimum.accumulate(sign * arm, -1))[..., -1]
    last = np.maximum(bbest, abest)
    empty = last >= first
    u = (np.arange(LEVELS) + 0.5) / LEVELS
    levels = sign * (last[..., None] + u * (first - last)[..., None])
    tb = reach_steps(base_steps, base, levels, lower)
    ta = reach_steps(steps, arm, levels, lower)
    logs = np.nanmean(np.log(tb / ta), -1) if not empty.all() else np.zeros(empty.shape)
    # an empty band: the arm's first point already beats the baseline's best (a lower bound from the
    # baseline's last step over the arm's first), or the arm's best never reaches the baseline's
    # first point (an upper bound: the baseline's first step over the arm's last)
    ahead = (sign * arm[..., 0]) <= bbest
    lower_bound = np.log(base_steps[-1] / steps[0])
    upper_bound = np.log(base_steps[0] / steps[-1])
    logs = np.where(empty, np.where(ahead, lower_bound, upper_bound), logs)
    bound = np.where(empty, np.where(ahead, 1, -1), 0)
    band = np.stack([sign * last, sign * first], -1)
    return logs, bound, band


def mean_interval(x):
    """(mean, [low, high]) of independent values (..., N): the mean over the last axis and a 90 %
    Student-t interval (None with one value). Also the studies' seed-paired differences in dB."""
    n = x.shape[-1]
    mean = x.mean(-1)
    if n < 2:
        return mean, None
    half = t90(n - 1) * x.std(-1, ddof=1) / np.sqrt(n)
    return mean, np.stack([mean - half, mean + half], -1)


def speedup_interval(logs):
    """(estimate, [low, high]) of the speed-up from independent pairs' log speed-ups (..., P): the
    geometric mean and a 90 % Student-t interval over the pairs (None with one pair)."""
    mean, ci = mean_interval(logs)
    return np.exp(mean), None if ci is None else np.exp(ci)


def difference_interval(logs_a, logs_b):
    """(ratio of speed-ups a / b, its 90 % interval) from two independent sets of pair log speed-ups
    (Welch's t): whether a speed-up changes from one comparison (a model size) to another."""
    na, nb = logs_a.shape[-1], logs_b.shape[-1]
    va, vb = logs_a.var(-1, ddof=1) / na, logs_b.var(-1, ddof=1) / nb
    df = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
    diff, se = logs_a.mean(-1) - logs_b.mean(-1), np.sqrt(va + vb)
    tq = np.vectorize(lambda d: t90(max(1, int(np.floor(d)))))(df)
    return np.exp(diff), np.stack([np.exp(diff - tq * se), np.exp(diff + tq * se)], -1)


def matched_speedup(summary, baseline, label, metric):
    """The speed-up of `label` over `baseline` at matched quality, pairing seed s of one with seed s
    of the other (a seed without its partner is left out): {"estimate", "ci90" ([low, high] or None),
    "n_pairs", "bounds" (pairs that gave only a bound), "band" ([worst, best] level over the pairs),
    "pair_speedups"}."""
    base, arm = summary[baseline], summary[label]
    by_seed = {seed: run for run, seed in base["seeds"].items()}
    pairs = [(by_seed[seed], run) for run, seed in arm["seeds"].items() if seed in by_seed]
    if not pairs:
        return None
    lower = lower_is_better(metric)
    b = np.array([base["runs"][r][metric] for r, _ in pairs])
    a = np.array([arm["runs"][r][metric] for _, r in pairs])
    logs, bound, band = pair_log_speedups(np.array(base["steps"]), b, np.array(arm["steps"]), a, lower)
    estimate, ci = speedup_interval(logs)
    return {"estimate": float(estimate), "ci90": None if ci is None else [float(v) for v in ci],
            "n_pairs": len(pairs), "bounds": int(np.abs(bound).sum()),
            "band": [float(band[:, 0].max() if lower else band[:, 0].min()),
                     float(band[:, 1].min() if lower else band[:, 1].max())],
            "pair_speedups": [float(v) for v in np.exp(logs)], "log_speedups": [float(v) for v in logs]}


def format_interval(value, ci, what=""):
    """"1.45x (90 % interval 1.20-1.70, 3 pairs)" (what: "3 pairs"), then "; no difference at this
    precision" where the interval holds 1; "1.45x (1 pair: no interval)" where ci is None."""
    if ci is None:
        return f"{value:.2f}x ({what}: no interval)"
    low, high = ci
    verdict = "" if low > 1 or high < 1 else "; no difference at this precision"
    return f"{value:.2f}x (90 % interval {low:.2f}-{high:.2f}{', ' + what if what else ''}){verdict}"


def format_matched(s):
    """"1.45x (90 % interval 1.2-1.7, 3 pairs)", and what the interval says."""
    if s is None:
        return "no seed pairs (seed s of each arm)"
    pairs = f"{s['n_pairs']} pair{'s' if s['n_pairs'] > 1 else ''}"
    bounds = f", {s['bounds']} of them a bound" if s["bounds"] and s["ci90"] is not None else ""
    return format_interval(s["estimate"], s["ci90"], pairs + bounds)


def speedups(summary, baseline, metric):
    """{label: {"mean": speed-up of the mean curve, "pairs": [speed-up of each (baseline seed, seed)
    pair]}} of every label but the baseline, by `metric`."""
    base, lower, result = summary[baseline], lower_is_better(metric), {}
    for label, s in summary.items():
        if label == baseline:
            continue
        mean = speedup(base["steps"], base[metric]["mean"], s["steps"], s[metric]["mean"], lower)
        pairs = [speedup(base["steps"], b[metric], s["steps"], r[metric], lower)
                 for b in base["runs"].values() for r in s["runs"].values()]
        result[label] = {"mean": mean, "pairs": pairs}
        matched = matched_speedup(summary, baseline, label, metric)
        if matched is not None:
            result[label].update(matched)
    return result


SCALING_FIELDS = ("backbone", "arm", "seeds", "fd_g1", "share_g1", "speedup", "ci90_low", "ci90_high",
                  "pairs", "bounds", "band_worst", "band_best", "vs_smaller", "vs_smaller_low",
                  "vs_smaller_high")


def scaling_rows(studies, baseline="DC-AE", metric="fd_g1"):
    """assets/scaling.csv's rows, one per backbone and arm, from one curve CSV per model size.
    studies: [(family, backbone, csv path)], each family's sizes from small to large. An arm's row
    holds its seeds, its mean judge FD and share at the last step, its speed-up over `baseline` at
    matched quality with the 90 % interval, and the ratio of that speed-up to the one of the next
    smaller size in `studies` of the same family, with Welch's 90 % interval (blank where either rests
    on one pair)."""
    rows, smaller = [], {}
    for family, backbone, path in studies:
        data, metrics = read_curve_csv(path)
        summary = summarise(data, metrics)
        if baseline not in summary:
            raise ValueError(f"{path} has no {baseline!r} rows: every size needs the baseline arm")
        for arm, s in summary.items():
            row = {"backbone": backbone, "arm": arm, "seeds": len(s["runs"]),
                   "fd_g1": round(s[metric]["mean"][-1], 2), "share_g1": round(s["share_g1"]["mean"][-1], 3)
                   if "share_g1" in s else ""}
            m = None if arm == baseline else matched_speedup(summary, baseline, arm, metric)
            if m is not None:
                low, high = m["ci90"] or ("", "")  # unrounded: whoever prints or writes them rounds once
                row.update(speedup=m["estimate"], ci90_low=low, ci90_high=high, pairs=m["n_pairs"],
                           bounds=m["bounds"],
                           band_worst=round(m["band"][0], 2), band_best=round(m["band"][1], 2))
                logs, below = np.array(m["log_speedups"]), smaller.get((family, arm))
                if below is not None and len(logs) > 1 and len(below) > 1:
                    ratio, ci = difference_interval(logs, below)
                    row.update(vs_smaller=float(ratio), vs_smaller_low=float(ci[0]),
                               vs_smaller_high=float(ci[1]))
                smaller[(family, arm)] = logs
            rows.append(row)
    return rows


def curve_text(summary, metrics, speed, baseline, metric):
    """The printed table (mean over seeds, min..max when there are several) and the speed-ups."""
    lines = [f"{'run':>16} {'seeds':>5} {'step':>7} | " + " | ".join(f"{m:>21}" for m in metrics)]
    lines.append("-" * len(lines[0]))
    for label, s in summary.items():
        for i, step in enumerate(s["steps"]):
            cells = []
            for m in metrics:
                mean, lo, hi = (s[m][k][i] for k in ("mean", "min", "max"))
                fmt = "{:.3f}" if m.startswith("share") else "{:.2f}"
                cell = fmt.format(mean) + (f" ({fmt.format(lo)}-{fmt.format(hi)})"
                                           if len(s["runs"]) > 1 else "")
                cells.append(f"{cell:>21}")
            lines.append(f"{label:>16} {len(s['runs']):>5} {step:>7} | " + " | ".join(cells))
    for label, sp in speed.items():
        matched = format_matched(sp if "estimate" in sp else None)
        band = f" over {metric} {sp['band'][0]:.2f} to {sp['band'][1]:.2f}" if "band" in sp else ""
        lines.append(f"speed-up of {label} over {baseline} at matched quality{band}: {matched}")
        lines.append(f"  (the older statistic, the step where the mean curve first reaches {baseline}'s "
                     f"final {sp['mean']['target']:.3f}: {format_speedup(sp['mean'])})")
    return "\n".join(lines)


def write_curve_csv(rows, path):
    """One line per (run, step), written atomically."""
    fields = list(dict.fromkeys(k for r in rows for k in r))  # rows of older CSVs lack some
    with files.atomic_write(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)


def read_curve_csv(path):
    """The rows write_curve_csv wrote, with their types back: (rows, metric columns)."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        metrics = [f for f in fields if f not in CURVE_KEYS + PROVENANCE_KEYS]
        if list(fields[: len(CURVE_KEYS)]) != list(CURVE_KEYS) or not metrics:
            raise ValueError(f"{path} is not a curve CSV: its header must start with "
                             f"{','.join(CURVE_KEYS)} and name at least one metric")
        rows = [{"label": r["label"], "run": r["run"], "seed": int(r["seed"]),
                 "step": int(r["step"]), **{m: float(r[m]) for m in metrics},
                 **{k: r[k] for k in PROVENANCE_KEYS if k in r}} for r in reader]
    if not rows:
        raise ValueError(f"{path} has no rows")
    return rows, metrics


def join_rows(old, new, source):
    """The rows of a comparison that grows over sessions: `old` (a curve CSV's, from `source`) with
    the `new` runs' rows added; a run already in `old` (the same label and folder) is replaced.

    Every run of one comparison must be measured with the same things: a new run whose autoencoder
    differs from its label's runs in `old`, or whose judge or judging protocol differs from
    theirs, does not join (an error says which), nor does a seed that a label already has."""
    def one(rows, key, label=None):
        return {r[key] for r in rows if label is None or r["label"] == label} - {"", None}

    fresh = {(r["label"], r["run"]) for r in new}
    kept = [r for r in old if (r["label"], r["run"]) not in fresh]
    if any(not r.get("ae_sha256") or not r.get("judge_sha256") for r in kept):
        raise ValueError(f"--add-to {source}: its rows do not record their autoencoder and judge "
                         f"(a CSV written before the sha256 columns), so nothing can be added to "
                         f"them; start a new CSV")
    for key, what in (("judge_sha256", "judge"), ("protocol", "judging protocol")):
        there, here = one(kept, key), one(new, key)
        if there and here and there != here:
            raise ValueError(f"--add-to {source}: its rows were judged with {what} {sorted(there)}, "
                             f"these runs with {sorted(here)}; a comparison uses one {what} (train "
                             f"the judge as its rows record it, or start another CSV)")
    for label in dict.fromkeys(r["label"] for r in new):
        there, here = one(kept, "ae_sha256", label), one(new, "ae_sha256", label)
        if there and here and there != here:
            raise ValueError(f"--add-to {source}: the runs of {label!r} there were trained on the "
                             f"autoencoder {sorted(there)[0][:16]}..., these on "
                             f"{sorted(here)[0][:16]}...; a comparison uses one autoencoder per arm")
        seeds = {r["seed"]: r["run"] for r in kept if r["label"] == label}
        for r in new:
            if r["label"] == label and r["seed"] in seeds:
                raise ValueError(f"--add-to {source}: {label!r} has seed {r['seed']} already "
                                 f"({seeds[r['seed']]}); {r['run']} would count it twice")
    return kept + new


def rows_within_budget(rows, max_step, source):
    """The rows of a curve CSV up to step max_step (all if None): the budget run_points applies to
    run folders, applied to a redrawn table. Every label must keep a point."""
    if max_step is None:
        return rows
    for label in dict.fromkeys(r["label"] for r in rows):
        if not any(r["label"] == label and r["step"] <= max_step for r in rows):
            raise ValueError(f"{source}: {label!r} has no point at or before --max-step {max_step}")
    return [r for r in rows if r["step"] <= max_step]


def plot_curves(summary, metrics, path):
    """One panel per metric: the mean over seeds against the training step, the seeds' range
    shaded. matplotlib is optional: without it, a note, and False."""
    plt = pictures.pyplot()
    if plt is None:
        print(f"note: no plot written to {path}: matplotlib is not installed (pip install "
              f"matplotlib, then rerun with --from-csv); the table and the CSV are complete")
        return False
    kinds = list(dict.fromkeys(m.split("_g")[0] for m in metrics))  # a row per kind of metric
    scales = list(dict.fromkeys(m.split("_g")[1] for m in metrics))  # a column per guidance scale
    fig, axes = plt.subplots(len(kinds), len(scales), figsize=(4.2 * len(scales), 3.2 * len(kinds)),
                             squeeze=False)
    for m in metrics:
        ax = axes[kinds.index(m.split("_g")[0])][scales.index(m.split("_g")[1])]
        for label, s in summary.items():
            line, = ax.plot(s["steps"], s[m]["mean"], marker="o", ms=3, label=label)
            if len(s["runs"]) > 1:
                ax.fill_between(s["steps"], s[m]["min"], s[m]["max"], alpha=0.2,
                                color=line.get_color())
        kind, scale = m.split("_g")
        ax.set_title(f"{METRIC_WORDS.get(kind, kind)}, guidance {scale}", fontsize=9)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    with files.atomic_write(path, ".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return True


# ==================================================================================================
# Evaluating every point of every run
# ==================================================================================================


def point_cache(folder, path, step, settings):
    """The file that keeps one evaluated point: rerunning `curve` after a run grew evaluates only
    the new points. The checkpoint's modification time is in the key (a new run in the same folder
    starts afresh)."""
    key = {**settings, "mtime": os.stat(path).st_mtime_ns}
    digest = files.key_digest(key, 12)
    return os.path.join(folder, "curve", f"step_{step:07d}-{digest}.json")


@torch.no_grad()
def autoencoder_rows(aes, judge, xv, yv, xt, ref, batch_size, device):
    """Per distinct AE: its latent channels, PSNR from the first c/8 and all c channels, and its
    ceilings as a DiT's judge sees them: the judge's accuracy on its reconstructions of the validation
    images, and the Fréchet distance of its reconstructions of xt (as many training images as a point
    has samples) to the validation images (`ref`, their judge statistics)."""
    rows = {}
    for fp, (path, ae) in aes.items():
        C = ae.latent_channels
        batches = (pictures.from_uint8(x.to(device)) for x in xv.split(batch_size))
        psnr = metrics.mean_psnr(ae, batches, [C // 8, C])
        recon = reconstructions(ae, xv, batch_size, device)
        fd = judge_fd(judge, reconstructions(ae, xt, batch_size, device), ref, batch_size, device)
        rows[path] = {"channels": C, "psnr_c8": psnr[C // 8], "psnr": psnr[C],
                      "judge_recon": judge_accuracy(judge, recon, yv, batch_size, device),
                      "fd_recon": fd}
    return rows


def evaluate_runs(args, meta, cfg_scales, device):
    """Every point of every run (cached points are read, not sampled again): (CSV rows, a row per
    autoencoder). Prints the judge's ceilings on the originals and on each AE's reconstructions.
    meta: {label: [(folder, points, newest checkpoint)]} (run_points); args: `curve`'s flags."""
    first = next(iter(meta.values()))[0][2]
    run_args, num_classes = first["args"], first["num_classes"]
    judge, judge_path, _ = dataset_judge(run_args, num_classes, args.num_images, args.judge_steps,
                                         args.judge_cache, args.batch_size, device)
    xv, yv = validation_images(run_args, args.num_val, args.batch_size)
    ref = judge_stats(judge, xv, args.batch_size, device)
    inception = maybe_inception(args.fid, args.inception_weights, device, "FID")
    ref_fid = None
    if inception is not None:
        stats = FeatureStats()
        for x in xv.split(args.batch_size):
            stats.add(inception(x.to(device)))
        ref_fid = stats.mu_sigma()
    settings = {"judge": os.path.basename(judge_path), "num_samples": args.num_samples,
                "cfg_scales": cfg_scales, "steps": args.steps, "seed": args.seed,
                "num_val": args.num_val, "fid": inception is not None}
    judged_with = {"judge_sha256": files.weights_sha256(judge.state_dict()),
                   "protocol": f"samples {args.num_samples}, steps {args.steps}, seed {args.seed}, "
                               f"val {args.num_val}"}
    rows, aes = [], {}
    for label, runs in meta.items():
        for folder, points, newest in runs:
            folder_rows = []
            for step, path in points.items():
                cache = point_cache(folder, path, step, settings)
                if os.path.isfile(cache):
                    with open(cache) as fh:
                        values = json.load(fh)
                else:
                    model, ae, ckpt = files.load_dit(path)
                    if ckpt["step"] != step:  # a run still training replaced its last.pt meanwhile
                        print(f"{label} {folder}: {os.path.basename(path)} holds step {ckpt['step']} "
                              f"now, not {step} (is the run still training?); that point is left "
                              f"out: run curve again to evaluate it")
                        continue
                    aes.setdefault(ckpt["ae"]["fingerprint"], (ckpt["ae"]["path"], ae))
                    t0 = time.time()
                    found = judge_samples(model.to(device), ae.to(device), ckpt, judge, ref,
                                          args.num_samples, cfg_scales, args.steps, args.seed,
                                          args.batch_size, device, inception, ref_fid)
                    values = {metric_name(k, s): v for s, row in found.items()
                              for k, v in row.items()}
                    print(f"{label} {folder} step {step}: " + ", ".join(
                        f"{k} {v:.3f}" for k, v in values.items()) + f" ({time.time() - t0:.0f} s)")
                    os.makedirs(os.path.dirname(cache), exist_ok=True)
                    files.write_json(cache, values)
                folder_rows.append({"label": label, "run": folder, "seed": newest["args"]["seed"],
                                    "step": step, **values})
            fingerprint = newest["ae"]["fingerprint"]
            if fingerprint not in aes:  # every point cached: load the AE for its row
                aes[fingerprint] = (newest["ae"]["path"], files.load_dit(points[max(points)])[1])
            # the AE's sha256 as train_dit.py recorded it (hashed here for a DiT that predates it)
            ae_sha256 = newest["ae"].get("sha256") or files.weights_sha256(aes[fingerprint][1].state_dict())
            rows += [{**row, "ae_sha256": ae_sha256, "judge_sha256": judged_with["judge_sha256"],
                      "commit": newest.get("provenance", {}).get("commit") or "",
                      "protocol": judged_with["protocol"]} for row in folder_rows]
    ceiling = judge_accuracy(judge, xv, yv, args.batch_size, device)
    # a perfect generator's distance: real training images, as many as a point has samples (the FD
    # of a finite set is not 0); an AE's reconstructions of the same images are its DiT's floor
    xt, _ = originals(run_dataset(run_args, "train"), args.num_samples, args.batch_size)
    floor = judge_fd(judge, xt, ref, args.batch_size, device)
    ae_rows = autoencoder_rows({fp: (p, ae.to(device)) for fp, (p, ae) in aes.items()}, judge, xv,
                               yv, xt, ref, args.batch_size, device)
    print(f"judge ({judge_path}): right on {ceiling:.1%} of {len(xv)} validation originals; FD of "
          f"{len(xt)} training originals {floor:.2f}; on the autoencoders' reconstructions (the "
          f"ceilings of their DiTs), with their PSNR:")
    for path, r in ae_rows.items():
        print(f"  {path}: c = {r['channels']}, PSNR {r['psnr_c8']:.2f} dB from the first "
              f"{r['channels'] // 8} channels, {r['psnr']:.2f} dB from all; judge "
              f"{r['judge_recon']:.1%}, FD {r['fd_recon']:.2f}")
    return rows, {"judge_ceiling": ceiling, "fd_originals": floor, **ae_rows}


