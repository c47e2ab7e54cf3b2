#!/usr/bin/env bash
# RESULTS.md, "Reconstruction against training length", the c' choices: does training the last channels
# more often close the structured AE's gap to the plain one at the full latent? Three ways to draw c' at
# 2200 steps (the quick start's AE otherwise), seeds 0 and 1: the default (multiples of c/8: channels 57-64
# take part in 1/8 of the steps), --latent-channel-choices 32,64 (all 64 in half the steps), and two
# reconstructions a step, one of them always the full latent (--num-sample-latent-channels 2
# --always-sample-max-channel); the plain AE with the same seeds as the reference. Then evaluate.py recon at
# c' = 8, 32, 64 and a table: each way's PSNR, and its gap to the plain AE at c paired by seed, with a 90 %
# interval over the seeds.
#   bash experiments/c_prime_sampling.sh         # about 2 h on 2 cores
#   DRY_RUN=1 bash experiments/c_prime_sampling.sh
source "$(dirname "$0")/lib.sh"
S=$RUNS/c_prime_sampling
declare -A WAY=([default]="" [halves]="--latent-channel-choices 32,64" [plain]="--no-structured"
                [full-always]="--num-sample-latent-channels 2 --always-sample-max-channel")
WAYS="default halves full-always plain"
for s in ${SEEDS:-0 1}; do
  for way in $WAYS; do  # two commands at a time (one thread each)
    train $S/$way-s$s python train_ae.py ${WAY[$way]} --seed $s --out $S/$way-s$s &
    two_at_a_time
  done
done
wait_all
for s in ${SEEDS:-0 1}; do
  for way in $WAYS; do
    produce $S/$way-s$s.json python evaluate.py recon --ae-ckpt $S/$way-s$s/last.pt --c-primes 8,32,64 \
        --json $S/$way-s$s.json
  done
done
[ "${DRY_RUN:-0}" = 1 ] || "$PYTHON" - "$S" "$WAYS" "${SEEDS:-0 1}" <<'PY'
import json, os, sys
import numpy as np
from dcaelib.curves import mean_interval
S, ways, seeds = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
psnr = {w: np.array([[json.load(open(os.path.join(S, f"{w}-s{s}.json")))["results"]["model"][c]["psnr"]
                      for c in ("8", "32", "64")] for s in seeds]) for w in ways}
lines = ["| c' drawn | seeds | PSNR c/8 | c/2 | c | gap to the plain AE at c (90 % interval over seeds) |",
         "|---|---|---|---|---|---|"]
for w in ways:
    gap = psnr[w][:, 2] - psnr["plain"][:, 2]
    n = len(gap)
    mean, ci = mean_interval(gap)
    low, high = (float("nan"),) * 2 if ci is None else ci
    cells = " | ".join(f"{v:.2f}" for v in psnr[w].mean(0))
    gap_cell = "-" if w == "plain" else f"{mean:+.2f} dB ({low:+.2f} to {high:+.2f})"
    lines.append(f"| {w} | {n} | {cells} | {gap_cell} |")
open(os.path.join(S, "c_prime_sampling.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
