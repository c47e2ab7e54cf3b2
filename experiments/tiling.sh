#!/usr/bin/env bash
# RESULTS.md, "Tiled encode and decode": the peak memory of coding one image whole and in 256 px tiles at
# 1024 and 2048 px (4x the area), and how far tiled reconstructions are from whole ones with the quick
# start's AE at 512 px for three tile sizes.
#   bash experiments/tiling.sh             # in runs/ (about 15 minutes on 2 cores, once runs/ae exists)
#   DRY_RUN=1 bash experiments/tiling.sh   # print the commands
source "$(dirname "$0")/lib.sh"
R=$RUNS
for what in encode decode; do  # one process a measurement: a process's peak memory cannot always be reset
  for tile in 0 256; do
    for size in 1024 2048; do
      always python bench.py --coding-memory $what --image-size $size --batch-size 1 --tile-size $tile
    done
  done
done
autoencoders $R  # the quick start's pair (trained unless done)
for tile in 0 256 128 64; do
  produce $R/tiling-recon-$tile.json python evaluate.py recon --ae-ckpt $R/ae/last.pt --image-size 512 \
      --num-images 20 --c-primes 64 --tile-size $tile --json $R/tiling-recon-$tile.json
done
# tiled against whole: PSNR of the tiled reconstructions (encode and decode tiled) to the whole-image ones
[ "${DRY_RUN:-0}" = 1 ] || "$PYTHON" - "$R/ae/last.pt" <<'PY'
import sys, torch
from dcaelib import data, files, metrics, tiling
ae, _, _ = files.load_autoencoder(sys.argv[1])
dataset = data.build_dataset("shapes", "val", 512, None, 0)
x = torch.stack([dataset[i][0] for i in range(16)])
with torch.no_grad():
    whole = ae.decode(ae.encode(x)).clamp(-1, 1)
    for tile in (256, 128, 64):
        coder = tiling.Tiled(ae, tile)
        tiled = coder.decode(coder.encode(x)).clamp(-1, 1)
        print(f"512 px, {tile} px tiles ({tile // ae.spatial_compression_ratio} latent cells): tiled vs "
              f"whole {metrics.psnr(tiled, whole).mean():.2f} dB PSNR (16 images)")
PY
