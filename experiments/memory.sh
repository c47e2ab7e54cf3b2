#!/usr/bin/env bash
# RESULTS.md, "Memory at ImageNet scale": peak resident memory of building the latent cache (N = 5,000
# and 50,000 images) and of writing N = 2,000 and 20,000 samples into an .npz, with dc-ae-tiny and
# DiT-tiny at 64 px: the work grows 10x, the memory should not. Each command alone.
#   bash experiments/memory.sh             # in runs/memory/ (a few minutes); prints each peak
#   DRY_RUN=1 bash experiments/memory.sh   # print the commands
source "$(dirname "$0")/lib.sh"
R=$RUNS/memory

measured() {  # measured NAME: the prefix that writes the command's /usr/bin/time report to $R/NAME.time
  MEASURED=("$PYTHON")
  if [ -x /usr/bin/time ]; then MEASURED=(/usr/bin/time -v -o $R/$1.time "$PYTHON"); fi
}

train $R/ae python train_ae.py --model dc-ae-tiny --max-steps 20 --perceptual off --out $R/ae
for n in 5000 50000; do  # build the cache, then one DiT step
  measured cache-$n
  train $R/dit-$n "${MEASURED[@]}" train_dit.py --ae-ckpt $R/ae/last.pt --model DiT-tiny --max-images $n \
      --max-steps 1 --cache-dir $R/cache --out $R/dit-$n
done
for n in 2000 20000; do
  measured samples-$n
  produce $R/samples-$n.npz "${MEASURED[@]}" sample.py --ckpt $R/dit-5000/last.pt --num-samples $n --steps 1 \
      --npz $R/samples-$n.npz
done
if [ "${DRY_RUN:-0}" != 1 ] && [ -x /usr/bin/time ]; then
  for name in cache-5000 cache-50000 samples-2000 samples-20000; do
    if [ -f $R/$name.time ]; then echo "$name: $(grep 'Maximum resident' $R/$name.time)" >&2; fi
  done
fi
