#!/usr/bin/env bash
# RESULTS.md, "Flow matching or DDPM": one structured AE, three DiTs of 4400 steps on it (flow matching
# with and without augmented training, DDPM with it), the class judge on each, and their sample grids.
#   bash experiments/flow_vs_ddpm.sh             # in runs/ (about 2 h on 2 cores)
#   DRY_RUN=1 bash experiments/flow_vs_ddpm.sh   # print the commands
source "$(dirname "$0")/lib.sh"
R=$RUNS
CACHE=(--cache-dir $R/latent_cache); JUDGE=(--judge-cache $R/judges)
train $R/ae python train_ae.py --out $R/ae
# two commands at a time (one thread each)
train $R/dit python train_dit.py --ae-ckpt $R/ae/last.pt "${CACHE[@]}" --out $R/dit &
train $R/dit-plain python train_dit.py --ae-ckpt $R/ae/last.pt --no-augmented "${CACHE[@]}" --out $R/dit-plain &
wait_all
train $R/dit-ddpm python train_dit.py --ae-ckpt $R/ae/last.pt --objective ddpm "${CACHE[@]}" --out $R/dit-ddpm &
# the first judge call trains the judge (cached in $R/judges); the later ones load it
produce $R/classes-dit.json python evaluate.py classes --ckpt $R/dit/last.pt "${JUDGE[@]}" \
    --json $R/classes-dit.json &
wait_all
produce $R/classes-dit-plain.json python evaluate.py classes --ckpt $R/dit-plain/last.pt "${JUDGE[@]}" \
    --json $R/classes-dit-plain.json &
produce $R/classes-dit-ddpm.json python evaluate.py classes --ckpt $R/dit-ddpm/last.pt "${JUDGE[@]}" \
    --json $R/classes-dit-ddpm.json &
wait_all
for run in dit dit-plain dit-ddpm; do  # guidance 4, 40 samples: RUN/sample_seed0.png
  produce $R/$run/sample_seed0.png python sample.py --ckpt $R/$run/last.pt
done
