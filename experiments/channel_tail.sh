#!/usr/bin/env bash
# RESULTS.md, "Reconstruction against training length", what the last channels carry: a structured and a
# plain AE, the full latent's reconstruction of the 1000 validation images with the channels after the
# first c/2 kept, zeroed, replaced by their mean over the images, or shuffled between the images
# (evaluate.py recon --tail-from), at two training lengths: the quick start's 2200-step pair (runs/ae,
# runs/ae-plain) and ae_length.sh's 8800-step pair (runs/ae-length/structured, runs/ae-length/plain; the
# same runs, trained once). Then the table of both -> runs/channel_tail.md: PSNR / SSIM (/ LPIPS where its
# AlexNet weights are there).
#   bash experiments/channel_tail.sh                # the 8800-step pair: 1 h 40 min (AMD EPYC) or 50 min (Intel Xeon)
#   LENGTHS=2200 bash experiments/channel_tail.sh   # the quick start's pair only (about 45 min)
#   DRY_RUN=1 bash experiments/channel_tail.sh
source "$(dirname "$0")/lib.sh"
R=$RUNS
LENGTHS=${LENGTHS:-2200 8800}
TABLE=()  # LENGTH=JSON for the table
for n in $LENGTHS; do
  case $n in
    2200) autoencoders $R
          json=$R/channel_tail.json
          produce $json python evaluate.py recon --ae-ckpt $R/ae/last.pt \
              --baseline-ckpt $R/ae-plain/last.pt --c-primes 32,64 --tail-from 32 --json $json ;;
    8800) L=$R/ae-length
          ae_length_run $L plain &
          ae_length_run $L structured &
          wait_all
          json=$R/channel_tail-8800.json
          produce $json python evaluate.py recon --ae-ckpt $L/structured/last.pt \
              --baseline-ckpt $L/plain/last.pt --c-primes 32,64 --tail-from 32 --json $json ;;
    *) echo "LENGTHS: no length '$n' (2200 and 8800)" >&2; exit 2 ;;
  esac
  TABLE+=("$n=$json")
done
[ "${DRY_RUN:-0}" = 1 ] || "$PYTHON" - "$R/channel_tail.md" "${TABLE[@]}" <<'PY'
import json, sys
files = dict(a.split("=", 1) for a in sys.argv[2:])  # length -> the JSON evaluate.py recon wrote
lengths = list(files)
tails = {n: json.load(open(f))["tail"] for n, f in files.items()}
cols = [(n, name) for n in lengths for name in ("model", "baseline")]
head = " | ".join(f"{'structured' if name == 'model' else 'plain'} AE, {n} steps" for n, name in cols)
lines = [f"| channels 33-64 | {head} |", "|---" * (len(cols) + 1) + "|"]
for way in tails[lengths[0]]["model"]:
    cells = " | ".join(" / ".join(f"{tails[n][name][way][k]:.{2 if k == 'psnr' else 3}f}"
                                  for k in ("psnr", "ssim", "lpips") if k in tails[n][name][way]) for n, name in cols)
    lines.append(f"| {way} | {cells} |")
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
