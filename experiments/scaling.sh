#!/usr/bin/env bash
# RESULTS.md, "Scaling with model size": the paper's Figure 6 in miniature. Three diffusion-model sizes about
# 4x apart (DiT-classroom-S / DiT-classroom / DiT-classroom-L: 0.49 / 1.88 / 7.40 M parameters; the same for
# the U-ViT), each trained 4400 steps (a checkpoint every 1100) in two arms, DC-AE (plain AE + plain DiT) and
# DC-AE 1.5 (structured AE + augmented DiT), on the quick start's two autoencoders, flow matching, seeds 0 1 2
# (seed s of one arm with seed s of the other: independent pairs). Each size is judged as RESULTS.md's
# "Judging protocol" says and added to assets/scaling/NET-SIZE.csv (evaluate.py curve --add-to refuses a run
# whose AE, judge or judging differs from the rows there, so a size can grow over sessions); then the table
# from those CSVs: the speed-up at matched quality with its 90 % interval at each size, and the ratio of the
# speed-ups of neighbouring sizes with its interval (does the speed-up change with size?).
#   bash experiments/scaling.sh                          # DiT and U-ViT, every size (about 20 h on 2 cores)
#   NETS=DiT SIZES=L SEEDS=1 bash experiments/scaling.sh # one size, one seed pair
#   ARMS=sae-plain NETS=DiT SIZES=L bash experiments/scaling.sh  # the structured AE + plain DiT arm
#   UVIT_FLAGS="--adam-betas 0.99,0.99 --grad-clip 0" ... # the U-ViT's recipe (experiments/uvit_recipe.sh)
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
autoencoders $R
for net in ${NETS:-DiT UViT}; do
  for size in ${SIZES:-S M L}; do
    model=$net-classroom; [ $size = M ] || model=$net-classroom-$size
    extra=(); if [ $net = UViT ]; then extra=(${UVIT_FLAGS:-}); fi  # the recipe uvit_recipe.sh chose
    for s in ${SEEDS:-0 1 2}; do  # two commands at a time (one thread each)
      for arm in ${ARMS:-base 15}; do
        out=$S/$net-$size-$arm-s$s
        train $out python train_dit.py --ae-ckpt ${AE[$arm]}/last.pt ${FLAGS[$arm]} --model $model \
            "${BUDGET[@]}" "${extra[@]}" --seed $s "${CACHE[@]}" --out $out &
        two_at_a_time
      done
    done
    wait_all
    [ "${CURVE:-1}" = 1 ] || continue
    RUN_FLAGS=()
    for arm in ${ARMS:-base 15}; do
      dirs=$(for s in ${SEEDS:-0 1 2}; do printf "%s," $S/$net-$size-$arm-s$s; done)
      RUN_FLAGS+=(--run "${LABEL[$arm]}=${dirs%,}")
    done
    CSV=assets/scaling/$net-$size.csv
    ADD=(); if [ -f "$CSV" ]; then ADD=(--add-to "$CSV"); fi
    mkdir -p assets/scaling
    # every point is kept in RUN/curve/: a second call only evaluates new checkpoints
    always python evaluate.py curve "${RUN_FLAGS[@]}" --baseline DC-AE "${JUDGE[@]}" "${ADD[@]}" --csv "$CSV" \
        --plot $S/$net-$size.png --json $S/$net-$size.json
  done
done
# the table and the picture from the committed CSVs (every size measured so far, in any session)
# -> $S/scaling.md, $S/scaling.png
[ "${DRY_RUN:-0}" = 1 ] || "$PYTHON" - "$S" <<'PY'
import os, sys
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
import dcae15
from dcaelib import curves, models, pictures
S = sys.argv[1]
os.makedirs(S, exist_ok=True)
def step_flops(model_name, augmented):  # one training step of batch 32 on 64 x 4 x 4 latents, forward + backward
    with torch.device("meta"):
        model = models.build_backbone(models.build_backbone_config(model_name, input_size=4, in_channels=64,
                                                                   num_classes=10))
        z, y = torch.randn(32, 64, 4, 4), torch.zeros(32, dtype=torch.long)
        with FlopCounterMode(display=False) as counter:
            loss, _ = dcae15.FlowMatching().training_loss(model, z, y, c_prime=32 if augmented else None)
            loss.backward()
    return counter.get_total_flops(), sum(p.numel() for p in model.parameters())
lines = ["| backbone | params | TFLOP / 4400 steps (DC-AE / 1.5) | judge FD g1 at step 4400, DC-AE / 1.5 (seeds' mean) "
         "| speed-up at matched quality | against the next smaller size |", "|---|---|---|---|---|---|"]
points = []
for net in ("DiT", "UViT"):
    below = None
    for size in ("S", "M", "L"):
        path = f"assets/scaling/{net}-{size}.csv"
        if not os.path.isfile(path):
            continue
        data, metrics = curves.read_curve_csv(path)
        summary = curves.summarise(data, metrics)
        if not {"DC-AE", "DC-AE 1.5"} <= set(summary):
            continue
        m = curves.matched_speedup(summary, "DC-AE", "DC-AE 1.5", "fd_g1")
        if m is None:
            continue
        model = f"{net}-classroom" + ("" if size == "M" else f"-{size}")
        (plain, params), (augmented, _) = step_flops(model, False), step_flops(model, True)
        fd = [summary[a]["fd_g1"]["mean"][-1] for a in ("DC-AE", "DC-AE 1.5")]
        logs = np.array(m["log_speedups"])
        change = "-"
        if below is not None and len(logs) > 1 and len(below) > 1:
            ratio, ci = curves.difference_interval(logs, below)
            change = f"{ratio:.2f}x (90 % interval {ci[0]:.2f}-{ci[1]:.2f})" + \
                ("" if ci[0] > 1 or ci[1] < 1 else ": no change at this precision")
        below = logs
        lines.append(f"| {model} | {params / 1e6:.2f} M | {plain * 4400 / 1e12:.1f} / {augmented * 4400 / 1e12:.1f} | "
                     f"{fd[0]:.2f} / {fd[1]:.2f} | **{curves.format_matched(m)}** | {change} |")
        points.append((net, params, m))
open(os.path.join(S, "scaling.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
plt = pictures.pyplot()
if plt is None or not points:
    sys.exit("note: no picture (no size measured yet, or matplotlib missing: pip install matplotlib)")
fig, ax = plt.subplots(figsize=(6, 4.2))
for net, marker in (("DiT", "o"), ("UViT", "s")):
    p = [(x, m) for n, x, m in points if n == net]
    if p:
        x = [q[0] for q in p]
        est = np.array([q[1]["estimate"] for q in p])
        lo = np.array([q[1]["ci90"][0] if q[1]["ci90"] else q[1]["estimate"] for q in p])
        hi = np.array([q[1]["ci90"][1] if q[1]["ci90"] else q[1]["estimate"] for q in p])
        ax.errorbar(x, est, yerr=[est - lo, hi - est], marker=marker, capsize=3, label=net)
ax.axhline(1, color="black", linewidth=0.8)
ax.set_xscale("log"); ax.set_xlabel("parameters"); ax.grid(alpha=0.3); ax.legend()
ax.set_ylabel("DC-AE 1.5's speed-up at matched quality (90 % interval)")
fig.tight_layout()
fig.savefig(os.path.join(S, "scaling.png"), dpi=110)
print(f"wrote {os.path.join(S, 'scaling.png')}")
PY
