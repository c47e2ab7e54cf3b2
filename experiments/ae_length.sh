#!/usr/bin/env bash
# RESULTS.md, "Reconstruction against training length": the plain AE, the structured AE (one c' a step)
# and the structured AE with the full latent in every step, each trained 8800 steps (4x the default) with
# a step file every 2200; their reconstructions from c/8, c/2 and c channels at 1x, 2x and 4x the default
# length. The learning rate is constant after warmup and a step file is what a run that ended there writes
# (tests/test_train_ae.py), so step 2200 of a run is the 2200-step run.
#   bash experiments/ae_length.sh             # in runs/ (about 8 h on 2 cores)
#   DRY_RUN=1 bash experiments/ae_length.sh   # print the commands
source "$(dirname "$0")/lib.sh"
R=$RUNS/ae-length
LONG=(--max-steps 8800 --save-every 2200)
# two commands at a time (one thread each)
train $R/plain python train_ae.py --no-structured "${LONG[@]}" --out $R/plain &
train $R/structured python train_ae.py "${LONG[@]}" --out $R/structured &
wait_all
train $R/max python train_ae.py --num-sample-latent-channels 2 --always-sample-max-channel "${LONG[@]}" \
    --out $R/max
# PSNR / SSIM from the first 8, 32 and 64 channels, 1000 validation images, at each length
for run in plain structured max; do
  for step in 2200 4400 8800; do
    produce $R/recon-$run-$step.json python evaluate.py recon --ae-ckpt $R/$run/step_$(printf %07d $step).pt \
        --latent-channels 8,32,64 --json $R/recon-$run-$step.json
  done
done
