#!/usr/bin/env bash
# RESULTS.md, "Reconstruction against training length", what the last channels carry: the quick start's
# structured and plain AEs (2200 steps), the full latent's reconstruction of the 1000 validation images with
# the channels after the first c/2 kept, zeroed, replaced by their mean over the images, or shuffled between
# the images (evaluate.py recon --tail-from).
#   bash experiments/channel_tail.sh          # in runs/ (the two AEs first if missing: about 45 min on 2 cores)
#   DRY_RUN=1 bash experiments/channel_tail.sh
source "$(dirname "$0")/lib.sh"
R=$RUNS
autoencoders $R
produce $R/channel_tail.json python evaluate.py recon --ae-ckpt $R/ae/last.pt --baseline-ckpt $R/ae-plain/last.pt \
    --c-primes 32,64 --tail-from 32 --json $R/channel_tail.json
