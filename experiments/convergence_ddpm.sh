#!/usr/bin/env bash
# RESULTS.md, "Convergence" with DDPM (--objective ddpm): the first and the last arm of convergence.sh,
# one seed each, 8800 DiT steps with a checkpoint every 1100; the class judge on every checkpoint.
#   bash experiments/convergence_ddpm.sh             # in runs/ (about 2.5 h on 2 cores)
#   DRY_RUN=1 bash experiments/convergence_ddpm.sh   # print the commands
source "$(dirname "$0")/lib.sh"
R=$RUNS
CACHE=(--cache-dir $R/latent_cache)
LONG=(--max-steps 8800 --save-every 1100)
# two commands at a time (one thread each)
autoencoders $R
train $R/dit-base-ddpm python train_dit.py --ae-ckpt $R/ae-plain/last.pt --no-augmented "${LONG[@]}" \
    --objective ddpm "${CACHE[@]}" --out $R/dit-base-ddpm &
train $R/dit-15-ddpm python train_dit.py --ae-ckpt $R/ae/last.pt "${LONG[@]}" --objective ddpm "${CACHE[@]}" \
    --out $R/dit-15-ddpm &
wait_all
always python evaluate.py curve --run "DC-AE (DDPM)=$R/dit-base-ddpm" --run "DC-AE 1.5 (DDPM)=$R/dit-15-ddpm" \
    --judge-cache $R/judges --csv $R/convergence_ddpm.csv --plot $R/convergence_ddpm.png \
    --json $R/convergence_ddpm.json
