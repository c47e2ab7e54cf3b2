#!/usr/bin/env bash
# RESULTS.md, "The channel trade-off": a plain and a structured f16 AE with c = 16, 32 and 64 latent
# channels, a DiT on each (plain on the plain AE, augmented on the structured one), compared at step 4400;
# and the c = 16 structured AE trained with c' from {4, 8, 12, 16}. c = 64 is the quick start's AEs and
# seed 0 of convergence.sh (8800 steps, evaluated at step 4400): done runs are skipped.
#   bash experiments/channel_tradeoff.sh             # in runs/ (about 8 h on 2 cores)
#   DRY_RUN=1 bash experiments/channel_tradeoff.sh   # print the commands
source "$(dirname "$0")/lib.sh"
R=$RUNS
CACHE=(--cache-dir $R/latent_cache); JUDGE=(--judge-cache $R/judges)
# two commands at a time (one thread each)
for c in 16 32; do
  train $R/ae-c$c-plain python train_ae.py --model dc-ae-f16c$c-classroom --no-structured --out $R/ae-c$c-plain &
  train $R/ae-c$c python train_ae.py --model dc-ae-f16c$c-classroom --out $R/ae-c$c &
  wait_all
  train $R/dit-c$c-base python train_dit.py --ae-ckpt $R/ae-c$c-plain/last.pt --no-augmented "${CACHE[@]}" \
      --out $R/dit-c$c-base &
  train $R/dit-c$c-15 python train_dit.py --ae-ckpt $R/ae-c$c/last.pt "${CACHE[@]}" --out $R/dit-c$c-15 &
  wait_all
  produce $R/recon-c$c.json python evaluate.py recon --ae-ckpt $R/ae-c$c/last.pt \
      --baseline-ckpt $R/ae-c$c-plain/last.pt --json $R/recon-c$c.json
done
# c = 64
autoencoders $R
train $R/dit-base-s0 python train_dit.py --ae-ckpt $R/ae-plain/last.pt --no-augmented --max-steps 8800 \
    --save-every 1100 --seed 0 "${CACHE[@]}" --out $R/dit-base-s0 &
train $R/dit-15-s0 python train_dit.py --ae-ckpt $R/ae/last.pt --max-steps 8800 --save-every 1100 --seed 0 \
    "${CACHE[@]}" --out $R/dit-15-s0 &
wait_all
produce $R/recon-c64.json python evaluate.py recon --ae-ckpt $R/ae/last.pt --baseline-ckpt $R/ae-plain/last.pt \
    --json $R/recon-c64.json
# the table: in class and judge FD at step 4400; the PSNR and the judge ceiling of each AE (--json)
always python evaluate.py curve --max-step 4400 --run "c16 DC-AE=$R/dit-c16-base" \
    --run "c16 DC-AE 1.5=$R/dit-c16-15" --run "c32 DC-AE=$R/dit-c32-base" --run "c32 DC-AE 1.5=$R/dit-c32-15" \
    --run "c64 DC-AE=$R/dit-base-s0" --run "c64 DC-AE 1.5=$R/dit-15-s0" "${JUDGE[@]}" \
    --csv $R/tradeoff.csv --plot $R/tradeoff.png --json $R/tradeoff.json
# c = 16 with c' from {4, 8, 12, 16} instead of {2, 4, ..., 16}
train $R/ae-c16-q4 python train_ae.py --model dc-ae-f16c16-classroom --latent-channel-choices 4,8,12,16 \
    --out $R/ae-c16-q4
train $R/dit-c16q-15 python train_dit.py --ae-ckpt $R/ae-c16-q4/last.pt "${CACHE[@]}" --out $R/dit-c16q-15
produce $R/recon-c16-q4.json python evaluate.py recon --ae-ckpt $R/ae-c16-q4/last.pt \
    --baseline-ckpt $R/ae-c16-plain/last.pt --json $R/recon-c16-q4.json
always python evaluate.py curve --max-step 4400 --run "c16 DC-AE 1.5, c' from 4=$R/dit-c16q-15" "${JUDGE[@]}" \
    --csv $R/tradeoff_c16q.csv --plot $R/tradeoff_c16q.png --json $R/tradeoff_c16q.json
