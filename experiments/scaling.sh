#!/usr/bin/env bash
# RESULTS.md, "Scaling with model size": the paper's Figure 6 in miniature. Three diffusion-model sizes about
# 4x apart (DiT-classroom-S / DiT-classroom / DiT-classroom-L: 0.49 / 1.88 / 7.40 M parameters; the same for
# the U-ViT), each trained 4400 steps (a checkpoint every 1100) in two arms, DC-AE (plain AE + plain DiT) and
# DC-AE 1.5 (structured AE + augmented DiT), on the quick start's two autoencoders, flow matching, seeds
# 0 1 2 (the U-ViT: 1 2 3; seed s of one arm with seed s of the other: independent pairs; DiT-classroom's
# are the first 4400 steps of convergence.sh's runs, not trained again). Each size is judged as RESULTS.md's
# "Judging protocol" says and added to assets/scaling/NET-SIZE.csv (evaluate.py curve --add-to refuses a run
# whose AE, judge or judging differs from the rows there, so a size can grow over sessions); then, from
# those CSVs, assets/scaling.csv and assets/scaling.png: the speed-up at matched quality with its 90 %
# interval at each size, and the ratio of the speed-ups of neighbouring sizes with its interval (does the
# speed-up change with size?).
#   bash experiments/scaling.sh                          # DiT and U-ViT, every size (about 14 h on 2 cores)
#   NETS=DiT SIZES=L SEEDS=1 bash experiments/scaling.sh # one size, one seed pair
#   ARMS=sae-plain NETS=DiT SIZES=L bash experiments/scaling.sh  # the structured AE + plain DiT arm
#   UVIT_FLAGS="--adam-betas 0.99,0.99" ...              # another U-ViT recipe (default: the one
#                                                        # experiments/uvit_recipe.sh chose, --grad-clip 0)
#   UVIT_FLAGS="--grad-clip 1" TAG=clip1 NETS=UViT SIZES=M bash experiments/scaling.sh   # a recipe beside
#       the chosen one: its runs and curve are named UViT-M-clip1 (assets/scaling/UViT-M-clip1.csv), and
#       the table and picture leave it out
#   CURVE=0 ...                                          # train only, judge later
#   DRY_RUN=1 bash experiments/scaling.sh                # print the commands
# Run it from a git worktree of one commit (lib.sh sets OMP_NUM_THREADS=1: the AEs and the judge train bit
# for bit alike, so a later session trains them again with the same sha256).
source "$(dirname "$0")/lib.sh"
R=$RUNS
S=$R/scaling
CACHE=(--cache-dir $R/latent_cache)
BUDGET=(--max-steps 4400 --save-every 1100)
JUDGE=(--cfg-scales 1 --num-samples ${JUDGE_SAMPLES:-1000} --judge-cache $R/judges)
declare -A AE=([base]=$R/ae-plain [15]=$R/ae [sae-plain]=$R/ae)
declare -A FLAGS=([base]=--no-augmented [15]= [sae-plain]=--no-augmented)
declare -A LABEL=([base]="DC-AE" [15]="DC-AE 1.5" [sae-plain]="structured AE + plain DiT")
# a curve CSV's rows up to a step, as a new CSV: python -c "$BUDGET_CSV" FROM STEP TO
BUDGET_CSV='import sys; from dcaelib import curves; rows, _ = curves.read_curve_csv(sys.argv[1]); curves.write_curve_csv(curves.rows_within_budget(rows, int(sys.argv[2]), sys.argv[1]), sys.argv[3])'
autoencoders $R
for net in ${NETS:-DiT UViT}; do
  for size in ${SIZES:-S M L}; do
    model=$net-classroom; [ $size = M ] || model=$net-classroom-$size
    study=$net-$size${TAG:+-$TAG}  # the name of its runs and its curve
    extra=() seeds=${SEEDS:-0 1 2}
    # the U-ViT: the recipe uvit_recipe.sh chose on seed 0 of the DC-AE arm at M; seeds 1-3, so that the
    # run that won the choice (its best draw) is not also a point of the comparison
    if [ $net = UViT ]; then extra=(${UVIT_FLAGS---grad-clip 0}) seeds=${SEEDS:-1 2 3}; fi
    if [ $study = DiT-M ]; then  # DiT-classroom's 4400 steps are the first 4400 of convergence.sh's
      mkdir -p assets/scaling       # runs (same flags; bit for bit, tests/test_pipeline.py): its points
      always python -c "$BUDGET_CSV" assets/convergence.csv 4400 assets/scaling/DiT-M.csv
      continue
    fi
    for s in $seeds; do  # two commands at a time (one thread each)
      for arm in ${ARMS:-base 15}; do
        out=$S/$study-$arm-s$s
        train $out python train_dit.py --ae-ckpt ${AE[$arm]}/last.pt ${FLAGS[$arm]} --model $model \
            "${BUDGET[@]}" "${extra[@]}" --seed $s "${CACHE[@]}" --out $out &
        two_at_a_time
      done
    done
    wait_all
    [ "${CURVE:-1}" = 1 ] || continue
    RUN_FLAGS=()
    for arm in ${ARMS:-base 15}; do
      dirs=$(for s in $seeds; do printf "%s," $S/$study-$arm-s$s; done)
      RUN_FLAGS+=(--run "${LABEL[$arm]}=${dirs%,}")
    done
    CSV=assets/scaling/$study.csv
    ADD=(); if [ -f "$CSV" ]; then ADD=(--add-to "$CSV"); fi
    mkdir -p assets/scaling
    # every point is kept in RUN/curve/: a second call only evaluates new checkpoints
    always python evaluate.py curve "${RUN_FLAGS[@]}" --baseline DC-AE "${JUDGE[@]}" "${ADD[@]}" --csv "$CSV" \
        --plot $S/$study.png --json $S/$study.json
  done
done
# the table and the picture from the committed CSVs (every size measured so far, in any session):
# assets/scaling.csv (one row per backbone and arm: seeds, speed-up, its interval, the ratio to the next
# smaller size with its interval), assets/scaling.png, and the table as markdown on stdout
[ "${DRY_RUN:-0}" = 1 ] || "$PYTHON" - <<'PY'
import csv, functools, os, sys
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
import dcae15
from dcaelib import curves, files, models, pictures
@functools.lru_cache(maxsize=None)  # the plain step's count serves every arm of a size
def step_flops(model_name, augmented):  # one training step of batch 32 on 64 x 4 x 4 latents, forward + backward
    with torch.device("meta"):
        model = models.build_backbone(models.build_backbone_config(model_name, input_size=4, in_channels=64,
                                                                   num_classes=10))
        z, y = torch.randn(32, 64, 4, 4), torch.zeros(32, dtype=torch.long)
        with FlopCounterMode(display=False) as counter:
            loss, _ = dcae15.FlowMatching().training_loss(model, z, y, c_prime=32 if augmented else None)
            loss.backward()
    return counter.get_total_flops(), sum(p.numel() for p in model.parameters())
studies = [(net, f"{net}-classroom" + ("" if size == "M" else f"-{size}"), f"assets/scaling/{net}-{size}.csv")
           for net in ("DiT", "UViT") for size in ("S", "M", "L") if os.path.isfile(f"assets/scaling/{net}-{size}.csv")]
if not studies:
    sys.exit("note: no size measured yet (assets/scaling/NET-SIZE.csv)")
rows = curves.scaling_rows(studies)
# the augmented step makes two passes; per training FLOP: the speed-up (and its interval's ends) times the
# exact FLOP ratio of the baseline's step (plain) to the arm's
for row in rows:
    flops, params = step_flops(row["backbone"], row["arm"] == "DC-AE 1.5")
    row.update(params_m=round(params / 1e6, 2), tflop_4400=round(flops * 4400 / 1e12, 1))
    if row.get("speedup", "") != "":
        ratio = step_flops(row["backbone"], False)[0] / flops
        row.update({f"per_flop{end}": row[key] and row[key] * ratio
                    for end, key in (("", "speedup"), ("_low", "ci90_low"), ("_high", "ci90_high"))})
fields = list(curves.SCALING_FIELDS[:3]) + ["params_m", "tflop_4400"] + list(curves.SCALING_FIELDS[3:]) + \
    ["per_flop", "per_flop_low", "per_flop_high"]
with files.atomic_write("assets/scaling.csv") as tmp, open(tmp, "w", newline="") as fh:
    writer = csv.DictWriter(fh, fieldnames=fields, restval="")
    writer.writeheader()
    writer.writerows({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows)
def interval(r, key, low, high, pairs=True):
    if r.get(key, "") == "":
        return "-"
    what = f"{r['pairs']} pair{'s' if r['pairs'] > 1 else ''}" if pairs else ""
    return curves.format_interval(r[key], None if r[low] == "" else (r[low], r[high]), what)
print("| backbone | params | arm | seeds | TFLOP / 4400 steps | judge FD g1, step 4400 | in class, g1 "
      "| speed-up at matched quality | per training FLOP | against the next smaller size |\n|" + "---|" * 10)
for r in rows:
    print(f"| {r['backbone']} | {r['params_m']:.2f} M | {r['arm']} | {r['seeds']} | {r['tflop_4400']} | {r['fd_g1']:.2f} "
          f"| {r['share_g1']:.3f} | {interval(r, 'speedup', 'ci90_low', 'ci90_high')} "
          f"| {interval(r, 'per_flop', 'per_flop_low', 'per_flop_high')} "
          f"| {interval(r, 'vs_smaller', 'vs_smaller_low', 'vs_smaller_high', pairs=False)} |")
print("wrote assets/scaling.csv")
plt = pictures.pyplot()
arms = [r for r in rows if r.get("speedup", "") != ""]
if plt is None or not arms:
    sys.exit("note: no picture (no arm with a speed-up yet, or matplotlib missing: pip install matplotlib)")
fig, ax = plt.subplots(figsize=(6.4, 5))
series = sorted({(s[0], r["arm"]) for s in studies for r in arms if r["backbone"] == s[1]})
for i, ((net, arm), marker) in enumerate(zip(series, "osD^v<>")):
    p = [r for s in studies for r in arms if s[0] == net and r["backbone"] == s[1] and r["arm"] == arm]
    dodge = 1.06 ** (i - (len(series) - 1) / 2)  # side by side, so that no interval hides another
    x, est = [r["params_m"] * 1e6 * dodge for r in p], np.array([r["speedup"] for r in p])
    lo = np.array([r["ci90_low"] if r["ci90_low"] != "" else r["speedup"] for r in p])
    hi = np.array([r["ci90_high"] if r["ci90_high"] != "" else r["speedup"] for r in p])
    ax.errorbar(x, est, yerr=[est - lo, hi - est], marker=marker, capsize=3, label=f"{net}: {arm}")
ax.axhline(1, color="black", linewidth=0.8)
sizes = []  # a tick a size (log axis: 4x apart); the DiT's and the U-ViT's parameters at one size share it
for m in sorted({r["params_m"] for r in arms}):
    if sizes and m < sizes[-1][0] * 1.25:
        sizes[-1].append(m)
    else:
        sizes.append([m])
ax.set_xscale("log")
ax.set_xticks([np.sqrt(g[0] * g[-1]) * 1e6 for g in sizes], [" / ".join(f"{m:.2f}" for m in g) + " M" for g in sizes])
ax.minorticks_off(); ax.set_xlabel("parameters"); ax.grid(alpha=0.3)
ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8)
ax.set_ylabel("speed-up over DC-AE (90 % interval)")
fig.tight_layout()
fig.savefig("assets/scaling.png", dpi=110)
print("wrote assets/scaling.png")
PY
