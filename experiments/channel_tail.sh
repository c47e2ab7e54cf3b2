#!/usr/bin/env bash
# RESULTS.md, "Reconstruction against training length", what the last channels carry: for each seed of
# SEEDS a structured and a plain AE of ae_length.sh's recipe (8800 steps, a step file every 2200; seed 0's
# pair is ae_length.sh's own, runs/ae-length, trained once; seed N's in runs/ae-length-sN), and at steps
# 2200 and 8800 (a step file is what a run of that length ends with) the full latent's reconstruction of
# the 1000 validation images with the channels after the first c/2 kept, zeroed, replaced by their mean
# over the images, or shuffled between the images (evaluate.py recon --tail-from). Then runs/channel_tail.md:
# each cell's PSNR / SSIM (/ LPIPS where its AlexNet weights are there) as the mean over the seeds, and what
# channels 33-64 carry (PSNR kept minus zeroed) and the gap to the plain AE at c, with 90 % intervals.
#   bash experiments/channel_tail.sh             # a pair (two runs at a time): 50 min on the 2-core Intel
#                                                # Xeon, 1 h 40 min on the AMD EPYC; then about 5 min
#   SEEDS=0 bash experiments/channel_tail.sh     # one pair (no intervals)
#   DRY_RUN=1 bash experiments/channel_tail.sh
source "$(dirname "$0")/lib.sh"
SEEDS=${SEEDS:-0 1}
LENGTHS="2200 8800"
dir() { if [ "$1" = 0 ]; then echo "$RUNS/ae-length"; else echo "$RUNS/ae-length-s$1"; fi; }
for s in $SEEDS; do  # the two arms of a seed at a time, one thread each
  ae_length_run "$(dir $s)" plain $s &
  ae_length_run "$(dir $s)" structured $s &
  wait_all
done
for s in $SEEDS; do
  for n in $LENGTHS; do
    step=$(printf "step_%07d.pt" $n)
    produce $RUNS/channel_tail-s$s-$n.json python evaluate.py recon --ae-ckpt "$(dir $s)/structured/$step" \
        --baseline-ckpt "$(dir $s)/plain/$step" --c-primes 32,64 --tail-from 32 --json $RUNS/channel_tail-s$s-$n.json
  done
done
[ "${DRY_RUN:-0}" = 1 ] || "$PYTHON" - "$RUNS" "$LENGTHS" "$SEEDS" <<'PY'
import json, os, sys
import numpy as np
from dcaelib.curves import mean_interval
R, lengths, seeds = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
# tail[n][ae][way][metric]: one value a seed
tail = {n: [json.load(open(os.path.join(R, f"channel_tail-s{s}-{n}.json")))["tail"] for s in seeds]
        for n in lengths}
def values(n, ae, way, metric="psnr"):
    return np.array([t[ae][way][metric] for t in tail[n]])
def interval(x):  # mean (90 % interval over seeds); one seed: the value alone
    mean, ci = mean_interval(x)
    return f"{mean:.2f}" if ci is None else f"{mean:.2f} ({ci[0]:.2f} to {ci[1]:.2f})"
ae_names = {"model": "structured", "baseline": "plain"}
cols = [(n, ae) for n in lengths for ae in ae_names]
lines = [f"| channels 33-64 ({len(seeds)} seed{'s' * (len(seeds) > 1)}, mean) | "
         + " | ".join(f"{ae_names[ae]} AE, {n} steps" for n, ae in cols) + " |", "|---" * (len(cols) + 1) + "|"]
for way in tail[lengths[0]][0]["model"]:
    metrics = [k for k in ("psnr", "ssim", "lpips") if k in tail[lengths[0]][0]["model"][way]]
    cells = " | ".join(" / ".join(f"{values(n, ae, way, k).mean():.{2 if k == 'psnr' else 3}f}" for k in metrics)
                       for n, ae in cols)
    lines.append(f"| {way} | {cells} |")
lines += ["", "| steps | dB carried by channels 33-64 (kept - zeroed): structured | plain "
          "| another image's channels (kept - shuffled): structured | gap to the plain AE at c |",
          "|---|---|---|---|---|"]
for n in lengths:
    carried = [values(n, ae, "kept") - values(n, ae, "zeroed") for ae in ae_names]
    shuffled = values(n, "model", "kept") - values(n, "model", "shuffled")
    gap = values(n, "model", "kept") - values(n, "baseline", "kept")
    lines.append(f"| {n} | {interval(carried[0])} | {interval(carried[1])} | {interval(shuffled)} "
                 f"| {interval(gap)} |")
open(os.path.join(R, "channel_tail.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
