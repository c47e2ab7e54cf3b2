#!/usr/bin/env bash
# RESULTS.md, "Structured latent space: what it costs": the plain AE, the structured AE (one c' a step) and
# two with two c' a step (+ the full latent, + the smallest and the full latent), their reconstructions
# from c/8, c/2 and c channels at step 2200 and at step 1400 (equal wall time), and each variant's step
# time, measured alone.
#   bash experiments/structured_cost.sh             # in runs/ (about 2 h on 2 cores)
#   DRY_RUN=1 bash experiments/structured_cost.sh   # print the commands
source "$(dirname "$0")/lib.sh"
R=$RUNS
MAX=(--num-sample-latent-channels 2 --always-sample-max-channel)
MINMAX=(--num-sample-latent-channels 2 --always-sample-min-max-channel)
# two commands at a time (one thread each)
autoencoders $R
train $R/ae-k2-max python train_ae.py "${MAX[@]}" --save-every 200 --out $R/ae-k2-max &
train $R/ae-k2-minmax python train_ae.py "${MINMAX[@]}" --save-every 200 --out $R/ae-k2-minmax &
wait_all
# PSNR / SSIM from the first 8, 32 and 64 channels, 1000 validation images
for run in ae-plain ae ae-k2-max ae-k2-minmax; do
  produce $R/recon-$run.json python evaluate.py recon --ae-ckpt $R/$run/last.pt --c-primes 8,32,64 \
      --json $R/recon-$run.json
done
for run in ae-k2-max ae-k2-minmax; do  # equal wall time: step 1400 of the two-pass runs
  produce $R/recon-$run-step1400.json python evaluate.py recon --ae-ckpt $R/$run/step_0001400.pt \
      --c-primes 8,32,64 --json $R/recon-$run-step1400.json
done
# step time: each variant alone on every core, 120 steps; the log line at step 120 gives the img/s of
# steps 81-120 (step time = 16 / that)
ALONE=(env OMP_NUM_THREADS=$(env -u OMP_NUM_THREADS nproc) "$PYTHON")  # every core (nproc obeys OMP_NUM_THREADS)
train $R/steptime-plain "${ALONE[@]}" train_ae.py --no-structured --max-steps 120 --log-every 40 \
    --out $R/steptime-plain
train $R/steptime-default "${ALONE[@]}" train_ae.py --max-steps 120 --log-every 40 --out $R/steptime-default
train $R/steptime-k2-max "${ALONE[@]}" train_ae.py "${MAX[@]}" --max-steps 120 --log-every 40 \
    --out $R/steptime-k2-max
train $R/steptime-k2-minmax "${ALONE[@]}" train_ae.py "${MINMAX[@]}" --max-steps 120 --log-every 40 \
    --out $R/steptime-k2-minmax
