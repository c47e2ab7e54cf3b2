#!/usr/bin/env bash
# RESULTS.md, "Backbones and the baseline AE": at the classroom size, a structured DC-AE 1.5 and a plain DC-AE
# 1.0 of 500 steps each; on the 1.5 AE an augmented DiT-classroom and an augmented UViT-classroom (1.88 M and
# 1.93 M parameters), on the 1.0 AE a plain DiT-classroom, 1200 steps each; reconstructions per c' of both
# AEs and the class judge on each diffusion model.
#   bash experiments/backbones.sh             # in runs/backbones (about 30 min on 2 cores)
#   DRY_RUN=1 bash experiments/backbones.sh   # print the commands
source "$(dirname "$0")/lib.sh"
R=$RUNS/backbones
AE=(--max-steps 500)
DIT=(--max-steps 1200 --max-images 5000 --cache-dir $R/latent_cache)
JUDGE=(--judge-cache $RUNS/judges)
# two commands at a time (one thread each)
train $R/ae-15 python train_ae.py "${AE[@]}" --out $R/ae-15 &
train $R/ae-10 python train_ae.py --model dc-ae-f16c64-classroom-1.0 --no-structured "${AE[@]}" --out $R/ae-10 &
wait_all
train $R/dit-15 python train_dit.py --ae-ckpt $R/ae-15/last.pt "${DIT[@]}" --out $R/dit-15 &
train $R/uvit-15 python train_dit.py --ae-ckpt $R/ae-15/last.pt --model UViT-classroom "${DIT[@]}" \
    --out $R/uvit-15 &
wait_all
# the paper's baseline: DC-AE 1.0 latents, the plain diffusion objective
train $R/dit-10 python train_dit.py --ae-ckpt $R/ae-10/last.pt --no-augmented "${DIT[@]}" --out $R/dit-10 &
produce $R/recon.json python evaluate.py recon --ae-ckpt $R/ae-15/last.pt --baseline-ckpt $R/ae-10/last.pt \
    --num-images 500 --json $R/recon.json &
wait_all
# the first judge call trains the judge (cached in $RUNS/judges); the later ones load it
produce $R/classes-dit-15.json python evaluate.py classes --ckpt $R/dit-15/last.pt "${JUDGE[@]}" \
    --json $R/classes-dit-15.json
produce $R/classes-uvit-15.json python evaluate.py classes --ckpt $R/uvit-15/last.pt "${JUDGE[@]}" \
    --json $R/classes-uvit-15.json &
produce $R/classes-dit-10.json python evaluate.py classes --ckpt $R/dit-10/last.pt "${JUDGE[@]}" \
    --json $R/classes-dit-10.json &
wait_all
