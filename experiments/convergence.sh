#!/usr/bin/env bash
# RESULTS.md, "Convergence" (flow matching): three arms of 8800 DiT steps with a checkpoint every 1100,
# DC-AE (plain AE + plain DiT) and DC-AE 1.5 (structured AE + augmented DiT) with seeds 0 and 1, the
# structured AE + plain DiT with seed 0; then the class judge on every checkpoint: the table, the CSV and
# the picture.
#   bash experiments/convergence.sh             # in runs/ (about 7 h on 2 cores)
#   DRY_RUN=1 bash experiments/convergence.sh   # print the commands
source "$(dirname "$0")/lib.sh"
R=$RUNS
CACHE=(--cache-dir $R/latent_cache)
LONG=(--max-steps 8800 --save-every 1100)
# two commands at a time (one thread each)
autoencoders $R
for s in 0 1; do
  train $R/dit-base-s$s python train_dit.py --ae-ckpt $R/ae-plain/last.pt --no-augmented "${LONG[@]}" \
      --seed $s "${CACHE[@]}" --out $R/dit-base-s$s &
  train $R/dit-15-s$s python train_dit.py --ae-ckpt $R/ae/last.pt "${LONG[@]}" \
      --seed $s "${CACHE[@]}" --out $R/dit-15-s$s &
  wait_all
done
train $R/dit-sae-plain python train_dit.py --ae-ckpt $R/ae/last.pt --no-augmented "${LONG[@]}" "${CACHE[@]}" \
    --out $R/dit-sae-plain
# every point is kept in RUN/curve/: a second call only evaluates new checkpoints
always python evaluate.py curve --run "DC-AE=$R/dit-base-s0,$R/dit-base-s1" \
    --run "structured AE + plain DiT=$R/dit-sae-plain" --run "DC-AE 1.5=$R/dit-15-s0,$R/dit-15-s1" \
    --judge-cache $R/judges --csv $R/convergence.csv --plot $R/convergence.png --json $R/convergence.json
