#!/usr/bin/env bash
# RESULTS.md, "Scaling with model size": the paper's Figure 6 in miniature. Three diffusion-model sizes about
# 4x apart (DiT-classroom-S / DiT-classroom / DiT-classroom-L: 0.49 / 1.88 / 7.40 M parameters; the same for
# the U-ViT), each trained 4400 steps (the default budget, a checkpoint every 1100) in two arms: DC-AE (plain
# AE + plain DiT) and DC-AE 1.5 (structured AE + augmented DiT), the quick start's two autoencoders, the
# default objective (flow matching); the middle size with seeds 0 and 1. Then the judge on every checkpoint,
# and the table and picture against parameters and training FLOPs.
#   bash experiments/scaling.sh                 # in runs/ (DiT and U-ViT: about 12 h on 2 cores)
#   NETS=DiT bash experiments/scaling.sh        # one backbone only
#   NETS=DiT SIZES=L bash experiments/scaling.sh   # one size only (S, M, L)
# runs/ does not outlive a checkout: the summary keeps the rows of assets/scaling.csv (the committed
# measurements, each with its commit) for every size it has no curve of.
#   DRY_RUN=1 bash experiments/scaling.sh       # print the commands
source "$(dirname "$0")/lib.sh"
R=$RUNS
S=$R/scaling
CACHE=(--cache-dir $R/latent_cache)
BUDGET=(--max-steps 4400 --save-every 1100)
autoencoders $R
for net in ${NETS:-DiT UViT}; do
  for size in ${SIZES:-S M L}; do
    model=$net-classroom; [ $size = M ] || model=$net-classroom-$size
    seeds=0; [ $size = M ] && seeds="0 1"
    for s in $seeds; do  # two commands at a time (one thread each): the two arms of a seed
      train $S/$net-$size-base-s$s python train_dit.py --ae-ckpt $R/ae-plain/last.pt --no-augmented \
          --model $model "${BUDGET[@]}" --seed $s "${CACHE[@]}" --out $S/$net-$size-base-s$s &
      train $S/$net-$size-15-s$s python train_dit.py --ae-ckpt $R/ae/last.pt --model $model \
          "${BUDGET[@]}" --seed $s "${CACHE[@]}" --out $S/$net-$size-15-s$s &
      wait_all
    done
    base=$(for s in $seeds; do printf "%s," $S/$net-$size-base-s$s; done)
    new=$(for s in $seeds; do printf "%s," $S/$net-$size-15-s$s; done)
    # every point is kept in RUN/curve/: a second call only evaluates new checkpoints
    always python evaluate.py curve --run "DC-AE=${base%,}" --run "DC-AE 1.5=${new%,}" \
        --judge-cache $R/judges --csv $S/$net-$size.csv --plot $S/$net-$size.png --json $S/$net-$size.json
  done
done
# the table and the picture, from the CSVs above -> $S/scaling.md, $S/scaling.csv, $S/scaling.png
[ "${DRY_RUN:-0}" = 1 ] || "$PYTHON" - "$S" <<'PY'
import os, sys
import torch
from torch.utils.flop_counter import FlopCounterMode
import dcae15
from dcaelib import curves, models, pictures
S = sys.argv[1]
def step_flops(model_name, augmented):  # one training step of batch 32 on 64 x 4 x 4 latents, forward + backward
    with torch.device("meta"):
        model = models.build_backbone(models.build_backbone_config(model_name, input_size=4, in_channels=64,
                                                                   num_classes=10))
        z, y = torch.randn(32, 64, 4, 4), torch.zeros(32, dtype=torch.long)
        with FlopCounterMode(display=False) as counter:
            loss, _ = dcae15.FlowMatching().training_loss(model, z, y, c_prime=32 if augmented else None)
            loss.backward()
    return counter.get_total_flops(), sum(p.numel() for p in model.parameters())
import csv, subprocess
def factor_cell(s):  # a speed-up in the CSV: its factor, or "never" (the target not reached within the budget)
    return "never" if s["factor"] is None else s["factor"]
def lowest_first(v):
    return -1 if v == "never" else v
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
points = []
for net in ("DiT", "UViT"):
    for size in ("S", "M", "L"):
        path = os.path.join(S, f"{net}-{size}.csv")
        if not os.path.isfile(path):
            continue
        data, metrics = curves.read_curve_csv(path)
        summary = curves.summarise(data, metrics)
        speed = curves.speedups(summary, "DC-AE", "fd_g1")["DC-AE 1.5"]
        base = summary["DC-AE"]
        half = base["steps"].index(2200) + 1  # the budget halved: the target is DC-AE's FD at step 2200
        speed_half = curves.speedup(base["steps"][:half], base["fd_g1"]["mean"][:half],
                                    summary["DC-AE 1.5"]["steps"], summary["DC-AE 1.5"]["fd_g1"]["mean"], True)
        model = f"{net}-classroom" + ("" if size == "M" else f"-{size}")
        for arm, augmented in (("DC-AE", False), ("DC-AE 1.5", True)):
            s = summary[arm]
            i = s["steps"].index(4400)
            flops, params = step_flops(model, augmented)
            pairs = [factor_cell(p) for p in speed["pairs"]] if augmented else []
            point = {"net": net, "model": model, "params": params, "arm": arm, "seeds": len(s["runs"]),
                     "train_flops": flops * 4400, "commit": commit}
            for m in ("fd_g1", "share_g1"):
                point.update({m: s[m]["mean"][i], f"{m}_min": s[m]["min"][i], f"{m}_max": s[m]["max"][i]})
            point.update({"speedup": factor_cell(speed["mean"]) if augmented else "",
                          "speedup_pairs_min": min(pairs, key=lowest_first) if len(pairs) > 1 else "",
                          "speedup_pairs_max": max(pairs, key=lowest_first) if len(pairs) > 1 else "",
                          "speedup_2200": factor_cell(speed_half) if augmented else "",
                          "speedup_2200_status": speed_half["status"] if augmented else ""})
            points.append(point)
# runs/ does not outlive a checkout: the sizes not trained here keep their row of the committed table
measured = {q["model"] for q in points}
if os.path.isfile("assets/scaling.csv"):
    for q in csv.DictReader(open("assets/scaling.csv")):
        if q["model"] not in measured:
            points.append({k: (v if k in ("net", "model", "arm", "commit", "speedup_2200_status")
                               else int(v) if k in ("params", "seeds", "train_flops")
                               else float(v) if v not in ("", "never") else v)
                           for k, v in q.items()})
            print(f"kept from assets/scaling.csv: {q['model']}, {q['arm']} (commit {q['commit']})")
order = [f"{n}-classroom{x}" for n in ("DiT", "UViT") for x in ("-S", "", "-L")]
points.sort(key=lambda q: (order.index(q["model"]), q["arm"]))
def cell(q, m, fmt):
    mean, lo, hi = q[m], q[f"{m}_min"], q[f"{m}_max"]
    return fmt.format(mean) + (f" ({fmt.format(lo)}-{fmt.format(hi)})" if hi > lo else "")
def factor(v):
    return "not reached" if v == "never" else f"{v:.2f}x"
lines = ["| backbone | params | arm | seeds | TFLOP / 4400 steps | judge FD, g1 (step 4400) | in class, g1 "
         "| speed-up by FD g1 | at half the budget |", "|---|---|---|---|---|---|---|---|---|"]
for q in points:
    sp = half = "-"
    if q["speedup"] != "":
        sp = f"**{factor(q['speedup'])}**"
        if q["speedup_pairs_min"] != "":
            sp += f" (pairs {factor(q['speedup_pairs_min'])} to {factor(q['speedup_pairs_max'])})"
        half = "?" if q["speedup_2200"] == "" else factor(q["speedup_2200"])
        if q.get("speedup_2200_status") == "before":  # already there at the first checkpoint
            half = ">" + half
    lines.append(f"| {q['model']} | {q['params'] / 1e6:.2f} M | {q['arm']} | {q['seeds']:.0f} | "
                 f"{q['train_flops'] / 1e12:.1f} | {cell(q, 'fd_g1', '{:.2f}')} | {cell(q, 'share_g1', '{:.3f}')} "
                 f"| {sp} | {half} |")
open(os.path.join(S, "scaling.md"), "w").write("\n".join(lines) + "\n")
fields = ["net", "model", "params", "arm", "seeds", "train_flops", "commit", "fd_g1", "fd_g1_min", "fd_g1_max",
          "share_g1", "share_g1_min", "share_g1_max", "speedup", "speedup_pairs_min", "speedup_pairs_max",
          "speedup_2200", "speedup_2200_status"]
with open(os.path.join(S, "scaling.csv"), "w", newline="") as fh:
    writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(points)
print("\n".join(lines))
plt = pictures.pyplot()
if plt is None:
    sys.exit("note: no picture: matplotlib is not installed (pip install matplotlib); the table and CSV are complete")
fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
for net, marker in (("DiT", "o"), ("UViT", "s")):
    for arm, colour in (("DC-AE", "tab:gray"), ("DC-AE 1.5", "tab:red")):
        p = [q for q in points if q["net"] == net and q["arm"] == arm]
        if not p:
            continue
        label = f"{net}, {arm}"
        for ax, x, y in ((axes[0], "params", "fd_g1"), (axes[1], "train_flops", "fd_g1"), (axes[2], "params", "share_g1")):
            xs, ys = [q[x] for q in p], [q[y] for q in p]
            err = [[q[y] - q[f"{y}_min"] for q in p], [q[f"{y}_max"] - q[y] for q in p]]
            ax.errorbar(xs, ys, yerr=err, marker=marker, color=colour, label=label, capsize=3,
                        linestyle="-" if net == "DiT" else "--")
    p = [q for q in points if q["net"] == net and q["speedup"] not in ("", "never")]
    if p:
        axes[3].plot([q["params"] for q in p], [q["speedup"] for q in p], marker=marker, color="tab:red",
                     linestyle="-" if net == "DiT" else "--", label=net)
    missed = [q["params"] for q in points if q["net"] == net and q["speedup"] == "never"]
    if missed:  # DC-AE's final distance not reached within the budget: below 1, one legend entry
        axes[3].plot(missed, [1] * len(missed), marker="v", color="tab:red", markersize=10, linestyle="none",
                     label=f"{net}: not reached (< 1x)")
axes[3].axhline(1, color="black", linewidth=0.8)
axes[3].legend()
for ax, xlabel, ylabel in ((axes[0], "parameters", "judge FD, guidance 1 (lower is better)"),
                           (axes[1], "training FLOPs (4400 steps)", "judge FD, guidance 1"),
                           (axes[2], "parameters", "in the requested class, guidance 1"),
                           (axes[3], "parameters", "speed-up of DC-AE 1.5 by judge FD, guidance 1")):
    ax.set_xscale("log"); ax.set_xlabel(xlabel); ax.set_ylabel(ylabel); ax.grid(alpha=0.3)
axes[0].legend()
fig.suptitle("DC-AE against DC-AE 1.5 as the diffusion model grows (shapes, 4400 steps)")
fig.tight_layout()
fig.savefig(os.path.join(S, "scaling.png"), dpi=110)
print(f"wrote {os.path.join(S, 'scaling.png')}")
PY
