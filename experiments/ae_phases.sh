#!/usr/bin/env bash
# RESULTS.md, "DC-AE's three training phases on a laptop": phase 1 (the quick start's AE, 64 px, every
# layer), phase 2 (128 px, the middle layers), phase 3 (64 px, the decoder head) with the GAN, without it
# and with the adaptive GAN weight; the reconstructions after each phase and the phase-3 picture.
#   bash experiments/ae_phases.sh             # in runs/ (about 2 h on 2 cores)
#   DRY_RUN=1 bash experiments/ae_phases.sh   # print the commands
source "$(dirname "$0")/lib.sh"
R=$RUNS
P3=(--init-from $R/ae-p2/last.pt --train-parts head --max-steps 300 --log-every 50)
EVAL=(--c-primes 8,64 --num-images 500)
train $R/ae python train_ae.py --out $R/ae                                            # phase 1
train $R/ae-p2 python train_ae.py --init-from $R/ae/last.pt --train-parts middle --image-size 128 \
    --max-steps 600 --out $R/ae-p2                                                    # phase 2
# phase 3, two commands at a time (one thread each): the GAN (the recipe), no GAN (the control), the
# adaptive GAN weight
train $R/ae-p3 python train_ae.py "${P3[@]}" --gan-weight 0.1 --out $R/ae-p3 &
train $R/ae-p3-nogan python train_ae.py "${P3[@]}" --gan-weight 0 --out $R/ae-p3-nogan &
wait_all
train $R/ae-p3-adaptive python train_ae.py "${P3[@]}" --gan-weight 0.1 --gan-adaptive-weight --out $R/ae-p3-adaptive
# phases 1 and 2 at 128 px and at 64 px
produce $R/recon-phase2-128px.json python evaluate.py recon --ae-ckpt $R/ae/last.pt \
    --baseline-ckpt $R/ae-p2/last.pt --image-size 128 "${EVAL[@]}" --json $R/recon-phase2-128px.json
produce $R/recon-phase2-64px.json python evaluate.py recon --ae-ckpt $R/ae/last.pt \
    --baseline-ckpt $R/ae-p2/last.pt "${EVAL[@]}" --json $R/recon-phase2-64px.json
# phase 3: each variant against the phase-2 AE at 64 px (PSNR, SSIM, sharpness)
for run in ae-p3 ae-p3-nogan ae-p3-adaptive; do
  produce $R/recon-$run.json python evaluate.py recon --ae-ckpt $R/ae-p2/last.pt --baseline-ckpt $R/$run/last.pt \
      "${EVAL[@]}" --json $R/recon-$run.json
done
# the picture: originals, the phase-2 AE, the phase-3 AE, from all 64 channels
produce $R/phase3.png python evaluate.py recon --ae-ckpt $R/ae-p2/last.pt --baseline-ckpt $R/ae-p3/last.pt \
    --c-primes 64 --num-images 500 --grid $R/phase3.png
