#!/usr/bin/env bash
# The README's first look: both ideas of the paper on a laptop CPU in about ten minutes.
#   bash experiments/first_look.sh            # -> runs/first_look/first_look.png and the numbers
#   SMOKE=1 bash experiments/first_look.sh    # tiny settings, seconds (tests)
#   DRY_RUN=1 bash experiments/first_look.sh  # print the commands
# The quick start's commands, shorter: a structured and a plain AE (two at a time), a DiT trained with
# augmented diffusion training on the structured one, then the reconstructions from the first c'
# channels of both AEs, the DiT's samples, and how often a small judge CNN sees the asked-for class.
# The settings are the smallest at which the pictures show both effects (RESULTS.md, "First look").
source "$(dirname "$0")/lib.sh"
R=$RUNS/first_look
AE=(--model dc-ae-f16c64-mini --max-steps 1200 --perceptual off)  # the classroom AE at half width
DIT=(--max-steps 1200 --max-images 5000 --cache-dir $R/cache)
REC=(--num-images 200 --c-primes 8,16,32,64)
SMP=(--num-samples 40)
CLS=(--cfg-scales 4 --num-samples 100 --num-images 5000 --judge-steps 400 --num-val 200 --judge-cache $R/judges)
DIT_THREADS=2  # the DiT trains alone: both cores
if [ "${SMOKE:-0}" = 1 ]; then  # tiny settings: every command runs in seconds
  R=$RUNS/first_look_smoke
  AE=(--model dc-ae-tiny --max-steps 4 --batch-size 8 --log-every 2 --perceptual off)
  DIT=(--model DiT-tiny --max-steps 4 --batch-size 8 --log-every 2 --max-images 64 --sample-steps 2 --cache-dir $R/cache)
  REC=(--num-images 16 --c-primes 1,2,4,8)
  SMP=(--num-samples 10 --steps 2)
  CLS=(--cfg-scales 4 --num-samples 10 --steps 2 --num-images 200 --judge-steps 5 --num-val 20 --judge-cache $R/judges)
  DIT_THREADS=1
fi
autoencoders $R "${AE[@]}"
OMP_NUM_THREADS=$DIT_THREADS train $R/dit python train_dit.py --ae-ckpt $R/ae/last.pt "${DIT[@]}" --out $R/dit
# the reconstructions beside the judge (which trains first), one thread each
produce $R/recon.json python evaluate.py recon --ae-ckpt $R/ae/last.pt --baseline-ckpt $R/ae-plain/last.pt \
    "${REC[@]}" --grid $R/recon.png --json $R/recon.json &
produce $R/classes.json python evaluate.py classes --ckpt $R/dit/last.pt "${CLS[@]}" --json $R/classes.json &
wait_all
produce $R/dit/sample_seed0.png python sample.py --ckpt $R/dit/last.pt "${SMP[@]}"
# one picture (the reconstructions left, the samples right) and the numbers that say it worked
[ "${DRY_RUN:-0}" = 1 ] || "$PYTHON" - "$R" <<'PY'
import json, os, sys
from PIL import Image, ImageDraw
R = sys.argv[1]
recon = json.load(open(os.path.join(R, "recon.json")))["results"]
judged = json.load(open(os.path.join(R, "classes.json")))
cs = sorted(recon["model"], key=int)
left, right = Image.open(os.path.join(R, "recon.png")), Image.open(os.path.join(R, "dit", "sample_seed0.png"))
titles = [(4, f"original, then from the first c' = {', '.join(cs)} of {cs[-1]} channels: structured AE, then plain"),
          (left.width + 24, "samples of the DiT (augmented training), a column per class")]
canvas = Image.new("RGB", (left.width + 20 + right.width, 20 + max(left.height, right.height)), "white")
canvas.paste(left, (0, 20))
canvas.paste(right, (left.width + 20, 20))
draw = ImageDraw.Draw(canvas)
for x, text in titles:
    draw.text((x, 4), text, fill="black")
canvas.save(os.path.join(R, "first_look.png"))
c8, full = cs[0], cs[-1]
share = judged["samples"]["4.0"]["share"]
lines = [f"wrote {os.path.join(R, 'first_look.png')}",
         f"PSNR from the first {c8} of {full} channels: structured {recon['model'][c8]['psnr']:.1f} dB, "
         f"plain {recon['baseline'][c8]['psnr']:.1f} dB (all {full}: {recon['model'][full]['psnr']:.1f} / "
         f"{recon['baseline'][full]['psnr']:.1f} dB)",
         f"samples in the asked-for class (the judge, guidance 4): {share:.0%} (chance 10%; the judge is right "
         f"on {judged['ceiling']:.0%} of real images)"]
with open(os.path.join(R, "first_look.txt"), "w") as fh:
    fh.write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
